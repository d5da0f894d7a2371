//! Start-up, the accept loop and shutdown.
//!
//! The accept loop takes a connection permit before handshaking (a global
//! connection cap by construction), asks unvalidated addresses for a QUIC
//! Retry (address validation), bounds the handshake in time, and hands each
//! connection to its session. Shutdown stops accepting, closes every
//! connection, lets the group-commit writer finish what it holds, and closes
//! RocksDB before returning.

use crate::audit::{Audit, Event};
use crate::commit::{self, CommitRequest};
use crate::config::{Config, Policy};
use crate::error::BrokerError;
use crate::fanout::Registry;
use crate::quota::{PrincipalQuota, Quotas};
use crate::reload::{self, Reloaded};
use crate::replay::ReplayGuard;
use crate::store::Store;
use crate::{metrics, session, tls};
use serde_json::json;
use signet_proto::ErrorCode;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

/// Broker-wide state shared by every session.
pub struct Shared {
    /// Settings read at start (the policy part lives in `policy`).
    pub config: Config,
    /// The policy in force; replaced whole by a reload, watched by live
    /// subscriptions.
    policy: watch::Sender<Arc<Policy>>,
    /// Quota state per principal.
    pub quotas: Arc<Quotas>,
    /// The audit log.
    pub audit: Audit,
    /// RocksDB.
    pub store: Arc<Store>,
    /// Topic heads for live delivery.
    pub registry: Arc<Registry>,
    /// Per-key replay marks.
    pub replay: ReplayGuard,
    /// The group-commit queue.
    pub commits: mpsc::Sender<CommitRequest>,
}

impl Shared {
    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.borrow().clone()
    }

    /// A receiver that wakes on every reload.
    pub fn watch_policy(&self) -> watch::Receiver<Arc<Policy>> {
        self.policy.subscribe()
    }

    pub(crate) fn set_policy(&self, policy: Policy) {
        self.policy.send_replace(Arc::new(policy));
    }

    /// A principal's quota state under the policy in force.
    pub fn quota(&self, principal: &str) -> Arc<PrincipalQuota> {
        self.quota_under(&self.policy(), principal)
    }

    /// A principal's quota state under `policy` (a policy already read).
    pub fn quota_under(&self, policy: &Policy, principal: &str) -> Arc<PrincipalQuota> {
        self.quotas.get(principal, policy.quota(principal), || {
            self.store.usage(principal).unwrap_or(0)
        })
    }
}

/// A running broker.
pub struct Broker {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    shared: Weak<Shared>,
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
    pub fn reload(&self) -> Result<Reloaded, String> {
        let shared = self.shared.upgrade().ok_or("the broker has stopped")?;
        reload::reload(&shared)
    }

    /// Runs until the broker stops by itself (it only does on shutdown).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Starts a broker from a validated config.
pub async fn start(mut config: Config) -> Result<Broker, BrokerError> {
    let server_config = tls::server_config(&config.tls, &config.limits)?;
    let store = Arc::new(Store::open(&config.data_dir)?);
    let topics = store.load_topics()?;
    let registry = Arc::new(Registry::new(&topics));
    let quotas = Arc::new(Quotas::new(config.frame_bytes_max));
    let committer = commit::spawn(store.clone(), registry.clone(), quotas.clone(), &topics)
        .map_err(|e| BrokerError::Storage(format!("cannot start the commit writer: {e}")))?;
    let (audit, audit_thread) = match &config.audit {
        Some(settings) => {
            let (audit, thread) = Audit::open(settings)?;
            (audit, Some(thread))
        }
        None => (Audit::disabled(), None),
    };
    let listen_error = |source| BrokerError::Listen {
        addr: config.listen,
        source,
    };
    let socket = signet_proto::stream::udp_socket(config.listen).map_err(listen_error)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| listen_error(std::io::Error::other("no async runtime")))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        runtime,
    )
    .map_err(listen_error)?;
    let local_addr = endpoint.local_addr().map_err(listen_error)?;
    if let Some(addr) = config.metrics
        && let Err(e) = metrics::serve(addr)
    {
        tracing::warn!(%addr, error = %e, "metrics endpoint not started");
    }
    let policy = std::mem::take(&mut config.policy);
    audit.record(Event::new(
        "broker_started",
        json!({ "listen": local_addr.to_string(), "policy_sha256": policy.sha256 }),
    ));
    let shared = Arc::new(Shared {
        policy: watch::Sender::new(Arc::new(policy)),
        quotas,
        audit,
        replay: ReplayGuard::new(store.clone()),
        store: store.clone(),
        registry,
        commits: committer.sender,
        config,
    });
    let store_weak = Arc::downgrade(&store);
    drop(store);
    let (shutdown, shutdown_rx) = watch::channel(false);
    tracing::info!(%local_addr, "broker listening");
    let reloader = reload::spawn(shared.clone(), shutdown_rx.clone());
    let weak = Arc::downgrade(&shared);
    let task = tokio::spawn(async move {
        let audit = shared.audit.clone();
        accept_loop(&endpoint, shared, shutdown_rx).await;
        let _ = reloader.await;
        endpoint.close(
            quinn::VarInt::from(ErrorCode::Unavailable.0),
            b"broker shutting down",
        );
        let _ = tokio::task::spawn_blocking(move || committer.thread.join()).await;
        audit.record(Event::new("broker_stopped", json!({})));
        drop(audit);
        if let Some(thread) = audit_thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        wait_closed(store_weak).await;
        tracing::info!("broker stopped");
    });
    Ok(Broker {
        local_addr,
        shutdown,
        task,
        shared: weak,
    })
}

async fn accept_loop(
    endpoint: &quinn::Endpoint,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(shared.config.limits.max_connections));
    let handshake_timeout = shared.config.limits.handshake_timeout;
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::connection_refused("connection_cap");
            tracing::warn!(remote = %incoming.remote_address(), "connection cap reached; refusing");
            shared.audit.record(
                Event::new("connection_refused", json!({ "reason": "connection cap", "remote": incoming.remote_address().to_string() }))
                    .noisy("-"),
            );
            incoming.refuse();
            continue;
        };
        if !incoming.remote_address_validated() {
            let _ = incoming.retry();
            continue;
        }
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let remote = incoming.remote_address();
            match tokio::time::timeout(handshake_timeout, incoming).await {
                Ok(Ok(conn)) => session::serve(conn, shared, shutdown).await,
                Ok(Err(e)) => {
                    metrics::connection_refused("handshake");
                    tracing::info!(%remote, reason = %e, "connection refused at handshake");
                    shared.audit.record(
                        Event::new(
                            "connection_refused",
                            json!({ "reason": e.to_string(), "remote": remote.to_string() }),
                        )
                        .noisy("-"),
                    );
                }
                Err(_) => {
                    metrics::connection_refused("handshake_timeout");
                    tracing::info!(%remote, "handshake timed out");
                    shared.audit.record(
                        Event::new(
                            "connection_refused",
                            json!({ "reason": "handshake timeout", "remote": remote.to_string() }),
                        )
                        .noisy("-"),
                    );
                }
            }
            drop(permit);
        });
    }
    connections.shutdown().await;
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
