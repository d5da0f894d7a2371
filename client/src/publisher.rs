//! Pipelined, batch-signed publishing on one long-lived stream.
//!
//! Publishes queue up (bounded); one task takes what is waiting (up to
//! [`BATCH_ENVELOPES_MAX`] envelopes and [`BATCH_BYTES_MAX`] payload bytes;
//! a larger payload goes alone), and, when batches are already in flight,
//! lingers briefly for more. It then assigns seqs, signs the batch once
//! (Merkle root) and sends it. A second task reads the broker's `Results` in
//! order and answers each publish with its offset or its typed rejection.
//! At most `max_inflight_batches` batches wait for acks.

use crate::error::Error;
use crate::limits::{
    BATCH_BYTES_MAX, BATCH_ENVELOPES_MAX, FRAME_BYTES_MAX, PAYLOAD_BYTES_MAX,
    PUBLISH_QUEUE_MESSAGES_MAX,
};
use crate::message::{OutgoingMessage, Reply, Request};
use crate::payload::{BatchKeys, Payloads};
use crate::seq::SeqAllocator;
use signet_proto::envelope::{ENVELOPE_VERSION, check_headers};
use signet_proto::frame::{ClientFrame, Outcome, Publish, ServerFrame};
use signet_proto::stream::{read_frame, write_frame};
use signet_proto::{Envelope, ErrorCode, Salt, SigningKey, batch, topic};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// A batch sent and waiting for its `Results`.
struct InFlight {
    /// The `request_id` its `Results` must carry.
    request_id: u64,
    /// One reply per envelope sent, in order.
    replies: Vec<Reply>,
    /// Its place among the `max_inflight_batches`, freed with the batch.
    _permit: OwnedSemaphorePermit,
}

/// Settings of one publisher.
pub(crate) struct PublisherSettings {
    /// How long to wait for more publishes while batches are in flight.
    pub linger: Duration,
    /// Most batches sent and not yet acknowledged.
    pub max_inflight_batches: usize,
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
    let (queue, requests) = mpsc::channel(PUBLISH_QUEUE_MESSAGES_MAX);
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
    tokio::spawn(read_results(recv, pending));
    let mut request_id = 0u64;
    // A publish that did not fit the last batch; it opens the next one.
    let mut carry: Option<Request> = None;
    loop {
        let mut waiting = vec![first];
        gather(
            &mut requests,
            &mut waiting,
            &mut carry,
            &inflight,
            &settings,
        )
        .await;
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
        match carry.take() {
            Some(next) => first = next,
            None => match requests.recv().await {
                Some(next) => first = next,
                None => break,
            },
        }
    }
    let _ = send.finish();
}

