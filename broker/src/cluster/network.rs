//! The node transport's dialing side, as openraft's `RaftNetworkFactory`:
//! one QUIC connection per peer (dialed again after a loss), one stream
//! per call, each call bounded by `raft_rpc_ms_max`. A dialed peer must
//! present the cluster CA's certificate for `node-<id>.signet` naming
//! `signet://node/<id>` for the id dialed, or nothing is sent.

use super::transport::{node_dns_name, node_of};
use super::types::{Data, DataEntry, Meta, NodeAddr};
use super::wire::{self, PeerStatus, Reply, Request, Rpc, WireError};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The most bytes of publish batches one AppendEntries carries (always at
/// least one entry). openraft gives every AppendEntries one heartbeat
/// interval to be answered and counts entries, not bytes: a catch-up of
/// `max_payload_entries` large batches (tens of MB) would time out every
/// time, and a restarted replica would never catch up.
pub(crate) const APPEND_BYTES_MAX: usize = 1 << 20;

/// Keeps the first entries of `entries` that fit in `bytes_max` (at least
/// one) and drops the rest; returns the log id of the last one kept if any
/// were dropped.
pub(crate) fn bounded(
    entries: &mut Vec<DataEntry>,
    bytes_max: usize,
) -> Option<openraft::LogId<u64>> {
    let mut total = 0usize;
    let mut keep = entries.len();
    for (i, entry) in entries.iter().enumerate() {
        total = total.saturating_add(entry_bytes(entry));
        if total > bytes_max && i > 0 {
            keep = i;
            break;
        }
    }
    if keep == entries.len() {
        return None;
    }
    entries.truncate(keep);
    entries.last().map(|e| e.log_id)
}

/// About how many bytes an entry takes on the wire.
fn entry_bytes(entry: &DataEntry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(command) => command
            .records
            .iter()
            .map(|r| r.record.len() + r.topic.len() + r.principal.len() + 64)
            .sum(),
        _ => 64,
    }
}

/// Why a call to a peer failed before it was answered.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("node {0}: cannot connect: {1}")]
    Connect(u64, String),
    #[error("node {0} presented a certificate for another node")]
    WrongNode(u64),
    #[error("node {0}: {1}")]
    Wire(u64, WireError),
    #[error("node {0}: no answer in time")]
    Timeout(u64),
    #[error("node {0} refused: {1}")]
    Refused(u64, String),
    #[error("node {0} answered another call")]
    Mismatch(u64),
}

/// Dials peers; shared by every connection openraft makes and by status.
pub(crate) struct Dialer {
    /// Taken out at shutdown, so a task that still holds the dialer does
    /// not keep the port bound.
    pub endpoint: std::sync::Mutex<Option<quinn::Endpoint>>,
    /// One connection per peer, kept here (not in openraft's tasks) so
    /// shutdown drops them all: a connection holds the socket.
    pub conns: std::sync::Mutex<std::collections::HashMap<u64, quinn::Connection>>,
    pub me: u64,
    /// This node's `[cluster] data_groups`, sent with every call.
    pub data_groups: u64,
    pub timeout: Duration,
    pub frame_bytes_max: u64,
    /// Set while the node is cut off from its peers ([`super::ClusterNode::isolate`]).
    pub isolated: Arc<std::sync::atomic::AtomicBool>,
}

impl Dialer {
    async fn connect(&self, target: u64, addr: SocketAddr) -> Result<quinn::Connection, CallError> {
        let endpoint = self
            .endpoint
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .ok_or_else(|| CallError::Connect(target, "node shutting down".into()))?;
        let connecting = endpoint
            .connect(addr, &node_dns_name(target))
            .map_err(|e| CallError::Connect(target, e.to_string()))?;
        let conn = connecting
            .await
            .map_err(|e| CallError::Connect(target, e.to_string()))?;
        if node_of(&conn) != Some(target) {
            conn.close(0u32.into(), b"wrong node");
            return Err(CallError::WrongNode(target));
        }
        Ok(conn)
    }

