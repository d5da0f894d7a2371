//! The node transport's messages: one request and one reply per QUIC
//! bidirectional stream, each a `u32` big-endian length then MessagePack
//! (named fields). The length is checked against `raft_frame_bytes_max`
//! before anything is allocated.

use super::types::{Data, Meta};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// ALPN of the node transport (never accepted on the client listener).
pub const NODE_ALPN: &[u8] = b"signet-node/1";

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// The sending node's id: must be the id its certificate carries.
    pub from: u64,
    /// The sending node's `[cluster] data_groups`: a node that counts
    /// another number places topics in other groups, so its calls are
    /// refused (and it refuses ours).
    pub data_groups: u64,
    /// What it asks.
    pub rpc: Rpc,
}

/// The Raft calls of the metadata group and of the data groups (each
/// with its group id), and a status probe.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    Append(AppendEntriesRequest<Meta>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<Meta>),
    Status,
    DataAppend(u64, AppendEntriesRequest<Data>),
    DataVote(u64, VoteRequest<u64>),
    DataSnapshot(u64, InstallSnapshotRequest<Data>),
}

impl Rpc {
    /// The node this call claims leadership or candidacy for, if any.
    pub fn claimed_node(&self) -> Option<u64> {
        match self {
            Rpc::Append(r) => r.vote.leader_id().voted_for(),
            Rpc::Vote(r) => r.vote.leader_id().voted_for(),
            Rpc::Snapshot(r) => r.vote.leader_id().voted_for(),
            Rpc::Status => None,
            Rpc::DataAppend(_, r) => r.vote.leader_id().voted_for(),
            Rpc::DataVote(_, r) => r.vote.leader_id().voted_for(),
            Rpc::DataSnapshot(_, r) => r.vote.leader_id().voted_for(),
        }
    }
}

/// How a node answers one [`Status`](Rpc::Status).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: String,
    /// Its current term.
    pub term: u64,
}

/// The answer to one [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Status(PeerStatus),
    DataAppend(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    DataVote(Result<VoteResponse<u64>, RaftError<u64>>),
    DataSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// Not served (the sender is not who it claims to be).
    Refused(String),
}

/// Why a message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(u64),
    #[error("encoding: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decoding: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("stream: {0}")]
    Stream(String),
}

/// Writes one message.
pub async fn write<T: Serialize>(send: &mut quinn::SendStream, value: &T) -> Result<(), WireError> {
    let body = rmp_serde::to_vec_named(value)?;
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge(body.len() as u64))?;
    let stream = |e: quinn::WriteError| WireError::Stream(e.to_string());
    send.write_all(&len.to_be_bytes()).await.map_err(stream)?;
    send.write_all(&body).await.map_err(stream)?;
    Ok(())
}

/// Reads one message of at most `max` bytes.
pub async fn read<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: u64,
) -> Result<T, WireError> {
    let mut prefix = [0u8; 4];
    let stream = |e: quinn::ReadExactError| WireError::Stream(e.to_string());
    recv.read_exact(&mut prefix).await.map_err(stream)?;
    let len = u64::from(u32::from_be_bytes(prefix));
    if len > max {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; usize::try_from(len).map_err(|_| WireError::TooLarge(len))?];
    recv.read_exact(&mut body).await.map_err(stream)?;
    Ok(rmp_serde::from_slice(&body)?)
}
