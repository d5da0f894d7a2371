//! A publish stream: pipelined `Publish` frames in, one `Results` frame out
//! per batch, in order. For each batch: take an in-flight permit, run the
//! [`crate::ingest`] checks, record refusals (metrics, audit), hand what
//! passed to the group commit ([`crate::commit`]), and answer once the
//! commit says the envelopes are on disk.
//!
//! Reading and checking run ahead of the answers by at most
//! `limits.inflight_batches_max` batches per connection (all its publish
//! streams together), and `limits.inflight_bytes_max` frame bytes: once a
//! frame starts, the stream waits for a permit before reading it, and the
//! frame waits for its bytes in the connection's frame budget before its
//! body is read ([`crate::frames`]); past that the stream stops being
//! read, and QUIC flow control pushes back on the publisher. A frame that
//! started must arrive within `limits.frame_read_ms_max`.
//!
//! Quota keeps a stream in order: the quota admits a prefix of a batch,
//! and once an envelope of the stream was refused for quota every later
//! envelope on it is refused too (`QuotaExceeded`, with the first
//! refusal's hint), without any other check. A publisher resends the
//! refused envelopes, in order, on a new stream; nothing it sent after a
//! refusal can be stored ahead of what was refused.

use crate::answer;
use crate::audit::Event;
use crate::clock::now_ms;
use crate::cluster::{ClusterNode, PublishError, not_leader};
use crate::commit::{CommitReply, CommitRequest, Entry};
use crate::frames::{self, Budgeted, FrameError};
use crate::ingest::{self, Accepted, Checked, IngestContext, Verdict};
use crate::limits::Limits;
use crate::metrics;
use crate::quota::Reservation;
use crate::state::ConnectionState;
use serde_json::json;
use signet_proto::frame::{ClientFrame, Outcome, Publish, Rejection, Results, ServerFrame};
use signet_proto::stream::write_frame;
use signet_proto::{ErrorCode, StoredRecord, codec};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

/// What the reader hands the writer, in stream order.
enum Pending {
    Batch(PendingBatch),
    /// The stream ends with this error after the batches before it.
    Fail(Rejection),
}

/// What a batch holds until its results are written: its place among the
/// connection's in-flight batches and its frame's bytes in the frame
/// budget.
struct Held {
    _permit: OwnedSemaphorePermit,
    _budget: OwnedSemaphorePermit,
}

/// Serves one publish stream, starting with its first batch (read with
/// `budget` from the connection's frame budget).
pub async fn run(
    conn: Arc<ConnectionState>,
    first: Publish,
    budget: OwnedSemaphorePermit,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let depth = Limits::usize(conn.broker.limits().inflight_batches_max);
    let (queue, pending) = mpsc::channel::<Pending>(depth);
    let reader = read_batches(conn.clone(), (first, budget), &mut recv, queue);
    let writer = write_results(send, pending);
    let (read_error, mut send) = tokio::join!(reader, writer);
    match read_error {
        Some(e) => answer::frame_failure(&conn, &mut send, &mut recv, e).await,
        None => {
            let _ = send.finish();
        }
    }
}

/// The next batch of the stream and what it holds: the in-flight permit is
/// taken once the frame starts and before it is read, so a connection
/// reads no more frames than it may have in flight. `None` at the end of
/// the stream; `Some(Err(rejection))` for a frame that is not a batch.
async fn next_batch(
    conn: &ConnectionState,
    recv: &mut quinn::RecvStream,
) -> Result<Option<Result<(Publish, Held), Rejection>>, FrameError> {
    let Some(first) = frames::wait_start(recv).await? else {
        return Ok(None);
    };
    let Ok(permit) = conn.inflight.clone().acquire_owned().await else {
        return Ok(None);
    };
    let Budgeted { frame, budget } = frames::read_started(conn, recv, first).await?;
    match frame {
        ClientFrame::Publish(p) => Ok(Some(Ok((
            p,
            Held {
                _permit: permit,
                _budget: budget,
            },
        )))),
        ClientFrame::Subscribe(_) => Ok(Some(Err(Rejection::new(
            ErrorCode::BadFrame,
            "subscribe on a publish stream",
        )))),
        _ => Ok(Some(Err(Rejection::new(
            ErrorCode::BadFrame,
            "not a publish frame on a publish stream",
        )))),
    }
}

