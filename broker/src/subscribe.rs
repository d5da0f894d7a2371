//! A subscription stream: one `Subscribe` in, then `Subscribed` and
//! `Deliver` frames out, in offset order with no gaps or repeats.
//!
//! Delivery always reads from storage by offset, up to the topic's head
//! ([`crate::fanout`]), then waits for the head to move. At most one chunk
//! (`DELIVER_MESSAGES_MAX` messages and `limits.deliver_chunk_bytes_max`
//! bytes, or one larger record alone) is held per subscription, and each
//! write waits for QUIC flow control, so a slow subscriber holds the
//! broker's memory to one chunk. Before every chunk the grant is checked
//! again if the policy changed, so a revocation stops a subscriber that is
//! far behind as surely as one that is live.
//!
//! Retention: a subscription never reads below the topic's first readable
//! offset ([`crate::retention`]: what is stored, and the count limit) nor a
//! record past the age limit. What it skips it announces with a `Gap`
//! frame (first and last offset, reason `retention`) before going on, so a
//! subscriber can tell retention from loss. `Earliest` starts at the first
//! readable offset without a gap.
//! The subscriber ends the subscription by finishing or resetting its side.

use crate::answer;
use crate::audit::Event;
use crate::clock::now_ms;
use crate::fanout::Head;
use crate::limits::Limits;
use crate::metrics;
use crate::policy::Policy;
use crate::state::ConnectionState;
use crate::trim;
use serde_json::json;
use signet_proto::frame::{Delivery, Gap, Rejection, ServerFrame, StartAt, Subscribe};
use signet_proto::limits::DELIVER_MESSAGES_MAX;
use signet_proto::stream::write_frame;
use signet_proto::{ErrorCode, topic};
use std::sync::Arc;
use tokio::sync::watch;

type HeadWatch = watch::Receiver<Head>;
type PolicyWatch = watch::Receiver<Arc<Policy>>;

async fn refuse(send: &mut quinn::SendStream, code: ErrorCode, detail: &str) {
    answer::refuse(send, Rejection::new(code, detail)).await;
}

/// Serves one subscription.
pub async fn run(
    conn: Arc<ConnectionState>,
    sub: Subscribe,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    if topic::validate_name(&sub.topic).is_err() {
        return refuse(&mut send, ErrorCode::BadTopic, "invalid topic name").await;
    }
    let mut policy_changes = conn.broker.watch_policy();
    if !conn.may_subscribe(&sub.topic) {
        tracing::info!(principal = %conn.principal, topic = %sub.topic, "subscribe denied");
        conn.broker.audit.record(Event::new(
            "subscribe_denied",
            json!({ "principal": &*conn.principal, "remote": conn.conn.remote_address().to_string(), "topic": sub.topic, "code": ErrorCode::Forbidden.to_string() }),
        ));
        return refuse(
            &mut send,
            ErrorCode::Forbidden,
            "not allowed to subscribe to this topic",
        )
        .await;
    }
    let quota = match conn.broker.quota(&conn.broker.policy(), &conn.principal) {
        Ok(quota) => quota,
        Err(e) => {
            tracing::error!(error = %e, "usage unreadable");
            return refuse(&mut send, ErrorCode::Unavailable, "storage unavailable").await;
        }
    };
    let Some(_slot) = quota.open_subscription() else {
        metrics::quota_hit("subscriptions");
        conn.broker.audit.record(Event::new(
            "quota_breach",
            json!({ "principal": &*conn.principal, "remote": conn.conn.remote_address().to_string(), "kind": "subscriptions" }),
        ));
        return refuse(
            &mut send,
            ErrorCode::QuotaExceeded,
            "too many subscriptions for this principal",
        )
        .await;
    };
    let mut head = conn.broker.registry.watch(&sub.topic);
    let now = *head.borrow_and_update();
    let next_offset = now.next_offset;
    let cursor = match sub.start {
        StartAt::Earliest => first_readable(&conn.broker.policy(), &sub.topic, &now),
        StartAt::Offset(n) => n,
        StartAt::Latest => next_offset,
    };
    if write_frame(&mut send, &ServerFrame::Subscribed { next_offset })
        .await
        .is_err()
    {
        return;
    }
    tracing::info!(principal = %conn.principal, topic = %sub.topic, cursor, "subscription opened");
    conn.broker.audit.record(Event::new(
        "subscription_opened",
        json!({ "principal": &*conn.principal, "remote": conn.conn.remote_address().to_string(), "topic": sub.topic, "from": cursor }),
    ));
    let mut live = Live::open(&conn, &sub.topic);
    let mut stream = Streams {
        send: &mut send,
        recv: &mut recv,
        head: &mut head,
        policy: &mut policy_changes,
    };
    live.reason = deliver(&conn, &sub.topic, cursor, &mut stream).await;
}

