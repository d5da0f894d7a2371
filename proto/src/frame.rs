//! The frames. A frame on the wire is a `u32` big-endian body length, then a
//! MessagePack body (see [`crate::codec`]).
//!
//! Streams (each a bidirectional QUIC stream; the first client frame says
//! which kind it is):
//! - publish: client sends pipelined [`ClientFrame::Publish`]; the broker
//!   answers each, in order, with one [`ServerFrame::Results`].
//! - subscribe: client sends one [`ClientFrame::Subscribe`]; the broker
//!   answers [`ServerFrame::Subscribed`] or [`ServerFrame::Error`], then
//!   [`ServerFrame::Deliver`] frames in offset order.
//! - pattern subscription: client sends one [`ClientFrame::SubscribePattern`];
//!   the broker answers [`ServerFrame::SubscribedPattern`] or
//!   [`ServerFrame::Error`], then [`ServerFrame::DeliverTopic`] frames, each
//!   from one topic, in offset order per topic.

use crate::code::ErrorCode;
use crate::envelope::Envelope;
use crate::limits::{BATCH_ENVELOPES_MAX, DELIVER_MESSAGES_MAX, PATTERN_TOPICS_MAX};
use serde::{Deserialize, Serialize};

/// A batch of envelopes signed together. The broker rebuilds the Merkle
/// tree from the envelopes, so no paths travel on the way in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// Chosen by the client; echoed in the matching [`Results`].
    pub request_id: u64,
    /// Ed25519 signature over the batch message of these envelopes.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// 1..=256 envelopes, all signed by the same key (more are refused
    /// while decoding).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, BATCH_ENVELOPES_MAX>")]
    pub envelopes: Vec<Envelope>,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartAt {
    /// The oldest stored message.
    Earliest,
    /// This offset (or the oldest stored one after it).
    Offset(u64),
    /// Only messages accepted after the subscription opens.
    Latest,
}

/// Open a subscription on this stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// A topic name (patterns are not subscribable in protocol v1).
    pub topic: String,
    /// Where to start.
    pub start: StartAt,
}

/// One topic's position in a pattern subscription: the next offset to
/// deliver from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicOffset {
    /// A topic name.
    pub topic: String,
    /// The next offset of that topic to deliver.
    pub offset: u64,
}

/// Open a subscription to every topic matching a pattern that the
/// principal may read, including topics created later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribePattern {
    /// A topic pattern (`*` one token, `>` the rest), or a plain name.
    pub pattern: String,
    /// Where each topic covered when the subscription opens starts:
    /// `Earliest` or `Latest` (`Offset` is refused with `BadFrame`).
    pub start: StartAt,
    /// Resume positions from an earlier subscription to the same pattern:
    /// a listed topic starts at its offset instead of at `start` (at most
    /// [`PATTERN_TOPICS_MAX`] entries).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, PATTERN_TOPICS_MAX>")]
    pub resume: Vec<TopicOffset>,
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    Publish(Publish),
    Subscribe(Subscribe),
    SubscribePattern(SubscribePattern),
}

/// The outcome of one envelope of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Stored durably at this offset of its topic.
    Ack(u64),
    /// Refused; nothing of this envelope was stored.
    Nack(Rejection),
}

/// A typed refusal with a short, safe detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Stable error code.
    pub code: ErrorCode,
    /// Short human-readable detail; never internals.
    pub detail: String,
    /// For `QuotaExceeded`: when to try again, in milliseconds.
    pub retry_after_ms: Option<u64>,
}

impl Rejection {
    /// A rejection with no retry hint.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Rejection {
        let mut detail = detail.into();
        if detail.len() > crate::limits::DETAIL_BYTES_MAX {
            let mut cut = crate::limits::DETAIL_BYTES_MAX;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        Rejection {
            code,
            detail,
            retry_after_ms: None,
        }
    }
}

/// The broker's answer to one [`Publish`], one outcome per envelope, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Results {
    /// The [`Publish::request_id`] answered.
    pub request_id: u64,
    /// One per envelope, in the batch's order (at most 256).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, BATCH_ENVELOPES_MAX>")]
    pub outcomes: Vec<Outcome>,
}

/// One stored message, delivered exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The message's offset in its topic.
    pub offset: u64,
    /// MessagePack of a [`crate::StoredRecord`], byte for byte as stored.
    #[serde(with = "serde_bytes")]
    pub record: Vec<u8>,
}

/// Frames the broker sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    Results(Results),
    /// The subscription is open; the next live offset is this.
    Subscribed {
        next_offset: u64,
    },
    /// Messages in offset order, without gaps (at most 512).
    Deliver(
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, DELIVER_MESSAGES_MAX>")]
        Vec<Delivery>,
    ),
    /// The stream is refused or closed for this reason.
    Error(Rejection),
    /// The pattern subscription is open; where each topic it covers now
    /// starts (topics the principal may read only).
    SubscribedPattern {
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, PATTERN_TOPICS_MAX>")]
        topics: Vec<TopicOffset>,
    },
    /// Messages of one topic of a pattern subscription, in offset order,
    /// without gaps (at most 512).
    DeliverTopic {
        topic: String,
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, DELIVER_MESSAGES_MAX>")]
        deliveries: Vec<Delivery>,
    },
}
