//! Idempotent publish and a client that reconnects by itself: a retry of
//! a stored envelope gets its original offset (also after a restart); a
//! different envelope reusing the seq stays `Replay`.

mod common;

use common::codes::nack_codes;
use common::*;
use signet_client::ErrorCode;
use signet_proto::frame::{Outcome, ServerFrame};

/// The outcomes of a raw publish's answer.
fn outcomes(frame: ServerFrame) -> Vec<Outcome> {
    match frame {
        ServerFrame::Results(r) => r.outcomes,
        other => panic!("expected results, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_envelope_gets_its_original_offset_and_a_different_one_stays_replay() {
    let mut sandbox =
        start_with(&principals(), "[limits]\nidempotency_window_seqs_max = 4\n").await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let base = fresh_seq();
    // Two messages before, so the offsets are not 0.
    within(alice.publish("orders.idem", b"{}".to_vec()))
        .await
        .unwrap();
    within(alice.publish("orders.idem", b"{}".to_vec()))
        .await
        .unwrap();
    let first = envelope(key.id(), "orders.idem", base, b"{\"n\":1}");
    let second = envelope(key.id(), "orders.idem", base + 1, b"{\"n\":2}");
    let batch = signed(&key, 1, vec![first.clone(), second.clone()]);
    assert_eq!(
        outcomes(raw_publish(&alice, batch.clone()).await),
        [Outcome::Ack(2), Outcome::Ack(3)]
    );

    // The same frame again: the original offsets, nothing stored twice.
    assert_eq!(
        outcomes(raw_publish(&alice, batch.clone()).await),
        [Outcome::Ack(2), Outcome::Ack(3)]
    );
    // One envelope alone, signed in another batch (same signed bytes).
    assert_eq!(
        outcomes(raw_publish(&alice, signed(&key, 2, vec![second.clone()])).await),
        [Outcome::Ack(3)]
    );

    // Another envelope with a stored (key, seq): Replay, nothing stored.
    let forged = envelope(key.id(), "orders.idem", base + 1, b"{\"n\":2}");
    assert_eq!(
        nack_codes(raw_publish(&alice, signed(&key, 3, vec![forged])).await),
        [Some(ErrorCode::Replay)]
    );
    // The same seq on another topic is another envelope too.
    let elsewhere = envelope(key.id(), "orders.other", base + 1, b"{\"n\":2}");
    assert_eq!(
        nack_codes(raw_publish(&alice, signed(&key, 4, vec![elsewhere])).await),
        [Some(ErrorCode::Replay)]
    );

    // A mix: a retry and a new envelope in one batch (nothing above was
    // stored: the new one is at 4).
    let third = envelope(key.id(), "orders.idem", base + 2, b"{\"n\":3}");
    assert_eq!(
        outcomes(raw_publish(&alice, signed(&key, 5, vec![second.clone(), third])).await),
        [Outcome::Ack(3), Outcome::Ack(4)]
    );

    // The window survives a restart (it is written with the marks).
    alice.close().await;
    sandbox.restart().await.unwrap();
    let alice = client(&sandbox, "alice").await;
    assert_eq!(
        outcomes(raw_publish(&alice, batch.clone()).await),
        [Outcome::Ack(2), Outcome::Ack(3)]
    );
    assert_eq!(stored_count(&sandbox, "orders.idem").await, 5);

    // Past the window (4 seqs), a retry is Replay again.
    let later: Vec<_> = (0..8)
        .map(|i| envelope(key.id(), "orders.idem", base + 10 + i, b"{}"))
        .collect();
    let acked = outcomes(raw_publish(&alice, signed(&key, 6, later)).await);
    assert!(
        acked.iter().all(|o| matches!(o, Outcome::Ack(_))),
        "{acked:?}"
    );
    assert_eq!(
        nack_codes(raw_publish(&alice, signed(&key, 7, vec![first])).await),
        [Some(ErrorCode::Replay)]
    );
    assert_eq!(stored_count(&sandbox, "orders.idem").await, 13);
    assert_eq!(stored_count(&sandbox, "orders.other").await, 0);
    sandbox.stop().await;
}

/// A client config for `name` that dials again after a lost connection.
fn reconnecting(sandbox: &Sandbox, name: &str) -> signet_client::ClientConfig {
    let mut config = sandbox.client_config(name).expect("config");
    config.reconnect_attempts = 50;
    config.reconnect_max = std::time::Duration::from_millis(200);
    config
}

async fn connect(config: signet_client::ClientConfig) -> signet_client::Client {
    within(signet_client::Client::connect(config))
        .await
        .expect("connects")
}

fn reconnect_specs() -> Vec<PrincipalSpec> {
    vec![
        PrincipalSpec::new("producer").publish("orders.>"),
        PrincipalSpec::new("reader")
            .subscribe("orders.>")
            .consume("work"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ]
}

const GROUP: &str = "[[group]]\nname = \"work\"\ntopics = [\"orders.>\"]\nstart = \"earliest\"\nack_wait = \"1s\"\nmax_deliveries = 100\nbackoff = [\"100ms\"]\ndead_letter = \"dlq.work\"\nmax_in_flight = 1000\n";

/// Publishes `{"i":i}` for each `i` of `range` to `topic(i)`, pipelined,
/// and returns the acked offsets in order.
async fn publish_each(
    producer: &signet_client::Client,
    range: std::ops::Range<u32>,
    topic: impl Fn(u32) -> &'static str,
) -> Vec<u64> {
    let mut acks = Vec::new();
    for i in range {
        let body = format!("{{\"i\":{i}}}").into_bytes();
        acks.push(
            within(producer.enqueue(signet_client::OutgoingMessage::new(topic(i), body)))
                .await
                .unwrap(),
        );
    }
    let mut offsets = Vec::new();
    for ack in acks {
        offsets.push(within(ack).await.expect("acked"));
    }
    offsets
}

/// Reads `n` messages from a pattern subscription into `seen` (offsets per topic).
async fn read_pattern(
    sub: &mut signet_client::Subscription,
    n: usize,
    seen: &mut std::collections::BTreeMap<String, Vec<u64>>,
) {
    use futures_util::StreamExt;
    for _ in 0..n {
        let m = within(sub.next()).await.unwrap().unwrap();
        seen.entry(m.topic.clone()).or_default().push(m.offset);
    }
}

/// The broker restarts under a live topic subscription, a live pattern
/// subscription and a group member: each resumes by itself, the
/// subscriptions with no gap and no duplicate, the member by joining
/// again (what it held unacked comes back after its lease), and the
/// publisher's messages published across the restart are each stored
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_and_a_group_member_resume_across_a_broker_restart() {
    use futures_util::StreamExt;
    use signet_client::StartAt;
    use std::collections::{BTreeMap, BTreeSet};

    let mut sandbox = start_with(&reconnect_specs(), GROUP).await;
    let producer = connect(reconnecting(&sandbox, "producer")).await;
    let reader = connect(reconnecting(&sandbox, "reader")).await;
    let mut exact = within(reader.subscribe("orders.a", StartAt::Earliest))
        .await
        .unwrap();
    let mut pattern = within(reader.subscribe("orders.>", StartAt::Earliest))
        .await
        .unwrap();
    let mut member = within(reader.consume_with("work", 4)).await.unwrap();

    let publish = |range: std::ops::Range<u32>| {
        publish_each(&producer, range, |i| {
            if i % 2 == 0 { "orders.a" } else { "orders.b" }
        })
    };
    // Before the restart: 20 messages (10 per topic), all read.
    publish(0..20).await;
    let mut exact_seen = Vec::new();
    while exact_seen.len() < 10 {
        exact_seen.push(within(exact.next()).await.unwrap().unwrap().offset);
    }
    let mut pattern_seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    read_pattern(&mut pattern, 20, &mut pattern_seen).await;
    // The member acks some and holds some unacked across the restart.
    let mut acked: BTreeSet<(String, u64)> = BTreeSet::new();
    for _ in 0..3 {
        let d = within(member.next()).await.unwrap().unwrap();
        within(d.ack()).await.unwrap();
        acked.insert((d.topic().to_owned(), d.offset()));
    }
    let held = within(member.next()).await.unwrap().unwrap();

    within(sandbox.restart()).await.unwrap();

    // After: 20 more, published on the reconnected publisher.
    publish(20..40).await;
    while exact_seen.len() < 20 {
        exact_seen.push(within(exact.next()).await.unwrap().unwrap().offset);
    }
    assert_eq!(
        exact_seen,
        (0..20).collect::<Vec<u64>>(),
        "no gap, no duplicate"
    );
    read_pattern(&mut pattern, 20, &mut pattern_seen).await;
    for (topic, offsets) in &pattern_seen {
        assert_eq!(offsets, &(0..20).collect::<Vec<u64>>(), "{topic}");
    }
    assert_eq!(pattern_seen.len(), 2);

    // The delivery held before the restart can no longer be settled by
    // this (new) membership; the member gets the rest, and that one again.
    assert!(
        within(held.ack()).await.is_err(),
        "a lease of the old membership"
    );
    while acked.len() < 40 {
        let d = within(member.next()).await.unwrap().unwrap();
        assert!(
            !acked.contains(&(d.topic().to_owned(), d.offset())),
            "an acked message came back"
        );
        within(d.ack()).await.unwrap();
        acked.insert((d.topic().to_owned(), d.offset()));
    }
    assert_eq!(stored_count(&sandbox, "orders.a").await, 20);
    assert_eq!(stored_count(&sandbox, "orders.b").await, 20);
    producer.close().await;
    reader.close().await;
    sandbox.stop().await;
}

/// Publishes pipelined while the broker restarts: every publish is acked
/// (retried by the client across the restart), each message is stored
/// exactly once, and the acked offsets are exactly the stored ones. A
/// batch the broker stored but could not answer before it stopped is
/// answered on retry with its original offsets (idempotent publish), not
/// `Replay`, and not stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_in_flight_across_a_restart_are_acked_once_each() {
    let mut sandbox = start_with(&reconnect_specs(), GROUP).await;
    let producer = connect(reconnecting(&sandbox, "producer")).await;
    let mut acks = Vec::new();
    for i in 0..2000u32 {
        let body = format!("{{\"i\":{i}}}").into_bytes();
        acks.push(
            within(producer.enqueue(signet_client::OutgoingMessage::new("orders.flight", body)))
                .await
                .unwrap(),
        );
        if i == 1000 {
            within(sandbox.restart()).await.unwrap();
        }
    }
    let mut offsets = Vec::new();
    for ack in acks {
        offsets.push(within(ack).await.expect("every publish acked"));
    }
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (0..2000).collect::<Vec<u64>>(),
        "each acked once, no gap"
    );
    assert_eq!(stored_count(&sandbox, "orders.flight").await, 2000);
    producer.close().await;
    sandbox.stop().await;
}

/// A publish that waits for its signing key's lock (another publisher
/// sharing the key holds it) while the broker restarts is sent on the new
/// connection once the lock is free: acked, stored once, and the publisher
/// keeps working. Before, the publishing task ended when it found its
/// stream's reader gone after the wait, and the publish (and every later
/// one) was answered "publisher stopped" without ever being sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_waiting_for_the_key_lock_across_a_restart_is_acked_once() {
    let mut sandbox = start_with(&reconnect_specs(), GROUP).await;
    let producer = connect(reconnecting(&sandbox, "producer")).await;
    let first = within(producer.publish("orders.lock", b"{\"n\":1}".to_vec()))
        .await
        .unwrap();
    // Another publisher takes the key's lock (the producer lets it go once
    // its publish is answered).
    let mut lock_path = sandbox
        .signing_key_path("producer")
        .unwrap()
        .into_os_string();
    lock_path.push(".seq.lock");
    let lock = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&lock_path)
        .unwrap();
    let lock = within(tokio::task::spawn_blocking(move || {
        lock.lock().map(|()| lock)
    }))
    .await
    .unwrap()
    .unwrap();
    // Queued at once; its stream is open and it waits for the lock, while
    // the restart ends that stream's connection.
    let ack = within(producer.enqueue(signet_client::OutgoingMessage::new(
        "orders.lock",
        b"{\"n\":2}".to_vec(),
    )))
    .await
    .unwrap();
    within(sandbox.restart()).await.unwrap();
    drop(lock);
    let second = within(ack).await.expect("acked once the lock is free");
    assert_eq!(second, first + 1);
    let third = within(producer.publish("orders.lock", b"{\"n\":3}".to_vec()))
        .await
        .expect("the publisher keeps working");
    assert_eq!(third, first + 2);
    assert_eq!(stored_count(&sandbox, "orders.lock").await, 3);
    producer.close().await;
    sandbox.stop().await;
}

