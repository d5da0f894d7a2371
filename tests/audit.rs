//! The audit trail under attack (THREATS T14, T25): a log rewritten by
//! someone who can write the file (edited and re-chained, cut at the head,
//! cut at the tail) fails `signet audit verify --broker-key`; checkpoints
//! signed by the broker's identity key reach subscribers of the system
//! topic; a flood of refusals hides nobody else's records.

mod common;

use common::process::{Run, signet};
use common::*;
use serde_json::{Value, json};
use signet_admin::pki;
use signet_client::{Client, ClientConfig, StartAt};
use signet_proto::{ErrorCode, PublicKey, SigningKey};
use std::path::{Path, PathBuf};

/// The system topic the broker publishes its signed checkpoints to.
const CHECKPOINTS: &str = "signet.audit.checkpoints";

/// The broker's identity public key, read from the key `signet pki init`
/// wrote (`pki/broker.ed25519`).
fn broker_key(sandbox: &Sandbox) -> PublicKey {
    let path = sandbox.pki_dir().join("broker.ed25519");
    let der = std::fs::read(&path).expect("pki init writes the broker's identity key");
    SigningKey::from_pkcs8(&der).unwrap().public_key().clone()
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn record(line: &str) -> Value {
    serde_json::from_str(line).expect("a JSON record")
}

fn is_checkpoint(line: &str) -> bool {
    record(line)["event"] == "checkpoint"
}

/// Recomputes every `prev` from line `from` on, as an attacker with write
/// access to the file would after editing a line.
fn rechain(lines: &mut [String], from: usize) {
    for i in from.max(1)..lines.len() {
        let prev = signet_broker::audit::line_hash(lines[i - 1].as_bytes());
        let mut v = record(&lines[i]);
        v["prev"] = json!(prev);
        lines[i] = serde_json::to_string(&v).unwrap();
    }
}

fn write_log(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

async fn verify(key: &PublicKey, checkpoint: Option<&Path>, log: &Path) -> Run {
    let key = key.to_string();
    let mut args = vec!["audit", "verify", "--broker-key", key.as_str()];
    if let Some(checkpoint) = checkpoint {
        args.extend(["--checkpoint", checkpoint.to_str().unwrap()]);
    }
    args.push(log.to_str().unwrap());
    signet(&args).await
}

/// Some traffic worth auditing: connections, a publish, a denial.
async fn traffic(sandbox: &Sandbox, rounds: usize) {
    for i in 0..rounds {
        let alice = client(sandbox, "alice").await;
        within(alice.publish("orders.audit", format!("{i}").into_bytes()))
            .await
            .unwrap();
        let denied = within(alice.publish("billing.audit", b"x".to_vec())).await;
        assert_eq!(common::codes::code(&denied), Some(ErrorCode::Forbidden));
        alice.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rechained_head_cut_and_tail_cut_logs_fail_verify_with_the_broker_key() {
    let mut sandbox = start_with(
        &principals(),
        "[limits]\naudit_checkpoint_records_max = 5\n",
    )
    .await;
    traffic(&sandbox, 6).await;
    sandbox.stop().await;
    let key = broker_key(&sandbox);
    let log = sandbox.audit_path();
    let genuine = lines_of(&log);
    let checkpoints: Vec<usize> = (0..genuine.len())
        .filter(|i| is_checkpoint(&genuine[*i]))
        .collect();
    assert!(checkpoints.len() >= 4, "{}", genuine.join("\n"));
    // The auditor kept the last checkpoint (from the system topic).
    let saved = write_log(sandbox.path(), "saved.json", &genuine[genuine.len() - 1..]);
    assert!(
        is_checkpoint(&genuine[genuine.len() - 1]),
        "shutdown signs the tail"
    );

    let run = verify(&key, Some(&saved), &log).await;
    assert!(
        run.ok(),
        "a genuine log fails: {}{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stdout.starts_with("ok:"), "{}", run.stdout);

    // 1. A record edited, every later hash recomputed.
    let mut edited = genuine.clone();
    let target = (1..edited.len())
        .find(|i| record(&edited[*i])["event"] == "connection_accepted")
        .unwrap();
    edited[target] = edited[target].replacen("\"principal\":\"alice\"", "\"principal\":\"bob\"", 1);
    assert_ne!(edited[target], genuine[target]);
    rechain(&mut edited, target + 1);
    let edited = write_log(sandbox.path(), "edited.log", &edited);
    assert!(
        signet_broker::audit::verify(std::slice::from_ref(&edited)).is_ok(),
        "re-chained: the bare chain holds"
    );
    // 2. The head cut off, so that the log starts at a (periodic) checkpoint.
    let head_cut = write_log(sandbox.path(), "head.log", &genuine[checkpoints[1]..]);
    // 3. The tail cut off right after an earlier checkpoint: what is left
    //    is a well-formed, fully signed log, older than the auditor's copy.
    let tail_cut = write_log(
        sandbox.path(),
        "tail.log",
        &genuine[..=checkpoints[checkpoints.len() - 3]],
    );
    for (name, path, checkpoint) in [
        ("re-chained edit", &edited, None),
        ("head cut", &head_cut, None),
        ("tail cut", &tail_cut, Some(saved.as_path())),
    ] {
        let run = verify(&key, checkpoint, path).await;
        assert!(!run.ok(), "{name} passed: {}", run.stdout);
        assert!(
            run.stdout.starts_with("broken:"),
            "{name}: {}{}",
            run.stdout,
            run.stderr
        );
    }
    // Without the saved checkpoint a clean tail cut cannot be told from a
    // log that ends there: that is what keeping checkpoints elsewhere is for.
    assert!(verify(&key, None, &tail_cut).await.ok());
    // Another key does not vouch for the genuine log.
    let other = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let run = verify(other.public_key(), None, &log).await;
    assert!(
        !run.ok() && run.stdout.starts_with("broken:"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_subscribers_receive_checkpoints_that_verify_against_the_broker_key() {
    let specs = [
        PrincipalSpec::new("alice").publish("orders.>"),
        PrincipalSpec::new("mallory").publish(">"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ];
    let mut sandbox = start_with(&specs, "[limits]\naudit_checkpoint_records_max = 3\n").await;
    let key = broker_key(&sandbox);
    // The auditor trusts the broker's key in its client file's [trust].
    let text = sandbox.client_file_text("auditor").unwrap()
        + &format!("{:?} = {:?}\n", key.id().to_hex(), key.to_string());
    let config = ClientConfig::parse(&text, sandbox.path()).unwrap();
    let auditor = within(Client::connect(config)).await.unwrap();
    let mut checkpoints = within(auditor.subscribe(CHECKPOINTS, StartAt::Earliest))
        .await
        .expect("a normal subscribe grant covers the system topic");
    // Nobody but the broker writes the system topic, whatever its grants.
    let mallory = client(&sandbox, "mallory").await;
    let forged = within(mallory.publish(CHECKPOINTS, br#"{"event":"checkpoint"}"#.to_vec())).await;
    assert_eq!(common::codes::code(&forged), Some(ErrorCode::Forbidden));
    traffic_of(&sandbox, "alice", 3).await;

    let mut last = None;
    for _ in 0..3 {
        let m = next(&mut checkpoints).await.expect("a checkpoint verifies");
        assert_eq!(m.topic, CHECKPOINTS);
        assert_eq!(m.key_id, key.id(), "signed by the broker's identity key");
        let cp: Value = serde_json::from_slice(&m.payload).expect("a JSON checkpoint record");
        assert_eq!(cp["event"], "checkpoint");
        assert_eq!(cp["key_id"], key.id().to_hex());
        last = Some(m.payload);
    }
    let saved = sandbox.path().join("kept-checkpoint.json");
    std::fs::write(&saved, last.unwrap()).unwrap();
    // A subscriber that does not trust the broker key is told so.
    let stranger = client(&sandbox, "auditor").await;
    let mut untrusted = within(stranger.subscribe(CHECKPOINTS, StartAt::Earliest))
        .await
        .unwrap();
    let Err(err) = next(&mut untrusted).await else {
        panic!("a checkpoint was delivered as good to a client not trusting the broker key");
    };
    assert_eq!(err.code(), Some(ErrorCode::UnknownKey));
    drop((checkpoints, untrusted));
    auditor.close().await;
    stranger.close().await;
    mallory.close().await;
    sandbox.stop().await;
    // What the auditor kept from the topic checks the log on disk.
    let run = verify(&key, Some(&saved), &sandbox.audit_path()).await;
    assert!(run.ok(), "{}{}", run.stdout, run.stderr);
}

async fn traffic_of(sandbox: &Sandbox, name: &str, rounds: usize) {
    for i in 0..rounds {
        let c = client(sandbox, name).await;
        within(c.publish("orders.audit", format!("{i}").into_bytes()))
            .await
            .unwrap();
        c.close().await;
    }
}

/// Records of every audit file (rotated ones first), read after the broker stopped.
fn all_records(sandbox: &Sandbox) -> Vec<Value> {
    audit_files(sandbox)
        .iter()
        .flat_map(|p| lines_of(p))
        .map(|l| record(&l))
        .collect()
}

fn audit_files(sandbox: &Sandbox) -> Vec<PathBuf> {
    let log = sandbox.audit_path();
    let mut files: Vec<PathBuf> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit.log."))
        })
        .collect();
    files.sort_by_key(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .and_then(|e| e.parse::<u64>().ok())
    });
    files.push(log);
    files
}

/// `n` batches of 256 envelopes `name` may not publish, on raw frames.
async fn deny_flood(sandbox: &Sandbox, name: &str, topic: &str, n: u64) {
    let c = client(sandbox, name).await;
    let key = signing_key(sandbox, name);
    let seq = fresh_seq();
    for b in 0..n {
        let envelopes = (0..256)
            .map(|i| envelope(key.id(), topic, seq + b * 256 + i, b"{}"))
            .collect();
        let answer = raw_publish(&c, signed(&key, b + 1, envelopes)).await;
        assert!(
            common::codes::nack_codes(answer)
                .iter()
                .all(|c| *c == Some(ErrorCode::Forbidden))
        );
    }
    c.close().await;
}

/// `n` handshakes with a certificate from a foreign CA, from 127.0.0.1.
async fn handshake_flood(sandbox: &Sandbox, n: usize) {
    let foreign = tempfile::tempdir().unwrap();
    pki::init(foreign.path(), &[]).unwrap();
    let files = pki::issue(foreign.path(), "alice").unwrap();
    for _ in 0..n {
        let mut config = sandbox.client_config("alice").unwrap();
        config.cert = files.cert.clone();
        config.key = files.key.clone();
        let refused = within(async {
            let c = Client::connect(config).await?;
            c.publish("orders.flood", b"{}".to_vec()).await
        })
        .await;
        assert!(refused.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_from_one_principal_or_address_hides_no_one_elses_records() {
    let mut sandbox = start_with(&principals(), "[limits]\naudit_queue_records_max = 64\n").await;
    let policy = sandbox.policy_path();
    let floods = {
        let bob_denials = deny_flood(&sandbox, "bob", "orders.flood", 24);
        let bob_subscribes = async {
            let bob = client(&sandbox, "bob").await;
            for _ in 0..300 {
                let refused = within(bob.subscribe("orders.flood", StartAt::Latest)).await;
                assert_eq!(
                    refused.err().and_then(|e| e.code()),
                    Some(ErrorCode::Forbidden)
                );
            }
            bob.close().await;
        };
        let handshakes = handshake_flood(&sandbox, 40);
        async { tokio::join!(bob_denials, bob_subscribes, handshakes) }
    };
    // While the floods run: alice works, is refused once per round, and
    // the policy is reloaded.
    let others = async {
        for i in 0..8 {
            let alice = client(&sandbox, "alice").await;
            let denied = within(alice.publish(&format!("billing.alice{i}"), b"x".to_vec())).await;
            assert_eq!(common::codes::code(&denied), Some(ErrorCode::Forbidden));
            let text = std::fs::read_to_string(&policy).unwrap();
            std::fs::write(
                &policy,
                format!("{text}\n[[topic]]\nname = \"reload.r{i}\"\n"),
            )
            .unwrap();
            sandbox.reload().expect("reload applies");
            alice.close().await;
        }
    };
    tokio::join!(floods, others);
    sandbox.stop().await;
    let records = all_records(&sandbox);
    let of =
        |event: &str| -> Vec<&Value> { records.iter().filter(|r| r["event"] == event).collect() };
    for i in 0..8 {
        let topic = format!("billing.alice{i}");
        assert!(
            of("publish_denied")
                .iter()
                .any(|r| r["principal"] == "alice" && r["topic"] == topic.as_str()),
            "alice's denial {i} was lost in bob's flood"
        );
    }
    // Each of the 8 policies was applied (by the file watch or the call).
    let applied: std::collections::HashSet<&str> = of("policy_reload")
        .iter()
        .filter(|r| r["outcome"] == "applied")
        .map(|r| r["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(applied.len(), 8, "policy reloads lost in the flood");
    assert!(
        of("connection_accepted")
            .iter()
            .filter(|r| r["principal"] == "alice")
            .count()
            >= 8,
        "alice's connections lost in the flood"
    );
    // Every kind is bounded per principal: bob's 300 refused subscribes are summarized.
    let written = of("subscribe_denied")
        .iter()
        .filter(|r| r["principal"] == "bob")
        .count();
    assert!(
        written < 300,
        "{written} subscribe_denied records for bob: not rate limited"
    );
    let summaries = of("suppressed");
    let summary = |kind: &str| {
        summaries
            .iter()
            .find(|r| r["of"] == kind)
            .unwrap_or_else(|| panic!("no summary of {kind}: {summaries:?}"))
    };
    assert_eq!(summary("subscribe_denied")["principal"], "bob");
    assert_eq!(summary("publish_denied")["principal"], "bob");
    // Handshake refusals are limited and summarized per remote address,
    // and the summary keeps the addresses.
    for kind in ["connection_refused", "publish_denied", "subscribe_denied"] {
        let s = summary(kind);
        assert_eq!(s["remote"], "127.0.0.1", "{s}");
        let remotes = s["remotes"]
            .as_array()
            .unwrap_or_else(|| panic!("no addresses: {s}"));
        assert!(!remotes.is_empty());
        assert!(
            remotes
                .iter()
                .all(|r| r.as_str().unwrap().starts_with("127.0.0.1:")),
            "{s}"
        );
    }
    let files = audit_files(&sandbox);
    signet_broker::audit::verify(&files).expect("the chain holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_queue_leaves_a_gap_record_that_accounts_for_every_event() {
    // A checkpoint after every record: each is a synced commit, so the
    // writer falls far behind a flood and the smallest queue overflows.
    let mut sandbox = start_with(
        &principals(),
        "[limits]\naudit_queue_records_max = 64\naudit_noisy_per_sec_max = 10000\naudit_checkpoint_records_max = 1\n",
    )
    .await;
    deny_flood(&sandbox, "bob", "orders.flood", 8).await;
    // A reload after the flood is still recorded.
    sandbox.reload().ok();
    sandbox.stop().await;
    let records = all_records(&sandbox);
    let gaps: Vec<&Value> = records.iter().filter(|r| r["event"] == "gap").collect();
    assert!(!gaps.is_empty(), "no gap record after an overflow");
    let dropped: u64 = gaps
        .iter()
        .map(|g| g["dropped"]["publish_denied"].as_u64().unwrap_or(0))
        .sum();
    assert!(dropped > 0, "{gaps:?}");
    let written = records
        .iter()
        .filter(|r| r["event"] == "publish_denied" && r["principal"] == "bob")
        .count() as u64;
    let suppressed: u64 = records
        .iter()
        .filter(|r| r["event"] == "suppressed" && r["of"] == "publish_denied")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        written + suppressed + dropped,
        8 * 256,
        "every denial is written, summarized or counted in a gap"
    );
    let key = broker_key(&sandbox);
    let run = verify(&key, None, &sandbox.audit_path()).await;
    assert!(run.ok(), "{}{}", run.stdout, run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_at_most_n_files_and_what_is_kept_still_verifies() {
    let mut sandbox = start_with(
        &principals(),
        "[limits]\naudit_file_bytes_max = 4096\naudit_files_max = 3\naudit_checkpoint_records_max = 5\n",
    )
    .await;
    traffic(&sandbox, 30).await;
    sandbox.stop().await;
    let files = audit_files(&sandbox);
    let rotated = files.len() - 1;
    assert!(
        (1..=3).contains(&rotated),
        "{rotated} rotated files kept: {files:?}"
    );
    // The oldest files are gone, yet what is left verifies: each file
    // opens with a checkpoint signed for the file before it.
    let key = broker_key(&sandbox);
    let key_text = key.to_string();
    let mut args = vec!["audit", "verify", "--broker-key", key_text.as_str()];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let run = signet(&args).await;
    assert!(run.ok(), "{}{}", run.stdout, run.stderr);
    let first = record(&lines_of(&files[0])[0]);
    assert!(
        first["seq"].as_u64().unwrap() > 0,
        "the first files were removed"
    );
    assert_eq!(first["event"], "checkpoint");
    // Cutting the first lines of the oldest kept file is still detected.
    let cut = write_log(sandbox.path(), "cut.log", &lines_of(&files[0])[2..]);
    let mut args = vec![
        "audit",
        "verify",
        "--broker-key",
        key_text.as_str(),
        cut.to_str().unwrap(),
    ];
    args.extend(names[1..].iter().map(String::as_str));
    let run = signet(&args).await;
    assert!(!run.ok(), "{}", run.stdout);
}
