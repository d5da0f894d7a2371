//! A subscription: a stream of verified messages in offset order (per
//! topic, for a pattern).
//!
//! A background task reads `Deliver` (`DeliverTopic` for a pattern) frames
//! and verifies every record before handing it on through a bounded
//! channel; when the application stops reading, the channel fills, the
//! task stops reading the QUIC stream, and flow control makes the broker
//! wait. Dropping the subscription ends it.
//!
//! The task remembers where it stands: for a topic, the next offset; for a
//! pattern, the next offset of every topic it has heard of. When the
//! connection is lost it gets a new one from the [`Link`] and subscribes
//! again from there (a topic at `Offset(next)`, a pattern with `Earliest`
//! and the per-topic positions as `resume`), so nothing is skipped or
//! repeated; its verifier carries on too, so a repeat would still be caught
//! as `Replay`.

use crate::error::Error;
use crate::limits::{FRAME_BYTES_MAX, PATTERN_TOPICS_MAX, SUBSCRIPTION_BUFFER_MESSAGES_MAX};
use crate::link::{Current, Link};
use crate::message::Message;
use crate::order::SeqOrder;
use crate::payload::Payloads;
use crate::verify::Verifier;
use futures_core::Stream;
use signet_proto::ErrorCode;
use signet_proto::frame::{
    ClientFrame, Delivery, Gap, ServerFrame, StartAt, Subscribe, SubscribePattern, TopicOffset,
};
use signet_proto::stream::{read_frame, write_frame};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// A live subscription. Yields `Ok(message)` for every message that
/// verified (a key trusted for its topic signed it, and its seq is above
/// every seq already yielded from that key in that topic),
/// `Err(Error::Verify { .. })` for one that did not (its content is never
/// yielded: a repeated or backwards seq is `Replay`, a key outside its
/// trusted topics `Untrusted`), and ends after a broker error, or a lost
/// connection the client could not restore (`Error::GaveUp`).
pub struct Subscription {
    /// Verdicts from the reading task, in offset order.
    messages: mpsc::Receiver<Result<Message, Error>>,
    /// The reading task; aborted when the subscription is dropped.
    task: tokio::task::JoinHandle<()>,
    /// The topic's next offset when the subscription opened (0 for a pattern).
    next_offset: u64,
}

impl Subscription {
    /// The topic's next offset when the subscription opened (0 for a
    /// pattern subscription).
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

/// What a subscription follows and where it stands.
enum Target {
    /// One topic; `next` is the next offset to deliver once known.
    Topic { topic: String, start: StartAt },
    /// Every readable topic matching `pattern`; the next offset per topic
    /// heard of.
    Pattern {
        pattern: String,
        start: StartAt,
        next: HashMap<String, u64>,
        /// Seq order per topic.
        order: HashMap<String, SeqOrder>,
    },
}

impl Target {
    fn request(&self) -> ClientFrame {
        match self {
            Target::Topic { topic, start } => ClientFrame::Subscribe(Subscribe {
                topic: topic.clone(),
                start: *start,
            }),
            Target::Pattern {
                pattern,
                start,
                next,
                ..
            } => ClientFrame::SubscribePattern(SubscribePattern {
                pattern: pattern.clone(),
                start: *start,
                resume: next
                    .iter()
                    .map(|(topic, offset)| TopicOffset {
                        topic: topic.clone(),
                        offset: *offset,
                    })
                    .collect(),
            }),
        }
    }

    /// After a lost connection: start where delivery stopped.
    fn resume(&mut self) {
        match self {
            Target::Topic { .. } => {}
            Target::Pattern { start, .. } => *start = StartAt::Earliest,
        }
    }

    fn subscribed(&self) -> &str {
        match self {
            Target::Topic { topic, .. } => topic,
            Target::Pattern { pattern, .. } => pattern,
        }
    }
}

/// Opens a subscription stream on `conn` for `target`; returns the
/// streams and the `Subscribed` next offset (0 for a pattern).
async fn open(
    conn: &quinn::Connection,
    target: &mut Target,
) -> Result<(quinn::SendStream, quinn::RecvStream, u64), Error> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::ConnectionLost(e.to_string()))?;
    write_frame(&mut send, &target.request())
        .await
        .map_err(|e| Error::ConnectionLost(e.to_string()))?;
    let answer = read_frame::<ServerFrame, _>(&mut recv, FRAME_BYTES_MAX).await;
    match (answer, target) {
        (Ok(Some(ServerFrame::Subscribed { next_offset })), Target::Topic { start, .. }) => {
            // From now on the position is explicit.
            if let StartAt::Latest = start {
                *start = StartAt::Offset(next_offset);
            }
            Ok((send, recv, next_offset))
        }
        (
            Ok(Some(ServerFrame::SubscribedPattern { topics })),
            Target::Pattern { pattern, next, .. },
        ) => {
            for t in topics {
                if !signet_proto::topic::matches(pattern, &t.topic) {
                    return Err(Error::Protocol(
                        "subscribed to a topic outside the pattern".into(),
                    ));
                }
                next.entry(t.topic).or_insert(t.offset);
            }
            if next.len() > PATTERN_TOPICS_MAX {
                return Err(Error::Protocol("too many topics for one pattern".into()));
            }
            Ok((send, recv, 0))
        }
        (Ok(Some(ServerFrame::Error(r))), _) => Err(Error::rejected(r)),
        (Ok(Some(_)), _) => Err(Error::Protocol("unexpected answer to subscribe".into())),
        (Ok(None), _) => Err(Error::ConnectionLost("subscription refused".into())),
        (Err(e), _) => Err(Error::ConnectionLost(e.to_string())),
    }
}

