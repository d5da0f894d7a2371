//! The metadata group's Raft log and vote in RocksDB (its own database,
//! `<data_dir>/cluster-meta`, apart from the messages): column family
//! `log` (index u64 BE → MessagePack entry), `raft` (vote, committed,
//! last purged) and `sm` (the applied state, see
//! [`super::state_machine`]). Every write is synced before openraft is
//! told it is done, so an append acknowledged to a leader is on disk:
//! an append is written at once (readable) and synced by the group's
//! [`Syncer`] thread, one sync for every append queued meanwhile, so
//! openraft's task goes on replicating while the disk works.

// openraft's traits fix these error types (StorageError is large).
#![allow(clippy::result_large_err)]

use super::types::StorageError;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    LogId, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig, StorageIOError, Vote,
};
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) const LOG: &str = "log";
pub(crate) const RAFT: &str = "raft";
pub(crate) const SM: &str = "sm";

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

/// Opens (creating) the metadata group's database.
pub(crate) fn open(dir: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let families = [LOG, RAFT, SM]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    Ok(Arc::new(DB::open_cf_descriptors(&options, dir, families)?))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageIOError<u64>> {
    rmp_serde::to_vec_named(value).map_err(|e| StorageIOError::write(&e))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageIOError<u64>> {
    rmp_serde::from_slice(bytes).map_err(|e| StorageIOError::read(&e))
}

fn missing(name: &'static str) -> StorageIOError<u64> {
    StorageIOError::read(&std::io::Error::other(format!(
        "column family {name} missing"
    )))
}

/// A synced write.
pub(crate) fn write_synced(db: &DB, batch: WriteBatch) -> Result<(), rocksdb::Error> {
    let mut options = rocksdb::WriteOptions::default();
    options.set_sync(true);
    db.write_opt(batch, &options)
}

/// Reads the snapshot record under `key` in `db`'s `sm` column family
/// (the metadata group's snapshot, a data group's snapshot mark).
pub(crate) fn read_snapshot_record<T: DeserializeOwned>(
    db: &DB,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    let cf = db.cf_handle(SM).ok_or_else(|| missing(SM))?;
    match db
        .get_cf(&cf, key)
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?
    {
        Some(bytes) => Ok(Some(decode(&bytes)?)),
        None => Ok(None),
    }
}

/// The id of a snapshot at `last` (`<leader id>-<index>`, or `empty`).
pub(crate) fn snapshot_id(last: Option<LogId<u64>>) -> String {
    match last {
        Some(last) => format!("{}-{}", last.leader_id, last.index),
        None => "empty".to_owned(),
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log store of one group (metadata or data, `C`); clones share the
/// database, the commit index and the syncer.
pub(crate) struct LogStore<C: RaftTypeConfig> {
    db: Arc<DB>,
    /// The highest committed index + 1 (0: none), for status.
    committed: Arc<AtomicU64>,
    /// Appends written and waiting for their sync.
    syncer: std::sync::mpsc::Sender<LogFlushed<C>>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            db: self.db.clone(),
            committed: self.committed.clone(),
            syncer: self.syncer.clone(),
        }
    }
}

/// Syncs a group's write-ahead log off openraft's task: waits for an
/// append, takes every other one queued meanwhile, syncs once, and tells
/// openraft each is on disk, in order. Ends when every [`LogStore`] clone
/// is gone.
struct Syncer<C: RaftTypeConfig> {
    db: Arc<DB>,
    queue: std::sync::mpsc::Receiver<LogFlushed<C>>,
}

impl<C: RaftTypeConfig> Syncer<C> {
    fn run(self) {
        while let Ok(first) = self.queue.recv() {
            let mut flushed = vec![first];
            flushed.extend(self.queue.try_iter());
            let synced = self.db.flush_wal(true);
            if let Err(e) = &synced {
                tracing::error!(error = %e, "raft log sync failed");
            }
            for callback in flushed {
                callback.log_io_completed(
                    synced
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| std::io::Error::other(e.to_string())),
                );
            }
        }
    }
}

/// What the log store needs of a group's type configuration.
pub(crate) trait Logged:
    RaftTypeConfig<NodeId = u64, Entry = openraft::Entry<Self>>
{
}

impl<C> Logged for C
where
    C: RaftTypeConfig<NodeId = u64, Entry = openraft::Entry<C>>,
    openraft::Entry<C>: Serialize + DeserializeOwned,
{
}

impl<C: Logged> LogStore<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    /// The store of `db`, with its syncer thread.
    pub(crate) fn new(db: Arc<DB>, committed: Arc<AtomicU64>) -> std::io::Result<LogStore<C>> {
        let (syncer, queue) = std::sync::mpsc::channel();
        let thread = Syncer::<C> {
            db: db.clone(),
            queue,
        };
        std::thread::Builder::new()
            .name("signet-raft-sync".into())
            .spawn(move || thread.run())?;
        Ok(LogStore {
            db,
            committed,
            syncer,
        })
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageIOError<u64>> {
        let cf = self.db.cf_handle(RAFT).ok_or_else(|| missing(RAFT))?;
        match self
            .db
            .get_cf(&cf, key)
            .map_err(|e| StorageIOError::read(&e))?
        {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// A synced write of `value` under `key`, or unsynced when `sync` is
    /// false (a value openraft can do without after a crash).
    fn put<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        sync: bool,
    ) -> Result<(), StorageIOError<u64>> {
        let cf = self.db.cf_handle(RAFT).ok_or_else(|| missing(RAFT))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(&cf, key, encode(value)?);
        let written = if sync {
            write_synced(&self.db, batch)
        } else {
            self.db.write(batch)
        };
        written.map_err(|e| StorageIOError::write(&e))
    }

    fn last_log_id(&self) -> Result<Option<LogId<u64>>, StorageIOError<u64>> {
        let cf = self.db.cf_handle(LOG).ok_or_else(|| missing(LOG))?;
        match self.db.iterator_cf(&cf, IteratorMode::End).next() {
            Some(item) => {
                let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let entry: C::Entry = decode(&value)?;
                Ok(Some(*entry.get_log_id()))
            }
            None => Ok(None),
        }
    }
}

impl<C: Logged> RaftLogReader<C> for LogStore<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self.db.cf_handle(LOG).ok_or_else(|| missing(LOG))?;
        let mut entries = Vec::new();
        let from = index_key(start);
        for item in self
            .db
            .iterator_cf(&cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = key
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|e| StorageIOError::read_logs(&e))?;
            if !range.contains(&index) {
                break;
            }
            entries.push(decode(&value)?);
        }
        Ok(entries)
    }
}

