//! The retention passes: every `limits.retention_check_ms_max`, each topic
//! with a limit past it (the age limit, which time passes without any
//! publish, or a limit a reload lowered) is trimmed by `Trim` commands to
//! the group-commit writer, one at a time; each pass also exports where
//! every topic stands as metrics.
//!
//! A topic written since the last pass is trimmed here by age only: its
//! count and byte limits are the group commit's, which trims them in large
//! steps of whole commits (`ledger`) as it writes. Trimming it here too, to
//! the exact limit every pass, read thousands of records per pass and cut
//! through the ledger's runs, so the group commit had to read as well
//! (BENCHMARKS.md "Retention"). A quiet topic is trimmed to every limit.

use crate::clock::now_ms;
use crate::cluster::data::DataTrim;
use crate::commit::Command;
use crate::error::StoreError;
use crate::metrics;
use crate::state::BrokerState;
use crate::store::Store;
use crate::trim::{Floor, plan};
use signet_proto::KeyId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Runs retention passes until shutdown.
pub fn spawn(
    state: Arc<BrokerState>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_millis(state.limits().retention_check_ms_max);
    tokio::spawn(async move {
        let mut written = Written::default();
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = pass(&state, &mut shutdown, &mut written).await {
                tracing::error!(error = %e, "retention pass failed; retried at the next");
            }
        }
    })
}

/// Each topic's next offset at the last pass.
#[derive(Default)]
struct Written(HashMap<String, u64>);

impl Written {
    /// Whether `topic` was written since the last pass (false the first
    /// time it is seen); remembers `next_offset` for the next pass.
    fn since_last(
        &mut self,
        seen: &mut HashMap<String, u64>,
        topic: &str,
        next_offset: u64,
    ) -> bool {
        seen.insert(topic.to_owned(), next_offset);
        self.0
            .get(topic)
            .is_some_and(|&before| before != next_offset)
    }
}

/// One pass over every topic.
async fn pass(
    state: &BrokerState,
    shutdown: &mut watch::Receiver<bool>,
    written: &mut Written,
) -> Result<(), StoreError> {
    let policy = state.policy();
    let topics = state.registry.topics();
    metrics::topics(
        topics
            .iter()
            .map(|(name, h)| (name.as_str(), h.first_offset, h.next_offset, h.stored_bytes)),
    );
    let mut owners = Owners::default();
    let mut seen = HashMap::new();
    for (name, head) in topics {
        if let Some(cluster) = &state.cluster
            && !cluster.leads_data(cluster.group_of(&name))
        {
            // A cluster's trims are entries of the log of the data group
            // holding the topic, planned by its leader: a follower deletes
            // nothing on its own clock.
            continue;
        }
        let Some(retention) = policy.retention(&name).cloned() else {
            continue;
        };
        let busy = written.since_last(&mut seen, &name, head.next_offset);
        let mut head = head;
        // The pass trims what is past the limits when it reaches the
        // topic, and no further: publishes during the pass are the group
        // commit's to trim (chasing them kept a core busy reading records
        // while publishers ran, BENCHMARKS.md "Retention").
        let mut floor = Floor::of(&retention, &head, Some(now_ms()));
        if busy {
            floor = Floor {
                by_count: head.first_offset,
                excess: 0,
                ..floor
            };
        }
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let store = state.store.clone();
            let plan = {
                let mut cache = std::mem::take(&mut owners);
                let result = tokio::task::spawn_blocking(move || {
                    let plan = head.topic_id.map_or(Ok(None), |topic_id| {
                        plan(&store, topic_id, &head, &floor, |key| cache.of(&store, key))
                    });
                    (plan, cache)
                })
                .await;
                let Ok((plan, cache)) = result else {
                    return Ok(());
                };
                owners = cache;
                plan?
            };
            let Some(plan) = plan else { break };
            floor.excess = floor.excess.saturating_sub(plan.bytes);
            let to = plan.to;
            let trim = DataTrim {
                topic: name.clone(),
                from: plan.from,
                to,
                bytes: plan.bytes,
                freed: plan
                    .freed
                    .into_iter()
                    .map(|(principal, bytes)| (principal.to_string(), bytes))
                    .collect(),
            };
            if let Some(cluster) = &state.cluster {
                match cluster.submit_trim(trim).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, topic = %name, "retention trim not committed by the cluster");
                        return Ok(());
                    }
                }
            } else {
                let (reply, answer) = oneshot::channel();
                let trim = trim.into_trim(reply, None);
                if state.commits.send(Command::Trim(trim)).await.is_err() {
                    return Ok(());
                }
                match answer.await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) | Err(_) => break,
                    Ok(Err(e)) => return Err(e),
                }
            }
            match state.registry.head(&name) {
                Some(now) if now.first_offset == to => head = now,
                _ => break,
            }
        }
    }
    written.0 = seen;
    Ok(())
}

/// Signing key → principal, read once per pass.
#[derive(Default)]
struct Owners(HashMap<KeyId, Option<Arc<str>>>);

impl Owners {
    fn of(&mut self, store: &Store, key: KeyId) -> Result<Option<Arc<str>>, StoreError> {
        if let Some(owner) = self.0.get(&key) {
            return Ok(owner.clone());
        }
        let owner: Option<Arc<str>> = store.key_owner(&key)?.map(Arc::from);
        self.0.insert(key, owner.clone());
        Ok(owner)
    }
}
