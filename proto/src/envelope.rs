//! The signed envelope and its canonical signing bytes.
//!
//! Canonical bytes are a fixed, hand-written, length-prefixed encoding of
//! every field but the proof, after the domain-separation prefix
//! `signet/v1/envelope\0`. All integers are big-endian; every variable-length
//! field is a `u32` length then its bytes; counts are `u32`:
//!
//! ```text
//! "signet/v1/envelope\0"
//! u8  version
//! u32 len ‖ topic (UTF-8)
//! [16] key_id
//! u64 seq
//! u64 timestamp_ms
//! u32 len ‖ content_type (UTF-8)
//! u32 header count ‖ per header: u32 len ‖ name ‖ u32 len ‖ value
//! u8  0 (no encryption) | 1 ‖ u16 suite ‖ u32 count ‖ per recipient:
//!       [16] key_id ‖ u32 len ‖ enc ‖ u32 len ‖ sealed_key
//! u32 len ‖ payload
//! ```

use crate::code::ErrorCode;
use crate::keys::{KEY_ID_BYTES, KeyId, SIGNATURE_BYTES};
use crate::limits::{CONTENT_TYPE_BYTES_MAX, HEADER_NAME_BYTES_MAX, HEADERS_MAX, PROOF_PATH_MAX};
use crate::merkle::Hash;
use crate::topic;
use serde::{Deserialize, Serialize};

/// Domain-separation prefix of an envelope's canonical bytes.
pub const ENVELOPE_CONTEXT: &[u8] = b"signet/v1/envelope\0";

/// The only envelope version this crate writes and accepts.
pub const ENVELOPE_VERSION: u8 = 1;

/// Content type for JSON payloads.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type for MessagePack payloads.
pub const CONTENT_TYPE_MSGPACK: &str = "application/msgpack";
/// Content type for opaque bytes (the default).
pub const CONTENT_TYPE_OCTET: &str = "application/octet-stream";
/// Content type for UTF-8 text.
pub const CONTENT_TYPE_TEXT: &str = "text/plain";

/// One signed header. Every header is inside the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Header name, 1..=128 bytes of UTF-8.
    pub name: String,
    /// Header value, any bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// A content key sealed to one recipient (end-to-end encryption).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKey {
    /// Id of the recipient's public key.
    pub key_id: KeyId,
    /// HPKE encapsulated key.
    #[serde(with = "serde_bytes")]
    pub enc: Vec<u8>,
    /// The content key, sealed to the recipient.
    #[serde(with = "serde_bytes")]
    pub sealed_key: Vec<u8>,
}

/// How a payload is encrypted, when it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// HPKE suite id.
    pub suite: u16,
    /// One sealed content key per recipient key.
    pub recipients: Vec<SealedKey>,
}

/// A message as its publisher signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope format version ([`ENVELOPE_VERSION`]).
    pub version: u8,
    /// Topic name (validated by [`topic::validate_name`]).
    pub topic: String,
    /// Id of the key that signed this envelope.
    pub key_id: KeyId,
    /// Strictly increasing per signing key (replay protection).
    pub seq: u64,
    /// Publisher clock, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// MIME type of the payload.
    pub content_type: String,
    /// Signed headers, in order.
    pub headers: Vec<Header>,
    /// Present when the payload is ciphertext.
    pub encryption: Option<Encryption>,
    /// The payload bytes (ciphertext when encrypted).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// A batch signature and this envelope's place in the batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// Ed25519 signature over the batch message (see [`crate::batch`]).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// This envelope's index among the batch's leaves.
    pub leaf_index: u32,
    /// Number of leaves in the batch.
    pub leaf_count: u32,
    /// Merkle audit path, leaf to root.
    pub path: Vec<Hash>,
}

impl Proof {
    /// Whether the proof's sizes are within protocol bounds.
    pub fn shape_ok(&self) -> bool {
        self.signature.len() == SIGNATURE_BYTES
            && self.leaf_index < self.leaf_count
            && self.path.len() <= PROOF_PATH_MAX
    }
}

/// What the broker stores per message, and delivers byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// Broker clock when the message was accepted, ms since the Unix epoch.
    pub received_ms: u64,
    /// The envelope exactly as signed.
    pub envelope: Envelope,
    /// The batch signature and inclusion proof.
    pub proof: Proof,
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths above u32::MAX cannot pass the frame limit; saturate to stay total.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_count(out: &mut Vec<u8>, count: usize) {
    out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes());
}