/// Subscribes on the link's connection and starts the reading task.
pub(crate) async fn subscribe(
    link: Link,
    subscribed: &str,
    pattern: bool,
    start: StartAt,
    verifier: Verifier,
    payloads: Arc<Payloads>,
) -> Result<Subscription, Error> {
    let mut target = if pattern {
        Target::Pattern {
            pattern: subscribed.to_owned(),
            start,
            next: HashMap::new(),
            order: HashMap::new(),
        }
    } else {
        Target::Topic {
            topic: subscribed.to_owned(),
            start,
        }
    };
    let mut current = link.current().await;
    let (send, recv, next_offset) = loop {
        match open(&current.conn, &mut target).await {
            Ok(opened) => break opened,
            Err(e) => current = link.retry_on(&current, e).await?,
        }
    };
    let (tx, messages) = mpsc::channel(SUBSCRIPTION_BUFFER_MESSAGES_MAX);
    let reader = Reader {
        link,
        current,
        target,
        verifier,
        payloads,
        last_offset: None,
    };
    let task = tokio::spawn(reader.run(send, recv, tx));
    Ok(Subscription {
        messages,
        task,
        next_offset,
    })
}

/// The reading task's state.
struct Reader {
    link: Link,
    /// The connection the stream runs on.
    current: Current,
    target: Target,
    /// The publisher keys this client trusts.
    verifier: Verifier,
    /// Decryption keys and schemas from the client file.
    payloads: Arc<Payloads>,
    /// The last offset yielded (a topic subscription).
    last_offset: Option<u64>,
}

