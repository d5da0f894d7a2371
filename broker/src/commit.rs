//! Group commit: one writer thread takes accepted envelopes from every
//! connection, writes as many as are waiting (bounded) in one RocksDB
//! `WriteBatch` with `sync = true`, assigns offsets (per topic, dense, from
//! 0), and only then answers each request. An ack therefore always means
//! "on disk". Replay marks, where each envelope was stored (for idempotent
//! publish: key id and seq → offset and leaf hash, the last
//! `limits.idempotency_window_seqs_max` seqs per key) and stored-bytes
//! usage (each record's exact size) go into the same write. Queue and group sizes are
//! `limits.commit_*`.
//!
//! Retention goes through the same writer. A group that takes a topic past
//! its count or byte limit (under the policy in force when the group is
//! written) also deletes the topic's oldest committed records down to the
//! limit, moves its first offset and gives the freed bytes back to the
//! principals that stored them, in the same synced write. A [`Trim`]
//! (computed by [`crate::retention`]'s passes for the age limit and for
//! limits a reload lowered) does the same on its own. A trim carries what
//! it changes, so applying it reads no clock. On a work-queue topic the
//! messages its group acked or dead-lettered, and every record below the
//! group's acked floor, are deleted in the same write as the settlements
//! (`stage_work_done`).

use crate::error::StoreError;
use crate::fanout::{Head, Registry};
use crate::group_writer::{Append, GroupWork, Groups, Host, WorkDone};
use crate::ledger::{Ledger, Run};
use crate::limits::Limits;
use crate::metrics;
use crate::policy::Policy;
use crate::quota::{Quotas, Reservation};
use crate::store::{Store, StoredTopic};
use crate::trim;
use bytes::Bytes;
use rocksdb::WriteBatch;
use signet_proto::merkle::Hash;
use signet_proto::{ErrorCode, KeyId, SigningKey};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

/// One accepted envelope, encoded as it will be stored.
#[derive(Debug)]
pub struct Entry {
    /// Its topic.
    pub topic: String,
    /// The stored record (MessagePack of a `StoredRecord`); shared, so a
    /// cluster node applies a log entry's record without copying it.
    pub record: Bytes,
    /// Its signing key, for the replay mark.
    pub key_id: KeyId,
    /// Its sequence number, for the replay mark.
    pub seq: u64,
    /// The key its seq is tracked under (replay mark and index): `key_id`
    /// on a single broker, scoped to its data group in a cluster
    /// ([`crate::replay::replay_key`]).
    pub replay: KeyId,
    /// Its leaf hash (of its signed bytes), remembered with its offset so
    /// a retry is answered with that offset.
    pub leaf: Hash,
    /// The publishing principal; the record's bytes count against its
    /// stored-bytes quota.
    pub principal: Arc<str>,
}

/// Batch bytes per stored message besides its record: the message key
/// and the idempotency entry (key, offset and leaf hash), with RocksDB's
/// per-entry framing.
const ENTRY_INDEX_BYTES: usize = 96;
/// Batch bytes for the rest of a write: replay marks, usage, topic heads.
const BATCH_EXTRA_BYTES: usize = 4096;

/// The name the broker's own messages are accounted under. It holds a
/// space, which no principal URI can, so it never meets a principal.
pub const BROKER_PRINCIPAL: &str = "signet broker";

/// Offsets in request order, or why nothing was stored.
pub type CommitReply = Result<Vec<u64>, ErrorCode>;

/// Envelopes of one publish batch that passed every check.
#[derive(Debug)]
pub struct CommitRequest {
    /// The envelopes, in batch order.
    pub entries: Vec<Entry>,
    /// Where the offsets (or the failure) go once the write returned.
    pub reply: oneshot::Sender<CommitReply>,
    /// The stored bytes the quota reserved for the batch; dropped with the
    /// request, after the stored bytes were added (or the write failed).
    pub reserved: Reservation,
    /// Consumer-group commands applied in the same write, after the
    /// entries (see [`crate::group_writer`]).
    pub group: Option<GroupWork>,
}

impl CommitRequest {
    /// A request carrying only consumer-group commands.
    pub fn group(work: GroupWork) -> CommitRequest {
        CommitRequest {
            entries: Vec::new(),
            reply: oneshot::channel().0,
            reserved: Reservation::default(),
            group: Some(work),
        }
    }
}

/// Deletes the messages `from..to` of `topic` (its oldest: `from` must be
/// its first offset) and gives `freed` record bytes back to each principal.
#[derive(Debug)]
pub struct Trim {
    /// The topic.
    pub topic: String,
    /// Its first offset when the trim was computed; a trim that no longer
    /// starts there is stale and changes nothing.
    pub from: u64,
    /// The new first offset (not above the topic's next offset).
    pub to: u64,
    /// Record bytes in the range.
    pub bytes: u64,
    /// Record bytes removed, per principal that stored them.
    pub freed: Vec<(Arc<str>, u64)>,
    /// Whether it was applied (false: stale), once written.
    pub reply: oneshot::Sender<Result<bool, StoreError>>,
    /// A cluster's trim is a data-group entry: the group and its applied
    /// state after the entry, written in the same batch (also when the
    /// trim is stale).
    pub raft: Option<(u64, Vec<u8>)>,
}