    /// One call on `conn` (dialed first when `None` or closed).
    pub(crate) async fn call(
        &self,
        target: u64,
        addr: SocketAddr,
        rpc: Rpc,
    ) -> Result<Reply, CallError> {
        if self.isolated.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CallError::Connect(target, "cut off from its peers".into()));
        }
        let work = async {
            let pooled = self
                .conns
                .lock()
                .ok()
                .and_then(|c| c.get(&target).cloned())
                .filter(|c| c.close_reason().is_none());
            let live = match pooled {
                Some(c) => c,
                None => {
                    let c = self.connect(target, addr).await?;
                    if let Ok(mut conns) = self.conns.lock() {
                        conns.insert(target, c.clone());
                    }
                    c
                }
            };
            let (mut send, mut recv) = match live.open_bi().await {
                Ok(stream) => stream,
                Err(e) => {
                    self.forget(target);
                    return Err(CallError::Connect(target, e.to_string()));
                }
            };
            let request = Request {
                from: self.me,
                data_groups: self.data_groups,
                rpc,
            };
            wire::write(&mut send, &request)
                .await
                .map_err(|e| CallError::Wire(target, e))?;
            let _ = send.finish();
            wire::read::<Reply>(&mut recv, self.frame_bytes_max)
                .await
                .map_err(|e| CallError::Wire(target, e))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(Reply::Refused(why))) => Err(CallError::Refused(target, why)),
            Ok(Ok(reply)) => Ok(reply),
            // No answer: the pooled connection may lead to a process that
            // is gone (a peer restarted on the same address); the next
            // call dials again instead of waiting out the idle timeout.
            Ok(Err(e)) => {
                self.forget(target);
                Err(e)
            }
            Err(_) => {
                self.forget(target);
                Err(CallError::Timeout(target))
            }
        }
    }

    /// Drops the connection to `target` (dialed again on the next call).
    pub(crate) fn forget(&self, target: u64) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(&target);
        }
    }

    /// Drops every connection.
    pub(crate) fn forget_all(&self) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.clear();
        }
    }

    /// Asks a peer how it is.
    /// Node `target`'s state, or why it refused this node (`Err(Some)`),
    /// or nothing when it did not answer (`Err(None)`).
    pub(crate) async fn status(
        &self,
        target: u64,
        addr: SocketAddr,
    ) -> Result<PeerStatus, Option<String>> {
        match self.call(target, addr, Rpc::Status).await {
            Ok(Reply::Status(status)) => Ok(status),
            Err(CallError::Refused(_, why)) => Err(Some(why)),
            _ => Err(None),
        }
    }
}

/// openraft's factory: a [`Link`] per target.
#[derive(Clone)]
pub(crate) struct Network {
    pub dialer: Arc<Dialer>,
}

/// The connection to one peer.
pub(crate) struct Link {
    dialer: Arc<Dialer>,
    target: u64,
    addr: Option<SocketAddr>,
}

impl RaftNetworkFactory<Meta> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> Link {
        Link {
            dialer: self.dialer.clone(),
            target,
            addr: node.raft.parse().ok(),
        }
    }
}

