//! Transport limits (THREATS T12): each pushed past, then a well-behaved
//! client is still served.

mod common;

use common::*;
use signet_client::{Client, StartAt};
use signet_proto::frame::{ClientFrame, Outcome, ServerFrame};
use signet_proto::stream::{read_frame, write_frame};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_connection_cap_refuses_extra_connections() {
    let mut sandbox = start_with(&principals(), "[limits]\nmax_connections = 2\n").await;
    let a = client(&sandbox, "alice").await;
    let b = client(&sandbox, "auditor").await;
    within(a.publish("orders.cap", b"1".to_vec()))
        .await
        .unwrap();
    let third = async {
        let c = Client::connect(sandbox.client_config("alice")?).await?;
        c.publish("orders.cap", b"x".to_vec())
            .await
            .map_err(anyhow::Error::from)
    };
    assert!(within(third).await.is_err(), "third connection refused");
    within(a.publish("orders.cap", b"2".to_vec()))
        .await
        .unwrap();
    let sub = within(b.subscribe("orders.cap", StartAt::Earliest))
        .await
        .unwrap();
    assert_eq!(sub.next_offset_at_open(), 2);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_cap_per_connection_holds_extra_streams_back() {
    let mut sandbox = start_with(&principals(), "[limits]\nmax_streams_per_connection = 2\n").await;
    let reader = client(&sandbox, "auditor").await;
    let s1 = within(reader.subscribe("orders.a", StartAt::Latest))
        .await
        .unwrap();
    let _s2 = within(reader.subscribe("orders.b", StartAt::Latest))
        .await
        .unwrap();
    // A third stream gets no credit while two are open.
    let third = tokio::time::timeout(
        Duration::from_millis(300),
        reader.subscribe("orders.c", StartAt::Latest),
    )
    .await;
    assert!(third.is_err(), "third stream opened past the cap");
    drop(s1);
    let s3 = within(reader.subscribe("orders.c", StartAt::Latest))
        .await
        .unwrap();
    let alice = client(&sandbox, "alice").await;
    within(alice.publish("orders.c", b"1".to_vec()))
        .await
        .unwrap();
    let mut s3 = s3;
    assert_eq!(next(&mut s3).await.unwrap().payload, b"1");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_by_the_broker() {
    let mut sandbox = start_with(&principals(), "[limits]\nidle_timeout_ms = 300\n").await;
    let idle = client(&sandbox, "alice").await;
    let closed = within(idle.connection().closed()).await;
    assert!(
        matches!(closed, quinn::ConnectionError::TimedOut),
        "{closed:?}"
    );
    let alice = client(&sandbox, "alice").await;
    within(alice.publish("orders.idle", b"1".to_vec()))
        .await
        .unwrap();
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_datagrams_and_half_handshakes_do_not_hurt() {
    let mut sandbox = start_with(&principals(), "[limits]\nhandshake_timeout_ms = 500\n").await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..200u32 {
        let mut junk = vec![0xc0 | (i as u8 & 0x3f); 1200];
        junk[1..5].copy_from_slice(&1u32.to_be_bytes());
        socket
            .send_to(&junk, sandbox.addr().unwrap())
            .await
            .unwrap();
    }
    let alice = client(&sandbox, "alice").await;
    within(alice.publish("orders.junk", b"1".to_vec()))
        .await
        .unwrap();
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_cap_backpressures_without_losing_anything() {
    let mut sandbox = start_with(&principals(), "[limits]\nmax_inflight_batches = 1\n").await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let (mut send, mut recv) = within(alice.connection().open_bi()).await.unwrap();
    let seq = fresh_seq();
    for i in 0..50u64 {
        let publish = signed(
            &key,
            i,
            vec![envelope(key.id(), "orders.pipe", seq + i, b"{}")],
        );
        within(write_frame(&mut send, &ClientFrame::Publish(publish)))
            .await
            .unwrap();
    }
    for i in 0..50u64 {
        match within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX))
            .await
            .unwrap()
            .unwrap()
        {
            ServerFrame::Results(r) => {
                assert_eq!(r.request_id, i);
                assert_eq!(r.outcomes, vec![Outcome::Ack(i)]);
            }
            other => panic!("{other:?}"),
        }
    }
    let other = client(&sandbox, "bob").await;
    within(other.publish("billing.after", b"x".to_vec()))
        .await
        .unwrap();
    sandbox.stop().await;
}