/// What the writer applies, in the order received.
#[derive(Debug)]
pub enum Command {
    /// Accepted envelopes to store.
    Publish(CommitRequest),
    /// A retention trim.
    Trim(Trim),
    /// Publish batches a cluster data group committed, applied in log
    /// order in one write with the group's applied state (not synced:
    /// the Raft log holds them on disk; synced when it trims).
    Replicated(Replicated),
}

/// Committed entries of a data group (see [`crate::cluster`]): each
/// request is answered with its offsets, or `Replay` when its key and seq
/// hold another envelope already; a request whose every envelope is
/// already stored (same key, seq and leaf) is answered with the original
/// offsets and stores nothing.
#[derive(Debug)]
pub struct Replicated {
    /// The data group.
    pub group: u64,
    /// The batches, in log order.
    pub requests: Vec<CommitRequest>,
    /// The group's applied state after them, written in the same batch.
    pub applied: Vec<u8>,
    /// Whether the write succeeded (false: nothing written).
    pub done: oneshot::Sender<bool>,
}

impl From<CommitRequest> for Command {
    fn from(request: CommitRequest) -> Command {
        Command::Publish(request)
    }
}

/// A topic as the writer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TopicState {
    id: u32,
    first: u64,
    next: u64,
    bytes: u64,
}

/// The sending side handed to sessions, and the writer thread.
pub struct Committer {
    /// Where sessions send accepted envelopes (and retention its trims).
    pub sender: mpsc::Sender<Command>,
    /// The writer thread; it ends when every sender is dropped.
    pub thread: std::thread::JoinHandle<()>,
}

struct Writer {
    store: Arc<Store>,
    /// Most envelopes in one group commit.
    group_envelopes_max: usize,
    /// Most record bytes in one group commit.
    group_bytes_max: usize,
    registry: Arc<Registry>,
    /// Topic name → where it stands, as committed.
    topics: HashMap<String, TopicState>,
    next_topic_id: u32,
    /// Replay marks as persisted, so a late batch never lowers one.
    marks: HashMap<KeyId, u64>,
    /// Seqs per key whose offsets are kept.
    window: u64,
    /// Stored record bytes per principal, as persisted.
    usage: HashMap<Arc<str>, u64>,
    /// Signing key → the principal whose bytes its records are, as
    /// persisted (retention gives freed bytes back to that principal).
    owners: HashMap<KeyId, Arc<str>>,
    quotas: Arc<Quotas>,
    /// The policy in force (retention limits).
    policy: watch::Receiver<Arc<Policy>>,
    /// Consumer-group state (taken out while a command runs against the
    /// writer as its [`Host`]).
    groups: Option<Groups>,
    /// The broker's identity key (dead letters are its messages).
    identity: Option<Arc<SigningKey>>,
    /// Record bytes per committed run of topics under a count limit.
    ledger: Ledger,
}

/// Starts the writer thread.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    store: Arc<Store>,
    registry: Arc<Registry>,
    quotas: Arc<Quotas>,
    topics: &[StoredTopic],
    limits: &Limits,
    policy: watch::Receiver<Arc<Policy>>,
    groups: Groups,
    identity: Option<Arc<SigningKey>>,
) -> std::io::Result<Committer> {
    let (sender, receiver) = mpsc::channel(Limits::usize(limits.commit_queue_requests_max));
    let writer = Writer {
        store,
        group_envelopes_max: Limits::usize(limits.commit_group_envelopes_max),
        group_bytes_max: Limits::usize(limits.commit_group_bytes_max),
        registry,
        next_topic_id: topics.iter().map(|t| t.id + 1).max().unwrap_or(1),
        topics: topics
            .iter()
            .map(|t| {
                let state = TopicState {
                    id: t.id,
                    first: t.first_offset,
                    next: t.next_offset,
                    bytes: t.bytes,
                };
                (t.name.clone(), state)
            })
            .collect(),
        marks: HashMap::new(),
        window: limits.idempotency_window_seqs_max.max(1),
        usage: HashMap::new(),
        owners: HashMap::new(),
        quotas,
        policy,
        groups: Some(groups),
        identity,
        ledger: Ledger::default(),
    };
    let thread = std::thread::Builder::new()
        .name("signet-commit".into())
        .spawn(move || writer.run(receiver))?;
    Ok(Committer { sender, thread })
}

