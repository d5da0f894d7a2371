//! A data group: every node a member, holding the topics
//! [`signet_proto::placement`] puts in it (all of them when there is one
//! group). Its log entries are accepted publish
//! batches as the leader's ingest produced them ([`DataCommand`]: topic,
//! stored record, key id + seq + leaf for the replay index, principal for
//! usage), so applying one reads no policy and no clock.
//!
//! The state machine hands each applied run of entries to the broker's
//! group-commit writer ([`crate::commit`]) as one
//! [`Command::Replicated`](crate::commit::Command::Replicated): offsets are
//! assigned there, in log order, on every replica, in one synced RocksDB
//! write that also holds this group's applied log id and membership, so a
//! restart neither applies an entry twice nor skips one. The writer answers
//! a batch already stored (same key, seq and leaf) with its original
//! offsets instead of storing it again.
//!
//! An entry may also carry consumer-group commands
//! ([`crate::group_writer::Command`]: a member's lease or settlements,
//! with the group's policy, the leader's time and a random seed), applied
//! by the same writer in the same write on every replica, so a group's
//! acks, leases and dead letters survive the loss of its leader. Applying
//! one reads no clock, no RNG and no policy. A dead letter is signed by
//! the applying node's identity key (every replica stores the same
//! letter at the same offset; the signature says which node wrote it).
//!
//! An entry may instead carry a retention trim ([`DataTrim`]) that the
//! leader's retention pass planned: applied on every replica with the
//! applied log id in the same synced write (a stale one writes only that).
//!
//! Every data group of a node applies to the node's one message store
//! through its one writer. Groups share no topic, and each keeps its own
//! replay marks ([`crate::replay::replay_key`]), so the order in which a
//! node interleaves two groups' entries changes nothing it stores.
//!
//! The group's log is its own database, `<data_dir>/cluster-data-<id>`.
//! It is compacted, not snapshotted: the leader replicates a compaction
//! point ([`DataCommand::compact`]) that every member already holds on
//! disk (the least of their matched indexes), and each node, once it has
//! applied that entry, records a snapshot *mark* (the applied log id and
//! membership, no messages: the messages are the node's own store) and
//! deletes its log up to the point. No member ever needs a compacted entry
//! from a peer, so openraft never sends a snapshot while every member
//! keeps its disk; a replica that lost its disk cannot be rebuilt from a
//! mark, so [`DataMachine::install_snapshot`] refuses one (loudly) instead
//! of pretending to hold messages it lacks.

// openraft's traits fix these error types (StorageError is large).
#![allow(clippy::result_large_err)]

use super::log_store::{SM, decode, encode, read_snapshot_record, snapshot_id, write_synced};
use super::types::{Data, DataEntry, NodeAddr, StorageError};
use crate::commit::{Command, CommitRequest, Entry, Replicated, Trim};
use crate::group_writer::{Command as GroupCommand, GroupWork, Outcome as GroupOutcome};
use crate::quota::Reservation;
use crate::store::Store;
use bytes::Bytes;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use rocksdb::{DB, WriteBatch};
use serde::{Deserialize, Serialize};
use signet_proto::merkle::Hash;
use signet_proto::{ErrorCode, KeyId};
use std::io::Cursor;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Where the group's log database keeps its snapshot mark (column family
/// `sm`).
const MARK: &[u8] = b"snapshot-mark";

/// One accepted envelope as replicated.
/// Its fields are shared, not copied, when the entry is cloned (the log
/// store hands out clones of the latest entries).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataRecord {
    pub topic: Arc<str>,
    pub record: Bytes,
    pub key_id: KeyId,
    pub seq: u64,
    pub leaf: Hash,
    pub principal: Arc<str>,
}

/// One log entry of a data group: one accepted publish batch, or
/// consumer-group commands (leases, settlements) of one member, or a
/// retention trim.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DataCommand {
    /// The group it is for.
    pub group: u64,
    /// The accepted envelopes, in batch order.
    pub records: Vec<DataRecord>,
    /// Consumer-group commands, applied after the records in the same
    /// write. Each carries its group's policy, its time and its random
    /// seed, so every replica applies it alike.
    #[serde(default)]
    pub work: Vec<GroupCommand>,
    /// A retention trim the leader's retention pass planned (then
    /// `records` and `work` are empty). Applying it on every replica
    /// deletes the same range (a stale one, nowhere).
    #[serde(default)]
    pub trim: Option<DataTrim>,
    /// A compaction point (then the rest is empty): every member of the
    /// group held the log up to this index on disk when the leader
    /// proposed it, so each node may delete its log up to it once applied.
    #[serde(default)]
    pub compact: Option<u64>,
}