/// Reads batches, checks them and queues them for the writer; returns the
/// read error that ended the stream, if any.
async fn read_batches(
    conn: Arc<ConnectionState>,
    first: (Publish, OwnedSemaphorePermit),
    recv: &mut quinn::RecvStream,
    queue: mpsc::Sender<Pending>,
) -> Option<FrameError> {
    let mut next = Some(first);
    // The stream's first quota refusal; every later envelope gets it too.
    let mut quota_stop: Option<Rejection> = None;
    loop {
        let (publish, held) = match next.take() {
            // The first frame was read by the dispatcher (which had to see
            // its kind) within the frame budget; its permit is taken now.
            Some((p, budget)) => {
                let Ok(permit) = conn.inflight.clone().acquire_owned().await else {
                    return None;
                };
                (
                    p,
                    Held {
                        _permit: permit,
                        _budget: budget,
                    },
                )
            }
            None => match next_batch(&conn, recv).await {
                Ok(Some(Ok(batch))) => batch,
                Ok(Some(Err(rejection))) => {
                    let _ = queue.send(Pending::Fail(rejection)).await;
                    return None;
                }
                Ok(None) => return None,
                Err(e) => return Some(e),
            },
        };
        let item = match &quota_stop {
            Some(stop) => match ingest::check_batch_size(&publish) {
                Ok(()) => Pending::Batch(refuse_all(publish, &after_quota(stop), held)),
                Err(rejection) => Pending::Fail(rejection),
            },
            None => match ingest_batch(&conn, publish, held).await {
                Ok(batch) => {
                    quota_stop = batch.quota_stop();
                    Pending::Batch(batch)
                }
                Err(rejection) => Pending::Fail(rejection),
            },
        };
        let fail = matches!(item, Pending::Fail(_));
        if queue.send(item).await.is_err() || fail {
            return None;
        }
    }
}

/// Writes one `Results` per batch, in order, once its commit answered.
async fn write_results(
    mut send: quinn::SendStream,
    mut pending: mpsc::Receiver<Pending>,
) -> quinn::SendStream {
    while let Some(item) = pending.recv().await {
        match item {
            Pending::Batch(batch) => {
                let (results, held) = batch.resolve().await;
                let written = write_frame(&mut send, &ServerFrame::Results(results)).await;
                drop(held);
                if written.is_err() {
                    break;
                }
            }
            Pending::Fail(rejection) => {
                metrics::rejected(rejection.code);
                let _ = write_frame(&mut send, &ServerFrame::Error(rejection)).await;
                break;
            }
        }
    }
    send
}

