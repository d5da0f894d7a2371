//! Replay protection: per signing key, the highest accepted sequence number.
//!
//! The in-memory mark moves when an envelope passes every check (before its
//! commit), so two batches in flight cannot both pass with the same seq. The
//! group-commit writer persists the mark in the same synced write as the
//! messages, so it holds across restarts; a mark is loaded from storage the
//! first time its key is seen.

use crate::error::BrokerError;
use crate::store::Store;
use signet_proto::KeyId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The highest accepted seq per key, shared by all connections.
pub struct ReplayGuard {
    store: Arc<Store>,
    marks: Mutex<HashMap<KeyId, u64>>,
}

/// Exclusive access to the marks while one batch is checked.
pub struct ReplayLock<'a> {
    store: &'a Store,
    marks: MutexGuard<'a, HashMap<KeyId, u64>>,
}

impl ReplayGuard {
    /// A guard backed by `store`.
    pub fn new(store: Arc<Store>) -> ReplayGuard {
        ReplayGuard {
            store,
            marks: Mutex::new(HashMap::new()),
        }
    }

    /// Locks the marks for one batch.
    pub fn lock(&self) -> ReplayLock<'_> {
        ReplayLock {
            store: &self.store,
            marks: self.marks.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

impl ReplayLock<'_> {
    /// The highest accepted seq of `key` (0 when none: seqs start at 1).
    pub fn mark(&mut self, key: &KeyId) -> Result<u64, BrokerError> {
        if let Some(mark) = self.marks.get(key) {
            return Ok(*mark);
        }
        let mark = self.store.replay_mark(key)?.unwrap_or(0);
        self.marks.insert(*key, mark);
        Ok(mark)
    }

    /// Records `seq` as accepted for `key`. The caller checked it is above the mark.
    pub fn accept(&mut self, key: &KeyId, seq: u64) {
        self.marks.insert(*key, seq);
    }
}
