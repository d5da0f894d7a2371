//! Durable storage in RocksDB.
//!
//! Column families:
//! - `messages`: topic id (u32 BE) ‖ offset (u64 BE) → stored record bytes;
//! - `topics`: topic name → topic id (u32 BE);
//! - `replay`: key id → highest accepted seq (u64 BE);
//! - `usage`: principal → stored record bytes (the stored-bytes quota);
//! - `subs`: consumer-group state (group markers and per-topic cursors);
//! - `topic_meta`: topic id → first offset (u64 BE) ‖ stored record bytes
//!   (u64 BE): retention moves the first offset up, offsets are never reused;
//! - `key_owners`: key id → the principal whose bytes its records count as;
//! - `published`: key id ‖ seq (u64 BE) → offset (u64 BE) ‖ leaf hash (32
//!   bytes), for the last `idempotency_window_seqs_max` seqs of each key
//!   (idempotent publish).
//!
//! Only the group-commit writer ([`crate::commit`]) writes, always with
//! `sync = true`; readers read ranges by offset.

use crate::error::{BrokerError, StoreError};
use crate::floors::{BelowFloorFactory, Floors};
use crate::message_key::parse_message_key;
pub use crate::message_key::{MESSAGE_KEY_BYTES, message_key};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions,
    WriteBatch, WriteOptions,
};
use signet_proto::KeyId;
use signet_proto::frame::Delivery;
use signet_proto::merkle::Hash;
use std::path::Path;
use std::sync::Arc;

/// Messages by topic id and offset.
pub const CF_MESSAGES: &str = "messages";
/// Topic name → topic id.
pub const CF_TOPICS: &str = "topics";
/// Signing key id → highest accepted seq.
pub const CF_REPLAY: &str = "replay";
/// Principal → stored bytes.
pub const CF_USAGE: &str = "usage";
/// Consumer-group state (see [`crate::group_writer`]).
pub const CF_SUBS: &str = "subs";
/// Topic id → first offset ‖ stored bytes.
pub const CF_TOPIC_META: &str = "topic_meta";
/// Signing key id → principal.
pub const CF_KEY_OWNERS: &str = "key_owners";

/// Signing key id ‖ seq → offset ‖ leaf hash of the stored envelope.
pub const CF_PUBLISHED: &str = "published";

/// Every column family (a tool opening the database must name them all).
pub const FAMILIES: [&str; 8] = [
    CF_MESSAGES,
    CF_TOPICS,
    CF_REPLAY,
    CF_USAGE,
    CF_SUBS,
    CF_TOPIC_META,
    CF_KEY_OWNERS,
    CF_PUBLISHED,
];

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The `published` key of `seq` of signing key `key`.
fn published_key(key: &KeyId, seq: u64) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..16].copy_from_slice(&key.0);
    out[16..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// A topic as found on disk at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTopic {
    /// Topic name.
    pub name: String,
    /// Its numeric id in message keys.
    pub id: u32,
    /// Its oldest offset still stored (0 until retention removed some).
    pub first_offset: u64,
    /// The offset the next message will get.
    pub next_offset: u64,
    /// Record bytes stored.
    pub bytes: u64,
}

