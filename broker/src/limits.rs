//! Every bound the broker enforces on what peers can make it hold or do,
//! in one table: name, unit, default, allowed range, the policy-file keys
//! that set it, and why it exists. Values are `u64` with the unit last in
//! the name (`_bytes_max`, `_ms_max`), TigerBeetle style; callers convert
//! at the point of use.
//!
//! Fixed protocol bounds (envelopes per batch, headers, topic length, …)
//! live in [`signet_proto::limits`]; they are the same for every broker.
//! Per-principal quotas are policy, not limits: see [`crate::quota`].

use signet_proto::limits::{
    FRAME_BYTES_MAX_CEILING, PATTERN_TOPICS_MAX, PAYLOAD_BYTES_MAX_CEILING,
};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// One row of the limits table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitInfo {
    /// Field name in [`Limits`].
    pub name: &'static str,
    /// Unit of the value.
    pub unit: &'static str,
    /// Value when the policy file does not set it.
    pub default: u64,
    /// Smallest allowed value.
    pub min: u64,
    /// Largest allowed value.
    pub max: u64,
    /// Policy-file keys that set it (`section.key`); the first is
    /// `limits.<name>`, the others keep older files working.
    pub keys: &'static [&'static str],
    /// What it bounds and why.
    pub doc: &'static str,
}

macro_rules! limits {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $unit:literal = $default:expr, $min:expr, $max:expr, keys [$($key:literal),+];
    )*) => {
        /// The broker's limits. Build with [`Limits::default`] and
        /// [`Limits::set`]; every value is within its range.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Limits {
            $($(#[doc = $doc])+ pub $field: u64,)*
        }

        impl Default for Limits {
            fn default() -> Limits {
                Limits { $($field: $default,)* }
            }
        }

        /// Every limit, in the order of [`Limits`]' fields.
        pub const TABLE: &[LimitInfo] = &[$(
            LimitInfo {
                name: stringify!($field),
                unit: $unit,
                default: $default,
                min: $min,
                max: $max,
                keys: &[$($key),+],
                doc: concat!($($doc),+),
            },
        )*];

        impl Limits {
            fn slot(&mut self, name: &str) -> Option<&mut u64> {
                match name {
                    $(stringify!($field) => Some(&mut self.$field),)*
                    _ => None,
                }
            }
        }
    };
}

