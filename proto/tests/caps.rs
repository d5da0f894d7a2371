//! Every list in a frame is capped while it is decoded (one past the cap is
//! a malformed frame, refused before the list is built), and the caps do
//! not change the bytes of valid frames.

use signet_proto::codec::{self, DecodeError};
use signet_proto::envelope::{
    CONTENT_TYPE_JSON, Encryption, Envelope, Header, Proof, SUITE_X25519_SHA256_CHACHA20,
    SealedKey, StoredRecord,
};
use signet_proto::frame::{ClientFrame, Delivery, Outcome, Publish, Results, ServerFrame};
use signet_proto::limits::{
    BATCH_ENVELOPES_MAX, DELIVER_MESSAGES_MAX, HEADERS_MAX, PROOF_PATH_MAX, RECIPIENTS_MAX,
};
use signet_proto::merkle::Hash;
use signet_proto::{KeyId, Salt};

fn envelope(headers: usize, recipients: usize) -> Envelope {
    Envelope {
        version: 1,
        salt: Salt([1; 16]),
        topic: "a.b".into(),
        key_id: KeyId([2; 16]),
        seq: 3,
        timestamp_ms: 4,
        content_type: CONTENT_TYPE_JSON.into(),
        headers: vec![
            Header {
                name: "h".into(),
                value: vec![],
            };
            headers
        ],
        encryption: Some(Encryption {
            suite: SUITE_X25519_SHA256_CHACHA20,
            key_commitment: [5; 32],
            recipients: vec![
                SealedKey {
                    key_id: KeyId([6; 16]),
                    enc: vec![7; 32],
                    sealed_key: vec![8; 48],
                };
                recipients
            ],
        }),
        payload: vec![],
    }
}

fn publish(envelopes: Vec<Envelope>) -> ClientFrame {
    ClientFrame::Publish(Publish {
        request_id: 1,
        signature: vec![0; 64],
        envelopes,
    })
}

fn record(path: usize) -> StoredRecord {
    StoredRecord {
        received_ms: 1,
        envelope: envelope(0, 1),
        proof: Proof {
            signature: vec![0; 64],
            leaf_index: 0,
            leaf_count: 1,
            path: vec![Hash([9; 32]); path],
        },
    }
}

/// `at_cap` decodes back to itself; `over` is refused as malformed.
fn capped<T>(at_cap: T, over: T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = codec::encode_body(&at_cap).unwrap();
    assert_eq!(codec::decode::<T>(&bytes).unwrap(), at_cap);
    let bytes = codec::encode_body(&over).unwrap();
    assert_eq!(codec::decode::<T>(&bytes), Err(DecodeError::Malformed));
}

#[test]
fn envelopes_per_publish_are_capped() {
    capped(
        publish(vec![envelope(0, 0); BATCH_ENVELOPES_MAX]),
        publish(vec![envelope(0, 0); BATCH_ENVELOPES_MAX + 1]),
    );
}

#[test]
fn headers_per_envelope_are_capped() {
    capped(
        publish(vec![envelope(HEADERS_MAX, 0)]),
        publish(vec![envelope(HEADERS_MAX + 1, 0)]),
    );
}

#[test]
fn recipients_per_envelope_are_capped() {
    capped(
        publish(vec![envelope(0, RECIPIENTS_MAX)]),
        publish(vec![envelope(0, RECIPIENTS_MAX + 1)]),
    );
}

#[test]
fn proof_paths_are_capped() {
    capped(record(PROOF_PATH_MAX), record(PROOF_PATH_MAX + 1));
}

#[test]
fn deliveries_and_outcomes_per_frame_are_capped() {
    let deliver = |n| {
        ServerFrame::Deliver(vec![
            Delivery {
                offset: 1,
                record: vec![1],
            };
            n
        ])
    };
    capped(
        deliver(DELIVER_MESSAGES_MAX),
        deliver(DELIVER_MESSAGES_MAX + 1),
    );
    let results = |n| {
        ServerFrame::Results(Results {
            request_id: 1,
            outcomes: vec![Outcome::Ack(1); n],
        })
    };
    capped(
        results(BATCH_ENVELOPES_MAX),
        results(BATCH_ENVELOPES_MAX + 1),
    );
}

#[test]
fn a_header_list_announcing_millions_is_refused_from_its_length() {
    // The envelope of a frame, with its header list replaced by an array32
    // header announcing 2^32 - 1 items and no items at all.
    let bytes = codec::encode_body(&publish(vec![envelope(1, 0)])).unwrap();
    let one = [0x91, 0x92, 0xa1, b'h', 0xc4, 0x00];
    let at = bytes.windows(one.len()).position(|w| w == one).unwrap();
    let mut bomb = bytes[..at].to_vec();
    bomb.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        codec::decode::<ClientFrame>(&bomb),
        Err(DecodeError::Malformed)
    );
}
