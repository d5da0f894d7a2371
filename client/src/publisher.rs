//! Pipelined, batch-signed publishing on one long-lived stream.
//!
//! Publishes queue up (bounded); one task takes what is waiting (up to
//! [`BATCH_ENVELOPES_MAX`] envelopes and [`BATCH_BYTES_MAX`] payload bytes;
//! a larger payload goes alone), and, when batches are already in flight,
//! lingers briefly for more. It then assigns seqs, signs the batch once
//! (Merkle root) and sends it. A second task reads the broker's `Results` in
//! order and answers each publish with its offset or its typed rejection.
//! At most `max_inflight_batches` batches wait for acks.
//!
//! Quota: the broker admits the part of a batch the principal's quota
//! allows (a prefix) and refuses the rest, and every later envelope on the
//! same stream, with `QuotaExceeded`; nothing after a refusal is stored out
//! of order. So at the first `QuotaExceeded` the publisher finishes that
//! stream and continues on a new one. With `quota_retries` in the client
//! file, the refused messages are sent again, in their order and before
//! anything newer, after the broker's `retry_after` (at most
//! `quota_retry_max`): a publisher over its rate is slowed, not starved.
//! Only the first refused message of a stream spends one of its retries;
//! the others were refused because of it.
//!
//! A lost connection: every batch sent and not answered is kept, byte for
//! byte (same key, seqs, salts and batch signature). Once the [`Link`] has
//! a new connection, they are sent again, in order, on a new stream before
//! anything newer; the broker answers a batch it already stored with the
//! original offsets (idempotent publish) and stores one it never got. If
//! the link gives up, they are answered with its `Error::GaveUp`.

use crate::error::Error;
use crate::limits::{
    BATCH_BYTES_MAX, BATCH_ENVELOPES_MAX, FRAME_BYTES_MAX, PAYLOAD_BYTES_MAX,
    PUBLISH_QUEUE_MESSAGES_MAX, SEQ_LOCK_WAIT_MS_MAX,
};
use crate::link::Link;
use crate::message::{OutgoingMessage, Reply, Request};
use crate::payload::{BatchKeys, Payloads};
use crate::seq::SeqHandle;
use signet_proto::envelope::{ENVELOPE_VERSION, check_headers};
use signet_proto::frame::{ClientFrame, Outcome, Publish, Rejection, ServerFrame};
use signet_proto::stream::{read_frame, write_frame};
use signet_proto::{Envelope, ErrorCode, Salt, SigningKey, batch, topic};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// A message waiting to be signed and sent (new, or refused for quota and
/// to be sent again).
struct Queued {
    message: OutgoingMessage,
    reply: Reply,
    /// `QuotaExceeded` refusals it may still be sent again after.
    retries_left: u32,
}

/// A message sent in a batch.
struct Sent {
    reply: Reply,
    /// A copy to send again after a quota refusal (kept only while it has
    /// retries left).
    message: Option<OutgoingMessage>,
    retries_left: u32,
}

/// A batch sent and waiting for its `Results`.
struct InFlight {
    /// The `request_id` its `Results` must carry.
    request_id: u64,
    /// The frame as sent, to send again after a lost connection.
    frame: Arc<ClientFrame>,
    /// One per envelope sent, in order.
    sent: Vec<Sent>,
    /// Its place among the `max_inflight_batches`, freed with the batch.
    _permit: OwnedSemaphorePermit,
}

/// Settings of one publisher.
#[derive(Clone)]
pub(crate) struct PublisherSettings {
    /// How long to wait for more publishes while batches are in flight.
    pub linger: Duration,
    /// Most batches sent and not yet acknowledged.
    pub max_inflight_batches: usize,
    /// Recipients to encrypt to, per topic.
    pub payloads: Arc<Payloads>,
    /// How many times a message refused with `QuotaExceeded` (with a retry
    /// hint) is sent again.
    pub quota_retries: u32,
    /// The longest wait before sending again.
    pub quota_retry_max: Duration,
}

