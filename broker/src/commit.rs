//! Group commit: one writer thread takes accepted envelopes from every
//! connection, writes as many as are waiting (bounded) in one RocksDB
//! `WriteBatch` with `sync = true`, assigns offsets (per topic, dense, from
//! 0), and only then answers each request. An ack therefore always means
//! "on disk". Replay marks and stored-bytes usage (each record's exact
//! size) go into the same write. Queue and group sizes are
//! `limits.commit_*`.

use crate::error::StoreError;
use crate::fanout::{Head, Registry};
use crate::group_writer::{Append, GroupWork, Groups, Host};
use crate::limits::Limits;
use crate::metrics;
use crate::quota::{Quotas, Reservation};
use crate::store::{Store, StoredTopic};
use rocksdb::WriteBatch;
use signet_proto::{ErrorCode, KeyId, SigningKey};
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
    /// The publishing principal; the record's bytes count against its
    /// stored-bytes quota.
    pub principal: Arc<str>,
}

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
    /// Stored record bytes per principal, as persisted.
    usage: HashMap<Arc<str>, u64>,
    quotas: Arc<Quotas>,
    /// Consumer-group state (taken out while a command runs against the
    /// writer as its [`Host`]).
    groups: Option<Groups>,
    /// The broker's identity key (dead letters are its messages).
    identity: Option<Arc<SigningKey>>,
}

/// Starts the writer thread.
pub fn spawn(
    store: Arc<Store>,
    registry: Arc<Registry>,
    quotas: Arc<Quotas>,
    topics: &[StoredTopic],
    limits: &Limits,
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
            .map(|t| (t.name.clone(), (t.id, t.next_offset)))
            .collect(),
        marks: HashMap::new(),
        usage: HashMap::new(),
        quotas,
        groups: Some(groups),
        identity,
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
                    let _ = reply.send(Ok(offsets));
                    if let Some(work) = group {
                        let _ = work.reply.send(Ok(outcomes.remove(0)));
                    }
                }
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
    ) -> Result<(Vec<Vec<u64>>, Vec<Vec<crate::group_writer::Outcome>>), StoreError> {
        let mut batch = WriteBatch::default();
        let mut offsets = Vec::with_capacity(group.len());
        let mut outcomes = Vec::new();
        for request in group {
            let mut request_offsets = Vec::with_capacity(request.entries.len());
            for entry in &request.entries {
                request_offsets.push(self.stage(&mut batch, staged, entry)?);
            }
            offsets.push(request_offsets);
            if let Some(work) = &request.group {
                outcomes.push(self.with_groups(&mut batch, staged, |groups, host| {
                    work.commands
                        .iter()
                        .map(|command| groups.apply(command, host))
                        .collect::<Result<Vec<_>, _>>()
                })?);
            }
        }
        self.with_groups(&mut batch, staged, |groups, host| groups.finish(host))?;
        for (key, seq) in &staged.marks {
            if self.persisted_mark(key)? < *seq {
                self.store.put_replay_mark(&mut batch, key, *seq)?;
            }
        }
        for (principal, added) in &staged.usage {
            let total = self.persisted_usage(principal)?.saturating_add(*added);
            self.store.put_usage(&mut batch, principal, total)?;
        }
        self.store.write_synced(batch)?;
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
            .copied()
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
            record: append.record,
            key_id: key,
            seq: append.seq,
            principal: Arc::from(BROKER_PRINCIPAL),
        };
        self.writer.stage(self.batch, self.staged, &entry)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writer.store.put_group_entry(self.batch, key, value)
    }
}
