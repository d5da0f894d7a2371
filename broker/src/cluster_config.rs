//! The policy file's `[cluster]` section, validated: this node's id, the
//! address its node transport listens on, and every node of the cluster
//! (id, client address, node-transport address). A policy without
//! `[cluster]` is a single broker.

use crate::policy_file::ClusterSection;
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// At most this many nodes in `peers`.
pub const CLUSTER_NODES_MAX: usize = 64;

/// At most this many data groups (each is a Raft group with its own log,
/// on every node).
pub const DATA_GROUPS_MAX: u64 = 16;

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its node id (its certificate carries `signet://node/<id>`).
    pub id: u64,
    /// Where clients reach it (`host:port`).
    pub client: String,
    /// Where its node transport listens.
    pub raft: SocketAddr,
}

/// A validated `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's id.
    pub node_id: u64,
    /// The UDP address this node's transport binds.
    pub raft_listen: SocketAddr,
    /// Every node, this one included, by increasing id.
    pub peers: Vec<Peer>,
    /// How many data groups hold the topics (1 to [`DATA_GROUPS_MAX`]).
    pub data_groups: u64,
}

/// Why a `[cluster]` section cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterConfigError {
    #[error("cluster: peers is empty; list every node, this one included")]
    NoPeers,
    #[error("cluster: {0} peers, at most {CLUSTER_NODES_MAX}")]
    TooManyPeers(usize),
    #[error("cluster: node id 0 is reserved; ids start at 1")]
    ZeroId,
    #[error("cluster: node id {0} appears twice in peers")]
    DuplicateId(u64),
    #[error("cluster: address {0} appears twice in peers")]
    DuplicateAddress(String),
    #[error("cluster: node_id {0} is not among peers")]
    NotAPeer(u64),
    #[error("cluster: data_groups = {0}; it must be 1 to {DATA_GROUPS_MAX}")]
    DataGroups(u64),
    #[error(
        "cluster: raft_listen {listen} is not this node's raft address {raft} in peers (node {id})"
    )]
    ListenMismatch {
        id: u64,
        listen: SocketAddr,
        raft: SocketAddr,
    },
}

impl ClusterSettings {
    /// Validates a `[cluster]` section.
    pub fn from_section(section: &ClusterSection) -> Result<ClusterSettings, ClusterConfigError> {
        if section.peers.is_empty() {
            return Err(ClusterConfigError::NoPeers);
        }
        if section.peers.len() > CLUSTER_NODES_MAX {
            return Err(ClusterConfigError::TooManyPeers(section.peers.len()));
        }
        let data_groups = section.data_groups.unwrap_or(1);
        if !(1..=DATA_GROUPS_MAX).contains(&data_groups) {
            return Err(ClusterConfigError::DataGroups(data_groups));
        }
        let mut ids = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for peer in &section.peers {
            if peer.id == 0 || section.node_id == 0 {
                return Err(ClusterConfigError::ZeroId);
            }
            if !ids.insert(peer.id) {
                return Err(ClusterConfigError::DuplicateId(peer.id));
            }
            for address in [peer.client.clone(), peer.raft.to_string()] {
                if !addresses.insert(address.clone()) {
                    return Err(ClusterConfigError::DuplicateAddress(address));
                }
            }
        }
        let Some(me) = section.peers.iter().find(|p| p.id == section.node_id) else {
            return Err(ClusterConfigError::NotAPeer(section.node_id));
        };
        if me.raft.port() != section.raft_listen.port() {
            return Err(ClusterConfigError::ListenMismatch {
                id: me.id,
                listen: section.raft_listen,
                raft: me.raft,
            });
        }
        let mut peers: Vec<Peer> = section
            .peers
            .iter()
            .map(|p| Peer {
                id: p.id,
                client: p.client.clone(),
                raft: p.raft,
            })
            .collect();
        peers.sort_by_key(|p| p.id);
        Ok(ClusterSettings {
            node_id: section.node_id,
            raft_listen: section.raft_listen,
            peers,
            data_groups,
        })
    }

