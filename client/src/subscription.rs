//! A subscription: a stream of verified messages in offset order.
//!
//! A background task reads `Deliver` frames and verifies every record
//! before handing it on through a bounded channel; when the application
//! stops reading, the channel fills, the task stops reading the QUIC
//! stream, and flow control makes the broker wait. Dropping the
//! subscription ends it.

use crate::error::Error;
use crate::limits::{FRAME_BYTES_MAX, SUBSCRIPTION_BUFFER_MESSAGES_MAX};
use crate::message::Message;
use crate::payload::Payloads;
use crate::verify::Verifier;
use futures_core::Stream;
use signet_proto::ErrorCode;
use signet_proto::frame::ServerFrame;
use signet_proto::stream::read_frame;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// A live subscription. Yields `Ok(message)` for every message that
/// verified (a key trusted for its topic signed it, and its seq is above
/// every seq already yielded from that key), `Err(Error::Verify { .. })` for
/// one that did not (its content is never yielded: a repeated or backwards
/// seq is `Replay`, a key outside its trusted topics `Untrusted`), and ends
/// after a connection or broker error.
pub struct Subscription {
    /// Verdicts from the reading task, in offset order.
    messages: mpsc::Receiver<Result<Message, Error>>,
    /// The reading task; aborted when the subscription is dropped.
    task: tokio::task::JoinHandle<()>,
    /// The topic's next offset when the subscription opened.
    next_offset: u64,
}

impl Subscription {
    pub(crate) fn start(
        topic: String,
        next_offset: u64,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        verifier: Verifier,
        payloads: Arc<Payloads>,
    ) -> Subscription {
        let (tx, messages) = mpsc::channel(SUBSCRIPTION_BUFFER_MESSAGES_MAX);
        let reader = Reader {
            topic,
            verifier,
            payloads,
        };
        let task = tokio::spawn(read_deliveries(reader, send, recv, tx));
        Subscription {
            messages,
            task,
            next_offset,
        }
    }

    /// The topic's next offset when the subscription opened.
    pub fn next_offset_at_open(&self) -> u64 {
        self.next_offset
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Subscription {
    type Item = Result<Message, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.messages.poll_recv(cx)
    }
}

/// What the reading task checks deliveries with.
struct Reader {
    /// The topic name or pattern subscribed to.
    topic: String,
    /// The publisher keys this client trusts.
    verifier: Verifier,
    /// Decryption keys and schemas from the client file.
    payloads: Arc<Payloads>,
}

async fn read_deliveries(
    reader: Reader,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Result<Message, Error>>,
) {
    let Reader {
        topic,
        mut verifier,
        payloads,
    } = reader;
    let mut last_offset: Option<u64> = None;
    loop {
        let item = match read_frame::<ServerFrame, _>(&mut recv, FRAME_BYTES_MAX).await {
            Ok(Some(ServerFrame::Deliver(deliveries))) => {
                for d in deliveries {
                    let verdict = if last_offset.is_some_and(|last| d.offset <= last) {
                        Err(Error::Verify {
                            offset: d.offset,
                            code: ErrorCode::Replay,
                            detail: "offset delivered out of order".into(),
                        })
                    } else {
                        last_offset = Some(d.offset);
                        verifier
                            .verify(&topic, &d.record)
                            .map_err(|r| Error::Verify {
                                offset: d.offset,
                                code: r.code,
                                detail: r.detail.into(),
                            })
                            .and_then(|record| payloads.open(d.offset, record))
                    };
                    if tx.send(verdict).await.is_err() {
                        let _ = send.finish();
                        return;
                    }
                }
                continue;
            }
            Ok(Some(ServerFrame::Gap(gap))) => {
                // A gap only ever moves forward.
                if gap.from > gap.to || last_offset.is_some_and(|last| gap.from <= last) {
                    Error::Protocol("a gap out of order on a subscription".into())
                } else {
                    last_offset = Some(gap.to);
                    let gap = Error::Gap {
                        topic: gap.topic,
                        from: gap.from,
                        to: gap.to,
                        reason: gap.reason,
                    };
                    if tx.send(Err(gap)).await.is_err() {
                        let _ = send.finish();
                        return;
                    }
                    continue;
                }
            }
            Ok(Some(ServerFrame::Error(r))) => Error::rejected(r),
            Ok(Some(_)) => Error::Protocol("unexpected frame on a subscription".into()),
            Ok(None) => Error::ConnectionLost("subscription closed by the broker".into()),
            Err(e) => Error::ConnectionLost(e.to_string()),
        };
        let _ = tx.send(Err(item)).await;
        return;
    }
}
