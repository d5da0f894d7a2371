//! Where each topic's stored records start, for the store and for
//! RocksDB's compactions.
//!
//! Retention moves a topic's first offset up; the records below it are
//! gone at once for every read (the store answers nothing below a floor)
//! and leave the disk at RocksDB's next compaction of them, through a
//! compaction filter that drops every message key below its topic's
//! floor. This replaced a range tombstone per trim: RocksDB counts the
//! data a tombstone covers into its compaction score, so each trim made
//! it compact the `messages` family early, on the cores publishers use
//! (BENCHMARKS.md "Retention").
//!
//! A floor only rises after the write that moved the topic's first offset
//! is synced (see `commit`), so a crash never leaves a stored first offset
//! below records a compaction already dropped. At open the floors are the
//! stored first offsets.

use crate::message_key::parse_message_key;
use rocksdb::compaction_filter::{CompactionFilter, Decision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};
use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::{Arc, PoisonError, RwLock};

/// First offset per topic id (0 when absent: nothing below).
#[derive(Debug, Default)]
pub struct Floors(RwLock<HashMap<u32, u64>>);

impl Floors {
    /// The first offset of topic `topic_id`.
    pub fn get(&self, topic_id: u32) -> u64 {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.get(&topic_id).copied().unwrap_or(0)
    }

    /// Topic `topic_id` starts at `first` now (a floor never goes down).
    pub fn raise(&self, topic_id: u32, first: u64) {
        if first == 0 || self.get(topic_id) >= first {
            return;
        }
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let floor = map.entry(topic_id).or_insert(0);
        *floor = (*floor).max(first);
    }

    fn snapshot(&self) -> HashMap<u32, u64> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Makes one [`BelowFloor`] filter per compaction, with the floors as
/// they are when it starts (floors only rise, so an older copy drops
/// less, never more).
pub struct BelowFloorFactory(pub Arc<Floors>);

impl CompactionFilterFactory for BelowFloorFactory {
    type Filter = BelowFloor;

    fn create(&mut self, _context: CompactionFilterContext) -> BelowFloor {
        BelowFloor(self.0.snapshot())
    }

    fn name(&self) -> &CStr {
        c"signet-below-floor"
    }
}

/// Drops the message keys below their topic's floor.
pub struct BelowFloor(HashMap<u32, u64>);

impl BelowFloor {
    fn drops(&self, key: &[u8]) -> bool {
        parse_message_key(key)
            .is_some_and(|(topic_id, offset)| self.0.get(&topic_id).is_some_and(|&f| offset < f))
    }
}

impl CompactionFilter for BelowFloor {
    fn filter(&mut self, _level: u32, key: &[u8], _value: &[u8]) -> Decision {
        if self.drops(key) {
            Decision::Remove
        } else {
            Decision::Keep
        }
    }

    fn name(&self) -> &CStr {
        c"signet-below-floor"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message_key::message_key;

    #[test]
    fn a_floor_only_rises_and_drops_only_its_topics_keys_below_it() {
        let floors = Floors::default();
        floors.raise(1, 10);
        floors.raise(1, 4);
        assert_eq!(floors.get(1), 10);
        assert_eq!(floors.get(2), 0);
        let filter = BelowFloor(floors.snapshot());
        assert!(filter.drops(&message_key(1, 9)));
        assert!(!filter.drops(&message_key(1, 10)));
        assert!(!filter.drops(&message_key(2, 0)));
        assert!(!filter.drops(b"not a message key"));
    }
}
