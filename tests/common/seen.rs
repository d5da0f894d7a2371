//! What a subscription yields up to an offset: deliveries, and the gaps
//! retention announced.

use super::next;
use signet_client::{Error, Subscription};

/// Offsets a subscription delivered, and the ranges it was told are gone.
#[derive(Default)]
pub struct Seen {
    pub delivered: Vec<u64>,
    pub gaps: Vec<(u64, u64)>,
}

impl Seen {
    /// Reads until offset `last` was delivered or announced removed;
    /// every gap must be on `topic` and say `retention`.
    pub async fn until(sub: &mut Subscription, topic: &str, last: u64) -> Seen {
        let mut seen = Seen::default();
        loop {
            match next(sub).await {
                Ok(m) => {
                    seen.delivered.push(m.offset);
                    if m.offset >= last {
                        return seen;
                    }
                }
                Err(Error::Gap {
                    topic: on,
                    from,
                    to,
                    reason,
                }) => {
                    assert_eq!((on.as_str(), reason.as_str()), (topic, "retention"));
                    seen.gaps.push((from, to));
                    if to >= last {
                        return seen;
                    }
                }
                Err(e) => panic!("subscription failed: {e}"),
            }
        }
    }

    /// Every offset from `first` to `last` exactly once, delivered or in a
    /// gap, in order.
    pub fn covers(&self, first: u64, last: u64) {
        let mut all: Vec<(u64, u64)> = self.delivered.iter().map(|o| (*o, *o)).collect();
        all.extend(self.gaps.iter().copied());
        all.sort_unstable();
        let mut expected = first;
        for (from, to) in all {
            assert_eq!(from, expected, "offsets {expected}.. missing or repeated");
            expected = to + 1;
        }
        assert_eq!(expected, last + 1);
        assert!(self.delivered.windows(2).all(|w| w[0] < w[1]), "order");
    }
}
