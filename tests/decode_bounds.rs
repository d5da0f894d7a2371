//! Decode amplification (THREATS T18): a small frame must not decode into a
//! huge structure. Every list in a frame is capped while it is decoded, so
//! the worst frames an authenticated client can build, sent at once from
//! several connections, leave the broker's peak memory within a small
//! multiple of the frame limit, and nothing is stored.
//!
//! The broker runs as its own process (`signet broker`) so its peak
//! resident size (`VmHWM`) is its own.

mod common;

use common::process::{reset_peak_rss, spawn_broker, status_kib};
use common::raw::send_bytes;
use common::*;
use signet_proto::envelope::{Encryption, SealedKey};
use signet_proto::frame::{ClientFrame, Publish};
use signet_proto::limits::{
    BATCH_ENVELOPES_MAX, FRAME_BYTES_MAX_DEFAULT, HEADERS_MAX, RECIPIENTS_MAX,
};
use signet_proto::{ErrorCode, Header, KeyId, codec};

const MIB: u64 = 1024 * 1024;
/// Connections sending a header bomb at the same time.
const BOMBS: usize = 4;
/// Connections sending the largest frame that decodes under the caps.
const CAPPED: usize = 2;

/// One envelope whose header list is as long as a default-size frame
/// allows: every header is 3 bytes on the wire (`92 a0 a0`: an empty name
/// and an empty value) and about 48 in memory. Built by splicing the list
/// into a real encoded frame, so it stays right whatever the envelope's
/// other fields are.
fn header_bomb(key: KeyId) -> Vec<u8> {
    let mut e = envelope(key, "orders.bomb", fresh_seq(), b"");
    e.headers = vec![Header {
        name: String::new(),
        value: vec![],
    }];
    let publish = Publish {
        request_id: 1,
        signature: vec![0; 64],
        envelopes: vec![e],
    };
    let frame = codec::encode(&ClientFrame::Publish(publish)).unwrap();
    let one_header = [0x91, 0x92, 0xa0, 0xc4, 0x00];
    let at: Vec<usize> = frame
        .windows(one_header.len())
        .enumerate()
        .filter(|(_, w)| *w == one_header)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the header list is found once");
    let room = FRAME_BYTES_MAX_DEFAULT as usize - (frame.len() - 4) - 8;
    let count = room / 3;
    let mut bomb = frame[..at[0]].to_vec();
    bomb.push(0xdd);
    bomb.extend_from_slice(&(count as u32).to_be_bytes());
    for _ in 0..count {
        bomb.extend_from_slice(&[0x92, 0xa0, 0xa0]);
    }
    bomb.extend_from_slice(&frame[at[0] + one_header.len()..]);
    let body = (bomb.len() - 4) as u32;
    assert!(body <= FRAME_BYTES_MAX_DEFAULT);
    bomb[..4].copy_from_slice(&body.to_be_bytes());
    bomb
}

/// The largest frame that still decodes under the caps: a full batch, every
/// envelope with the most headers and encryption recipients a list may
/// hold (each as small on the wire as it can be), the rest of the frame
/// filled with payload bytes.
fn capped_frame(key: KeyId) -> Vec<u8> {
    let seq = fresh_seq();
    let make = |i: usize, payload: usize| {
        let mut e = envelope(key, "orders.capped", seq + i as u64, &vec![b'x'; payload]);
        e.headers = vec![
            Header {
                name: "h".into(),
                value: vec![],
            };
            HEADERS_MAX
        ];
        e.encryption = Some(Encryption {
            suite: 1,
            key_commitment: [0; 32],
            recipients: vec![
                SealedKey {
                    key_id: KeyId([1; 16]),
                    enc: vec![],
                    sealed_key: vec![],
                };
                RECIPIENTS_MAX
            ],
        });
        e
    };
    let frame = |payload: usize| {
        let publish = Publish {
            request_id: 1,
            signature: vec![0; 64],
            envelopes: (0..BATCH_ENVELOPES_MAX).map(|i| make(i, payload)).collect(),
        };
        codec::encode(&ClientFrame::Publish(publish)).unwrap()
    };
    let bare = frame(0).len() - 4;
    let payload = (FRAME_BYTES_MAX_DEFAULT as usize - bare) / BATCH_ENVELOPES_MAX - 8;
    let full = frame(payload);
    assert!(full.len() - 4 <= FRAME_BYTES_MAX_DEFAULT as usize);
    full
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worst_frames_from_several_connections_leave_broker_memory_bounded() {
    let mut sandbox = sandbox(&principals());
    let (broker, _log) = spawn_broker(&mut sandbox, "info").await;
    let pid = broker.id().expect("broker pid");
    let key = signing_key(&sandbox, "alice").id();
    let bomb = header_bomb(key);
    let capped = capped_frame(key);

    // Warm up: connections, a publish, a subscription.
    let mut clients = Vec::new();
    for _ in 0..BOMBS + CAPPED {
        clients.push(client(&sandbox, "alice").await);
    }
    within(clients[0].publish("orders.warm", b"{}".to_vec()))
        .await
        .unwrap();
    assert_eq!(stored_count(&sandbox, "orders.warm").await, 1);

    let reset = reset_peak_rss(pid);
    let before_kib = status_kib(pid, if reset { "VmRSS" } else { "VmHWM" });
    let sends = clients.iter().enumerate().map(|(i, c)| {
        let frame = if i < BOMBS { &bomb } else { &capped };
        send_bytes(c, frame)
    });
    let answers = futures_util::future::join_all(sends).await;
    let peak_kib = status_kib(pid, "VmHWM");

    let growth = (peak_kib.saturating_sub(before_kib)) * 1024;
    let frames = (BOMBS + CAPPED) as u64;
    // Per frame in flight: its body buffer and what QUIC holds of it (at
    // most one frame size together, as the body is taken from QUIC's
    // buffers), and what it decodes into (at most about one more); plus
    // slack for the allocator and the runtime. Before lists were capped
    // while decoding, one header bomb alone decoded into ~100 MiB.
    let bound = frames * 2 * u64::from(FRAME_BYTES_MAX_DEFAULT) + 16 * MIB;
    assert!(
        growth <= bound,
        "broker peak memory grew by {} MiB for {frames} frames of at most 4 MiB \
         (bound {} MiB)",
        growth / MIB,
        bound / MIB
    );
    eprintln!(
        "peak growth {} MiB for {frames} frames (bound {} MiB)",
        growth / MIB,
        bound / MIB
    );
    for answer in &answers[..BOMBS] {
        assert!(answer.refused_with(ErrorCode::BadFrame), "{answer:?}");
    }
    for answer in &answers {
        assert!(answer.nothing_acked(), "{answer:?}");
    }
    assert_eq!(stored_count(&sandbox, "orders.bomb").await, 0);
    assert_eq!(stored_count(&sandbox, "orders.capped").await, 0);
    // Others are still served.
    let fresh = client(&sandbox, "alice").await;
    within(fresh.publish("orders.after", b"{}".to_vec()))
        .await
        .unwrap();
}
