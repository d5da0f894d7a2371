//! A pattern subscription: one `SubscribePattern` in, then
//! `SubscribedPattern` and `DeliverTopic` frames out, from every topic the
//! pattern matches that the principal may read, including topics created
//! after it opened, in offset order per topic with no repeats; what
//! retention removed before it was read is announced with a `Gap` frame
//! (see [`crate::chunk`]).
//!
//! Start positions are per topic: a topic covered when the subscription
//! opens starts at its first stored message (`Earliest`) or its head
//! (`Latest`), unless the `resume` list names its next offset; a topic
//! created later starts at its first message (all of it is newer than the
//! subscription); a topic that becomes readable through a policy reload
//! starts like one covered at the open. A topic whose grant a reload takes
//! away stops being delivered at once (its position is kept, so a grant
//! given back continues where it stopped); the subscription stays open.
//!
//! The subscription holds, per topic it follows, a watch on the head and a
//! cursor: at most `limits.pattern_topics_max` topics (only topics the
//! principal may read, or could before a reload, count). One topic more
//! ends the subscription with `TooManyTopics`. Delivery reads from
//! storage by offset exactly like [`crate::subscribe`] (through
//! [`crate::chunk`]), one chunk at a
//! time, round robin over the topics; it waits on the registry's pulse
//! (one wake per group commit) when every topic is caught up.

use crate::answer;
use crate::audit::Event;
use crate::chunk::{self, Piece};
use crate::fanout::{Head, Pulse};
use crate::limits::Limits;
use crate::metrics;
use crate::state::ConnectionState;
use crate::subscribe::{self, Live};
use serde_json::json;
use signet_proto::frame::{Rejection, ServerFrame, StartAt, SubscribePattern, TopicOffset};
use signet_proto::stream::write_frame;
use signet_proto::{ErrorCode, topic};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::watch;

async fn refuse(send: &mut quinn::SendStream, code: ErrorCode, detail: &str) {
    answer::refuse(send, Rejection::new(code, detail)).await;
}

/// One topic the subscription follows.
struct Followed {
    head: watch::Receiver<Head>,
    /// The next offset to deliver.
    cursor: u64,
    /// Whether the principal may read it under the policy in force.
    allowed: bool,
}

/// Why a pattern subscription cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    TooManyTopics,
}

/// The topics a pattern subscription follows, and where each stands.
struct Cover {
    pattern: String,
    start: StartAt,
    /// Resume positions not used yet (topics not stored at the open).
    resume: HashMap<String, u64>,
    topics: BTreeMap<String, Followed>,
    topics_max: usize,
}

impl Cover {
    /// Adds the topics the registry holds that match, may be read and are
    /// not followed yet. `opening`: the topic existed when the subscription
    /// opened (or became readable by a reload), so `start` applies;
    /// otherwise it was created since and starts at its first message.
    fn join(&mut self, conn: &ConnectionState, opening: bool) -> Result<(), Stop> {
        let pattern = &self.pattern;
        let topics = &self.topics;
        let found = conn.broker.registry.topics_where(|name| {
            topic::matches(pattern, name) && !topics.contains_key(name) && conn.may_subscribe(name)
        });
        for (name, mut head) in found {
            if self.topics.len() >= self.topics_max {
                return Err(Stop::TooManyTopics);
            }
            let now = *head.borrow_and_update();
            // Earliest means the first readable message (no gap for what
            // retention removed before the subscription opened); a topic
            // created since starts at 0, so anything removed from it
            // before it was read is reported as a gap.
            let cursor = match self.resume.remove(&name) {
                Some(offset) => offset,
                None if !opening => 0,
                None => match self.start {
                    StartAt::Latest => now.next_offset,
                    StartAt::Earliest | StartAt::Offset(_) => {
                        chunk::first_readable(&conn.broker.policy(), &name, &now)
                    }
                },
            };
            self.topics.insert(
                name,
                Followed {
                    head,
                    cursor,
                    allowed: true,
                },
            );
        }
        Ok(())
    }

    /// Re-checks every followed topic's grant after a reload, then adds
    /// topics the reload made readable.
    fn recheck(&mut self, conn: &ConnectionState) -> Result<(), Stop> {
        for (name, followed) in &mut self.topics {
            let allowed = conn.may_subscribe(name);
            if followed.allowed && !allowed {
                tracing::info!(principal = %conn.principal, topic = %name, pattern = %self.pattern, "pattern subscription: topic revoked");
            }
            followed.allowed = allowed;
        }
        self.join(conn, true)
    }
}

