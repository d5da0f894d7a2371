//! Pipelined, batch-signed publishing on one long-lived stream.
//!
//! Publishes queue up (bounded); one task takes what is waiting (up to 256
//! envelopes or [`BATCH_BYTES_MAX`]), and, when batches are already in
//! flight, lingers briefly for more. It then assigns seqs, signs the batch
//! once (Merkle root) and sends it. A second task reads the broker's
//! `Results` in order and answers each publish with its offset or its typed
//! rejection. At most `max_inflight_batches` batches wait for acks.

use crate::client::OutgoingMessage;
use crate::error::Error;
use crate::payload::Payloads;
use crate::seq::SeqAllocator;
use signet_proto::envelope::ENVELOPE_VERSION;
use signet_proto::frame::{ClientFrame, Outcome, Publish, ServerFrame};
use signet_proto::limits::BATCH_ENVELOPES_MAX;
use signet_proto::stream::{read_frame, write_frame};
use signet_proto::{Envelope, ErrorCode, SigningKey, batch, topic};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Most payload bytes in one batch.
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;

/// Most publishes queued before `publish` waits.
pub const QUEUE_MAX: usize = 16 * 1024;

/// Largest payload this client sends, in bytes; the broker may allow less
/// (and answers `TooLarge`).
pub const PAYLOAD_BYTES_MAX: usize = 3 * 1024 * 1024;

pub(crate) type Reply = oneshot::Sender<Result<u64, Error>>;

pub(crate) struct Request {
    pub message: OutgoingMessage,
    pub reply: Reply,
}

struct InFlight {
    request_id: u64,
    replies: Vec<Reply>,
    _permit: OwnedSemaphorePermit,
}

/// Settings of one publisher.
pub(crate) struct PublisherSettings {
    pub linger: Duration,
    pub max_inflight_batches: usize,
    pub frame_bytes_max: u32,
    /// Recipients to encrypt to, per topic.
    pub payloads: Arc<Payloads>,
}

