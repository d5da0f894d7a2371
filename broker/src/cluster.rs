//! A broker as a node of a cluster: the metadata group and the data
//! groups (`[cluster] data_groups`, each holding the topics
//! [`signet_proto::placement`] puts in it, each first led by another
//! node). Everything openraft-specific lives under this module, so the
//! consensus library can be swapped; the rest of the broker sees
//! [`ClusterNode`], [`MetaCommand`], [`MetaState`] and the status frame.
//!
//! - [`meta`]: the metadata commands and the deterministic state they build;
//! - `types`: openraft's type configuration (`Meta`);
//! - `log_store`: the Raft log and vote in RocksDB (`<data_dir>/cluster-meta`),
//!   every write synced before it is acknowledged;
//! - `state_machine`: applies committed entries, persisted, snapshots;
//! - [`transport`]: QUIC + mutual TLS between nodes (node certificates only)
//!   and the listener;
//! - `network`: the dialing side, openraft's `RaftNetworkFactory`;
//! - [`wire`]: the node transport's messages;
//! - [`data`]: a data group's log entries and state machine (the node's
//!   message store, through its group-commit writer);
//! - `compact`: a data group's log deleted up to a point every member
//!   holds.

pub(crate) mod compact;
pub mod data;
pub(crate) mod log_store;
pub mod meta;
pub(crate) mod network;
pub(crate) mod state_machine;
pub mod transport;
pub(crate) mod types;
pub mod wire;

use crate::cluster_config::ClusterSettings;
use crate::error::BrokerError;
use crate::limits::Limits;
use crate::settings::TlsPaths;
pub use meta::{DataGroup, MetaCommand, MetaOutcome, MetaState, NodeRecord};
use network::{Dialer, Network};
use openraft::ServerState;
use signet_proto::frame::{ClusterGroup, ClusterNode as NodeView, ClusterStatus};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;
use types::{DataRaft, MetaRaft, NodeAddr};

/// Name of the metadata group in status.
pub const META_GROUP: &str = "meta";

/// What a node's data groups apply to: its message store, through its
/// group-commit writer.
pub struct DataHost {
    pub store: Arc<crate::store::Store>,
    pub commits: tokio::sync::mpsc::Sender<crate::commit::Command>,
}

/// Why a publish was not stored through the data group.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// This node does not lead the group; the leader's client address,
    /// when one is known.
    #[error("not the leader (leader at {client:?})")]
    NotLeader { client: Option<String> },
    /// Applying refused the batch (e.g. `Replay`).
    #[error("refused: {0}")]
    Refused(signet_proto::ErrorCode),
    /// Not committed in time (no majority reachable) or Raft failed; the
    /// batch may still be committed later (a retry is answered with its
    /// offsets).
    #[error("not committed: {0}")]
    Unavailable(String),
}

/// A batch handed to the data group: resolves to its offsets.
pub type PendingPublish =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u64>, PublishError>> + Send>>;

/// A member's consumer-group commands in the data group's log: their
/// outcomes once applied here.
pub type PendingWork = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<Vec<crate::group_writer::Outcome>, PublishError>>
            + Send,
    >,
>;

type PendingData = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<data::DataOutcome, PublishError>> + Send>,
>;

/// `NotLeader`, naming the leader's client address when one is known.
pub fn not_leader(client: Option<String>) -> signet_proto::frame::Rejection {
    use signet_proto::{ErrorCode, frame::Rejection};
    match client {
        Some(client) => Rejection::new(ErrorCode::NotLeader, format!("leader {client}")),
        None => Rejection::new(ErrorCode::NotLeader, "no leader known yet; try again"),
    }
}