/// Serves one pattern subscription.
pub async fn run(
    conn: Arc<ConnectionState>,
    sub: SubscribePattern,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    if topic::validate_pattern(&sub.pattern).is_err() {
        return refuse(&mut send, ErrorCode::BadTopic, "invalid topic pattern").await;
    }
    if matches!(sub.start, StartAt::Offset(_)) {
        return refuse(
            &mut send,
            ErrorCode::BadFrame,
            "a pattern subscription starts at Earliest or Latest (resume per topic)",
        )
        .await;
    }
    let topics_max = Limits::usize(conn.broker.limits().pattern_topics_max);
    if sub.resume.len() > topics_max
        || sub.resume.iter().any(|r| {
            topic::validate_name(&r.topic).is_err() || !topic::matches(&sub.pattern, &r.topic)
        })
    {
        return refuse(
            &mut send,
            ErrorCode::BadFrame,
            "resume positions must name topics the pattern matches",
        )
        .await;
    }
    let mut policy = conn.broker.watch_policy();
    policy.borrow_and_update();
    let Some(_slot) = subscribe::slot(&conn, &mut send).await else {
        return;
    };
    // The pulse is watched before the first scan, so a topic created
    // during the scan is found by the next one.
    let mut pulse = conn.broker.registry.watch_pulse();
    let created = pulse.borrow_and_update().created;
    let mut cover = Cover {
        pattern: sub.pattern.clone(),
        start: sub.start,
        resume: sub
            .resume
            .into_iter()
            .map(|r| (r.topic, r.offset))
            .collect(),
        topics: BTreeMap::new(),
        topics_max,
    };
    if cover.join(&conn, true).is_err() {
        return refuse(
            &mut send,
            ErrorCode::TooManyTopics,
            "the pattern covers more topics than the broker follows for one subscription",
        )
        .await;
    }
    let topics = cover
        .topics
        .iter()
        .map(|(name, f)| TopicOffset {
            topic: name.clone(),
            offset: f.cursor,
        })
        .collect();
    if write_frame(&mut send, &ServerFrame::SubscribedPattern { topics })
        .await
        .is_err()
    {
        return;
    }
    tracing::info!(principal = %conn.principal, pattern = %sub.pattern, "pattern subscription opened");
    conn.broker.audit.record(Event::new(
        "subscription_opened",
        json!({ "principal": &*conn.principal, "remote": conn.conn.remote_address().to_string(), "pattern": sub.pattern }),
    ));
    let mut live = Live::open(&conn, "pattern", &sub.pattern);
    let mut waits = Waits {
        send: &mut send,
        recv: &mut recv,
        pulse: &mut pulse,
        policy: &mut policy,
    };
    live.reason = deliver(&conn, &mut cover, created, &mut waits).await;
}

/// What a pattern subscription waits on.
struct Waits<'a> {
    send: &'a mut quinn::SendStream,
    recv: &'a mut quinn::RecvStream,
    pulse: &'a mut watch::Receiver<Pulse>,
    policy: &'a mut watch::Receiver<Arc<crate::policy::Policy>>,
}

/// Ends the subscription for `stop`.
async fn stopped(send: &mut quinn::SendStream, stop: Stop) -> &'static str {
    match stop {
        Stop::TooManyTopics => {
            refuse(
                send,
                ErrorCode::TooManyTopics,
                "the pattern now covers more topics than the broker follows for one subscription",
            )
            .await;
            "too many topics"
        }
    }
}

/// Delivers until the subscription ends; returns why.
/// `created` is the creation count seen before the first scan, so a topic
/// created since is joined on the first pass.
async fn deliver(
    conn: &ConnectionState,
    cover: &mut Cover,
    mut created: u64,
    w: &mut Waits<'_>,
) -> &'static str {
    let mut ignored = [0u8; 64];
    loop {
        // Grants are re-checked before every chunk (like exact
        // subscriptions), new topics joined before the next pass.
        if w.policy.has_changed().unwrap_or(false) {
            w.policy.borrow_and_update();
            if let Err(stop) = cover.recheck(conn) {
                return stopped(w.send, stop).await;
            }
        }
        let now = w.pulse.borrow_and_update().created;
        if now != created {
            created = now;
            if let Err(stop) = cover.join(conn, false) {
                return stopped(w.send, stop).await;
            }
        }
        let mut sent_any = false;
        let names: Vec<String> = cover
            .topics
            .iter()
            .filter(|(_, f)| f.allowed && f.cursor < f.head.borrow().next_offset)
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            if w.policy.has_changed().unwrap_or(false) {
                break;
            }
            let Some(followed) = cover.topics.get_mut(&name) else {
                continue;
            };
            let head = *followed.head.borrow();
            let Some(topic_id) = head.topic_id else {
                continue;
            };
            let Ok(step) = chunk::read(conn, &name, topic_id, followed.cursor, &head).await else {
                refuse(w.send, ErrorCode::Unavailable, "storage unavailable").await;
                return "storage unavailable";
            };
            followed.cursor = step.cursor;
            sent_any = true;
            for piece in step.pieces {
                let written = match piece {
                    Piece::Deliver(deliveries) => {
                        let n = deliveries.len();
                        let frame = ServerFrame::DeliverTopic {
                            topic: name.clone(),
                            deliveries,
                        };
                        let written = write_frame(w.send, &frame).await;
                        metrics::delivered(n);
                        written
                    }
                    Piece::Gap(from, to) => chunk::send_gap(w.send, &name, from, to).await,
                };
                if written.is_err() {
                    return "stream closed";
                }
            }
        }
        if sent_any || w.policy.has_changed().unwrap_or(false) {
            continue;
        }
        tokio::select! {
            changed = w.pulse.changed() => if changed.is_err() { return "broker stopping" },
            changed = w.policy.changed() => {
                if changed.is_err() {
                    return "broker stopping";
                }
                // `changed` marked the new policy seen: re-check here.
                if let Err(stop) = cover.recheck(conn) {
                    return stopped(w.send, stop).await;
                }
            }
            read = w.recv.read(&mut ignored) => match read {
                Ok(Some(_)) => {}
                _ => return "closed by subscriber",
            },
            _ = w.send.stopped() => return "closed by subscriber",
        }
    }
}
