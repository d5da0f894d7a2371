//! The dead-letter record: a message on the group's `dead_letter` topic,
//! signed (a batch of one) by the broker's identity key, whose JSON payload
//! carries the original stored record byte for byte (hex) with the source
//! topic and offset, group, delivery count, reason and times. The original
//! still verifies against its publisher's key; the broker's signature covers
//! everything else.

use signet_proto::envelope::ENVELOPE_VERSION;
use signet_proto::merkle::Hash;
use signet_proto::{Envelope, Salt, SigningKey, StoredRecord, batch, codec};

pub use signet_proto::dead_letter::{CONTENT_TYPE, DeadLetter};

/// Everything one dead letter is built from.
pub struct Build<'a> {
    /// The broker's identity key.
    pub key: &'a SigningKey,
    /// The dead-letter topic.
    pub topic: &'a str,
    /// The payload.
    pub letter: DeadLetter,
    /// The envelope's seq (above every seq of the key).
    pub seq: u64,
    /// The envelope's salt (chosen before the command was applied).
    pub salt: [u8; 16],
}

/// The stored record of a dead letter and its leaf hash (remembered with
/// its offset like any envelope's), or `None` if it cannot be encoded.
pub fn build(b: Build<'_>) -> Option<(Vec<u8>, Hash)> {
    let payload = serde_json::to_vec(&b.letter).ok()?;
    let envelope = Envelope {
        version: ENVELOPE_VERSION,
        salt: Salt(b.salt),
        topic: b.topic.to_owned(),
        key_id: b.key.id(),
        seq: b.seq,
        timestamp_ms: b.letter.dead_ms,
        content_type: CONTENT_TYPE.to_owned(),
        headers: Vec::new(),
        encryption: None,
        payload,
    };
    let signed = batch::sign(b.key, std::slice::from_ref(&envelope))?;
    let leaf = signed.tree.leaves().first().copied()?;
    let record = StoredRecord {
        received_ms: b.letter.dead_ms,
        envelope,
        proof: signed.proof(0),
    };
    Some((codec::encode_body(&record).ok()?, leaf))
}

/// The original's `received_ms`, if its record decodes.
pub fn received_ms(record: &[u8]) -> Option<u64> {
    codec::decode::<StoredRecord>(record)
        .ok()
        .map(|r| r.received_ms)
}