/// Runs the ingest checks on a batch and hands what passed to the group
/// commit. `Err` ends the stream (an unusable frame, or storage down).
async fn ingest_batch(
    conn: &ConnectionState,
    publish: Publish,
    held: Held,
) -> Result<PendingBatch, Rejection> {
    if conn.broker.disk.is_full() {
        let full = Rejection::new(
            ErrorCode::StorageFull,
            "the broker's disk is below its free-space floor; try again later",
        );
        return Ok(refuse_all(publish, &full, held));
    }
    if let Some(cluster) = &conn.broker.cluster {
        // A batch is taken only by the leader of every data group it
        // writes to; any other node stores nothing of it and names the
        // leader the client should go to (nothing is checked or charged).
        let mut groups: Vec<u64> = Vec::new();
        for group in groups_of(cluster, publish.envelopes.iter().map(|e| e.topic.as_str())) {
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        if let Some(group) = groups.iter().find(|g| !cluster.leads_data(**g)) {
            let rejection = not_leader(cluster.data_leader_client(*group));
            return Ok(refuse_all(publish, &rejection, held));
        }
        for group in groups {
            conn.broker
                .replay
                .sync_term(group, cluster.data_term(group));
        }
    }
    let request_id = publish.request_id;
    let now_ms = now_ms();
    let Checked { verdicts, reserved } = check(conn, publish, now_ms)?;
    let mut outcomes = Vec::with_capacity(verdicts.len());
    let mut entries = Vec::new();
    let mut accepted = Vec::new();
    let mut quota_breach = false;
    for (i, verdict) in verdicts.into_iter().enumerate() {
        match verdict {
            Verdict::Rejected { rejection, topic } => {
                quota_breach |= rejection.code == ErrorCode::QuotaExceeded;
                record_refusal(conn, &rejection, &topic);
                outcomes.push(Some(Outcome::Nack(rejection)));
            }
            Verdict::Accepted(accepted_envelope) => {
                entries.push(entry(conn, *accepted_envelope, now_ms)?);
                accepted.push(i);
                outcomes.push(None);
            }
            // A retry of an envelope on disk: its original offset.
            Verdict::Stored { offset } => {
                metrics::retried();
                outcomes.push(Some(Outcome::Ack(offset)));
            }
        }
    }
    if quota_breach {
        record_quota_breach(conn);
    }
    let commit = send_to_commit(conn, entries, reserved).await;
    if commit.is_none() {
        for i in &accepted {
            outcomes[*i] = Some(Outcome::Nack(Rejection::new(
                ErrorCode::Unavailable,
                "broker shutting down",
            )));
        }
    }
    Ok(PendingBatch {
        request_id,
        outcomes,
        accepted,
        commit,
        held,
    })
}

/// The refusal of every envelope read after the stream's first quota
/// refusal, with that refusal's hint.
fn after_quota(first: &Rejection) -> Rejection {
    Rejection {
        retry_after_ms: first.retry_after_ms,
        ..Rejection::new(
            ErrorCode::QuotaExceeded,
            "an earlier envelope on this stream was over quota; send again on a new stream",
        )
    }
}

/// Refuses every envelope of a batch with `rejection`; nothing is checked,
/// charged or written.
fn refuse_all(publish: Publish, rejection: &Rejection, held: Held) -> PendingBatch {
    let outcomes = publish
        .envelopes
        .iter()
        .map(|_| {
            metrics::rejected(rejection.code);
            Some(Outcome::Nack(rejection.clone()))
        })
        .collect();
    PendingBatch {
        request_id: publish.request_id,
        outcomes,
        accepted: Vec::new(),
        commit: None,
        held,
    }
}

/// The ingest checks with this connection's policy, quota, ACL cache and
/// the broker's replay marks; a topic exists once it has stored messages.
fn check(conn: &ConnectionState, publish: Publish, now_ms: u64) -> Result<Checked, Rejection> {
    let broker = &conn.broker;
    let policy = broker.policy();
    let quota = broker.quota(&policy, &conn.principal).map_err(|e| {
        tracing::error!(error = %e, "usage unreadable");
        Rejection::new(ErrorCode::Unavailable, "storage unavailable")
    })?;
    let limits = broker.limits();
    let mut decisions = conn.decisions();
    let mut ctx = IngestContext {
        policy: &policy,
        principal: &conn.principal,
        decisions: &mut decisions,
        quota: &quota,
        message_bytes_max: Limits::usize(limits.message_bytes_max),
        clock_skew_ms_max: limits.clock_skew_ms_max,
        now_ms,
        topic_exists: &|topic| broker.registry.has_messages(topic),
    };
    ingest::check_publish(&mut ctx, publish, &mut broker.replay.lock())
}

/// Counts and audits one refused envelope (quota breaches are audited once
/// per batch by [`record_quota_breach`]).
fn record_refusal(conn: &ConnectionState, rejection: &Rejection, topic: &str) {
    metrics::rejected(rejection.code);
    tracing::debug!(principal = %conn.principal, code = %rejection.code, "envelope rejected");
    if rejection.code != ErrorCode::QuotaExceeded {
        conn.broker.audit.record(Event::new(
            "publish_denied",
            json!({ "principal": &*conn.principal, "remote": conn.conn.remote_address().to_string(), "topic": topic, "code": rejection.code.to_string() }),
        ));
    }
}

fn record_quota_breach(conn: &ConnectionState) {
    metrics::quota_hit("publish");
    conn.broker.audit.record(Event::new(
        "quota_breach",
        json!({ "principal": &*conn.principal, "remote": conn.conn.remote_address().to_string(), "kind": "publish" }),
    ));
}

/// MessagePack framing of a stored record beyond its fields' bytes (array
/// and length markers, the receive time, the proof's indexes), rounded up.
const RECORD_FRAMING_BYTES: usize = 96;

/// An accepted envelope as the commit stores it.
fn entry(
    conn: &ConnectionState,
    Accepted {
        envelope,
        proof,
        leaf,
        replay,
    }: Accepted,
    received_ms: u64,
) -> Result<Entry, Rejection> {
    let (topic, key_id, seq) = (envelope.topic.clone(), envelope.key_id, envelope.seq);
    // The encoded record is about the envelope's canonical size plus the
    // proof (signature and path) and a little framing.
    let capacity = envelope.canonical_len()
        + proof.signature.len()
        + proof.path.len() * std::mem::size_of::<signet_proto::merkle::Hash>()
        + RECORD_FRAMING_BYTES;
    let record = StoredRecord {
        received_ms,
        envelope,
        proof,
    };
    let record = codec::encode_body_sized(&record, capacity)
        .map_err(|_| Rejection::new(ErrorCode::Internal, "internal error"))?;
    Ok(Entry {
        replay,
        topic,
        record: record.into(),
        key_id,
        seq,
        leaf,
        principal: conn.principal.clone(),
    })
}

/// Where a batch's offsets come from.
enum Commit {
    /// This broker's group commit.
    Local(oneshot::Receiver<CommitReply>),
    /// A cluster's data groups (committed by a majority, applied here):
    /// per accepted envelope, its offset or why it was not stored.
    Cluster(tokio::task::JoinHandle<Vec<Result<u64, Rejection>>>),
}

/// Queues accepted entries for the group commit (a cluster node: proposes
/// them to the data group), with the stored bytes reserved for them;
/// `None` when there is nothing to commit or the writer has stopped
/// (shutdown). The reservation ends with the request.
async fn send_to_commit(
    conn: &ConnectionState,
    entries: Vec<Entry>,
    reserved: Reservation,
) -> Option<Commit> {
    if entries.is_empty() {
        return None;
    }
    if let Some(cluster) = conn.broker.cluster.clone() {
        let broker = conn.broker.clone();
        let count = entries.len();
        // Handed over here, in stream order, one proposal per data group,
        // so each group logs the batches (and stores their seqs) in the
        // order they were checked.
        let mut submitted = Vec::new();
        for (group, positions, entries) in by_group(&cluster, entries) {
            let marks = highest_seqs(&entries);
            let pending = cluster.submit(group, entries).await;
            submitted.push((positions, marks, pending));
        }
        return Some(Commit::Cluster(tokio::spawn(async move {
            let mut answers = vec![Err(not_stored(ErrorCode::Unavailable)); count];
            for (positions, marks, pending) in submitted {
                let result = match pending {
                    Ok(pending) => pending.await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(offsets) => {
                        // Applied: the seqs are on disk here; ingest
                        // refuses them from now on (before, only applying
                        // did).
                        for (key, seq) in &marks {
                            broker.replay.applied(key, *seq);
                        }
                        for (position, offset) in positions.into_iter().zip(offsets) {
                            answers[position] = Ok(offset);
                        }
                    }
                    Err(e) => {
                        let rejection = cluster_rejection(e);
                        for position in positions {
                            answers[position] = Err(rejection.clone());
                        }
                    }
                }
            }
            drop(reserved);
            answers
        })));
    }
    let (reply, receiver) = oneshot::channel();
    let request = CommitRequest {
        entries,
        reply,
        reserved,
        group: None,
    };
    conn.broker.commits.send(request.into()).await.ok()?;
    Some(Commit::Local(receiver))
}

/// The entries of each data group, in batch order, with their positions
/// among `entries`.
fn by_group(cluster: &ClusterNode, entries: Vec<Entry>) -> Vec<(u64, Vec<usize>, Vec<Entry>)> {
    let mut parts: Vec<(u64, Vec<usize>, Vec<Entry>)> = Vec::new();
    let groups = groups_of(cluster, entries.iter().map(|e| e.topic.as_str()));
    for ((position, entry), group) in entries.into_iter().enumerate().zip(groups) {
        match parts.iter_mut().find(|(g, _, _)| *g == group) {
            Some((_, positions, entries)) => {
                positions.push(position);
                entries.push(entry);
            }
            None => parts.push((group, vec![position], vec![entry])),
        }
    }
    parts
}

/// The data group of each topic, in order; hashed once per run of one
/// topic (a batch most often writes one).
fn groups_of<'a>(cluster: &ClusterNode, topics: impl Iterator<Item = &'a str>) -> Vec<u64> {
    let mut last: Option<(&str, u64)> = None;
    topics
        .map(|topic| match last {
            Some((same, group)) if same == topic => group,
            _ => {
                let group = cluster.group_of(topic);
                last = Some((topic, group));
                group
            }
        })
        .collect()
}

