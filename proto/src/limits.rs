//! Protocol limits. Each bounds memory or work a peer can make us spend.

/// Largest frame body, in bytes, that either side accepts by default.
/// Bounds the single allocation a peer can cause per frame. A broker may set
/// a smaller or larger value (`broker.max_frame_bytes`).
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 4 * 1024 * 1024;

/// Largest number of envelopes in one signed batch (one `Publish` frame).
/// Bounds the Merkle path at 8 hashes and the work one signature check buys.
pub const BATCH_ENVELOPES_MAX: usize = 256;

/// Largest Merkle path, in hashes: log2 of [`BATCH_ENVELOPES_MAX`].
pub const PROOF_PATH_MAX: usize = 8;

/// Largest topic name, in bytes.
pub const TOPIC_BYTES_MAX: usize = 255;

/// Largest number of dot-separated tokens in a topic name or pattern.
pub const TOPIC_TOKENS_MAX: usize = 16;

/// Largest number of headers on one envelope.
pub const HEADERS_MAX: usize = 64;

/// Largest header name, in bytes.
pub const HEADER_NAME_BYTES_MAX: usize = 128;

/// Largest content type string, in bytes.
pub const CONTENT_TYPE_BYTES_MAX: usize = 128;

/// Largest error detail sent to a peer, in bytes (details are short and safe).
pub const DETAIL_BYTES_MAX: usize = 256;

/// Largest number of messages in one `Deliver` frame.
pub const DELIVER_MESSAGES_MAX: usize = 512;

/// The largest payload limit a broker may be configured with
/// (`broker.max_message_bytes`), in bytes. A client checks payloads against
/// this, never against a smaller guess, so it is never stricter than a
/// broker it talks to.
pub const PAYLOAD_BYTES_MAX_CEILING: usize = 64 * 1024 * 1024;

/// The largest frame limit a broker may be configured with
/// (`broker.max_frame_bytes`), in bytes. A client reads broker frames up to
/// this size; the body buffer grows only as bytes arrive.
pub const FRAME_BYTES_MAX_CEILING: u32 = 256 * 1024 * 1024;