/// The RocksDB database.
pub struct Store {
    db: DB,
    /// Each topic's first offset: nothing below it is read, and
    /// compactions drop it.
    floors: Arc<Floors>,
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, BrokerError> {
        // Created for the broker's user only; an existing folder is left as it is.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(|source| BrokerError::Read {
                path: dir.to_owned(),
                source,
            })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        let floors = Arc::new(Floors::default());
        let families = FAMILIES.iter().map(|name| {
            let mut family = Options::default();
            if *name == CF_MESSAGES {
                family.set_compaction_filter_factory(BelowFloorFactory(floors.clone()));
            }
            ColumnFamilyDescriptor::new(*name, family)
        });
        let db = DB::open_cf_descriptors(&opts, dir, families).map_err(StoreError::from)?;
        let store = Store { db, floors };
        store.load_floors()?;
        Ok(store)
    }

    /// The floors are the stored first offsets.
    fn load_floors(&self) -> Result<(), StoreError> {
        for item in self
            .db
            .iterator_cf(self.cf(CF_TOPIC_META)?, IteratorMode::Start)
        {
            let (id, meta) = item?;
            if let (Ok(id), Some(first)) = (
                <[u8; 4]>::try_from(id.as_ref()),
                meta.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
            ) {
                self.floors
                    .raise(u32::from_be_bytes(id), u64::from_be_bytes(first));
            }
        }
        Ok(())
    }

    /// Topic `topic_id` starts at `first` now: what is below is not read
    /// any more and leaves the disk at RocksDB's next compaction of it.
    /// Only once the write that moved the first offset is synced.
    pub fn raise_floor(&self, topic_id: u32, first: u64) {
        self.floors.raise(topic_id, first);
    }

    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or(StoreError::MissingFamily(name))
    }

    /// Every topic with its id and next offset.
    pub fn load_topics(&self) -> Result<Vec<StoredTopic>, StoreError> {
        let topics = self.cf(CF_TOPICS)?;
        let corrupt = |what| StoreError::Corrupt {
            family: CF_TOPICS,
            what,
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(topics, IteratorMode::Start) {
            let (name, id) = item?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| corrupt("topic name"))?;
            let id: [u8; 4] = id.as_ref().try_into().map_err(|_| corrupt("topic id"))?;
            let id = u32::from_be_bytes(id);
            let last = self.last_offset(id)?.map_or(0, |o| o + 1);
            let (first_offset, bytes) = match self.topic_meta(id)? {
                Some(meta) => meta,
                // Written by a broker before retention: count once.
                None => self.scan_topic(id, last)?,
            };
            // A topic whose every message retention (or its work-queue
            // group) deleted has no last record: its next offset is its
            // first (offsets are never reused).
            let next_offset = last.max(first_offset);
            out.push(StoredTopic {
                name,
                id,
                first_offset,
                next_offset,
                bytes,
            });
        }
        Ok(out)
    }

    fn topic_meta(&self, topic_id: u32) -> Result<Option<(u64, u64)>, StoreError> {
        let Some(v) = self
            .db
            .get_pinned_cf(self.cf(CF_TOPIC_META)?, topic_id.to_be_bytes())?
        else {
            return Ok(None);
        };
        let v: &[u8; 16] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            family: CF_TOPIC_META,
            what: "topic meta",
        })?;
        let (first, bytes) = v.split_at(8);
        let u = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
        Ok(Some((u(first), u(bytes))))
    }

    /// The first offset and the record bytes of a topic, by reading it.
    fn scan_topic(&self, topic_id: u32, end: u64) -> Result<(u64, u64), StoreError> {
        let messages = self.cf(CF_MESSAGES)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(message_key(topic_id, end).to_vec());
        let start = message_key(topic_id, 0);
        let mut first = None;
        let mut bytes = 0u64;
        let iter = self.db.iterator_cf_opt(
            messages,
            opts,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            match parse_message_key(&key) {
                Some((tid, offset)) if tid == topic_id => {
                    first.get_or_insert(offset);
                    bytes = bytes.saturating_add(value.len() as u64);
                }
                _ => break,
            }
        }
        Ok((first.unwrap_or(end), bytes))
    }

    fn last_offset(&self, topic_id: u32) -> Result<Option<u64>, StoreError> {
        let messages = self.cf(CF_MESSAGES)?;
        let upper = message_key(topic_id, u64::MAX);
        let mut iter = self
            .db
            .iterator_cf(messages, IteratorMode::From(&upper, Direction::Reverse));
        match iter.next() {
            Some(item) => {
                let (key, _) = item?;
                Ok(parse_message_key(&key)
                    .filter(|(tid, _)| *tid == topic_id)
                    .map(|(_, o)| o))
            }
            None => Ok(None),
        }
    }

    /// The highest accepted seq of a signing key, if any.
    pub fn replay_mark(&self, key: &KeyId) -> Result<Option<u64>, StoreError> {
        self.read_u64(CF_REPLAY, &key.0)
    }

    /// A big-endian `u64` value, if the key is present.
    fn read_u64(&self, family: &'static str, key: &[u8]) -> Result<Option<u64>, StoreError> {
        match self.db.get_pinned_cf(self.cf(family)?, key)? {
            Some(v) => {
                let v: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    family,
                    what: "u64 value",
                })?;
                Ok(Some(u64::from_be_bytes(v)))
            }
            None => Ok(None),
        }
    }

    /// Stored messages of topic `topic_id` from offset `from` up to (not
    /// including) `end`: at most `count_max` of them, and records of at
    /// most `bytes_max` bytes together, except that a chunk always holds
    /// its first record (so one record larger than the budget goes alone).
    /// A record that would take the chunk past the budget is left for the
    /// next one: a chunk is never the budget plus one large record.
    pub fn read_range(
        &self,
        topic_id: u32,
        from: u64,
        end: u64,
        count_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut out = Vec::new();
        self.scan_range(
            topic_id,
            from,
            end,
            count_max,
            bytes_max,
            |offset, record| {
                out.push(Delivery {
                    offset,
                    record: record.to_vec(),
                });
                Ok(true)
            },
        )?;
        Ok(out)
    }

    /// Visits the stored records of topic `topic_id` from `from` up to
    /// `end` in offset order, without copying them, within the same
    /// budget as [`Store::read_range`]; stops early when `visit` returns
    /// `false`. Retention reads only each record's length and head this way.
    pub fn scan_range(
        &self,
        topic_id: u32,
        from: u64,
        end: u64,
        count_max: usize,
        bytes_max: usize,
        mut visit: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let messages = self.cf(CF_MESSAGES)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(message_key(topic_id, end).to_vec());
        let mut iter = self.db.raw_iterator_cf_opt(messages, opts);
        iter.seek(message_key(topic_id, from.max(self.floors.get(topic_id))));
        let (mut count, mut bytes) = (0usize, 0usize);
        while iter.valid() {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            let Some((tid, offset)) = parse_message_key(key) else {
                break;
            };
            if tid != topic_id || offset >= end {
                break;
            }
            if count > 0 && bytes.saturating_add(value.len()) > bytes_max {
                break;
            }
            bytes = bytes.saturating_add(value.len());
            count += 1;
            if !visit(offset, value)? {
                return Ok(());
            }
            if count >= count_max || bytes >= bytes_max {
                break;
            }
            iter.next();
        }
        iter.status()?;
        Ok(())
    }

    /// Adds a message to a write batch.
    pub fn put_message(
        &self,
        batch: &mut WriteBatch,
        topic_id: u32,
        offset: u64,
        record: &[u8],
    ) -> Result<(), StoreError> {
        batch.put_cf(self.cf(CF_MESSAGES)?, message_key(topic_id, offset), record);
        Ok(())
    }

    /// Adds a new topic to a write batch.
    pub fn put_topic(
        &self,
        batch: &mut WriteBatch,
        name: &str,
        topic_id: u32,
    ) -> Result<(), StoreError> {
        batch.put_cf(self.cf(CF_TOPICS)?, name.as_bytes(), topic_id.to_be_bytes());
        Ok(())
    }

    /// Where the envelope of `key` and `seq` was stored, and its leaf hash,
    /// if that seq is still in the idempotency window.
    pub fn published(&self, key: &KeyId, seq: u64) -> Result<Option<(u64, Hash)>, StoreError> {
        let Some(value) = self
            .db
            .get_pinned_cf(self.cf(CF_PUBLISHED)?, published_key(key, seq))?
        else {
            return Ok(None);
        };
        let corrupt = StoreError::Corrupt {
            family: CF_PUBLISHED,
            what: "offset and leaf hash",
        };
        let value: &[u8; 40] = value.as_ref().try_into().map_err(|_| corrupt)?;
        let (offset, leaf) = value.split_at(8);
        let offset = u64::from_be_bytes(offset.try_into().map_err(|_| StoreError::Corrupt {
            family: CF_PUBLISHED,
            what: "offset",
        })?);
        let leaf: [u8; 32] = leaf.try_into().map_err(|_| StoreError::Corrupt {
            family: CF_PUBLISHED,
            what: "leaf hash",
        })?;
        Ok(Some((offset, Hash(leaf))))
    }

    /// Adds where an envelope was stored to a write batch.
    pub fn put_published(
        &self,
        batch: &mut WriteBatch,
        key: &KeyId,
        seq: u64,
        offset: u64,
        leaf: &Hash,
    ) -> Result<(), StoreError> {
        let mut value = [0u8; 40];
        value[..8].copy_from_slice(&offset.to_be_bytes());
        value[8..].copy_from_slice(&leaf.0);
        batch.put_cf(self.cf(CF_PUBLISHED)?, published_key(key, seq), value);
        Ok(())
    }

    /// Adds the removal of `key`'s entries for seqs below `below` to a
    /// write batch (one range deletion).
    pub fn forget_published_below(
        &self,
        batch: &mut WriteBatch,
        key: &KeyId,
        below: u64,
    ) -> Result<(), StoreError> {
        batch.delete_range_cf(
            self.cf(CF_PUBLISHED)?,
            published_key(key, 0),
            published_key(key, below),
        );
        Ok(())
    }

    /// Adds a replay mark to a write batch.
    pub fn put_replay_mark(
        &self,
        batch: &mut WriteBatch,
        key: &KeyId,
        seq: u64,
    ) -> Result<(), StoreError> {
        batch.put_cf(self.cf(CF_REPLAY)?, key.0, seq.to_be_bytes());
        Ok(())
    }

    /// Adds a topic's first offset and stored bytes to a write batch.
    pub fn put_topic_meta(
        &self,
        batch: &mut WriteBatch,
        topic_id: u32,
        first: u64,
        bytes: u64,
    ) -> Result<(), StoreError> {
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&first.to_be_bytes());
        value[8..].copy_from_slice(&bytes.to_be_bytes());
        batch.put_cf(self.cf(CF_TOPIC_META)?, topic_id.to_be_bytes(), value);
        Ok(())
    }

    /// Adds the deletion of one message to a write batch.
    pub fn delete_message(
        &self,
        batch: &mut WriteBatch,
        topic_id: u32,
        offset: u64,
    ) -> Result<(), StoreError> {
        batch.delete_cf(self.cf(CF_MESSAGES)?, message_key(topic_id, offset));
        Ok(())
    }

    /// The principal a signing key's records count for, if recorded.
    pub fn key_owner(&self, key: &KeyId) -> Result<Option<String>, StoreError> {
        match self.db.get_pinned_cf(self.cf(CF_KEY_OWNERS)?, key.0)? {
            Some(v) => String::from_utf8(v.to_vec())
                .map(Some)
                .map_err(|_| StoreError::Corrupt {
                    family: CF_KEY_OWNERS,
                    what: "principal name",
                }),
            None => Ok(None),
        }
    }

    /// Adds a key's owner to a write batch.
    pub fn put_key_owner(
        &self,
        batch: &mut WriteBatch,
        key: &KeyId,
        principal: &str,
    ) -> Result<(), StoreError> {
        batch.put_cf(self.cf(CF_KEY_OWNERS)?, key.0, principal.as_bytes());
        Ok(())
    }

    /// Flushes and compacts the messages, so deleted ranges leave the disk.
    pub fn compact_messages(&self) -> Result<(), StoreError> {
        let messages = self.cf(CF_MESSAGES)?;
        self.db.flush_cf(messages)?;
        self.db
            .compact_range_cf(messages, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Bytes the messages take in RocksDB's files on disk.
    pub fn messages_disk_bytes(&self) -> Result<u64, StoreError> {
        Ok(self
            .db
            .property_int_value_cf(self.cf(CF_MESSAGES)?, "rocksdb.total-sst-files-size")?
            .unwrap_or(0))
    }

    /// Payload bytes stored for a principal (0 if none).
    pub fn usage(&self, principal: &str) -> Result<u64, StoreError> {
        Ok(self.read_u64(CF_USAGE, principal.as_bytes())?.unwrap_or(0))
    }

    /// Adds a principal's stored-bytes total to a write batch.
    pub fn put_usage(
        &self,
        batch: &mut WriteBatch,
        principal: &str,
        bytes: u64,
    ) -> Result<(), StoreError> {
        batch.put_cf(
            self.cf(CF_USAGE)?,
            principal.as_bytes(),
            bytes.to_be_bytes(),
        );
        Ok(())
    }

    /// One stored record, if present.
    pub fn message(&self, topic_id: u32, offset: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if offset < self.floors.get(topic_id) {
            return Ok(None);
        }
        Ok(self
            .db
            .get_cf(self.cf(CF_MESSAGES)?, message_key(topic_id, offset))?)
    }

    /// Every key and value of the consumer-group family.
    pub fn group_entries(&self) -> Result<Vec<KeyValue>, StoreError> {
        let family = self.cf(CF_SUBS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(family, IteratorMode::Start) {
            let (key, value) = item?;
            out.push((key.into_vec(), value.into_vec()));
        }
        Ok(out)
    }

    /// Adds a consumer-group key and value to a write batch.
    pub fn put_group_entry(
        &self,
        batch: &mut WriteBatch,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StoreError> {
        batch.put_cf(self.cf(CF_SUBS)?, key, value);
        Ok(())
    }

    /// The key of a cluster data group's applied state, in the replay
    /// family (never a key id: those are 16 bytes).
    fn raft_applied_key(group: u64) -> Vec<u8> {
        let mut key = b"cluster/data-applied/".to_vec();
        key.extend_from_slice(&group.to_be_bytes());
        key
    }

    /// A cluster data group's applied state (log id and membership), as
    /// written with the messages it applied.
    pub fn raft_applied(&self, group: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .get_cf(self.cf(CF_REPLAY)?, Self::raft_applied_key(group))?)
    }

    /// Adds a cluster data group's applied state to a write batch.
    pub fn put_raft_applied(
        &self,
        batch: &mut WriteBatch,
        group: u64,
        applied: &[u8],
    ) -> Result<(), StoreError> {
        batch.put_cf(self.cf(CF_REPLAY)?, Self::raft_applied_key(group), applied);
        Ok(())
    }

    /// Writes a batch and syncs it to disk before returning.
    pub fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        Ok(self.db.write_opt(batch, &opts)?)
    }

    /// Writes `batch` atomically to the write-ahead log without waiting
    /// for the disk: a crash may lose it whole (never part of it). Only
    /// for writes that can be made again (a cluster's applied entries,
    /// which its Raft log holds).
    pub fn write_unsynced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        Ok(self.db.write_opt(batch, &WriteOptions::default())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_by_topic_then_offset() {
        assert!(message_key(1, u64::MAX) < message_key(2, 0));
        assert!(message_key(1, 255) < message_key(1, 256));
        assert_eq!(parse_message_key(&message_key(7, 9)), Some((7, 9)));
    }

    #[test]
    fn topics_offsets_and_replay_marks_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut batch = WriteBatch::default();
            store.put_topic(&mut batch, "a.b", 1).unwrap();
            for offset in 0..3 {
                store.put_message(&mut batch, 1, offset, b"rec").unwrap();
            }
            store
                .put_replay_mark(&mut batch, &KeyId([1; 16]), 41)
                .unwrap();
            store.put_usage(&mut batch, "alice", 300).unwrap();
            store.write_synced(batch).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.load_topics().unwrap(),
            vec![StoredTopic {
                name: "a.b".into(),
                id: 1,
                first_offset: 0,
                next_offset: 3,
                bytes: 9,
            }]
        );
        assert_eq!(store.replay_mark(&KeyId([1; 16])).unwrap(), Some(41));
        assert_eq!(store.replay_mark(&KeyId([2; 16])).unwrap(), None);
        assert_eq!(store.usage("alice").unwrap(), 300);
        assert_eq!(store.usage("bob").unwrap(), 0);
        let range = store.read_range(1, 1, 3, 10, 1 << 20).unwrap();
        assert_eq!(
            range.iter().map(|d| d.offset).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(store.read_range(1, 0, 3, 1, 1 << 20).unwrap().len(), 1);
    }

    #[test]
    fn a_topic_emptied_by_retention_keeps_its_next_offset_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut batch = WriteBatch::default();
            store.put_topic(&mut batch, "t", 1).unwrap();
            for offset in 0..3 {
                store.put_message(&mut batch, 1, offset, b"rec").unwrap();
            }
            store.write_synced(batch).unwrap();
            let mut batch = WriteBatch::default();
            store.delete_message(&mut batch, 1, 2).unwrap();
            store.put_topic_meta(&mut batch, 1, 3, 0).unwrap();
            store.write_synced(batch).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let t = &store.load_topics().unwrap()[0];
        assert_eq!((t.first_offset, t.next_offset, t.bytes), (3, 3, 0));
    }

    #[test]
    fn records_below_the_floor_are_never_read_and_leave_at_compaction() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut batch = WriteBatch::default();
            store.put_topic(&mut batch, "t", 1).unwrap();
            store.put_topic(&mut batch, "u", 2).unwrap();
            for offset in 0..5 {
                store.put_message(&mut batch, 1, offset, b"rec").unwrap();
                store.put_message(&mut batch, 2, offset, b"rec").unwrap();
            }
            store.write_synced(batch).unwrap();
            let mut batch = WriteBatch::default();
            store.put_topic_meta(&mut batch, 1, 3, 6).unwrap();
            store.write_synced(batch).unwrap();
            store.raise_floor(1, 3);
            assert_eq!(store.message(1, 2).unwrap(), None);
            assert!(store.message(1, 3).unwrap().is_some());
            assert!(
                store.message(2, 0).unwrap().is_some(),
                "other topics keep theirs"
            );
            let read: Vec<u64> = store
                .read_range(1, 0, 5, 100, 1 << 20)
                .unwrap()
                .iter()
                .map(|d| d.offset)
                .collect();
            assert_eq!(read, [3, 4]);
        }
        // After a restart the floor is the stored first offset, and a
        // compaction drops what is below it.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.message(1, 0).unwrap(), None);
        store.compact_messages().unwrap();
        let messages = store.cf(CF_MESSAGES).unwrap();
        let keys: Vec<(u32, u64)> = store
            .db
            .iterator_cf(messages, IteratorMode::Start)
            .map(|item| parse_message_key(&item.unwrap().0).unwrap())
            .collect();
        let mut expected = vec![(1, 3), (1, 4)];
        expected.extend((0..5).map(|o| (2, o)));
        assert_eq!(keys, expected);
    }

    #[test]
    fn a_chunk_stops_before_a_record_that_would_pass_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        store.put_topic(&mut batch, "t", 1).unwrap();
        for (offset, len) in [(0, 60), (1, 300), (2, 30), (3, 30)] {
            store
                .put_message(&mut batch, 1, offset, &vec![0u8; len])
                .unwrap();
        }
        store.write_synced(batch).unwrap();
        let offsets = |from| -> Vec<u64> {
            store
                .read_range(1, from, 4, 10, 100)
                .unwrap()
                .iter()
                .map(|d| d.offset)
                .collect()
        };
        // 60 + 300 would pass 100: the large record waits for its own chunk.
        assert_eq!(offsets(0), [0]);
        assert_eq!(
            offsets(1),
            [1],
            "one record larger than the budget goes alone"
        );
        assert_eq!(offsets(2), [2, 3]);
    }
}
