//! A consumer-group member: a stream of verified deliveries, each with its
//! topic, offset, delivery count and group, settled with
//! [`Delivery::ack`], [`Delivery::nak`], [`Delivery::extend`] or
//! [`Delivery::term`].
//!
//! [`join`] opens the member's stream on a connection (one function, so a
//! reconnecting client can call it again to rejoin). A reading task
//! verifies every delivery end to end (the publisher's signature against
//! the client's `[trust]`, like a subscription, in any order) and answers
//! settlements; a writing task batches settlements into `Settle` frames.
//! Each settlement resolves once the broker has it on disk, or with its
//! typed refusal (`LeaseInvalid`: the lease is no longer this member's).

use crate::error::Error;
use crate::limits::FRAME_BYTES_MAX;
use crate::message::Message;
use crate::payload::Payloads;
use crate::verify::Verifier;
use futures_core::Stream;
use signet_proto::frame::{
    ClientFrame, Consume, GroupStatus, Outcome, ServerFrame, Settle, SettleAction,
};
use signet_proto::limits::SETTLE_OPS_MAX;
use signet_proto::stream::{read_frame, write_frame};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Deliveries a member holds unsettled unless told otherwise.
pub const DEFAULT_PREFETCH: u32 = 64;

type SettleReply = oneshot::Sender<Result<(), Error>>;
type Waiting = Arc<Mutex<VecDeque<Vec<SettleReply>>>>;

/// One settlement on its way to the writing task.
struct SettleRequest {
    settle: Settle,
    reply: SettleReply,
}

/// A verified message leased to this member.
pub struct Delivery {
    /// The message, verified against the publisher's key.
    pub message: Message,
    /// The group.
    pub group: String,
    /// Times the group received it, this one included.
    pub delivery_count: u32,
    /// When the lease ends unless extended (broker clock, ms).
    pub deadline_ms: u64,
    token: Vec<u8>,
    settle: mpsc::Sender<SettleRequest>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.message.topic)
            .field("offset", &self.message.offset)
            .field("group", &self.group)
            .field("delivery_count", &self.delivery_count)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// The message's topic.
    pub fn topic(&self) -> &str {
        &self.message.topic
    }

    /// The message's offset.
    pub fn offset(&self) -> u64 {
        self.message.offset
    }

    /// The lease token (for tools and tests that speak frames directly).
    pub fn token(&self) -> &[u8] {
        &self.token
    }

    async fn settle(&self, action: SettleAction) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        let settle = Settle {
            topic: self.message.topic.clone(),
            offset: self.message.offset,
            token: self.token.clone(),
            action,
        };
        self.settle
            .send(SettleRequest { settle, reply })
            .await
            .map_err(|_| Error::ConnectionLost("consumer stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::ConnectionLost("consumer stopped".into()))?
    }

    /// Done: the message is never delivered to the group again. Returns
    /// once the broker has the ack on disk.
    pub async fn ack(&self) -> Result<(), Error> {
        self.settle(SettleAction::Ack).await
    }

    /// Not done: redeliver after `delay` (and never before the group's
    /// backoff); dead-lettered instead if this was the last delivery.
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), Error> {
        self.settle(SettleAction::Nak(delay.map(|d| d.as_millis() as u64)))
            .await
    }

    /// Still working: the lease deadline moves to now + `ack_wait`.
    pub async fn extend(&self) -> Result<(), Error> {
        self.settle(SettleAction::Extend).await
    }

    /// Never deliver again: dead-letter now with `reason`.
    pub async fn term(&self, reason: &str) -> Result<(), Error> {
        self.settle(SettleAction::Term(reason.to_owned())).await
    }
}

/// A live membership. Yields `Ok(delivery)` for every delivery that
/// verified, `Err(Error::Verify { .. })` for one that did not (it is left
/// unsettled: its lease expires), and ends after a connection or broker
/// error (a revoked `consume` grant ends it with `Forbidden`).
pub struct Consumer {
    deliveries: mpsc::Receiver<Result<Delivery, Error>>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.deliveries.poll_recv(cx)
    }
}

/// Joins `group` on `conn`: opens a stream, sends `Consume` and waits for
/// `Joined`. A refusal is `Error::Rejected` with its code (`Forbidden`
/// without a `consume` grant).
pub async fn join(
    conn: &quinn::Connection,
    group: &str,
    prefetch: u32,
) -> Result<(quinn::SendStream, quinn::RecvStream), Error> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::ConnectionLost(e.to_string()))?;
    let request = ClientFrame::Consume(Consume {
        group: group.to_owned(),
        prefetch,
    });
    write_frame(&mut send, &request)
        .await
        .map_err(|e| Error::ConnectionLost(e.to_string()))?;
    match read_frame::<ServerFrame, _>(&mut recv, FRAME_BYTES_MAX).await {
        Ok(Some(ServerFrame::Joined { .. })) => Ok((send, recv)),
        Ok(Some(ServerFrame::Error(r))) => Err(Error::rejected(r)),
        Ok(Some(_)) => Err(Error::Protocol("unexpected answer to consume".into())),
        Ok(None) => Err(Error::ConnectionLost("consume refused".into())),
        Err(e) => Err(Error::ConnectionLost(e.to_string())),
    }
}