/// A member whose broker stops holds deliveries it received and the
/// application has not taken yet. Their membership is gone with the
/// connection, so none of them may be handed out any more: the first
/// delivery the application takes once the broker is back is of the new
/// membership and settles. (Before, the stream handed out the old ones
/// until the member had joined again, and their acks failed with
/// `ConnectionLost`; the restart test above hit that now and then.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_not_handed_deliveries_of_a_membership_its_broker_ended() {
    use futures_util::StreamExt;

    let mut sandbox = start_with(&reconnect_specs(), GROUP).await;
    let producer = connect(reconnecting(&sandbox, "producer")).await;
    publish_each(&producer, 0..20, |_| "orders.a").await;
    // Joined after the messages are stored: the first deliveries come
    // together, so after taking one the member holds the others unread.
    let reader = connect(reconnecting(&sandbox, "reader")).await;
    let mut member = within(reader.consume_with("work", 8)).await.unwrap();
    let held = within(member.next()).await.unwrap().unwrap();

    sandbox.stop().await;
    assert!(
        within(held.ack()).await.is_err(),
        "a lease of the ended membership"
    );
    // Taken while the broker starts again: nothing from before the stop.
    let (next, started) = tokio::join!(within(member.next()), sandbox.start());
    started.expect("broker starts again");
    let d = next.expect("a delivery").expect("verified");
    within(d.ack())
        .await
        .expect("a delivery of the new membership settles");
    assert_eq!(stored_count(&sandbox, "orders.a").await, 20);
    producer.close().await;
    reader.close().await;
    sandbox.stop().await;
}
