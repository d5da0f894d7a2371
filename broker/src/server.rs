//! Start-up, the accept loop and shutdown.
//!
//! The accept loop asks unvalidated addresses for a QUIC Retry (address
//! validation), caps the handshakes in progress overall and per source
//! address ([`crate::handshake`]), bounds the handshake in time, then takes
//! a place among the established connections (the global connection cap)
//! and hands the connection to its session. Shutdown stops accepting, closes every
//! connection, lets the group-commit writer finish what it holds, and closes
//! RocksDB before returning.

use crate::audit::{Audit, CHECKPOINT_TOPIC, Checkpoints, Event};
use crate::cluster::ClusterNode;
use crate::commit::{self, Committer};
use crate::config::Config;
use crate::error::BrokerError;
use crate::fanout::Registry;
use crate::handshake::HandshakeGate;
use crate::limits::Limits;
use crate::quota::Quotas;
use crate::reload::{self, Reloaded};
use crate::state::BrokerState;
use crate::store::Store;
use crate::system::{self, SystemPublisher};
use crate::{disk, metrics, session, tls, trimmer};
use serde_json::json;
use signet_proto::{ErrorCode, SigningKey};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Longest wait at shutdown for connections to finish closing (QUIC's
/// draining period) before the socket is let go.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// A running broker.
pub struct Broker {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    state: Weak<BrokerState>,
    cluster: Option<Arc<ClusterNode>>,
}

impl Broker {
    /// The UDP address the broker listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the broker: no new connections, every connection closed, every
    /// accepted write finished, RocksDB closed. Acked data is on disk.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Reads the policy file again and applies it if it is valid; on error
    /// the old policy stays in force (the failure is logged and audited).
    pub fn reload(&self) -> Result<Reloaded, BrokerError> {
        let state = self.state.upgrade().ok_or(BrokerError::Stopped)?;
        reload::reload(&state)
    }

    /// How many topic heads the broker holds in memory (topics with
    /// messages, and names watched by live subscriptions); 0 once stopped.
    pub fn topic_heads(&self) -> usize {
        self.state.upgrade().map_or(0, |s| s.registry.len())
    }

    /// Where a topic stands: its first offset, next offset and stored
    /// record bytes; `None` for a topic without messages, or once stopped.
    pub fn topic_state(&self, topic: &str) -> Option<(u64, u64, u64)> {
        let head = self.state.upgrade()?.registry.head(topic)?;
        head.topic_id?;
        Some((head.first_offset, head.next_offset, head.stored_bytes))
    }

    /// Record bytes a principal has stored, as its quota counts them (`None`
    /// before the broker has seen the principal, or once stopped).
    pub fn stored_bytes(&self, principal: &str) -> Option<u64> {
        Some(self.state.upgrade()?.quotas.existing(principal)?.stored())
    }

    /// Flushes and compacts the stored messages, so what retention deleted
    /// leaves the disk; returns the bytes the messages then take on disk.
    /// Blocks: an operational and test hook, not for the hot path.
    pub fn compact_storage(&self) -> Result<u64, BrokerError> {
        let state = self.state.upgrade().ok_or(BrokerError::Stopped)?;
        state.store.compact_messages()?;
        Ok(state.store.messages_disk_bytes()?)
    }

    /// This broker's part in a cluster, when its policy has `[cluster]`.
    pub fn cluster(&self) -> Option<Arc<ClusterNode>> {
        self.cluster.clone()
    }

    /// Runs until the broker stops by itself (it only does on shutdown).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Starts a broker from a validated config.
pub async fn start(config: Config) -> Result<Broker, BrokerError> {
    let Config { settings, policy } = config;
    let policy_sha256 = policy.sha256.clone();
    let policy = watch::Sender::new(Arc::new(policy));
    let limits = &settings.limits;
    let server_config = tls::server_config(&settings.tls, limits)?;
    let store = Arc::new(Store::open(&settings.data_dir)?);
    let topics = store.load_topics()?;
    let registry = Arc::new(Registry::new(&topics));
    let quotas = Arc::new(Quotas::new(limits.frame_bytes_max_u32()));
    let identity = match &settings.identity_key {
        Some(path) => Some(Arc::new(system::load_identity(path)?)),
        None => {
            tracing::warn!(
                "the policy names no [broker] identity_key: audit checkpoints are not signed, so a rewritten audit log cannot be detected, and consumer groups cannot run"
            );
            None
        }
    };
    let (groups, group_wake) =
        crate::group_writer::Groups::load(&store, identity.clone(), limits.group_window_max)?;
    let committer = commit::spawn(
        store.clone(),
        registry.clone(),
        quotas.clone(),
        &topics,
        limits,
        policy.subscribe(),
        groups,
        identity.clone(),
    )
    .map_err(|source| BrokerError::Thread {
        what: "commit writer",
        source,
    })?;
    let (audit, audit_thread) = match &settings.audit {
        Some(audit) => {
            let checkpoints = match &identity {
                Some(key) => Some(checkpoints(key.clone(), &committer.sender, &store)?),
                None => None,
            };
            let (audit, thread) = Audit::open(audit, checkpoints)?;
            (audit, Some(thread))
        }
        None => {
            tracing::warn!(
                "the policy has no [audit] section: this broker keeps no audit trail of connections, refusals and reloads"
            );
            (Audit::disabled(), None)
        }
    };
    let cluster = match &settings.cluster {
        Some(cluster) => Some(Arc::new(
            ClusterNode::start(
                cluster,
                &settings.tls,
                &settings.data_dir,
                limits,
                crate::cluster::DataHost {
                    store: store.clone(),
                    commits: committer.sender.clone(),
                },
            )
            .await?,
        )),
        None => None,
    };
    let endpoint = listen(settings.listen, server_config)?;
    let local_addr = endpoint
        .local_addr()
        .map_err(|source| BrokerError::Listen {
            addr: settings.listen,
            source,
        })?;
    if let Some(addr) = settings.metrics
        && let Err(e) = metrics::serve(addr)
    {
        tracing::warn!(%addr, error = %e, "metrics endpoint not started");
    }
    audit.record(Event::system(
        "broker_started",
        json!({ "listen": local_addr.to_string(), "policy_sha256": policy_sha256 }),
    ));
    let Committer { sender, thread } = committer;
    let mut state = BrokerState::new(
        settings,
        policy,
        quotas,
        audit,
        store.clone(),
        registry,
        sender,
    );
    state.groups = crate::group_writer::Hub {
        enabled: identity.is_some(),
        wake: group_wake,
    };
    state.cluster = cluster.clone();
    let state = Arc::new(state);
    let store = Arc::downgrade(&store);
    let (shutdown, shutdown_rx) = watch::channel(false);
    tracing::info!(%local_addr, "broker listening");
    let weak = Arc::downgrade(&state);
    let task = tokio::spawn(run(
        endpoint,
        state,
        shutdown_rx,
        thread,
        audit_thread,
        store,
    ));
    Ok(Broker {
        local_addr,
        shutdown,
        task,
        state: weak,
        cluster,
    })
}

/// The audit writer's checkpoint signing: each checkpoint is also
/// published to the system topic through the group commit.
fn checkpoints(
    key: Arc<SigningKey>,
    commits: &tokio::sync::mpsc::Sender<commit::Command>,
    store: &Store,
) -> Result<Checkpoints, BrokerError> {
    let mut publisher = SystemPublisher::new(key.clone(), commits.clone(), store)?;
    let publish = move |line: &[u8]| {
        if let Err(e) = publisher.publish_blocking(CHECKPOINT_TOPIC, line.to_vec()) {
            tracing::error!(error = %e, topic = CHECKPOINT_TOPIC, "audit checkpoint not published");
        }
    };
    Ok(Checkpoints {
        key,
        publish: Some(Box::new(publish)),
    })
}

/// The QUIC endpoint on `addr`, with large socket buffers.
fn listen(
    addr: SocketAddr,
    server_config: quinn::ServerConfig,
) -> Result<quinn::Endpoint, BrokerError> {
    let listen_error = |source| BrokerError::Listen { addr, source };
    let socket = signet_proto::stream::udp_socket(addr).map_err(listen_error)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| listen_error(std::io::Error::other("no async runtime")))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        runtime,
    )
    .map_err(listen_error)
}