    /// The node with this id, if it is a peer.
    pub fn peer(&self, id: u64) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == id)
    }

    /// Whether this node is the one that initializes the cluster (the
    /// lowest id).
    pub fn is_founder(&self) -> bool {
        self.peers.first().is_some_and(|p| p.id == self.node_id)
    }

    /// The node that initializes data group `group` (1-based) and so is
    /// its first candidate: the groups' first leaders go round the nodes
    /// by id (group 1 on the lowest), so several nodes take writes.
    pub fn first_leader(&self, group: u64) -> Option<u64> {
        let index = usize::try_from(group.checked_sub(1)?).ok()? % self.peers.len().max(1);
        self.peers.get(index).map(|p| p.id)
    }

    /// The data groups, `1..=data_groups`.
    pub fn data_group_ids(&self) -> std::ops::RangeInclusive<u64> {
        1..=self.data_groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_file::PeerSection;

    fn peer(id: u64, client: &str, raft: &str) -> PeerSection {
        PeerSection {
            id,
            client: client.into(),
            raft: raft.parse().unwrap(),
        }
    }

    fn section(node_id: u64, peers: Vec<PeerSection>) -> ClusterSection {
        ClusterSection {
            node_id,
            raft_listen: "127.0.0.1:9001".parse().unwrap(),
            peers,
            data_groups: None,
        }
    }

    #[test]
    fn a_valid_section_sorts_its_peers() {
        let s = ClusterSettings::from_section(&section(
            1,
            vec![
                peer(2, "127.0.0.1:8002", "127.0.0.1:9002"),
                peer(1, "127.0.0.1:8001", "127.0.0.1:9001"),
            ],
        ))
        .unwrap();
        assert_eq!(s.peers[0].id, 1);
        assert!(s.is_founder());
        assert_eq!(s.peer(2).unwrap().client, "127.0.0.1:8002");
        assert_eq!(s.data_groups, 1);
        assert_eq!(
            [1, 2, 3, 4].map(|g| s.first_leader(g)),
            [Some(1), Some(2), Some(1), Some(2)]
        );
        assert_eq!(s.first_leader(0), None);
    }

    #[test]
    fn refuses_each_inconsistency_precisely() {
        let refusal = |s: ClusterSection| ClusterSettings::from_section(&s).unwrap_err();
        assert_eq!(refusal(section(1, vec![])), ClusterConfigError::NoPeers);
        assert_eq!(
            refusal(section(3, vec![peer(1, "a:1", "127.0.0.1:9001")])),
            ClusterConfigError::NotAPeer(3)
        );
        assert_eq!(
            refusal(section(
                1,
                vec![
                    peer(1, "a:1", "127.0.0.1:9001"),
                    peer(1, "a:2", "127.0.0.1:9002")
                ]
            )),
            ClusterConfigError::DuplicateId(1)
        );
        assert_eq!(
            refusal(section(
                1,
                vec![
                    peer(1, "a:1", "127.0.0.1:9001"),
                    peer(2, "a:1", "127.0.0.1:9002")
                ]
            )),
            ClusterConfigError::DuplicateAddress("a:1".into())
        );
        assert_eq!(
            refusal(section(0, vec![peer(1, "a:1", "127.0.0.1:9001")])),
            ClusterConfigError::ZeroId
        );
        assert!(matches!(
            refusal(section(1, vec![peer(1, "a:1", "127.0.0.1:9005")])),
            ClusterConfigError::ListenMismatch { .. }
        ));
        for groups in [0, DATA_GROUPS_MAX + 1] {
            let mut s = section(1, vec![peer(1, "a:1", "127.0.0.1:9001")]);
            s.data_groups = Some(groups);
            assert_eq!(refusal(s), ClusterConfigError::DataGroups(groups));
        }
    }
}
