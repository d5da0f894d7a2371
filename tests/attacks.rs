//! Attacks on ingest and storage (THREATS T3, T5, T6, T8, T12, T13): each
//! refused with its typed code, with nothing stored or delivered.

mod common;

use common::codes::nack_codes;
use common::*;
use signet_client::StartAt;
use signet_proto::frame::{ClientFrame, Outcome, ServerFrame};
use signet_proto::stream::{read_frame, write_frame};
use signet_proto::{ErrorCode, SigningKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_outside_acl_is_forbidden_and_nothing_is_stored_or_delivered() {
    let mut sandbox = started().await;
    let auditor = client(&sandbox, "auditor").await;
    let mut watch = within(auditor.subscribe("orders.created", StartAt::Latest))
        .await
        .unwrap();
    let bob = client(&sandbox, "bob").await;
    let err = within(bob.publish("orders.created", b"{}".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    assert_eq!(stored_count(&sandbox, "orders.created").await, 0);
    // The next thing the live subscriber sees is a later, allowed message.
    let alice = client(&sandbox, "alice").await;
    within(alice.publish("orders.created", b"sentinel".to_vec()))
        .await
        .unwrap();
    let m = next(&mut watch).await.unwrap();
    assert_eq!((m.offset, m.payload.as_slice()), (0, &b"sentinel"[..]));
    // bob's own topics still work on the same connection.
    assert_eq!(
        within(bob.publish("billing.x", b"ok".to_vec()))
            .await
            .unwrap(),
        0
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_outside_acl_is_forbidden() {
    let mut sandbox = started().await;
    let bob = client(&sandbox, "bob").await;
    let err = within(bob.subscribe("orders.created", StartAt::Earliest))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_of_another_principal_or_unknown_key_is_refused() {
    let mut sandbox = started().await;
    let bob = client(&sandbox, "bob").await;
    let alice_key = signing_key(&sandbox, "alice");
    // Signed by alice's key on bob's connection, to a topic bob may publish.
    let publish = signed(
        &alice_key,
        1,
        vec![envelope(alice_key.id(), "billing.x", fresh_seq(), b"{}")],
    );
    assert_eq!(
        nack_codes(raw_publish(&bob, publish).await),
        vec![Some(ErrorCode::KeyNotBound)]
    );
    let stranger = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let publish = signed(
        &stranger,
        2,
        vec![envelope(stranger.id(), "billing.x", fresh_seq(), b"{}")],
    );
    assert_eq!(
        nack_codes(raw_publish(&bob, publish).await),
        vec![Some(ErrorCode::UnknownKey)]
    );
    assert_eq!(stored_count(&sandbox, "billing.x").await, 0);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_payload_header_topic_or_signature_is_bad_signature() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let make = |request_id| {
        let mut e = envelope(key.id(), "orders.a", fresh_seq(), br#"{"amount":100}"#);
        e.headers.push(signet_proto::Header {
            name: "publisher".into(),
            value: b"alice".to_vec(),
        });
        signed(&key, request_id, vec![e])
    };
    let mut payload = make(1);
    payload.envelopes[0].payload[11] ^= 0x01;
    let mut header = make(2);
    header.envelopes[0].headers[0].value[0] ^= 0x01;
    let mut topic = make(3);
    topic.envelopes[0].topic = "orders.b".into();
    let mut signature = make(4);
    signature.signature[10] ^= 0x01;
    for publish in [payload, header, topic, signature] {
        assert_eq!(
            nack_codes(raw_publish(&alice, publish).await),
            vec![Some(ErrorCode::BadSignature)]
        );
    }
    assert_eq!(stored_count(&sandbox, "orders.a").await, 0);
    assert_eq!(stored_count(&sandbox, "orders.b").await, 0);
    // An untouched batch of the same shape is accepted.
    assert_eq!(nack_codes(raw_publish(&alice, make(5)).await), vec![None]);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_envelope_rejects_only_itself_unless_it_breaks_the_signature() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let seq = fresh_seq();
    let envelopes = vec![
        envelope(key.id(), "orders.mixed", seq, b"1"),
        envelope(key.id(), "billing.nope", seq + 1, b"2"),
        envelope(key.id(), "orders.mixed", seq + 2, b"3"),
    ];
    let codes = nack_codes(raw_publish(&alice, signed(&key, 1, envelopes)).await);
    assert_eq!(codes, vec![None, Some(ErrorCode::Forbidden), None]);
    assert_eq!(stored_count(&sandbox, "orders.mixed").await, 2);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_signed_message_twice_is_stored_once_also_after_restart() {
    let mut sandbox = started().await;
    let key = signing_key(&sandbox, "alice");
    let publish = signed(
        &key,
        1,
        vec![envelope(key.id(), "orders.once", fresh_seq(), b"{}")],
    );
    let alice = client(&sandbox, "alice").await;
    assert_eq!(
        nack_codes(raw_publish(&alice, publish.clone()).await),
        vec![None]
    );
    // Since idempotent publish (issue 9) the same signed bytes again are a
    // retry: acked with the original offset, never stored twice. The same
    // seq under other bytes is still Replay (tests/reconnect.rs).
    assert_eq!(
        outcomes_of(raw_publish(&alice, publish.clone()).await),
        vec![Outcome::Ack(0)]
    );
    alice.close().await;
    sandbox.restart().await.unwrap();
    let alice = client(&sandbox, "alice").await;
    assert_eq!(
        outcomes_of(raw_publish(&alice, publish.clone()).await),
        vec![Outcome::Ack(0)]
    );
    let mut other = publish.envelopes[0].clone();
    other.salt = signet_proto::Salt::random().unwrap();
    assert_eq!(
        nack_codes(raw_publish(&alice, signed(&key, 2, vec![other])).await),
        vec![Some(ErrorCode::Replay)]
    );
    assert_eq!(stored_count(&sandbox, "orders.once").await, 1);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_outside_skew_window_is_stale() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let seq = fresh_seq();
    let mut old = envelope(key.id(), "orders.time", seq, b"{}");
    old.timestamp_ms -= 3_600_000;
    let mut future = envelope(key.id(), "orders.time", seq + 1, b"{}");
    future.timestamp_ms += 3_600_000;
    let codes = nack_codes(raw_publish(&alice, signed(&key, 1, vec![old, future])).await);
    assert_eq!(
        codes,
        vec![
            Some(ErrorCode::StaleTimestamp),
            Some(ErrorCode::StaleTimestamp)
        ]
    );
    assert_eq!(stored_count(&sandbox, "orders.time").await, 0);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_that_connection_and_broker_serves_others() {
    let mut sandbox = started().await;
    let mallory = client(&sandbox, "alice").await;
    let (mut send, mut recv) = within(mallory.connection().open_bi()).await.unwrap();
    // Announce a 4 GiB frame and send nothing more: the broker must answer
    // from the length alone.
    within(send.write_all(&u32::MAX.to_be_bytes()))
        .await
        .unwrap();
    let answer = within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX)).await;
    if let Ok(Some(frame)) = answer {
        assert!(
            matches!(frame, ServerFrame::Error(ref r) if r.code == ErrorCode::TooLarge),
            "{frame:?}"
        );
    }
    let closed = within(mallory.connection().closed()).await;
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from(ErrorCode::TooLarge.0));
        }
        other => panic!("unexpected close: {other:?}"),
    }
    let alice = client(&sandbox, "alice").await;
    assert_eq!(
        within(alice.publish("orders.after", b"{}".to_vec()))
            .await
            .unwrap(),
        0
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_is_bad_frame_and_broker_serves_others() {
    let mut sandbox = started().await;
    let mallory = client(&sandbox, "alice").await;
    let (mut send, mut recv) = within(mallory.connection().open_bi()).await.unwrap();
    let mut frame = 5u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0xc1, 0xc1, 0xc1, 0xc1, 0xc1]);
    within(send.write_all(&frame)).await.unwrap();
    let answer = within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX)).await;
    if let Ok(Some(frame)) = answer {
        assert!(
            matches!(frame, ServerFrame::Error(ref r) if r.code == ErrorCode::BadFrame),
            "{frame:?}"
        );
    }
    let closed = within(mallory.connection().closed()).await;
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == quinn::VarInt::from(ErrorCode::BadFrame.0))
    );
    let alice = client(&sandbox, "alice").await;
    assert_eq!(
        within(alice.publish("orders.after", b"{}".to_vec()))
            .await
            .unwrap(),
        0
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_frame_on_publish_stream_is_refused() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let (mut send, mut recv) = within(alice.connection().open_bi()).await.unwrap();
    let publish = signed(
        &key,
        1,
        vec![envelope(key.id(), "orders.mix", fresh_seq(), b"{}")],
    );
    within(write_frame(&mut send, &ClientFrame::Publish(publish)))
        .await
        .unwrap();
    let sub = ClientFrame::Subscribe(signet_proto::frame::Subscribe {
        topic: "orders.mix".into(),
        start: StartAt::Earliest,
    });
    within(write_frame(&mut send, &sub)).await.unwrap();
    let first = within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(nack_codes(first), vec![None]);
    let second = within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(second, ServerFrame::Error(ref r) if r.code == ErrorCode::BadFrame),
        "{second:?}"
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_flipped_in_rocksdb_is_reported_never_delivered_as_verified() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    for i in 0..3 {
        within(alice.publish("orders.disk", format!("SECRET-PAYLOAD-{i}").into_bytes()))
            .await
            .unwrap();
    }
    alice.close().await;
    sandbox.stop().await;

    // Behind the broker's back: flip one payload byte of offset 1 on disk.
    {
        let families = signet_broker::store::FAMILIES;
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), sandbox.data_dir(), families)
            .unwrap();
        let cf = db.cf_handle(signet_broker::store::CF_MESSAGES).unwrap();
        let mut target = None;
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (key, value) = item.unwrap();
            if let Some(at) = value.windows(16).position(|w| w == b"SECRET-PAYLOAD-1") {
                target = Some((key.to_vec(), value.to_vec(), at));
            }
        }
        let (key, mut value, at) = target.expect("stored record found");
        value[at + 3] ^= 0x20;
        db.put_cf(cf, key, value).unwrap();
        db.flush_cf(cf).unwrap();
    }

    sandbox.start().await.unwrap();
    let reader = client(&sandbox, "auditor").await;
    let mut sub = within(reader.subscribe("orders.disk", StartAt::Earliest))
        .await
        .unwrap();
    let first = next(&mut sub).await.unwrap();
    assert_eq!(first.payload, b"SECRET-PAYLOAD-0");
    match next(&mut sub).await {
        Err(signet_client::Error::Verify { offset, code, .. }) => {
            assert_eq!(offset, 1);
            assert_eq!(code, ErrorCode::BadSignature);
        }
        other => panic!("tampered message must not verify: {other:?}"),
    }
    let third = next(&mut sub).await.unwrap();
    assert_eq!(
        (third.offset, third.payload.as_slice()),
        (2, &b"SECRET-PAYLOAD-2"[..])
    );
    sandbox.stop().await;
}

/// The outcomes of a raw publish's `Results`.
fn outcomes_of(frame: ServerFrame) -> Vec<Outcome> {
    match frame {
        ServerFrame::Results(r) => r.outcomes,
        other => panic!("expected results, got {other:?}"),
    }
}