/// A retention trim as replicated (see [`crate::commit::Trim`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataTrim {
    pub topic: String,
    pub from: u64,
    pub to: u64,
    pub bytes: u64,
    pub freed: Vec<(String, u64)>,
}

impl DataTrim {
    /// The writer's command for this trim.
    pub(crate) fn into_trim(
        self,
        reply: oneshot::Sender<Result<bool, crate::error::StoreError>>,
        raft: Option<(u64, Vec<u8>)>,
    ) -> Trim {
        Trim {
            topic: self.topic,
            from: self.from,
            to: self.to,
            bytes: self.bytes,
            freed: self
                .freed
                .into_iter()
                .map(|(principal, bytes)| (Arc::from(principal), bytes))
                .collect(),
            reply,
            raft,
        }
    }
}

/// What applying one entry gave: the batch's offsets, or why nothing was
/// stored (`Replay`: a seq already used by another envelope); and the
/// outcomes of its consumer-group commands, if it had any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataOutcome {
    pub offsets: Result<Vec<u64>, ErrorCode>,
    pub work: Option<Result<Vec<GroupOutcome>, ErrorCode>>,
    /// For a trim: whether it applied (false: stale).
    pub trimmed: Option<bool>,
}

impl From<Entry> for DataRecord {
    fn from(e: Entry) -> DataRecord {
        DataRecord {
            topic: Arc::from(e.topic),
            record: e.record,
            key_id: e.key_id,
            seq: e.seq,
            leaf: e.leaf,
            principal: e.principal,
        }
    }
}

impl DataRecord {
    /// The writer's entry for this record, applied by data group `group`
    /// (whose replay marks it moves).
    fn into_entry(self, group: u64) -> Entry {
        Entry {
            replay: crate::replay::replay_key(&self.key_id, group),
            topic: String::from(&*self.topic),
            record: self.record,
            key_id: self.key_id,
            seq: self.seq,
            leaf: self.leaf,
            principal: self.principal,
        }
    }
}

/// The applied log id and membership of a data group, stored with the
/// messages (see [`Store::raft_applied`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DataApplied {
    pub last_applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, NodeAddr>,
}

/// A data group's state machine: the node's message store, written by the
/// group-commit writer.
#[derive(Clone)]
pub(crate) struct DataMachine {
    group: u64,
    commits: mpsc::Sender<Command>,
    applied: DataApplied,
    /// The group's log database (where the snapshot mark is kept).
    log: Arc<DB>,
    /// The highest compaction point applied here (0: none yet).
    compact: Arc<watch::Sender<u64>>,
}

fn io(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

impl DataMachine {
    /// The machine of `group`, its applied state read from `store`; `log`
    /// is the group's log database, where its snapshot mark is kept; each
    /// compaction point it applies is sent on `compact`.
    pub(crate) fn load(
        group: u64,
        store: &Store,
        commits: mpsc::Sender<Command>,
        log: Arc<DB>,
        compact: Arc<watch::Sender<u64>>,
    ) -> Result<DataMachine, StorageError> {
        let applied = match store.raft_applied(group).map_err(io)? {
            Some(bytes) => decode(&bytes)?,
            None => DataApplied::default(),
        };
        Ok(DataMachine {
            group,
            commits,
            applied,
            log,
            compact,
        })
    }
}

/// A snapshot as openraft sees it: the mark's meta, and the applied state
/// as its data (there are no messages in it).
fn marked(
    meta: SnapshotMeta<u64, NodeAddr>,
    applied: &DataApplied,
) -> Result<Snapshot<Data>, StorageError> {
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(encode(applied)?)),
    })
}

impl RaftSnapshotBuilder<Data> for DataMachine {
    /// Records a snapshot mark at the applied log id: what lets openraft
    /// delete the log up to a compaction point (the applied state is in
    /// the message store already, written with the messages).
    async fn build_snapshot(&mut self) -> Result<Snapshot<Data>, StorageError> {
        let last = self.applied.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.applied.membership.clone(),
            snapshot_id: snapshot_id(last),
        };
        let cf = self
            .log
            .cf_handle(SM)
            .ok_or_else(|| io("column family sm missing"))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(&cf, MARK, encode(&meta)?);
        write_synced(&self.log, batch)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        marked(meta, &self.applied)
    }
}