/// A live subscription: counted in the gauge, and its closing logged and
/// audited however it ends (also when the connection's task is aborted).
struct Live<'a> {
    conn: &'a ConnectionState,
    topic: &'a str,
    reason: &'static str,
}

impl<'a> Live<'a> {
    fn open(conn: &'a ConnectionState, topic: &'a str) -> Live<'a> {
        metrics::gauge_add(metrics::SUBSCRIPTIONS_LIVE, 1.0);
        Live {
            conn,
            topic,
            reason: "connection closed",
        }
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        metrics::gauge_add(metrics::SUBSCRIPTIONS_LIVE, -1.0);
        let (principal, topic, reason) = (&*self.conn.principal, self.topic, self.reason);
        tracing::info!(%principal, %topic, reason, "subscription closed");
        self.conn.broker.audit.record(Event::new(
            "subscription_closed",
            json!({ "principal": principal, "remote": self.conn.conn.remote_address().to_string(), "topic": topic, "reason": reason }),
        ));
    }
}

/// What a subscription waits on.
struct Streams<'a> {
    send: &'a mut quinn::SendStream,
    recv: &'a mut quinn::RecvStream,
    head: &'a mut HeadWatch,
    policy: &'a mut PolicyWatch,
}

/// Delivers from `cursor` on until the subscription ends; returns why.
async fn deliver(
    conn: &ConnectionState,
    topic: &str,
    mut cursor: u64,
    s: &mut Streams<'_>,
) -> &'static str {
    let mut ignored = [0u8; 64];
    loop {
        // The grant is re-checked before every chunk, not only once caught
        // up: a subscriber far behind must not read on after a revocation.
        if s.policy.has_changed().unwrap_or(false) {
            s.policy.borrow_and_update();
            if !conn.may_subscribe(topic) {
                return revoke(s.send).await;
            }
        }
        let now = *s.head.borrow_and_update();
        if let Some(topic_id) = now.topic_id
            && cursor < now.next_offset
        {
            let policy = conn.broker.policy();
            let floor = first_readable(&policy, topic, &now);
            if cursor < floor {
                if send_gap(s.send, topic, cursor, floor - 1).await.is_err() {
                    return "stream closed";
                }
                cursor = floor;
                continue;
            }
            let cutoff = policy
                .retention(topic)
                .and_then(|r| r.age_cutoff_ms(now_ms()));
            let store = conn.broker.store.clone();
            let end = now.next_offset;
            let chunk_bytes_max = Limits::usize(conn.broker.limits().deliver_chunk_bytes_max);
            let read = tokio::task::spawn_blocking(move || {
                store.read_range(topic_id, cursor, end, DELIVER_MESSAGES_MAX, chunk_bytes_max)
            })
            .await;
            let Ok(Ok(chunk)) = read else {
                tracing::error!(%topic, "subscription read failed");
                refuse(s.send, ErrorCode::Unavailable, "storage unavailable").await;
                return "storage unavailable";
            };
            // Holes in the chunk (or an empty chunk) are ranges retention
            // deleted meanwhile; records past the age limit are skipped.
            let read_to = chunk.last().map_or(end, |d| d.offset + 1);
            for piece in split(chunk, cursor, read_to, cutoff) {
                let written = match piece {
                    Piece::Deliver(records) => {
                        let n = records.len();
                        let written = write_frame(s.send, &ServerFrame::Deliver(records)).await;
                        metrics::delivered(n);
                        written
                    }
                    Piece::Gap(from, to) => send_gap(s.send, topic, from, to).await,
                };
                if written.is_err() {
                    return "stream closed";
                }
            }
            cursor = read_to;
            continue;
        }
        tokio::select! {
            changed = s.head.changed() => if changed.is_err() { return "broker stopping" },
            changed = s.policy.changed() => {
                if changed.is_err() {
                    return "broker stopping";
                }
                if !conn.may_subscribe(topic) {
                    return revoke(s.send).await;
                }
            }
            read = s.recv.read(&mut ignored) => match read {
                Ok(Some(_)) => {}
                _ => return "closed by subscriber",
            },
            _ = s.send.stopped() => return "closed by subscriber",
        }
    }
}

