//! Retention: per-topic limits on age, bytes and count
//! (`[[topic]] retention = { max_age = "7d", max_bytes = "10GiB",
//! max_msgs = 1000000 }`, each matching topic limited on its own).
//!
//! This module holds the limits; [`crate::trim`] plans what to delete and
//! [`crate::trimmer`] runs the periodic passes.
//!
//! The count and byte limits are applied by the group-commit writer in the
//! same synced write as the publishes that pass them ([`crate::commit`]):
//! it reads the topic's oldest records to learn their sizes and whose bytes
//! they are (`trim::plan`), deletes the range, moves the topic's first offset
//! and gives the bytes back to the publishers' stored-bytes quota, once the
//! topic is a sixteenth of a limit past it (`trim::Floor::worth_trimming`).
//! So a topic holds at most 17/16 of its limits once a publish is acked,
//! and a publisher on a topic with retention is not locked out by its
//! quota.
//!
//! Every `limits.retention_check_ms_max` a pass looks at each topic with a
//! limit and sends a `Trim` for what is past it: the age limit (time
//! passes without publishes) and limits lowered by a reload. Offsets are
//! never reused.
//!
//! A work-queue topic (`retention = { work_queue = "billing" }`, no other
//! limit) belongs to one group: the writer deletes each message in the
//! same synced write as that group's ack or dead letter
//! ([`crate::trim::settled`], staged by [`crate::commit`]); the policy
//! checks the group exists, consumes every topic the entry matches
//! ([`covers`]) and is the only owner ([`overlap`]).
//!
//! Reads never return a message past its count or age limit, even before
//! a pass ran: subscriptions start at [`Retention::first_readable`] and skip
//! records older than the age limit, and tell the subscriber what they
//! skipped with a `Gap`.

use crate::policy_file::{RetentionSection, SizeText};
use crate::units::{parse_bytes, parse_duration};
use std::time::Duration;

/// A topic's retention limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Oldest message kept, by the broker's receive time.
    pub max_age: Option<Duration>,
    /// Most record bytes kept.
    pub max_bytes: Option<u64>,
    /// Most messages kept.
    pub max_msgs: Option<u64>,
    /// The consumer group whose acks and dead letters delete the topic's
    /// messages (a work-queue topic; then no other limit).
    pub work_queue: Option<String>,
}

impl Retention {
    /// The limits as written; each must be at least 1, and one is needed.
    pub fn from_section(section: &RetentionSection) -> Result<Retention, String> {
        if let Some(group) = &section.work_queue {
            if section.max_age.is_some()
                || section.max_bytes.is_some()
                || section.max_msgs.is_some()
            {
                return Err(format!(
                    "retention.work_queue = {group:?} cannot be combined with max_age, max_bytes or max_msgs: a work queue keeps a message until its group acks or dead-letters it"
                ));
            }
            return Ok(Retention {
                max_age: None,
                max_bytes: None,
                max_msgs: None,
                work_queue: Some(group.clone()),
            });
        }
        let max_age = section
            .max_age
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| format!("retention.max_age: {e}"))?;
        let max_bytes = match &section.max_bytes {
            None => None,
            Some(SizeText::Bytes(n)) => Some(*n),
            Some(SizeText::Text(text)) => {
                Some(parse_bytes(text).map_err(|e| format!("retention.max_bytes: {e}"))?)
            }
        };
        if max_bytes == Some(0) || section.max_msgs == Some(0) {
            return Err("retention limits must be at least 1".into());
        }
        if max_age.is_none() && max_bytes.is_none() && section.max_msgs.is_none() {
            return Err("retention needs max_age, max_bytes, max_msgs or work_queue".into());
        }
        Ok(Retention {
            max_age,
            max_bytes,
            max_msgs: section.max_msgs,
            work_queue: None,
        })
    }

    /// The lowest offset a read may return now, for a topic whose oldest
    /// stored offset is `first` and whose next offset is `next`.
    pub fn first_readable(&self, first: u64, next: u64) -> u64 {
        let by_count = self.max_msgs.map_or(0, |max| next.saturating_sub(max));
        first.max(by_count)
    }

    /// Records received before this (ms since the epoch) are past the age
    /// limit.
    pub fn age_cutoff_ms(&self, now_ms: u64) -> Option<u64> {
        self.max_age
            .map(|age| now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)))
    }
}

