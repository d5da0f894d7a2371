//! Consumer groups: shared durable work queues with leases, acks, backoff
//! and a dead-letter topic that keeps the publisher's signature. The
//! streams live here; the rest in their own modules, so that the writer
//! and the policy import no stream code:
//!
//! - [`crate::group_config`]: a `[[group]]` of the policy, validated;
//! - [`crate::group_state`]: the pure state machine (cursors, windows,
//!   transitions);
//! - [`crate::group_writer`]: the commands the one writer
//!   ([`crate::commit`]) applies, staged into the same synced write as
//!   everything they imply;
//! - [`crate::dead_letter`]: the broker-signed dead-letter record;
//! - [`member`]: one member's stream (join, deliveries, settlements);
//! - [`info`]: `GroupInfo` streams.

pub mod info;
pub mod member;

/// The time a command is created at is read here, outside the writer, and
/// carried by it.
pub use crate::clock::now_ms;

/// 32 random bytes for a command's tokens and salts; `None` if the system
/// generator fails.
pub fn seed() -> Option<[u8; 32]> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut seed).ok()?;
    Some(seed)
}
