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