// Each row: `name: "unit" = default, min, max, keys [policy-file keys];`
limits! {
    /// Largest envelope accepted, counted whole: payload (after any encryption), headers, encryption block and the rest of its canonical bytes.
    message_bytes_max: "bytes" = MIB, 1, PAYLOAD_BYTES_MAX_CEILING as u64,
        keys ["limits.message_bytes_max", "broker.max_message_bytes"];
    /// Largest frame accepted; the length prefix is checked before any allocation.
    frame_bytes_max: "bytes" = 4 * MIB, 4 * KIB + 1, FRAME_BYTES_MAX_CEILING as u64,
        keys ["limits.frame_bytes_max", "broker.max_frame_bytes"];
    /// Largest difference between a publisher's timestamp and the broker clock.
    clock_skew_ms_max: "ms" = 300_000, 0, 7 * 24 * 3_600_000,
        keys ["limits.clock_skew_ms_max", "broker.clock_skew_ms"];
    /// Established connections open at once, all principals together (handshakes in progress are capped apart).
    connections_max: "connections" = 1024, 1, 1_000_000,
        keys ["limits.connections_max", "limits.max_connections"];
    /// Bidirectional streams a peer may have open per connection.
    streams_per_connection_max: "streams" = 64, 1, 10_000,
        keys ["limits.streams_per_connection_max", "limits.max_streams_per_connection"];
    /// Publish batches read but not yet answered, per connection.
    inflight_batches_max: "batches" = 64, 1, 4096,
        keys ["limits.inflight_batches_max", "limits.max_inflight_batches"];
    /// Frame bytes a connection may have read and not yet answered (frames being read, batches being checked or committed); never less than one `frame_bytes_max`. A frame waits for its share before its body is read.
    inflight_bytes_max: "bytes" = 16 * MIB, 64 * KIB, 4096 * MIB,
        keys ["limits.inflight_bytes_max"];
    /// Once a frame's first byte arrived, its length prefix, and then its body, must each arrive within this time (waiting for an in-flight permit or frame bytes is not counted); else the stream is refused with `BadFrame` and stopped.
    frame_read_ms_max: "ms" = 10_000, 100, 600_000,
        keys ["limits.frame_read_ms_max"];
    /// A connection silent this long is closed.
    idle_ms_max: "ms" = 30_000, 100, 3_600_000,
        keys ["limits.idle_ms_max", "limits.idle_timeout_ms"];
    /// A TLS handshake not done in this time is dropped.
    handshake_ms_max: "ms" = 10_000, 100, 600_000,
        keys ["limits.handshake_ms_max", "limits.handshake_timeout_ms"];
    /// TLS handshakes in progress at once, all addresses together (after QUIC address validation); past it new connections are refused before any handshake work.
    handshakes_max: "handshakes" = 256, 1, 100_000,
        keys ["limits.handshakes_max"];
    /// TLS handshakes in progress at once from one source address (an IPv4 address, or an IPv6 /64); past it new connections from it are refused.
    handshakes_per_ip_max: "handshakes" = 16, 1, 100_000,
        keys ["limits.handshakes_per_ip_max"];
    /// QUIC receive window of one stream (bytes a peer may send ahead).
    quic_stream_window_bytes_max: "bytes" = 8 * MIB, 64 * KIB, 256 * MIB,
        keys ["limits.quic_stream_window_bytes_max"];
    /// QUIC receive window of one connection, all streams together.
    quic_connection_window_bytes_max: "bytes" = 32 * MIB, 64 * KIB, 1024 * MIB,
        keys ["limits.quic_connection_window_bytes_max"];
    /// QUIC bytes sent but not yet acknowledged, per connection.
    quic_send_window_bytes_max: "bytes" = 32 * MIB, 64 * KIB, 1024 * MIB,
        keys ["limits.quic_send_window_bytes_max"];
    /// Publish batches queued for the group-commit writer; a full queue makes publish streams wait.
    commit_queue_requests_max: "requests" = 1024, 1, 65_536,
        keys ["limits.commit_queue_requests_max"];
    /// Envelopes written in one synced group commit.
    commit_group_envelopes_max: "envelopes" = 16 * 1024, 1, 1_048_576,
        keys ["limits.commit_group_envelopes_max"];
    /// Record bytes written in one synced group commit.
    commit_group_bytes_max: "bytes" = 32 * MIB, MIB, 1024 * MIB,
        keys ["limits.commit_group_bytes_max"];
    /// Record bytes read into one delivery chunk (one chunk held per subscription).
    deliver_chunk_bytes_max: "bytes" = MIB, 4 * KIB, 256 * MIB,
        keys ["limits.deliver_chunk_bytes_max"];
    /// Time between retention passes (each topic with a `retention` limit is trimmed to it; reads never return what is past a count or age limit, even between passes).
    retention_check_ms_max: "ms" = 250, 10, 3_600_000,
        keys ["limits.retention_check_ms_max"];
    /// Free space the data folder's file system must keep; below it publishes are refused with `StorageFull` (everything else goes on) until space returns.
    storage_free_bytes_min: "bytes" = 256 * MIB, 0, u64::MAX,
        keys ["limits.storage_free_bytes_min", "broker.min_free_bytes"];
    /// Time between free-space checks of the data folder.
    storage_check_ms_max: "ms" = 1000, 10, 60_000,
        keys ["limits.storage_check_ms_max"];
    /// Messages of one consumer group's topic between its acked floor and the next offset never leased; when full the group waits (and `signet group info` says so).
    group_window_max: "messages" = 4096, 16, 1_000_000,
        keys ["limits.group_window_max"];
    /// Deliveries one consumer-group member holds unsettled at once (its `prefetch` is capped at this).
    group_prefetch_max: "deliveries" = 1024, 1, 65_536,
        keys ["limits.group_prefetch_max"];
    /// Topics one pattern subscription (`sub --topic 'orders.>'`) follows at once; one more matching topic ends it with `TooManyTopics`.
    pattern_topics_max: "topics" = 256, 1, PATTERN_TOPICS_MAX as u64,
        keys ["limits.pattern_topics_max"];
    /// Sequence numbers per signing key whose stored offset is remembered (with the replay mark, on disk), so a retried publish of a stored envelope gets its original offset instead of `Replay`. The default covers what a client has in flight by default (64 batches of 256), so every publish it resends after a reconnect or a cluster failover is answered.
    idempotency_window_seqs_max: "seqs" = 16_384, 1, 1_048_576,
        keys ["limits.idempotency_window_seqs_max"];
    /// ACL decisions cached per connection before the cache is cleared.
    acl_cache_entries_max: "entries" = 1024, 16, 1_000_000,
        keys ["limits.acl_cache_entries_max"];
    /// Audit records caused by peers queued for the writer thread before new ones are dropped (and counted in a `gap` record).
    audit_queue_records_max: "records" = 8192, 64, 1_048_576,
        keys ["limits.audit_queue_records_max"];
    /// Further audit queue room only the broker's own records (start, stop, policy reloads) may use, so a flood never drops them.
    audit_reserved_records_max: "records" = 256, 16, 65_536,
        keys ["limits.audit_reserved_records_max"];
    /// Audit records of one kind written per principal and remote address per second; the rest are counted in a `suppressed` summary.
    audit_noisy_per_sec_max: "records/s" = 10, 1, 10_000,
        keys ["limits.audit_noisy_per_sec_max"];
    /// Audit rate-limit windows (kind, principal, remote address) tracked at once; beyond it new ones share one window per kind.
    audit_rate_keys_max: "windows" = 4096, 16, 1_000_000,
        keys ["limits.audit_rate_keys_max"];
    /// Size at which the audit log is rotated (values below 4096 are raised to 4096).
    audit_file_bytes_max: "bytes" = 64 * MIB, 4 * KIB, 1024 * 1024 * MIB,
        keys ["limits.audit_file_bytes_max", "audit.max_bytes"];
    /// Rotated audit files kept; older ones are removed (each file opens with a signed checkpoint, so a verifier knows where the kept log starts).
    audit_files_max: "files" = 16, 1, 100_000,
        keys ["limits.audit_files_max"];
    /// Audit records written before the broker signs a checkpoint of the chain (also the most a verifier allows unsigned after the last one).
    audit_checkpoint_records_max: "records" = 1000, 1, 1_000_000,
        keys ["limits.audit_checkpoint_records_max"];
    /// Longest an audit record waits before a signed checkpoint covers it.
    audit_checkpoint_ms_max: "ms" = 10_000, 100, 3_600_000,
        keys ["limits.audit_checkpoint_ms_max"];
    /// Largest frame on the node transport (`[cluster]`: Raft messages between nodes); the length prefix is checked before any allocation.
    raft_frame_bytes_max: "bytes" = 16 * MIB, 64 * KIB, 1024 * MIB,
        keys ["limits.raft_frame_bytes_max"];
    /// Longest one node-transport request (connect, send, answer) may take before the node counts the peer unreachable for it.
    raft_rpc_ms_max: "ms" = 2_000, 50, 600_000,
        keys ["limits.raft_rpc_ms_max"];
    /// Longest a cluster leader waits for a publish batch to be committed by a majority and applied before it answers `Unavailable` (the batch may still commit; a retry is answered with its offsets).
    raft_commit_ms_max: "ms" = 10_000, 100, 600_000,
        keys ["limits.raft_commit_ms_max"];
    /// Entries a data group's log gains past its last compaction point before the leader proposes the next one; each node then deletes its log up to the least index every member holds on disk (a member that is down holds it back).
    raft_compact_entries: "entries" = 1024, 1, 100_000_000,
        keys ["limits.raft_compact_entries"];
}

