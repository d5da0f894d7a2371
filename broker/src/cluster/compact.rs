//! Data-group log compaction. A data group's state is the node's message
//! store, which no snapshot copies, so a log entry may only be deleted
//! once no member can ever need it from a peer: every member holds it on
//! disk. The leader learns that from its replication progress (each
//! member's matched index, counted only once the member synced it) and
//! replicates the least of them as a compaction point
//! ([`DataCommand::compact`]) once it is `every` entries past the last one.
//! Each node, when it has applied the point, records a snapshot mark there
//! ([`super::data`]) and asks openraft to delete its log up to the point.
//!
//! Entries up to the point are on every member, hence committed and never
//! truncated, and any future leader holds every entry after its own point;
//! so openraft sends no snapshot while members keep their disks. A member
//! that is down holds the point back (its matched index does not move), so
//! it catches up from the log when it returns; the log grows meanwhile.

use super::data::DataCommand;
use super::types::{DataRaft, NodeAddr};
use openraft::RaftMetrics;
use std::time::Duration;
use tokio::sync::watch;

/// How often the leader looks at its replication progress.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The longest a node waits for its snapshot mark before it gives up on
/// one compaction point (the next point tries again).
const MARK_WAIT: Duration = Duration::from_secs(30);

/// The compaction point the leader may propose now: the least index every
/// voter other than itself holds on disk (the leader holds its whole log),
/// when `me` leads and every follower's progress is known.
pub(crate) fn point(metrics: &RaftMetrics<u64, NodeAddr>, me: u64) -> Option<u64> {
    if metrics.current_leader != Some(me) {
        return None;
    }
    let progress = metrics.replication.as_ref()?;
    let mut least: Option<u64> = None;
    for voter in metrics.membership_config.voter_ids() {
        if voter == me {
            continue;
        }
        let matched = progress.get(&voter)?.as_ref()?.index;
        least = Some(least.map_or(matched, |l| l.min(matched)));
    }
    least
}

/// Runs group `group`'s compaction on node `me` until `shutdown`: proposes
/// a point when leading, and deletes the log up to each point `applied`
/// tells of.
pub(crate) async fn run(
    raft: DataRaft,
    group: u64,
    me: u64,
    every: u64,
    mut applied: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = look.tick() => {
                let metrics = raft.metrics().borrow().clone();
                let last = *applied.borrow();
                if let Some(at) = point(&metrics, me).filter(|at| *at >= last.saturating_add(every)) {
                    let command = DataCommand {
                        group,
                        compact: Some(at),
                        ..DataCommand::default()
                    };
                    // Not answered: a point lost to a change of leader is
                    // proposed again by the next one.
                    if let Err(e) = raft.client_write(command).await {
                        tracing::debug!(group, error = %e, "compaction point not committed");
                    }
                }
            }
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
                let at = *applied.borrow_and_update();
                delete_upto(&raft, group, at).await;
            }
        }
    }
}

/// Marks a snapshot at the applied state (at or past `at`) and has
/// openraft delete the log up to `at`.
async fn delete_upto(raft: &DataRaft, group: u64, at: u64) {
    let purged = raft.metrics().borrow().purged;
    if purged.is_some_and(|p| p.index >= at) || raft.trigger().snapshot().await.is_err() {
        return;
    }
    let marked = raft
        .wait(Some(MARK_WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= at),
            "snapshot mark at the compaction point",
        )
        .await;
    if let Err(e) = marked {
        tracing::warn!(group, at, error = %e, "data group log not compacted");
        return;
    }
    if let Err(e) = raft.trigger().purge_log(at).await {
        tracing::warn!(group, at, error = %e, "data group log not compacted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};
    use std::collections::{BTreeMap, BTreeSet};

    fn metrics(leader: u64, matched: &[(u64, Option<u64>)]) -> RaftMetrics<u64, NodeAddr> {
        let mut m = RaftMetrics::new_initial(leader);
        m.current_leader = Some(leader);
        let voters: BTreeSet<u64> = [1, 2, 3].into();
        let nodes: BTreeMap<u64, NodeAddr> =
            voters.iter().map(|id| (*id, NodeAddr::default())).collect();
        m.membership_config = std::sync::Arc::new(StoredMembership::new(
            None,
            Membership::new(vec![voters], nodes),
        ));
        m.replication = Some(
            matched
                .iter()
                .map(|(id, index)| {
                    (
                        *id,
                        index.map(|i| LogId::new(CommittedLeaderId::new(1, leader), i)),
                    )
                })
                .collect(),
        );
        m
    }

    #[test]
    fn the_point_is_the_least_follower_progress_and_none_while_one_is_unknown() {
        let known = metrics(1, &[(1, Some(90)), (2, Some(70)), (3, Some(80))]);
        assert_eq!(point(&known, 1), Some(70));
        assert_eq!(point(&known, 2), None, "only the leader proposes");
        let leader_alone = metrics(1, &[(2, Some(70)), (3, Some(80))]);
        assert_eq!(point(&leader_alone, 1), Some(70));
        let unknown = metrics(1, &[(1, Some(90)), (2, None), (3, Some(80))]);
        assert_eq!(point(&unknown, 1), None, "a follower not yet matched");
        let missing = metrics(1, &[(1, Some(90)), (2, Some(70))]);
        assert_eq!(point(&missing, 1), None, "a follower with no progress");
    }
}
