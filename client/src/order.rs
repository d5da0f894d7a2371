//! Sequence order within one subscription: per signing key, the highest
//! seq accepted so far. Publishers sign a strictly increasing seq per key
//! and the broker accepts a key's seqs only in increasing order, but
//! neither the offset nor the receive time of a stored record is signed: a
//! broker or an edited disk can deliver an authentic record a second time
//! at a new offset (a payment twice), or an older one after a newer one.
//! Either shows here as a seq not above the key's mark.

use crate::limits::SEQ_KEYS_TRACKED_MAX;
use signet_proto::KeyId;
use std::collections::HashMap;

/// The highest seq accepted per key, for at most [`SEQ_KEYS_TRACKED_MAX`]
/// keys (only keys the client trusts reach it, and a client file trusts at
/// most that many, so the cap is never met with a client file).
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqOrder {
    /// Key id → highest accepted seq.
    marks: HashMap<KeyId, u64>,
}

impl SeqOrder {
    /// Accepts `seq` from `key` if it is above the key's mark, and moves
    /// the mark; otherwise says why not (the caller reports a `Replay`). A
    /// key beyond the cap is refused too (never forgotten, which would let
    /// its replays through).
    pub fn accept(&mut self, key: &KeyId, seq: u64) -> Result<(), &'static str> {
        let tracked = self.marks.len();
        match self.marks.get_mut(key) {
            Some(mark) if seq <= *mark => {
                Err("seq not above one already delivered for this key: a repeat or a reorder")
            }
            Some(mark) => {
                *mark = seq;
                Ok(())
            }
            None if tracked >= SEQ_KEYS_TRACKED_MAX => {
                Err("too many signing keys on one subscription to check their order")
            }
            None => {
                self.marks.insert(*key, seq);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> KeyId {
        KeyId([n; 16])
    }

    #[test]
    fn increasing_seqs_pass_per_key() {
        let mut order = SeqOrder::default();
        for (k, seq) in [(1, 5), (2, 1), (1, 6), (2, 9), (1, 100)] {
            assert_eq!(order.accept(&key(k), seq), Ok(()));
        }
    }

    #[test]
    fn repeated_or_lower_seq_is_replay_and_does_not_move_the_mark() {
        let mut order = SeqOrder::default();
        order.accept(&key(1), 10).unwrap();
        assert!(order.accept(&key(1), 10).is_err());
        assert!(order.accept(&key(1), 3).is_err());
        // Another key's order is its own.
        order.accept(&key(2), 3).unwrap();
        order.accept(&key(1), 11).unwrap();
    }

    #[test]
    fn keys_beyond_the_cap_are_refused_not_forgotten() {
        let mut order = SeqOrder::default();
        for i in 0..SEQ_KEYS_TRACKED_MAX {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            order.accept(&KeyId(id), 1).unwrap();
        }
        assert!(order.accept(&key(0xff), 1).is_err());
        // Tracked keys are still checked.
        assert!(order.accept(&KeyId([0; 16]), 1).is_err());
    }
}
