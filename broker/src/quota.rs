//! Per-principal quotas, across all of a principal's connections:
//! messages/s, record bytes/s and new topics/s (token buckets with a
//! one-second burst), stored bytes (persisted in RocksDB by the group
//! commit), connections and subscriptions.
//!
//! A publish batch is admitted in order: the longest prefix that fits
//! every bucket and the stored-bytes quota is charged and goes on to the
//! other checks; the rest is refused with `QuotaExceeded` (with
//! `retry_after_ms` for a rate, none for stored bytes) before any signature
//! check or disk work, and the connection stays open. A message costs its
//! stored record's bytes (headers, recipients and payload alike, see
//! [`crate::ingest::record_bytes_max`]); a topic not yet stored costs one
//! topic token. Stored bytes admitted but not yet committed are reserved
//! ([`Reservation`]), so pipelined batches cannot together pass the quota.
//! A reload that changes a principal's quota applies at once: its buckets
//! are rebuilt with the new rates.
//!
//! The buckets read an injected clock ([`governor::clock::Clock`]): the
//! broker's monotonic [`DefaultClock`], or a `FakeRelativeClock` in tests,
//! so quota decisions can be checked exactly.

pub use governor::clock::DefaultClock;
use governor::clock::{Clock, Reference};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Quotas of one principal. Every field is finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Messages per second (and the burst: one second's worth).
    pub msgs_per_sec: u32,
    /// Record bytes per second (burst: one second's worth, at least one
    /// maximum-size frame).
    pub bytes_per_sec: u32,
    /// Record bytes the principal's stored messages may occupy.
    pub stored_bytes: u64,
    /// Open connections at once.
    pub max_connections: u32,
    /// Open subscriptions at once.
    pub max_subscriptions: u32,
    /// New topics (names with no stored message yet) per second, and the
    /// burst: one second's worth.
    pub topics_per_sec: u32,
}

impl QuotaLimits {
    /// What a principal without an explicit `quota` gets.
    pub const DEFAULT: QuotaLimits = QuotaLimits {
        msgs_per_sec: 50_000,
        bytes_per_sec: 50 * 1024 * 1024,
        stored_bytes: 1024 * 1024 * 1024,
        max_connections: 16,
        max_subscriptions: 64,
        topics_per_sec: 100,
    };
}

/// Why (the rest of) a publish batch was refused by quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    /// Message, byte or topic rate; the first refused envelope fits after
    /// this many ms.
    Rate { retry_after_ms: u64 },
    /// Stored bytes would exceed the quota (retry after deleting data).
    Stored,
}

/// What one envelope costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Bytes its stored record will occupy (at most).
    pub bytes: u64,
    /// Whether it creates a topic.
    pub new_topic: bool,
}

/// The quota's answer for a batch: the first `accepted` envelopes are
/// charged; the rest are refused for `breach`.
#[derive(Debug)]
#[must_use]
pub struct Admission {
    /// How many envelopes, from the first, fit.
    pub accepted: usize,
    /// Why the others do not (`None` when all fit).
    pub breach: Option<Breach>,
    /// The stored bytes reserved for the accepted ones.
    pub reserved: Reservation,
}

/// Counters that outlive a reload of the principal's limits.
#[derive(Debug, Default)]
struct Counters {
    /// Record bytes stored, as committed.
    stored: AtomicU64,
    /// Record bytes admitted and not yet committed (or given up).
    reserved: AtomicU64,
    connections: AtomicU64,
    subscriptions: AtomicU64,
}

/// Stored bytes admitted for a batch, counted against the quota until
/// dropped: the group commit drops it after adding what it stored, a
/// refusal or a failed commit drops it without.
#[derive(Debug, Default)]
pub struct Reservation {
    counters: Option<Arc<Counters>>,
    bytes: u64,
}