/// What waits for one applied entry's outcome.
enum Answer {
    /// Nothing to answer (blank, membership, another group's).
    Nothing,
    /// A write's offsets, and its group commands' outcomes.
    Written(
        oneshot::Receiver<crate::commit::CommitReply>,
        Option<oneshot::Receiver<Result<Vec<GroupOutcome>, ErrorCode>>>,
    ),
    /// A trim: whether it applied (false: stale).
    Trimmed(bool),
}

impl DataMachine {
    /// Writes `requests` (maybe none) with the group's applied state
    /// `applied`, in one write; the state becomes this machine's.
    async fn write(
        &mut self,
        requests: Vec<CommitRequest>,
        applied: &DataApplied,
    ) -> Result<(), StorageError> {
        let (done, written) = oneshot::channel();
        let command = Command::Replicated(Replicated {
            group: self.group,
            requests,
            applied: encode(applied)?,
            done,
        });
        self.commits
            .send(command)
            .await
            .map_err(|_| io("the commit writer stopped"))?;
        if !matches!(written.await, Ok(true)) {
            return Err(io("the replicated write failed"));
        }
        self.applied = applied.clone();
        Ok(())
    }

    /// Applies a retention trim with the applied state after its entry.
    async fn trim(&mut self, trim: DataTrim, applied: &DataApplied) -> Result<bool, StorageError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Trim(trim.into_trim(reply, Some((self.group, encode(applied)?))));
        self.commits
            .send(command)
            .await
            .map_err(|_| io("the commit writer stopped"))?;
        let trimmed = match answer.await {
            Ok(Ok(trimmed)) => trimmed,
            _ => return Err(io("the replicated trim failed")),
        };
        self.applied = applied.clone();
        Ok(trimmed)
    }
}