/// Why a limit could not be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// No limit has this key.
    #[error("unknown limit {key:?}")]
    Unknown { key: String },
    /// The value is outside the limit's range.
    #[error("{key} must be between {min} and {max}, not {value}")]
    OutOfRange {
        key: String,
        min: u64,
        max: u64,
        value: u64,
    },
    /// Two keys set the same limit.
    #[error("{key} is set twice (also as {other})")]
    Twice { key: String, other: String },
    /// The frame limit leaves no room for a largest message.
    #[error("max_frame_bytes must exceed max_message_bytes by at least 4096")]
    FrameTooSmall,
}

/// The row for a policy-file key (`section.key`).
pub fn info_for_key(key: &str) -> Option<&'static LimitInfo> {
    TABLE.iter().find(|info| info.keys.contains(&key))
}

impl Limits {
    /// Sets the limit named by the file key `key` (e.g.
    /// `"limits.max_connections"`), checking its range.
    pub fn set(&mut self, key: &str, value: u64) -> Result<(), LimitError> {
        let info = info_for_key(key).ok_or_else(|| LimitError::Unknown { key: key.into() })?;
        let value = if info.name == "audit_file_bytes_max" {
            value.max(4 * KIB)
        } else {
            value
        };
        if value < info.min || value > info.max {
            return Err(LimitError::OutOfRange {
                key: key.into(),
                min: info.min,
                max: info.max,
                value,
            });
        }
        let slot = self
            .slot(info.name)
            .ok_or_else(|| LimitError::Unknown { key: key.into() })?;
        *slot = value;
        Ok(())
    }

