//! Secrets and defaults (THREATS T15, T16): the broker creates its data
//! folder and audit log for its owner only, says loudly when it keeps no
//! audit trail, and does not accept QUIC datagrams; the client refuses
//! private key files others may read.

mod common;

use common::process::spawn_broker;
use common::*;
use signet_client::{Client, Error};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_folder_is_created_for_its_owner_only() {
    let mut sandbox = started().await;
    sandbox.stop().await;
    assert_eq!(mode(&sandbox.data_dir()), 0o700, "data folder");
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
async fn the_audit_log_is_created_for_its_owner_only() {
    let mut sandbox = started().await;
    sandbox.stop().await;
    assert_eq!(mode(&sandbox.audit_path()), 0o600, "audit log");
}

/// Reproduction: the client read its signing key and TLS key whatever
/// their mode, so a key file any local user could read went unnoticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_private_key_files_others_can_read() {
    let mut sandbox = started().await;
    let config = sandbox.client_config("alice").unwrap();
    let signing_key = config.signing_key.clone().unwrap();
    for (path, readable) in [(&signing_key, 0o644), (&config.key, 0o640)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(readable)).unwrap();
        match within(Client::connect(config.clone())).await {
            Err(Error::Config(detail)) => {
                assert!(detail.contains("chmod 600"), "{detail}");
                assert!(detail.contains(&path.display().to_string()), "{detail}");
            }
            Err(other) => panic!("{}: wrong error {other:?}", path.display()),
            Ok(_) => panic!("{} at {readable:o} was accepted", path.display()),
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Owner-only again: the same client connects and publishes.
    let alice = within(Client::connect(config)).await.unwrap();
    within(alice.publish("orders.created", b"{}".to_vec()))
        .await
        .unwrap();
    assert_eq!(stored_count(&sandbox, "orders.created").await, 1);
    alice.close().await;
    sandbox.stop().await;
}

/// A broker started without `[audit]` runs (a policy may choose that) but
/// says so at `warn` level on start; with `[audit]` it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_an_audit_trail_says_so_on_start() {
    for audited in [false, true] {
        let mut sandbox = sandbox(&principals());
        if !audited {
            sandbox.without_audit();
        }
        let (mut broker, log) = spawn_broker(&mut sandbox, "warn,signet_broker=info").await;
        broker.kill().await.unwrap();
        let lines = within(log).await.unwrap();
        let warned = lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("no [audit] section"));
        assert_eq!(warned, !audited, "audited = {audited}: {lines:?}");
    }
}
