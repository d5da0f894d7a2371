//! Protocol limits. Each bounds memory or work a peer can make us spend.

/// Largest frame body, in bytes, that either side accepts by default.
/// Bounds the single allocation a peer can cause per frame. A broker may set
/// a smaller or larger value (`broker.max_frame_bytes`).
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 4 * 1024 * 1024;

/// Largest number of envelopes in one signed batch (one `Publish` frame),
/// and of outcomes in one `Results` frame. Bounds the Merkle path at 8
/// hashes and the work one signature check buys. Also capped while
/// decoding.
pub const BATCH_ENVELOPES_MAX: usize = 256;

/// Largest Merkle path, in hashes: log2 of [`BATCH_ENVELOPES_MAX`]. Also
/// capped while decoding.
pub const PROOF_PATH_MAX: usize = 8;

/// Largest topic name, in bytes.
pub const TOPIC_BYTES_MAX: usize = 255;

/// Largest number of dot-separated tokens in a topic name or pattern.
pub const TOPIC_TOKENS_MAX: usize = 16;

/// Largest number of headers on one envelope. Also capped while decoding,
/// so a frame cannot hold a longer list.
pub const HEADERS_MAX: usize = 64;

/// Largest header name, in bytes.
pub const HEADER_NAME_BYTES_MAX: usize = 128;

/// Largest header value, in bytes: headers are metadata (trace ids, tags);
/// bulk belongs in the payload.
pub const HEADER_VALUE_BYTES_MAX: usize = 4 * 1024;

/// Largest sum of every header's name and value on one envelope, in bytes.
pub const HEADERS_BYTES_MAX: usize = 16 * 1024;

/// Largest number of recipients (sealed content keys) on one envelope.
/// Also capped while decoding. With suite 1 a recipient costs 104 bytes, so
/// the encryption block stays under 7 KiB.
pub const RECIPIENTS_MAX: usize = 64;

/// Length of `SealedKey.enc`, in bytes: suite 1's X25519 encapsulated key.
/// No other length is accepted.
pub const ENC_BYTES: usize = 32;

/// Length of `SealedKey.sealed_key`, in bytes: suite 1's 32-byte content key
/// and its 16-byte tag. No other length is accepted.
pub const SEALED_KEY_BYTES: usize = 48;

/// Largest content type string, in bytes.
pub const CONTENT_TYPE_BYTES_MAX: usize = 128;

/// Largest error detail sent to a peer, in bytes (details are short and safe).
pub const DETAIL_BYTES_MAX: usize = 256;

/// Largest number of messages in one `Deliver` frame. Also capped while
/// decoding.
pub const DELIVER_MESSAGES_MAX: usize = 512;

/// Largest number of topics one pattern subscription covers, and of
/// entries in its `SubscribePattern.resume` and `SubscribedPattern.topics`
/// lists (also capped while decoding). A broker may allow fewer
/// (`pattern_topics_max`).
pub const PATTERN_TOPICS_MAX: usize = 1024;

/// The largest payload limit a broker may be configured with
/// (`broker.max_message_bytes`), in bytes. A client checks payloads against
/// this, never against a smaller guess, so it is never stricter than a
/// broker it talks to.
pub const PAYLOAD_BYTES_MAX_CEILING: usize = 64 * 1024 * 1024;

/// The largest frame limit a broker may be configured with
/// (`broker.max_frame_bytes`), in bytes. A client reads broker frames up to
/// this size; the body buffer grows only as bytes arrive.
pub const FRAME_BYTES_MAX_CEILING: u32 = 256 * 1024 * 1024;

/// Largest number of settlements in one `Settle` frame (and outcomes in one
/// `Settled`), and of topics in one `GroupStatus`. Also capped while
/// decoding.
pub const SETTLE_OPS_MAX: usize = 1024;

/// Length of a consumer-group lease token, in bytes.
pub const LEASE_TOKEN_BYTES: usize = 16;

/// Largest `Term` reason, in bytes (longer ones are cut).
pub const TERM_REASON_BYTES_MAX: usize = 256;

/// Nodes listed in one `ClusterStatus` (and members of one group there).
pub const CLUSTER_NODES_MAX: usize = 64;

/// Raft groups listed in one `ClusterStatus`.
pub const CLUSTER_GROUPS_MAX: usize = 1024;