/// Whether every topic name `inner` matches is matched by `outer` (both
/// valid patterns: `*` one token, `>` one or more trailing tokens).
pub fn covers(outer: &str, inner: &str) -> bool {
    fn go(o: &[&str], i: &[&str]) -> bool {
        match (o.first(), i.first()) {
            (None, None) => true,
            (Some(&">"), Some(_)) => true,
            (Some(&"*"), Some(&t)) if t != ">" => go(&o[1..], &i[1..]),
            (Some(a), Some(b)) if a == b && *a != "*" && *a != ">" => go(&o[1..], &i[1..]),
            _ => false,
        }
    }
    let o: Vec<&str> = outer.split('.').collect();
    let i: Vec<&str> = inner.split('.').collect();
    go(&o, &i)
}

/// Whether some topic name matches both patterns.
pub fn overlap(a: &str, b: &str) -> bool {
    fn go(a: &[&str], b: &[&str]) -> bool {
        match (a.first(), b.first()) {
            (None, None) => true,
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => true,
            (Some(x), Some(y)) if *x == "*" || *y == "*" || x == y => go(&a[1..], &b[1..]),
            _ => false,
        }
    }
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    go(&a, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> RetentionSection {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn limits_parse_and_refuse_what_makes_no_sense() {
        let r = Retention::from_section(&section(
            "max_age = \"7d\"\nmax_bytes = \"10GiB\"\nmax_msgs = 1000000",
        ))
        .unwrap();
        assert_eq!(r.max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(r.max_bytes, Some(10 << 30));
        assert_eq!(r.max_msgs, Some(1_000_000));
        assert_eq!(
            Retention::from_section(&section("max_bytes = 50000"))
                .unwrap()
                .max_bytes,
            Some(50_000)
        );
        for bad in [
            "",
            "max_msgs = 0",
            "max_bytes = 0",
            "max_age = \"7\"",
            "max_bytes = \"lots\"",
        ] {
            assert!(Retention::from_section(&section(bad)).is_err(), "{bad}");
        }
        let wq = Retention::from_section(&section("work_queue = \"billing\"")).unwrap();
        assert_eq!(wq.work_queue.as_deref(), Some("billing"));
        assert!(Retention::from_section(&section("work_queue = \"b\"\nmax_msgs = 5")).is_err());
    }

    #[test]
    fn pattern_cover_and_overlap() {
        assert!(covers("jobs.>", "jobs.a"));
        assert!(covers("jobs.>", "jobs.*.x"));
        assert!(covers("jobs.>", "jobs.>"));
        assert!(covers("jobs.*", "jobs.a"));
        assert!(covers(">", "a.b"));
        assert!(!covers("jobs.*", "jobs.>"));
        assert!(!covers("jobs.a", "jobs.*"));
        assert!(!covers("jobs.*", "jobs.a.b"));
        assert!(!covers("jobs.>", "jobs"));
        assert!(overlap("jobs.*", "jobs.a"));
        assert!(overlap("jobs.>", "*.a.b"));
        assert!(overlap("*.b", "a.*"));
        assert!(!overlap("jobs.a", "jobs.b"));
        assert!(!overlap("jobs.*", "jobs.a.b"));
        assert!(!overlap("jobs.>", "jobs"));
    }

    #[test]
    fn the_count_limit_moves_the_first_readable_offset() {
        let r = Retention {
            max_age: None,
            max_bytes: None,
            max_msgs: Some(10),
            work_queue: None,
        };
        assert_eq!(r.first_readable(0, 5), 0);
        assert_eq!(r.first_readable(0, 25), 15);
        assert_eq!(r.first_readable(20, 25), 20);
    }
}