/// Starts the publishing tasks; returns the queue to send requests into.
pub(crate) fn start(
    link: Link,
    key: Arc<SigningKey>,
    seq: SeqHandle,
    settings: PublisherSettings,
) -> mpsc::Sender<Request> {
    let (queue, requests) = mpsc::channel(PUBLISH_QUEUE_MESSAGES_MAX);
    let publisher = Publisher {
        link,
        key,
        seq,
        inflight: Arc::new(Semaphore::new(settings.max_inflight_batches)),
        source: Source {
            again: VecDeque::new(),
            requests,
            retries: settings.quota_retries,
        },
        settings,
        stream: None,
        request_id: 0,
    };
    tokio::spawn(publisher.run());
    queue
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where messages come from: the ones to send again first, then new ones.
struct Source {
    /// Refused for quota and to be sent again, oldest first.
    again: VecDeque<Queued>,
    /// New publishes.
    requests: mpsc::Receiver<Request>,
    /// Retries a new message gets.
    retries: u32,
}

impl Source {
    fn queued(&self, r: Request) -> Queued {
        Queued {
            message: r.message,
            reply: r.reply,
            retries_left: self.retries,
        }
    }

    /// A message that is ready now, if any.
    fn try_next(&mut self) -> Option<Queued> {
        if let Some(q) = self.again.pop_front() {
            return Some(q);
        }
        let r = self.requests.try_recv().ok()?;
        Some(self.queued(r))
    }

    /// Puts messages back at the front, in their order.
    fn put_back(&mut self, messages: impl DoubleEndedIterator<Item = Queued>) {
        for q in messages.rev() {
            self.again.push_front(q);
        }
    }
}

/// How a publish stream's reader ended.
#[derive(Default)]
struct Ended {
    /// Messages refused for quota, to send again.
    again: Vec<Queued>,
    /// Batches sent and not answered when the stream failed (the
    /// connection may be gone): to send again on a new connection.
    unanswered: Vec<InFlight>,
    /// A cluster node answered `NotLeader` (with the leader's address when
    /// it named one): the batches go again, byte for byte, to the leader.
    redirect: Option<Option<std::net::SocketAddr>>,
    /// Whether the stream carried at least one ack (the connection did
    /// its work: the dials that led to it are no longer "in a row").
    acked: bool,
}

/// The publish stream in use.
struct PublishStream {
    send: quinn::SendStream,
    /// The generation of the connection it runs on.
    generation: u64,
    /// Batches sent, for the reader to answer.
    acks: mpsc::UnboundedSender<InFlight>,
    /// Answers the batches; returns what to send again, in order.
    reader: tokio::task::JoinHandle<Ended>,
    /// Set at the stream's first `QuotaExceeded`: how long to wait before
    /// sending again; also wakes when the reader ends.
    stopped: watch::Receiver<Option<Duration>>,
    /// Batches meant for this stream after its reader had already ended
    /// (never written): sent again, after the ones it left unanswered,
    /// when the stream is retired.
    untaken: Vec<InFlight>,
}

impl PublishStream {
    /// Whether the stream must be replaced: quota refused or reader gone.
    fn done(&self) -> bool {
        self.stopped.borrow().is_some() || self.stopped.has_changed().is_err()
    }

    /// Hands `batch` to the reader (to answer) and writes it. A reader
    /// that has ended keeps no batch, so the batch waits in `untaken`
    /// instead: every publish is answered, never dropped. A failed write
    /// ends the stream; its reader hands back what is in flight.
    async fn send_batch(&mut self, batch: InFlight) {
        let frame = batch.frame.clone();
        match self.acks.send(batch) {
            Ok(()) => {
                let _ = write_frame(&mut self.send, frame.as_ref()).await;
            }
            Err(mpsc::error::SendError(batch)) => self.untaken.push(batch),
        }
    }
}

/// Where the next batch's place among those in flight came from.
enum Place {
    Taken(OwnedSemaphorePermit),
    /// The stream in use stopped first (quota, or its reader ended).
    Stopped,
    /// The places are gone: the publisher is shutting down.
    Closed,
}

/// Answers every publish in `replies` with `error`.
fn answer_all(replies: impl IntoIterator<Item = Reply>, error: &Error) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

/// What the publisher woke up for while idle.
enum Wake {
    Request(Option<Request>),
    Stopped,
    /// Every batch sent has been answered.
    Idle,
}

struct Publisher {
    link: Link,
    key: Arc<SigningKey>,
    seq: SeqHandle,
    settings: PublisherSettings,
    inflight: Arc<Semaphore>,
    source: Source,
    stream: Option<PublishStream>,
    request_id: u64,
}

impl Publisher {
    async fn run(mut self) {
        // The publish stream opens with the first publish, so a client that
        // only subscribes holds no stream (streams per connection are capped).
        while let Some(first) = self.next_message().await {
            let mut waiting = vec![first];
            gather(
                &mut self.source,
                &mut waiting,
                &self.inflight,
                &self.settings,
            )
            .await;
            if self.stream.as_ref().is_some_and(PublishStream::done) {
                // Refused for quota meanwhile: what was refused goes first.
                self.retire(waiting).await;
                continue;
            }
            let permit = match self.place().await {
                Place::Taken(permit) => permit,
                Place::Stopped => {
                    self.retire(waiting).await;
                    continue;
                }
                Place::Closed => break,
            };
            // Seqs are taken only while this publisher holds the key's lock
            // (publishers sharing a key take turns).
            let wait = Duration::from_millis(SEQ_LOCK_WAIT_MS_MAX);
            if let Err(error) = self.seq.acquire(wait).await {
                answer_all(waiting.into_iter().map(|q| q.reply), &error);
                continue;
            }
            // The stream may have ended while this publisher waited for the
            // lock: its unanswered batches go again before this one.
            if self.stream.as_ref().is_some_and(PublishStream::done) {
                drop(permit);
                self.retire(waiting).await;
                continue;
            }
            let Some((publish, sent)) = build(
                &self.key,
                &mut self.seq,
                &self.settings.payloads,
                waiting,
                &mut self.request_id,
            ) else {
                continue;
            };
            let frame = Arc::new(ClientFrame::Publish(publish));
            let batch = InFlight {
                request_id: self.request_id,
                frame,
                sent,
                _permit: permit,
            };
            if self.stream.is_none()
                && let Err((error, _)) = self.open_stream(Vec::new()).await
            {
                answer_all(batch.sent.into_iter().map(|s| s.reply), &error);
                continue;
            }
            if let Some(stream) = self.stream.as_mut() {
                stream.send_batch(batch).await;
            }
        }
        if let Some(mut stream) = self.stream.take() {
            let _ = stream.send.finish();
        }
    }

    /// A place among the `max_inflight_batches` for the next batch; while
    /// every place is taken, the stream in use stopping ends the wait (its
    /// reader keeps the places of the batches it hands back, so only
    /// retiring it frees them).
    async fn place(&mut self) -> Place {
        let inflight = self.inflight.clone();
        let stopped = async {
            match self.stream.as_mut() {
                Some(s) => {
                    let _ = s.stopped.changed().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            permit = inflight.acquire_owned() => match permit {
                Ok(permit) => Place::Taken(permit),
                Err(_) => Place::Closed,
            },
            () = stopped => Place::Stopped,
        }
    }

    /// Opens a publish stream on the link's connection (dialing again if
    /// it is gone) and sends `resend` on it first, in order. On failure,
    /// `resend` comes back with the error, unsent.
    async fn open_stream(&mut self, resend: Vec<InFlight>) -> Result<(), (Error, Vec<InFlight>)> {
        let mut current = self.link.current().await;
        // A connection lost between dialing and opening is dialed again;
        // the link bounds the attempts.
        let mut tries = 0;
        let (send, recv) = loop {
            match current.conn.open_bi().await {
                Ok(streams) => break streams,
                Err(e) => {
                    tries += 1;
                    if tries > 3 || !self.link.lost(current.generation).await {
                        return Err((Error::ConnectionLost(e.to_string()), resend));
                    }
                    current = match self.link.reconnect(current.generation).await {
                        Ok(current) => current,
                        Err(error) => return Err((error, resend)),
                    };
                }
            }
        };
        let (acks, pending) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(None);
        let reader = tokio::spawn(read_results(recv, pending, stop));
        let mut stream = PublishStream {
            send,
            generation: current.generation,
            acks,
            reader,
            stopped,
            untaken: Vec::new(),
        };
        for batch in resend {
            stream.send_batch(batch).await;
        }
        self.stream = Some(stream);
        Ok(())
    }

    /// The first message of the next batch: one to send again, else a new
    /// one; a stream that stops meanwhile is retired first.
    async fn next_message(&mut self) -> Option<Queued> {
        loop {
            if self.stream.as_ref().is_some_and(PublishStream::done) {
                self.retire(Vec::new()).await;
            }
            if let Some(q) = self.source.again.pop_front() {
                return Some(q);
            }
            let (stream, requests) = (&mut self.stream, &mut self.source.requests);
            // While nothing is waiting and every batch sent is answered, the
            // key's lock is let go so another publisher sharing it can go.
            let held = self.seq.held();
            let all = u32::try_from(self.settings.max_inflight_batches).unwrap_or(u32::MAX);
            let inflight = &self.inflight;
            let idle = async {
                if held {
                    let _ = inflight.acquire_many(all).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            let stopped = async {
                match stream.as_mut() {
                    Some(s) => {
                        let _ = s.stopped.changed().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let wake = tokio::select! {
                r = requests.recv() => Wake::Request(r),
                () = stopped => Wake::Stopped,
                () = idle => Wake::Idle,
            };
            match wake {
                Wake::Request(Some(r)) => return Some(self.source.queued(r)),
                // No more publishes: what is in flight may still come back
                // to be sent again.
                Wake::Request(None) => {
                    self.stream.as_ref()?;
                    self.retire(Vec::new()).await;
                    if self.source.again.is_empty() {
                        return None;
                    }
                }
                Wake::Stopped => {}
                Wake::Idle => self.seq.release(),
            }
        }
    }

    /// Finishes the stream in use once its batches are answered, then
    /// queues what it refused for quota (before `unsent`, then before what
    /// already waited to be sent again) and waits the broker's hint.
    async fn retire(&mut self, unsent: Vec<Queued>) {
        self.source.put_back(unsent.into_iter());
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        let _ = stream.send.finish();
        drop(stream.acks);
        let wait = stream.stopped.borrow().unwrap_or_default();
        let Ended {
            again,
            mut unanswered,
            redirect,
            acked,
        } = stream.reader.await.unwrap_or_default();
        if acked {
            self.link.progressed(stream.generation).await;
        }
        unanswered.append(&mut stream.untaken);
        if let Some(leader) = redirect {
            self.redirect(stream.generation, leader, unanswered).await;
        } else if !unanswered.is_empty() {
            self.resend(stream.generation, unanswered).await;
        }
        if !again.is_empty() {
            tokio::time::sleep(wait.min(self.settings.quota_retry_max)).await;
        }
        self.source.put_back(again.into_iter());
    }

    /// Follows a `NotLeader`: dials the leader (or the next address of
    /// the client file) and sends the batches again there, in order, byte
    /// for byte (the leader answers one already stored with its offsets);
    /// answers them with the error if the link gives up.
    async fn redirect(
        &mut self,
        generation: u64,
        leader: Option<std::net::SocketAddr>,
        batches: Vec<InFlight>,
    ) {
        let dialed = self.link.redirect(generation, leader).await.map(drop);
        self.send_again(dialed, batches).await;
    }

    /// Sends again, on a new connection, the batches a stream left
    /// unanswered; answers them with the error if the connection was not
    /// lost (only the stream failed) or the link gives up.
    async fn resend(&mut self, generation: u64, batches: Vec<InFlight>) {
        let dialed = if self.link.lost(generation).await {
            self.link.reconnect(generation).await.map(drop)
        } else {
            Err(Error::ConnectionLost(
                "publish stream closed by the broker".into(),
            ))
        };
        self.send_again(dialed, batches).await;
    }

    /// Sends `batches` again, in order, on a new stream of the connection
    /// the link `dialed`; answers them with the error when there is none
    /// or the stream cannot be opened.
    async fn send_again(&mut self, dialed: Result<(), Error>, batches: Vec<InFlight>) {
        let (error, batches) = match dialed {
            Ok(()) => match self.open_stream(batches).await {
                Ok(()) => return,
                Err(failed) => failed,
            },
            Err(error) => (error, batches),
        };
        tracing::debug!(%error, "publishes could not be sent again");
        for batch in batches {
            answer_all(batch.sent.into_iter().map(|s| s.reply), &error);
        }
    }
}

/// Takes what is ready (messages to send again first), and lingers for
/// more while batches are in flight. Stops before a publish that would
/// take the batch past [`BATCH_BYTES_MAX`] and puts it back for the next
/// batch, so a batch holds at most [`BATCH_BYTES_MAX`] payload bytes or a
/// single larger payload (which a broker allowing that payload can always
/// read).
async fn gather(
    source: &mut Source,
    waiting: &mut Vec<Queued>,
    inflight: &Semaphore,
    settings: &PublisherSettings,
) {
    let mut bytes: usize = waiting.iter().map(|q| q.message.payload.len()).sum();
    let mut open = waiting.len() < BATCH_ENVELOPES_MAX && bytes < BATCH_BYTES_MAX;
    // Adds `q` to the batch, or puts it back for the next; false when full.
    let mut take = |q: Queued, waiting: &mut Vec<Queued>, source: &mut Source| -> bool {
        let len = q.message.payload.len();
        if !waiting.is_empty() && bytes.saturating_add(len) > BATCH_BYTES_MAX {
            source.again.push_front(q);
            return false;
        }
        bytes = bytes.saturating_add(len);
        waiting.push(q);
        waiting.len() < BATCH_ENVELOPES_MAX && bytes < BATCH_BYTES_MAX
    };
    while open {
        match source.try_next() {
            Some(q) => open = take(q, waiting, source),
            None => break,
        }
    }
    let busy = inflight.available_permits() < settings.max_inflight_batches;
    if !open || !busy || settings.linger.is_zero() {
        return;
    }
    let deadline = tokio::time::Instant::now() + settings.linger;
    while open {
        match tokio::time::timeout_at(deadline, source.requests.recv()).await {
            Ok(Some(r)) => {
                let q = source.queued(r);
                open = take(q, waiting, source);
            }
            _ => break,
        }
    }
}

/// The client's own checks of a message before it is signed: a valid
/// topic name (`BadTopic`), a payload of at most [`PAYLOAD_BYTES_MAX`]
/// bytes (`TooLarge`) and headers within the protocol's caps (`BadFrame`).
/// Never stricter than a broker: the size limit is the largest any broker
/// may be configured with, and a broker configured lower answers
/// `TooLarge` itself; the header caps are the same for every broker.
pub(crate) fn check(message: &OutgoingMessage) -> Result<(), Error> {
    if let Err(e) = topic::validate_name(&message.topic) {
        return Err(Error::Invalid {
            code: ErrorCode::BadTopic,
            detail: e.to_string(),
        });
    }
    if message.payload.len() > PAYLOAD_BYTES_MAX {
        return Err(Error::Invalid {
            code: ErrorCode::TooLarge,
            detail: format!("payload larger than {PAYLOAD_BYTES_MAX} bytes"),
        });
    }
    check_headers(&message.headers).map_err(|detail| Error::Invalid {
        code: ErrorCode::BadFrame,
        detail: detail.into(),
    })
}

/// Turns waiting publishes into one signed `Publish` frame. Invalid
/// messages are answered at once and left out.
fn build(
    key: &SigningKey,
    seq: &mut SeqHandle,
    payloads: &Payloads,
    waiting: Vec<Queued>,
    request_id: &mut u64,
) -> Option<(Publish, Vec<Sent>)> {
    let timestamp_ms = now_ms();
    let mut batch_keys = BatchKeys::new();
    let mut envelopes = Vec::with_capacity(waiting.len());
    let mut sent = Vec::with_capacity(waiting.len());
    // A fresh salt per envelope: batch-mates' proofs carry this
    // envelope's leaf hash, which must not be guessable.
    let salts = match Salt::random_many(waiting.len()) {
        Ok(salts) => salts,
        Err(e) => {
            let error = Error::Invalid {
                code: ErrorCode::Internal,
                detail: e.to_string(),
            };
            answer_all(waiting.into_iter().map(|q| q.reply), &error);
            return None;
        }
    };
    for (
        Queued {
            message,
            reply,
            retries_left,
        },
        salt,
    ) in waiting.into_iter().zip(salts)
    {
        if let Err(e) = check(&message) {
            let _ = reply.send(Err(e));
            continue;
        }
        let seq = match seq.next() {
            Ok(seq) => seq,
            Err(e) => {
                let _ = reply.send(Err(e));
                continue;
            }
        };
        let copy = (retries_left > 0).then(|| message.clone());
        let mut envelope = Envelope {
            version: ENVELOPE_VERSION,
            salt,
            topic: message.topic,
            key_id: key.id(),
            seq,
            timestamp_ms,
            content_type: message.content_type,
            headers: message.headers,
            encryption: None,
            payload: message.payload,
        };
        if let Err(e) = payloads.seal(&mut envelope, &mut batch_keys) {
            let _ = reply.send(Err(e));
            continue;
        }
        envelopes.push(envelope);
        sent.push(Sent {
            reply,
            message: copy,
            retries_left,
        });
    }
    let signed = batch::sign(key, &envelopes)?;
    *request_id += 1;
    Some((
        Publish {
            request_id: *request_id,
            signature: signed.signature,
            envelopes,
        },
        sent,
    ))
}

/// What to do with a message the broker refused.
fn refused(
    sent: Sent,
    rejection: Rejection,
    stop: &watch::Sender<Option<Duration>>,
    again: &mut Vec<Queued>,
) {
    if rejection.code == ErrorCode::QuotaExceeded {
        // The broker refuses the rest of this stream: note the first
        // refusal (its hint is the wait before sending again).
        let first = stop.borrow().is_none();
        if first {
            let wait = Duration::from_millis(rejection.retry_after_ms.unwrap_or(0));
            stop.send_replace(Some(wait));
        }
        let retries_left = if first {
            sent.retries_left.checked_sub(1)
        } else {
            Some(sent.retries_left)
        };
        if let (Some(message), Some(retries_left), Some(_)) =
            (sent.message, retries_left, rejection.retry_after_ms)
        {
            again.push(Queued {
                message,
                reply: sent.reply,
                retries_left,
            });
            return;
        }
    }
    let _ = sent.reply.send(Err(Error::rejected(rejection)));
}

/// Reads `Results` in order and answers each publish; returns the messages
/// refused for quota that are to be sent again, in order, and, when the
/// stream failed without an answer from the broker, the batches still
/// unanswered.
async fn read_results(
    mut recv: quinn::RecvStream,
    mut pending: mpsc::UnboundedReceiver<InFlight>,
    stop: watch::Sender<Option<Duration>>,
) -> Ended {
    let mut again = Vec::new();
    let mut unanswered = Vec::new();
    let mut redirect = None;
    let mut acked = false;
    let failure = loop {
        match read_frame::<ServerFrame, _>(&mut recv, FRAME_BYTES_MAX).await {
            Ok(Some(ServerFrame::Results(results))) => {
                let Some(batch) = pending.recv().await else {
                    return Ended {
                        again,
                        unanswered: Vec::new(),
                        redirect: None,
                        acked,
                    };
                };
                if batch.request_id != results.request_id
                    || batch.sent.len() != results.outcomes.len()
                {
                    break Error::Protocol("results out of order".into());
                }
                if let Some(leader) = not_leader(&results.outcomes) {
                    // This node does not lead: nothing of the batch is
                    // stored here; it and every later one go to the leader.
                    redirect = Some(leader);
                    unanswered.push(batch);
                    stop.send_replace(Some(Duration::ZERO));
                    break Error::ConnectionLost("not the leader".into());
                }
                for (sent, outcome) in batch.sent.into_iter().zip(results.outcomes) {
                    match outcome {
                        Outcome::Ack(offset) => {
                            acked = true;
                            let _ = sent.reply.send(Ok(offset));
                        }
                        Outcome::Nack(r) => refused(sent, r, &stop, &mut again),
                    }
                }
            }
            Ok(Some(ServerFrame::Error(r))) => break Error::rejected(r),
            Ok(Some(_)) => break Error::Protocol("unexpected frame on a publish stream".into()),
            Ok(None) => break Error::ConnectionLost("publish stream closed by the broker".into()),
            Err(e) => break Error::ConnectionLost(e.to_string()),
        }
    };
    pending.close();
    while let Some(batch) = pending.recv().await {
        if let Error::ConnectionLost(_) = failure {
            unanswered.push(batch);
            continue;
        }
        answer_all(batch.sent.into_iter().map(|s| s.reply), &failure);
    }
    Ended {
        again,
        unanswered,
        redirect,
        acked,
    }
}

/// `Some` when a batch was refused with `NotLeader`: the leader's address
/// when the node named one (`leader <addr>`).
fn not_leader(outcomes: &[Outcome]) -> Option<Option<std::net::SocketAddr>> {
    outcomes.iter().find_map(|o| match o {
        Outcome::Nack(r) if r.code == ErrorCode::NotLeader => {
            Some(crate::link::leader_named(&r.detail))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    const MIB: usize = 1024 * 1024;

    fn message(payload_bytes: usize) -> OutgoingMessage {
        OutgoingMessage::new("orders.created", vec![0u8; payload_bytes])
    }

    fn request(payload_bytes: usize) -> Request {
        let (reply, _ack) = oneshot::channel();
        Request {
            message: message(payload_bytes),
            reply,
        }
    }

    #[test]
    fn payload_below_the_ceiling_is_not_refused_by_the_client() {
        // Above the old fixed 3 MiB cap and the default 4 MiB frame: only a
        // broker configured lower may refuse it.
        const { assert!(5 * MIB < PAYLOAD_BYTES_MAX) };
        assert!(check(&message(5 * MIB)).is_ok());
        assert!(check(&message(PAYLOAD_BYTES_MAX)).is_ok());
    }

    #[test]
    fn payload_above_the_ceiling_is_refused_as_too_large() {
        assert_eq!(
            PAYLOAD_BYTES_MAX,
            signet_proto::limits::PAYLOAD_BYTES_MAX_CEILING
        );
        let error = check(&message(PAYLOAD_BYTES_MAX + 1)).unwrap_err();
        assert!(matches!(error, Error::Invalid { .. }), "{error:?}");
        assert_eq!(error.code(), Some(ErrorCode::TooLarge));
    }

    #[test]
    fn bad_topic_is_refused_before_size() {
        let mut m = message(PAYLOAD_BYTES_MAX + 1);
        m.topic = "bad..topic".into();
        assert_eq!(check(&m).unwrap_err().code(), Some(ErrorCode::BadTopic));
    }

    #[test]
    fn every_envelope_gets_its_own_random_salt() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_seed(&[3; 32]).unwrap();
        let mut seq = crate::seq::SharedSeq::new(&dir.path().join("k.ed25519")).handle();
        assert!(seq.try_acquire().unwrap());
        let (publish, _) = build(
            &key,
            &mut seq,
            &Payloads::default(),
            vec![queued(8), queued(8), queued(8)],
            &mut 0,
        )
        .unwrap();
        let salts: Vec<_> = publish.envelopes.iter().map(|e| e.salt).collect();
        assert_eq!(salts.len(), 3);
        assert!(salts[0] != salts[1] && salts[1] != salts[2] && salts[0] != salts[2]);
        assert!(salts.iter().all(|s| s.0 != [0; 16]));
    }

    #[test]
    fn headers_past_the_protocol_caps_are_refused_before_sending() {
        let mut m = message(8);
        m.headers = vec![signet_proto::Header {
            name: "h".into(),
            value: vec![0; signet_proto::limits::HEADER_VALUE_BYTES_MAX + 1],
        }];
        assert_eq!(check(&m).unwrap_err().code(), Some(ErrorCode::BadFrame));
        m.headers = vec![
            signet_proto::Header {
                name: "h".into(),
                value: vec![],
            };
            signet_proto::limits::HEADERS_MAX + 1
        ];
        assert_eq!(check(&m).unwrap_err().code(), Some(ErrorCode::BadFrame));
        m.headers.truncate(signet_proto::limits::HEADERS_MAX);
        assert!(check(&m).is_ok());
    }

    fn settings() -> PublisherSettings {
        PublisherSettings {
            linger: Duration::ZERO,
            max_inflight_batches: 1,
            payloads: Arc::new(Payloads::default()),
            quota_retries: 0,
            quota_retry_max: Duration::from_secs(5),
        }
    }

    fn queued(payload_bytes: usize) -> Queued {
        let (reply, _ack) = oneshot::channel();
        Queued {
            message: message(payload_bytes),
            reply,
            retries_left: 0,
        }
    }

    fn source(requests: mpsc::Receiver<Request>) -> Source {
        Source {
            again: VecDeque::new(),
            requests,
            retries: 0,
        }
    }

    #[tokio::test]
    async fn a_payload_that_would_overfill_a_batch_opens_the_next() {
        let settings = settings();
        let inflight = Semaphore::new(1);
        let (queue, requests) = mpsc::channel(8);
        for bytes in [100, 100, 5 * MIB, 100] {
            queue.send(request(bytes)).await.unwrap();
        }
        let mut source = source(requests);
        let mut waiting = vec![queued(100)];
        gather(&mut source, &mut waiting, &inflight, &settings).await;
        assert_eq!(waiting.len(), 3);
        assert_eq!(
            source.again.len(),
            1,
            "the large payload waits for the next batch"
        );

        // The large payload goes alone; what follows it waits.
        let large = source.try_next().unwrap();
        assert_eq!(large.message.payload.len(), 5 * MIB);
        let mut waiting = vec![large];
        gather(&mut source, &mut waiting, &inflight, &settings).await;
        assert_eq!(waiting.len(), 1);
        assert!(source.again.is_empty());
        assert_eq!(source.try_next().unwrap().message.payload.len(), 100);
    }

    #[tokio::test]
    async fn small_payloads_fill_a_batch_up_to_the_envelope_limit() {
        let settings = settings();
        let inflight = Semaphore::new(1);
        let (queue, requests) = mpsc::channel(2 * BATCH_ENVELOPES_MAX);
        for _ in 0..BATCH_ENVELOPES_MAX + 10 {
            queue.send(request(16)).await.unwrap();
        }
        let mut source = source(requests);
        let mut waiting = vec![source.try_next().unwrap()];
        gather(&mut source, &mut waiting, &inflight, &settings).await;
        assert_eq!(waiting.len(), BATCH_ENVELOPES_MAX);
        assert!(source.again.is_empty());
    }

    #[tokio::test]
    async fn messages_to_send_again_come_before_new_ones() {
        let settings = settings();
        let inflight = Semaphore::new(1);
        let (queue, requests) = mpsc::channel(8);
        queue.send(request(3)).await.unwrap();
        let mut source = source(requests);
        source.put_back([queued(1), queued(2)].into_iter());
        let mut waiting = vec![source.try_next().unwrap()];
        gather(&mut source, &mut waiting, &inflight, &settings).await;
        let sizes: Vec<usize> = waiting.iter().map(|q| q.message.payload.len()).collect();
        assert_eq!(sizes, [1, 2, 3]);
    }

    fn sent(retries_left: u32) -> (Sent, oneshot::Receiver<Result<u64, Error>>) {
        let (reply, ack) = oneshot::channel();
        let sent = Sent {
            reply,
            message: (retries_left > 0).then(|| message(1)),
            retries_left,
        };
        (sent, ack)
    }

    fn quota(retry_after_ms: Option<u64>) -> Rejection {
        Rejection {
            retry_after_ms,
            ..Rejection::new(ErrorCode::QuotaExceeded, "over quota")
        }
    }

    #[test]
    fn only_the_first_quota_refusal_of_a_stream_spends_a_retry() {
        let (stop, stopped) = watch::channel(None);
        let mut again = Vec::new();
        let (first, _a) = sent(3);
        let (second, _b) = sent(3);
        refused(first, quota(Some(200)), &stop, &mut again);
        refused(second, quota(Some(900)), &stop, &mut again);
        assert_eq!(*stopped.borrow(), Some(Duration::from_millis(200)));
        let left: Vec<u32> = again.iter().map(|q| q.retries_left).collect();
        assert_eq!(left, [2, 3]);
    }

    #[test]
    fn a_refusal_without_retries_or_hint_is_answered_and_still_stops_the_stream() {
        let (stop, stopped) = watch::channel(None);
        let mut again = Vec::new();
        let (none_left, mut a) = sent(0);
        refused(none_left, quota(Some(10)), &stop, &mut again);
        assert!(stopped.borrow().is_some(), "the stream is replaced");
        let (stored, mut b) = sent(5);
        refused(stored, quota(None), &stop, &mut again);
        assert!(again.is_empty());
        for ack in [&mut a, &mut b] {
            let error = ack.try_recv().unwrap().unwrap_err();
            assert_eq!(error.code(), Some(ErrorCode::QuotaExceeded));
        }
    }
}
