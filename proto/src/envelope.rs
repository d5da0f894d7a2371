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
//! [16] salt
//! u32 len ‖ topic (UTF-8)
//! [16] key_id
//! u64 seq
//! u64 timestamp_ms
//! u32 len ‖ content_type (UTF-8)
//! u32 header count ‖ per header: u32 len ‖ name ‖ u32 len ‖ value
//! u8  0 (no encryption) | 1 ‖ u16 suite ‖ [32] key_commitment ‖ u32 count ‖
//!       per recipient: [16] key_id ‖ u32 len ‖ enc ‖ u32 len ‖ sealed_key
//! u32 len ‖ payload
//! ```
//!
//! The salt is 16 random bytes the publisher draws for every envelope. A
//! batch may mix topics and each stored proof carries its neighbours' leaf
//! hashes; without the salt, a subscriber of one topic could hash guesses
//! of a neighbour's low-entropy payload (every other field of it being
//! guessable) and compare them with the leaf it was given.

use crate::code::ErrorCode;
use crate::keys::{KEY_ID_BYTES, KeyId, SIGNATURE_BYTES};
use crate::limits::{
    BATCH_ENVELOPES_MAX, CONTENT_TYPE_BYTES_MAX, ENC_BYTES, HEADER_NAME_BYTES_MAX,
    HEADER_VALUE_BYTES_MAX, HEADERS_BYTES_MAX, HEADERS_MAX, PROOF_PATH_MAX, RECIPIENTS_MAX,
    SEALED_KEY_BYTES,
};
use crate::merkle::Hash;
use crate::topic;
use serde::{Deserialize, Serialize};
use std::fmt;

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

/// Length of an envelope's salt, in bytes.
pub const SALT_BYTES: usize = 16;

/// Length of an encryption block's key commitment, in bytes.
pub const KEY_COMMITMENT_BYTES: usize = 32;

/// The only encryption suite defined ([`Encryption::suite`]): HPKE base
/// mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and ChaCha20-Poly1305
/// to seal the content key, ChaCha20-Poly1305 for the payload.
pub const SUITE_X25519_SHA256_CHACHA20: u16 = 1;

/// Why the system's random generator could not give a salt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomError;

/// 16 random bytes inside an envelope's signed bytes, drawn by the
/// publisher for every envelope, so that the envelope's leaf hash (which
/// its batch-mates' proofs carry) cannot be matched against guesses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Salt(#[serde(with = "crate::fixed")] pub [u8; SALT_BYTES]);

impl Salt {
    /// A fresh salt from the system's cryptographic random generator.
    pub fn random() -> Result<Salt, RandomError> {
        use ring::rand::SecureRandom;
        let mut salt = [0u8; SALT_BYTES];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| RandomError)?;
        Ok(Salt(salt))
    }

    /// `n` fresh salts from one call to the system's generator (a
    /// publisher draws a batch's salts at once: one `getrandom` per batch
    /// instead of one per envelope).
    pub fn random_many(n: usize) -> Result<Vec<Salt>, RandomError> {
        use ring::rand::SecureRandom;
        let mut bytes = vec![0u8; n * SALT_BYTES];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| RandomError)?;
        Ok(bytes
            .chunks_exact(SALT_BYTES)
            .map(|chunk| {
                let mut salt = [0u8; SALT_BYTES];
                salt.copy_from_slice(chunk);
                Salt(salt)
            })
            .collect())
    }
}

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Salt({})", hex::encode(self.0))
    }
}

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
    /// Suite id ([`SUITE_X25519_SHA256_CHACHA20`] is the only one).
    pub suite: u16,
    /// SHA-256 of `"signet/v1/key-commitment\0" ‖ content key`: binds the
    /// envelope to one content key, so a publisher cannot seal different
    /// keys to different recipients and show each another plaintext. A
    /// subscriber checks it after unsealing and before decrypting.
    #[serde(with = "crate::fixed")]
    pub key_commitment: [u8; KEY_COMMITMENT_BYTES],
    /// One sealed content key per recipient key (at most [`RECIPIENTS_MAX`]).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, RECIPIENTS_MAX>")]
    pub recipients: Vec<SealedKey>,
}

/// A message as its publisher signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope format version ([`ENVELOPE_VERSION`]).
    pub version: u8,
    /// Random, drawn by the publisher for this envelope ([`Salt::random`]).
    pub salt: Salt,
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
    /// Signed headers, in order (at most [`HEADERS_MAX`]).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, HEADERS_MAX>")]
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
    /// Merkle audit path, leaf to root (at most [`PROOF_PATH_MAX`] hashes).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, PROOF_PATH_MAX>")]
    pub path: Vec<Hash>,
}

