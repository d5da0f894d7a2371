//! What the broker's tasks share: [`BrokerState`] (one per broker: settings,
//! the policy in force, quotas, storage, topic heads, replay marks, the
//! commit queue, the audit log) and [`ConnectionState`] (one per
//! connection: its principal, ACL cache, in-flight cap and frame budget).

use crate::acl::{Action, DecisionCache};
use crate::audit::Audit;
use crate::commit::Command;
use crate::disk::DiskGuard;
use crate::error::StoreError;
use crate::fanout::Registry;
use crate::limits::Limits;
use crate::policy::Policy;
use crate::quota::{PrincipalQuota, Quotas};
use crate::replay::{Marks, ReplayGuard};
use crate::settings::Settings;
use crate::store::Store;
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, mpsc, watch};

/// Broker-wide state shared by every connection.
pub struct BrokerState {
    /// Settings read at start.
    pub settings: Settings,
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
    pub commits: mpsc::Sender<Command>,
    /// Whether the data folder is below its free-space floor.
    pub disk: Arc<DiskGuard>,
    /// What consumer-group streams need (set by the server at start).
    pub groups: crate::group_writer::Hub,
    /// This broker's part in a cluster (`[cluster]`), if any.
    pub cluster: Option<Arc<crate::cluster::ClusterNode>>,
}

impl BrokerState {
    /// Assembles the state; `policy` becomes the policy in force.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Settings,
        policy: watch::Sender<Arc<Policy>>,
        quotas: Arc<Quotas>,
        audit: Audit,
        store: Arc<Store>,
        registry: Arc<Registry>,
        commits: mpsc::Sender<Command>,
    ) -> BrokerState {
        let disk = Arc::new(DiskGuard::new(
            &settings.data_dir,
            settings.limits.storage_free_bytes_min,
        ));
        let window = settings.limits.idempotency_window_seqs_max;
        let (moves, groups) = match &settings.cluster {
            Some(cluster) => (Marks::Applied, cluster.data_groups),
            None => (Marks::Accepted, 0),
        };
        BrokerState {
            disk,
            settings,
            policy,
            quotas,
            audit,
            replay: ReplayGuard::new(store.clone(), window, moves, groups),
            store,
            registry,
            commits,
            groups: crate::group_writer::Hub::default(),
            cluster: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.settings.limits
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.borrow().clone()
    }

    /// A receiver that wakes on every reload.
    pub fn watch_policy(&self) -> watch::Receiver<Arc<Policy>> {
        self.policy.subscribe()
    }

    /// Puts a new policy in force.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.send_replace(Arc::new(policy));
    }

    /// A principal's quota state under `policy` (a policy already read).
    /// The first time a principal is seen its stored bytes are read from
    /// storage; a failed read is an error, never 0.
    pub fn quota(
        &self,
        policy: &Policy,
        principal: &str,
    ) -> Result<Arc<PrincipalQuota>, StoreError> {
        self.quotas.get(principal, policy.quota(principal), || {
            self.store.usage(principal)
        })
    }
}

/// State of one authenticated connection.
pub struct ConnectionState {
    /// Broker-wide state.
    pub broker: Arc<BrokerState>,
    /// The principal named by the client certificate (shared with the
    /// audit log and the commit entries).
    pub principal: Arc<str>,
    /// Publish batches read but not yet answered, on all of this
    /// connection's publish streams (`limits.inflight_batches_max`).
    pub inflight: Arc<Semaphore>,
    /// Bytes of frames being read or answered on this connection
    /// (`limits.inflight_bytes_max`), one permit per byte.
    pub frame_budget: Arc<Semaphore>,
    /// This connection's cached ACL decisions.
    pub decisions: Mutex<DecisionCache>,
    /// The connection, to close it on a protocol violation.
    pub conn: quinn::Connection,
}

impl ConnectionState {
    /// State for a connection of `principal`.
    pub fn new(
        broker: Arc<BrokerState>,
        principal: &str,
        conn: quinn::Connection,
    ) -> ConnectionState {
        let limits = broker.limits();
        ConnectionState {
            inflight: Arc::new(Semaphore::new(Limits::usize(limits.inflight_batches_max))),
            frame_budget: Arc::new(Semaphore::new(
                limits.inflight_bytes().min(Semaphore::MAX_PERMITS),
            )),
            decisions: Mutex::new(DecisionCache::new(Limits::usize(
                limits.acl_cache_entries_max,
            ))),
            principal: Arc::from(principal),
            broker,
            conn,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.broker.policy()
    }

    /// This connection's ACL decisions (the lock is never held across an await).
    pub fn decisions(&self) -> std::sync::MutexGuard<'_, DecisionCache> {
        self.decisions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the principal may subscribe to `topic` under the policy in force.
    pub fn may_subscribe(&self, topic: &str) -> bool {
        let policy = self.policy();
        policy.principal(&self.principal).is_some_and(|p| {
            self.decisions()
                .allows(policy.version, &p.grants, Action::Subscribe, topic)
        })
    }
}