impl Link {
    async fn call<E: std::error::Error>(
        &mut self,
        rpc: Rpc,
    ) -> Result<Reply, RPCError<u64, NodeAddr, E>> {
        let Some(addr) = self.addr else {
            let e = CallError::Connect(self.target, "unparsable raft address".into());
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        match self.dialer.call(self.target, addr, rpc).await {
            Ok(reply) => Ok(reply),
            Err(e @ (CallError::Connect(..) | CallError::WrongNode(_))) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => {
                self.dialer.forget(self.target);
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }

    fn mismatch<E: std::error::Error>(&self) -> RPCError<u64, NodeAddr, E> {
        RPCError::Network(NetworkError::new(&CallError::Mismatch(self.target)))
    }
}

impl RaftNetwork<Meta> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Meta>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        match self.call(Rpc::Append(rpc)).await? {
            Reply::Append(Ok(r)) => Ok(r),
            Reply::Append(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Meta>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, NodeAddr, RaftError<u64, InstallSnapshotError>>,
    > {
        match self.call(Rpc::Snapshot(rpc)).await? {
            Reply::Snapshot(Ok(r)) => Ok(r),
            Reply::Snapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        match self.call(Rpc::Vote(rpc)).await? {
            Reply::Vote(Ok(r)) => Ok(r),
            Reply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.mismatch()),
        }
    }
}

/// openraft's factory for a data group: a [`DataLink`] per target.
#[derive(Clone)]
pub(crate) struct DataNetwork {
    pub dialer: Arc<Dialer>,
    pub group: u64,
}

/// The connection to one peer, for one data group.
pub(crate) struct DataLink {
    link: Link,
    group: u64,
}

impl RaftNetworkFactory<Data> for DataNetwork {
    type Network = DataLink;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> DataLink {
        DataLink {
            link: Link {
                dialer: self.dialer.clone(),
                target,
                addr: node.raft.parse().ok(),
            },
            group: self.group,
        }
    }
}

impl RaftNetwork<Data> for DataLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Data>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        let target = self.link.target;
        let mut rpc = rpc;
        let sent = bounded(&mut rpc.entries, APPEND_BYTES_MAX);
        match self.link.call(Rpc::DataAppend(self.group, rpc)).await? {
            // Only the first entries went: say how far the follower now
            // matches, and openraft sends the rest next.
            Reply::DataAppend(Ok(AppendEntriesResponse::Success)) if sent.is_some() => {
                Ok(AppendEntriesResponse::PartialSuccess(sent))
            }
            Reply::DataAppend(Ok(r)) => Ok(r),
            Reply::DataAppend(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(target, e))),
            _ => Err(self.link.mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Data>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, NodeAddr, RaftError<u64, InstallSnapshotError>>,
    > {
        let target = self.link.target;
        match self.link.call(Rpc::DataSnapshot(self.group, rpc)).await? {
            Reply::DataSnapshot(Ok(r)) => Ok(r),
            Reply::DataSnapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(target, e))),
            _ => Err(self.link.mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        let target = self.link.target;
        match self.link.call(Rpc::DataVote(self.group, rpc)).await? {
            Reply::DataVote(Ok(r)) => Ok(r),
            Reply::DataVote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(target, e))),
            _ => Err(self.link.mismatch()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::data::{DataCommand, DataRecord};
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(index: u64, bytes: usize) -> DataEntry {
        DataEntry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(DataCommand {
                group: 1,
                records: vec![DataRecord {
                    topic: "t".into(),
                    record: vec![0; bytes].into(),
                    key_id: signet_proto::KeyId([0; 16]),
                    seq: index,
                    leaf: signet_proto::merkle::Hash([0; 32]),
                    principal: "p".into(),
                }],
                ..DataCommand::default()
            }),
        }
    }

    #[test]
    fn an_append_is_cut_to_its_byte_budget_but_always_carries_one_entry() {
        let mut entries: Vec<DataEntry> = (1..=10).map(|i| entry(i, 300_000)).collect();
        let last = bounded(&mut entries, APPEND_BYTES_MAX);
        assert_eq!(entries.len(), 3);
        assert_eq!(last.map(|l| l.index), Some(3));

        let mut one = vec![entry(7, 5 << 20), entry(8, 10)];
        assert_eq!(
            bounded(&mut one, APPEND_BYTES_MAX).map(|l| l.index),
            Some(7)
        );
        assert_eq!(one.len(), 1);

        let mut small: Vec<DataEntry> = (1..=256).map(|i| entry(i, 1_000)).collect();
        assert_eq!(bounded(&mut small, APPEND_BYTES_MAX), None);
        assert_eq!(small.len(), 256);
    }
}
