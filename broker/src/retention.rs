//! Retention: per-topic limits on age, bytes and count
//! (`[[topic]] retention = { max_age = "7d", max_bytes = "10GiB",
//! max_msgs = 1000000 }`, each matching topic limited on its own).
//!
//! The count and byte limits are applied by the group-commit writer in the
//! same synced write as the publishes that pass them ([`crate::commit`]):
//! it reads the topic's oldest records to learn their sizes and whose bytes
//! they are ([`plan`]), deletes the range, moves the topic's first offset
//! and gives the bytes back to the publishers' stored-bytes quota. So a
//! topic never holds more than its limits once a publish is acked, and a
//! publisher on a topic with retention is not locked out by its quota.
//!
//! Every `limits.retention_check_ms_max` a pass looks at each topic with a
//! limit and sends a [`Trim`] for what is past it: the age limit (time
//! passes without publishes) and limits lowered by a reload. Offsets are
//! never reused.
//!
//! Reads never return a message past its count or age limit, even before
//! a pass ran: subscriptions start at [`Retention::first_readable`] and skip
//! records older than the age limit, and tell the subscriber what they
//! skipped with a `Gap`.

use crate::commit::{Command, Trim};
use crate::error::StoreError;
use crate::fanout::Head;
use crate::metrics;
use crate::policy::Policy;
use crate::policy_file::{RetentionSection, SizeText};
use crate::state::BrokerState;
use crate::store::Store;
use crate::units::{parse_bytes, parse_duration};
use signet_proto::{KeyId, StoredRecord, codec};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, watch};

/// Records read per step of a pass (one trim at most this long).
const TRIM_RECORDS_MAX: usize = 4096;
/// Record bytes read per step of a pass.
const TRIM_READ_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A topic's retention limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Oldest message kept, by the broker's receive time.
    pub max_age: Option<Duration>,
    /// Most record bytes kept.
    pub max_bytes: Option<u64>,
    /// Most messages kept.
    pub max_msgs: Option<u64>,
}

impl Retention {
    /// The limits as written; each must be at least 1, and one is needed.
    pub fn from_section(section: &RetentionSection) -> Result<Retention, String> {
        if section.work_queue.is_some() {
            return Err(
                "retention.work_queue needs consumer groups, which this broker does not have yet"
                    .into(),
            );
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
            return Err("retention needs max_age, max_bytes or max_msgs".into());
        }
        Ok(Retention {
            max_age,
            max_bytes,
            max_msgs: section.max_msgs,
        })
    }

    /// The lowest offset a read may return now by the count limit and
    /// what is stored.
    pub fn first_readable(&self, head: &Head) -> u64 {
        let by_count = self
            .max_msgs
            .map_or(0, |max| head.next_offset.saturating_sub(max));
        head.first_offset.max(by_count)
    }

    /// Records received before this (ms since the epoch) are past the age
    /// limit.
    pub fn age_cutoff_ms(&self, now_ms: u64) -> Option<u64> {
        self.max_age
            .map(|age| now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)))
    }
}

/// The retention limits of `topic` under `policy`, if any.
pub fn of<'a>(policy: &'a Policy, topic: &str) -> Option<&'a Retention> {
    policy
        .topic_settings(topic)
        .and_then(|t| t.retention.as_ref())
}

/// When a stored record was received, if it decodes.
pub fn received_ms(record: &[u8]) -> Option<u64> {
    codec::decode::<StoredRecord>(record)
        .ok()
        .map(|r| r.received_ms)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs retention passes until shutdown.
pub fn spawn(
    state: Arc<BrokerState>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_millis(state.limits().retention_check_ms_max);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = pass(&state, &mut shutdown).await {
                tracing::error!(error = %e, "retention pass failed; retried at the next");
            }
        }
    })
}

/// One pass over every topic.
async fn pass(state: &BrokerState, shutdown: &mut watch::Receiver<bool>) -> Result<(), StoreError> {
    let policy = state.policy();
    let topics = state.registry.topics();
    metrics::topics(
        topics
            .iter()
            .map(|(name, h)| (name.as_str(), h.first_offset, h.next_offset, h.stored_bytes)),
    );
    let mut owners = Owners::default();
    for (name, head) in topics {
        let Some(retention) = of(&policy, &name).cloned() else {
            continue;
        };
        let mut head = head;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let store = state.store.clone();
            let plan = {
                let floor = Floor::of(&retention, &head, Some(now_ms()));
                let mut cache = std::mem::take(&mut owners);
                let result = tokio::task::spawn_blocking(move || {
                    let plan = head.topic_id.map_or(Ok(None), |topic_id| {
                        plan(&store, topic_id, &head, &floor, |key| cache.of(&store, key))
                    });
                    (plan, cache)
                })
                .await;
                let Ok((plan, cache)) = result else {
                    return Ok(());
                };
                owners = cache;
                plan?
            };
            let Some(plan) = plan else { break };
            let (reply, answer) = oneshot::channel();
            let to = plan.to;
            let trim = Trim {
                topic: name.clone(),
                from: plan.from,
                to,
                bytes: plan.bytes,
                freed: plan.freed,
                reply,
            };
            if state.commits.send(Command::Trim(trim)).await.is_err() {
                return Ok(());
            }
            match answer.await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) | Err(_) => break,
                Ok(Err(e)) => return Err(e),
            }
            match state.registry.head(&name) {
                Some(now) if now.first_offset == to => head = now,
                _ => break,
            }
        }
    }
    Ok(())
}