impl TopicState {
    fn head(&self) -> Head {
        Head {
            topic_id: Some(self.id),
            first_offset: self.first,
            next_offset: self.next,
            stored_bytes: self.bytes,
        }
    }
}

/// What one group commit will change, applied only after the write succeeds.
#[derive(Default)]
struct Staged {
    topics: HashMap<String, TopicState>,
    new_topic_ids: u32,
    marks: HashMap<KeyId, u64>,
    usage: HashMap<Arc<str>, u64>,
    /// Record bytes retention frees, per principal.
    freed: HashMap<Arc<str>, u64>,
    /// Messages and record bytes retention deletes.
    trimmed: u64,
    trimmed_bytes: u64,
    owners: HashMap<KeyId, Arc<str>>,
    bytes: usize,
    /// This write's records per topic id, for the ledger.
    runs: HashMap<u32, Run>,
    /// Replicated entries: retries are answered from the replay index.
    dedupe: bool,
    /// With `dedupe`: key and seq → offset and leaf staged in this write.
    published: HashMap<(KeyId, u64), (u64, Hash)>,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        while let Some(command) = receiver.blocking_recv() {
            let first = match command {
                Command::Publish(request) => request,
                Command::Trim(trim) => {
                    self.trim(trim);
                    continue;
                }
                Command::Replicated(replicated) => {
                    self.replicated(replicated);
                    continue;
                }
            };
            let mut envelopes = first.entries.len();
            let mut bytes: usize = first.entries.iter().map(|e| e.record.len()).sum();
            let mut group = vec![first];
            // A trim waiting behind the group is applied right after it.
            let mut after = None;
            while envelopes < self.group_envelopes_max && bytes < self.group_bytes_max {
                match receiver.try_recv() {
                    Ok(Command::Publish(request)) => {
                        envelopes += request.entries.len();
                        bytes += request
                            .entries
                            .iter()
                            .map(|e| e.record.len())
                            .sum::<usize>();
                        group.push(request);
                    }
                    Ok(other) => {
                        after = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit(group, envelopes, None);
            match after {
                Some(Command::Trim(trim)) => self.trim(trim),
                Some(Command::Replicated(replicated)) => self.replicated(replicated),
                Some(Command::Publish(request)) => {
                    let envelopes = request.entries.len();
                    self.commit(vec![request], envelopes, None);
                }
                None => {}
            }
        }
    }

    /// Applies a retention trim in one synced write.
    fn trim(&mut self, trim: Trim) {
        let result = self.write_trim(&trim);
        if let Err(e) = &result {
            tracing::error!(error = %e, topic = %trim.topic, "retention trim failed; nothing deleted");
        }
        let _ = trim.reply.send(result);
    }

    fn write_trim(&mut self, trim: &Trim) -> Result<bool, StoreError> {
        let live = self
            .topics
            .get(&trim.topic)
            .copied()
            .filter(|t| t.first == trim.from && trim.from < trim.to && trim.to <= t.next);
        let mut batch = WriteBatch::default();
        if let Some((group, applied)) = &trim.raft {
            self.store.put_raft_applied(&mut batch, *group, applied)?;
        }
        let Some(mut topic) = live else {
            if trim.raft.is_some() {
                // Applied (as nothing): the log holds it, no sync needed.
                self.store.write_unsynced(batch)?;
            }
            return Ok(false);
        };
        let freed = trim.bytes;
        topic.first = trim.to;
        topic.bytes = topic.bytes.saturating_sub(freed);
        self.store
            .put_topic_meta(&mut batch, topic.id, topic.first, topic.bytes)?;
        let mut totals = Vec::with_capacity(trim.freed.len());
        for (principal, bytes) in &trim.freed {
            let total = self.persisted_usage(principal)?.saturating_sub(*bytes);
            self.store.put_usage(&mut batch, principal, total)?;
            totals.push((principal.clone(), total));
        }
        self.store.write_synced(batch)?;
        self.store.raise_floor(topic.id, topic.first);
        for (principal, total) in totals {
            self.usage.insert(principal, total);
        }
        for (principal, bytes) in &trim.freed {
            if let Some(quota) = self.quotas.existing(principal) {
                quota.sub_stored(*bytes);
            }
        }
        self.topics.insert(trim.topic.clone(), topic);
        self.ledger.trimmed(topic.id, topic.first);
        self.registry.advance(&trim.topic, topic.head());
        metrics::trimmed(trim.to - trim.from, freed);
        Ok(true)
    }

    /// Applies committed data-group entries in one write.
    fn replicated(&mut self, replicated: Replicated) {
        let Replicated {
            group,
            requests,
            applied,
            done,
        } = replicated;
        let envelopes = requests.iter().map(|r| r.entries.len()).sum();
        let ok = self.commit(requests, envelopes, Some((group, applied)));
        let _ = done.send(ok);
    }

    /// Writes a group of requests and answers them; `raft`: a data group
    /// and its applied state (replicated entries: retries deduplicated,
    /// the state written in the same batch). Whether the write succeeded.
    fn commit(
        &mut self,
        group: Vec<CommitRequest>,
        envelopes: usize,
        raft: Option<(u64, Vec<u8>)>,
    ) -> bool {
        let started = Instant::now();
        let mut staged = Staged {
            dedupe: raft.is_some(),
            ..Staged::default()
        };
        let result = self
            .write(&group, &mut staged, raft.as_ref())
            .inspect_err(|e| {
                tracing::error!(error = %e, "group commit failed; nothing acked");
            });
        metrics::commit(envelopes, staged.bytes, started.elapsed(), result.is_ok());
        match result {
            Ok((offsets, mut outcomes)) => {
                let stored = !staged.topics.is_empty();
                self.apply(staged);
                if let Some(groups) = &mut self.groups {
                    groups.commit(stored);
                }
                for (request, offsets) in group.into_iter().zip(offsets) {
                    // The stored bytes are counted now: end the reservation
                    // before the ack, so the next publish sees them once.
                    let CommitRequest {
                        reply,
                        reserved,
                        group,
                        ..
                    } = request;
                    drop(reserved);
                    let _ = reply.send(offsets);
                    if let Some(work) = group {
                        let _ = work.reply.send(Ok(outcomes.remove(0)));
                    }
                }
                true
            }
            Err(_) => {
                if let Some(groups) = &mut self.groups {
                    groups.discard();
                }
                for request in group {
                    let _ = request.reply.send(Err(ErrorCode::Unavailable));
                    if let Some(work) = request.group {
                        let _ = work.reply.send(Err(ErrorCode::Unavailable));
                    }
                }
                false
            }
        }
    }

    /// Stages every entry of the group, the replay marks and the usage it
    /// moves, and the consumer-group commands with the dead letters they
    /// imply, and writes them in one synced batch; returns the offsets per
    /// request and the group outcomes per request that carried commands.
    /// Nothing is applied in memory here.
    #[allow(clippy::type_complexity)]
    fn write(
        &mut self,
        group: &[CommitRequest],
        staged: &mut Staged,
        raft: Option<&(u64, Vec<u8>)>,
    ) -> Result<(Vec<CommitReply>, Vec<Vec<crate::group_writer::Outcome>>), StoreError> {
        // Sized up front for the group's records and their index entries,
        // so RocksDB's batch buffer is not regrown (and copied) as it fills.
        let capacity: usize = group
            .iter()
            .flat_map(|request| &request.entries)
            .map(|entry| entry.record.len() + ENTRY_INDEX_BYTES)
            .sum();
        let mut batch = WriteBatch::with_capacity_bytes(capacity + BATCH_EXTRA_BYTES);
        let mut offsets = Vec::with_capacity(group.len());
        let mut outcomes = Vec::new();
        for request in group {
            let known = if staged.dedupe {
                self.stored_already(staged, &request.entries)?
            } else {
                Ok(vec![None; request.entries.len()])
            };
            match known {
                Ok(known) => {
                    let mut request_offsets = Vec::with_capacity(request.entries.len());
                    for (entry, known) in request.entries.iter().zip(known) {
                        request_offsets.push(match known {
                            Some(offset) => offset,
                            None => self.stage(&mut batch, staged, entry)?,
                        });
                    }
                    offsets.push(Ok(request_offsets));
                }
                Err(code) => offsets.push(Err(code)),
            }
            if let Some(work) = &request.group {
                outcomes.push(self.with_groups(&mut batch, staged, |groups, host| {
                    work.commands
                        .iter()
                        .map(|command| groups.apply(command, host))
                        .collect::<Result<Vec<_>, _>>()
                })?);
            }
        }
        self.stage_retention(staged)?;
        let done = self
            .groups
            .as_mut()
            .map(Groups::take_work_done)
            .unwrap_or_default();
        self.stage_work_done(&mut batch, staged, done)?;
        self.with_groups(&mut batch, staged, |groups, host| groups.finish(host))?;
        for (key, seq) in &staged.marks {
            let persisted = self.persisted_mark(key)?;
            if persisted < *seq {
                self.store.put_replay_mark(&mut batch, key, *seq)?;
                // Offsets of seqs that left the window are forgotten once
                // per `window` seqs (one range deletion), so a key keeps
                // at most two windows of entries on disk.
                let w = self.window;
                if persisted / w != *seq / w && *seq >= w {
                    let below = *seq - w + 1;
                    self.store.forget_published_below(&mut batch, key, below)?;
                }
            }
        }
        let principals: Vec<Arc<str>> = staged
            .usage
            .keys()
            .chain(staged.freed.keys())
            .cloned()
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        for principal in &principals {
            let added = staged.usage.get(principal).copied().unwrap_or(0);
            let freed = staged.freed.get(principal).copied().unwrap_or(0);
            let total = self
                .persisted_usage(principal)?
                .saturating_add(added)
                .saturating_sub(freed);
            self.store.put_usage(&mut batch, principal, total)?;
        }
        for topic in staged.topics.values() {
            self.store
                .put_topic_meta(&mut batch, topic.id, topic.first, topic.bytes)?;
        }
        for (key, principal) in &staged.owners {
            self.store.put_key_owner(&mut batch, key, principal)?;
        }
        match raft {
            // Committed entries of a data group are on disk in a majority's
            // Raft logs already: applying them need not wait for a sync
            // (after a crash, openraft applies again from the applied
            // state written here, which goes or stays with the batch).
            // A write that raises a topic's first offset is synced before
            // the floor rises, as on a single broker.
            Some((group, applied)) => {
                self.store.put_raft_applied(&mut batch, *group, applied)?;
                let trims = staged.topics.iter().any(|(name, topic)| {
                    self.topics
                        .get(name)
                        .is_some_and(|before| before.first != topic.first)
                });
                if trims {
                    self.store.write_synced(batch)?;
                } else {
                    self.store.write_unsynced(batch)?;
                }
            }
            None => self.store.write_synced(batch)?,
        }
        // Durable now: what retention trimmed goes at the next compaction.
        for topic in staged.topics.values() {
            self.store.raise_floor(topic.id, topic.first);
        }
        Ok((offsets, outcomes))
    }

    /// Runs `f` on the group state with this writer as its host.
    fn with_groups<T>(
        &mut self,
        batch: &mut WriteBatch,
        staged: &mut Staged,
        f: impl FnOnce(&mut Groups, &mut dyn Host) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut groups = self.groups.take().ok_or(StoreError::Corrupt {
            family: crate::store::CF_SUBS,
            what: "group state in use",
        })?;
        let result = f(
            &mut groups,
            &mut WriterHost {
                writer: self,
                batch,
                staged,
            },
        );
        self.groups = Some(groups);
        result
    }

    /// For a replicated batch: per envelope, the offset it is stored at
    /// already (a retry: same key, seq and leaf), or `None` (new); `Replay`
    /// when a key's seq holds another envelope, or when it is not in the
    /// index and as far below the mark as the idempotency window. Reads the replay index only for
    /// seqs at or below the mark (a seq above it was never stored).
    fn stored_already(
        &mut self,
        staged: &Staged,
        entries: &[Entry],
    ) -> Result<Result<Vec<Option<u64>>, ErrorCode>, StoreError> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let mark = self
                .persisted_mark(&entry.replay)?
                .max(staged.marks.get(&entry.replay).copied().unwrap_or(0));
            if entry.seq > mark {
                out.push(None);
                continue;
            }
            let known = match staged.published.get(&(entry.replay, entry.seq)) {
                Some(known) => Some(*known),
                None => self.store.published(&entry.replay, entry.seq)?,
            };
            match known {
                Some((offset, leaf)) if leaf == entry.leaf => out.push(Some(offset)),
                Some(_) => return Ok(Err(ErrorCode::Replay)),
                // Not in the index and older than the window: a retry
                // whose offset is forgotten, or a seq never used that far
                // behind; nothing tells them apart, so nothing is stored.
                None if mark - entry.seq >= self.window => return Ok(Err(ErrorCode::Replay)),
                // Not in the index, within the window: a seq the leader's
                // ingest accepted whose batch reached the log after a
                // higher seq's (two batches in flight); stored like any
                // new envelope.
                None => out.push(None),
            }
        }
        Ok(Ok(out))
    }

