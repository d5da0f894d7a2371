//! The `signet` command, driven from outside as a user would.

mod common;

use common::process::{Run, signet};
use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const SIGNET: &str = env!("CARGO_BIN_EXE_signet");

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The value of a `name: value` line `signet` printed.
fn printed<'a>(run: &'a Run, name: &str) -> &'a str {
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no {name} line in {}", run.stdout))
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_and_keygen_write_secrets_0600_and_print_key_id() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let pki_s = pki.to_str().unwrap();
    let run = signet(&[
        "pki",
        "init",
        "--dir",
        pki_s,
        "--broker-name",
        "localhost",
        "--broker-name",
        "127.0.0.1",
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(mode(&pki.join("ca.key")), 0o600);
    assert_eq!(mode(&pki.join("broker.key")), 0o600);
    let run = signet(&[
        "pki",
        "issue",
        "--dir",
        pki_s,
        "--principal",
        "orders-service",
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(mode(&pki.join("clients/orders-service.key")), 0o600);
    let cert = std::fs::read(pki.join("clients/orders-service.crt")).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(&cert)
        .map(|c: rustls::pki_types::CertificateDer| c.to_vec())
        .unwrap();
    assert_eq!(
        signet_broker::tls::principal_from_cert(&der).as_deref(),
        Some("orders-service")
    );

    let key = dir.path().join("keys/orders.ed25519");
    let run = signet(&["keygen", "--out", key.to_str().unwrap()]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(mode(&key), 0o600);
    let public: signet_proto::PublicKey = printed(&run, "public_key").parse().unwrap();
    let key_id = printed(&run, "key_id");
    assert_eq!(key_id, public.id().to_hex());
    // An X25519 encryption key: 32 raw bytes, 0600, printed as x25519:<base64>.
    let x = dir.path().join("keys/reader.x25519");
    let run = signet(&["keygen", "--kind", "x25519", "--out", x.to_str().unwrap()]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(mode(&x), 0o600);
    let public: signet_proto::crypt::RecipientKey = printed(&run, "public_key").parse().unwrap();
    let private =
        signet_proto::crypt::DecryptionKey::from_bytes(&std::fs::read(&x).unwrap()).unwrap();
    assert_eq!(private.public_key(), &public);
    // Never overwrite a key.
    let again = signet(&["keygen", "--out", key.to_str().unwrap()]).await;
    assert!(!again.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_and_sub_print_json_lines_and_rejections() {
    let mut sandbox = started().await;
    let alice = sandbox.write_client_file("alice").unwrap();
    let bob = sandbox.write_client_file("bob").unwrap();
    let alice = alice.to_str().unwrap();

    let run = signet(&[
        "pub",
        "--client",
        alice,
        "--topic",
        "orders.created",
        "--data",
        r#"{"id":1}"#,
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        json_lines(&run.stdout),
        vec![serde_json::json!({"offset": 0})]
    );

    let lines = sandbox.path().join("lines.txt");
    std::fs::write(&lines, "hello\n{\"id\":2}\n\u{1F600}\n").unwrap();
    let run = signet(&[
        "pub",
        "--client",
        alice,
        "--topic",
        "orders.created",
        "--file",
        lines.to_str().unwrap(),
        "--lines",
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    let offsets: Vec<u64> = json_lines(&run.stdout)
        .iter()
        .map(|v| v["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1, 2, 3]);

    let run = signet(&[
        "sub",
        "--client",
        alice,
        "--topic",
        "orders.created",
        "--from-offset",
        "0",
        "--count",
        "3",
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    let got = json_lines(&run.stdout);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0]["offset"], 0);
    assert_eq!(got[0]["topic"], "orders.created");
    assert_eq!(got[0]["payload_encoding"], "json");
    assert_eq!(got[0]["payload"], serde_json::json!({"id": 1}));
    assert_eq!(
        got[0]["key_id"],
        sandbox.public_key("alice").unwrap().id().to_hex()
    );
    assert!(got[0]["seq"].as_u64().unwrap() > 0);
    assert!(got[0]["timestamp_ms"].as_u64().unwrap() > 0);
    assert_eq!(got[1]["payload_encoding"], "utf8");
    assert_eq!(got[1]["payload"], "hello");
    assert_eq!(got[2]["payload"], serde_json::json!({"id": 2}));

    let run = signet(&[
        "pub",
        "--client",
        bob.to_str().unwrap(),
        "--topic",
        "orders.created",
        "--data",
        "x",
    ])
    .await;
    assert!(!run.status.success());
    let rejected = json_lines(&run.stdout);
    assert_eq!(rejected[0]["line"], 1);
    assert_eq!(rejected[0]["error"], "Forbidden");
    assert!(run.stderr.contains("Forbidden"), "{}", run.stderr);
    assert_eq!(stored_count(&sandbox, "orders.created").await, 4);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_command_serves_the_readme_walkthrough() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut dev = Command::new(SIGNET)
        .args([
            "dev",
            "--dir",
            dir.path().to_str().unwrap(),
            "--listen",
            &listen,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let (mut publisher, mut subscriber) = (None, None);
    while publisher.is_none() || subscriber.is_none() {
        let line = within(lines.next_line())
            .await
            .unwrap()
            .expect("dev prints its files");
        let path = |l: &str| l.split_whitespace().nth(1).map(str::to_owned);
        if line.trim_start().starts_with("publisher:") {
            publisher = path(line.trim_start());
        } else if line.trim_start().starts_with("subscriber:") {
            subscriber = path(line.trim_start());
        }
    }
    let (publisher, subscriber) = (publisher.unwrap(), subscriber.unwrap());
    // The broker listens before it prints the client files.
    let run = signet(&[
        "pub",
        "--client",
        &publisher,
        "--topic",
        "orders.created",
        "--data",
        r#"{"id":1}"#,
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(json_lines(&run.stdout)[0]["offset"], 0);
    let run = signet(&[
        "sub",
        "--client",
        &subscriber,
        "--topic",
        "orders.created",
        "--from-offset",
        "0",
        "--count",
        "1",
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    let got = json_lines(&run.stdout);
    assert_eq!(got[0]["payload"], serde_json::json!({"id": 1}));
    // The subscriber may not publish.
    let run = signet(&[
        "pub",
        "--client",
        &subscriber,
        "--topic",
        "orders.created",
        "--data",
        "{}",
    ])
    .await;
    assert_eq!(json_lines(&run.stdout)[0]["error"], "Forbidden");
    dev.start_kill().unwrap();
    let _ = within(dev.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_passes_on_a_real_log_and_catches_tampering() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    let bob = client(&sandbox, "bob").await;
    within(alice.publish("orders.a", b"1".to_vec()))
        .await
        .unwrap();
    let _ = within(bob.publish("orders.a", b"x".to_vec())).await;
    let _ = within(bob.subscribe("orders.a", signet_client::StartAt::Earliest)).await;
    let _sub = within(alice.subscribe("orders.a", signet_client::StartAt::Earliest))
        .await
        .unwrap();
    drop(_sub);
    alice.close().await;
    bob.close().await;
    sandbox.stop().await;
    let log = sandbox.audit_path();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 6, "{text}");
    for event in [
        "broker_started",
        "connection_accepted",
        "publish_denied",
        "subscribe_denied",
        "subscription_opened",
        "broker_stopped",
    ] {
        assert!(
            text.contains(&format!("\"event\":\"{event}\"")),
            "missing {event}: {text}"
        );
    }
    let run = signet(&["audit", "verify", log.to_str().unwrap()]).await;
    assert!(run.status.success(), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.starts_with("ok:"), "{}", run.stdout);

    let tampered = |name: &str, lines: Vec<String>| {
        let path = sandbox.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    let owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mut byte = owned.clone();
    byte[2] = byte[2].replacen("\"principal\":\"", "\"principal\":\"x", 1);
    assert_ne!(byte[2], owned[2]);
    let mut deleted = owned.clone();
    deleted.remove(2);
    let mut swapped = owned.clone();
    swapped.swap(2, 3);
    for (name, lines) in [
        ("byte.log", byte),
        ("deleted.log", deleted),
        ("swapped.log", swapped),
    ] {
        let path = tampered(name, lines);
        let run = signet(&["audit", "verify", path.to_str().unwrap()]).await;
        assert!(!run.status.success(), "{name} passed verification");
        assert!(run.stdout.starts_with("broken:"), "{name}: {}", run.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_check_validates_a_policy_without_starting() {
    let sandbox = sandbox(&principals());
    sandbox.write_policy().unwrap();
    let policy = sandbox.policy_path();
    let run = signet(&["broker", "--check", policy.to_str().unwrap()]).await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.starts_with("ok:"), "{}", run.stdout);
    assert!(
        !sandbox.data_dir().exists(),
        "check must not start a broker"
    );
    let broken = sandbox.path().join("broken.toml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&policy)
            .unwrap()
            .replace("publish = [", "publsh = ["),
    )
    .unwrap();
    let run = signet(&["broker", "--check", broken.to_str().unwrap()]).await;
    assert!(!run.status.success());
    assert!(run.stderr.contains("unknown field"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_takes_data_that_starts_with_a_hyphen() {
    let mut sandbox = started().await;
    let alice = sandbox.write_client_file("alice").unwrap();
    let alice = alice.to_str().unwrap();
    let run = signet(&[
        "pub",
        "--client",
        alice,
        "--topic",
        "orders.numbers",
        "--data",
        "-2",
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        json_lines(&run.stdout),
        vec![serde_json::json!({"offset": 0})]
    );
    let run = signet(&[
        "sub",
        "--client",
        alice,
        "--topic",
        "orders.numbers",
        "--from-offset",
        "0",
        "--count",
        "1",
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(json_lines(&run.stdout)[0]["payload"], serde_json::json!(-2));
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_parallel_pub_and_sub_runs_with_one_client_file_all_succeed() {
    let mut sandbox = started().await;
    let alice = sandbox.write_client_file("alice").unwrap();
    let alice = alice.to_str().unwrap();
    let first = signet(&[
        "pub",
        "--client",
        alice,
        "--topic",
        "orders.par",
        "--data",
        "0",
    ])
    .await;
    assert!(first.status.success(), "{}", first.stderr);
    let runs = (1..=10).flat_map(|i| {
        let data = i.to_string();
        [
            tokio::spawn({
                let alice = alice.to_owned();
                async move {
                    signet(&[
                        "pub",
                        "--client",
                        &alice,
                        "--topic",
                        "orders.par",
                        "--data",
                        &data,
                    ])
                    .await
                }
            }),
            tokio::spawn({
                let alice = alice.to_owned();
                async move {
                    signet(&[
                        "sub",
                        "--client",
                        &alice,
                        "--topic",
                        "orders.par",
                        "--from-offset",
                        "0",
                        "--count",
                        "1",
                    ])
                    .await
                }
            }),
        ]
    });
    let runs: Vec<Run> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for run in &runs {
        assert!(
            run.status.success(),
            "a parallel run failed: {}{}",
            run.stdout,
            run.stderr
        );
    }
    assert_eq!(stored_count(&sandbox, "orders.par").await, 11);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_planted_at_the_seq_reservation_paths_are_not_followed() {
    let mut sandbox = started().await;
    let alice = sandbox.write_client_file("alice").unwrap();
    let alice = alice.to_str().unwrap();
    let key = sandbox.signing_key_path("alice").unwrap();
    let victim = sandbox.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").unwrap();
    let at = |suffix: &str| {
        let mut name = key.clone().into_os_string();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    // The temporary file's old fixed name.
    std::os::unix::fs::symlink(&victim, at(".seq.tmp")).unwrap();
    let run = signet(&[
        "pub",
        "--client",
        alice,
        "--topic",
        "orders.link",
        "--data",
        "1",
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(
        !std::fs::symlink_metadata(at(".seq"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // The reservation itself replaced by a link: refused, target untouched.
    std::fs::remove_file(at(".seq")).unwrap();
    std::os::unix::fs::symlink(&victim, at(".seq")).unwrap();
    let run = signet(&[
        "pub",
        "--client",
        alice,
        "--topic",
        "orders.link",
        "--data",
        "2",
    ])
    .await;
    assert!(
        !run.status.success(),
        "published through a symlinked reservation"
    );
    let refused = &json_lines(&run.stdout)[0];
    assert_eq!(refused["error"], "ConfigError", "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("symbolic link"),
        "{refused}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(stored_count(&sandbox, "orders.link").await, 1);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_with_a_pattern_prints_every_matching_topic_with_its_offsets() {
    let mut sandbox = started().await;
    let alice_file = sandbox.write_client_file("alice").unwrap();
    let alice = client(&sandbox, "alice").await;
    for (topic, body) in [("orders.a", "1"), ("orders.b", "2"), ("orders.a", "3")] {
        within(alice.publish(topic, body.as_bytes().to_vec()))
            .await
            .unwrap();
    }
    // A topic outside the pattern (its last message).
    let bob = client(&sandbox, "bob").await;
    within(bob.publish("billing.x", b"4".to_vec()))
        .await
        .unwrap();
    bob.close().await;
    let run = signet(&[
        "sub",
        "--client",
        alice_file.to_str().unwrap(),
        "--topic",
        "orders.>",
        "--earliest",
        "--count",
        "3",
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    let mut got: Vec<(String, u64, Value)> = json_lines(&run.stdout)
        .iter()
        .map(|v| {
            (
                v["topic"].as_str().unwrap().to_owned(),
                v["offset"].as_u64().unwrap(),
                v["payload"].clone(),
            )
        })
        .collect();
    got.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(
        got,
        vec![
            ("orders.a".to_owned(), 0, serde_json::json!("1")),
            ("orders.a".to_owned(), 1, serde_json::json!("3")),
            ("orders.b".to_owned(), 0, serde_json::json!("2")),
        ]
    );
    alice.close().await;
    sandbox.stop().await;
}
