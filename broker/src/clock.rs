//! The broker's clock.

/// Milliseconds since the Unix epoch on the broker's clock (receive times,
/// retention's age cutoff, the time a group command is created at); 0 if
/// the clock is before the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
