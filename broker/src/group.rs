//! Consumer groups: shared durable work queues with leases, acks, backoff
//! and a dead-letter topic that keeps the publisher's signature.
//!
//! - [`config`]: a `[[group]]` of the policy, validated;
//! - [`state`]: the pure state machine (cursors, windows, transitions);
//! - [`writer`]: the commands the one writer ([`crate::commit`]) applies,
//!   staged into the same synced write as everything they imply;
//! - [`deadletter`]: the broker-signed dead-letter record;
//! - [`member`]: one member's stream (join, deliveries, settlements);
//! - [`info`]: `GroupInfo` streams.

pub mod config;
pub mod deadletter;
pub mod info;
pub mod member;
pub mod state;
pub mod writer;

use tokio::sync::watch;

/// What sessions need to serve group streams: whether groups can run (a
/// broker identity key signs dead letters), and a counter the writer
/// raises after every commit, which waiting members watch.
#[derive(Debug, Clone)]
pub struct Hub {
    /// Whether the broker has an identity key.
    pub enabled: bool,
    /// Raised after every commit.
    pub wake: watch::Receiver<u64>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            enabled: false,
            wake: watch::channel(0).1,
        }
    }
}

/// Milliseconds since the epoch on the broker's clock: the time a command
/// is created at (read here, outside the writer, and carried by it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 32 random bytes for a command's tokens and salts; `None` if the system
/// generator fails.
pub fn seed() -> Option<[u8; 32]> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut seed).ok()?;
    Some(seed)
}