impl Proof {
    /// Whether the proof's sizes are within protocol bounds.
    pub fn shape_ok(&self) -> bool {
        self.signature.len() == SIGNATURE_BYTES
            && self.leaf_index < self.leaf_count
            && self.leaf_count as usize <= BATCH_ENVELOPES_MAX
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

/// A content type without its parameters (`application/json` of
/// `application/json; charset=utf-8`).
pub fn content_type_essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
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
                    + KEY_COMMITMENT_BYTES
                    + 4
                    + e.recipients
                        .iter()
                        .map(|r| KEY_ID_BYTES + 8 + r.enc.len() + r.sealed_key.len())
                        .sum::<usize>()
            }
        };
        ENVELOPE_CONTEXT.len()
            + 1
            + SALT_BYTES
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
        out.extend_from_slice(&self.salt.0);
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
                out.extend_from_slice(&e.key_commitment);
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

    /// Checks everything about the envelope that needs no key and no state,
    /// in this order: version (`UnsupportedVersion`), topic (`BadTopic`),
    /// the whole envelope's size, i.e. its [`Envelope::canonical_len`],
    /// against `message_bytes_max` (`TooLarge`), content type and headers
    /// (`BadFrame`), then the encryption block: a known suite
    /// (`UnsupportedSuite`), at most [`RECIPIENTS_MAX`] recipients with keys
    /// of the suite's lengths (`BadFrame`).
    pub fn check_shape(&self, message_bytes_max: usize) -> Result<(), (ErrorCode, &'static str)> {
        if self.version != ENVELOPE_VERSION {
            return Err((
                ErrorCode::UnsupportedVersion,
                "unsupported envelope version",
            ));
        }
        if topic::validate_name(&self.topic).is_err() {
            return Err((ErrorCode::BadTopic, "invalid topic name"));
        }
        if self.canonical_len() > message_bytes_max {
            return Err((
                ErrorCode::TooLarge,
                "envelope larger than the broker allows",
            ));
        }
        if self.content_type.is_empty() || self.content_type.len() > CONTENT_TYPE_BYTES_MAX {
            return Err((ErrorCode::BadFrame, "invalid content type"));
        }
        check_headers(&self.headers).map_err(|detail| (ErrorCode::BadFrame, detail))?;
        match &self.encryption {
            None => Ok(()),
            Some(e) => e.check_shape(),
        }
    }
}

/// Checks a header list against the protocol's caps: at most
/// [`HEADERS_MAX`] headers, names of 1..=[`HEADER_NAME_BYTES_MAX`] bytes,
/// values of at most [`HEADER_VALUE_BYTES_MAX`] bytes, and at most
/// [`HEADERS_BYTES_MAX`] bytes of names and values together. Publishers
/// check before sending, since a broker refuses more.
pub fn check_headers(headers: &[Header]) -> Result<(), &'static str> {
    if headers.len() > HEADERS_MAX {
        return Err("too many headers");
    }
    if headers
        .iter()
        .any(|h| h.name.is_empty() || h.name.len() > HEADER_NAME_BYTES_MAX)
    {
        return Err("invalid header name");
    }
    if headers
        .iter()
        .any(|h| h.value.len() > HEADER_VALUE_BYTES_MAX)
    {
        return Err("header value too long");
    }
    let total: usize = headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    if total > HEADERS_BYTES_MAX {
        return Err("headers too long altogether");
    }
    Ok(())
}