    fn persisted_mark(&mut self, key: &KeyId) -> Result<u64, StoreError> {
        if let Some(mark) = self.marks.get(key) {
            return Ok(*mark);
        }
        let mark = self.store.replay_mark(key)?.unwrap_or(0);
        self.marks.insert(*key, mark);
        Ok(mark)
    }

    /// Stored bytes of `principal` as persisted. A read error fails the
    /// commit: writing `0 + added` would reset the principal's quota.
    fn persisted_usage(&mut self, principal: &Arc<str>) -> Result<u64, StoreError> {
        if let Some(bytes) = self.usage.get(principal) {
            return Ok(*bytes);
        }
        let bytes = self.store.usage(principal)?;
        self.usage.insert(principal.clone(), bytes);
        Ok(bytes)
    }

    /// For each topic of the group past its count or byte limit: moves its
    /// first offset past its oldest committed records down to the limit in
    /// the same write (the records leave at the next compaction, see
    /// `floors`). Records of this group itself are never deleted here (the
    /// next group, or a retention pass, takes them; reads skip them
    /// already).
    fn stage_retention(&mut self, staged: &mut Staged) -> Result<(), StoreError> {
        let policy = self.policy.borrow().clone();
        let names: Vec<String> = staged.topics.keys().cloned().collect();
        for name in names {
            let Some(limits) = policy.retention(&name) else {
                continue;
            };
            let (Some(committed), Some(mut topic)) = (
                self.topics.get(&name).copied(),
                staged.topics.get(&name).copied(),
            ) else {
                continue;
            };
            // The floor counts this group; the records read stop at what
            // was committed before it.
            let floor = trim::Floor::of(limits, &topic.head(), None);
            if !floor.worth_trimming(limits, &topic.head()) {
                continue;
            }
            let readable = trim::Floor {
                cutoff: None,
                ..floor
            };
            let head = Head {
                next_offset: committed.next,
                ..topic.head()
            };
            let Some(plan) = self.plan_trim(topic.id, &head, &readable)? else {
                continue;
            };
            topic.first = plan.to;
            topic.bytes = topic.bytes.saturating_sub(plan.bytes);
            for (principal, bytes) in plan.freed {
                *staged.freed.entry(principal).or_insert(0) += bytes;
            }
            staged.topics.insert(name, topic);
            staged.trimmed = staged.trimmed.saturating_add(plan.to - plan.from);
            staged.trimmed_bytes = staged.trimmed_bytes.saturating_add(plan.bytes);
        }
        Ok(())
    }