/// What a client is told when the cluster did not store its envelopes.
fn cluster_rejection(error: PublishError) -> Rejection {
    match error {
        PublishError::NotLeader { client } => not_leader(client),
        PublishError::Refused(code) => not_stored(code),
        PublishError::Unavailable(why) => {
            tracing::warn!(error = %why, "publish not committed by the cluster");
            Rejection::new(ErrorCode::Unavailable, "not committed in time; retry")
        }
    }
}

fn not_stored(code: ErrorCode) -> Rejection {
    Rejection::new(code, "message not stored")
}

/// Each replay key's highest seq among `entries`.
fn highest_seqs(entries: &[Entry]) -> Vec<(signet_proto::KeyId, u64)> {
    let mut marks: Vec<(signet_proto::KeyId, u64)> = Vec::new();
    for entry in entries {
        match marks.iter_mut().find(|(key, _)| *key == entry.replay) {
            Some((_, seq)) => *seq = (*seq).max(entry.seq),
            None => marks.push((entry.replay, entry.seq)),
        }
    }
    marks
}

/// A batch whose refusals are known and whose accepted envelopes wait for
/// their group commit.
struct PendingBatch {
    request_id: u64,
    /// One per envelope; `None` where the commit decides.
    outcomes: Vec<Option<Outcome>>,
    /// Indexes of the envelopes sent to the commit, in order.
    accepted: Vec<usize>,
    /// The commit's answer, if anything was sent to it.
    commit: Option<Commit>,
    /// Its in-flight permit and frame budget, held until its results are
    /// written.
    held: Held,
}