impl<C: Logged> RaftLogStorage<C> for LogStore<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError> {
        let last_purged_log_id: Option<LogId<u64>> = self.get(PURGED)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.put(VOTE, vote, true)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.get(VOTE)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError> {
        // Not synced: a commit index lost in a crash is learnt again from
        // the leader (openraft needs none to restart safely).
        self.put(COMMITTED, &committed, false)?;
        let value = committed.map_or(0, |c| c.index.saturating_add(1));
        self.committed.fetch_max(value, Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError> {
        let committed: Option<Option<LogId<u64>>> = self.get(COMMITTED)?;
        let committed = committed.flatten();
        let value = committed.map_or(0, |c| c.index.saturating_add(1));
        self.committed.fetch_max(value, Ordering::Relaxed);
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.db.cf_handle(LOG).ok_or_else(|| missing(LOG))?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(&cf, index_key(entry.get_log_id().index), encode(&entry)?);
        }
        // One write for the whole append, readable at once; the syncer
        // tells openraft when it is on disk (before that, a leader does not
        // count it and a follower does not answer its leader).
        match self.db.write(batch) {
            Ok(()) => match self.syncer.send(callback) {
                Ok(()) => Ok(()),
                Err(std::sync::mpsc::SendError(callback)) => {
                    let e = std::io::Error::other("the raft log syncer stopped");
                    let error = StorageIOError::write_logs(&e).into();
                    callback.log_io_completed(Err(e));
                    Err(error)
                }
            },
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        let cf = self.db.cf_handle(LOG).ok_or_else(|| missing(LOG))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&cf, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(&cf, index_key(u64::MAX));
        write_synced(&self.db, batch).map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        self.put(PURGED, &log_id, true)?;
        let cf = self.db.cf_handle(LOG).ok_or_else(|| missing(LOG))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&cf, index_key(0), index_key(log_id.index.saturating_add(1)));
        write_synced(&self.db, batch).map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
