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
//! Retention: chunks come from [`crate::chunk`], which never reads below
//! the topic's first readable offset nor returns a record past the age
//! limit, and turns what it skips into a `Gap` frame sent before going on.
//! `Earliest` starts at the first readable offset without a gap.
//! The subscriber ends the subscription by finishing or resetting its side.

use crate::answer;
use crate::audit::Event;
use crate::chunk::{self, Piece};
use crate::fanout::Head;
use crate::metrics;
use crate::policy::Policy;
use crate::quota::Slot;
use crate::state::ConnectionState;
use serde_json::json;
use signet_proto::frame::{Rejection, ServerFrame, StartAt, Subscribe};
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
    let Some(_slot) = slot(&conn, &mut send).await else {
        return;
    };
    let mut head = conn.broker.registry.watch(&sub.topic);
    let now = *head.borrow_and_update();
    let next_offset = now.next_offset;
    let cursor = match sub.start {
        StartAt::Earliest => chunk::first_readable(&conn.broker.policy(), &sub.topic, &now),
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
    let mut live = Live::open(&conn, "topic", &sub.topic);
    let mut stream = Streams {
        send: &mut send,
        recv: &mut recv,
        head: &mut head,
        policy: &mut policy_changes,
    };
    live.reason = deliver(&conn, &sub.topic, cursor, &mut stream).await;
}

/// A live subscription (exact or pattern): counted in the gauge, and its
/// closing logged and audited however it ends (also when the connection's
/// task is aborted).
pub(crate) struct Live<'a> {
    conn: &'a ConnectionState,
    /// `"topic"` or `"pattern"`: the audit field that names `subscribed`.
    kind: &'static str,
    subscribed: &'a str,
    pub reason: &'static str,
}

impl<'a> Live<'a> {
    pub fn open(conn: &'a ConnectionState, kind: &'static str, subscribed: &'a str) -> Live<'a> {
        metrics::gauge_add(metrics::SUBSCRIPTIONS_LIVE, 1.0);
        Live {
            conn,
            kind,
            subscribed,
            reason: "connection closed",
        }
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        metrics::gauge_add(metrics::SUBSCRIPTIONS_LIVE, -1.0);
        let (principal, kind, subscribed, reason) = (
            &*self.conn.principal,
            self.kind,
            self.subscribed,
            self.reason,
        );
        tracing::info!(%principal, kind, %subscribed, reason, "subscription closed");
        let mut fields = json!({ "principal": principal, "remote": self.conn.conn.remote_address().to_string(), "reason": reason });
        fields[kind] = json!(subscribed);
        self.conn
            .broker
            .audit
            .record(Event::new("subscription_closed", fields));
    }
}

/// A place among the principal's subscriptions (`max_subscriptions`), or
/// `None` with the refusal sent (`QuotaExceeded`, audited; `Unavailable`
/// when usage cannot be read).
pub(crate) async fn slot(conn: &ConnectionState, send: &mut quinn::SendStream) -> Option<Slot> {
    let quota = match conn.broker.quota(&conn.broker.policy(), &conn.principal) {
        Ok(quota) => quota,
        Err(e) => {
            tracing::error!(error = %e, "usage unreadable");
            refuse(send, ErrorCode::Unavailable, "storage unavailable").await;
            return None;
        }
    };
    let slot = quota.open_subscription();
    if slot.is_none() {
        metrics::quota_hit("subscriptions");
        conn.broker.audit.record(Event::new(
            "quota_breach",
            json!({ "principal": &*conn.principal, "remote": conn.conn.remote_address().to_string(), "kind": "subscriptions" }),
        ));
        refuse(
            send,
            ErrorCode::QuotaExceeded,
            "too many subscriptions for this principal",
        )
        .await;
    }
    slot
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
            let Ok(step) = chunk::read(conn, topic, topic_id, cursor, &now).await else {
                refuse(s.send, ErrorCode::Unavailable, "storage unavailable").await;
                return "storage unavailable";
            };
            for piece in step.pieces {
                let written = match piece {
                    Piece::Deliver(records) => {
                        let n = records.len();
                        let written = write_frame(s.send, &ServerFrame::Deliver(records)).await;
                        metrics::delivered(n);
                        written
                    }
                    Piece::Gap(from, to) => chunk::send_gap(s.send, topic, from, to).await,
                };
                if written.is_err() {
                    return "stream closed";
                }
            }
            cursor = step.cursor;
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
