//! Golden bytes: every frame kind and variant, and the stored record, pinned
//! as hex in `tests/vectors/*.hex` (see `docs/PROTOCOL.md`). For each, the
//! fixed value must encode to exactly the pinned bytes, and the pinned bytes
//! must decode to exactly the value. A change here is a wire-format change.
//!
//! Frame files hold a whole frame (u32 big-endian length, then the
//! MessagePack body); `stored_record.hex` holds a bare body, as RocksDB
//! stores it and `Deliver` carries it. Regenerate (only when the format
//! deliberately changes) with
//! `SIGNET_WRITE_GOLDEN=1 cargo test -p signet-proto --test golden`.

use signet_proto::codec;
use signet_proto::envelope::{
    CONTENT_TYPE_JSON, Encryption, Envelope, Header, SealedKey, StoredRecord,
};
use signet_proto::frame::{
    ClientFrame, Delivery, Outcome, Publish, Rejection, Results, ServerFrame, StartAt, Subscribe,
};
use signet_proto::{ErrorCode, KeyId, Salt, SigningKey, batch};
use std::path::PathBuf;

/// The publisher's Ed25519 seed: the key of `vectors.json`.
const SEED: [u8; 32] = [7; 32];

// The encryption block and ciphertext of `vectors/encryption.json`
// (recipient: RFC 9180 A.2's pkRm; checked by `tests/encryption_vector.rs`).
const RECIPIENT_PUBLIC_KEY: &str =
    "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a";
const SALT: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";
const KEY_COMMITMENT: &str = "9b28df054cf81e6b81e537fe459b662d0ed642f6ad865bb6c0f913f67f56323d";
const ENC: &str = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
const SEALED_KEY: &str = "7a8f4345a7cca17dbea509bb62cf838dc93bcce93988cc9bfec1d6e5641b1b43e10b8be4a25cc59e18e279f01037af7d";
const CIPHERTEXT: &str = "8573d8eb16533f870f5a4b583dc1d5a7504ea43b513403f360aec0647eaf1c";

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn key() -> SigningKey {
    SigningKey::from_seed(&SEED).unwrap()
}

/// One envelope with a header and an encryption block.
fn encrypted_envelope() -> Envelope {
    Envelope {
        version: 1,
        salt: Salt(h(SALT).try_into().unwrap()),
        topic: "payroll.march".into(),
        key_id: key().id(),
        seq: 42,
        timestamp_ms: 1_700_000_000_000,
        content_type: CONTENT_TYPE_JSON.into(),
        headers: vec![Header {
            name: "trace".into(),
            value: b"abc".to_vec(),
        }],
        encryption: Some(Encryption {
            suite: 1,
            key_commitment: h(KEY_COMMITMENT).try_into().unwrap(),
            recipients: vec![SealedKey {
                key_id: KeyId::of(&h(RECIPIENT_PUBLIC_KEY)),
                enc: h(ENC),
                sealed_key: h(SEALED_KEY),
            }],
        }),
        payload: h(CIPHERTEXT),
    }
}

fn publish_frame() -> ClientFrame {
    let envelopes = vec![encrypted_envelope()];
    let signed = batch::sign(&key(), &envelopes).unwrap();
    ClientFrame::Publish(Publish {
        request_id: 1,
        signature: signed.signature,
        envelopes,
    })
}

fn subscribe_frame(topic: &str, start: StartAt) -> ClientFrame {
    ClientFrame::Subscribe(Subscribe {
        topic: topic.into(),
        start,
    })
}

fn results_frame() -> ServerFrame {
    ServerFrame::Results(Results {
        request_id: 1,
        outcomes: vec![
            Outcome::Ack(41),
            Outcome::Nack(Rejection {
                retry_after_ms: Some(250),
                ..Rejection::new(
                    ErrorCode::QuotaExceeded,
                    "message or byte rate quota exceeded",
                )
            }),
            Outcome::Nack(Rejection::new(
                ErrorCode::Forbidden,
                "not allowed to publish to this topic",
            )),
        ],
    })
}

/// Envelope `i` of `vectors.json` (the same generator as `tests/vectors.rs`).
fn vector_envelope(i: usize) -> Envelope {
    Envelope {
        version: 1,
        salt: Salt(std::array::from_fn(|j| (16 * i + j) as u8)),
        topic: format!("vectors.t{}", i % 3),
        key_id: key().id(),
        seq: i as u64 + 1,
        timestamp_ms: 1_700_000_000_000 + i as u64,
        content_type: CONTENT_TYPE_JSON.into(),
        headers: if i.is_multiple_of(2) {
            vec![Header {
                name: "h".into(),
                value: vec![i as u8],
            }]
        } else {
            vec![]
        },
        encryption: None,
        payload: format!("{{\"i\":{i}}}").into_bytes(),
    }
}

