//! The openraft type configuration of the metadata group: node ids are
//! `u64`, a node is known by its two addresses, log entries carry
//! [`MetaCommand`]s and answer [`MetaOutcome`]s.

use super::data::{DataCommand, DataOutcome};
use super::meta::{MetaCommand, MetaOutcome};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Cursor;

/// A node's addresses, as openraft's membership stores them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Where clients reach it.
    pub client: String,
    /// Where its node transport listens.
    pub raft: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} raft {}", self.client, self.raft)
    }
}

openraft::declare_raft_types!(
    /// The metadata group's types.
    pub Meta:
        D = MetaCommand,
        R = MetaOutcome,
        Node = NodeAddr,
);

/// The metadata group's Raft instance.
pub type MetaRaft = openraft::Raft<Meta>;
/// One entry of its log.
pub type MetaEntry = openraft::Entry<Meta>;
/// A storage failure, as openraft takes it.
pub type StorageError = openraft::StorageError<u64>;

openraft::declare_raft_types!(
    /// A data group's types: entries are accepted publish batches.
    pub Data:
        D = DataCommand,
        R = DataOutcome,
        Node = NodeAddr,
);

/// A data group's Raft instance.
pub type DataRaft = openraft::Raft<Data>;
/// One entry of a data group's log.
pub type DataEntry = openraft::Entry<Data>;