impl Reservation {
    /// The bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(counters) = &self.counters {
            counters.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// Token units per token: levels are kept in token-nanoseconds so that a
/// rate of `r` tokens/s refills exactly `r` units per nanosecond.
const UNITS: u128 = 1_000_000_000;

/// A token bucket: `per_sec` tokens a second, holding at most `burst`.
#[derive(Debug)]
struct Bucket {
    per_sec: u128,
    capacity: u128,
    level: u128,
}

impl Bucket {
    fn new(per_sec: u32, burst: u64) -> Bucket {
        let capacity = u128::from(burst.max(1)) * UNITS;
        Bucket {
            per_sec: u128::from(per_sec.max(1)),
            capacity,
            level: capacity,
        }
    }

    fn refill(&mut self, elapsed_ns: u64) {
        let added = u128::from(elapsed_ns).saturating_mul(self.per_sec);
        self.level = self.level.saturating_add(added).min(self.capacity);
    }

    /// The units `tokens` cost; a cost larger than the whole burst costs
    /// the whole burst (so it fits a full bucket instead of never).
    fn cost(&self, tokens: u64) -> u128 {
        (u128::from(tokens) * UNITS).min(self.capacity)
    }

    /// Nanoseconds until `cost` more units fit after `used` are taken.
    fn wait_ns(&self, used: u128, cost: u128) -> u128 {
        let have = self.level.saturating_sub(used);
        match cost.checked_sub(have) {
            Some(missing) if missing > 0 => missing.div_ceil(self.per_sec),
            _ => 0,
        }
    }
}

/// The rate buckets of one principal, refilled together.
#[derive(Debug)]
struct Buckets<I> {
    last: I,
    msgs: Bucket,
    bytes: Bucket,
    topics: Bucket,
}

/// Live quota state of one principal.
pub struct PrincipalQuota<C: Clock = DefaultClock> {
    limits: QuotaLimits,
    clock: C,
    buckets: Mutex<Buckets<C::Instant>>,
    counters: Arc<Counters>,
}

impl<C: Clock + Clone> PrincipalQuota<C> {
    fn new(
        limits: QuotaLimits,
        frame_bytes_max: u32,
        counters: Arc<Counters>,
        clock: &C,
    ) -> PrincipalQuota<C> {
        let bytes_burst = u64::from(limits.bytes_per_sec.max(frame_bytes_max));
        PrincipalQuota {
            limits,
            buckets: Mutex::new(Buckets {
                last: clock.now(),
                msgs: Bucket::new(limits.msgs_per_sec, u64::from(limits.msgs_per_sec)),
                bytes: Bucket::new(limits.bytes_per_sec, bytes_burst),
                topics: Bucket::new(limits.topics_per_sec, u64::from(limits.topics_per_sec)),
            }),
            clock: clock.clone(),
            counters,
        }
    }
}

impl<C: Clock> PrincipalQuota<C> {
    /// The limits in force.
    pub fn limits(&self) -> QuotaLimits {
        self.limits
    }

