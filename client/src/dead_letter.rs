//! Opening a dead letter: a message on a consumer group's dead-letter
//! topic, signed by the broker's identity key (which the subscription
//! already verified against the client's `[trust]`: the broker key must be
//! trusted for the dead-letter topics). Its payload names the group, the
//! source topic and offset, the delivery count, the reason and times, and
//! carries the original stored record byte for byte, which is verified
//! here against its publisher's key like a delivery of its topic.

use crate::error::Error;
use crate::message::Message;
use crate::payload::Payloads;
use crate::verify::Verifier;
use signet_proto::ErrorCode;
pub use signet_proto::dead_letter::{CONTENT_TYPE, DeadLetter};

/// A dead letter whose original verified.
#[derive(Debug, Clone)]
pub struct OpenedDeadLetter {
    /// What the broker says (covered by its signature on the dead letter).
    pub letter: DeadLetter,
    /// The original message, verified against its publisher's key.
    pub original: Message,
}

/// Whether `message` is a dead letter (by its content type).
pub fn is_dead_letter(message: &Message) -> bool {
    message.content_type == CONTENT_TYPE
}

pub(crate) fn open(
    mut verifier: Verifier,
    payloads: &Payloads,
    message: &Message,
) -> Result<OpenedDeadLetter, Error> {
    let bad = |detail: &str| Error::Verify {
        offset: message.offset,
        code: ErrorCode::BadSignature,
        detail: detail.to_owned(),
    };
    if !is_dead_letter(message) {
        return Err(bad("not a dead letter"));
    }
    let letter: DeadLetter = serde_json::from_slice(&message.payload)
        .map_err(|_| bad("dead letter payload does not parse"))?;
    let record = hex::decode(&letter.record).map_err(|_| bad("dead letter record is not hex"))?;
    let verified = verifier
        .verify_any_order(&letter.source_topic, &record)
        .map_err(|r| Error::Verify {
            offset: letter.source_offset,
            code: r.code,
            detail: format!("dead letter's original: {}", r.detail),
        })?;
    let original = payloads.open(letter.source_offset, verified)?;
    Ok(OpenedDeadLetter { letter, original })
}