/// Why a metadata change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// This node is not the leader; the leader, if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// Raft failed or is shutting down.
    #[error("raft: {0}")]
    Raft(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

pub(crate) fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// One node's part in the cluster: the metadata group's Raft, the data
/// groups' and the node transport.
pub struct ClusterNode {
    settings: ClusterSettings,
    raft: MetaRaft,
    committed: Arc<AtomicU64>,
    view: watch::Receiver<MetaState>,
    dialer: Arc<Dialer>,
    shutdown: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    db: Weak<rocksdb::DB>,
    raft_addr: std::net::SocketAddr,
    /// The data groups, by id (`data[i].id == i + 1`).
    data: Vec<DataGroupNode>,
    commit_timeout: Duration,
}

/// One data group on this node: its Raft, its log's commit counter, its
/// log database and the compaction points it applied.
struct DataGroupNode {
    id: u64,
    raft: DataRaft,
    committed: Arc<AtomicU64>,
    db: Weak<rocksdb::DB>,
    compacted: watch::Receiver<u64>,
}

impl DataGroupNode {
    /// Opens the group's log (`<data_dir>/cluster-data-<id>`) and its state
    /// machine (the node's message store) and starts its Raft.
    async fn start(
        settings: &ClusterSettings,
        id: u64,
        dialer: &Arc<Dialer>,
        data_dir: &Path,
        host: &DataHost,
    ) -> Result<DataGroupNode, BrokerError> {
        let db = log_store::open(&data_dir.join(format!("cluster-data-{id}")))
            .map_err(|e| BrokerError::Storage(e.into()))?;
        let committed = Arc::new(AtomicU64::new(0));
        let (compact, compacted) = watch::channel(0);
        let machine = data::DataMachine::load(
            id,
            &host.store,
            host.commits.clone(),
            db.clone(),
            Arc::new(compact),
        )
        .map_err(raft_error)?;
        let logs = log_store::LogStore::new(db.clone(), committed.clone())
            .map_err(|e| raft_error(format!("raft log syncer: {e}")))?;
        let config = openraft::Config {
            cluster_name: format!("signet-data-{id}"),
            // openraft gives each AppendEntries one heartbeat interval to
            // be answered, and the follower syncs before it answers: 250 ms
            // keeps a loaded machine's fsync inside it. Appends are also
            // cut to `network::APPEND_BYTES_MAX`.
            heartbeat_interval: 250,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            max_payload_entries: 256,
            // The log is compacted only up to points every member holds
            // (`compact`): a snapshot is a mark built when asked, and
            // openraft's own purge after building one is off.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            ..Default::default()
        }
        .validate()
        .map_err(raft_error)?;
        let raft = openraft::Raft::new(
            settings.node_id,
            Arc::new(config),
            network::DataNetwork {
                dialer: dialer.clone(),
                group: id,
            },
            logs,
            machine,
        )
        .await
        .map_err(raft_error)?;
        Ok(DataGroupNode {
            id,
            raft,
            committed,
            db: Arc::downgrade(&db),
            compacted,
        })
    }
}

fn raft_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Cluster(e.to_string())
}