    /// Admits the longest prefix of a batch whose envelopes (each costing
    /// one message, `cost.bytes` bytes and, for a new topic, one topic)
    /// fit the buckets and the stored-bytes quota, and charges it. Costs
    /// no disk and no crypto.
    pub fn admit(&self, costs: &[Cost]) -> Admission {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        let elapsed: u64 = now.duration_since(b.last).into();
        if now > b.last {
            b.last = now;
        }
        b.msgs.refill(elapsed);
        b.bytes.refill(elapsed);
        b.topics.refill(elapsed);
        let held = self
            .counters
            .stored
            .load(Ordering::Acquire)
            .saturating_add(self.counters.reserved.load(Ordering::Acquire));
        let (mut msgs, mut bytes, mut topics, mut stored) = (0u128, 0u128, 0u128, 0u64);
        let mut breach = None;
        let mut accepted = 0;
        for cost in costs {
            let stored_next = stored.saturating_add(cost.bytes);
            if held.saturating_add(stored_next) > self.limits.stored_bytes {
                breach = Some(Breach::Stored);
                break;
            }
            let m = b.msgs.cost(1);
            let by = b.bytes.cost(cost.bytes);
            let t = if cost.new_topic { b.topics.cost(1) } else { 0 };
            let wait_ns = b
                .msgs
                .wait_ns(msgs, m)
                .max(b.bytes.wait_ns(bytes, by))
                .max(b.topics.wait_ns(topics, t));
            if wait_ns > 0 {
                let ms = u64::try_from(wait_ns.div_ceil(1_000_000)).unwrap_or(u64::MAX);
                breach = Some(Breach::Rate {
                    retry_after_ms: ms.max(1),
                });
                break;
            }
            (msgs, bytes, topics, stored) = (msgs + m, bytes + by, topics + t, stored_next);
            accepted += 1;
        }
        b.msgs.level -= msgs;
        b.bytes.level -= bytes;
        b.topics.level -= topics;
        self.counters.reserved.fetch_add(stored, Ordering::AcqRel);
        Admission {
            accepted,
            breach,
            reserved: Reservation {
                counters: Some(self.counters.clone()),
                bytes: stored,
            },
        }
    }

    /// Records bytes the group commit stored for this principal.
    pub fn add_stored(&self, bytes: u64) {
        self.counters.stored.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Record bytes retention removed: given back to the principal.
    pub fn sub_stored(&self, bytes: u64) {
        let _ = self
            .counters
            .stored
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(bytes))
            });
    }

    /// Record bytes stored.
    pub fn stored(&self) -> u64 {
        self.counters.stored.load(Ordering::Acquire)
    }

    /// Record bytes admitted and not yet committed.
    pub fn reserved(&self) -> u64 {
        self.counters.reserved.load(Ordering::Acquire)
    }

    /// Takes a connection slot; `None` when the principal has too many.
    pub fn open_connection(&self) -> Option<Slot> {
        Slot::take(
            self.counters.clone(),
            |c| &c.connections,
            u64::from(self.limits.max_connections),
        )
    }

    /// Takes a subscription slot; `None` when the principal has too many.
    pub fn open_subscription(&self) -> Option<Slot> {
        Slot::take(
            self.counters.clone(),
            |c| &c.subscriptions,
            u64::from(self.limits.max_subscriptions),
        )
    }
}

/// A held connection or subscription slot, given back on drop.
pub struct Slot {
    counters: Arc<Counters>,
    counter: fn(&Counters) -> &AtomicU64,
}

