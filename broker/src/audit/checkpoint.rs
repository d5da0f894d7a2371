//! Checkpoints: records in the chain signed by the broker's identity key.
//!
//! A checkpoint record covers the record just before it (`covers_seq` =
//! its own `seq` − 1, `covers_hash` = its own `prev`), and through the
//! hash chain everything before that. Its `signature` is Ed25519 over:
//!
//! ```text
//! "signet/v1/audit-checkpoint\0"
//! [16] key_id            the identity key's id
//! u64  seq               the checkpoint record's own seq
//! u64  covers_seq
//! [32] covers_hash       raw bytes of the hex in the record
//! u64  time_ms           the checkpoint record's own time_ms
//! u8   reason            0 start, 1 periodic, 2 rotation, 3 shutdown
//! u64  every_records     the broker's audit_checkpoint_records_max
//! u64  every_ms          the broker's audit_checkpoint_ms_max
//! ```
//!
//! (integers big-endian). A `rotation` checkpoint is the first record of
//! a new file; a verifier given only later files knows the log may start
//! there. `every_records` and `every_ms` tell a verifier how much may stand
//! unsigned after the last checkpoint of a log whose broker crashed.

use serde_json::{Map, Value, json};
use signet_proto::{KeyId, PublicKey, SigningKey};
use std::sync::Arc;

/// Domain-separation prefix of a checkpoint's signed message.
pub const CHECKPOINT_CONTEXT: &[u8] = b"signet/v1/audit-checkpoint\0";

/// The system topic each checkpoint is published to, signed by the
/// broker's identity key, for auditors to keep elsewhere.
pub const CHECKPOINT_TOPIC: &str = "signet.audit.checkpoints";

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first record of a broker run was written.
    Start,
    /// `every_records` records, or a record `every_ms` old, were unsigned.
    Periodic,
    /// The first record of a new file after rotation.
    Rotation,
    /// The broker stopped.
    Shutdown,
}

impl Reason {
    fn byte(self) -> u8 {
        match self {
            Reason::Start => 0,
            Reason::Periodic => 1,
            Reason::Rotation => 2,
            Reason::Shutdown => 3,
        }
    }

