//! A consumer-group member: a stream of verified deliveries, each with its
//! topic, offset, delivery count and group, settled with
//! [`Delivery::ack`], [`Delivery::nak`], [`Delivery::extend`] or
//! [`Delivery::term`].
//!
//! [`join`] opens the member's stream on a connection. After a lost
//! connection the member dials again through the [`Link`] and joins again
//! (a new membership: settlements of deliveries from before the loss fail
//! with `ConnectionLost`, their leases end at their deadlines and the group
//! redelivers that work, with its delivery count). A reading task
//! verifies every delivery end to end (the publisher's signature against
//! the client's `[trust]`, like a subscription, in any order) and answers
//! settlements; a writing task batches settlements into `Settle` frames.
//! Each settlement resolves once the broker has it on disk, or with its
//! typed refusal (`LeaseInvalid`: the lease is no longer this member's).

use crate::error::Error;
use crate::limits::FRAME_BYTES_MAX;
use crate::link::{Current, Link};
use crate::message::Message;
use crate::payload::Payloads;
use crate::verify::Verifier;
use futures_core::Stream;
use signet_proto::ErrorCode;
use signet_proto::frame::{
    ClientFrame, ClusterStatus, Consume, GroupStatus, Outcome, Placement, ServerFrame, Settle,
    SettleAction,
};
use signet_proto::limits::SETTLE_OPS_MAX;
use signet_proto::stream::{read_frame, write_frame};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Deliveries a member holds unsettled unless told otherwise.
pub const DEFAULT_PREFETCH: u32 = 64;

type SettleReply = oneshot::Sender<Result<(), Error>>;
/// Settlements sent and not answered: per `Settle` frame, in order, the
/// generation of the connection it went out on and its replies.
type Waiting = Arc<Mutex<VecDeque<(u64, Vec<SettleReply>)>>>;

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
    /// The generation of the connection its membership ran on.
    generation: u64,
    /// That connection: once it is closed the delivery can no longer be
    /// settled, and the stream skips it if the application has not taken it.
    conn: quinn::Connection,
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
    /// The oldest connection generation whose deliveries are handed out:
    /// the membership's own, or one past it from the moment the member
    /// starts joining again.
    generation: Arc<AtomicU64>,
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
        // Deliveries of a membership lost before the application took
        // them are skipped: their leases are gone and the group delivers
        // them again. Lost means its connection closed, or the member
        // began joining again (`generation`: the oldest one still live),
        // not only once it has joined again.
        loop {
            match self.deliveries.poll_recv(cx) {
                Poll::Ready(Some(Ok(d)))
                    if d.generation < self.generation.load(Ordering::SeqCst)
                        || d.conn.close_reason().is_some() =>
                {
                    continue;
                }
                other => return other,
            }
        }
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

/// Asks the connected node for the cluster's state.
pub async fn cluster_status(conn: &quinn::Connection) -> Result<ClusterStatus, Error> {
    match ask(conn, &ClientFrame::ClusterStatus, "cluster status").await? {
        ServerFrame::ClusterStatus(status) => Ok(status),
        _ => Err(Error::Protocol(
            "unexpected answer to cluster status".into(),
        )),
    }
}

/// Asks the connected node where the cluster's topics are.
pub(crate) async fn placement(conn: &quinn::Connection) -> Result<Placement, Error> {
    match ask(conn, &ClientFrame::Placement, "placement").await? {
        ServerFrame::Placement(placement) => Ok(placement),
        _ => Err(Error::Protocol("unexpected answer to placement".into())),
    }
}

/// Sends `question` as the only frame of a new stream and reads the one
/// answer (`ServerFrame::Error` becomes `Rejected`).
async fn ask(
    conn: &quinn::Connection,
    question: &ClientFrame,
    what: &str,
) -> Result<ServerFrame, Error> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::ConnectionLost(e.to_string()))?;
    write_frame(&mut send, question)
        .await
        .map_err(|e| Error::ConnectionLost(e.to_string()))?;
    let _ = send.finish();
    match read_frame::<ServerFrame, _>(&mut recv, FRAME_BYTES_MAX).await {
        Ok(Some(ServerFrame::Error(r))) => Err(Error::rejected(r)),
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err(Error::ConnectionLost(format!("{what} refused"))),
        Err(e) => Err(Error::ConnectionLost(e.to_string())),
    }
}

/// Asks for `group`'s state on `conn`.
pub async fn group_info(conn: &quinn::Connection, group: &str) -> Result<GroupStatus, Error> {
    let request = ClientFrame::GroupInfo(signet_proto::frame::GroupInfo {
        group: group.to_owned(),
    });
    match ask(conn, &request, "group info").await? {
        ServerFrame::GroupStatus(status) => Ok(status),
        _ => Err(Error::Protocol("unexpected answer to group info".into())),
    }
}

/// Where a member is joined, and how to join again after a lost
/// connection.
pub(crate) struct Membership {
    pub link: Link,
    /// The connection the stream runs on.
    pub current: Current,
    pub group: String,
    pub prefetch: u32,
}