/// Starts the publishing tasks; returns the queue to send requests into.
pub(crate) fn start(
    conn: quinn::Connection,
    key: Arc<SigningKey>,
    seq: SeqAllocator,
    settings: PublisherSettings,
) -> mpsc::Sender<Request> {
    let (queue, requests) = mpsc::channel(QUEUE_MAX);
    tokio::spawn(run(conn, key, seq, settings, requests));
    queue
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn run(
    conn: quinn::Connection,
    key: Arc<SigningKey>,
    mut seq: SeqAllocator,
    settings: PublisherSettings,
    mut requests: mpsc::Receiver<Request>,
) {
    // The publish stream opens with the first publish, so a client that
    // only subscribes holds no stream (streams per connection are capped).
    let Some(mut first) = requests.recv().await else {
        return;
    };
    let (mut send, recv) = match conn.open_bi().await {
        Ok(streams) => streams,
        Err(e) => {
            let error = Error::ConnectionLost(e.to_string());
            let _ = first.reply.send(Err(error.clone()));
            while let Some(r) = requests.recv().await {
                let _ = r.reply.send(Err(error.clone()));
            }
            return;
        }
    };
    let inflight = Arc::new(Semaphore::new(settings.max_inflight_batches));
    let (acks, pending) = mpsc::unbounded_channel();
    tokio::spawn(read_results(recv, pending, settings.frame_bytes_max));
    let mut request_id = 0u64;
    loop {
        let mut waiting = vec![first];
        gather(&mut requests, &mut waiting, &inflight, &settings).await;
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        if let Some((publish_frame, replies)) =
            build(&key, &mut seq, &settings.payloads, waiting, &mut request_id)
        {
            let in_flight = InFlight {
                request_id,
                replies,
                _permit: permit,
            };
            if acks.send(in_flight).is_err() {
                break;
            }
            let frame = ClientFrame::Publish(publish_frame);
            if write_frame(&mut send, &frame).await.is_err() {
                break;
            }
        }
        match requests.recv().await {
            Some(next) => first = next,
            None => break,
        }
    }
    let _ = send.finish();
}

/// Takes what is waiting, and lingers for more while batches are in flight.
async fn gather(
    requests: &mut mpsc::Receiver<Request>,
    waiting: &mut Vec<Request>,
    inflight: &Semaphore,
    settings: &PublisherSettings,
) {
    let mut bytes: usize = waiting.iter().map(|r| r.message.payload.len()).sum();
    while waiting.len() < BATCH_ENVELOPES_MAX && bytes < BATCH_BYTES_MAX {
        match requests.try_recv() {
            Ok(r) => {
                bytes += r.message.payload.len();
                waiting.push(r);
            }
            Err(_) => break,
        }
    }
    let busy = inflight.available_permits() < settings.max_inflight_batches;
    if !busy || settings.linger.is_zero() {
        return;
    }
    let deadline = tokio::time::Instant::now() + settings.linger;
    while waiting.len() < BATCH_ENVELOPES_MAX && bytes < BATCH_BYTES_MAX {
        match tokio::time::timeout_at(deadline, requests.recv()).await {
            Ok(Some(r)) => {
                bytes += r.message.payload.len();
                waiting.push(r);
            }
            _ => break,
        }
    }
}

/// Turns waiting publishes into one signed `Publish` frame. Invalid
/// messages are answered at once and left out.
fn build(
    key: &SigningKey,
    seq: &mut SeqAllocator,
    payloads: &Payloads,
    waiting: Vec<Request>,
    request_id: &mut u64,
) -> Option<(Publish, Vec<Reply>)> {
    let timestamp_ms = now_ms();
    let mut batch_keys = crate::payload::BatchKeys::new();
    let mut envelopes = Vec::with_capacity(waiting.len());
    let mut replies = Vec::with_capacity(waiting.len());
    for Request { message, reply } in waiting {
        if let Err(e) = topic::validate_name(&message.topic) {
            let _ = reply.send(Err(Error::Invalid {
                code: ErrorCode::BadTopic,
                detail: e.to_string(),
            }));
            continue;
        }
        if message.payload.len() > PAYLOAD_BYTES_MAX {
            let _ = reply.send(Err(Error::Invalid {
                code: ErrorCode::TooLarge,
                detail: format!("payload larger than {PAYLOAD_BYTES_MAX} bytes"),
            }));
            continue;
        }
        let seq = match seq.next() {
            Ok(seq) => seq,
            Err(e) => {
                let _ = reply.send(Err(e));
                continue;
            }
        };
        let mut envelope = Envelope {
            version: ENVELOPE_VERSION,
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
        replies.push(reply);
    }
    let signed = batch::sign(key, &envelopes)?;
    *request_id += 1;
    Some((
        Publish {
            request_id: *request_id,
            signature: signed.signature,
            envelopes,
        },
        replies,
    ))
}

/// Reads `Results` in order and answers each publish.
async fn read_results(
    mut recv: quinn::RecvStream,
    mut pending: mpsc::UnboundedReceiver<InFlight>,
    frame_bytes_max: u32,
) {
    let failure = loop {
        match read_frame::<ServerFrame, _>(&mut recv, frame_bytes_max).await {
            Ok(Some(ServerFrame::Results(results))) => {
                let Some(batch) = pending.recv().await else {
                    return;
                };
                if batch.request_id != results.request_id
                    || batch.replies.len() != results.outcomes.len()
                {
                    break Error::Protocol("results out of order".into());
                }
                for (reply, outcome) in batch.replies.into_iter().zip(results.outcomes) {
                    let _ = reply.send(match outcome {
                        Outcome::Ack(offset) => Ok(offset),
                        Outcome::Nack(r) => Err(Error::rejected(r)),
                    });
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
        for reply in batch.replies {
            let _ = reply.send(Err(failure.clone()));
        }
    }
}
