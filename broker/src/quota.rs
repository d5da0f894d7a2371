//! Per-principal quotas, across all of a principal's connections:
//! messages/s and bytes/s (token buckets with a one-second burst, from
//! `governor`), stored bytes (persisted in RocksDB by the group commit),
//! connections and subscriptions.
//!
//! A publish over quota is refused with `QuotaExceeded { retry_after_ms }`
//! before any signature check or disk work; the connection stays open.
//! A reload that changes a principal's quota applies at once: its buckets
//! are rebuilt with the new rates.
//!
//! The buckets read an injected clock ([`governor::clock::Clock`]): the
//! broker's monotonic [`DefaultClock`], or a `FakeRelativeClock` in tests,
//! so quota decisions can be checked exactly.

use governor::clock::Clock;
pub use governor::clock::DefaultClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Quotas of one principal. Every field is finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Messages per second (and the burst: one second's worth).
    pub msgs_per_sec: u32,
    /// Payload bytes per second (burst: one second's worth, at least one
    /// maximum-size batch).
    pub bytes_per_sec: u32,
    /// Payload bytes the principal's stored messages may occupy.
    pub stored_bytes: u64,
    /// Open connections at once.
    pub max_connections: u32,
    /// Open subscriptions at once.
    pub max_subscriptions: u32,
}

impl QuotaLimits {
    /// What a principal without an explicit `quota` gets.
    pub const DEFAULT: QuotaLimits = QuotaLimits {
        msgs_per_sec: 50_000,
        bytes_per_sec: 50 * 1024 * 1024,
        stored_bytes: 1024 * 1024 * 1024,
        max_connections: 16,
        max_subscriptions: 64,
    };
}

/// Why a publish batch was refused by quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    /// Message or byte rate; try again after this many ms.
    Rate { retry_after_ms: u64 },
    /// Stored bytes would exceed the quota (retry after deleting data).
    Stored,
}

/// Counters that outlive a reload of the principal's limits.
#[derive(Default)]
struct Counters {
    /// Payload bytes stored, as committed.
    stored: AtomicU64,
    connections: AtomicU64,
    subscriptions: AtomicU64,
}

/// A token bucket on clock `C`.
type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Live quota state of one principal.
pub struct PrincipalQuota<C: Clock = DefaultClock> {
    limits: QuotaLimits,
    msgs: Bucket<C>,
    bytes: Bucket<C>,
    counters: Arc<Counters>,
}

fn limiter<C: Clock>(per_sec: u32, burst: u32, clock: C) -> Bucket<C> {
    let rate = NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct_with_clock(Quota::per_second(rate).allow_burst(burst), clock)
}

fn retry_after_ms<C: Clock>(not_until: &governor::NotUntil<C::Instant>, clock: &C) -> u64 {
    u64::try_from(not_until.wait_time_from(clock.now()).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl<C: Clock + Clone> PrincipalQuota<C> {
    fn new(
        limits: QuotaLimits,
        frame_bytes_max: u32,
        counters: Arc<Counters>,
        clock: &C,
    ) -> PrincipalQuota<C> {
        PrincipalQuota {
            limits,
            msgs: limiter(limits.msgs_per_sec, limits.msgs_per_sec, clock.clone()),
            bytes: limiter(
                limits.bytes_per_sec,
                limits.bytes_per_sec.max(frame_bytes_max),
                clock.clone(),
            ),
            counters,
        }
    }
}

impl<C: Clock> PrincipalQuota<C> {
    /// The limits in force.
    pub fn limits(&self) -> QuotaLimits {
        self.limits
    }

    /// Takes `msgs` messages and `bytes` payload bytes from the buckets, or
    /// says why not. Costs no disk and no crypto.
    pub fn check_publish(&self, msgs: u32, bytes: u64) -> Result<(), Breach> {
        let stored = self.counters.stored.load(Ordering::Relaxed);
        if stored.saturating_add(bytes) > self.limits.stored_bytes {
            return Err(Breach::Stored);
        }
        // The limiter's own clock (building a new quanta clock calibrates
        // it, ~15 µs).
        let clock = self.msgs.clock();
        let msgs = NonZeroU32::new(msgs.max(1)).unwrap_or(NonZeroU32::MIN);
        match self.msgs.check_n(msgs) {
            Ok(Ok(())) => {}
            Ok(Err(not_until)) => {
                return Err(Breach::Rate {
                    retry_after_ms: retry_after_ms(&not_until, clock),
                });
            }
            Err(_) => {
                return Err(Breach::Rate {
                    retry_after_ms: 1000,
                });
            }
        }
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        let Some(bytes) = NonZeroU32::new(bytes) else {
            return Ok(());
        };
        match self.bytes.check_n(bytes) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Breach::Rate {
                retry_after_ms: retry_after_ms(&not_until, self.bytes.clock()),
            }),
            Err(_) => Err(Breach::Rate {
                retry_after_ms: 1000,
            }),
        }
    }

    /// Records bytes the group commit stored for this principal.
    pub fn add_stored(&self, bytes: u64) {
        self.counters.stored.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Payload bytes stored.
    pub fn stored(&self) -> u64 {
        self.counters.stored.load(Ordering::Relaxed)
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

    #[test]
    fn burst_then_refusal_with_retry_hint() {
        let clock = FakeRelativeClock::default();
        let q = Quotas::with_clock(1 << 20, clock.clone())
            .get("a", limits(10), ok(0))
            .unwrap();
        for _ in 0..10 {
            q.check_publish(1, 10).unwrap();
        }
        assert_eq!(
            q.check_publish(1, 10),
            Err(Breach::Rate {
                retry_after_ms: 100
            })
        );
        clock.advance(Duration::from_millis(100));
        q.check_publish(1, 10).unwrap();
        assert!(q.check_publish(1, 10).is_err());
    }

    #[test]
    fn stored_bytes_quota_refuses_before_the_buckets() {
        let l = QuotaLimits {
            stored_bytes: 100,
            ..QuotaLimits::DEFAULT
        };
        let q = Quotas::new(1 << 20).get("a", l, ok(90)).unwrap();
        assert_eq!(q.check_publish(1, 11), Err(Breach::Stored));
        q.check_publish(1, 10).unwrap();
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
        lowered.check_publish(1, 1).unwrap();
        assert!(lowered.check_publish(1, 1).is_err());
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
