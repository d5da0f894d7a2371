//! Metrics, exported for Prometheus when `broker.metrics` names an address.
//! Names and labels are fixed here; values never carry payloads or keys.

use signet_proto::ErrorCode;
use std::net::SocketAddr;
use std::time::Duration;

/// Envelopes accepted (stored and acked).
pub const PUBLISH_ACCEPTED: &str = "signet_publish_accepted_total";
/// Envelopes or streams rejected, by `code`.
pub const PUBLISH_REJECTED: &str = "signet_rejected_total";
/// Record bytes committed.
pub const COMMIT_BYTES: &str = "signet_commit_bytes_total";
/// Envelopes per group commit.
pub const COMMIT_BATCH: &str = "signet_commit_batch_envelopes";
/// Seconds per synced group commit.
pub const COMMIT_SECONDS: &str = "signet_commit_seconds";
/// Failed group commits.
pub const COMMIT_FAILED: &str = "signet_commit_failed_total";
/// Live subscriptions.
pub const SUBSCRIPTIONS_LIVE: &str = "signet_subscriptions_live";
/// Open connections.
pub const CONNECTIONS_LIVE: &str = "signet_connections_live";
/// Connections refused, by `reason`.
pub const CONNECTIONS_REFUSED: &str = "signet_connections_refused_total";
/// Messages delivered to subscribers.
pub const DELIVERED: &str = "signet_delivered_total";

/// Counts a rejection by its code.
pub fn rejected(code: ErrorCode) {
    metrics::counter!(PUBLISH_REJECTED, "code" => code.to_string()).increment(1);
}

/// Records one group commit.
pub fn commit(envelopes: usize, bytes: usize, elapsed: Duration, ok: bool) {
    if ok {
        metrics::counter!(PUBLISH_ACCEPTED).increment(envelopes as u64);
        metrics::counter!(COMMIT_BYTES).increment(bytes as u64);
        metrics::histogram!(COMMIT_BATCH).record(envelopes as f64);
        metrics::histogram!(COMMIT_SECONDS).record(elapsed.as_secs_f64());
    } else {
        metrics::counter!(COMMIT_FAILED).increment(1);
    }
}

/// Counts a refused connection.
pub fn connection_refused(reason: &'static str) {
    metrics::counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

/// Moves a gauge up or down by one.
pub fn gauge_add(name: &'static str, delta: f64) {
    metrics::gauge!(name).increment(delta);
}

/// Publish retries answered with the original offset (idempotent publish).
pub const PUBLISH_RETRIED: &str = "signet_publish_retried_total";

/// Counts a retried envelope answered with its original offset.
pub fn retried() {
    metrics::counter!(PUBLISH_RETRIED).increment(1);
}

/// Counts delivered messages.
pub fn delivered(n: usize) {
    metrics::counter!(DELIVERED).increment(n as u64);
}

/// Serves Prometheus metrics on `addr`. Must run inside a tokio runtime.
/// Only one recorder can exist per process; a second broker in the same
/// process (tests) keeps the first one's.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| e.to_string())
}

/// Policy reloads, by outcome.
pub const POLICY_RELOADS: &str = "signet_policy_reloads_total";
/// 1 when the last reload attempt succeeded, 0 when it failed.
pub const POLICY_RELOAD_OK: &str = "signet_policy_reload_ok";
/// Publish batches refused by quota.
pub const QUOTA_HITS: &str = "signet_quota_hits_total";

/// Records a reload attempt.
pub fn reload(ok: bool) {
    metrics::counter!(POLICY_RELOADS, "outcome" => if ok { "applied" } else { "failed" })
        .increment(1);
    metrics::gauge!(POLICY_RELOAD_OK).set(if ok { 1.0 } else { 0.0 });
}

/// Counts a quota refusal.
pub fn quota_hit(kind: &'static str) {
    metrics::counter!(QUOTA_HITS, "kind" => kind).increment(1);
}

/// Messages retention removed.
pub const RETENTION_TRIMMED: &str = "signet_retention_trimmed_messages_total";
/// Record bytes retention removed.
pub const RETENTION_FREED_BYTES: &str = "signet_retention_freed_bytes_total";
/// Record bytes stored, all topics together.
pub const STORED_BYTES: &str = "signet_stored_bytes";
/// A topic's first (oldest kept) offset, by `topic`.
pub const TOPIC_FIRST_OFFSET: &str = "signet_topic_first_offset";
/// A topic's next offset, by `topic`.
pub const TOPIC_NEXT_OFFSET: &str = "signet_topic_next_offset";
/// 1 while publishes are refused with `StorageFull`.
pub const STORAGE_FULL: &str = "signet_storage_full";

/// Counts a retention trim.
pub fn trimmed(messages: u64, bytes: u64) {
    metrics::counter!(RETENTION_TRIMMED).increment(messages);
    metrics::counter!(RETENTION_FREED_BYTES).increment(bytes);
}

/// Exports where each topic stands and the bytes stored in all.
pub fn topics<'a>(topics: impl IntoIterator<Item = (&'a str, u64, u64, u64)>) {
    let mut stored = 0u64;
    for (topic, first, next, bytes) in topics {
        stored = stored.saturating_add(bytes);
        metrics::gauge!(TOPIC_FIRST_OFFSET, "topic" => topic.to_owned()).set(first as f64);
        metrics::gauge!(TOPIC_NEXT_OFFSET, "topic" => topic.to_owned()).set(next as f64);
    }
    metrics::gauge!(STORED_BYTES).set(stored as f64);
}

/// Sets whether publishes are refused for lack of disk space.
pub fn storage_full(full: bool) {
    metrics::gauge!(STORAGE_FULL).set(if full { 1.0 } else { 0.0 });
}