    /// The name written in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Start => "start",
            Reason::Periodic => "periodic",
            Reason::Rotation => "rotation",
            Reason::Shutdown => "shutdown",
        }
    }

    fn parse(s: &str) -> Option<Reason> {
        [
            Reason::Start,
            Reason::Periodic,
            Reason::Rotation,
            Reason::Shutdown,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// The signed fields of a checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The checkpoint record's seq.
    pub seq: u64,
    /// The checkpoint record's time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Seq of the record it covers (`seq - 1`).
    pub covers_seq: u64,
    /// SHA-256 of the line it covers (its own `prev`).
    pub covers_hash: [u8; 32],
    /// Why it was written.
    pub reason: Reason,
    /// Id of the identity key that signed it.
    pub key_id: KeyId,
    /// Records the broker writes before signing again.
    pub every_records: u64,
    /// Longest a record stays unsigned, in ms.
    pub every_ms: u64,
    /// Ed25519 over [`Checkpoint::message`].
    pub signature: [u8; 64],
}

/// Why a record is not a well-formed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checkpoint field {0} is missing or malformed")]
pub struct MalformedCheckpoint(pub &'static str);

fn u64_field(record: &Value, name: &'static str) -> Result<u64, MalformedCheckpoint> {
    record
        .get(name)
        .and_then(Value::as_u64)
        .ok_or(MalformedCheckpoint(name))
}

fn hex_field<const N: usize>(
    record: &Value,
    name: &'static str,
) -> Result<[u8; N], MalformedCheckpoint> {
    record
        .get(name)
        .and_then(Value::as_str)
        .and_then(|s| hex::decode(s).ok())
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or(MalformedCheckpoint(name))
}

impl Checkpoint {
    /// The bytes the signature is over.
    pub fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(CHECKPOINT_CONTEXT.len() + 16 + 8 * 5 + 32 + 1);
        m.extend_from_slice(CHECKPOINT_CONTEXT);
        m.extend_from_slice(&self.key_id.0);
        m.extend_from_slice(&self.seq.to_be_bytes());
        m.extend_from_slice(&self.covers_seq.to_be_bytes());
        m.extend_from_slice(&self.covers_hash);
        m.extend_from_slice(&self.time_ms.to_be_bytes());
        m.push(self.reason.byte());
        m.extend_from_slice(&self.every_records.to_be_bytes());
        m.extend_from_slice(&self.every_ms.to_be_bytes());
        m
    }

    /// Whether `key` signed it.
    pub fn verify(&self, key: &PublicKey) -> bool {
        key.id() == self.key_id && key.verify(&self.message(), &self.signature)
    }

    /// Reads the signed fields of a checkpoint record (`event` is
    /// `checkpoint`); the signature is not checked here.
    pub fn from_record(record: &Value) -> Result<Checkpoint, MalformedCheckpoint> {
        if record.get("event").and_then(Value::as_str) != Some("checkpoint") {
            return Err(MalformedCheckpoint("event"));
        }
        Ok(Checkpoint {
            seq: u64_field(record, "seq")?,
            time_ms: u64_field(record, "time_ms")?,
            covers_seq: u64_field(record, "covers_seq")?,
            covers_hash: hex_field(record, "covers_hash")?,
            reason: record
                .get("reason")
                .and_then(Value::as_str)
                .and_then(Reason::parse)
                .ok_or(MalformedCheckpoint("reason"))?,
            key_id: record
                .get("key_id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or(MalformedCheckpoint("key_id"))?,
            every_records: u64_field(record, "every_records")?,
            every_ms: u64_field(record, "every_ms")?,
            signature: hex_field(record, "signature")?,
        })
    }

    /// The record's fields besides `seq`, `time_ms`, `event` and `prev`
    /// (which every record carries).
    pub(super) fn fields(&self) -> Map<String, Value> {
        let Value::Object(map) = json!({
            "covers_seq": self.covers_seq,
            "covers_hash": hex::encode(self.covers_hash),
            "reason": self.reason.as_str(),
            "key_id": self.key_id.to_hex(),
            "every_records": self.every_records,
            "every_ms": self.every_ms,
            "signature": hex::encode(self.signature),
        }) else {
            return Map::new();
        };
        map
    }
}

/// Publishes a checkpoint record's line (JSON, no newline) elsewhere; the
/// broker publishes it to [`CHECKPOINT_TOPIC`]. Called on the audit writer
/// thread, in order; it may block until the record is durable.
pub type PublishCheckpoint = Box<dyn FnMut(&[u8]) + Send>;

/// What the audit writer signs checkpoints with, and where it sends them.
pub struct Checkpoints {
    /// The broker's identity key.
    pub key: Arc<SigningKey>,
    /// Where each checkpoint goes besides the log, if anywhere.
    pub publish: Option<PublishCheckpoint>,
}

/// The unsigned part of a checkpoint, to sign.
pub(super) struct Unsigned {
    pub seq: u64,
    pub time_ms: u64,
    pub covers_seq: u64,
    pub covers_hash: [u8; 32],
    pub reason: Reason,
    pub every_records: u64,
    pub every_ms: u64,
}

impl Unsigned {
    pub fn sign(self, key: &SigningKey) -> Checkpoint {
        let mut checkpoint = Checkpoint {
            seq: self.seq,
            time_ms: self.time_ms,
            covers_seq: self.covers_seq,
            covers_hash: self.covers_hash,
            reason: self.reason,
            key_id: key.id(),
            every_records: self.every_records,
            every_ms: self.every_ms,
            signature: [0; 64],
        };
        checkpoint.signature = key.sign(&checkpoint.message());
        checkpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_round_trips_and_any_changed_field_breaks_it() {
        let key = SigningKey::from_seed(&[7; 32]).unwrap();
        let cp = Unsigned {
            seq: 10,
            time_ms: 1234,
            covers_seq: 9,
            covers_hash: [3; 32],
            reason: Reason::Periodic,
            every_records: 100,
            every_ms: 5000,
        }
        .sign(&key);
        let mut record = Value::Object(cp.fields());
        record["event"] = json!("checkpoint");
        record["seq"] = json!(10);
        record["time_ms"] = json!(1234);
        let read = Checkpoint::from_record(&record).unwrap();
        assert_eq!(read, cp);
        assert!(read.verify(key.public_key()));
        let other = SigningKey::from_seed(&[8; 32]).unwrap();
        assert!(!read.verify(other.public_key()));
        for (name, value) in [
            ("seq", json!(11)),
            ("covers_seq", json!(8)),
            ("time_ms", json!(1)),
            ("reason", json!("rotation")),
            ("every_records", json!(1_000_000)),
            ("covers_hash", json!(hex::encode([4u8; 32]))),
        ] {
            let mut changed = record.clone();
            changed[name] = value;
            let cp = Checkpoint::from_record(&changed).unwrap();
            assert!(!cp.verify(key.public_key()), "{name} is not signed");
        }
        let mut missing = record.clone();
        missing.as_object_mut().unwrap().remove("signature");
        assert_eq!(
            Checkpoint::from_record(&missing),
            Err(MalformedCheckpoint("signature"))
        );
    }
}