/// Serves until shutdown, then stops in order: accepting, reloading,
/// connections, the audit writer (its last checkpoint goes through the
/// commit), the commit writer (which finishes what it holds), and RocksDB.
async fn run(
    endpoint: quinn::Endpoint,
    state: Arc<BrokerState>,
    shutdown: watch::Receiver<bool>,
    commit_thread: std::thread::JoinHandle<()>,
    audit_thread: Option<std::thread::JoinHandle<()>>,
    store: Weak<Store>,
) {
    let audit = state.audit.clone();
    let reloader = reload::spawn(state.clone(), shutdown.clone());
    let trimmer = trimmer::spawn(state.clone(), shutdown.clone());
    let disk = disk::spawn(
        state.disk.clone(),
        Duration::from_millis(state.limits().storage_check_ms_max),
        shutdown.clone(),
    );
    let cluster = state.cluster.clone();
    accept_loop(&endpoint, state, shutdown).await;
    if let Some(cluster) = cluster {
        cluster.shutdown().await;
    }
    let _ = reloader.await;
    let _ = trimmer.await;
    let _ = disk.await;
    endpoint.close(
        quinn::VarInt::from(ErrorCode::Unavailable.0),
        b"broker shutting down",
    );
    // Clients learn of the close (and reconnect) before the port is let
    // go, so a broker started right after on the same address can bind it.
    let _ = tokio::time::timeout(SHUTDOWN_DRAIN, endpoint.wait_idle()).await;
    drop(endpoint);
    audit.record(Event::system("broker_stopped", json!({})));
    drop(audit);
    if let Some(thread) = audit_thread {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    let _ = tokio::task::spawn_blocking(move || commit_thread.join()).await;
    wait_closed(store).await;
    tracing::info!("broker stopped");
}

/// Accepts connections: a Retry for every unvalidated address (no state
/// kept), then a place among the handshakes in progress (overall and per
/// source address), the handshake within its deadline, and only then a
/// place among the established connections.
async fn accept_loop(
    endpoint: &quinn::Endpoint,
    state: Arc<BrokerState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = state.limits();
    let permits = Arc::new(Semaphore::new(Limits::usize(limits.connections_max)));
    let gate = HandshakeGate::new(
        Limits::usize(limits.handshakes_max),
        u32::try_from(limits.handshakes_per_ip_max).unwrap_or(u32::MAX),
    );
    let handshake_timeout = Duration::from_millis(limits.handshake_ms_max);
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        if !incoming.remote_address_validated() {
            let _ = incoming.retry();
            continue;
        }
        let remote = incoming.remote_address();
        let slot = match gate.try_enter(remote.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                refuse(&state, refused.reason(), &refused.to_string(), remote);
                incoming.refuse();
                continue;
            }
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        let permits = permits.clone();
        connections.spawn(async move {
            let handshake = tokio::time::timeout(handshake_timeout, incoming).await;
            drop(slot);
            match handshake {
                Ok(Ok(conn)) => {
                    let Ok(permit) = permits.try_acquire_owned() else {
                        refuse(&state, "connection_cap", "connection cap", remote);
                        conn.close(
                            ErrorCode::Unavailable.0.into(),
                            b"too many connections; try again later",
                        );
                        return;
                    };
                    session::serve(conn, state, shutdown).await;
                    drop(permit);
                }
                Ok(Err(e)) => {
                    metrics::connection_refused("handshake");
                    tracing::info!(%remote, reason = %e, "connection refused at handshake");
                    state.audit.record(Event::new(
                        "connection_refused",
                        json!({ "reason": e.to_string(), "remote": remote.to_string() }),
                    ));
                }
                Err(_) => {
                    metrics::connection_refused("handshake_timeout");
                    tracing::info!(%remote, "handshake timed out");
                    state.audit.record(Event::new(
                        "connection_refused",
                        json!({ "reason": "handshake timeout", "remote": remote.to_string() }),
                    ));
                }
            }
        });
    }
    // Every connection is told why before its task ends (a dropped
    // connection would close with 0): `Unavailable` makes clients dial
    // again.
    endpoint.close(
        quinn::VarInt::from(ErrorCode::Unavailable.0),
        b"broker shutting down",
    );
    connections.shutdown().await;
}

/// Counts, logs and audits (rate-limited) a connection refused by a cap.
fn refuse(state: &BrokerState, label: &'static str, reason: &str, remote: SocketAddr) {
    metrics::connection_refused(label);
    tracing::warn!(%remote, reason, "connection refused");
    state.audit.record(Event::new(
        "connection_refused",
        json!({ "reason": reason, "remote": remote.to_string() }),
    ));
}

/// Waits (bounded) until the last reference to the store is gone, so
/// RocksDB is closed and its lock released when shutdown returns.
async fn wait_closed(store: Weak<Store>) {
    for _ in 0..10_000 {
        if store.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tracing::warn!("storage still referenced after shutdown");
}