impl ClusterNode {
    /// Opens the metadata log under `data_dir`, listens on `raft_listen`,
    /// and starts Raft; the lowest-id node initializes the cluster with
    /// every peer when it was never initialized.
    pub async fn start(
        settings: &ClusterSettings,
        tls: &TlsPaths,
        data_dir: &Path,
        limits: &Limits,
        host: DataHost,
    ) -> Result<ClusterNode, BrokerError> {
        let db = log_store::open(&data_dir.join("cluster-meta"))
            .map_err(|e| BrokerError::Storage(e.into()))?;
        let committed = Arc::new(AtomicU64::new(0));
        let (view_tx, view) = watch::channel(MetaState::default());
        let machine = state_machine::StateMachine::load(db.clone(), view_tx).map_err(raft_error)?;
        let logs = log_store::LogStore::new(db.clone(), committed.clone())
            .map_err(|e| raft_error(format!("raft log syncer: {e}")))?;
        let server = transport::server_config(tls, limits)?;
        let client = transport::client_config(tls, limits)?;
        let listen_error = |source| BrokerError::Listen {
            addr: settings.raft_listen,
            source,
        };
        // A node restarted in the same process may find its port still
        // held for a moment by the previous endpoint's driver: bounded retry.
        let mut attempts = 0;
        let socket = loop {
            match signet_proto::stream::udp_socket(settings.raft_listen) {
                Ok(socket) => break socket,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(listen_error(e)),
            }
        };
        let runtime = quinn::default_runtime()
            .ok_or_else(|| listen_error(std::io::Error::other("no async runtime")))?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )
        .map_err(listen_error)?;
        endpoint.set_default_client_config(client);
        let raft_addr = endpoint.local_addr().map_err(listen_error)?;
        let timeout = Duration::from_millis(limits.raft_rpc_ms_max);
        let isolated = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dialer = Arc::new(Dialer {
            endpoint: std::sync::Mutex::new(Some(endpoint.clone())),
            conns: std::sync::Mutex::new(std::collections::HashMap::new()),
            me: settings.node_id,
            data_groups: settings.data_groups,
            timeout,
            frame_bytes_max: limits.raft_frame_bytes_max,
            isolated: isolated.clone(),
        });
        let config = openraft::Config {
            cluster_name: "signet".into(),
            heartbeat_interval: 100,
            election_timeout_min: 600,
            election_timeout_max: 1200,
            max_payload_entries: 256,
            ..Default::default()
        }
        .validate()
        .map_err(raft_error)?;
        let raft = openraft::Raft::new(
            settings.node_id,
            Arc::new(config),
            Network {
                dialer: dialer.clone(),
            },
            logs,
            machine,
        )
        .await
        .map_err(raft_error)?;
        let mut data = Vec::new();
        for group in settings.data_group_ids() {
            data.push(DataGroupNode::start(settings, group, &dialer, data_dir, &host).await?);
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let served = Arc::new(transport::Served {
            raft: raft.clone(),
            data: data.iter().map(|g| (g.id, g.raft.clone())).collect(),
            settings: settings.clone(),
            frame_bytes_max: limits.raft_frame_bytes_max,
            rpc_timeout: timeout,
            handshakes_max: Limits::usize(limits.handshakes_max),
            isolated: isolated.clone(),
            warned: std::sync::Mutex::new(None),
        });
        let mut tasks = vec![tokio::spawn(transport::serve(
            endpoint,
            served,
            shutdown_rx.clone(),
        ))];
        for group in &data {
            tasks.push(tokio::spawn(compact::run(
                group.raft.clone(),
                group.id,
                settings.node_id,
                limits.raft_compact_entries,
                group.compacted.clone(),
                shutdown_rx.clone(),
            )));
        }
        let members: BTreeMap<u64, NodeAddr> = settings
            .peers
            .iter()
            .map(|p| {
                (
                    p.id,
                    NodeAddr {
                        client: p.client.clone(),
                        raft: p.raft.to_string(),
                    },
                )
            })
            .collect();
        if settings.is_founder() && !raft.is_initialized().await.map_err(raft_error)? {
            raft.initialize(members.clone()).await.map_err(raft_error)?;
            tracing::info!(node = settings.node_id, "cluster initialized");
        }
        for group in &data {
            if settings.first_leader(group.id) == Some(settings.node_id)
                && !group.raft.is_initialized().await.map_err(raft_error)?
            {
                group
                    .raft
                    .initialize(members.clone())
                    .await
                    .map_err(raft_error)?;
                tracing::info!(
                    node = settings.node_id,
                    group = group.id,
                    "data group initialized"
                );
            }
        }
        let node = ClusterNode {
            settings: settings.clone(),
            raft,
            committed,
            view,
            dialer,
            shutdown,
            tasks: std::sync::Mutex::new(Vec::new()),
            db: Arc::downgrade(&db),
            raft_addr,
            data,
            commit_timeout: Duration::from_millis(limits.raft_commit_ms_max),
        };
        drop(db);
        tasks.push(tokio::spawn(register_nodes(
            node.raft.clone(),
            node.settings.clone(),
            node.view.clone(),
            shutdown_rx,
        )));
        if let Ok(mut held) = node.tasks.lock() {
            *held = tasks;
        }
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.settings.node_id
    }

    /// The address the node transport listens on (useful with port 0).
    pub fn raft_addr(&self) -> std::net::SocketAddr {
        self.raft_addr
    }

    /// The metadata as applied on this node.
    pub fn metadata(&self) -> MetaState {
        self.view.borrow().clone()
    }

    /// A watch on the metadata as applied on this node.
    pub fn watch_metadata(&self) -> watch::Receiver<MetaState> {
        self.view.clone()
    }

