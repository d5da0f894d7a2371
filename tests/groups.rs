//! Consumer groups end to end: a real broker, real QUIC + mutual TLS, real
//! RocksDB, through the client crate (and raw frames for forged tokens).
//! Leases, acks that survive restarts, backoff, extend, dead letters that
//! keep the publisher's signature, tokens refused, grants enforced.

mod common;

use common::codes::code;
use common::*;
use futures_util::StreamExt;
use signet_client::consumer::{Consumer, Delivery, join};
use signet_client::{Client, ClientConfig, ErrorCode, StartAt, Verifier};
use signet_proto::frame::{ClientFrame, Outcome, ServerFrame, Settle, SettleAction, Subscribe};
use signet_proto::stream::{read_frame, write_frame};
use signet_proto::{StoredRecord, codec};
use std::time::{Duration, Instant};

fn group_policy(ack_wait: &str, backoff: &str, max_deliveries: u32, max_in_flight: u32) -> String {
    format!(
        "[[group]]\nname = \"work\"\ntopics = [\"jobs.>\"]\nstart = \"earliest\"\nack_wait = \"{ack_wait}\"\nmax_deliveries = {max_deliveries}\nbackoff = {backoff}\ndead_letter = \"dlq.work\"\nmax_in_flight = {max_in_flight}\n"
    )
}

