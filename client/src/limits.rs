//! The client's limits, in one place. Each bounds memory or work, or
//! keeps the client from being stricter than a broker it talks to.
//!
//! Limits the client shares with the broker (frame and payload ceilings,
//! envelopes per batch) come from [`signet_proto::limits`]; the client never
//! checks against a smaller guess of what a broker allows, since a broker
//! answers `TooLarge` for anything above its own configured limit.

/// Largest broker frame body the client reads, in bytes: 256 MiB, the
/// largest `broker.max_frame_bytes` a broker may be configured with
/// ([`signet_proto::limits::FRAME_BYTES_MAX_CEILING`]), so every record a
/// broker accepts can be delivered. Costs nothing until bytes arrive: the
/// read buffer grows with them.
pub const FRAME_BYTES_MAX: u32 = signet_proto::limits::FRAME_BYTES_MAX_CEILING;

/// Largest payload the client sends, in bytes: 64 MiB, the largest
/// `broker.max_message_bytes` a broker may be configured with
/// ([`signet_proto::limits::PAYLOAD_BYTES_MAX_CEILING`]). A broker
/// configured lower answers `TooLarge` itself.
pub const PAYLOAD_BYTES_MAX: usize = signet_proto::limits::PAYLOAD_BYTES_MAX_CEILING;

/// Most payload bytes gathered into one signed batch: 1 MiB. Keeps a batch
/// (one `Publish` frame) small next to a broker's frame limit; a payload
/// larger than this goes in a batch of its own.
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;

/// Most envelopes in one signed batch: 256 (the protocol's limit, which
/// bounds a Merkle path at 8 hashes).
pub use signet_proto::limits::BATCH_ENVELOPES_MAX;

/// Most publishes queued, in messages, before `publish` and `enqueue` wait:
/// 16 Ki. Bounds what waits for the publishing task.
pub const PUBLISH_QUEUE_MESSAGES_MAX: usize = 16 * 1024;

/// Most verified messages buffered between a subscription's reading task
/// and the application: 256. When full, the task stops reading and QUIC
/// flow control makes the broker wait.
pub const SUBSCRIPTION_BUFFER_MESSAGES_MAX: usize = 256;

/// Most verified batches (root, leaf count, signature) a verifier
/// remembers (all keys) before it clears them: 16 Ki, about 100 bytes each
/// (about 2 MiB).
pub const KNOWN_TREES_MAX: usize = 16 * 1024;

/// Verified batches whose walks a verifier remembers, so that another
/// record of one of them costs its leaf hash and a node or two instead of
/// a walk to the root: the latest 16 (up to ~511 steps of ~120 bytes each,
/// about 1 MiB at most).
pub const KNOWN_WALKS_MAX: usize = 16;

/// Most publisher keys a client file may trust (`[trust]` entries): 4096.
/// Bounds the per-subscription state kept per key (verified batches are
/// capped separately; the seq marks below are not).
pub const TRUST_KEYS_MAX: usize = 4096;

/// Most topic patterns one trust entry may name (`topics = [...]`): 64.
/// Bounds the matching each delivered record costs.
pub const TRUST_TOPICS_PER_KEY_MAX: usize = 64;

/// Most signing keys whose highest seq one subscription remembers, to
/// report a repeated or backwards seq as `Replay`: [`TRUST_KEYS_MAX`]
/// (4096 keys, 24 bytes each plus map overhead: at most about 200 KiB per
/// subscription). Only trusted keys reach it, so a client file never meets
/// the cap; a verifier built by hand with more keys refuses (never
/// forgets) a key beyond it.
pub const SEQ_KEYS_TRACKED_MAX: usize = TRUST_KEYS_MAX;

/// Most batches in flight (sent, not yet acknowledged) the client file may
/// ask for (`max_inflight_batches`): 4096. Bounds the acks waited for.
pub const INFLIGHT_BATCHES_MAX: usize = 4096;

/// Longest linger the client file may ask for (`linger_us`), in µs:
/// 100 000 (100 ms). Bounds the latency batching adds.
pub const LINGER_US_MAX: u64 = 100_000;

/// Most retries of a publish refused with `QuotaExceeded` the client file
/// may ask for (`quota_retries`): 100. Bounds how long a publish can retry.
pub const QUOTA_RETRIES_MAX: u32 = 100;

/// Longest single wait before such a retry the client file may ask for
/// (`quota_retry_max_ms`), in ms: 60 000 (1 minute).
pub const QUOTA_RETRY_WAIT_MS_MAX: u64 = 60_000;

/// Longest a publisher waits for another process publishing with the same
/// signing key to finish, in ms: 60 000 (1 minute). One key's seqs must
/// reach the broker in order, so processes sharing a key take turns.
pub const SEQ_LOCK_WAIT_MS_MAX: u64 = 60_000;

/// Reconnect attempts in a row after a lost connection, by default (with
/// waits doubling from 50 ms to `reconnect_max_ms`, about 12 s in all at
/// the default; a client file may say 0 to turn reconnecting off).
pub const RECONNECT_ATTEMPTS_DEFAULT: u32 = 10;

/// Most reconnect attempts in a row a client file may ask for.
pub const RECONNECT_ATTEMPTS_MAX: u32 = 1000;

/// The first wait before a reconnect attempt, in ms (doubled per attempt).
pub const RECONNECT_WAIT_MS_MIN: u64 = 50;

/// Longest one dial of a reconnect or `NotLeader` redirect may take when
/// the client file lists several brokers (cluster nodes): a node that is
/// down does not answer, and the next one is tried.
pub const NODE_DIAL_MS_MAX: u64 = 2_000;

/// Longest a connection may stay silent before the client counts it lost,
/// in ms, when the client file lists several brokers: 5 000 (5 s), with a
/// keep-alive every [`NODE_KEEP_ALIVE_MS`]. A cluster node killed outright
/// sends no close, so this bounds how long in-flight publishes wait before
/// they move to another node. A single broker keeps QUIC's 30 s.
pub const NODE_IDLE_MS_MAX: u64 = 5_000;

/// Keep-alive interval towards a cluster node, in ms: 1 000.
pub const NODE_KEEP_ALIVE_MS: u64 = 1_000;

/// The longest wait between reconnect attempts, by default, in ms.
pub const RECONNECT_WAIT_MS_DEFAULT: u64 = 2_000;

/// How long the client follows cluster nodes' `NotLeader` answers in a row
/// (an election under way, or a leader changing) before it gives up, by
/// default, in ms: 30 000. Each redirect waits like a reconnect; one that
/// reaches a node that answers spends none of `reconnect_attempts`.
pub const LEADER_WAIT_MS_DEFAULT: u64 = 30_000;

/// The longest `leader_wait_ms` a client file may ask for: 10 minutes.
pub const LEADER_WAIT_MS_MAX: u64 = 600_000;

/// The longest wait between reconnect attempts a client file may ask for,
/// in ms.
pub const RECONNECT_WAIT_MS_MAX: u64 = 60_000;

/// Most topics a pattern subscription tracks resume positions for (the
/// protocol's bound on `SubscribePattern.resume`).
pub const PATTERN_TOPICS_MAX: usize = signet_proto::limits::PATTERN_TOPICS_MAX;

/// Most broker addresses a client file's `brokers` lists (a cluster's
/// nodes).
pub const BROKERS_MAX: usize = 64;
