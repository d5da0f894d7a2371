//! What the oldest records of each topic under a count limit weigh, kept
//! in memory per group commit, so the group commit trims whole commits'
//! worth of records by count without reading them back from RocksDB.
//!
//! Each committed write adds one [`Run`] per such topic: its offsets, their
//! record bytes and whose bytes they are. A count trim takes whole runs
//! from the topic's first offset up to the count floor. When the ledger
//! does not reach back to the first offset (after a restart, a gap, or a
//! run dropped for the size bound), [`crate::trim`] reads the records as
//! before; the ledger is an index of what was written, never the truth.

use crate::trim::Plan;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Runs kept per topic (a run is one group commit's records of a topic,
/// up to a few hundred); the oldest go first.
const RUNS_MAX: usize = 16_384;

/// One write's records of one topic: offsets `from..to`, contiguous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    from: u64,
    to: u64,
    bytes: u64,
    owners: Vec<(Arc<str>, u64)>,
    /// An offset of the write was not added here: the run cannot be used.
    broken: bool,
}

impl Run {
    /// A run starting at `from`, empty.
    pub fn starting(from: u64) -> Run {
        Run {
            from,
            to: from,
            bytes: 0,
            owners: Vec::new(),
            broken: false,
        }
    }

    /// Adds the record at `offset` (`bytes` long, stored by `owner`).
    pub fn add(&mut self, offset: u64, bytes: u64, owner: &Arc<str>) {
        if offset != self.to {
            self.broken = true;
        }
        self.to = offset.saturating_add(1);
        self.bytes = self.bytes.saturating_add(bytes);
        match self.owners.iter_mut().find(|(o, _)| o == owner) {
            Some((_, b)) => *b = b.saturating_add(bytes),
            None => self.owners.push((owner.clone(), bytes)),
        }
    }
}

/// Runs per topic id, oldest first.
#[derive(Debug, Default)]
pub struct Ledger {
    topics: HashMap<u32, VecDeque<Run>>,
}

impl Ledger {
    /// Records a committed run of topic `topic_id`. A run that does not
    /// continue the last one starts the topic's ledger again.
    pub fn append(&mut self, topic_id: u32, run: Run) {
        let runs = self.topics.entry(topic_id).or_default();
        if run.broken || run.to <= run.from {
            runs.clear();
            return;
        }
        if runs.back().is_some_and(|last| last.to != run.from) {
            runs.clear();
        }
        if runs.len() >= RUNS_MAX {
            runs.pop_front();
        }
        runs.push_back(run);
    }

    /// The topic's first offset is now `first`: runs that start below it
    /// are gone (one it cuts through too: how its bytes split is unknown).
    pub fn trimmed(&mut self, topic_id: u32, first: u64) {
        if let Some(runs) = self.topics.get_mut(&topic_id) {
            while runs.front().is_some_and(|r| r.from < first) {
                runs.pop_front();
            }
            if runs.is_empty() {
                self.topics.remove(&topic_id);
            }
        }
    }

    /// Forgets a topic (no longer under a count limit).
    pub fn forget(&mut self, topic_id: u32) {
        self.topics.remove(&topic_id);
    }

    /// The first offset the ledger knows of topic `topic_id`: records
    /// below it (a run a trim cut through, or written before a restart)
    /// must be read to be trimmed.
    pub fn start(&self, topic_id: u32) -> Option<u64> {
        Some(self.topics.get(&topic_id)?.front()?.from)
    }

    /// A count trim of topic `topic_id` from `first` up to at most
    /// `floor`, in whole runs: `None` when the ledger does not start at
    /// `first` (the caller reads the records instead), `Some(None)` when
    /// no whole run fits below the floor yet.
    pub fn plan(&self, topic_id: u32, first: u64, floor: u64) -> Option<Option<Plan>> {
        let runs = self.topics.get(&topic_id)?;
        if runs.front()?.from != first {
            return None;
        }
        let mut to = first;
        let mut bytes = 0u64;
        let mut freed: Vec<(Arc<str>, u64)> = Vec::new();
        for run in runs.iter().take_while(|r| r.to <= floor) {
            to = run.to;
            bytes = bytes.saturating_add(run.bytes);
            for (owner, b) in &run.owners {
                match freed.iter_mut().find(|(o, _)| o == owner) {
                    Some((_, total)) => *total = total.saturating_add(*b),
                    None => freed.push((owner.clone(), *b)),
                }
            }
        }
        if to == first {
            return Some(None);
        }
        freed.sort();
        Some(Some(Plan {
            from: first,
            to,
            bytes,
            freed,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(from: u64, sizes: &[(u64, &Arc<str>)]) -> Run {
        let mut run = Run::starting(from);
        for (i, (bytes, owner)) in sizes.iter().enumerate() {
            run.add(from + i as u64, *bytes, owner);
        }
        run
    }

    #[test]
    fn whole_runs_below_the_floor_are_planned_with_their_owners() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut ledger = Ledger::default();
        ledger.append(7, run(0, &[(10, &a), (20, &b)]));
        ledger.append(7, run(2, &[(5, &a)]));
        ledger.append(7, run(3, &[(1, &b)]));
        assert_eq!(ledger.plan(7, 0, 1), Some(None), "no whole run below 1");
        let plan = ledger.plan(7, 0, 3).unwrap().unwrap();
        assert_eq!((plan.from, plan.to, plan.bytes), (0, 3, 35));
        assert_eq!(plan.freed, vec![(a.clone(), 15), (b.clone(), 20)]);
        ledger.trimmed(7, 3);
        let plan = ledger.plan(7, 3, 10).unwrap().unwrap();
        assert_eq!((plan.from, plan.to, plan.bytes), (3, 4, 1));
    }

    #[test]
    fn a_ledger_that_does_not_reach_the_first_offset_is_not_used() {
        let a: Arc<str> = "a".into();
        let mut ledger = Ledger::default();
        assert_eq!(ledger.plan(1, 0, 10), None);
        ledger.append(1, run(5, &[(10, &a)]));
        assert_eq!(ledger.plan(1, 0, 10), None, "offsets 0..5 are not in it");
        // A first offset inside a run: that run's split is unknown.
        ledger.append(1, run(6, &[(10, &a), (10, &a)]));
        ledger.trimmed(1, 7);
        assert_eq!(ledger.plan(1, 7, 10), None);
        assert_eq!(ledger.start(1), None, "the cut run is gone");
        ledger.append(1, run(8, &[(10, &a)]));
        assert_eq!(ledger.start(1), Some(8), "offset 7 must be read");
    }

    #[test]
    fn a_gap_or_a_broken_run_starts_the_ledger_again() {
        let a: Arc<str> = "a".into();
        let mut ledger = Ledger::default();
        ledger.append(1, run(0, &[(10, &a)]));
        ledger.append(1, run(2, &[(10, &a)]));
        assert_eq!(ledger.plan(1, 0, 10), None, "offset 1 was never seen");
        let mut broken = Run::starting(3);
        broken.add(3, 1, &a);
        broken.add(5, 1, &a);
        ledger.append(1, broken);
        assert_eq!(ledger.plan(1, 2, 10), None);
        assert_eq!(ledger.plan(1, 3, 10), None);
    }
}