impl RaftStateMachine<Data> for DataMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, NodeAddr>), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<DataOutcome>, StorageError>
    where
        I: IntoIterator<Item = DataEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.applied.clone();
        let mut requests = Vec::new();
        let mut answers = Vec::new();
        let mut compact = None;
        for entry in entries {
            let before = applied.clone();
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Normal(command) if command.group == self.group => {
                    if let Some(point) = command.compact {
                        compact = compact.max(Some(point));
                        answers.push(Answer::Nothing);
                        continue;
                    }
                    if let Some(trim) = command.trim {
                        // What came before is written first, then the
                        // trim with the applied state after it.
                        if !requests.is_empty() {
                            self.write(std::mem::take(&mut requests), &before).await?;
                        }
                        let trimmed = self.trim(trim, &applied).await?;
                        answers.push(Answer::Trimmed(trimmed));
                        continue;
                    }
                    let (reply, answer) = oneshot::channel();
                    let (work, worked) = if command.work.is_empty() {
                        (None, None)
                    } else {
                        let (reply, worked) = oneshot::channel();
                        let commands = command.work;
                        (Some(GroupWork { commands, reply }), Some(worked))
                    };
                    requests.push(CommitRequest {
                        entries: command
                            .records
                            .into_iter()
                            .map(|r| r.into_entry(self.group))
                            .collect(),
                        reply,
                        reserved: Reservation::default(),
                        group: work,
                    });
                    answers.push(Answer::Written(answer, worked));
                }
                EntryPayload::Normal(_) => answers.push(Answer::Nothing),
                EntryPayload::Blank => answers.push(Answer::Nothing),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    answers.push(Answer::Nothing);
                }
            }
        }
        self.write(requests, &applied).await?;
        if let Some(point) = compact {
            // Applied (and the applied state on disk): the node may now
            // delete its log up to the point.
            self.compact.send_if_modified(|at| {
                let later = point > *at;
                *at = (*at).max(point);
                later
            });
        }
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            let nothing = DataOutcome {
                offsets: Ok(Vec::new()),
                work: None,
                trimmed: None,
            };
            outcomes.push(match answer {
                Answer::Written(answer, worked) => DataOutcome {
                    offsets: answer.await.unwrap_or(Err(ErrorCode::Unavailable)),
                    work: match worked {
                        Some(worked) => Some(worked.await.unwrap_or(Err(ErrorCode::Unavailable))),
                        None => None,
                    },
                    trimmed: None,
                },
                Answer::Trimmed(trimmed) => DataOutcome {
                    trimmed: Some(trimmed),
                    ..nothing
                },
                Answer::Nothing => nothing,
            });
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Refused: openraft sends a snapshot only to a replica lacking
    /// entries every member had when they were compacted, i.e. one that
    /// lost its disk, and a mark holds no messages to install.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeAddr>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        tracing::error!(
            group = self.group,
            snapshot = %meta.snapshot_id,
            applied = ?self.applied.last_applied,
            "data group: this replica lacks log entries the group has compacted away \
             (its disk was lost or replaced); a compacted log cannot rebuild it"
        );
        Err(StorageIOError::read_snapshot(
            Some(meta.signature()),
            &std::io::Error::other(format!(
                "data group {}: this replica lacks log entries the group compacted away",
                self.group
            )),
        )
        .into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Data>>, StorageError> {
        match read_snapshot_record(&self.log, MARK)? {
            Some(meta) => Ok(Some(marked(meta, &self.applied)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::CommitReply;
    use crate::fanout::Registry;
    use crate::group_writer::Groups;
    use crate::limits::Limits;
    use crate::policy::Policy;
    use crate::quota::Quotas;
    use tokio::sync::watch;

    fn record(topic: &str, seq: u64) -> DataRecord {
        DataRecord {
            topic: topic.into(),
            record: seq.to_be_bytes().to_vec().into(),
            key_id: KeyId([7; 16]),
            seq,
            leaf: Hash([seq as u8; 32]),
            principal: "publisher".into(),
        }
    }

    /// Applies `group`'s `records` (one batch) to the writer of `sender`.
    fn apply(sender: &mpsc::Sender<Command>, group: u64, records: &[DataRecord]) -> CommitReply {
        let (reply, answer) = oneshot::channel();
        let request = CommitRequest {
            entries: records
                .iter()
                .cloned()
                .map(|r| r.into_entry(group))
                .collect(),
            reply,
            reserved: Reservation::default(),
            group: None,
        };
        let (done, written) = oneshot::channel();
        sender
            .blocking_send(Command::Replicated(Replicated {
                group,
                requests: vec![request],
                applied: Vec::new(),
                done,
            }))
            .unwrap();
        assert_eq!(written.blocking_recv(), Ok(true));
        answer.blocking_recv().unwrap()
    }

    /// Two data groups' entries for one signing key, applied in either
    /// order (a replica catching up on one group while the other is
    /// current): the same messages stored. With one mark per key shared
    /// by the groups, the group applied second had its seqs refused as
    /// `Replay` (far below the other group's mark) on one node only.
    #[test]
    fn two_data_groups_store_the_same_whatever_order_a_node_applies_them_in() {
        let payments: Vec<DataRecord> = (1..=3).map(|s| record("payments.a", s)).collect();
        let orders: Vec<DataRecord> = (40_000..40_003).map(|s| record("orders.a", s)).collect();
        let mut held = Vec::new();
        for payments_first in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let (groups, _wake) = Groups::load(&store, None, 16).unwrap();
            let committer = crate::commit::spawn(
                store.clone(),
                Arc::new(Registry::new(&[])),
                Arc::new(Quotas::new(1 << 20)),
                &[],
                &Limits::default(),
                watch::channel(Arc::new(Policy::default())).1,
                groups,
                None,
            )
            .unwrap();
            let sender = committer.sender.clone();
            let order = if payments_first {
                [(1, &payments), (2, &orders)]
            } else {
                [(2, &orders), (1, &payments)]
            };
            for (group, records) in order {
                assert_eq!(
                    apply(&sender, group, records),
                    Ok(vec![0, 1, 2]),
                    "group {group} applied {}",
                    if payments_first { "first" } else { "second" }
                );
            }
            let topics: Vec<(String, u64)> = store
                .load_topics()
                .unwrap()
                .into_iter()
                .map(|t| (t.name, t.next_offset))
                .collect();
            held.push(topics);
            drop(sender);
            drop(committer.sender);
            committer.thread.join().unwrap();
        }
        let mut a = held[0].clone();
        let mut b = held[1].clone();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
}
