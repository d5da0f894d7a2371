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
use crate::metrics;
use crate::session::Session;
use signet_proto::frame::{Rejection, ServerFrame, StartAt, Subscribe};
use signet_proto::limits::DELIVER_MESSAGES_MAX;
use signet_proto::stream::write_frame;
use signet_proto::{ErrorCode, topic};
use std::sync::Arc;

/// Most record bytes read into one `Deliver` frame.
pub const CHUNK_BYTES_MAX: usize = 1024 * 1024;

async fn refuse(send: &mut quinn::SendStream, code: ErrorCode, detail: &str) {
    metrics::rejected(code);
    let _ = write_frame(send, &ServerFrame::Error(Rejection::new(code, detail))).await;
    let _ = send.finish();
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
    let allowed = session
        .policy()
        .principal(&session.principal)
        .is_some_and(|p| {
            let mut decisions = session.decisions.lock().unwrap_or_else(|e| e.into_inner());
            decisions.allows(&p.grants, Action::Subscribe, &sub.topic)
        });
    if !allowed {
        tracing::info!(principal = %session.principal, topic = %sub.topic, "subscribe denied");
        return refuse(
            &mut send,
            ErrorCode::Forbidden,
            "not allowed to subscribe to this topic",
        )
        .await;
    }
    let mut head = session.shared.registry.watch(&sub.topic);
    let next_offset = head.borrow_and_update().next_offset;
    let mut cursor = match sub.start {
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
    metrics::gauge_add(metrics::SUBSCRIPTIONS_LIVE, 1.0);
    let mut ignored = [0u8; 64];
    loop {
        let now = *head.borrow_and_update();
        if let Some(topic_id) = now.topic_id
            && cursor < now.next_offset
        {
            let store = session.shared.store.clone();
            let end = now.next_offset;
            let read = tokio::task::spawn_blocking(move || {
                store.read_range(topic_id, cursor, end, DELIVER_MESSAGES_MAX, CHUNK_BYTES_MAX)
            })
            .await;
            match read {
                Ok(Ok(chunk)) => {
                    // An empty chunk means the range was deleted (retention): skip it.
                    cursor = chunk.last().map_or(end, |d| d.offset + 1);
                    if chunk.is_empty() {
                        continue;
                    }
                    let n = chunk.len();
                    if write_frame(&mut send, &ServerFrame::Deliver(chunk))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    metrics::delivered(n);
                    continue;
                }
                _ => {
                    tracing::error!(topic = %sub.topic, "subscription read failed");
                    refuse(&mut send, ErrorCode::Unavailable, "storage unavailable").await;
                    break;
                }
            }
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() { break },
            read = recv.read(&mut ignored) => match read {
                Ok(Some(_)) => {}
                _ => break,
            },
            _ = send.stopped() => break,
        }
    }
    metrics::gauge_add(metrics::SUBSCRIPTIONS_LIVE, -1.0);
    tracing::info!(principal = %session.principal, topic = %sub.topic, "subscription closed");
}
