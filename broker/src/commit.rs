//! Group commit: one writer thread takes accepted envelopes from every
//! connection, writes as many as are waiting (bounded) in one RocksDB
//! `WriteBatch` with `sync = true`, assigns offsets (per topic, dense, from
//! 0), and only then answers each request. An ack therefore always means
//! "on disk". Replay marks, where each envelope was stored (for idempotent
//! publish: key id and seq → offset and leaf hash, the last
//! `limits.idempotency_window_seqs_max` seqs per key) and stored-bytes
//! usage (each record's exact size) go into the same write. Queue and group sizes are
//! `limits.commit_*`.

use crate::error::StoreError;
use crate::fanout::{Head, Registry};
use crate::limits::Limits;
use crate::metrics;
use crate::quota::{Quotas, Reservation};
use crate::store::{Store, StoredTopic};
use rocksdb::WriteBatch;
use signet_proto::merkle::Hash;
use signet_proto::{ErrorCode, KeyId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// One accepted envelope, encoded as it will be stored.
#[derive(Debug)]
pub struct Entry {
    /// Its topic.
    pub topic: String,
    /// The stored record (MessagePack of a `StoredRecord`).
    pub record: Vec<u8>,
    /// Its signing key, for the replay mark.
    pub key_id: KeyId,
    /// Its sequence number, for the replay mark.
    pub seq: u64,
    /// Its leaf hash (of its signed bytes), remembered with its offset so
    /// a retry is answered with that offset.
    pub leaf: Hash,
    /// The publishing principal; the record's bytes count against its
    /// stored-bytes quota.
    pub principal: Arc<str>,
}

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
}

/// The sending side handed to sessions, and the writer thread.
pub struct Committer {
    /// Where sessions send accepted envelopes.
    pub sender: mpsc::Sender<CommitRequest>,
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
    /// Topic name → (id, next offset), as committed.
    topics: HashMap<String, (u32, u64)>,
    next_topic_id: u32,
    /// Replay marks as persisted, so a late batch never lowers one.
    marks: HashMap<KeyId, u64>,
    /// Seqs per key whose offsets are kept.
    window: u64,
    /// Stored record bytes per principal, as persisted.
    usage: HashMap<Arc<str>, u64>,
    quotas: Arc<Quotas>,
}

/// Starts the writer thread.
pub fn spawn(
    store: Arc<Store>,
    registry: Arc<Registry>,
    quotas: Arc<Quotas>,
    topics: &[StoredTopic],
    limits: &Limits,
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
            .map(|t| (t.name.clone(), (t.id, t.next_offset)))
            .collect(),
        marks: HashMap::new(),
        window: limits.idempotency_window_seqs_max.max(1),
        usage: HashMap::new(),
        quotas,
    };
    let thread = std::thread::Builder::new()
        .name("signet-commit".into())
        .spawn(move || writer.run(receiver))?;
    Ok(Committer { sender, thread })
}

/// What one group commit will change, applied only after the write succeeds.
#[derive(Default)]
struct Staged {
    topics: HashMap<String, (u32, u64)>,
    new_topic_ids: u32,
    marks: HashMap<KeyId, u64>,
    usage: HashMap<Arc<str>, u64>,
    bytes: usize,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<CommitRequest>) {
        while let Some(first) = receiver.blocking_recv() {
            let mut envelopes = first.entries.len();
            let mut bytes: usize = first.entries.iter().map(|e| e.record.len()).sum();
            let mut group = vec![first];
            while envelopes < self.group_envelopes_max && bytes < self.group_bytes_max {
                match receiver.try_recv() {
                    Ok(request) => {
                        envelopes += request.entries.len();
                        bytes += request
                            .entries
                            .iter()
                            .map(|e| e.record.len())
                            .sum::<usize>();
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit(group, envelopes);
        }
    }

    fn commit(&mut self, group: Vec<CommitRequest>, envelopes: usize) {
        let started = Instant::now();
        let mut staged = Staged::default();
        let result = self.write(&group, &mut staged).inspect_err(|e| {
            tracing::error!(error = %e, "group commit failed; nothing acked");
        });
        metrics::commit(envelopes, staged.bytes, started.elapsed(), result.is_ok());
        match result {
            Ok(offsets) => {
                self.apply(staged);
                for (request, offsets) in group.into_iter().zip(offsets) {
                    // The stored bytes are counted now: end the reservation
                    // before the ack, so the next publish sees them once.
                    let CommitRequest {
                        reply, reserved, ..
                    } = request;
                    drop(reserved);
                    let _ = reply.send(Ok(offsets));
                }
            }
            Err(_) => {
                for request in group {
                    let _ = request.reply.send(Err(ErrorCode::Unavailable));
                }
            }
        }
    }

    /// Stages every entry of the group, the replay marks and the usage it
    /// moves, and writes them in one synced batch; returns the offsets per
    /// request. Nothing is applied in memory here.
    fn write(
        &mut self,
        group: &[CommitRequest],
        staged: &mut Staged,
    ) -> Result<Vec<Vec<u64>>, StoreError> {
        let mut batch = WriteBatch::default();
        let mut offsets = Vec::with_capacity(group.len());
        for request in group {
            let mut request_offsets = Vec::with_capacity(request.entries.len());
            for entry in &request.entries {
                request_offsets.push(self.stage(&mut batch, staged, entry)?);
            }
            offsets.push(request_offsets);
        }
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
        for (principal, added) in &staged.usage {
            let total = self.persisted_usage(principal)?.saturating_add(*added);
            self.store.put_usage(&mut batch, principal, total)?;
        }
        self.store.write_synced(batch)?;
        Ok(offsets)
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

    fn stage(
        &self,
        batch: &mut WriteBatch,
        staged: &mut Staged,
        entry: &Entry,
    ) -> Result<u64, StoreError> {
        let (id, next) = match staged.topics.get(&entry.topic) {
            Some(t) => *t,
            None => match self.topics.get(&entry.topic) {
                Some(t) => *t,
                None => {
                    let id = self.next_topic_id + staged.new_topic_ids;
                    staged.new_topic_ids += 1;
                    self.store.put_topic(batch, &entry.topic, id)?;
                    (id, 0)
                }
            },
        };
        self.store.put_message(batch, id, next, &entry.record)?;
        self.store
            .put_published(batch, &entry.key_id, entry.seq, next, &entry.leaf)?;
        staged.topics.insert(entry.topic.clone(), (id, next + 1));
        staged.bytes += entry.record.len();
        let mark = staged.marks.entry(entry.key_id).or_insert(0);
        *mark = (*mark).max(entry.seq);
        *staged.usage.entry(entry.principal.clone()).or_insert(0) += entry.record.len() as u64;
        Ok(next)
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
        for (name, (id, next)) in staged.topics {
            self.registry.advance(
                &name,
                Head {
                    topic_id: Some(id),
                    next_offset: next,
                },
            );
            self.topics.insert(name, (id, next));
        }
    }
}