impl Consumer {
    /// Starts the reading and writing tasks on a joined stream.
    pub(crate) fn start(
        membership: Membership,
        streams: (quinn::SendStream, quinn::RecvStream),
        verifier: Verifier,
        payloads: Arc<Payloads>,
    ) -> Consumer {
        let (send, recv) = streams;
        let (tx, deliveries) = mpsc::channel(membership.prefetch.max(1) as usize);
        let (settle_tx, settle_rx) = mpsc::channel(SETTLE_OPS_MAX);
        let (streams_tx, streams_rx) = mpsc::channel(1);
        let waiting: Waiting = Arc::default();
        let generation = membership.current.generation;
        let shared_generation = Arc::new(AtomicU64::new(generation));
        let reader = tokio::spawn(read_deliveries(
            Reader {
                generation: shared_generation.clone(),
                membership,
                verifier,
                payloads,
                settle: settle_tx,
                waiting: waiting.clone(),
                streams: streams_tx,
            },
            recv,
            tx,
        ));
        let writer = tokio::spawn(write_settlements(
            (generation, send),
            streams_rx,
            settle_rx,
            waiting,
        ));
        Consumer {
            deliveries,
            tasks: [reader, writer],
            generation: shared_generation,
        }
    }
}

struct Reader {
    /// The oldest live generation, shared with [`Consumer`] (see there).
    generation: Arc<AtomicU64>,
    membership: Membership,
    verifier: Verifier,
    payloads: Arc<Payloads>,
    settle: mpsc::Sender<SettleRequest>,
    waiting: Waiting,
    /// Send streams of rejoined memberships, for the writing task.
    streams: mpsc::Sender<(u64, quinn::SendStream)>,
}