fn specs() -> Vec<PrincipalSpec> {
    vec![
        PrincipalSpec::new("producer").publish("jobs.>"),
        PrincipalSpec::new("w1").subscribe("jobs.>").consume("work"),
        PrincipalSpec::new("w2").subscribe("jobs.>").consume("work"),
        PrincipalSpec::new("outsider").subscribe("jobs.>"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ]
}

async fn next_delivery(c: &mut Consumer) -> Delivery {
    within(c.next())
        .await
        .expect("membership ended")
        .expect("a verified delivery")
}

async fn publish_n(sandbox: &Sandbox, topic: &str, n: u32) -> Vec<u64> {
    let producer = client(sandbox, "producer").await;
    let mut offsets = Vec::new();
    for i in 0..n {
        offsets.push(
            within(producer.publish(topic, format!("{{\"i\":{i}}}").into_bytes()))
                .await
                .unwrap(),
        );
    }
    producer.close().await;
    offsets
}

/// A client config for `name` that also trusts the broker's identity key
/// (for reading dead letters).
fn config_trusting_broker(sandbox: &Sandbox, name: &str) -> ClientConfig {
    let broker = sandbox.broker_public_key().unwrap();
    let text = format!(
        "{}{:?} = {:?}\n",
        sandbox.client_file_text(name).unwrap(),
        broker.id().to_hex(),
        broker.to_string()
    );
    ClientConfig::parse(&text, sandbox.path()).unwrap()
}

#[tokio::test]
async fn members_share_the_work_and_acked_messages_never_come_back_after_restart() {
    let mut sandbox = start_with(&specs(), &group_policy("30s", "[]", 5, 1000)).await;
    publish_n(&sandbox, "jobs.a", 20).await;
    let w1 = client(&sandbox, "w1").await;
    let w2 = client(&sandbox, "w2").await;
    let mut c1 = within(w1.consume_with("work", 5)).await.unwrap();
    let mut c2 = within(w2.consume_with("work", 5)).await.unwrap();
    let mut seen = std::collections::BTreeMap::new();
    let mut per_member = [0usize; 2];
    while seen.len() < 20 {
        let (d, who) = tokio::select! {
            d = next_delivery(&mut c1) => (d, 0),
            d = next_delivery(&mut c2) => (d, 1),
        };
        assert_eq!(d.delivery_count, 1);
        assert_eq!(d.group, "work");
        assert!(
            seen.insert(d.offset(), d.message.payload.clone()).is_none(),
            "offset {} delivered twice",
            d.offset()
        );
        per_member[who] += 1;
        within(d.ack()).await.unwrap();
    }
    assert!(per_member[0] > 0 && per_member[1] > 0, "{per_member:?}");
    let info = within(w1.group_info("work")).await.unwrap();
    let t = &info.topics[0];
    assert_eq!(
        (t.acked, t.acked_floor, t.in_flight, t.pending),
        (20, 20, 0, 0)
    );
    drop((c1, c2));
    w1.close().await;
    w2.close().await;

    // Restart on the same data (on a fresh port: another test's client may
    // hold the old one by now).
    sandbox.stop().await;
    sandbox.set_addr(([127, 0, 0, 1], 0).into());
    sandbox.start().await.unwrap();
    publish_n(&sandbox, "jobs.a", 1).await;
    let w1 = client(&sandbox, "w1").await;
    let mut c1 = within(w1.consume("work")).await.unwrap();
    let d = next_delivery(&mut c1).await;
    assert_eq!(
        (d.offset(), d.delivery_count),
        (20, 1),
        "after a restart only the new message is delivered"
    );
    // Stop the broker (and close RocksDB) before the process exits.
    sandbox.stop().await;
}

/// A raw member: joined on its own stream; deliveries and settlements as frames.
struct Raw {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Raw {
    async fn join(client: &Client) -> Raw {
        let (send, recv) = within(join(client.connection(), "work", 1)).await.unwrap();
        Raw { send, recv }
    }

    async fn frame(&mut self) -> ServerFrame {
        within(read_frame::<ServerFrame, _>(&mut self.recv, u32::MAX))
            .await
            .unwrap()
            .unwrap()
    }

    async fn settle(&mut self, topic: &str, offset: u64, token: &[u8]) -> Outcome {
        let settle = Settle {
            topic: topic.into(),
            offset,
            token: token.to_vec(),
            action: SettleAction::Ack,
        };
        within(write_frame(
            &mut self.send,
            &ClientFrame::Settle(vec![settle]),
        ))
        .await
        .unwrap();
        match self.frame().await {
            ServerFrame::Settled(mut outcomes) => outcomes.remove(0),
            other => panic!("expected Settled, got {other:?}"),
        }
    }
}

fn refused_with(outcome: &Outcome, code: ErrorCode) -> bool {
    matches!(outcome, Outcome::Nack(r) if r.code == code)
}

#[tokio::test]
async fn forged_stale_and_other_members_lease_tokens_are_refused_and_change_nothing() {
    let mut sandbox = start_with(&specs(), &group_policy("30s", "[]", 5, 1000)).await;
    publish_n(&sandbox, "jobs.a", 1).await;
    let w1 = client(&sandbox, "w1").await;
    let w2 = client(&sandbox, "w2").await;
    let mut a = Raw::join(&w1).await;
    let ServerFrame::GroupDeliver(mut ds) = a.frame().await else {
        panic!("expected a delivery");
    };
    let d = ds.remove(0);
    let mut b = Raw::join(&w2).await;

    let forged = [0x5a; 16];
    assert!(refused_with(
        &a.settle("jobs.a", 0, &forged).await,
        ErrorCode::LeaseInvalid
    ));
    assert!(refused_with(
        &a.settle("jobs.a", 0, &d.token[..8]).await,
        ErrorCode::LeaseInvalid
    ));
    assert!(
        refused_with(
            &b.settle("jobs.a", 0, &d.token).await,
            ErrorCode::LeaseInvalid
        ),
        "another member's token"
    );
    assert!(refused_with(
        &a.settle("jobs.a", 1, &d.token).await,
        ErrorCode::LeaseInvalid
    ));
    let info = within(w1.group_info("work")).await.unwrap();
    assert_eq!(
        (info.topics[0].in_flight, info.topics[0].acked),
        (1, 0),
        "nothing changed"
    );

    assert_eq!(a.settle("jobs.a", 0, &d.token).await, Outcome::Ack(0));
    assert!(
        refused_with(
            &a.settle("jobs.a", 0, &d.token).await,
            ErrorCode::LeaseInvalid
        ),
        "a stale token (already acked)"
    );
    let info = within(w1.group_info("work")).await.unwrap();
    assert_eq!((info.topics[0].in_flight, info.topics[0].acked), (0, 1));
    // Stop the broker (and close RocksDB) before the process exits.
    sandbox.stop().await;
}

#[tokio::test]
async fn a_principal_without_consume_cannot_join_or_read_the_group() {
    let mut sandbox = start_with(&specs(), &group_policy("30s", "[]", 5, 1000)).await;
    publish_n(&sandbox, "jobs.a", 3).await;
    let outsider = client(&sandbox, "outsider").await;
    let refused = within(outsider.consume("work")).await;
    assert_eq!(code(&refused), Some(ErrorCode::Forbidden));
    let refused = within(outsider.consume("no-such-group")).await;
    assert_eq!(
        code(&refused),
        Some(ErrorCode::Forbidden),
        "unknown groups look the same"
    );
    let refused = within(outsider.consume("bad name!")).await;
    assert_eq!(code(&refused), Some(ErrorCode::NoSuchGroup));
    assert_eq!(
        code(&within(outsider.group_info("work")).await),
        Some(ErrorCode::Forbidden)
    );
    // Nothing was leased: a member gets offset 0 as its first delivery.
    let w1 = client(&sandbox, "w1").await;
    let mut c = within(w1.consume("work")).await.unwrap();
    let d = next_delivery(&mut c).await;
    assert_eq!((d.offset(), d.delivery_count), (0, 1));
    // Stop the broker (and close RocksDB) before the process exits.
    sandbox.stop().await;
}

#[tokio::test]
async fn revoking_consume_on_reload_closes_the_member() {
    let mut sandbox = start_with(&specs(), &group_policy("30s", "[]", 5, 1000)).await;
    let w1 = client(&sandbox, "w1").await;
    let mut c = within(w1.consume("work")).await.unwrap();
    sandbox
        .set_spec(PrincipalSpec::new("w1").subscribe("jobs.>"))
        .unwrap();
    sandbox.write_policy().unwrap();
    sandbox.reload().unwrap();
    let ended = within(c.next()).await.expect("an error before the end");
    assert_eq!(code(&ended), Some(ErrorCode::Forbidden));
    publish_n(&sandbox, "jobs.a", 1).await;
    assert!(
        within(c.next()).await.is_none(),
        "nothing after the revocation"
    );
    // Stop the broker (and close RocksDB) before the process exits.
    sandbox.stop().await;
}

#[tokio::test]
async fn nak_and_expiry_redeliver_no_sooner_than_the_backoff() {
    let mut sandbox = start_with(&specs(), &group_policy("200ms", "[\"300ms\"]", 10, 1000)).await;
    publish_n(&sandbox, "jobs.a", 1).await;
    let w1 = client(&sandbox, "w1").await;
    let mut c = within(w1.consume("work")).await.unwrap();
    // Nak: not before the 300 ms backoff.
    let d = next_delivery(&mut c).await;
    let naked = Instant::now();
    within(d.nak(None)).await.unwrap();
    let d = next_delivery(&mut c).await;
    assert!(
        naked.elapsed() >= Duration::from_millis(300),
        "{:?}",
        naked.elapsed()
    );
    assert_eq!(d.delivery_count, 2);
    // A nak delay longer than the backoff wins.
    let naked = Instant::now();
    within(d.nak(Some(Duration::from_millis(600))))
        .await
        .unwrap();
    let d = next_delivery(&mut c).await;
    assert!(
        naked.elapsed() >= Duration::from_millis(600),
        "{:?}",
        naked.elapsed()
    );
    assert_eq!(d.delivery_count, 3);
    // Expiry: the lease ends at its deadline, then the 300 ms backoff
    // (both on the broker's clock, which is this machine's).
    let deadline = d.deadline_ms;
    drop(d);
    let d = next_delivery(&mut c).await;
    assert!(
        now_ms() >= deadline + 300,
        "{} < {deadline} + 300",
        now_ms()
    );
    assert_eq!(d.delivery_count, 4, "delivery counts only go up");
    // Stop the broker (and close RocksDB) before the process exits.
    sandbox.stop().await;
}

#[tokio::test]
async fn extend_keeps_a_slow_message_from_redelivery() {
    let mut sandbox = start_with(&specs(), &group_policy("300ms", "[]", 10, 1000)).await;
    publish_n(&sandbox, "jobs.a", 1).await;
    let w1 = client(&sandbox, "w1").await;
    let w2 = client(&sandbox, "w2").await;
    let mut c1 = within(w1.consume("work")).await.unwrap();
    let slow = next_delivery(&mut c1).await;
    let mut c2 = within(w2.consume("work")).await.unwrap();
    // Work for three times the ack wait, extending as we go (simulated work).
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        within(slow.extend()).await.unwrap();
    }
    within(slow.ack()).await.unwrap();
    let info = within(w1.group_info("work")).await.unwrap();
    assert_eq!((info.topics[0].acked, info.topics[0].redelivered), (1, 0));
    // The other member, there all along, never got the slow message: its
    // first delivery is the next one (c1 may hold it first: any count).
    drop(c1);
    publish_n(&sandbox, "jobs.a", 1).await;
    let next = next_delivery(&mut c2).await;
    assert_eq!(next.offset(), 1, "the slow one never moved");
    // Stop the broker (and close RocksDB) before the process exits.
    sandbox.stop().await;
}

/// The raw records of `topic` from offset 0, as the auditor receives them.
async fn raw_records(sandbox: &Sandbox, topic: &str, n: usize) -> Vec<Vec<u8>> {
    let auditor = client(sandbox, "auditor").await;
    let (mut send, mut recv) = within(auditor.connection().open_bi()).await.unwrap();
    let sub = ClientFrame::Subscribe(Subscribe {
        topic: topic.into(),
        start: StartAt::Earliest,
    });
    within(write_frame(&mut send, &sub)).await.unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        match within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX))
            .await
            .unwrap()
            .unwrap()
        {
            ServerFrame::Deliver(ds) => out.extend(ds.into_iter().map(|d| d.record)),
            ServerFrame::Subscribed { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn dead_letters_carry_the_original_byte_for_byte_under_the_broker_signature() {
    let mut sandbox = start_with(&specs(), &group_policy("30s", "[]", 2, 1000)).await;
    publish_n(&sandbox, "jobs.a", 2).await;
    let w1 = client(&sandbox, "w1").await;
    let mut c = within(w1.consume("work")).await.unwrap();
    // Offset 0: naked until it dies; offset 1: termed.
    let mut deaths = 0;
    while deaths < 2 {
        let d = next_delivery(&mut c).await;
        if d.offset() == 1 {
            within(d.term("poison")).await.unwrap();
            deaths += 1;
        } else {
            within(d.nak(None)).await.unwrap();
            if d.delivery_count == 2 {
                deaths += 1;
            }
        }
    }
    let reader = within(Client::connect(config_trusting_broker(&sandbox, "auditor")))
        .await
        .unwrap();
    let mut dlq = within(reader.subscribe("dlq.work", StartAt::Earliest))
        .await
        .unwrap();
    let originals = raw_records(&sandbox, "jobs.a", 2).await;
    let mut letters = Vec::new();
    for _ in 0..2 {
        let m = next(&mut dlq).await.unwrap();
        assert_eq!(m.key_id, sandbox.broker_public_key().unwrap().id());
        let opened = reader.open_dead_letter(&m).unwrap();
        let l = &opened.letter;
        assert_eq!(l.group, "work");
        assert_eq!(l.source_topic, "jobs.a");
        assert_eq!(
            hex::decode(&l.record).unwrap(),
            originals[l.source_offset as usize],
            "the original record, byte for byte"
        );
        assert_eq!(
            opened.original.key_id,
            sandbox.public_key("producer").unwrap().id()
        );
        letters.push((l.source_offset, l.delivery_count, l.reason.clone()));
    }
    letters.sort();
    assert_eq!(
        letters,
        vec![
            (0, 2, "max_deliveries".into()),
            (1, 1, "term: poison".into())
        ]
    );
    assert_eq!(
        stored_count(&sandbox, "dlq.work").await,
        2,
        "exactly once each"
    );

    // Any edit of what the broker signed breaks its signature.
    let raw = raw_records(&sandbox, "dlq.work", 1).await.remove(0);
    let mut trust = std::collections::HashMap::new();
    let key = sandbox.broker_public_key().unwrap();
    trust.insert(key.id(), signet_client::TrustedKey::all_topics(key));
    assert!(
        Verifier::new(trust.clone())
            .verify("dlq.work", &raw)
            .is_ok()
    );
    let mut record: StoredRecord = codec::decode(&raw).unwrap();
    let text = String::from_utf8(record.envelope.payload.clone()).unwrap();
    let edited = text
        .replace("max_deliveries", "max_deliverieZ")
        .replace("term: poison", "term: poisoN");
    assert_ne!(edited, text);
    record.envelope.payload = edited.into_bytes();
    let tampered = codec::encode_body(&record).unwrap();
    let refused = Verifier::new(trust)
        .verify("dlq.work", &tampered)
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::BadSignature);
    // Stop the broker (and close RocksDB) before the process exits.
    sandbox.stop().await;
}

#[tokio::test]
async fn lowering_max_deliveries_on_reload_dead_letters_what_is_over_it() {
    let mut sandbox = start_with(&specs(), &group_policy("30s", "[]", 5, 1000)).await;
    publish_n(&sandbox, "jobs.a", 1).await;
    let w1 = client(&sandbox, "w1").await;
    let mut c = within(w1.consume("work")).await.unwrap();
    let d = next_delivery(&mut c).await;
    within(d.nak(None)).await.unwrap();
    let d = next_delivery(&mut c).await;
    assert_eq!(d.delivery_count, 2);
    within(d.nak(Some(Duration::from_secs(3600))))
        .await
        .unwrap();
    sandbox.set_extra_policy(&group_policy("30s", "[]", 2, 1000));
    sandbox.write_policy().unwrap();
    sandbox.reload().unwrap();
    let auditor = within(Client::connect(config_trusting_broker(&sandbox, "auditor")))
        .await
        .unwrap();
    let mut dlq = within(auditor.subscribe("dlq.work", StartAt::Earliest))
        .await
        .unwrap();
    let m = next(&mut dlq).await.unwrap();
    let l = auditor.open_dead_letter(&m).unwrap().letter;
    assert_eq!((l.source_offset, l.delivery_count), (0, 2));
    // Stop the broker (and close RocksDB) before the process exits.
    sandbox.stop().await;
}

/// Runs the `signet` binary; returns (success, stdout lines as JSON, stderr).
async fn signet(args: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let run = common::process::signet(args).await;
    let lines = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (run.ok(), lines, run.stderr)
}

#[tokio::test]
async fn signet_consume_group_info_and_sub_on_the_dead_letter_topic() {
    // A short ack wait: a delivery leased to a `signet consume` that has
    // exited (past --count) comes back soon.
    let mut sandbox = start_with(&specs(), &group_policy("300ms", "[]", 5, 1000)).await;
    publish_n(&sandbox, "jobs.a", 3).await;
    let w1 = sandbox.write_client_file("w1").unwrap();
    let w1 = w1.to_str().unwrap();
    let (ok, lines, err) =
        signet(&["consume", "--client", w1, "--group", "work", "--count", "2"]).await;
    assert!(ok, "{err}");
    assert_eq!(lines.len(), 2);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["offset"], i as u64);
        assert_eq!(line["topic"], "jobs.a");
        assert_eq!(line["group"], "work");
        assert_eq!(line["delivery_count"], 1);
        assert_eq!(line["verified"], true);
        assert_eq!(line["payload"], format!("{{\"i\":{i}}}"));
    }
    let (ok, lines, err) = signet(&[
        "consume", "--client", w1, "--group", "work", "--count", "1", "--then", "term",
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(lines[0]["offset"], 2);
    assert!(lines[0]["delivery_count"].as_u64().unwrap() >= 1);
    let (ok, info, err) = signet(&["group", "info", "--client", w1, "--group", "work"]).await;
    assert!(ok, "{err}");
    let t = &info[0]["topics"][0];
    assert_eq!(
        (t["acked"].as_u64(), t["dead"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        (t["acked_floor"].as_u64(), t["in_flight"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(t["removed"].as_u64(), Some(0), "nothing lost to retention");
    assert!(info[0]["waiting"].is_null());

    let outsider = sandbox.write_client_file("outsider").unwrap();
    let (ok, _, err) = signet(&[
        "consume",
        "--client",
        outsider.to_str().unwrap(),
        "--group",
        "work",
        "--count",
        "1",
    ])
    .await;
    assert!(!ok && err.contains("Forbidden"), "{err}");

    // The auditor's client file trusts the broker key for dead letters.
    let broker = sandbox.broker_public_key().unwrap();
    let auditor = sandbox.path().join("auditor-dlq.toml");
    std::fs::write(
        &auditor,
        format!(
            "{}{:?} = {{ key = {:?}, topics = [\"dlq.>\"] }}\n",
            sandbox.client_file_text("auditor").unwrap(),
            broker.id().to_hex(),
            broker.to_string()
        ),
    )
    .unwrap();
    let (ok, lines, err) = signet(&[
        "sub",
        "--client",
        auditor.to_str().unwrap(),
        "--topic",
        "dlq.work",
        "--from-offset",
        "0",
        "--count",
        "1",
    ])
    .await;
    assert!(ok, "{err}");
    let dead = &lines[0]["dead_letter"];
    assert_eq!(dead["reason"], "term: signet consume --then term");
    assert_eq!(dead["source_offset"], 2);
    assert_eq!(dead["broker_signature_verified"], true);
    assert_eq!(dead["original"]["verified"], true);
    assert_eq!(dead["original"]["payload"], "{\"i\":2}");
    // Stop the broker (and close RocksDB) before the process exits.
    sandbox.stop().await;
}

#[tokio::test]
async fn a_group_at_max_in_flight_waits_and_says_why() {
    let mut sandbox = start_with(&specs(), &group_policy("30s", "[]", 5, 2)).await;
    publish_n(&sandbox, "jobs.a", 5).await;
    let w1 = client(&sandbox, "w1").await;
    let mut c = within(w1.consume_with("work", 10)).await.unwrap();
    let first = next_delivery(&mut c).await;
    let _second = next_delivery(&mut c).await;
    let info = within(w1.group_info("work")).await.unwrap();
    let t = &info.topics[0];
    assert_eq!((t.in_flight, t.pending), (2, 3));
    let waiting = info.waiting.expect("the group says why it waits");
    assert!(waiting.contains("max_in_flight"), "{waiting}");
    // One ack frees one slot: the next message comes.
    within(first.ack()).await.unwrap();
    let third = next_delivery(&mut c).await;
    assert_eq!(third.offset(), 2);
    // Stop the broker (and close RocksDB) before the process exits.
    sandbox.stop().await;
}