impl Envelope {
    /// Exact length of [`Envelope::canonical_bytes`].
    pub fn canonical_len(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| 8 + h.name.len() + h.value.len())
            .sum();
        let encryption = match &self.encryption {
            None => 1,
            Some(e) => {
                1 + 2
                    + 4
                    + e.recipients
                        .iter()
                        .map(|r| KEY_ID_BYTES + 8 + r.enc.len() + r.sealed_key.len())
                        .sum::<usize>()
            }
        };
        ENVELOPE_CONTEXT.len()
            + 1
            + 4
            + self.topic.len()
            + KEY_ID_BYTES
            + 8
            + 8
            + 4
            + self.content_type.len()
            + 4
            + headers
            + encryption
            + 4
            + self.payload.len()
    }

    /// The bytes a publisher signs (through the batch's Merkle tree).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        self.canonical_bytes_with(&self.payload)
    }

    /// The canonical bytes with `payload` in place of the envelope's own
    /// (end-to-end encryption binds the header with an empty payload).
    pub fn canonical_bytes_with(&self, payload: &[u8]) -> Vec<u8> {
        let len = self.canonical_len() - self.payload.len() + payload.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(ENVELOPE_CONTEXT);
        out.push(self.version);
        put_bytes(&mut out, self.topic.as_bytes());
        out.extend_from_slice(&self.key_id.0);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        put_bytes(&mut out, self.content_type.as_bytes());
        put_count(&mut out, self.headers.len());
        for header in &self.headers {
            put_bytes(&mut out, header.name.as_bytes());
            put_bytes(&mut out, &header.value);
        }
        match &self.encryption {
            None => out.push(0),
            Some(e) => {
                out.push(1);
                out.extend_from_slice(&e.suite.to_be_bytes());
                put_count(&mut out, e.recipients.len());
                for r in &e.recipients {
                    out.extend_from_slice(&r.key_id.0);
                    put_bytes(&mut out, &r.enc);
                    put_bytes(&mut out, &r.sealed_key);
                }
            }
        }
        put_bytes(&mut out, payload);
        debug_assert_eq!(out.len(), len);
        out
    }

    /// Checks everything about the envelope that needs no key and no state:
    /// version, topic, content type, headers, payload size.
    pub fn check_shape(&self, payload_bytes_max: usize) -> Result<(), (ErrorCode, &'static str)> {
        if self.version != ENVELOPE_VERSION {
            return Err((
                ErrorCode::UnsupportedVersion,
                "unsupported envelope version",
            ));
        }
        if topic::validate_name(&self.topic).is_err() {
            return Err((ErrorCode::BadTopic, "invalid topic name"));
        }
        if self.payload.len() > payload_bytes_max {
            return Err((ErrorCode::TooLarge, "payload larger than the broker allows"));
        }
        if self.content_type.is_empty() || self.content_type.len() > CONTENT_TYPE_BYTES_MAX {
            return Err((ErrorCode::BadFrame, "invalid content type"));
        }
        if self.headers.len() > HEADERS_MAX {
            return Err((ErrorCode::BadFrame, "too many headers"));
        }
        if self
            .headers
            .iter()
            .any(|h| h.name.is_empty() || h.name.len() > HEADER_NAME_BYTES_MAX)
        {
            return Err((ErrorCode::BadFrame, "invalid header name"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            version: 1,
            topic: "orders.created".into(),
            key_id: KeyId([7; 16]),
            seq: 42,
            timestamp_ms: 1_700_000_000_000,
            content_type: CONTENT_TYPE_JSON.into(),
            headers: vec![Header {
                name: "trace".into(),
                value: b"abc".to_vec(),
            }],
            encryption: None,
            payload: br#"{"id":1}"#.to_vec(),
        }
    }

    #[test]
    fn canonical_len_is_exact() {
        let mut e = sample();
        assert_eq!(e.canonical_bytes().len(), e.canonical_len());
        e.encryption = Some(Encryption {
            suite: 1,
            recipients: vec![SealedKey {
                key_id: KeyId([1; 16]),
                enc: vec![2; 32],
                sealed_key: vec![3; 48],
            }],
        });
        assert_eq!(e.canonical_bytes().len(), e.canonical_len());
    }

    #[test]
    fn every_field_changes_canonical_bytes() {
        let base = sample().canonical_bytes();
        let mut variants = Vec::new();
        let mut e = sample();
        e.topic = "orders.createe".into();
        variants.push(e);
        let mut e = sample();
        e.key_id = KeyId([8; 16]);
        variants.push(e);
        let mut e = sample();
        e.seq = 43;
        variants.push(e);
        let mut e = sample();
        e.timestamp_ms += 1;
        variants.push(e);
        let mut e = sample();
        e.content_type = CONTENT_TYPE_OCTET.into();
        variants.push(e);
        let mut e = sample();
        e.headers[0].value = b"abd".to_vec();
        variants.push(e);
        let mut e = sample();
        e.payload = br#"{"id":2}"#.to_vec();
        variants.push(e);
        for v in variants {
            assert_ne!(v.canonical_bytes(), base);
        }
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        // Moving a byte from the topic into the content type must change the bytes.
        let mut a = sample();
        a.topic = "ab".into();
        a.content_type = "c".into();
        let mut b = sample();
        b.topic = "a".into();
        b.content_type = "bc".into();
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
    }

    #[test]
    fn check_shape_rejects_bad_fields() {
        let mut e = sample();
        e.version = 2;
        assert_eq!(
            e.check_shape(1024).unwrap_err().0,
            ErrorCode::UnsupportedVersion
        );
        let mut e = sample();
        e.topic = "a..b".into();
        assert_eq!(e.check_shape(1024).unwrap_err().0, ErrorCode::BadTopic);
        let e = sample();
        assert_eq!(e.check_shape(3).unwrap_err().0, ErrorCode::TooLarge);
        assert!(sample().check_shape(1024).is_ok());
    }
}
