//! Handshakes in progress, capped before any handshake work: overall
//! (`limits.handshakes_max`) and per source address
//! (`limits.handshakes_per_ip_max`; an IPv6 source counts by its /64).
//! Addresses are validated first (QUIC Retry), so a source cannot be
//! spoofed; one host that stalls its handshakes holds at most its own
//! share, never the slots of established connections (those are capped
//! apart, after the handshake, by `limits.connections_max`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a handshake was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `handshakes_max` handshakes are in progress.
    #[error("too many handshakes in progress")]
    Total,
    /// `handshakes_per_ip_max` handshakes from this source are in progress.
    #[error("too many handshakes in progress from this address")]
    Source,
}

impl Refused {
    /// The reason label for metrics and the audit log.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Total => "handshake_cap",
            Refused::Source => "handshake_cap_per_address",
        }
    }
}

type Sources = Arc<Mutex<HashMap<IpAddr, u32>>>;

/// Admits handshakes within the caps.
#[derive(Debug)]
pub struct HandshakeGate {
    total: Arc<Semaphore>,
    per_source_max: u32,
    sources: Sources,
}

/// A handshake in progress; its place is given back on drop.
#[derive(Debug)]
pub struct HandshakeSlot {
    _total: OwnedSemaphorePermit,
    sources: Sources,
    source: IpAddr,
}

/// The address a handshake counts against: an IPv4 address (also when
/// mapped into IPv6), or the /64 of an IPv6 address.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

impl HandshakeGate {
    /// A gate for at most `total` handshakes, `per_source_max` per source.
    pub fn new(total: usize, per_source_max: u32) -> HandshakeGate {
        HandshakeGate {
            total: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            per_source_max,
            sources: Arc::default(),
        }
    }

    /// A place for a handshake from `ip`, or why not.
    pub fn try_enter(&self, ip: IpAddr) -> Result<HandshakeSlot, Refused> {
        let source = source_of(ip);
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let count = sources.get(&source).copied().unwrap_or(0);
        if count >= self.per_source_max {
            return Err(Refused::Source);
        }
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Total)?;
        sources.insert(source, count + 1);
        Ok(HandshakeSlot {
            _total: total,
            sources: self.sources.clone(),
            source,
        })
    }

    /// Handshakes in progress from `ip`'s source.
    pub fn in_progress_from(&self, ip: IpAddr) -> u32 {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.get(&source_of(ip)).copied().unwrap_or(0)
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = sources.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                sources.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_source_holds_at_most_its_share() {
        let gate = HandshakeGate::new(10, 2);
        let a = gate.try_enter(ip("127.0.0.1")).unwrap();
        let _b = gate.try_enter(ip("127.0.0.1")).unwrap();
        assert_eq!(
            gate.try_enter(ip("127.0.0.1")).unwrap_err(),
            Refused::Source
        );
        let _other = gate.try_enter(ip("127.0.0.2")).unwrap();
        drop(a);
        assert!(gate.try_enter(ip("127.0.0.1")).is_ok());
    }

    #[test]
    fn the_total_is_capped_and_given_back() {
        let gate = HandshakeGate::new(2, 5);
        let a = gate.try_enter(ip("10.0.0.1")).unwrap();
        let _b = gate.try_enter(ip("10.0.0.2")).unwrap();
        assert_eq!(gate.try_enter(ip("10.0.0.3")).unwrap_err(), Refused::Total);
        assert_eq!(gate.in_progress_from(ip("10.0.0.3")), 0, "nothing held");
        drop(a);
        assert!(gate.try_enter(ip("10.0.0.3")).is_ok());
        assert_eq!(gate.in_progress_from(ip("10.0.0.1")), 0);
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        let gate = HandshakeGate::new(10, 1);
        let _a = gate.try_enter(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            gate.try_enter(ip("2001:db8:1:2::ffff")).unwrap_err(),
            Refused::Source
        );
        assert!(gate.try_enter(ip("2001:db8:1:3::1")).is_ok());
    }
}