/// The lowest offset of `topic` a subscription may read now.
fn first_readable(policy: &Policy, topic: &str, head: &Head) -> u64 {
    policy.retention(topic).map_or(head.first_offset, |r| {
        r.first_readable(head.first_offset, head.next_offset)
    })
}

async fn send_gap(
    send: &mut quinn::SendStream,
    topic: &str,
    from: u64,
    to: u64,
) -> Result<(), signet_proto::stream::WriteError> {
    let gap = Gap {
        topic: topic.to_owned(),
        from,
        to,
        reason: "retention".into(),
    };
    write_frame(send, &ServerFrame::Gap(gap)).await
}

/// What a chunk becomes on the wire.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Deliver(Vec<Delivery>),
    /// Offsets `from..=to` removed.
    Gap(u64, u64),
}

/// Splits a chunk read from `cursor` up to (not including) `end` into
/// deliveries and gaps: offsets missing from the chunk, and records
/// received before `cutoff` (past the age limit).
fn split(chunk: Vec<Delivery>, cursor: u64, end: u64, cutoff: Option<u64>) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut records = Vec::new();
    let mut gap: Option<(u64, u64)> = None;
    let mut expected = cursor;
    let push_gap = |pieces: &mut Vec<Piece>, records: &mut Vec<Delivery>, from, to| {
        if !records.is_empty() {
            pieces.push(Piece::Deliver(std::mem::take(records)));
        }
        pieces.push(Piece::Gap(from, to));
    };
    for d in chunk {
        let too_old = cutoff.is_some_and(|c| trim::received_ms(&d.record).is_some_and(|r| r < c));
        let start = if d.offset > expected {
            Some(expected)
        } else {
            None
        };
        if too_old {
            let from = gap.map_or(start.unwrap_or(d.offset), |(from, _)| from);
            gap = Some((from, d.offset));
        } else {
            match (gap.take(), start) {
                (Some((from, _)), _) => push_gap(&mut pieces, &mut records, from, d.offset - 1),
                (None, Some(from)) => push_gap(&mut pieces, &mut records, from, d.offset - 1),
                (None, None) => {}
            }
            expected = d.offset + 1;
            records.push(d);
            continue;
        }
        expected = d.offset + 1;
    }
    if let Some((from, _)) = gap {
        push_gap(&mut pieces, &mut records, from, end - 1);
    } else if expected < end {
        push_gap(&mut pieces, &mut records, expected, end - 1);
    }
    if !records.is_empty() {
        pieces.push(Piece::Deliver(records));
    }
    pieces
}

/// Ends a subscription whose grant a reload took away.
async fn revoke(send: &mut quinn::SendStream) -> &'static str {
    refuse(
        send,
        ErrorCode::Forbidden,
        "subscription revoked by a policy reload",
    )
    .await;
    "revoked"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(offset: u64) -> Delivery {
        Delivery {
            offset,
            record: Vec::new(),
        }
    }

    fn offsets(piece: &Piece) -> Vec<u64> {
        match piece {
            Piece::Deliver(r) => r.iter().map(|d| d.offset).collect(),
            Piece::Gap(..) => Vec::new(),
        }
    }

    #[test]
    fn holes_and_a_deleted_tail_become_gaps_between_deliveries() {
        let pieces = split(vec![d(3), d(4), d(7)], 1, 10, None);
        assert_eq!(pieces.len(), 5);
        assert_eq!(pieces[0], Piece::Gap(1, 2));
        assert_eq!(offsets(&pieces[1]), [3, 4]);
        assert_eq!(pieces[2], Piece::Gap(5, 6));
        assert_eq!(offsets(&pieces[3]), [7]);
        assert_eq!(pieces[4], Piece::Gap(8, 9));
        assert_eq!(split(Vec::new(), 4, 6, None), [Piece::Gap(4, 5)]);
        let whole = split(vec![d(0), d(1)], 0, 2, None);
        assert_eq!(whole.len(), 1);
        assert_eq!(offsets(&whole[0]), [0, 1]);
    }
}