    /// The trim of a topic at `head` (records committed before this
    /// write) down to `floor`. A count limit alone takes whole committed
    /// runs from the ledger; records below the ledger's start (a run a
    /// trim cut through, or written before a restart) are read first,
    /// and so is everything under a byte or age limit.
    fn plan_trim(
        &mut self,
        topic_id: u32,
        head: &Head,
        floor: &trim::Floor,
    ) -> Result<Option<trim::Plan>, StoreError> {
        let start = match self.ledger.start(topic_id) {
            Some(start) if floor.excess == 0 && start >= head.first_offset => start,
            _ => return self.read_trim(topic_id, head, floor),
        };
        if start == head.first_offset {
            return Ok(self.ledger.plan(topic_id, start, floor.by_count).flatten());
        }
        // Read up to the ledger's start, then whole runs from it.
        let below = Head {
            next_offset: start.min(head.next_offset),
            ..*head
        };
        let read_floor = trim::Floor {
            by_count: floor.by_count.min(start),
            ..*floor
        };
        let Some(read) = self.read_trim(topic_id, &below, &read_floor)? else {
            return Ok(None);
        };
        if read.to < start {
            return Ok(Some(read));
        }
        Ok(Some(
            match self.ledger.plan(topic_id, start, floor.by_count).flatten() {
                Some(runs) => read.then(runs),
                None => read,
            },
        ))
    }