/// Envelope 0 of the 3-envelope batch of `vectors.json`, as the broker
/// stores it: its proof has a two-hash path.
fn stored_record() -> StoredRecord {
    let envelopes: Vec<Envelope> = (0..3).map(vector_envelope).collect();
    let signed = batch::sign(&key(), &envelopes).unwrap();
    StoredRecord {
        received_ms: 1_700_000_000_250,
        envelope: envelopes[0].clone(),
        proof: signed.proof(0),
    }
}

fn deliver_frame() -> ServerFrame {
    ServerFrame::Deliver(vec![Delivery {
        offset: 7,
        record: codec::encode_body(&stored_record()).unwrap(),
    }])
}

fn error_frame() -> ServerFrame {
    ServerFrame::Error(Rejection::new(ErrorCode::BadTopic, "invalid topic name"))
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
}

/// The pinned bytes of `name`. With `SIGNET_WRITE_GOLDEN=1`, first
/// (re)writes the file from `fresh` (atomically: the encode and decode tests
/// of one file run in parallel).
fn pinned(name: &str, fresh: &[u8]) -> Vec<u8> {
    let path = golden_path(name);
    if std::env::var_os("SIGNET_WRITE_GOLDEN").is_some_and(|v| v == "1") {
        let tmp = path.with_extension(format!(
            "hex.{}.tmp",
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "_")
        ));
        std::fs::write(&tmp, hex::encode(fresh) + "\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} is missing or unreadable ({e}). It pins the wire format; \
             write it with SIGNET_WRITE_GOLDEN=1 only if the format deliberately changed",
            path.display()
        )
    });
    hex::decode(text.trim())
        .unwrap_or_else(|e| panic!("golden file {} is not hex: {e}", path.display()))
}

/// Encodes `frame` and compares the whole frame with the pinned file.
fn assert_frame_pinned<T: serde::Serialize>(name: &str, frame: &T) {
    let bytes = codec::encode(frame).unwrap();
    let golden = pinned(name, &bytes);
    assert_eq!(
        hex::encode(&bytes),
        hex::encode(&golden),
        "{name}: encoding differs from the pinned bytes (a wire-format change)"
    );
}

/// Decodes the pinned frame (length prefix, then body) and returns it.
fn decode_pinned_frame<T: serde::Serialize + serde::de::DeserializeOwned>(
    name: &str,
    fresh: &T,
) -> T {
    let golden = pinned(name, &codec::encode(fresh).unwrap());
    let prefix: [u8; 4] = golden[..4].try_into().unwrap();
    let len = codec::body_len(prefix, u32::MAX).unwrap();
    assert_eq!(
        len,
        golden.len() - 4,
        "{name}: length prefix is not the body length"
    );
    codec::decode(&golden[4..])
        .unwrap_or_else(|e| panic!("{name}: pinned bytes do not decode: {e}"))
}

#[test]
fn publish_frame_bytes_are_pinned() {
    assert_frame_pinned("publish_frame.hex", &publish_frame());
}

#[test]
fn publish_frame_pinned_bytes_decode_to_the_value() {
    let frame = publish_frame();
    assert_eq!(decode_pinned_frame("publish_frame.hex", &frame), frame);
}

#[test]
fn subscribe_earliest_frame_bytes_are_pinned() {
    let frame = subscribe_frame("orders.created", StartAt::Earliest);
    assert_frame_pinned("subscribe_earliest_frame.hex", &frame);
}

#[test]
fn subscribe_earliest_frame_pinned_bytes_decode_to_the_value() {
    let frame = subscribe_frame("orders.created", StartAt::Earliest);
    assert_eq!(
        decode_pinned_frame("subscribe_earliest_frame.hex", &frame),
        frame
    );
}

#[test]
fn subscribe_offset_frame_bytes_are_pinned() {
    let frame = subscribe_frame("orders.created", StartAt::Offset(1000));
    assert_frame_pinned("subscribe_offset_frame.hex", &frame);
}

#[test]
fn subscribe_offset_frame_pinned_bytes_decode_to_the_value() {
    let frame = subscribe_frame("orders.created", StartAt::Offset(1000));
    assert_eq!(
        decode_pinned_frame("subscribe_offset_frame.hex", &frame),
        frame
    );
}

