//! Replay protection: per signing key, the highest accepted sequence number.
//!
//! On a single broker the in-memory mark moves when an envelope passes
//! every check (before its commit), so two batches in flight cannot both
//! pass with the same seq. The group-commit writer persists the mark in the
//! same synced write as the messages, so it holds across restarts; a mark
//! is loaded from storage the first time its key is seen. Ingest reads and
//! moves marks through [`ReplayMarks`]; the lock is taken only when the
//! first mark is read, after the signature check, so signature checks run
//! in parallel.
//!
//! On a cluster node ([`Marks::Applied`]) the mark moves only when the data
//! group has applied the seq: a proposal the group refuses or never commits
//! (a leader change) moves nothing, so its retry passes ingest again, and
//! applying answers a retry of an envelope already in the log with its
//! original offset (`commit::Writer::stored_already`). Within one batch,
//! an accepted seq still raises the mark for the envelopes after it.
//!
//! A cluster with several data groups keeps a key's marks per group
//! ([`replay_key`]): each group applies its own log in its own order, so a
//! mark shared by two groups would move in a different order on each
//! node and a replica catching up on one group would refuse what the
//! leader stored. The client's seqs still rise across all its topics, so
//! they rise within each group too.

use crate::error::StoreError;
use crate::ingest::ReplayMarks;
use crate::store::Store;
use signet_proto::KeyId;
use signet_proto::merkle::Hash;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The key a signing key's marks and stored seqs are kept under: the key
/// itself on a single broker (`scope` 0), or, in data group `scope` of a
/// cluster, a 16-byte id derived from the key and the group (SHA-256), so
/// each group's marks and replay index are its own.
pub fn replay_key(key: &KeyId, scope: u64) -> KeyId {
    if scope == 0 {
        return *key;
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"signet replay scope\0");
    ctx.update(&scope.to_be_bytes());
    ctx.update(&key.0);
    let digest = ctx.finish();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest.as_ref()[..16]);
    KeyId(out)
}

/// The highest accepted seq per key, shared by all connections.
pub struct ReplayGuard {
    /// Where marks not yet in memory are read from.
    store: Arc<Store>,
    /// Marks of every key seen since start (only keys bound in the policy
    /// reach this: ingest reads marks after the signature check).
    marks: Mutex<HashMap<KeyId, u64>>,
    /// Seqs below a key's mark whose stored offset is remembered.
    window: u64,
    /// Each cluster data group's term the marks were read under.
    terms: Mutex<HashMap<u64, u64>>,
    /// When a mark moves.
    moves: Marks,
    /// A cluster's data group count (0: a single broker); a topic's marks
    /// are those of the group holding it.
    groups: u64,
}

/// When a key's mark moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marks {
    /// When ingest accepts a seq (a single broker: its own group commit
    /// stores what it is handed, or fails whole and stops the broker's
    /// acks).
    Accepted,
    /// When the cluster's data group applied the seq ([`ReplayGuard::applied`]).
    Applied,
}

/// Access to the marks for one batch: locked on the first read, released
/// when dropped.
pub struct ReplayLock<'a> {
    store: &'a Store,
    window: u64,
    guard: &'a Mutex<HashMap<KeyId, u64>>,
    marks: Option<MutexGuard<'a, HashMap<KeyId, u64>>>,
    moves: Marks,
    groups: u64,
    /// Seqs this batch accepted ([`Marks::Applied`]: not shared).
    batch: HashMap<KeyId, u64>,
}

impl ReplayGuard {
    /// A guard backed by `store`, answering retries of the last `window`
    /// seqs of each key with their stored offsets; `groups` is a cluster's
    /// data group count (0: a single broker).
    pub fn new(store: Arc<Store>, window: u64, moves: Marks, groups: u64) -> ReplayGuard {
        ReplayGuard {
            store,
            marks: Mutex::new(HashMap::new()),
            window,
            terms: Mutex::new(HashMap::new()),
            moves,
            groups,
        }
    }

    /// The key `key`'s marks for `topic` are kept under ([`replay_key`]).
    pub fn scoped(&self, key: &KeyId, topic: &str) -> KeyId {
        scoped(self.groups, key, topic)
    }

    /// The data group applied `seq` of `key` ([`Marks::Applied`]): raises
    /// the mark held in memory, if any (one not held is read from storage,
    /// where applying wrote it).
    pub fn applied(&self, key: &KeyId, seq: u64) {
        if let Ok(mut marks) = self.marks.lock()
            && let Some(mark) = marks.get_mut(key)
        {
            *mark = (*mark).max(seq);
        }
    }

    /// Forgets every mark held in memory; each is read from storage again
    /// on its next use (a cluster node: after a publish the data group
    /// did not commit, or when the group's term changed).
    pub fn forget_all(&self) {
        if let Ok(mut marks) = self.marks.lock() {
            marks.clear();
        }
    }

    /// Forgets the marks when data group `group`'s term is not the one
    /// they were read under (another leader may have stored since).
    pub fn sync_term(&self, group: u64, term: u64) {
        let changed = match self.terms.lock() {
            Ok(mut terms) => terms.insert(group, term) != Some(term),
            Err(_) => true,
        };
        if changed {
            self.forget_all();
        }
    }

    /// Access for one batch (the lock is taken on first use).
    pub fn lock(&self) -> ReplayLock<'_> {
        ReplayLock {
            store: &self.store,
            window: self.window,
            guard: &self.marks,
            marks: None,
            moves: self.moves,
            groups: self.groups,
            batch: HashMap::new(),
        }
    }
}

impl ReplayLock<'_> {
    fn marks(&mut self) -> &mut HashMap<KeyId, u64> {
        let guard = self.guard;
        self.marks
            .get_or_insert_with(|| guard.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// [`replay_key`] for `topic` among `groups` data groups (0: a single broker).
fn scoped(groups: u64, key: &KeyId, topic: &str) -> KeyId {
    match groups {
        0 => *key,
        n => replay_key(key, signet_proto::placement::group_of(topic, n)),
    }
}

impl ReplayMarks for ReplayLock<'_> {
    type Error = StoreError;

    fn scoped(&self, key: &KeyId, topic: &str) -> KeyId {
        scoped(self.groups, key, topic)
    }

    fn mark(&mut self, key: &KeyId) -> Result<u64, StoreError> {
        let shared = match self.marks().get(key) {
            Some(mark) => *mark,
            None => {
                let mark = self.store.replay_mark(key)?.unwrap_or(0);
                self.marks().insert(*key, mark);
                mark
            }
        };
        Ok(shared.max(self.batch.get(key).copied().unwrap_or(0)))
    }

    fn accept(&mut self, key: &KeyId, seq: u64) {
        match self.moves {
            Marks::Accepted => {
                self.marks().insert(*key, seq);
            }
            Marks::Applied => {
                self.batch.insert(*key, seq);
            }
        }
    }

    fn stored(&mut self, key: &KeyId, seq: u64, leaf: &Hash) -> Result<Option<u64>, StoreError> {
        let mark = self.mark(key)?;
        if mark.saturating_sub(seq) >= self.window {
            return Ok(None);
        }
        // A seq accepted but not yet committed is not found: its retry is
        // a Replay until the commit lands.
        Ok(match self.store.published(key, seq)? {
            Some((offset, stored)) if stored == *leaf => Some(offset),
            _ => None,
        })
    }
}
