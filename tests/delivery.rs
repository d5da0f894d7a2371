//! Delivery that every subscriber can read, and that stops at a revocation
//! (THREATS T4, T12): chunks never grow past their budget unless they hold
//! one record, and a subscriber far behind is re-checked before every chunk.

mod common;

use common::*;
use signet_client::{OutgoingMessage, StartAt};
use signet_proto::codec::{self, LENGTH_PREFIX_BYTES};
use signet_proto::frame::{ClientFrame, ServerFrame, Subscribe};
use signet_proto::stream::write_frame;
use signet_proto::{ErrorCode, StoredRecord};

/// Reads one server frame from a raw stream; returns it with its length on
/// the wire (prefix included), or `None` at the end of the stream.
async fn raw_frame(recv: &mut quinn::RecvStream) -> Option<(usize, ServerFrame)> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    within(recv.read_exact(&mut prefix)).await.ok()?;
    let len = u32::from_be_bytes(prefix) as usize;
    let mut body = vec![0u8; len];
    within(recv.read_exact(&mut body))
        .await
        .expect("frame body");
    let frame = codec::decode::<ServerFrame>(&body).expect("a server frame");
    Some((LENGTH_PREFIX_BYTES + len, frame))
}

/// Opens a raw subscription on `client`'s connection and reads `Subscribed`.
async fn raw_subscribe(
    client: &signet_client::Client,
    topic: &str,
    start: StartAt,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = within(client.connection().open_bi()).await.unwrap();
    let frame = ClientFrame::Subscribe(Subscribe {
        topic: topic.into(),
        start,
    });
    within(write_frame(&mut send, &frame)).await.unwrap();
    match raw_frame(&mut recv).await {
        Some((_, ServerFrame::Subscribed { .. })) => {}
        other => panic!("expected Subscribed, got {other:?}"),
    }
    (send, recv)
}

/// Reproduction: with `max_message_bytes = 3145728`, a ~1 MB message then a
/// 3 MiB message were both acked, and every read from offset 0 got one
/// 4,194,482-byte Deliver frame (both records) that readers refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_never_grows_past_its_budget_unless_it_holds_one_record() {
    const CHUNK_BUDGET: usize = 1024 * 1024;
    let mut sandbox = start_with(
        &principals(),
        // 3 MiB of payload plus room for the rest of the envelope (the
        // whole envelope counts against message_bytes_max).
        "[limits]\nmessage_bytes_max = 3149824\ndeliver_chunk_bytes_max = 1048576\n",
    )
    .await;
    let alice = client(&sandbox, "alice").await;
    let small = vec![b'a'; 1_000_000];
    let large = vec![b'b'; 3 * 1024 * 1024];
    assert_eq!(
        within(alice.publish("orders.big", small.clone()))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        within(alice.publish("orders.big", large.clone()))
            .await
            .unwrap(),
        1
    );

    // Through the client: both messages, from offset 0.
    let auditor = client(&sandbox, "auditor").await;
    let mut sub = within(auditor.subscribe("orders.big", StartAt::Offset(0)))
        .await
        .unwrap();
    let first = next(&mut sub).await.unwrap();
    assert_eq!((first.offset, first.payload.len()), (0, small.len()));
    let second = next(&mut sub).await.unwrap();
    assert_eq!((second.offset, second.payload.len()), (1, large.len()));

    // Raw: every Deliver frame holds one record or records within the budget.
    let (_send, mut recv) = raw_subscribe(&auditor, "orders.big", StartAt::Offset(0)).await;
    let mut seen = 0;
    while seen < 2 {
        let Some((wire_len, frame)) = raw_frame(&mut recv).await else {
            panic!("stream ended after {seen} messages");
        };
        let ServerFrame::Deliver(chunk) = frame else {
            panic!("expected Deliver, got {frame:?}");
        };
        let records: usize = chunk.iter().map(|d| d.record.len()).sum();
        assert!(
            chunk.len() == 1 || records <= CHUNK_BUDGET,
            "a Deliver frame of {wire_len} bytes holds {} records of {records} bytes, over the {CHUNK_BUDGET}-byte chunk budget",
            chunk.len()
        );
        let largest = chunk.iter().map(|d| d.record.len()).max().unwrap_or(0);
        assert!(
            wire_len <= CHUNK_BUDGET.max(largest) + 64 * chunk.len() + 16,
            "a Deliver frame of {wire_len} bytes exceeds max(chunk budget, one record) + framing"
        );
        seen += chunk.len();
    }
    sandbox.stop().await;
}

/// Reproduction: a slow subscriber whose grant was revoked kept receiving
/// stored messages, including ones published after the revocation, because
/// the policy was only looked at once it caught up with the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_far_behind_gets_nothing_published_after_its_revocation() {
    let specs = [
        PrincipalSpec::new("alice").publish("orders.>"),
        PrincipalSpec::new("dave").subscribe("orders.>"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ];
    let mut sandbox = start_with(&specs, "").await;
    let alice = client(&sandbox, "alice").await;
    // 16 MiB stored: more than the subscriber's QUIC windows hold, so the
    // broker is still reading stored chunks when the grant is revoked.
    let mut acks = Vec::new();
    for i in 0..2048u32 {
        let mut payload = vec![b'.'; 8 * 1024];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        acks.push(
            within(alice.enqueue(OutgoingMessage::new("orders.slow", payload)))
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        within(ack).await.unwrap();
    }

    let dave = client(&sandbox, "dave").await;
    let (_send, mut recv) = raw_subscribe(&dave, "orders.slow", StartAt::Earliest).await;
    match raw_frame(&mut recv).await {
        Some((_, ServerFrame::Deliver(chunk))) => assert_eq!(chunk[0].offset, 0),
        other => panic!("expected a first Deliver, got {other:?}"),
    }
    // The subscriber stops reading; its grant is revoked.
    sandbox.set_spec(PrincipalSpec::new("dave")).unwrap();
    sandbox.write_policy().unwrap();
    sandbox.reload().unwrap();
    for i in 0..10u32 {
        within(alice.publish("orders.slow", format!("MARKED-{i}").into_bytes()))
            .await
            .unwrap();
    }

    // It reads again: what was sent before the revocation may arrive, then
    // Forbidden; never a message published after the revocation.
    let mut delivered = 0usize;
    let ending = loop {
        match raw_frame(&mut recv).await {
            Some((_, ServerFrame::Deliver(chunk))) => {
                for d in chunk {
                    let record: StoredRecord = codec::decode(&d.record).unwrap();
                    assert!(
                        !record.envelope.payload.starts_with(b"MARKED"),
                        "offset {} published after the revocation was delivered (after {delivered} others)",
                        d.offset
                    );
                    delivered += 1;
                }
            }
            Some((_, ServerFrame::Error(r))) => break Some(r.code),
            Some((_, other)) => panic!("unexpected frame {other:?}"),
            None => break None,
        }
    };
    assert_eq!(ending, Some(ErrorCode::Forbidden), "after {delivered}");
    assert!(delivered < 2048, "the revoked subscriber stopped early");
    sandbox.stop().await;
}
