//! The policy file's `[cluster]` section, validated: this node's id, the
//! address its node transport listens on, and every node of the cluster
//! (id, client address, node-transport address). A policy without
//! `[cluster]` is a single broker.

use crate::policy_file::ClusterSection;
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// At most this many nodes in `peers`.
pub const CLUSTER_NODES_MAX: usize = 64;

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
    }
}
