//! The secure spine end to end: real QUIC, mutual TLS, signatures, RocksDB.

mod common;

use common::*;
use signet_client::{OutgoingMessage, StartAt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_subscribe_from_offset_zero_round_trips() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    let message = OutgoingMessage::new("orders.created", br#"{"id":1}"#.to_vec())
        .content_type("application/json")
        .header("trace", b"t-1".to_vec());
    let offset = within(alice.publish_message(message)).await.unwrap();
    assert_eq!(offset, 0);
    let mut sub = within(alice.subscribe("orders.created", StartAt::Offset(0)))
        .await
        .unwrap();
    let got = next(&mut sub).await.unwrap();
    assert_eq!(got.offset, 0);
    assert_eq!(got.topic, "orders.created");
    assert_eq!(got.payload, br#"{"id":1}"#);
    assert_eq!(got.content_type, "application/json");
    assert_eq!(got.headers, vec![("trace".to_string(), b"t-1".to_vec())]);
    assert_eq!(got.key_id, sandbox.public_key("alice").unwrap().id());
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscriber_gets_stored_then_live_without_gaps_or_repeats() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    for i in 0..10u32 {
        within(alice.publish("orders.live", i.to_be_bytes().to_vec()))
            .await
            .unwrap();
    }
    let reader = client(&sandbox, "auditor").await;
    let mut sub = within(reader.subscribe("orders.live", StartAt::Earliest))
        .await
        .unwrap();
    // Publish more while the subscriber is catching up on stored messages.
    let mut acks = Vec::new();
    for i in 10..300u32 {
        acks.push(
            within(alice.enqueue(OutgoingMessage::new(
                "orders.live",
                i.to_be_bytes().to_vec(),
            )))
            .await
            .unwrap(),
        );
    }
    for ack in acks {
        within(ack).await.unwrap();
    }
    for expected in 0..300u64 {
        let m = next(&mut sub).await.unwrap();
        assert_eq!(m.offset, expected);
        assert_eq!(m.payload, (expected as u32).to_be_bytes());
    }
    // A subscriber from "latest" sees only what comes after it.
    let mut latest = within(reader.subscribe("orders.live", StartAt::Latest))
        .await
        .unwrap();
    assert_eq!(latest.next_offset_at_open(), 300);
    within(alice.publish("orders.live", b"new".to_vec()))
        .await
        .unwrap();
    let m = next(&mut latest).await.unwrap();
    assert_eq!((m.offset, m.payload.as_slice()), (300, &b"new"[..]));
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_pipelined_publishes_survive_a_restart() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    let mut acks = Vec::with_capacity(1000);
    for i in 0..1000u32 {
        let ack = within(alice.enqueue(OutgoingMessage::new(
            "orders.bulk",
            i.to_be_bytes().to_vec(),
        )))
        .await
        .unwrap();
        acks.push(ack);
    }
    let mut offsets = Vec::with_capacity(1000);
    for ack in acks {
        offsets.push(within(ack).await.unwrap());
    }
    assert_eq!(
        offsets,
        (0..1000).collect::<Vec<u64>>(),
        "offsets are dense and in order"
    );
    alice.close().await;
    sandbox.restart().await.unwrap();

    let reader = client(&sandbox, "auditor").await;
    let mut sub = within(reader.subscribe("orders.bulk", StartAt::Offset(0)))
        .await
        .unwrap();
    assert_eq!(sub.next_offset_at_open(), 1000);
    for expected in 0..1000u64 {
        let m = next(&mut sub).await.unwrap();
        assert_eq!(m.offset, expected);
        assert_eq!(m.payload, (expected as u32).to_be_bytes());
    }
    // Offsets continue after the restart, and the restarted publisher's
    // sequence numbers are not taken for replays.
    let alice = client(&sandbox, "alice").await;
    assert_eq!(
        within(alice.publish("orders.bulk", b"after".to_vec()))
            .await
            .unwrap(),
        1000
    );
    let m = next(&mut sub).await.unwrap();
    assert_eq!((m.offset, m.payload.as_slice()), (1000, &b"after"[..]));
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_per_topic_and_batches_can_span_topics() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    let mut acks = Vec::new();
    for i in 0..20u32 {
        let topic = if i % 2 == 0 {
            "orders.even"
        } else {
            "orders.odd"
        };
        acks.push(
            within(alice.enqueue(OutgoingMessage::new(topic, vec![i as u8])))
                .await
                .unwrap(),
        );
    }
    let mut offsets = Vec::new();
    for ack in acks {
        offsets.push(within(ack).await.unwrap());
    }
    let evens: Vec<u64> = offsets.iter().step_by(2).copied().collect();
    let odds: Vec<u64> = offsets.iter().skip(1).step_by(2).copied().collect();
    assert_eq!(evens, (0..10).collect::<Vec<_>>());
    assert_eq!(odds, (0..10).collect::<Vec<_>>());
    sandbox.stop().await;
}