/// Asks for `group`'s state on `conn`.
pub async fn group_info(conn: &quinn::Connection, group: &str) -> Result<GroupStatus, Error> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::ConnectionLost(e.to_string()))?;
    let request = ClientFrame::GroupInfo(signet_proto::frame::GroupInfo {
        group: group.to_owned(),
    });
    write_frame(&mut send, &request)
        .await
        .map_err(|e| Error::ConnectionLost(e.to_string()))?;
    let _ = send.finish();
    match read_frame::<ServerFrame, _>(&mut recv, FRAME_BYTES_MAX).await {
        Ok(Some(ServerFrame::GroupStatus(status))) => Ok(status),
        Ok(Some(ServerFrame::Error(r))) => Err(Error::rejected(r)),
        Ok(Some(_)) => Err(Error::Protocol("unexpected answer to group info".into())),
        Ok(None) => Err(Error::ConnectionLost("group info refused".into())),
        Err(e) => Err(Error::ConnectionLost(e.to_string())),
    }
}

impl Consumer {
    /// Starts the reading and writing tasks on a joined stream.
    pub(crate) fn start(
        group: String,
        streams: (quinn::SendStream, quinn::RecvStream),
        verifier: Verifier,
        payloads: Arc<Payloads>,
        prefetch: u32,
    ) -> Consumer {
        let (send, recv) = streams;
        let (tx, deliveries) = mpsc::channel(prefetch.max(1) as usize);
        let (settle_tx, settle_rx) = mpsc::channel(SETTLE_OPS_MAX);
        let waiting: Waiting = Arc::default();
        let reader = tokio::spawn(read_deliveries(
            Reader {
                group,
                verifier,
                payloads,
                settle: settle_tx,
                waiting: waiting.clone(),
            },
            recv,
            tx,
        ));
        let writer = tokio::spawn(write_settlements(send, settle_rx, waiting));
        Consumer {
            deliveries,
            tasks: [reader, writer],
        }
    }
}

struct Reader {
    group: String,
    verifier: Verifier,
    payloads: Arc<Payloads>,
    settle: mpsc::Sender<SettleRequest>,
    waiting: Waiting,
}

fn fail_waiting(waiting: &Waiting, error: &Error) {
    let mut queue = waiting.lock().unwrap_or_else(|p| p.into_inner());
    for replies in queue.drain(..) {
        for reply in replies {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

async fn read_deliveries(
    mut r: Reader,
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Result<Delivery, Error>>,
) {
    let error = loop {
        match read_frame::<ServerFrame, _>(&mut recv, FRAME_BYTES_MAX).await {
            Ok(Some(ServerFrame::GroupDeliver(deliveries))) => {
                for d in deliveries {
                    let verdict = r
                        .verifier
                        .verify_any_order(&d.topic, &d.record)
                        .map_err(|e| Error::Verify {
                            offset: d.offset,
                            code: e.code,
                            detail: e.detail.into(),
                        })
                        .and_then(|record| r.payloads.open(d.offset, record))
                        .map(|message| Delivery {
                            message,
                            group: r.group.clone(),
                            delivery_count: d.delivery_count,
                            deadline_ms: d.deadline_ms,
                            token: d.token,
                            settle: r.settle.clone(),
                        });
                    if tx.send(verdict).await.is_err() {
                        return;
                    }
                }
            }
            Ok(Some(ServerFrame::Settled(outcomes))) => {
                let replies = r
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop_front();
                let Some(replies) = replies else {
                    break Error::Protocol("Settled without a Settle".into());
                };
                if replies.len() != outcomes.len() {
                    break Error::Protocol("Settled does not match its Settle".into());
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(match outcome {
                        Outcome::Ack(_) => Ok(()),
                        Outcome::Nack(rejection) => Err(Error::rejected(rejection)),
                    });
                }
            }
            Ok(Some(ServerFrame::Error(rejection))) => break Error::rejected(rejection),
            Ok(Some(_)) => break Error::Protocol("unexpected frame on a consume stream".into()),
            Ok(None) => break Error::ConnectionLost("membership closed by the broker".into()),
            Err(e) => break Error::ConnectionLost(e.to_string()),
        }
    };
    fail_waiting(&r.waiting, &error);
    let _ = tx.send(Err(error)).await;
}

async fn write_settlements(
    mut send: quinn::SendStream,
    mut requests: mpsc::Receiver<SettleRequest>,
    waiting: Waiting,
) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while batch.len() < SETTLE_OPS_MAX {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let (settles, replies): (Vec<Settle>, Vec<SettleReply>) =
            batch.into_iter().map(|r| (r.settle, r.reply)).unzip();
        // Queued before the frame goes out, so the answer always finds it.
        waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(replies);
        if let Err(e) = write_frame(&mut send, &ClientFrame::Settle(settles)).await {
            fail_waiting(&waiting, &Error::ConnectionLost(e.to_string()));
            return;
        }
    }
}
