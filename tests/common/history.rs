//! A checker over a recorded history of a replicated topic: every ack a
//! client received (message id → offset) against what one replica holds
//! (offset → message id, in delivery order). It fails on an acked message
//! that is lost, stored twice, or stored at another offset than acked,
//! and on offsets delivered out of order or twice.

use std::collections::{BTreeMap, HashMap};

/// What a replica holds of a topic, in the order it delivered it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replica {
    /// (offset, message id), as delivered.
    pub held: Vec<(u64, u64)>,
}

/// Checks one replica against the acks; `Err` says what is wrong.
pub fn check(acks: &HashMap<u64, u64>, replica: &Replica) -> Result<(), String> {
    let mut by_id: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut last: Option<u64> = None;
    for (offset, id) in &replica.held {
        if last.is_some_and(|l| *offset <= l) {
            return Err(format!(
                "offset {offset} delivered after {last:?}: reordered or duplicated"
            ));
        }
        last = Some(*offset);
        by_id.entry(*id).or_default().push(*offset);
    }
    for (id, acked) in acks {
        match by_id.get(id).map(Vec::as_slice) {
            None | Some([]) => return Err(format!("acked message {id} (offset {acked}) lost")),
            Some([offset]) if offset == acked => {}
            Some([offset]) => {
                return Err(format!(
                    "acked message {id} at offset {acked} is held at {offset}"
                ));
            }
            Some(offsets) => {
                return Err(format!(
                    "acked message {id} held {} times: {offsets:?}",
                    offsets.len()
                ));
            }
        }
    }
    Ok(())
}

/// Checks every replica against the acks, and that they agree with each
/// other on every offset they all hold.
pub fn check_all(acks: &HashMap<u64, u64>, replicas: &[Replica]) -> Result<(), String> {
    for (i, replica) in replicas.iter().enumerate() {
        check(acks, replica).map_err(|e| format!("replica {i}: {e}"))?;
    }
    let maps: Vec<BTreeMap<u64, u64>> = replicas
        .iter()
        .map(|r| r.held.iter().copied().collect())
        .collect();
    for (i, map) in maps.iter().enumerate().skip(1) {
        for (offset, id) in map {
            if let Some(other) = maps[0].get(offset)
                && other != id
            {
                return Err(format!(
                    "replicas 0 and {i} disagree at offset {offset}: {other} vs {id}"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn the_checker_finds_lost_duplicated_moved_and_reordered_messages() {
    let acks: HashMap<u64, u64> = [(1, 0), (2, 1)].into_iter().collect();
    let good = Replica {
        held: vec![(0, 1), (1, 2), (2, 3)],
    };
    assert_eq!(check(&acks, &good), Ok(()));
    let lost = Replica { held: vec![(0, 1)] };
    assert!(check(&acks, &lost).unwrap_err().contains("lost"));
    let twice = Replica {
        held: vec![(0, 1), (1, 2), (2, 2)],
    };
    assert!(check(&acks, &twice).unwrap_err().contains("2 times"));
    let moved = Replica {
        held: vec![(0, 1), (2, 2)],
    };
    assert!(check(&acks, &moved).unwrap_err().contains("held at"));
    let reordered = Replica {
        held: vec![(1, 2), (0, 1)],
    };
    assert!(check(&acks, &reordered).unwrap_err().contains("reordered"));
    let other = Replica {
        held: vec![(0, 1), (1, 2), (2, 4)],
    };
    assert!(
        check_all(&acks, &[good, other])
            .unwrap_err()
            .contains("disagree")
    );
}