    /// A trim planned by reading the records.
    fn read_trim(
        &mut self,
        topic_id: u32,
        head: &Head,
        floor: &trim::Floor,
    ) -> Result<Option<trim::Plan>, StoreError> {
        let store = self.store.clone();
        trim::plan(&store, topic_id, head, floor, |key| {
            Ok(self.persisted_owner(&key)?.cloned())
        })
    }

    /// Work-queue topics: deletes what their group acked or dead-lettered
    /// in this write, and every record still stored below the group's
    /// acked floor (moving the topic's first offset there), giving the
    /// bytes back to their publishers, in the same write as the
    /// settlements. Runs after [`Writer::stage_retention`], on records
    /// committed before this write.
    fn stage_work_done(
        &mut self,
        batch: &mut WriteBatch,
        staged: &mut Staged,
        done: std::collections::BTreeMap<String, WorkDone>,
    ) -> Result<(), StoreError> {
        for (name, work) in done {
            let (Some(committed), Some(mut topic)) = (
                self.topics.get(&name).copied(),
                staged
                    .topics
                    .get(&name)
                    .or_else(|| self.topics.get(&name))
                    .copied(),
            ) else {
                continue;
            };
            let store = self.store.clone();
            let removal = trim::settled(
                &store,
                topic.id,
                topic.first,
                committed.next,
                work.floor,
                &work.offsets,
                |key| Ok(self.persisted_owner(&key)?.cloned()),
            )?;
            if removal.first == topic.first && removal.offsets.is_empty() {
                continue;
            }
            for offset in &removal.offsets {
                self.store.delete_message(batch, topic.id, *offset)?;
            }
            topic.first = removal.first;
            topic.bytes = topic.bytes.saturating_sub(removal.bytes);
            for (principal, bytes) in removal.freed {
                *staged.freed.entry(principal).or_insert(0) += bytes;
            }
            staged.topics.insert(name, topic);
            staged.trimmed = staged.trimmed.saturating_add(removal.offsets.len() as u64);
            staged.trimmed_bytes = staged.trimmed_bytes.saturating_add(removal.bytes);
        }
        Ok(())
    }