impl Slot {
    fn take(
        counters: Arc<Counters>,
        counter: fn(&Counters) -> &AtomicU64,
        max: u64,
    ) -> Option<Slot> {
        let c = counter(&counters);
        let mut current = c.load(Ordering::Relaxed);
        loop {
            if current >= max {
                return None;
            }
            match c.compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(Slot { counters, counter }),
                Err(now) => current = now,
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        (self.counter)(&self.counters).fetch_sub(1, Ordering::AcqRel);
    }
}

/// Quota state of every principal seen, shared by all connections.
pub struct Quotas<C: Clock = DefaultClock> {
    frame_bytes_max: u32,
    /// The clock every bucket reads (cloned into each).
    clock: C,
    principals: Mutex<HashMap<String, Arc<PrincipalQuota<C>>>>,
}

impl Quotas<DefaultClock> {
    /// Empty state on the broker's clock; `frame_bytes_max` sets the least
    /// byte burst.
    pub fn new(frame_bytes_max: u32) -> Quotas {
        Quotas::with_clock(frame_bytes_max, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Quotas<C> {
    /// Empty state whose buckets read `clock`.
    pub fn with_clock(frame_bytes_max: u32, clock: C) -> Quotas<C> {
        Quotas {
            frame_bytes_max,
            clock,
            principals: Mutex::new(HashMap::new()),
        }
    }

    /// The principal's state under `limits`. When the limits changed (a
    /// reload), the buckets are rebuilt with them at once; stored bytes and
    /// open slots carry over. `stored` loads the persisted usage the first
    /// time a principal is seen; if it fails, nothing is remembered and the
    /// error is returned (a failed read never becomes 0).
    pub fn get<E>(
        &self,
        principal: &str,
        limits: QuotaLimits,
        stored: impl FnOnce() -> Result<u64, E>,
    ) -> Result<Arc<PrincipalQuota<C>>, E> {
        let mut map = self.principals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = map.get(principal)
            && q.limits == limits
        {
            return Ok(q.clone());
        }
        let counters = match map.get(principal) {
            Some(old) => old.counters.clone(),
            None => Arc::new(Counters {
                stored: AtomicU64::new(stored()?),
                ..Counters::default()
            }),
        };
        let fresh = PrincipalQuota::new(limits, self.frame_bytes_max, counters, &self.clock);
        let fresh = Arc::new(fresh);
        map.insert(principal.to_owned(), fresh.clone());
        Ok(fresh)
    }

    /// The principal's state if it was seen.
    pub fn existing(&self, principal: &str) -> Option<Arc<PrincipalQuota<C>>> {
        let map = self.principals.lock().unwrap_or_else(|p| p.into_inner());
        map.get(principal).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    fn ok(bytes: u64) -> impl FnOnce() -> Result<u64, ()> {
        move || Ok(bytes)
    }

    #[test]
    fn a_failed_usage_read_is_an_error_never_zero() {
        let quotas = Quotas::new(1 << 20);
        assert!(quotas.get("a", limits(10), || Err("disk")).is_err());
        assert!(quotas.existing("a").is_none(), "nothing remembered");
        let q = quotas.get("a", limits(10), ok(7)).unwrap();
        assert_eq!(q.stored(), 7);
    }

    fn limits(msgs: u32) -> QuotaLimits {
        QuotaLimits {
            msgs_per_sec: msgs,
            ..QuotaLimits::DEFAULT
        }
    }

    fn msgs(n: usize) -> Vec<Cost> {
        vec![
            Cost {
                bytes: 10,
                new_topic: false
            };
            n
        ]
    }

    /// Admits `n` 10-byte messages and returns how many fit and the breach.
    fn admit<C: Clock>(q: &PrincipalQuota<C>, n: usize) -> (usize, Option<Breach>) {
        let a = q.admit(&msgs(n));
        (a.accepted, a.breach)
    }

    #[test]
    fn burst_then_refusal_with_retry_hint() {
        let clock = FakeRelativeClock::default();
        let q = Quotas::with_clock(1 << 20, clock.clone())
            .get("a", limits(10), ok(0))
            .unwrap();
        for _ in 0..10 {
            assert_eq!(admit(&q, 1), (1, None));
        }
        assert_eq!(
            admit(&q, 1),
            (
                0,
                Some(Breach::Rate {
                    retry_after_ms: 100
                })
            )
        );
        clock.advance(Duration::from_millis(100));
        assert_eq!(admit(&q, 1), (1, None));
        assert_eq!(admit(&q, 1).0, 0);
    }

    #[test]
    fn a_batch_larger_than_what_is_left_is_admitted_as_a_prefix() {
        let clock = FakeRelativeClock::default();
        let q = Quotas::with_clock(1 << 20, clock.clone())
            .get("a", limits(5), ok(0))
            .unwrap();
        // 256 envelopes against a burst of 5: the first 5 go, the sixth
        // fits one token (200 ms) later.
        assert_eq!(
            admit(&q, 256),
            (
                5,
                Some(Breach::Rate {
                    retry_after_ms: 200
                })
            )
        );
        clock.advance(Duration::from_millis(450));
        assert_eq!(
            admit(&q, 10),
            (
                2,
                Some(Breach::Rate {
                    retry_after_ms: 150
                })
            )
        );
    }

    #[test]
    fn new_topics_cost_a_topic_token_and_known_topics_none() {
        let clock = FakeRelativeClock::default();
        let l = QuotaLimits {
            topics_per_sec: 2,
            ..QuotaLimits::DEFAULT
        };
        let q = Quotas::with_clock(1 << 20, clock.clone())
            .get("a", l, ok(0))
            .unwrap();
        let new = Cost {
            bytes: 1,
            new_topic: true,
        };
        let known = Cost {
            bytes: 1,
            new_topic: false,
        };
        let a = q.admit(&[new, known, new, known, new, known]);
        assert_eq!(
            a.accepted, 4,
            "the third new topic is refused, and all after it"
        );
        assert_eq!(
            a.breach,
            Some(Breach::Rate {
                retry_after_ms: 500
            })
        );
        assert_eq!(q.admit(&[known; 100]).accepted, 100);
    }

    #[test]
    fn stored_bytes_quota_refuses_before_the_buckets_and_counts_reservations() {
        let l = QuotaLimits {
            stored_bytes: 100,
            ..QuotaLimits::DEFAULT
        };
        let q = Quotas::new(1 << 20).get("a", l, ok(60)).unwrap();
        let first = q.admit(&msgs(3));
        assert_eq!((first.accepted, first.breach), (3, None));
        assert_eq!(q.reserved(), 30);
        // Reserved but not committed: the next batch sees it.
        assert_eq!(admit(&q, 2), (1, Some(Breach::Stored)));
        drop(first);
        assert_eq!(q.reserved(), 0, "a reservation is given back when dropped");
        // The commit adds what it stored, then drops the reservation.
        let second = q.admit(&msgs(4));
        assert_eq!((second.accepted, second.breach), (4, None));
        q.add_stored(second.reserved.bytes());
        drop(second);
        assert_eq!((q.stored(), q.reserved()), (100, 0));
        assert_eq!(admit(&q, 1), (0, Some(Breach::Stored)));
    }

    #[test]
    fn a_cost_larger_than_the_burst_waits_for_a_full_bucket() {
        let clock = FakeRelativeClock::default();
        let l = QuotaLimits {
            bytes_per_sec: 1000,
            ..QuotaLimits::DEFAULT
        };
        let q = Quotas::with_clock(1000, clock.clone())
            .get("a", l, ok(0))
            .unwrap();
        let huge = Cost {
            bytes: 5000,
            new_topic: false,
        };
        assert_eq!(q.admit(&[huge]).accepted, 1);
        let again = q.admit(&[huge]);
        assert_eq!(
            again.breach,
            Some(Breach::Rate {
                retry_after_ms: 1000
            })
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(q.admit(&[huge]).accepted, 1);
    }

    #[test]
    fn lowered_quota_applies_at_once_and_keeps_counters() {
        let quotas = Quotas::with_clock(1 << 20, FakeRelativeClock::default());
        let q = quotas.get("a", limits(1000), ok(5)).unwrap();
        let l = QuotaLimits {
            max_connections: 1,
            ..limits(1)
        };
        let slot = q.open_connection().unwrap();
        let lowered = quotas.get("a", l, ok(0)).unwrap();
        assert_eq!(lowered.stored(), 5);
        assert_eq!(admit(&lowered, 1), (1, None));
        assert_eq!(admit(&lowered, 1).0, 0);
        assert!(
            lowered.open_connection().is_none(),
            "the slot taken before the reload still counts"
        );
        drop(slot);
        assert!(lowered.open_connection().is_some());
    }

    #[test]
    fn slots_are_capped_and_returned() {
        let l = QuotaLimits {
            max_connections: 2,
            ..QuotaLimits::DEFAULT
        };
        let q = Quotas::new(1 << 20).get("a", l, ok(0)).unwrap();
        let a = q.open_connection().unwrap();
        let _b = q.open_connection().unwrap();
        assert!(q.open_connection().is_none());
        drop(a);
        assert!(q.open_connection().is_some());
    }
}
