//! A `[[group]]` of the policy, validated: its topics, start, ack wait,
//! delivery limit, backoff, dead-letter topic and in-flight cap. Durations
//! are written `"250ms"`, `"30s"`, `"5m"` or `"1h"`.

use crate::acl::{PatternSet, is_system_topic};
use crate::policy_file::GroupSection;
use signet_proto::topic;

/// Most entries in a group's `backoff` list.
pub const BACKOFF_STEPS_MAX: usize = 32;
/// Longest `ack_wait` or backoff step: one day.
pub const DURATION_MS_MAX: u64 = 24 * 3600 * 1000;
/// Largest `max_deliveries`.
pub const MAX_DELIVERIES_MAX: u32 = 1000;
/// Largest `max_in_flight`.
pub const MAX_IN_FLIGHT_MAX: u32 = 1_000_000;
/// Longest group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 64;

/// Where a new group begins on a topic it already finds stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Start {
    /// At offset 0.
    Earliest,
    /// At the topic's next offset when the group is first joined.
    Latest,
}

/// One consumer group, validated (serialized into the consumer-group
/// commands a cluster replicates).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupPolicy {
    /// Its name.
    pub name: String,
    /// Topic patterns it consumes.
    pub topics: PatternSet,
    /// Where it begins.
    pub start: Start,
    /// Lease length.
    pub ack_wait_ms: u64,
    /// Deliveries before dead-lettering.
    pub max_deliveries: u32,
    /// Delay before redelivery n; the last repeats; empty means none.
    pub backoff_ms: Vec<u64>,
    /// Dead-letter topic.
    pub dead_letter: String,
    /// Unacked deliveries for the whole group.
    pub max_in_flight: u32,
    /// The `[[topic]]` patterns of the policy, in file order, up to the
    /// last whose `retention.work_queue` is this group, each with whether
    /// it is (the first entry matching a topic decides, as for every topic
    /// setting). Set when the whole policy is built; empty: no work queue.
    pub work_queue: Vec<(String, bool)>,
}

impl GroupPolicy {
    /// The data group (of a cluster's `groups`) holding every topic this
    /// group consumes and its dead-letter topic: its commands and dead
    /// letters are entries of that group's log. Err (why) when they are
    /// not all in one: a pattern with a wildcard first token, or two
    /// first tokens placed apart.
    pub fn data_group(&self, groups: u64) -> Result<u64, String> {
        use signet_proto::placement::{group_of_token, placement_key};
        let mut found: Option<(u64, &str)> = None;
        let names = self
            .topics
            .patterns()
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(self.dead_letter.as_str()));
        for name in names {
            if groups <= 1 {
                return Ok(1);
            }
            let Some(key) = placement_key(name) else {
                return Err(format!(
                    "{name:?} starts with a wildcard; in a cluster with {groups} data groups a consumer group's topics must start with a literal token (the data group is chosen by it)"
                ));
            };
            let group = group_of_token(key, groups);
            match found {
                Some((other, other_name)) if other != group => {
                    return Err(format!(
                        "{other_name:?} is in data group {other} and {name:?} in data group {group}; a consumer group's topics and its dead_letter must share one data group (give them one first token)"
                    ));
                }
                Some(_) => {}
                None => found = Some((group, name)),
            }
        }
        Ok(found.map_or(1, |(group, _)| group))
    }

    /// Whether `name` is a work-queue topic of this group: its acks and
    /// dead letters delete the topic's messages.
    pub fn owns(&self, name: &str) -> bool {
        self.work_queue
            .iter()
            .find(|(pattern, _)| topic::matches(pattern, name))
            .is_some_and(|(_, owned)| *owned)
            && self.consumes(name)
    }

    /// Whether the group consumes `name` (never its own dead-letter topic,
    /// nor a system topic).
    pub fn consumes(&self, name: &str) -> bool {
        name != self.dead_letter && !is_system_topic(name) && self.topics.matches(name)
    }

    /// The delay before the redelivery that follows delivery number
    /// `deliveries` (1 = the first delivery): `backoff[deliveries - 1]`,
    /// the last entry repeating; 0 without a backoff.
    pub fn backoff_after(&self, deliveries: u32) -> u64 {
        if self.backoff_ms.is_empty() {
            return 0;
        }
        let i = (deliveries.max(1) as usize - 1).min(self.backoff_ms.len() - 1);
        self.backoff_ms[i]
    }
}

/// Why a `[[group]]` is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("group {group:?}: {reason}")]
pub struct GroupError {
    /// The group's name as written.
    pub group: String,
    /// What is wrong.
    pub reason: String,
}

/// Parses a group duration (`"250ms"`, `"30s"`, `"5m"`, `"1h"`, see
/// [`crate::units::parse_duration_ms`]) into milliseconds, at most one day.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let ms = crate::units::parse_duration_ms(text).map_err(|e| format!("duration {e}"))?;
    if ms > DURATION_MS_MAX {
        return Err(format!("duration {:?}: longer than one day", text.trim()));
    }
    Ok(ms)
}