/// Signing key → principal, read once per pass.
#[derive(Default)]
struct Owners(HashMap<KeyId, Option<Arc<str>>>);

impl Owners {
    fn of(&mut self, store: &Store, key: KeyId) -> Result<Option<Arc<str>>, StoreError> {
        if let Some(owner) = self.0.get(&key) {
            return Ok(owner.clone());
        }
        let owner: Option<Arc<str>> = store.key_owner(&key)?.map(Arc::from);
        self.0.insert(key, owner.clone());
        Ok(owner)
    }
}

/// One trim: the range and whose bytes it frees.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The topic's first offset.
    pub from: u64,
    /// Its new first offset.
    pub to: u64,
    /// Record bytes in the range.
    pub bytes: u64,
    /// Those bytes per principal that stored them.
    pub freed: Vec<(Arc<str>, u64)>,
}

/// How far a topic must go: below `by_count`, `excess` bytes from the
/// oldest, and every record received before `cutoff`.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// The count limit's first readable offset.
    pub by_count: u64,
    /// Bytes past the byte limit.
    pub excess: u64,
    /// The age limit's cutoff (ms since the epoch), when it is applied.
    pub cutoff: Option<u64>,
}

impl Floor {
    /// The floor of a topic at `head`; the age limit only when `now_ms`
    /// is given.
    pub fn of(retention: &Retention, head: &Head, now_ms: Option<u64>) -> Floor {
        Floor {
            by_count: retention.first_readable(head),
            excess: retention
                .max_bytes
                .map_or(0, |max| head.stored_bytes.saturating_sub(max)),
            cutoff: now_ms.and_then(|now| retention.age_cutoff_ms(now)),
        }
    }

    /// Whether the topic at `head` is within every limit (or may be).
    pub fn is_met(&self, head: &Head) -> bool {
        self.by_count <= head.first_offset && self.excess == 0 && self.cutoff.is_none()
    }
}

/// The next trim of the records of `topic_id` stored from
/// `head.first_offset` up to `head.next_offset` (at most
/// [`TRIM_RECORDS_MAX`] records), or `None` when they are within `floor`.
/// `owner` tells whose bytes a key's records are.
pub fn plan(
    store: &Store,
    topic_id: u32,
    head: &Head,
    floor: &Floor,
    mut owner: impl FnMut(KeyId) -> Result<Option<Arc<str>>, StoreError>,
) -> Result<Option<Plan>, StoreError> {
    if floor.is_met(head) {
        return Ok(None);
    }
    let Floor {
        by_count,
        excess,
        cutoff,
    } = *floor;
    let records = store.read_range(
        topic_id,
        head.first_offset,
        head.next_offset,
        TRIM_RECORDS_MAX,
        TRIM_READ_BYTES_MAX,
    )?;
    let mut to = head.first_offset;
    let mut bytes = 0u64;
    let mut freed: HashMap<Arc<str>, u64> = HashMap::new();
    for delivery in &records {
        let decoded = codec::decode::<StoredRecord>(&delivery.record).ok();
        let too_old = match (cutoff, &decoded) {
            (Some(cutoff), Some(r)) => r.received_ms < cutoff,
            _ => false,
        };
        if delivery.offset >= by_count && bytes >= excess && !too_old {
            break;
        }
        let len = delivery.record.len() as u64;
        bytes = bytes.saturating_add(len);
        if let Some(record) = &decoded
            && let Some(owner) = owner(record.envelope.key_id)?
        {
            *freed.entry(owner).or_insert(0) += len;
        }
        to = delivery.offset + 1;
    }
    if records.is_empty() && by_count > head.first_offset {
        // Nothing stored below the count floor (already deleted): move on.
        to = by_count.min(head.next_offset);
    }
    if to <= head.first_offset {
        return Ok(None);
    }
    let mut freed: Vec<_> = freed.into_iter().collect();
    freed.sort();
    Ok(Some(Plan {
        from: head.first_offset,
        to,
        bytes,
        freed,
    }))
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
    }

    #[test]
    fn the_count_limit_moves_the_first_readable_offset() {
        let r = Retention {
            max_age: None,
            max_bytes: None,
            max_msgs: Some(10),
        };
        let head = |first, next| Head {
            topic_id: Some(1),
            first_offset: first,
            next_offset: next,
            stored_bytes: 0,
        };
        assert_eq!(r.first_readable(&head(0, 5)), 0);
        assert_eq!(r.first_readable(&head(0, 25)), 15);
        assert_eq!(r.first_readable(&head(20, 25)), 20);
    }
}