impl Reader {
    async fn run(
        mut self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        tx: mpsc::Sender<Result<Message, Error>>,
    ) {
        loop {
            let failure = match self.read(&mut send, &mut recv, &tx).await {
                Ok(()) => return,
                Err(failure) => failure,
            };
            let Error::ConnectionLost(_) = failure else {
                let _ = tx.send(Err(failure)).await;
                return;
            };
            if !self.link.lost(self.current.generation).await {
                let _ = tx.send(Err(failure)).await;
                return;
            }
            // The connection is gone: subscribe again where delivery stopped.
            let reopened = self.reopen().await;
            match reopened {
                Ok((s, r)) => (send, recv) = (s, r),
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }

    /// Dials again through the link and subscribes again on the new
    /// connection, where delivery stopped.
    async fn reopen(&mut self) -> Result<(quinn::SendStream, quinn::RecvStream), Error> {
        self.current = self.link.reconnect(self.current.generation).await?;
        self.target.resume();
        loop {
            match open(&self.current.conn, &mut self.target).await {
                Ok((send, recv, _)) => return Ok((send, recv)),
                Err(e) => self.current = self.link.retry_on(&self.current, e).await?,
            }
        }
    }

    /// Reads deliveries until the stream fails (`Ok` when the application
    /// dropped the subscription).
    async fn read(
        &mut self,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        tx: &mpsc::Sender<Result<Message, Error>>,
    ) -> Result<(), Error> {
        loop {
            let (topic, deliveries) =
                match read_frame::<ServerFrame, _>(recv, FRAME_BYTES_MAX).await {
                    Ok(Some(ServerFrame::Deliver(d)))
                        if matches!(self.target, Target::Topic { .. }) =>
                    {
                        (None, d)
                    }
                    Ok(Some(ServerFrame::DeliverTopic { topic, deliveries }))
                        if matches!(self.target, Target::Pattern { .. }) =>
                    {
                        (Some(topic), deliveries)
                    }
                    Ok(Some(ServerFrame::Gap(gap))) => {
                        let gap = self.gap(gap)?;
                        if tx.send(Err(gap)).await.is_err() {
                            let _ = send.finish();
                            return Ok(());
                        }
                        continue;
                    }
                    Ok(Some(ServerFrame::Error(r))) => return Err(Error::rejected(r)),
                    Ok(Some(_)) => {
                        return Err(Error::Protocol("unexpected frame on a subscription".into()));
                    }
                    Ok(None) => {
                        return Err(Error::ConnectionLost(
                            "subscription closed by the broker".into(),
                        ));
                    }
                    Err(e) => return Err(Error::ConnectionLost(e.to_string())),
                };
            for d in deliveries {
                let verdict = match &topic {
                    None => self.topic_delivery(&d),
                    Some(topic) => self.pattern_delivery(topic, &d)?,
                };
                if tx.send(verdict).await.is_err() {
                    let _ = send.finish();
                    return Ok(());
                }
            }
        }
    }

    /// Messages the broker says were removed (retention) before this
    /// subscription reached them. A gap only ever moves forward, within
    /// what was subscribed; delivery goes on after it.
    fn gap(&mut self, gap: Gap) -> Result<Error, Error> {
        let out_of_order = || Error::Protocol("a gap out of order on a subscription".into());
        if gap.from > gap.to {
            return Err(out_of_order());
        }
        match &mut self.target {
            Target::Topic { topic, start } => {
                if gap.topic != *topic || self.last_offset.is_some_and(|last| gap.from <= last) {
                    return Err(out_of_order());
                }
                self.last_offset = Some(gap.to);
                *start = StartAt::Offset(gap.to.saturating_add(1));
            }
            Target::Pattern { pattern, next, .. } => {
                if signet_proto::topic::validate_name(&gap.topic).is_err()
                    || !signet_proto::topic::matches(pattern, &gap.topic)
                {
                    return Err(Error::Protocol(
                        "a gap on a topic outside the pattern".into(),
                    ));
                }
                if !next.contains_key(&gap.topic) && next.len() >= PATTERN_TOPICS_MAX {
                    return Err(Error::Protocol("too many topics for one pattern".into()));
                }
                let expected = next.entry(gap.topic.clone()).or_insert(0);
                if gap.from < *expected {
                    return Err(out_of_order());
                }
                *expected = gap.to.saturating_add(1);
            }
        }
        Ok(Error::Gap {
            topic: gap.topic,
            from: gap.from,
            to: gap.to,
            reason: gap.reason,
        })
    }

    fn topic_delivery(&mut self, d: &Delivery) -> Result<Message, Error> {
        if self.last_offset.is_some_and(|last| d.offset <= last) {
            return Err(Error::Verify {
                offset: d.offset,
                code: ErrorCode::Replay,
                detail: "offset delivered out of order".into(),
            });
        }
        self.last_offset = Some(d.offset);
        if let Target::Topic { start, .. } = &mut self.target {
            *start = StartAt::Offset(d.offset.saturating_add(1));
        }
        let subscribed = self.target.subscribed().to_owned();
        self.verifier
            .verify(&subscribed, &d.record)
            .map_err(|r| Error::Verify {
                offset: d.offset,
                code: r.code,
                detail: r.detail.into(),
            })
            .and_then(|record| self.payloads.open(d.offset, record))
    }

    /// One delivery of `topic` on a pattern subscription; `Err` (the
    /// outer one) ends the subscription: the broker sent a topic outside
    /// the pattern or more topics than any broker follows.
    fn pattern_delivery(
        &mut self,
        topic: &str,
        d: &Delivery,
    ) -> Result<Result<Message, Error>, Error> {
        let Target::Pattern {
            pattern,
            next,
            order,
            ..
        } = &mut self.target
        else {
            return Err(Error::Protocol("not a pattern subscription".into()));
        };
        if signet_proto::topic::validate_name(topic).is_err()
            || !signet_proto::topic::matches(pattern, topic)
        {
            return Err(Error::Protocol(
                "delivery from a topic outside the pattern".into(),
            ));
        }
        if !next.contains_key(topic) && next.len() >= PATTERN_TOPICS_MAX {
            return Err(Error::Protocol("too many topics for one pattern".into()));
        }
        let expected = next.entry(topic.to_owned()).or_insert(0);
        if d.offset < *expected {
            return Ok(Err(Error::Verify {
                offset: d.offset,
                code: ErrorCode::Replay,
                detail: "offset delivered out of order".into(),
            }));
        }
        *expected = d.offset.saturating_add(1);
        let order = order.entry(topic.to_owned()).or_default();
        // The record must be on this very topic (not only on the pattern).
        let verdict = self
            .verifier
            .verify_in(topic, &d.record, order)
            .map_err(|r| Error::Verify {
                offset: d.offset,
                code: r.code,
                detail: r.detail.into(),
            })
            .and_then(|record| self.payloads.open(d.offset, record));
        Ok(verdict)
    }
}
