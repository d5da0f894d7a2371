//! Envelope size and shape (THREATS T18, T19): the whole envelope counts
//! against the message size limit, not only its payload, and every field
//! outside the payload is capped: header values, all headers together,
//! encryption recipients and their key lengths. Each breach is refused
//! with its typed code and nothing is stored.

mod common;

use common::codes::nack_codes;
use common::raw::send_publish;
use common::*;
use signet_proto::envelope::{Encryption, SealedKey};
use signet_proto::limits::{
    ENC_BYTES, HEADER_VALUE_BYTES_MAX, HEADERS_BYTES_MAX, RECIPIENTS_MAX, SEALED_KEY_BYTES,
};
use signet_proto::{ErrorCode, Header, KeyId};

const KIB: usize = 1024;

fn sealed_key(i: u32) -> SealedKey {
    let mut key_id = [0u8; 16];
    key_id[..4].copy_from_slice(&i.to_be_bytes());
    SealedKey {
        key_id: KeyId(key_id),
        enc: vec![7; ENC_BYTES],
        sealed_key: vec![9; SEALED_KEY_BYTES],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_payload_with_3_mib_of_headers_is_too_large_and_not_stored() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let mut e = envelope(key.id(), "orders.headers", fresh_seq(), b"");
    e.headers = (0..48)
        .map(|i| Header {
            name: format!("h{i}"),
            value: vec![b'v'; 64 * KIB],
        })
        .collect();
    assert!(e.canonical_len() > 3 * 1024 * KIB);
    assert_eq!(
        nack_codes(raw_publish(&alice, signed(&key, 1, vec![e])).await),
        vec![Some(ErrorCode::TooLarge)]
    );
    assert_eq!(stored_count(&sandbox, "orders.headers").await, 0);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_just_under_the_message_limit_counts_its_headers() {
    // 1 MiB limit: a payload of 1 MiB minus 1 KiB fits alone, and is too
    // large with 2 KiB of headers beside it.
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let seq = fresh_seq();
    let payload = vec![b'p'; 1024 * KIB - KIB];
    let alone = envelope(key.id(), "orders.size", seq, &payload);
    let mut with_headers = envelope(key.id(), "orders.size", seq + 1, &payload);
    with_headers.headers = (0..2)
        .map(|i| Header {
            name: format!("h{i}"),
            value: vec![b'v'; KIB],
        })
        .collect();
    assert_eq!(
        nack_codes(raw_publish(&alice, signed(&key, 1, vec![alone, with_headers])).await),
        vec![None, Some(ErrorCode::TooLarge)]
    );
    assert_eq!(stored_count(&sandbox, "orders.size").await, 1);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_header_values_and_too_many_header_bytes_are_bad_frames() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let seq = fresh_seq();
    let mut long_value = envelope(key.id(), "orders.hv", seq, b"{}");
    long_value.headers = vec![Header {
        name: "trace".into(),
        value: vec![b'v'; HEADER_VALUE_BYTES_MAX + 1],
    }];
    let mut many_bytes = envelope(key.id(), "orders.hv", seq + 1, b"{}");
    let each = HEADER_VALUE_BYTES_MAX;
    many_bytes.headers = (0..HEADERS_BYTES_MAX / each + 1)
        .map(|i| Header {
            name: format!("h{i}"),
            value: vec![b'v'; each],
        })
        .collect();
    let fine = envelope(key.id(), "orders.hv", seq + 2, b"{}");
    assert_eq!(
        nack_codes(raw_publish(&alice, signed(&key, 1, vec![long_value, many_bytes, fine])).await),
        vec![Some(ErrorCode::BadFrame), Some(ErrorCode::BadFrame), None]
    );
    assert_eq!(stored_count(&sandbox, "orders.hv").await, 1);
    sandbox.stop().await;
}

/// A sandbox where `alice` may publish to the encrypted `orders.sealed`.
async fn sealed_topic() -> Sandbox {
    start_with(
        &principals(),
        "[[topic]]\nname = \"orders.sealed\"\nencrypted = true\n",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_recipients_are_a_bad_frame_and_nothing_is_stored() {
    let mut sandbox = sealed_topic().await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let mut e = envelope(key.id(), "orders.sealed", fresh_seq(), &[1; 32]);
    e.encryption = Some(Encryption {
        suite: 1,
        key_commitment: [0; 32],
        recipients: (0..50 * RECIPIENTS_MAX as u32).map(sealed_key).collect(),
    });
    let answer = send_publish(&alice, signed(&key, 1, vec![e])).await;
    assert!(answer.refused_with(ErrorCode::BadFrame), "{answer:?}");
    assert_eq!(stored_count(&sandbox, "orders.sealed").await, 0);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_keys_of_the_wrong_length_are_bad_frames() {
    let mut sandbox = sealed_topic().await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let seq = fresh_seq();
    let with = |seq: u64, enc: usize, sealed: usize| {
        let mut e = envelope(key.id(), "orders.sealed", seq, &[1; 32]);
        e.encryption = Some(Encryption {
            suite: 1,
            key_commitment: [0; 32],
            recipients: vec![SealedKey {
                enc: vec![7; enc],
                sealed_key: vec![9; sealed],
                ..sealed_key(1)
            }],
        });
        e
    };
    let envelopes = vec![
        with(seq, 64 * KIB, SEALED_KEY_BYTES),
        with(seq + 1, ENC_BYTES, 64 * KIB),
        with(seq + 2, ENC_BYTES, SEALED_KEY_BYTES),
    ];
    assert_eq!(
        nack_codes(raw_publish(&alice, signed(&key, 1, envelopes)).await),
        vec![Some(ErrorCode::BadFrame), Some(ErrorCode::BadFrame), None]
    );
    assert_eq!(stored_count(&sandbox, "orders.sealed").await, 1);
    sandbox.stop().await;
}