    /// Whose bytes a key's records are, as persisted (read once per key).
    fn persisted_owner(&mut self, key: &KeyId) -> Result<Option<&Arc<str>>, StoreError> {
        if !self.owners.contains_key(key)
            && let Some(owner) = self.store.key_owner(key)?
        {
            self.owners.insert(*key, Arc::from(owner));
        }
        Ok(self.owners.get(key))
    }

    fn stage(
        &mut self,
        batch: &mut WriteBatch,
        staged: &mut Staged,
        entry: &Entry,
    ) -> Result<u64, StoreError> {
        let mut topic = match staged.topics.get(&entry.topic) {
            Some(t) => *t,
            None => match self.topics.get(&entry.topic) {
                Some(t) => *t,
                None => {
                    let id = self.next_topic_id + staged.new_topic_ids;
                    staged.new_topic_ids += 1;
                    self.store.put_topic(batch, &entry.topic, id)?;
                    TopicState {
                        id,
                        first: 0,
                        next: 0,
                        bytes: 0,
                    }
                }
            },
        };
        let offset = topic.next;
        if staged.dedupe {
            staged
                .published
                .insert((entry.replay, entry.seq), (offset, entry.leaf));
        }
        self.store
            .put_message(batch, topic.id, offset, &entry.record)?;
        self.store
            .put_published(batch, &entry.replay, entry.seq, offset, &entry.leaf)?;
        topic.next += 1;
        topic.bytes = topic.bytes.saturating_add(entry.record.len() as u64);
        match staged.topics.get_mut(&entry.topic) {
            Some(staged_topic) => *staged_topic = topic,
            None => {
                staged.topics.insert(entry.topic.clone(), topic);
            }
        }
        if self.persisted_owner(&entry.key_id)? != Some(&entry.principal)
            && staged.owners.get(&entry.key_id) != Some(&entry.principal)
        {
            staged.owners.insert(entry.key_id, entry.principal.clone());
        }
        staged.bytes += entry.record.len();
        staged
            .runs
            .entry(topic.id)
            .or_insert_with(|| Run::starting(offset))
            .add(offset, entry.record.len() as u64, &entry.principal);
        let mark = staged.marks.entry(entry.replay).or_insert(0);
        *mark = (*mark).max(entry.seq);
        *staged.usage.entry(entry.principal.clone()).or_insert(0) += entry.record.len() as u64;
        Ok(offset)
    }

    fn apply(&mut self, staged: Staged) {
        self.next_topic_id += staged.new_topic_ids;
        for (key, seq) in staged.marks {
            let mark = self.marks.entry(key).or_insert(0);
            *mark = (*mark).max(seq);
        }
        for (principal, added) in staged.usage {
            *self.usage.entry(principal.clone()).or_insert(0) += added;
            if let Some(quota) = self.quotas.existing(&principal) {
                quota.add_stored(added);
            }
        }
        for (principal, freed) in staged.freed {
            let usage = self.usage.entry(principal.clone()).or_insert(0);
            *usage = usage.saturating_sub(freed);
            if let Some(quota) = self.quotas.existing(&principal) {
                quota.sub_stored(freed);
            }
        }
        if staged.trimmed > 0 {
            metrics::trimmed(staged.trimmed, staged.trimmed_bytes);
        }
        self.owners.extend(staged.owners);
        let policy = self.policy.borrow().clone();
        let mut runs = staged.runs;
        for (name, topic) in staged.topics {
            if let Some(run) = runs.remove(&topic.id) {
                if policy
                    .retention(&name)
                    .is_some_and(|r| r.max_msgs.is_some())
                {
                    self.ledger.append(topic.id, run);
                } else {
                    self.ledger.forget(topic.id);
                }
            }
            self.ledger.trimmed(topic.id, topic.first);
            self.registry.advance(&name, topic.head());
            self.topics.insert(name, topic);
        }
    }
}

/// The writer as seen by consumer-group commands: topics as staged so far
/// in this write, stored records, the identity key's seq, and staging.
struct WriterHost<'a> {
    writer: &'a mut Writer,
    batch: &'a mut WriteBatch,
    staged: &'a mut Staged,
}

