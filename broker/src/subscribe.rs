//! A subscription stream: one `Subscribe` in, then `Subscribed` and
//! `Deliver` frames out, in offset order with no gaps or repeats.
//!
//! Delivery always reads from storage by offset, up to the topic's head
//! ([`crate::fanout`]), then waits for the head to move. At most one chunk
//! (`DELIVER_MESSAGES_MAX` messages or `CHUNK_BYTES_MAX` bytes) is held per
//! subscription, and each write waits for QUIC flow control, so a slow
//! subscriber holds the broker's memory to one chunk.
//! The subscriber ends the subscription by finishing or resetting its side.

use crate::acl::Action;
use crate::audit::Event;
use crate::config::Policy;
use crate::fanout::Head;
use crate::metrics;
use crate::session::Session;
use serde_json::json;
use signet_proto::frame::{Rejection, ServerFrame, StartAt, Subscribe};
use signet_proto::limits::DELIVER_MESSAGES_MAX;
use signet_proto::stream::write_frame;
use signet_proto::{ErrorCode, topic};
use std::sync::Arc;
use tokio::sync::watch;

/// Most record bytes read into one `Deliver` frame.
pub const CHUNK_BYTES_MAX: usize = 1024 * 1024;

type HeadWatch = watch::Receiver<Head>;
type PolicyWatch = watch::Receiver<Arc<Policy>>;

async fn refuse(send: &mut quinn::SendStream, code: ErrorCode, detail: &str) {
    metrics::rejected(code);
    let _ = write_frame(send, &ServerFrame::Error(Rejection::new(code, detail))).await;
    let _ = send.finish();
}

/// Whether the connection's principal may subscribe to `topic` under the
/// policy in force.
fn may_subscribe(session: &Session, topic: &str) -> bool {
    let policy = session.policy();
    policy.principal(&session.principal).is_some_and(|p| {
        let mut decisions = session.decisions.lock().unwrap_or_else(|e| e.into_inner());
        decisions.allows(policy.version, &p.grants, Action::Subscribe, topic)
    })
}

/// Serves one subscription.
pub(crate) async fn run(
    session: Arc<Session>,
    sub: Subscribe,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    if topic::validate_name(&sub.topic).is_err() {
        return refuse(&mut send, ErrorCode::BadTopic, "invalid topic name").await;
    }
    let mut policy_changes = session.shared.watch_policy();
    if !may_subscribe(&session, &sub.topic) {
        tracing::info!(principal = %session.principal, topic = %sub.topic, "subscribe denied");
        session.shared.audit.record(Event::new(
            "subscribe_denied",
            json!({ "principal": session.principal, "topic": sub.topic, "code": ErrorCode::Forbidden.to_string() }),
        ));
        return refuse(
            &mut send,
            ErrorCode::Forbidden,
            "not allowed to subscribe to this topic",
        )
        .await;
    }
    let Some(_slot) = session.shared.quota(&session.principal).open_subscription() else {
        metrics::quota_hit("subscriptions");
        session.shared.audit.record(
            Event::new(
                "quota_breach",
                json!({ "principal": session.principal, "kind": "subscriptions" }),
            )
            .noisy(&session.principal),
        );
        return refuse(
            &mut send,
            ErrorCode::QuotaExceeded,
            "too many subscriptions for this principal",
        )
        .await;
    };
    let mut head = session.shared.registry.watch(&sub.topic);
    let next_offset = head.borrow_and_update().next_offset;
    let cursor = match sub.start {
        StartAt::Earliest => 0,
        StartAt::Offset(n) => n,
        StartAt::Latest => next_offset,
    };
    if write_frame(&mut send, &ServerFrame::Subscribed { next_offset })
        .await
        .is_err()
    {
        return;
    }
    tracing::info!(principal = %session.principal, topic = %sub.topic, cursor, "subscription opened");
    session.shared.audit.record(Event::new(
        "subscription_opened",
        json!({ "principal": session.principal, "topic": sub.topic, "from": cursor }),
    ));
    let mut live = Live::open(&session, &sub.topic);
    let mut stream = Streams {
        send: &mut send,
        recv: &mut recv,
        head: &mut head,
        policy: &mut policy_changes,
    };
    live.reason = deliver(&session, &sub.topic, cursor, &mut stream).await;
}

/// A live subscription: counted in the gauge, and its closing logged and
/// audited however it ends (also when the connection's task is aborted).
struct Live<'a> {
    session: &'a Session,
    topic: &'a str,
    reason: &'static str,
}

impl<'a> Live<'a> {
    fn open(session: &'a Session, topic: &'a str) -> Live<'a> {
        metrics::gauge_add(metrics::SUBSCRIPTIONS_LIVE, 1.0);
        Live {
            session,
            topic,
            reason: "connection closed",
        }
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        metrics::gauge_add(metrics::SUBSCRIPTIONS_LIVE, -1.0);
        let (principal, topic, reason) = (&self.session.principal, self.topic, self.reason);
        tracing::info!(%principal, %topic, reason, "subscription closed");
        self.session.shared.audit.record(Event::new(
            "subscription_closed",
            json!({ "principal": principal, "topic": topic, "reason": reason }),
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
    session: &Session,
    topic: &str,
    mut cursor: u64,
    s: &mut Streams<'_>,
) -> &'static str {
    let mut ignored = [0u8; 64];
    loop {
        let now = *s.head.borrow_and_update();
        if let Some(topic_id) = now.topic_id
            && cursor < now.next_offset
        {
            let store = session.shared.store.clone();
            let end = now.next_offset;
            let read = tokio::task::spawn_blocking(move || {
                store.read_range(topic_id, cursor, end, DELIVER_MESSAGES_MAX, CHUNK_BYTES_MAX)
            })
            .await;
            let Ok(Ok(chunk)) = read else {
                tracing::error!(%topic, "subscription read failed");
                refuse(s.send, ErrorCode::Unavailable, "storage unavailable").await;
                return "storage unavailable";
            };
            // An empty chunk means the range was deleted (retention): skip it.
            cursor = chunk.last().map_or(end, |d| d.offset + 1);
            if chunk.is_empty() {
                continue;
            }
            let n = chunk.len();
            if write_frame(s.send, &ServerFrame::Deliver(chunk))
                .await
                .is_err()
            {
                return "stream closed";
            }
            metrics::delivered(n);
            continue;
        }
        tokio::select! {
            changed = s.head.changed() => if changed.is_err() { return "broker stopping" },
            changed = s.policy.changed() => {
                if changed.is_err() {
                    return "broker stopping";
                }
                if !may_subscribe(session, topic) {
                    refuse(s.send, ErrorCode::Forbidden, "subscription revoked by a policy reload").await;
                    return "revoked";
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
