//! Frame codec: round trips, every truncation rejected, trailing bytes
//! rejected, length checked before allocation, golden bytes pinned, and a
//! corpus of malformed frames that must decode to errors without panics.

use signet_proto::codec::{self, DecodeError};
use signet_proto::envelope::{CONTENT_TYPE_JSON, Envelope};
use signet_proto::frame::{
    ClientFrame, Delivery, Outcome, Publish, Rejection, Results, ServerFrame, StartAt, Subscribe,
};
use signet_proto::{ErrorCode, KeyId, Salt};

fn publish() -> ClientFrame {
    ClientFrame::Publish(Publish {
        request_id: 9,
        signature: vec![1; 64],
        envelopes: vec![Envelope {
            version: 1,
            salt: Salt([5; 16]),
            topic: "a.b".into(),
            key_id: KeyId([2; 16]),
            seq: 3,
            timestamp_ms: 4,
            content_type: CONTENT_TYPE_JSON.into(),
            headers: vec![],
            encryption: None,
            payload: b"{}".to_vec(),
        }],
    })
}

fn server_frames() -> Vec<ServerFrame> {
    vec![
        ServerFrame::Results(Results {
            request_id: 1,
            outcomes: vec![
                Outcome::Ack(5),
                Outcome::Nack(Rejection::new(ErrorCode::Forbidden, "no")),
            ],
        }),
        ServerFrame::Subscribed { next_offset: 7 },
        ServerFrame::Deliver(vec![Delivery {
            offset: 1,
            record: vec![1, 2, 3],
        }]),
        ServerFrame::Error(Rejection::new(ErrorCode::TooLarge, "big")),
    ]
}

#[test]
fn client_frames_round_trip() {
    let sub = ClientFrame::Subscribe(Subscribe {
        topic: "a.b".into(),
        start: StartAt::Offset(3),
    });
    for frame in [publish(), sub] {
        let bytes = codec::encode(&frame).unwrap();
        let back: ClientFrame = codec::decode(&bytes[4..]).unwrap();
        assert_eq!(back, frame);
        assert_eq!(
            codec::body_len(bytes[..4].try_into().unwrap(), u32::MAX).unwrap(),
            bytes.len() - 4
        );
    }
}

#[test]
fn server_frames_round_trip() {
    for frame in server_frames() {
        let bytes = codec::encode(&frame).unwrap();
        let back: ServerFrame = codec::decode(&bytes[4..]).unwrap();
        assert_eq!(back, frame);
    }
}

#[test]
fn rejects_every_truncation() {
    let bytes = codec::encode(&publish()).unwrap();
    let body = &bytes[4..];
    for cut in 0..body.len() {
        assert!(
            codec::decode::<ClientFrame>(&body[..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn rejects_trailing_bytes() {
    let mut bytes = codec::encode(&publish()).unwrap();
    bytes.push(0);
    assert_eq!(
        codec::decode::<ClientFrame>(&bytes[4..]),
        Err(DecodeError::Trailing)
    );
}

#[test]
fn rejects_length_over_limit_before_reading_body() {
    assert_eq!(
        codec::body_len(u32::MAX.to_be_bytes(), 1024),
        Err(DecodeError::TooLarge {
            len: u32::MAX,
            max: 1024
        })
    );
    assert_eq!(codec::body_len([0; 4], 1024), Err(DecodeError::Empty));
}

#[test]
fn golden_bytes_of_a_subscribe_frame() {
    let frame = ClientFrame::Subscribe(Subscribe {
        topic: "a".into(),
        start: StartAt::Latest,
    });
    let bytes = codec::encode(&frame).unwrap();
    let golden = hex::encode(&bytes);
    // Pinned: a change here is a wire-format change.
    assert_eq!(golden, include_str!("vectors/subscribe_frame.hex").trim());
}

#[test]
fn malformed_corpus_decodes_to_errors() {
    let mut corpus: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xc1],
        vec![0xff; 64],
        vec![0x81, 0xa7],
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![0xdb, 0xff, 0xff, 0xff, 0xff],
        vec![0xc6, 0xff, 0xff, 0xff, 0xff],
    ];
    let valid = codec::encode(&publish()).unwrap();
    for i in 4..valid.len() {
        let mut flipped = valid[4..].to_vec();
        flipped[i - 4] ^= 0xff;
        corpus.push(flipped);
    }
    for input in &corpus {
        signet_proto::codec::fuzzing::client_frame(input);
        signet_proto::codec::fuzzing::server_frame(input);
        signet_proto::codec::fuzzing::stored_record(input);
    }
    assert!(codec::decode::<ClientFrame>(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
}
