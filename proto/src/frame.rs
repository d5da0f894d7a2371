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
//! - consume (a consumer-group member): client sends one
//!   [`ClientFrame::Consume`]; the broker answers [`ServerFrame::Joined`] or
//!   [`ServerFrame::Error`], then [`ServerFrame::GroupDeliver`] frames; the
//!   client sends [`ClientFrame::Settle`] frames, each answered, in order,
//!   by one [`ServerFrame::Settled`].
//! - group info: client sends one [`ClientFrame::GroupInfo`]; the broker
//!   answers [`ServerFrame::GroupStatus`] or [`ServerFrame::Error`].
//! - cluster status: client sends one [`ClientFrame::ClusterStatus`]; the
//!   broker answers [`ServerFrame::ClusterStatus`] or [`ServerFrame::Error`]
//!   (`NotClustered` from a single broker).
//! - placement: client sends one [`ClientFrame::Placement`]; the broker
//!   answers [`ServerFrame::Placement`] or [`ServerFrame::Error`]
//!   (`NotClustered` from a single broker).
//! - pattern subscription: client sends one [`ClientFrame::SubscribePattern`];
//!   the broker answers [`ServerFrame::SubscribedPattern`] or
//!   [`ServerFrame::Error`], then [`ServerFrame::DeliverTopic`] frames, each
//!   from one topic, in offset order per topic (and [`ServerFrame::Gap`]s).

use crate::code::ErrorCode;
use crate::envelope::Envelope;
use crate::limits::{
    BATCH_ENVELOPES_MAX, CLUSTER_GROUPS_MAX, CLUSTER_NODES_MAX, DELIVER_MESSAGES_MAX,
    PATTERN_TOPICS_MAX, SETTLE_OPS_MAX,
};
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

/// Join a consumer group on this stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consume {
    /// The group's name (a `[[group]]` of the broker's policy).
    pub group: String,
    /// Most deliveries this member holds unsettled at once (the broker
    /// caps it at its `group_prefetch_max`).
    pub prefetch: u32,
}

/// What a member does with one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettleAction {
    /// Done: never delivered to the group again.
    Ack,
    /// Not done: redeliver after at least this many milliseconds (and
    /// never before the group's backoff).
    Nak(Option<u64>),
    /// Still working: the lease deadline moves to now + `ack_wait`; the
    /// delivery count does not change.
    Extend,
    /// Never deliver again: dead-letter now with this reason.
    Term(String),
}

/// One settlement: the delivery's topic, offset and lease token, and what
/// to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settle {
    /// The delivery's topic.
    pub topic: String,
    /// Its offset.
    pub offset: u64,
    /// The lease token of the delivery (16 bytes).
    #[serde(with = "serde_bytes")]
    pub token: Vec<u8>,
    /// What to do.
    pub action: SettleAction,
}

/// Ask for a group's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group's name.
    pub group: String,
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
    /// Join a consumer group (first frame of a consume stream).
    Consume(Consume),
    /// Settle deliveries of this consume stream (at most 1024 per frame).
    Settle(#[serde(deserialize_with = "crate::bounded::vec::<_, _, SETTLE_OPS_MAX>")] Vec<Settle>),
    /// Ask for a group's state (first and only frame of its stream).
    GroupInfo(GroupInfo),
    /// Open a subscription to every matching topic (first frame of its stream).
    SubscribePattern(SubscribePattern),
    /// Ask a cluster node for the cluster's state (first and only frame of
    /// its stream).
    ClusterStatus,
    /// Ask a cluster node where topics are: its data group count and each
    /// group's leader (first and only frame of its stream; answered from
    /// what the node knows, without asking its peers).
    Placement,
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

/// One message leased to a group member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDelivery {
    /// The message's topic.
    pub topic: String,
    /// Its offset in the topic.
    pub offset: u64,
    /// How many times it was leased to the group, this one included
    /// (written to disk before this delivery was sent).
    pub delivery_count: u32,
    /// The lease token to settle it with (16 bytes).
    #[serde(with = "serde_bytes")]
    pub token: Vec<u8>,
    /// When the lease ends unless extended (broker clock, ms since the epoch).
    pub deadline_ms: u64,
    /// MessagePack of a [`crate::StoredRecord`], byte for byte as stored.
    #[serde(with = "serde_bytes")]
    pub record: Vec<u8>,
}

