//! The metadata group's state machine, as pure logic with no openraft in
//! it: the commands the log carries ([`MetaCommand`]) and the state they
//! build ([`MetaState`]), applied deterministically (same commands in the
//! same order, same state on every node).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One node as the metadata records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its id.
    pub id: u64,
    /// Where clients reach it.
    pub client: String,
    /// Where its node transport listens.
    pub raft: String,
}

/// A data group: which nodes replicate it and which topics it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataGroup {
    /// Member node ids, increasing.
    pub members: Vec<u64>,
    /// Topic names or patterns it holds.
    pub topics: Vec<String>,
}

/// A change to the cluster's metadata: what a metadata log entry holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Records (or replaces) nodes.
    PutNodes(Vec<NodeRecord>),
    /// Creates or replaces a data group.
    PutGroup {
        name: String,
        members: Vec<u64>,
        topics: Vec<String>,
    },
    /// Removes a data group.
    RemoveGroup { name: String },
    /// The policy version (its SHA-256, hex) the cluster runs.
    SetPolicy { sha256: String },
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOutcome {
    /// Applied.
    Applied,
    /// Refused (nothing changed), with why.
    Refused(String),
}

/// The cluster's metadata, as applied up to some log index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    /// Nodes by id.
    pub nodes: BTreeMap<u64, NodeRecord>,
    /// Data groups by name.
    pub groups: BTreeMap<String, DataGroup>,
    /// The policy version, if one was set.
    pub policy_sha256: Option<String>,
    /// Commands applied (refused ones included).
    pub commands_applied: u64,
}

impl MetaState {
    /// Applies one command. Deterministic: depends only on the state and
    /// the command.
    pub fn apply(&mut self, command: &MetaCommand) -> MetaOutcome {
        self.commands_applied = self.commands_applied.saturating_add(1);
        match command {
            MetaCommand::PutNodes(nodes) => {
                for node in nodes {
                    self.nodes.insert(node.id, node.clone());
                }
                MetaOutcome::Applied
            }
            MetaCommand::PutGroup {
                name,
                members,
                topics,
            } => {
                if name.is_empty() || name == "meta" {
                    return MetaOutcome::Refused(format!("invalid group name {name:?}"));
                }
                let members: BTreeSet<u64> = members.iter().copied().collect();
                if members.is_empty() {
                    return MetaOutcome::Refused("a group needs at least one member".into());
                }
                if let Some(unknown) = members.iter().find(|m| !self.nodes.contains_key(m)) {
                    return MetaOutcome::Refused(format!("node {unknown} is not in the cluster"));
                }
                self.groups.insert(
                    name.clone(),
                    DataGroup {
                        members: members.into_iter().collect(),
                        topics: topics.clone(),
                    },
                );
                MetaOutcome::Applied
            }
            MetaCommand::RemoveGroup { name } => match self.groups.remove(name) {
                Some(_) => MetaOutcome::Applied,
                None => MetaOutcome::Refused(format!("no group {name:?}")),
            },
            MetaCommand::SetPolicy { sha256 } => {
                self.policy_sha256 = Some(sha256.clone());
                MetaOutcome::Applied
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> NodeRecord {
        NodeRecord {
            id,
            client: format!("127.0.0.1:{}", 7000 + id),
            raft: format!("127.0.0.1:{}", 8000 + id),
        }
    }

    #[test]
    fn the_same_commands_build_the_same_state() {
        let commands = vec![
            MetaCommand::PutNodes(vec![node(1), node(2), node(3)]),
            MetaCommand::PutGroup {
                name: "g1".into(),
                members: vec![3, 1, 2, 1],
                topics: vec!["orders.>".into()],
            },
            MetaCommand::SetPolicy {
                sha256: "ab".into(),
            },
        ];
        let build = || {
            let mut state = MetaState::default();
            for c in &commands {
                assert_eq!(state.apply(c), MetaOutcome::Applied);
            }
            state
        };
        let state = build();
        assert_eq!(state, build());
        assert_eq!(state.groups["g1"].members, vec![1, 2, 3]);
        assert_eq!(state.commands_applied, 3);
    }

    #[test]
    fn a_group_of_unknown_nodes_is_refused_and_changes_nothing() {
        let mut state = MetaState::default();
        state.apply(&MetaCommand::PutNodes(vec![node(1)]));
        let before = state.groups.clone();
        let outcome = state.apply(&MetaCommand::PutGroup {
            name: "g".into(),
            members: vec![1, 9],
            topics: vec![],
        });
        assert_eq!(
            outcome,
            MetaOutcome::Refused("node 9 is not in the cluster".into())
        );
        assert_eq!(state.groups, before);
        assert!(matches!(
            state.apply(&MetaCommand::RemoveGroup { name: "x".into() }),
            MetaOutcome::Refused(_)
        ));
    }
}