impl Host for WriterHost<'_> {
    fn topic(&self, name: &str) -> Option<(u32, u64)> {
        self.staged
            .topics
            .get(name)
            .or_else(|| self.writer.topics.get(name))
            .map(|t| (t.id, t.next))
    }

    fn first(&self, name: &str) -> u64 {
        self.staged
            .topics
            .get(name)
            .or_else(|| self.writer.topics.get(name))
            .map_or(0, |t| t.first)
    }

    fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.writer.topics.keys().cloned().collect();
        names.extend(
            self.staged
                .topics
                .keys()
                .filter(|n| !self.writer.topics.contains_key(*n))
                .cloned(),
        );
        names
    }

    fn record(&self, topic_id: u32, offset: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.writer.store.message(topic_id, offset)
    }

    fn identity_mark(&mut self) -> Result<u64, StoreError> {
        let Some(key) = self.writer.identity.as_ref().map(|k| k.id()) else {
            return Ok(0);
        };
        let persisted = self.writer.persisted_mark(&key)?;
        Ok(persisted.max(self.staged.marks.get(&key).copied().unwrap_or(0)))
    }

    fn append(&mut self, append: Append) -> Result<u64, StoreError> {
        let Some(key) = self.writer.identity.as_ref().map(|k| k.id()) else {
            return Err(StoreError::Corrupt {
                family: crate::store::CF_SUBS,
                what: "dead letter without an identity key",
            });
        };
        let entry = Entry {
            topic: append.topic,
            record: Bytes::from(append.record),
            key_id: key,
            replay: key,
            seq: append.seq,
            leaf: append.leaf,
            principal: Arc::from(BROKER_PRINCIPAL),
        };
        self.writer.stage(self.batch, self.staged, &entry)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writer.store.put_group_entry(self.batch, key, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn entry(seq: u64, leaf: u8) -> Entry {
        Entry {
            topic: "orders.a".into(),
            record: Bytes::from(vec![leaf; 8]),
            key_id: KeyId([7; 16]),
            replay: KeyId([7; 16]),
            seq,
            leaf: Hash([leaf; 32]),
            principal: Arc::from("alice"),
        }
    }

    fn request(entries: Vec<Entry>) -> (CommitRequest, oneshot::Receiver<CommitReply>) {
        let (reply, answer) = oneshot::channel();
        let request = CommitRequest {
            entries,
            reply,
            reserved: Reservation::default(),
            group: None,
        };
        (request, answer)
    }

    /// Applies `batches` as one replicated write; their answers.
    fn replicated(sender: &mpsc::Sender<Command>, batches: Vec<Vec<Entry>>) -> Vec<CommitReply> {
        let (requests, answers): (Vec<_>, Vec<_>) = batches.into_iter().map(request).unzip();
        let (done, written) = oneshot::channel();
        sender
            .blocking_send(Command::Replicated(Replicated {
                group: 1,
                requests,
                applied: b"applied".to_vec(),
                done,
            }))
            .unwrap();
        assert_eq!(written.blocking_recv(), Ok(true));
        answers
            .into_iter()
            .map(|a| a.blocking_recv().unwrap())
            .collect()
    }

    #[test]
    fn a_replicated_retry_is_answered_with_its_offsets_and_a_reused_or_forgotten_seq_is_a_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let (groups, _wake) = Groups::load(&store, None, 16).unwrap();
        let policy = watch::channel(Arc::new(Policy::default())).1;
        let committer = spawn(
            store.clone(),
            Arc::new(Registry::new(&[])),
            Arc::new(Quotas::new(1 << 20)),
            &[],
            &Limits::default(),
            policy,
            groups,
            None,
        )
        .unwrap();
        let sender = committer.sender.clone();
        // Two batches in one write, the second logged before the first's
        // lower seqs (both passed the leader's ingest): both stored.
        let first = replicated(
            &sender,
            vec![vec![entry(5, 5), entry(6, 6)], vec![entry(2, 2)]],
        );
        assert_eq!(first, vec![Ok(vec![0, 1]), Ok(vec![2])]);
        // The same batch again (a retry after a lost ack), in a later write
        // and within one write: the original offsets, nothing stored.
        let again = replicated(
            &sender,
            vec![
                vec![entry(5, 5), entry(6, 6)],
                vec![entry(7, 7)],
                vec![entry(7, 7)],
            ],
        );
        assert_eq!(again, vec![Ok(vec![0, 1]), Ok(vec![3]), Ok(vec![3])]);
        // A used seq with another envelope: the whole batch is refused.
        let reused = replicated(&sender, vec![vec![entry(8, 8), entry(6, 9)]]);
        assert_eq!(reused, vec![Err(ErrorCode::Replay)]);
        assert_eq!(store.message(1, 4).unwrap(), None, "nothing of it stored");
        // A seq not in the index: within the window of the mark it is
        // stored (a batch logged after a higher seq's); as far below the
        // mark as the window (16384 by default) it is refused, since a
        // retry whose offset was forgotten cannot be told from it.
        let far = replicated(
            &sender,
            vec![
                vec![entry(20_000, 20)],
                vec![entry(19_000, 21)],
                vec![entry(3, 22)],
            ],
        );
        assert_eq!(far, vec![Ok(vec![4]), Ok(vec![5]), Err(ErrorCode::Replay)]);
        assert_eq!(store.message(1, 6).unwrap(), None, "the old seq not stored");
        assert_eq!(store.raft_applied(1).unwrap(), Some(b"applied".to_vec()));
        drop(sender);
        drop(committer.sender);
        committer.thread.join().unwrap();
    }
}
