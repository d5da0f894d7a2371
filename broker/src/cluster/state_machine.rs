//! The metadata group's state machine for openraft: applies committed
//! entries to [`MetaState`] and persists the result (with the last applied
//! log id and membership) in one synced write per batch, in the `sm`
//! column family. A snapshot is that same record; installing one replaces
//! it. Readers see each applied state through a `watch` channel.

// openraft's traits fix these error types (StorageError is large).
#![allow(clippy::result_large_err)]

use super::log_store::{SM, decode, encode, read_snapshot_record, snapshot_id, write_synced};
use super::meta::{MetaOutcome, MetaState};
use super::types::{Meta, MetaEntry, NodeAddr, StorageError};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use rocksdb::{DB, WriteBatch};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::Arc;
use tokio::sync::watch;

const STATE: &[u8] = b"state";
const SNAPSHOT: &[u8] = b"snapshot";

/// What the `sm` column family holds under `state`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub last_applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, NodeAddr>,
    pub state: MetaState,
}

/// A snapshot as stored: its meta and the encoded [`Applied`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, NodeAddr>,
    data: Vec<u8>,
}

/// The state machine; the snapshot builder is a clone.
#[derive(Clone)]
pub(crate) struct StateMachine {
    db: Arc<DB>,
    applied: Applied,
    view: watch::Sender<MetaState>,
}

fn missing() -> StorageIOError<u64> {
    StorageIOError::read_state_machine(&std::io::Error::other("column family sm missing"))
}

impl StateMachine {
    /// Loads the applied state from `db`.
    pub(crate) fn load(
        db: Arc<DB>,
        view: watch::Sender<MetaState>,
    ) -> Result<StateMachine, StorageError> {
        let cf = db.cf_handle(SM).ok_or_else(missing)?;
        let applied = match db
            .get_cf(&cf, STATE)
            .map_err(|e| StorageIOError::read_state_machine(&e))?
        {
            Some(bytes) => decode(&bytes)?,
            None => Applied::default(),
        };
        view.send_replace(applied.state.clone());
        Ok(StateMachine { db, applied, view })
    }

    fn persist(&self, extra: Option<(&[u8], Vec<u8>)>) -> Result<(), StorageError> {
        let cf = self.db.cf_handle(SM).ok_or_else(missing)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(&cf, STATE, encode(&self.applied)?);
        if let Some((key, value)) = extra {
            batch.put_cf(&cf, key, value);
        }
        write_synced(&self.db, batch).map_err(|e| StorageIOError::write_state_machine(&e).into())
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        read_snapshot_record(&self.db, SNAPSHOT)
    }
}

impl RaftSnapshotBuilder<Meta> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Meta>, StorageError> {
        let data = encode(&self.applied)?;
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id: snapshot_id(self.applied.last_applied),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.persist(Some((SNAPSHOT, encode(&stored)?)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<Meta> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, NodeAddr>), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MetaOutcome>, StorageError>
    where
        I: IntoIterator<Item = MetaEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            self.applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => outcomes.push(MetaOutcome::Applied),
                EntryPayload::Normal(command) => {
                    outcomes.push(self.applied.state.apply(&command));
                }
                EntryPayload::Membership(membership) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    outcomes.push(MetaOutcome::Applied);
                }
            }
        }
        // One synced write per applied batch; readers see it after.
        self.persist(None)?;
        self.view.send_replace(self.applied.state.clone());
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let applied: Applied =
            decode(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.applied = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state: applied.state,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.persist(Some((SNAPSHOT, encode(&stored)?)))?;
        self.view.send_replace(self.applied.state.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Meta>>, StorageError> {
        Ok(self.stored_snapshot()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