    /// Sets every `(key, value)` pair, refusing a limit set by two keys,
    /// then checks the limits against each other.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Result<Limits, LimitError> {
        let mut limits = Limits::default();
        let mut seen: Vec<(&'static str, &'a str)> = Vec::new();
        for (key, value) in pairs {
            let info = info_for_key(key).ok_or_else(|| LimitError::Unknown { key: key.into() })?;
            if let Some((_, other)) = seen.iter().find(|(name, _)| *name == info.name) {
                return Err(LimitError::Twice {
                    key: key.into(),
                    other: (*other).into(),
                });
            }
            seen.push((info.name, key));
            limits.set(key, value)?;
        }
        if limits.frame_bytes_max < limits.message_bytes_max + 4 * KIB {
            return Err(LimitError::FrameTooSmall);
        }
        Ok(limits)
    }

    /// Frame bytes in flight per connection: `inflight_bytes_max`, but at
    /// least one largest frame.
    pub fn inflight_bytes(&self) -> usize {
        Limits::usize(self.inflight_bytes_max.max(self.frame_bytes_max))
    }

    /// The frame limit as the codec takes it.
    pub fn frame_bytes_max_u32(&self) -> u32 {
        u32::try_from(self.frame_bytes_max).unwrap_or(u32::MAX)
    }

    /// A limit as `usize` (every range fits on the 64-bit targets we build).
    pub fn usize(value: u64) -> usize {
        usize::try_from(value).unwrap_or(usize::MAX)
    }

    /// The table as Markdown, as the README shows it.
    pub fn markdown_table() -> String {
        let mut out = String::from(
            "| limit | unit | default | range | policy-file keys | what it bounds |\n|---|---|---|---|---|---|\n",
        );
        for info in TABLE {
            let keys: Vec<String> = info.keys.iter().map(|k| format!("`{k}`")).collect();
            out.push_str(&format!(
                "| `{}` | {} | {} | {}–{} | {} | {} |\n",
                info.name,
                info.unit,
                info.default,
                info.min,
                info.max,
                keys.join(", "),
                info.doc.trim()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_within_their_ranges_and_keys_are_unique() {
        let mut keys = std::collections::HashSet::new();
        for info in TABLE {
            assert!(
                info.min <= info.default && info.default <= info.max,
                "{}",
                info.name
            );
            for key in info.keys {
                assert!(keys.insert(*key), "{key} names two limits");
            }
        }
        assert!(Limits::from_pairs([]).is_ok());
    }

    #[test]
    fn old_and_new_keys_set_the_same_limit() {
        let old = Limits::from_pairs([("limits.max_connections", 7)]).unwrap();
        let new = Limits::from_pairs([("limits.connections_max", 7)]).unwrap();
        assert_eq!(old, new);
        assert_eq!(old.connections_max, 7);
        assert!(matches!(
            Limits::from_pairs([("limits.max_connections", 7), ("limits.connections_max", 8)]),
            Err(LimitError::Twice { .. })
        ));
    }

    #[test]
    fn out_of_range_and_unknown_keys_are_refused() {
        assert!(matches!(
            Limits::from_pairs([("limits.max_connections", 0)]),
            Err(LimitError::OutOfRange { .. })
        ));
        assert!(matches!(
            Limits::from_pairs([("limits.max_conections", 1)]),
            Err(LimitError::Unknown { .. })
        ));
        assert_eq!(
            Limits::from_pairs([("broker.max_message_bytes", 4 * MIB)]),
            Err(LimitError::FrameTooSmall)
        );
    }

    #[test]
    fn small_audit_rotation_sizes_are_raised_not_refused() {
        let limits = Limits::from_pairs([("audit.max_bytes", 100)]).unwrap();
        assert_eq!(limits.audit_file_bytes_max, 4096);
    }

    /// The README shows the table this code enforces, row for row.
    /// `SIGNET_WRITE_README=1` rewrites the README's table from the code.
    #[test]
    fn readme_table_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let begin = "<!-- limits:begin -->\n";
        let start = readme.find(begin).expect("README has a limits table") + begin.len();
        let end = readme[start..]
            .find("<!-- limits:end -->")
            .expect("README limits table ends")
            + start;
        let table = Limits::markdown_table();
        if std::env::var_os("SIGNET_WRITE_README").is_some() {
            let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
            std::fs::write(path, updated).unwrap();
            return;
        }
        assert_eq!(
            &readme[start..end],
            table,
            "the README's limits table differs from the code: run this test with SIGNET_WRITE_README=1"
        );
    }
}
