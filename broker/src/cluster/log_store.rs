//! The metadata group's Raft log and vote in RocksDB (its own database,
//! `<data_dir>/cluster-meta`, apart from the messages): column family
//! `log` (index u64 BE → MessagePack entry), `raft` (vote, committed,
//! last purged) and `sm` (the applied state, see
//! [`super::state_machine`]). Every write is synced before openraft is
//! told it is done, so an append acknowledged to a leader is on disk:
//! an append is written at once (readable) and synced by the group's
//! [`Syncer`] thread, one sync for every append queued meanwhile, so
//! openraft's task goes on replicating while the disk works.
//!
//! The latest entries appended stay decoded in memory too ([`Recent`], up
//! to [`RECENT_BYTES_MAX`] of encoded bytes per group): openraft reads each
//! entry back once per follower to replicate it and once more to apply it,
//! and those reads are served from there without touching RocksDB or
//! decoding MessagePack again. The disk stays the truth: an entry is held
//! in memory once written, and dropped once truncated or purged there.

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
use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

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
    let mut out = Vec::new();
    encode_into(&mut out, value)?;
    Ok(out)
}

/// [`encode`] into `out`, cleared first (its allocation is reused).
fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), StorageIOError<u64>> {
    out.clear();
    rmp_serde::encode::write_named(out, value).map_err(|e| StorageIOError::write(&e))
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

/// Encoded bytes of the latest entries a group keeps decoded in memory
/// ([`Recent`]): 32 MiB, about a hundred full publish batches of 256-byte
/// messages, so replication and apply read from memory unless a follower
/// lags further than that.
pub(crate) const RECENT_BYTES_MAX: usize = 32 << 20;

/// The latest entries appended, decoded: a suffix of the log with no gap
/// (`first` is the index of the front one), at most [`RECENT_BYTES_MAX`]
/// of encoded bytes (the last entry stays even if larger).
struct Recent<E> {
    entries: VecDeque<(E, usize)>,
    first: u64,
    bytes: usize,
}

impl<E: Clone> Recent<E> {
    fn new() -> Recent<E> {
        Recent {
            entries: VecDeque::new(),
            first: 0,
            bytes: 0,
        }
    }

    /// The index after the last entry held.
    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Adds the entry at `index` (`size` bytes encoded). An entry that
    /// does not follow the last one held replaces what is held from its
    /// index on (or everything, after a gap).
    fn push(&mut self, index: u64, entry: E, size: usize) {
        if index < self.end() {
            self.truncate(index);
        }
        if self.entries.is_empty() || index != self.end() {
            self.entries.clear();
            self.bytes = 0;
            self.first = index;
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.bytes > RECENT_BYTES_MAX && self.entries.len() > 1 {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
                self.first += 1;
            }
        }
    }

    /// Drops the entries from `index` on.
    fn truncate(&mut self, index: u64) {
        while self.end() > index.max(self.first) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Drops the entries up to `index` included.
    fn purge(&mut self, index: u64) {
        while self.first <= index {
            let Some((_, size)) = self.entries.pop_front() else {
                self.first = index.saturating_add(1);
                break;
            };
            self.bytes -= size;
            self.first += 1;
        }
    }

    /// The entries of `range` from `start`, if every one of them that the
    /// log holds is held here.
    fn get(&self, start: u64, range: &impl RangeBounds<u64>) -> Option<Vec<E>> {
        if self.entries.is_empty() || start < self.first {
            return None;
        }
        let skip = usize::try_from(start - self.first).ok()?;
        Some(
            self.entries
                .iter()
                .skip(skip)
                .zip(start..)
                .take_while(|(_, index)| range.contains(index))
                .map(|((entry, _), _)| entry.clone())
                .collect(),
        )
    }
}

/// The log store of one group (metadata or data, `C`); clones share the
/// database, the latest entries, the commit index and the syncer.
pub(crate) struct LogStore<C: RaftTypeConfig> {
    db: Arc<DB>,
    /// The latest entries appended, decoded.
    recent: Arc<Mutex<Recent<C::Entry>>>,
    /// The highest committed index + 1 (0: none), for status.
    committed: Arc<AtomicU64>,
    /// Appends written and waiting for their sync.
    syncer: std::sync::mpsc::Sender<LogFlushed<C>>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            db: self.db.clone(),
            recent: self.recent.clone(),
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
    openraft::Entry<C>: Serialize + DeserializeOwned + Clone,
{
}

impl<C: Logged> LogStore<C>
where
    C::Entry: Serialize + DeserializeOwned + Clone,
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
            recent: Arc::new(Mutex::new(Recent::new())),
            committed,
            syncer,
        })
    }

    /// The latest entries (a panic elsewhere while holding them leaves
    /// them consistent: every change is a push or pop at an end).
    fn recent(&self) -> std::sync::MutexGuard<'_, Recent<C::Entry>> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
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
    C::Entry: Serialize + DeserializeOwned + Clone,
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
        if let Some(entries) = self.recent().get(start, &range) {
            return Ok(entries);
        }
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
    C::Entry: Serialize + DeserializeOwned + Clone,
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
        let mut appended = Vec::new();
        // One encoding buffer for the append (the batch copies each entry).
        let mut bytes = Vec::new();
        for entry in entries {
            let index = entry.get_log_id().index;
            encode_into(&mut bytes, &entry)?;
            appended.push((index, bytes.len(), entry));
            batch.put_cf(&cf, index_key(index), &bytes);
        }
        // One write for the whole append, readable at once; the syncer
        // tells openraft when it is on disk (before that, a leader does not
        // count it and a follower does not answer its leader).
        if let Err(e) = self.db.write(batch) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(StorageIOError::write_logs(&e).into());
        }
        {
            let mut recent = self.recent();
            for (index, size, entry) in appended {
                recent.push(index, entry, size);
            }
        }
        self.syncer
            .send(callback)
            .map_err(|std::sync::mpsc::SendError(callback)| {
                let e = std::io::Error::other("the raft log syncer stopped");
                let error = StorageIOError::write_logs(&e).into();
                callback.log_io_completed(Err(e));
                error
            })
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        let cf = self.db.cf_handle(LOG).ok_or_else(|| missing(LOG))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&cf, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(&cf, index_key(u64::MAX));
        write_synced(&self.db, batch).map_err(|e| StorageIOError::write_logs(&e))?;
        self.recent().truncate(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        self.put(PURGED, &log_id, true)?;
        let cf = self.db.cf_handle(LOG).ok_or_else(|| missing(LOG))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&cf, index_key(0), index_key(log_id.index.saturating_add(1)));
        write_synced(&self.db, batch).map_err(|e| StorageIOError::write_logs(&e))?;
        self.recent().purge(log_id.index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(recent: &Recent<u64>) -> Vec<u64> {
        recent.entries.iter().map(|(e, _)| *e).collect()
    }

    /// The latest entries stay a gapless suffix of the log through
    /// appends, truncation, purges and the byte bound, and answer a read
    /// only when they hold all of it.
    #[test]
    fn the_latest_entries_stay_a_gapless_suffix_and_answer_only_whole_reads() {
        let mut recent = Recent::new();
        assert_eq!(recent.get(0, &(0..10)), None, "nothing held");
        for i in 5..10 {
            recent.push(i, i, 10);
        }
        assert_eq!(recent.get(5, &(5..8)), Some(vec![5, 6, 7]));
        assert_eq!(recent.get(7, &(7..)), Some(vec![7, 8, 9]));
        assert_eq!(recent.get(10, &(10..)), Some(vec![]), "past the end");
        assert_eq!(recent.get(4, &(4..8)), None, "4 is on disk only");
        // A follower's log is truncated and appended again from 7.
        recent.truncate(7);
        assert_eq!(held(&recent), vec![5, 6]);
        recent.push(7, 70, 10);
        assert_eq!(recent.get(5, &(5..)), Some(vec![5, 6, 70]));
        // An append over held entries replaces them.
        recent.push(6, 60, 10);
        assert_eq!(held(&recent), vec![5, 60]);
        assert_eq!(recent.bytes, 20);
        // A gap starts over.
        recent.push(9, 9, 10);
        assert_eq!((recent.first, held(&recent)), (9, vec![9]));
        recent.purge(9);
        assert_eq!(recent.get(9, &(9..)), None, "purged");
        recent.push(10, 10, 10);
        recent.purge(4);
        assert_eq!(recent.get(10, &(10..11)), Some(vec![10]));
        // The bound drops the oldest, never the last.
        recent.push(11, 11, RECENT_BYTES_MAX);
        assert_eq!((recent.first, held(&recent)), (11, vec![11]));
        recent.push(12, 12, RECENT_BYTES_MAX);
        assert_eq!((recent.first, held(&recent)), (12, vec![12]));
        assert_eq!(recent.bytes, RECENT_BYTES_MAX);
    }
}
