//! Which data group of a cluster holds a topic: a function of the topic's
//! first token alone (`orders` for `orders.eu.created`), so every topic
//! under one first token lives in one group, with one leader, and a
//! pattern whose first token is literal (`orders.>`) covers one group.
//!
//! The mapping is SHA-256 of the token, reduced modulo the group count:
//! stable across versions and machines (it decides where stored messages
//! are, so it must never change for a running cluster), and spread evenly
//! whatever the names look like. It is not a security boundary.

use ring::digest::{SHA256, digest};

/// The placement key of a topic or pattern: its first token, or `None`
/// when that token is a wildcard (`*`, `>`), which no one group holds.
pub fn placement_key(topic: &str) -> Option<&str> {
    let first = topic.split('.').next().unwrap_or(topic);
    (first != "*" && first != ">").then_some(first)
}

/// The data group (1 to `groups`) holding topics whose first token is
/// `token`. With at most one group, always group 1.
pub fn group_of_token(token: &str, groups: u64) -> u64 {
    if groups <= 1 {
        return 1;
    }
    let hash = digest(&SHA256, token.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_ref()[..8]);
    1 + u64::from_be_bytes(first) % groups
}

/// The data group (1 to `groups`) holding `topic`. A topic's first token
/// is never a wildcard (names are validated), so this is total; a pattern
/// with a wildcard first token is placed by its literal text, which only
/// [`placement_key`] callers should rely on.
pub fn group_of(topic: &str, groups: u64) -> u64 {
    group_of_token(placement_key(topic).unwrap_or(topic), groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_placed_by_its_first_token_only() {
        for groups in 1..=7 {
            let g = group_of("orders", groups);
            assert!((1..=groups.max(1)).contains(&g));
            assert_eq!(group_of("orders.eu.created", groups), g);
            assert_eq!(group_of("orders.us", groups), g);
        }
        assert_eq!(placement_key("orders.>"), Some("orders"));
        assert_eq!(placement_key(">"), None);
        assert_eq!(placement_key("*.created"), None);
    }

    #[test]
    fn placement_is_fixed_and_spreads_tokens_over_every_group() {
        // Fixed values: a change here moves stored topics between groups
        // of a running cluster.
        assert_eq!(group_of("orders", 1), 1);
        let fixed: Vec<u64> = ["orders", "payments", "audit", "dlq"]
            .iter()
            .map(|t| group_of(t, 3))
            .collect();
        assert_eq!(fixed, FIXED);
        let mut seen = [0u32; 3];
        for i in 0..300 {
            seen[(group_of(&format!("t{i}"), 3) - 1) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 60), "{seen:?}");
    }

    const FIXED: [u64; 4] = [2, 1, 3, 3];
}