/// One topic of a group's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupTopicStatus {
    /// The topic.
    pub topic: String,
    /// The topic's next offset (messages stored: this many).
    pub next_offset: u64,
    /// Every offset below it is acked or dead-lettered.
    pub acked_floor: u64,
    /// The next offset never leased to the group.
    pub next_unleased: u64,
    /// Messages waiting for a member (never leased, or waiting to be
    /// redelivered).
    pub pending: u64,
    /// Deliveries leased and not settled.
    pub in_flight: u64,
    /// Deliveries that were redeliveries.
    pub redelivered: u64,
    /// Messages acked.
    pub acked: u64,
    /// Messages dead-lettered.
    pub dead: u64,
    /// Messages retention (count, bytes or age) removed before the group
    /// settled them: never leased, or waiting for a redelivery. Absent
    /// from an older broker's frame (0).
    #[serde(default)]
    pub removed: u64,
}

/// A group's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group.
    pub group: String,
    /// Why the group is not leasing although messages wait, if it is not.
    pub waiting: Option<String>,
    /// Its topics (at most 1024).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, SETTLE_OPS_MAX>")]
    pub topics: Vec<GroupTopicStatus>,
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
    /// The member joined the group.
    Joined {
        group: String,
    },
    /// Deliveries leased to this member (at most 512).
    GroupDeliver(
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, DELIVER_MESSAGES_MAX>")]
        Vec<GroupDelivery>,
    ),
    /// The outcome of each settlement of one `Settle` frame, in its order:
    /// `Ack(offset)` when applied and on disk, `Nack` when refused (nothing
    /// changed).
    Settled(
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, SETTLE_OPS_MAX>")] Vec<Outcome>,
    ),
    /// A group's state, answering `GroupInfo`.
    GroupStatus(GroupStatus),
    /// Messages `from..=to` of `topic` will never be delivered: they were
    /// removed (`reason`, e.g. `retention`) before this subscription
    /// reached them. Offsets are never reused; delivery goes on at `to + 1`.
    Gap(Gap),
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
    /// The cluster's state, answering `ClusterStatus`.
    ClusterStatus(ClusterStatus),
    /// Where topics are, answering `Placement`.
    Placement(Placement),
}

/// One node as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// The node's id.
    pub id: u64,
    /// Where clients reach it.
    pub client: String,
    /// `leader`, `follower`, `candidate`, `learner`, `shutdown`,
    /// `unreachable` (it did not answer the answering node in time), or
    /// `refused` (it answered, refusing the answering node: see `refused`).
    pub state: String,
    /// The highest Raft term it has seen (absent when unreachable).
    pub term: Option<u64>,
    /// Why it refused the answering node's calls (say, the two nodes'
    /// `data_groups` differ), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// One Raft group: the metadata group `meta` (and, later, data groups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterGroup {
    /// The group's name (`meta` for the metadata group).
    pub name: String,
    /// Its leader as the answering node knows it, if any.
    pub leader: Option<u64>,
    /// The answering node's current term in the group.
    pub term: u64,
    /// The highest log index known committed on the answering node.
    pub commit_index: Option<u64>,
    /// The highest log index applied to its state machine there.
    pub applied_index: Option<u64>,
    /// Its voting members (at most 64).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, CLUSTER_NODES_MAX>")]
    pub members: Vec<u64>,
    /// The answering node's log is deleted up to this index, inclusive
    /// (a data group's log is compacted once every member holds it).
    #[serde(default)]
    pub compacted_index: Option<u64>,
}

/// The cluster's state, as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: u64,
    /// Every node of its `[cluster] peers` (at most 64).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, CLUSTER_NODES_MAX>")]
    pub nodes: Vec<ClusterNode>,
    /// Every Raft group (at most 1024).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, CLUSTER_GROUPS_MAX>")]
    pub groups: Vec<ClusterGroup>,
}

/// Where a cluster's topics are: `data_groups` groups hold them (which
/// group holds a topic: [`crate::placement::group_of`]), and the client
/// address of each group's leader as the answering node knows it
/// (`leaders[g - 1]` for group `g`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// How many data groups hold the topics.
    pub data_groups: u64,
    /// Each group's leader, in group order (at most 1024).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, CLUSTER_GROUPS_MAX>")]
    pub leaders: Vec<Option<String>>,
}

/// Messages a subscription skips because they no longer exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The topic they were on.
    pub topic: String,
    /// The first offset removed.
    pub from: u64,
    /// The last offset removed.
    pub to: u64,
    /// Why: `retention`.
    pub reason: String,
}
