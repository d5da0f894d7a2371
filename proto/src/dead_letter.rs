//! The dead letter's payload: what the broker says about a message a
//! consumer group gave up on. A dead letter is a message on the group's
//! `dead_letter` topic with content type [`CONTENT_TYPE`], signed by the
//! broker's identity key; its payload is the JSON of [`DeadLetter`] (fields
//! in declaration order), whose `record` is the original stored record,
//! byte for byte, in lowercase hex: it verifies against its publisher's key
//! like any delivery of `source_topic`.

use serde::{Deserialize, Serialize};

/// The content type of a dead letter.
pub const CONTENT_TYPE: &str = "application/vnd.signet.dead-letter+json";

/// The payload of a dead letter (JSON, fields in this order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The group that gave up on the message.
    pub group: String,
    /// Where the message was.
    pub source_topic: String,
    /// Its offset there.
    pub source_offset: u64,
    /// Times it was delivered to the group.
    pub delivery_count: u32,
    /// `max_deliveries` or `term: <the member's reason>`.
    pub reason: String,
    /// When the broker stored the original (its `received_ms`), if known.
    pub published_ms: Option<u64>,
    /// When it was dead-lettered (broker clock).
    pub dead_ms: u64,
    /// The original stored record (MessagePack `StoredRecord`), hex.
    pub record: String,
}