    /// The leader of the metadata group as this node knows it.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Waits until this node knows a leader other than `not`, and returns it.
    pub async fn wait_for_leader(&self, not: Option<u64>) -> u64 {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(leader) = metrics.borrow().current_leader
                && Some(leader) != not
            {
                return leader;
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until every entry of this node's log is applied here.
    pub async fn wait_applied(&self) {
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow();
                if m.last_log_index.is_some() && m.last_applied.map(|l| l.index) == m.last_log_index
                {
                    return;
                }
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Cuts this node off from every peer, both ways (`true`), or joins it
    /// again (`false`): its calls fail at once and the calls it receives
    /// are read and dropped unanswered, as a network partition would lose
    /// them. A fault-injection point for partition tests; nothing in the
    /// broker calls it, and no file or command reaches it.
    pub fn isolate(&self, cut: bool) {
        self.dialer
            .isolated
            .store(cut, std::sync::atomic::Ordering::SeqCst);
        if cut {
            self.dialer.forget_all();
        }
    }

    /// How many data groups hold the topics.
    pub fn data_groups(&self) -> u64 {
        self.settings.data_groups
    }

    /// The data group holding `topic` (see [`signet_proto::placement`]).
    pub fn group_of(&self, topic: &str) -> u64 {
        signet_proto::placement::group_of(topic, self.settings.data_groups)
    }

    fn group(&self, group: u64) -> Option<&DataGroupNode> {
        self.data.iter().find(|g| g.id == group)
    }

    fn group_metrics(&self, group: u64) -> Option<openraft::RaftMetrics<u64, NodeAddr>> {
        Some(self.group(group)?.raft.metrics().borrow().clone())
    }

    /// The leader of data group `group` as this node knows it.
    pub fn data_leader(&self, group: u64) -> Option<u64> {
        self.group_metrics(group)?.current_leader
    }

    /// The client address of data group `group`'s leader, if known.
    pub fn data_leader_client(&self, group: u64) -> Option<String> {
        let metrics = self.group_metrics(group)?;
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.client.clone())
    }

    /// This node's current term in data group `group` (0 for no such group).
    pub fn data_term(&self, group: u64) -> u64 {
        self.group_metrics(group).map_or(0, |m| m.current_term)
    }

    /// Waits until this node knows a leader of data group `group` other
    /// than `not` (forever, for no such group).
    pub async fn wait_for_data_leader(&self, group: u64, not: Option<u64>) -> u64 {
        let Some(group) = self.group(group) else {
            return std::future::pending().await;
        };
        let mut metrics = group.raft.metrics();
        loop {
            if let Some(leader) = metrics.borrow().current_leader
                && Some(leader) != not
            {
                return leader;
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until this node applied data group `group`'s log up to
    /// `index` (the leader's last log index, say).
    pub async fn wait_data_applied(&self, group: u64, index: u64) {
        let Some(group) = self.group(group) else {
            return std::future::pending().await;
        };
        let mut metrics = group.raft.metrics();
        loop {
            if metrics
                .borrow()
                .last_applied
                .is_some_and(|l| l.index >= index)
            {
                return;
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until this node deleted data group `group`'s log up to
    /// `index` at least (a compaction point every member held).
    pub async fn wait_data_compacted(&self, group: u64, index: u64) {
        let Some(group) = self.group(group) else {
            return std::future::pending().await;
        };
        let mut metrics = group.raft.metrics();
        if metrics
            .wait_for(|m| m.purged.is_some_and(|l| l.index >= index))
            .await
            .is_err()
        {
            std::future::pending::<()>().await;
        }
    }

    /// Up to which index this node deleted data group `group`'s log.
    pub fn data_compacted(&self, group: u64) -> Option<u64> {
        self.group_metrics(group)?.purged.map(|l| l.index)
    }

    /// Data group `group`'s last log index on this node.
    pub fn data_last_log(&self, group: u64) -> Option<u64> {
        self.group_metrics(group)?.last_log_index
    }

    /// Hands an accepted publish batch (every entry of data group `group`)
    /// to that group (batches handed in one order are logged in that
    /// order) and returns what waits for it: once a majority has it on
    /// disk and this node applied it, the offsets applying assigned. Only
    /// the group's leader takes it.
    pub async fn submit(
        &self,
        group: u64,
        entries: Vec<crate::commit::Entry>,
    ) -> Result<PendingPublish, PublishError> {
        let pending = self
            .propose_data(
                group,
                data::DataCommand {
                    records: entries.into_iter().map(data::DataRecord::from).collect(),
                    ..data::DataCommand::default()
                },
            )
            .await?;
        Ok(Box::pin(async move {
            pending.await?.offsets.map_err(PublishError::Refused)
        }))
    }

    /// Hands a consumer-group member's commands (leases, settlements) to
    /// data group `group`, like [`ClusterNode::submit`]: commands handed in
    /// one order are applied in that order, on every replica, and the
    /// returned future gives this node's outcomes once applied here.
    pub async fn submit_work(
        &self,
        group: u64,
        commands: Vec<crate::group_writer::Command>,
    ) -> Result<PendingWork, PublishError> {
        let pending = self
            .propose_data(
                group,
                data::DataCommand {
                    work: commands,
                    ..data::DataCommand::default()
                },
            )
            .await?;
        Ok(Box::pin(async move {
            match pending.await?.work {
                Some(Ok(outcomes)) => Ok(outcomes),
                Some(Err(code)) => Err(PublishError::Refused(code)),
                None => Err(PublishError::Unavailable("no outcome".into())),
            }
        }))
    }

    /// Commits a retention trim through the data group holding its topic
    /// (only that group's leader's retention pass trims it) and returns
    /// whether this node applied it (false: stale).
    pub async fn submit_trim(&self, trim: data::DataTrim) -> Result<bool, PublishError> {
        let group = self.group_of(&trim.topic);
        let pending = self
            .propose_data(
                group,
                data::DataCommand {
                    trim: Some(trim),
                    ..data::DataCommand::default()
                },
            )
            .await?;
        match pending.await?.trimmed {
            Some(trimmed) => Ok(trimmed),
            None => Err(PublishError::Unavailable("no outcome".into())),
        }
    }

    /// Queues `command` in data group `group`'s log (in call order) and
    /// returns what waits for it to be committed and applied here.
    async fn propose_data(
        &self,
        group: u64,
        mut command: data::DataCommand,
    ) -> Result<PendingData, PublishError> {
        use openraft::error::ClientWriteError;
        let Some(node) = self.group(group) else {
            return Err(PublishError::Unavailable(format!("no data group {group}")));
        };
        command.group = group;
        let answer = node
            .raft
            .client_write_ff(command)
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        let timeout = self.commit_timeout;
        Ok(Box::pin(async move {
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(Ok(response))) => Ok(response.data),
                Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => Err(PublishError::NotLeader {
                    client: f.leader_node.map(|n| n.client),
                }),
                Ok(Ok(Err(e))) => Err(PublishError::Unavailable(e.to_string())),
                Ok(Err(_)) => Err(PublishError::Unavailable("raft stopped".into())),
                Err(_) => Err(PublishError::Unavailable("no majority in time".into())),
            }
        }))
    }

    /// Whether this node leads data group `group` (a node that does not
    /// refuses its publishes and group members with [`not_leader`]).
    pub fn leads_data(&self, group: u64) -> bool {
        self.data_leader(group) == Some(self.id())
    }

    /// This node's current term in the metadata group.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The last log entry of the metadata group here: (term, leader id, index).
    pub fn last_log(&self) -> Option<(u64, u64, u64)> {
        let metrics = self.raft.metrics().borrow().clone();
        let index = metrics.last_log_index?;
        let applied = metrics.last_applied?;
        (applied.index == index).then_some((
            applied.leader_id.term,
            applied.leader_id.voted_for().unwrap_or_default(),
            index,
        ))
    }

    /// Commits a metadata command through the metadata group and returns
    /// what applying it did; only the leader takes it.
    pub async fn propose(&self, command: MetaCommand) -> Result<MetaOutcome, ClusterError> {
        use openraft::error::{ClientWriteError, RaftError};
        match self.raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ClusterError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(e) => Err(ClusterError::Raft(e.to_string())),
        }
    }

    /// The cluster as this node sees it: every peer's state (asked over
    /// the node transport; `unreachable` when it does not answer in
    /// time) and each group's leader, term and indexes.
    pub async fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let mut asks = Vec::new();
        for peer in &self.settings.peers {
            let dialer = self.dialer.clone();
            let (id, addr) = (peer.id, peer.raft);
            let me = id == self.settings.node_id;
            asks.push(async move {
                if me {
                    Err(None)
                } else {
                    dialer.status(id, addr).await
                }
            });
        }
        let answers = futures_join(asks).await;
        let nodes = self
            .settings
            .peers
            .iter()
            .zip(answers)
            .map(|(peer, answer)| {
                let (state, term, refused) = if peer.id == self.settings.node_id {
                    (
                        state_name(metrics.state).to_owned(),
                        Some(metrics.current_term),
                        None,
                    )
                } else {
                    match answer {
                        Ok(s) => (s.state, Some(s.term), None),
                        Err(Some(why)) => ("refused".to_owned(), None, Some(why)),
                        Err(None) => ("unreachable".to_owned(), None, None),
                    }
                };
                NodeView {
                    id: peer.id,
                    client: peer.client.clone(),
                    state,
                    term,
                    refused,
                }
            })
            .collect();
        let mut groups = vec![group_status(
            META_GROUP.to_owned(),
            &metrics,
            &self.committed,
        )];
        for group in &self.data {
            let metrics = group.raft.metrics().borrow().clone();
            groups.push(group_status(
                format!("data-{}", group.id),
                &metrics,
                &group.committed,
            ));
        }
        ClusterStatus {
            node_id: self.settings.node_id,
            nodes,
            groups,
        }
    }

    /// Stops Raft and the node transport and closes the metadata log.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        for group in &self.data {
            let _ = group.raft.shutdown().await;
        }
        let _ = self.raft.shutdown().await;
        let tasks = match self.tasks.lock() {
            Ok(mut held) => std::mem::take(&mut *held),
            Err(_) => Vec::new(),
        };
        for task in tasks {
            let _ = task.await;
        }
        let endpoint = self.dialer.endpoint.lock().ok().and_then(|mut e| e.take());
        self.dialer.forget_all();
        if let Some(endpoint) = endpoint {
            endpoint.close(0u32.into(), b"node shutting down");
            // Peers learn of the close before the port is let go, so a
            // node started right after on the same address can bind it.
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
        for _ in 0..5_000 {
            if self.db.strong_count() == 0 && self.data.iter().all(|g| g.db.strong_count() == 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tracing::warn!("cluster metadata log still open after shutdown");
    }
}

/// One group's line of the status: `metrics` of its Raft on this node and
/// its log's commit counter (the highest committed index + 1, 0: none).
fn group_status(
    name: String,
    metrics: &openraft::RaftMetrics<u64, NodeAddr>,
    committed: &AtomicU64,
) -> ClusterGroup {
    ClusterGroup {
        name,
        leader: metrics.current_leader,
        term: metrics.current_term,
        commit_index: committed.load(Ordering::Relaxed).checked_sub(1),
        applied_index: metrics.last_applied.map(|l| l.index),
        members: metrics.membership_config.voter_ids().collect(),
        compacted_index: metrics.purged.map(|l| l.index),
    }
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.await {
            Ok(value) => out.push(value),
            Err(_) => return out,
        }
    }
    out
}

/// While this node leads, makes sure the metadata lists every peer.
async fn register_nodes(
    raft: MetaRaft,
    settings: ClusterSettings,
    view: watch::Receiver<MetaState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut metrics = raft.metrics();
    loop {
        let leading = metrics.borrow().state == ServerState::Leader;
        let missing = {
            let state = view.borrow();
            settings
                .peers
                .iter()
                .any(|p| !state.nodes.contains_key(&p.id))
        };
        if leading && missing {
            let nodes = settings
                .peers
                .iter()
                .map(|p| NodeRecord {
                    id: p.id,
                    client: p.client.clone(),
                    raft: p.raft.to_string(),
                })
                .collect();
            if let Err(e) = raft.client_write(MetaCommand::PutNodes(nodes)).await {
                tracing::info!(error = %e, "registering the nodes failed; trying again as leader");
            }
            continue;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// Frames for attack tests: what a node that lied about itself would send.
pub mod forge {
    use super::ClusterNode;
    use super::meta::MetaCommand;
    use super::types::{Meta, MetaEntry};
    use super::wire::{Request, Rpc};
    use openraft::raft::AppendEntriesRequest;
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};

    /// The bytes (length prefix and body) of an `AppendEntries` claiming
    /// node `claimed` leads at a higher term than `target`'s, appending
    /// and committing `SetPolicy { sha256 }` right after `target`'s last
    /// entry: applied by a node that trusted it.
    pub fn takeover(target: &ClusterNode, claimed: u64, sha256: &str) -> Vec<u8> {
        let term = target.term() + 10;
        let prev = target
            .last_log()
            .map(|(t, leader, index)| LogId::new(CommittedLeaderId::new(t, leader), index));
        let index = prev.map_or(0, |p| p.index + 1);
        let log_id = LogId::new(CommittedLeaderId::new(term, claimed), index);
        let entry = MetaEntry {
            log_id,
            payload: EntryPayload::Normal(MetaCommand::SetPolicy {
                sha256: sha256.to_owned(),
            }),
        };
        let request = Request {
            from: claimed,
            data_groups: target.data_groups(),
            rpc: Rpc::Append(AppendEntriesRequest::<Meta> {
                vote: Vote::new_committed(term, claimed),
                prev_log_id: prev,
                entries: vec![entry],
                leader_commit: Some(log_id),
            }),
        };
        let body = rmp_serde::to_vec_named(&request).unwrap_or_default();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }
}
