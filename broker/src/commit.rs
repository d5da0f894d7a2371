//! Group commit: one writer thread takes accepted envelopes from every
//! connection, writes as many as are waiting (bounded) in one RocksDB
//! `WriteBatch` with `sync = true`, assigns offsets (per topic, dense, from
//! 0), and only then answers each request. An ack therefore always means
//! "on disk". Replay marks go into the same write.

use crate::fanout::{Head, Registry};
use crate::metrics;
use crate::quota::Quotas;
use crate::store::{Store, StoredTopic};
use rocksdb::WriteBatch;
use signet_proto::{ErrorCode, KeyId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Most commit requests waiting for the writer. Bounds queued memory; a
/// full queue makes publish streams wait (backpressure).
pub const QUEUE_REQUESTS_MAX: usize = 1024;

/// Most envelopes in one group commit.
pub const GROUP_ENVELOPES_MAX: usize = 16 * 1024;

/// Most record bytes in one group commit.
pub const GROUP_BYTES_MAX: usize = 32 * 1024 * 1024;

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
    /// The publishing principal, for its stored-bytes quota.
    pub principal: Arc<str>,
    /// Payload bytes, counted against that quota.
    pub payload_bytes: u64,
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
    registry: Arc<Registry>,
    /// Topic name → (id, next offset), as committed.
    topics: HashMap<String, (u32, u64)>,
    next_topic_id: u32,
    /// Replay marks as persisted, so a late batch never lowers one.
    marks: HashMap<KeyId, u64>,
    /// Stored payload bytes per principal, as persisted.
    usage: HashMap<Arc<str>, u64>,
    quotas: Arc<Quotas>,
}

/// Starts the writer thread.
pub fn spawn(
    store: Arc<Store>,
    registry: Arc<Registry>,
    quotas: Arc<Quotas>,
    topics: &[StoredTopic],
) -> std::io::Result<Committer> {
    let (sender, receiver) = mpsc::channel(QUEUE_REQUESTS_MAX);
    let writer = Writer {
        store,
        registry,
        next_topic_id: topics.iter().map(|t| t.id + 1).max().unwrap_or(1),
        topics: topics
            .iter()
            .map(|t| (t.name.clone(), (t.id, t.next_offset)))
            .collect(),
        marks: HashMap::new(),
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
            while envelopes < GROUP_ENVELOPES_MAX && bytes < GROUP_BYTES_MAX {
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
        let mut batch = WriteBatch::default();
        let mut staged = Staged::default();
        let mut offsets = Vec::with_capacity(group.len());
        let mut failed = false;
        for request in &group {
            let mut request_offsets = Vec::with_capacity(request.entries.len());
            for entry in &request.entries {
                match self.stage(&mut batch, &mut staged, entry) {
                    Ok(offset) => request_offsets.push(offset),
                    Err(()) => failed = true,
                }
            }
            offsets.push(request_offsets);
        }
        for (key, seq) in &staged.marks {
            if self.persisted_mark(key) < *seq
                && self.store.put_replay_mark(&mut batch, key, *seq).is_err()
            {
                failed = true;
            }
        }
        for (principal, added) in &staged.usage {
            let total = self.persisted_usage(principal).saturating_add(*added);
            if self.store.put_usage(&mut batch, principal, total).is_err() {
                failed = true;
            }
        }
        let result = if failed {
            Err(())
        } else {
            self.store.write_synced(batch).map_err(|e| {
                tracing::error!(error = %e, "group commit failed; nothing acked");
            })
        };
        metrics::commit(envelopes, staged.bytes, started.elapsed(), result.is_ok());
        match result {
            Ok(()) => {
                self.apply(staged);
                for (request, offsets) in group.into_iter().zip(offsets) {
                    let _ = request.reply.send(Ok(offsets));
                }
            }
            Err(()) => {
                for request in group {
                    let _ = request.reply.send(Err(ErrorCode::Unavailable));
                }
            }
        }
    }

    fn persisted_mark(&mut self, key: &KeyId) -> u64 {
        if let Some(mark) = self.marks.get(key) {
            return *mark;
        }
        let mark = self.store.replay_mark(key).ok().flatten().unwrap_or(0);
        self.marks.insert(*key, mark);
        mark
    }

    fn persisted_usage(&mut self, principal: &Arc<str>) -> u64 {
        if let Some(bytes) = self.usage.get(principal) {
            return *bytes;
        }
        let bytes = self.store.usage(principal).ok().unwrap_or(0);
        self.usage.insert(principal.clone(), bytes);
        bytes
    }

    fn stage(&self, batch: &mut WriteBatch, staged: &mut Staged, entry: &Entry) -> Result<u64, ()> {
        let (id, next) = match staged.topics.get(&entry.topic) {
            Some(t) => *t,
            None => match self.topics.get(&entry.topic) {
                Some(t) => *t,
                None => {
                    let id = self.next_topic_id + staged.new_topic_ids;
                    staged.new_topic_ids += 1;
                    self.store
                        .put_topic(batch, &entry.topic, id)
                        .map_err(|_| ())?;
                    (id, 0)
                }
            },
        };
        self.store
            .put_message(batch, id, next, &entry.record)
            .map_err(|_| ())?;
        staged.topics.insert(entry.topic.clone(), (id, next + 1));
        staged.bytes += entry.record.len();
        let mark = staged.marks.entry(entry.key_id).or_insert(0);
        *mark = (*mark).max(entry.seq);
        *staged.usage.entry(entry.principal.clone()).or_insert(0) += entry.payload_bytes;
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