/// Takes what is waiting, and lingers for more while batches are in flight.
/// Stops before a publish that would take the batch past
/// [`BATCH_BYTES_MAX`] and leaves it in `carry` for the next batch, so a
/// batch holds at most [`BATCH_BYTES_MAX`] payload bytes or a single larger
/// payload (which a broker allowing that payload can always read).
async fn gather(
    requests: &mut mpsc::Receiver<Request>,
    waiting: &mut Vec<Request>,
    carry: &mut Option<Request>,
    inflight: &Semaphore,
    settings: &PublisherSettings,
) {
    let mut bytes: usize = waiting.iter().map(|r| r.message.payload.len()).sum();
    let mut open = waiting.len() < BATCH_ENVELOPES_MAX && bytes < BATCH_BYTES_MAX;
    // Adds `r` to the batch, or leaves it for the next; false when full.
    let mut take = |r: Request, waiting: &mut Vec<Request>| -> bool {
        let len = r.message.payload.len();
        if !waiting.is_empty() && bytes.saturating_add(len) > BATCH_BYTES_MAX {
            *carry = Some(r);
            return false;
        }
        bytes = bytes.saturating_add(len);
        waiting.push(r);
        waiting.len() < BATCH_ENVELOPES_MAX && bytes < BATCH_BYTES_MAX
    };
    while open {
        match requests.try_recv() {
            Ok(r) => open = take(r, waiting),
            Err(_) => break,
        }
    }
    let busy = inflight.available_permits() < settings.max_inflight_batches;
    if !open || !busy || settings.linger.is_zero() {
        return;
    }
    let deadline = tokio::time::Instant::now() + settings.linger;
    while open {
        match tokio::time::timeout_at(deadline, requests.recv()).await {
            Ok(Some(r)) => open = take(r, waiting),
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
    seq: &mut SeqAllocator,
    payloads: &Payloads,
    waiting: Vec<Request>,
    request_id: &mut u64,
) -> Option<(Publish, Vec<Reply>)> {
    let timestamp_ms = now_ms();
    let mut batch_keys = BatchKeys::new();
    let mut envelopes = Vec::with_capacity(waiting.len());
    let mut replies = Vec::with_capacity(waiting.len());
    for Request { message, reply } in waiting {
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
        // A fresh salt per envelope: batch-mates' proofs carry this
        // envelope's leaf hash, which must not be guessable.
        let salt = match Salt::random() {
            Ok(salt) => salt,
            Err(e) => {
                let _ = reply.send(Err(Error::Invalid {
                    code: ErrorCode::Internal,
                    detail: e.to_string(),
                }));
                continue;
            }
        };
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
async fn read_results(mut recv: quinn::RecvStream, mut pending: mpsc::UnboundedReceiver<InFlight>) {
    let failure = loop {
        match read_frame::<ServerFrame, _>(&mut recv, FRAME_BYTES_MAX).await {
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
        let mut seq = SeqAllocator::open(&dir.path().join("k.ed25519")).unwrap();
        let (publish, _) = build(
            &key,
            &mut seq,
            &Payloads::default(),
            vec![request(8), request(8), request(8)],
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

    #[tokio::test]
    async fn a_payload_that_would_overfill_a_batch_opens_the_next() {
        let settings = PublisherSettings {
            linger: Duration::ZERO,
            max_inflight_batches: 1,
            payloads: Arc::new(Payloads::default()),
        };
        let inflight = Semaphore::new(1);
        let (queue, mut requests) = mpsc::channel(8);
        for bytes in [100, 100, 5 * MIB, 100] {
            queue.send(request(bytes)).await.unwrap();
        }
        let mut carry = None;
        let mut waiting = vec![request(100)];
        gather(
            &mut requests,
            &mut waiting,
            &mut carry,
            &inflight,
            &settings,
        )
        .await;
        assert_eq!(waiting.len(), 3);
        let large = carry
            .take()
            .expect("the large payload waits for the next batch");
        assert_eq!(large.message.payload.len(), 5 * MIB);

        // The large payload goes alone; what follows it waits.
        let mut waiting = vec![large];
        gather(
            &mut requests,
            &mut waiting,
            &mut carry,
            &inflight,
            &settings,
        )
        .await;
        assert_eq!(waiting.len(), 1);
        assert!(carry.is_none());
        assert_eq!(requests.try_recv().unwrap().message.payload.len(), 100);
    }

    #[tokio::test]
    async fn small_payloads_fill_a_batch_up_to_the_envelope_limit() {
        let settings = PublisherSettings {
            linger: Duration::ZERO,
            max_inflight_batches: 1,
            payloads: Arc::new(Payloads::default()),
        };
        let inflight = Semaphore::new(1);
        let (queue, mut requests) = mpsc::channel(2 * BATCH_ENVELOPES_MAX);
        for _ in 0..BATCH_ENVELOPES_MAX + 10 {
            queue.send(request(16)).await.unwrap();
        }
        let mut carry = None;
        let mut waiting = vec![requests.recv().await.unwrap()];
        gather(
            &mut requests,
            &mut waiting,
            &mut carry,
            &inflight,
            &settings,
        )
        .await;
        assert_eq!(waiting.len(), BATCH_ENVELOPES_MAX);
        assert!(carry.is_none());
    }
}