/// Fails every settlement waiting for an answer (of any connection).
fn fail_waiting(waiting: &Waiting, error: &Error) {
    let mut queue = waiting.lock().unwrap_or_else(|p| p.into_inner());
    for (_, replies) in queue.drain(..) {
        for reply in replies {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

/// The replies of the oldest `Settle` sent on the connection of
/// `generation`; those of older connections are failed on the way (their
/// answers can never come).
fn next_waiting(waiting: &Waiting, generation: u64) -> Option<Vec<SettleReply>> {
    let mut queue = waiting.lock().unwrap_or_else(|p| p.into_inner());
    while let Some((g, replies)) = queue.pop_front() {
        if g == generation {
            return Some(replies);
        }
        for reply in replies {
            let _ = reply.send(Err(Error::ConnectionLost(
                "settled on a lost connection".into(),
            )));
        }
    }
    None
}

async fn read_deliveries(
    mut r: Reader,
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Result<Delivery, Error>>,
) {
    // Verified deliveries the application has not taken yet (kept across
    // a rejoin: the ones from before fail to settle, see the module doc).
    let mut pending = VecDeque::new();
    loop {
        let Some(error) = read_membership(&mut r, recv, &tx, &mut pending).await else {
            return;
        };
        let moved = match &error {
            Error::ConnectionLost(_) => {
                r.membership
                    .link
                    .lost(r.membership.current.generation)
                    .await
            }
            // A cluster node that lost the group's leadership: the member
            // joins again on the leader.
            Error::Rejected {
                code: ErrorCode::NotLeader,
                ..
            } => true,
            _ => false,
        };
        if moved {
            // Deliveries of this membership the application has not taken
            // are skipped from now on, before any settlement fails below.
            r.generation.fetch_max(
                r.membership.current.generation.saturating_add(1),
                Ordering::SeqCst,
            );
        }
        fail_waiting(&r.waiting, &error);
        if !moved {
            for delivery in pending.drain(..).chain([Err(error)]) {
                if tx.send(delivery).await.is_err() {
                    return;
                }
            }
            return;
        }
        // The connection is gone (or the node no longer leads): join
        // again on a new one. Leases of the old membership end at their
        // deadlines (their tokens are no longer this member's), so the
        // group redelivers that work.
        match rejoin(&mut r.membership, error).await {
            Ok((send, new_recv)) => {
                recv = new_recv;
                let generation = r.membership.current.generation;
                r.generation.fetch_max(generation, Ordering::SeqCst);
                // Not taken yet, and no longer settleable: dropped.
                pending.retain(|d| !matches!(d, Ok(d) if d.generation < generation));
                if r.streams.send((generation, send)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                for delivery in pending.drain(..).chain([Err(e)]) {
                    if tx.send(delivery).await.is_err() {
                        return;
                    }
                }
                return;
            }
        }
    }
}

/// Dials again through the link (after the membership ended with `why`)
/// and joins the group on the new connection.
async fn rejoin(
    m: &mut Membership,
    why: Error,
) -> Result<(quinn::SendStream, quinn::RecvStream), Error> {
    m.current = m.link.retry_on(&m.current, why).await?;
    loop {
        match join(&m.current.conn, &m.group, m.prefetch).await {
            Ok(streams) => return Ok(streams),
            Err(e) => m.current = m.link.retry_on(&m.current, e).await?,
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads a membership's frames into `frames` (a task of its own, so the
/// reader can wait on the application and on the broker at once).
async fn read_frames(
    mut recv: quinn::RecvStream,
    frames: mpsc::Sender<Result<Option<ServerFrame>, Error>>,
) {
    loop {
        let frame = read_frame::<ServerFrame, _>(&mut recv, FRAME_BYTES_MAX)
            .await
            .map_err(|e| Error::ConnectionLost(e.to_string()));
        let more = matches!(frame, Ok(Some(_)));
        if frames.send(frame).await.is_err() || !more {
            return;
        }
    }
}

/// Reads one membership's frames until it fails (`None`: the application
/// dropped the consumer). Settlements are answered as their `Settled`
/// arrives even while the application is not taking deliveries (up to
/// twice the prefetch wait here; beyond that the broker is made to wait).
async fn read_membership(
    r: &mut Reader,
    recv: quinn::RecvStream,
    tx: &mpsc::Sender<Result<Delivery, Error>>,
    pending: &mut VecDeque<Result<Delivery, Error>>,
) -> Option<Error> {
    let generation = r.membership.current.generation;
    let pending_max = (r.membership.prefetch.max(1) as usize).saturating_mul(2);
    let (frames_tx, mut frames) = mpsc::channel(1);
    let _reading = AbortOnDrop(tokio::spawn(read_frames(recv, frames_tx)));
    let mut progressed = false;
    loop {
        let frame = tokio::select! {
            permit = tx.reserve(), if !pending.is_empty() => {
                let Ok(permit) = permit else { return None };
                if let Some(delivery) = pending.pop_front() {
                    permit.send(delivery);
                }
                continue;
            }
            frame = frames.recv(), if pending.len() < pending_max => frame,
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Some(e),
            None => return Some(Error::ConnectionLost("membership stream ended".into())),
        };
        match frame {
            Some(ServerFrame::GroupDeliver(deliveries)) => {
                if !progressed {
                    // This membership works: the dials that led to it are
                    // not counted against the next move (a rolling restart
                    // of a cluster moves a member several times).
                    r.membership.link.progressed(generation).await;
                    progressed = true;
                }
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
                            group: r.membership.group.clone(),
                            delivery_count: d.delivery_count,
                            deadline_ms: d.deadline_ms,
                            token: d.token,
                            settle: r.settle.clone(),
                            generation,
                            conn: r.membership.current.conn.clone(),
                        });
                    pending.push_back(verdict);
                }
            }
            Some(ServerFrame::Settled(outcomes)) => {
                let Some(replies) = next_waiting(&r.waiting, generation) else {
                    return Some(Error::Protocol("Settled without a Settle".into()));
                };
                if replies.len() != outcomes.len() {
                    return Some(Error::Protocol("Settled does not match its Settle".into()));
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(match outcome {
                        Outcome::Ack(_) => Ok(()),
                        Outcome::Nack(rejection) => Err(Error::rejected(rejection)),
                    });
                }
            }
            Some(ServerFrame::Error(rejection)) => return Some(Error::rejected(rejection)),
            Some(_) => {
                return Some(Error::Protocol(
                    "unexpected frame on a consume stream".into(),
                ));
            }
            None => {
                return Some(Error::ConnectionLost(
                    "membership closed by the broker".into(),
                ));
            }
        }
    }
}

/// Sends settlements in `Settle` frames on the current membership's
/// stream; a rejoin hands it a new one. Settlements made while there is no
/// stream fail with `ConnectionLost` (their leases were the old
/// membership's).
async fn write_settlements(
    first: (u64, quinn::SendStream),
    mut streams: mpsc::Receiver<(u64, quinn::SendStream)>,
    mut requests: mpsc::Receiver<SettleRequest>,
    waiting: Waiting,
) {
    let mut stream = Some(first);
    loop {
        let first = tokio::select! {
            joined = streams.recv() => match joined {
                Some(joined) => {
                    stream = Some(joined);
                    continue;
                }
                None => return,
            },
            request = requests.recv() => match request {
                Some(request) => request,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < SETTLE_OPS_MAX {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let (settles, replies): (Vec<Settle>, Vec<SettleReply>) =
            batch.into_iter().map(|r| (r.settle, r.reply)).unzip();
        let Some((generation, send)) = stream.as_mut() else {
            for reply in replies {
                let _ = reply.send(Err(Error::ConnectionLost("membership lost".into())));
            }
            continue;
        };
        // Queued before the frame goes out, so the answer always finds it.
        waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((*generation, replies));
        if let Err(e) = write_frame(send, &ClientFrame::Settle(settles)).await {
            tracing::debug!(error = %e, "settle not sent: membership lost");
            // Never sent, so never answered: fail it here (only this task
            // pushes, so the newest entry is this frame's).
            let unsent = waiting.lock().unwrap_or_else(|p| p.into_inner()).pop_back();
            for reply in unsent.into_iter().flat_map(|(_, replies)| replies) {
                let _ = reply.send(Err(Error::ConnectionLost(e.to_string())));
            }
            stream = None;
        }
    }
}