/// Whether `name` is a valid group name: 1 to 64 bytes of ASCII letters,
/// digits, `.`, `_` and `-`.
pub fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= GROUP_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Validates one `[[group]]`.
pub fn group_policy(g: &GroupSection) -> Result<GroupPolicy, GroupError> {
    let bad = |reason: String| GroupError {
        group: g.name.clone(),
        reason,
    };
    if !valid_group_name(&g.name) {
        return Err(bad(format!(
            "name must be 1 to {GROUP_NAME_BYTES_MAX} bytes of letters, digits, '.', '_' and '-'"
        )));
    }
    if g.topics.is_empty() {
        return Err(bad("topics must name at least one topic or pattern".into()));
    }
    let mut topics = PatternSet::default();
    for p in &g.topics {
        topic::validate_pattern(p).map_err(|e| bad(format!("topics: pattern {p:?}: {e}")))?;
        topics.insert(p);
    }
    let start = match g.start.as_str() {
        "earliest" => Start::Earliest,
        "latest" => Start::Latest,
        other => {
            return Err(bad(format!(
                "start = {other:?}: expected \"earliest\" or \"latest\""
            )));
        }
    };
    let ack_wait_ms = parse_duration_ms(&g.ack_wait).map_err(|e| bad(format!("ack_wait: {e}")))?;
    if ack_wait_ms == 0 {
        return Err(bad("ack_wait must be above 0".into()));
    }
    if g.max_deliveries == 0 || g.max_deliveries > MAX_DELIVERIES_MAX {
        return Err(bad(format!(
            "max_deliveries must be 1 to {MAX_DELIVERIES_MAX}"
        )));
    }
    if g.backoff.len() > BACKOFF_STEPS_MAX {
        return Err(bad(format!("backoff: at most {BACKOFF_STEPS_MAX} steps")));
    }
    let backoff_ms = g
        .backoff
        .iter()
        .map(|d| parse_duration_ms(d).map_err(|e| bad(format!("backoff: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    topic::validate_name(&g.dead_letter)
        .map_err(|e| bad(format!("dead_letter {:?}: {e}", g.dead_letter)))?;
    if is_system_topic(&g.dead_letter) {
        return Err(bad(format!(
            "dead_letter {:?}: system topics (signet.>) are the broker's",
            g.dead_letter
        )));
    }
    if g.max_in_flight == 0 || g.max_in_flight > MAX_IN_FLIGHT_MAX {
        return Err(bad(format!(
            "max_in_flight must be 1 to {MAX_IN_FLIGHT_MAX}"
        )));
    }
    Ok(GroupPolicy {
        work_queue: Vec::new(),
        name: g.name.clone(),
        topics,
        start,
        ack_wait_ms,
        max_deliveries: g.max_deliveries,
        backoff_ms,
        dead_letter: g.dead_letter.clone(),
        max_in_flight: g.max_in_flight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section() -> GroupSection {
        GroupSection {
            name: "billing".into(),
            topics: vec!["orders.>".into()],
            start: "earliest".into(),
            ack_wait: "30s".into(),
            max_deliveries: 5,
            backoff: vec!["1s".into(), "5s".into(), "30s".into()],
            dead_letter: "dlq.billing".into(),
            max_in_flight: 1000,
        }
    }

    #[test]
    fn the_issue_example_is_valid() {
        let g = group_policy(&section()).unwrap();
        assert_eq!(g.ack_wait_ms, 30_000);
        assert_eq!(g.backoff_ms, [1000, 5000, 30_000]);
        assert_eq!(g.backoff_after(1), 1000);
        assert_eq!(g.backoff_after(3), 30_000);
        assert_eq!(g.backoff_after(9), 30_000, "the last step repeats");
        assert!(g.consumes("orders.eu") && !g.consumes("dlq.billing"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        for bad in ["", "s", "10", "1.5s", "-1s", "2d", "25h"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        type Edit = fn(&mut GroupSection);
        let cases: Vec<(Edit, &str)> = vec![
            (|g| g.name = "a b".into(), "name"),
            (|g| g.topics.clear(), "topics"),
            (|g| g.topics = vec!["a..b".into()], "topics"),
            (|g| g.start = "first".into(), "start"),
            (|g| g.ack_wait = "0s".into(), "ack_wait"),
            (|g| g.ack_wait = "30".into(), "ack_wait"),
            (|g| g.max_deliveries = 0, "max_deliveries"),
            (|g| g.backoff = vec!["1x".into()], "backoff"),
            (|g| g.dead_letter = "dlq.>".into(), "dead_letter"),
            (|g| g.dead_letter = "signet.dlq".into(), "dead_letter"),
            (|g| g.max_in_flight = 0, "max_in_flight"),
        ];
        for (edit, field) in cases {
            let mut g = section();
            edit(&mut g);
            let err = group_policy(&g).unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }
}
