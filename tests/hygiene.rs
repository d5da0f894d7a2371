//! Secrets and defaults (THREATS T15, T16): the client refuses key files
//! others can read, the broker creates its data folder and audit log for
//! its owner only, says loudly when it runs without an audit trail, and
//! does not accept QUIC datagrams.

mod common;

use common::*;
use signet_admin::keys;
use signet_client::{Client, Error};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const SIGNET: &str = env!("CARGO_BIN_EXE_signet");

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_key_files_that_others_can_read() {
    let mut sandbox = started().await;
    let x25519 = sandbox.path().join("keys/alice.x25519");
    keys::generate_x25519(&x25519).unwrap();
    let tls_key = sandbox.pki_dir().join("clients/alice.key");
    let signing_key = sandbox.signing_key_path("alice").unwrap();
    for (what, path, loose) in [
        ("TLS key", &tls_key, 0o640),
        ("signing key", &signing_key, 0o604),
        ("X25519 key", &x25519, 0o644),
    ] {
        chmod(path, loose);
        let mut config = sandbox.client_config("alice").unwrap();
        config.private_keys = vec![x25519.clone()];
        match within(Client::connect(config)).await {
            Err(Error::Config(message)) => {
                assert!(message.contains("chmod 600"), "{what}: {message}");
                assert!(
                    message.contains(&path.display().to_string()),
                    "{what}: {message}"
                );
            }
            Err(other) => panic!("{what} at {loose:o}: expected a config error, got {other}"),
            Ok(_) => panic!("{what} at mode {loose:o} was used"),
        }
        chmod(path, 0o600);
    }
    // At 0600 every key is fine.
    let mut config = sandbox.client_config("alice").unwrap();
    config.private_keys = vec![x25519.clone()];
    let alice = within(Client::connect(config)).await.unwrap();
    within(alice.publish("orders.keys", b"{}".to_vec()))
        .await
        .unwrap();
    alice.close().await;
    sandbox.stop().await;
    let log = std::fs::read_to_string(sandbox.audit_path()).unwrap();
    assert_eq!(
        log.matches("\"event\":\"connection_accepted\"").count(),
        1,
        "no refused key file reached the broker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_folder_and_audit_log_are_created_for_their_owner_only() {
    let mut sandbox = started().await;
    sandbox.stop().await;
    assert_eq!(mode(&sandbox.data_dir()), 0o700, "data folder");
    assert_eq!(mode(&sandbox.audit_path()), 0o600, "audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_datagrams_are_disabled() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    assert_eq!(
        alice.connection().max_datagram_size(),
        None,
        "the broker advertises QUIC datagram support"
    );
    alice.close().await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_an_audit_section_warns_that_it_keeps_no_audit_trail() {
    let sandbox = sandbox(&principals());
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = sandbox
        .policy_text(port)
        .replace("[audit]\npath = \"data/audit.log\"\n", "");
    assert!(!text.contains("[audit]"));
    let policy = sandbox.path().join("no-audit.toml");
    std::fs::write(&policy, text).unwrap();
    let mut broker = std::process::Command::new(SIGNET)
        .args(["broker", "--config", policy.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = broker.stderr.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let done = line.contains("broker listening");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    let lines = within(lines).await.unwrap();
    broker.kill().unwrap();
    broker.wait().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("no audit trail")),
        "no warning before the broker listened: {lines:#?}"
    );
}