impl PendingBatch {
    /// The batch's first refusal for quota, if any: it stops the stream.
    fn quota_stop(&self) -> Option<Rejection> {
        self.outcomes.iter().find_map(|o| match o {
            Some(Outcome::Nack(r)) if r.code == ErrorCode::QuotaExceeded => Some(r.clone()),
            _ => None,
        })
    }

    /// Waits for the commit and returns one outcome per envelope.
    async fn resolve(self) -> (Results, Held) {
        let mut outcomes = self.outcomes;
        if let Some(commit) = self.commit {
            let unanswered = || vec![Err(not_stored(ErrorCode::Unavailable)); self.accepted.len()];
            let answers = match commit {
                Commit::Local(receiver) => {
                    match receiver.await.unwrap_or(Err(ErrorCode::Unavailable)) {
                        Ok(offsets) => offsets.into_iter().map(Ok).collect(),
                        Err(code) => vec![Err(not_stored(code)); self.accepted.len()],
                    }
                }
                Commit::Cluster(task) => task.await.unwrap_or_else(|_| unanswered()),
            };
            for (i, answer) in self.accepted.iter().zip(answers) {
                outcomes[*i] = Some(match answer {
                    Ok(offset) => Outcome::Ack(offset),
                    Err(rejection) => {
                        metrics::rejected(rejection.code);
                        Outcome::Nack(rejection)
                    }
                });
            }
        }
        let outcomes = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Outcome::Nack(Rejection::new(ErrorCode::Internal, "internal error"))
                })
            })
            .collect();
        let results = Results {
            request_id: self.request_id,
            outcomes,
        };
        (results, self.held)
    }
}