/// `subscribe_frame.hex` predates this file (see `frames.rs`); it pins
/// `StartAt::Latest`.
#[test]
fn subscribe_latest_frame_bytes_are_pinned() {
    assert_frame_pinned(
        "subscribe_frame.hex",
        &subscribe_frame("a", StartAt::Latest),
    );
}

#[test]
fn subscribe_latest_frame_pinned_bytes_decode_to_the_value() {
    let frame = subscribe_frame("a", StartAt::Latest);
    assert_eq!(decode_pinned_frame("subscribe_frame.hex", &frame), frame);
}

#[test]
fn results_frame_bytes_are_pinned() {
    assert_frame_pinned("results_frame.hex", &results_frame());
}

#[test]
fn results_frame_pinned_bytes_decode_to_the_value() {
    let frame = results_frame();
    assert_eq!(decode_pinned_frame("results_frame.hex", &frame), frame);
}

#[test]
fn subscribed_frame_bytes_are_pinned() {
    let frame = ServerFrame::Subscribed { next_offset: 42 };
    assert_frame_pinned("subscribed_frame.hex", &frame);
}

#[test]
fn subscribed_frame_pinned_bytes_decode_to_the_value() {
    let frame = ServerFrame::Subscribed { next_offset: 42 };
    assert_eq!(decode_pinned_frame("subscribed_frame.hex", &frame), frame);
}

#[test]
fn deliver_frame_bytes_are_pinned() {
    assert_frame_pinned("deliver_frame.hex", &deliver_frame());
}

#[test]
fn deliver_frame_pinned_bytes_decode_to_the_value() {
    let frame = deliver_frame();
    assert_eq!(decode_pinned_frame("deliver_frame.hex", &frame), frame);
}

#[test]
fn error_frame_bytes_are_pinned() {
    assert_frame_pinned("error_frame.hex", &error_frame());
}

#[test]
fn error_frame_pinned_bytes_decode_to_the_value() {
    let frame = error_frame();
    assert_eq!(decode_pinned_frame("error_frame.hex", &frame), frame);
}

#[test]
fn stored_record_bytes_are_pinned() {
    let bytes = codec::encode_body(&stored_record()).unwrap();
    let golden = pinned("stored_record.hex", &bytes);
    assert_eq!(
        hex::encode(&bytes),
        hex::encode(&golden),
        "stored_record.hex: encoding differs from the pinned bytes (a storage and wire-format change)"
    );
}

#[test]
fn stored_record_pinned_bytes_decode_to_the_value() {
    let record = stored_record();
    let golden = pinned("stored_record.hex", &codec::encode_body(&record).unwrap());
    assert_eq!(codec::decode::<StoredRecord>(&golden).unwrap(), record);
}

#[test]
fn pinned_publish_signature_verifies_over_its_envelopes() {
    let frame = decode_pinned_frame("publish_frame.hex", &publish_frame());
    let ClientFrame::Publish(publish) = frame else {
        panic!("publish_frame.hex holds another frame");
    };
    let signed = batch::verify_leaves(
        key().public_key(),
        batch::leaves(&publish.envelopes),
        &publish.signature,
    );
    assert!(signed.is_some(), "the pinned batch signature must verify");
}

#[test]
fn pinned_stored_record_verifies_alone() {
    let record = stored_record();
    let golden = pinned("stored_record.hex", &codec::encode_body(&record).unwrap());
    let decoded: StoredRecord = codec::decode(&golden).unwrap();
    assert_eq!(decoded.proof.path.len(), 2);
    assert!(batch::verify_record(
        key().public_key(),
        &decoded.envelope,
        &decoded.proof
    ));
}

#[test]
fn deliver_frame_carries_the_stored_record_byte_for_byte() {
    let record = stored_record();
    let stored = pinned("stored_record.hex", &codec::encode_body(&record).unwrap());
    let ServerFrame::Deliver(deliveries) =
        decode_pinned_frame("deliver_frame.hex", &deliver_frame())
    else {
        panic!("deliver_frame.hex holds another frame");
    };
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].record, stored);
}

#[test]
fn unknown_error_code_in_a_rejection_survives_decoding() {
    let frame = ServerFrame::Error(Rejection {
        code: ErrorCode(999),
        detail: "from a newer broker".into(),
        retry_after_ms: None,
    });
    let bytes = codec::encode(&frame).unwrap();
    let back: ServerFrame = codec::decode(&bytes[4..]).unwrap();
    assert_eq!(back, frame);
    assert_eq!(
        codec::encode(&back).unwrap(),
        bytes,
        "re-encodes to the same bytes"
    );
}