impl Encryption {
    /// A known suite (`UnsupportedSuite`), at most [`RECIPIENTS_MAX`]
    /// recipients, each with an `enc` of [`ENC_BYTES`] and a `sealed_key`
    /// of [`SEALED_KEY_BYTES`] (`BadFrame`). Whether the topic wants an
    /// encryption block at all, and at least one recipient, is the topic's
    /// rule, checked by the broker with its policy.
    pub fn check_shape(&self) -> Result<(), (ErrorCode, &'static str)> {
        if self.suite != SUITE_X25519_SHA256_CHACHA20 {
            return Err((ErrorCode::UnsupportedSuite, "unsupported encryption suite"));
        }
        if self.recipients.len() > RECIPIENTS_MAX {
            return Err((ErrorCode::BadFrame, "too many recipients"));
        }
        if self
            .recipients
            .iter()
            .any(|r| r.enc.len() != ENC_BYTES || r.sealed_key.len() != SEALED_KEY_BYTES)
        {
            return Err((ErrorCode::BadFrame, "sealed key of the wrong length"));
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
            salt: Salt([5; SALT_BYTES]),
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
        e.encryption = Some(sealed(1));
        assert_eq!(e.canonical_bytes().len(), e.canonical_len());
    }

    fn sealed(recipients: usize) -> Encryption {
        Encryption {
            suite: SUITE_X25519_SHA256_CHACHA20,
            key_commitment: [4; KEY_COMMITMENT_BYTES],
            recipients: vec![
                SealedKey {
                    key_id: KeyId([1; 16]),
                    enc: vec![2; ENC_BYTES],
                    sealed_key: vec![3; SEALED_KEY_BYTES],
                };
                recipients
            ],
        }
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
        let mut e = sample();
        e.salt.0[15] ^= 1;
        variants.push(e);
        let mut e = sample();
        e.encryption = Some(sealed(1));
        let base_sealed = e.canonical_bytes();
        variants.push(e);
        let mut e = sample();
        e.encryption = Some(sealed(1));
        if let Some(enc) = e.encryption.as_mut() {
            enc.key_commitment[0] ^= 1;
        }
        assert_ne!(e.canonical_bytes(), base_sealed);
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

    #[test]
    fn the_whole_envelope_counts_against_the_size_limit() {
        let e = sample();
        let exact = e.canonical_len();
        assert!(e.check_shape(exact).is_ok());
        assert_eq!(e.check_shape(exact - 1).unwrap_err().0, ErrorCode::TooLarge);
        // An empty payload does not make headers free.
        let mut headers = sample();
        headers.payload.clear();
        headers.headers = vec![
            Header {
                name: "h".into(),
                value: vec![0; HEADER_VALUE_BYTES_MAX],
            };
            3
        ];
        assert!(check_headers(&headers.headers).is_ok());
        assert_eq!(
            headers
                .check_shape(3 * HEADER_VALUE_BYTES_MAX)
                .unwrap_err()
                .0,
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn header_caps_are_each_enforced() {
        let header = |name: &str, value: usize| Header {
            name: name.into(),
            value: vec![0; value],
        };
        assert!(check_headers(&vec![header("h", 1); HEADERS_MAX]).is_ok());
        assert!(check_headers(&vec![header("h", 1); HEADERS_MAX + 1]).is_err());
        assert!(check_headers(&[header("", 1)]).is_err());
        assert!(check_headers(&[header(&"n".repeat(HEADER_NAME_BYTES_MAX), 0)]).is_ok());
        assert!(check_headers(&[header(&"n".repeat(HEADER_NAME_BYTES_MAX + 1), 0)]).is_err());
        assert!(check_headers(&[header("h", HEADER_VALUE_BYTES_MAX)]).is_ok());
        assert!(check_headers(&[header("h", HEADER_VALUE_BYTES_MAX + 1)]).is_err());
        let fill = HEADERS_BYTES_MAX / 4 - 1;
        assert!(check_headers(&vec![header("h", fill); 4]).is_ok());
        assert!(check_headers(&vec![header("h", fill + 1); 4]).is_err());
    }

    #[test]
    fn encryption_shape_wants_a_known_suite_and_suite_sized_keys() {
        assert!(sealed(RECIPIENTS_MAX).check_shape().is_ok());
        assert!(sealed(0).check_shape().is_ok(), "the topic rule decides");
        assert_eq!(
            sealed(RECIPIENTS_MAX + 1).check_shape().unwrap_err().0,
            ErrorCode::BadFrame
        );
        let mut unknown = sealed(1);
        unknown.suite = 0;
        assert_eq!(
            unknown.check_shape().unwrap_err().0,
            ErrorCode::UnsupportedSuite
        );
        let mut short = sealed(1);
        short.recipients[0].enc.pop();
        assert_eq!(short.check_shape().unwrap_err().0, ErrorCode::BadFrame);
        let mut long = sealed(1);
        long.recipients[0].sealed_key.push(0);
        assert_eq!(long.check_shape().unwrap_err().0, ErrorCode::BadFrame);
    }

    #[test]
    fn salts_are_random() {
        let (a, b) = (Salt::random().unwrap(), Salt::random().unwrap());
        let many = Salt::random_many(3).unwrap();
        assert_eq!(many.len(), 3);
        assert!(many[0] != many[1] && many[1] != many[2] && many[0] != a);
        assert_ne!(a, b);
        assert_ne!(a.0, [0; SALT_BYTES]);
    }

    #[test]
    fn lists_are_capped_while_decoding() {
        let mut e = sample();
        e.headers = vec![e.headers[0].clone(); HEADERS_MAX];
        e.encryption = Some(sealed(RECIPIENTS_MAX));
        let bytes = crate::codec::encode_body(&e).unwrap();
        assert_eq!(crate::codec::decode::<Envelope>(&bytes).unwrap(), e);
        let mut over = e.clone();
        over.headers.push(over.headers[0].clone());
        let bytes = crate::codec::encode_body(&over).unwrap();
        assert!(crate::codec::decode::<Envelope>(&bytes).is_err());
        let mut over = e;
        if let Some(enc) = over.encryption.as_mut() {
            enc.recipients.push(enc.recipients[0].clone());
        }
        let bytes = crate::codec::encode_body(&over).unwrap();
        assert!(crate::codec::decode::<Envelope>(&bytes).is_err());
    }
}
