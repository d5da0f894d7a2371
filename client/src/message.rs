//! The messages the client handles: what an application publishes
//! ([`OutgoingMessage`]), what a subscription yields ([`Message`]), the ack
//! a publish waits for ([`PendingAck`]), and the request that carries a
//! publish to the publishing task.

use crate::error::Error;
use signet_proto::envelope::CONTENT_TYPE_OCTET;
use signet_proto::{Header, KeyId};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Topic name.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// MIME type (default `application/octet-stream`).
    pub content_type: String,
    /// Signed headers.
    pub headers: Vec<Header>,
}

impl OutgoingMessage {
    /// An `application/octet-stream` message with no headers.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> OutgoingMessage {
        OutgoingMessage {
            topic: topic.into(),
            payload: payload.into(),
            content_type: CONTENT_TYPE_OCTET.into(),
            headers: Vec::new(),
        }
    }

    /// Sets the content type.
    pub fn content_type(mut self, content_type: impl Into<String>) -> OutgoingMessage {
        self.content_type = content_type.into();
        self
    }

    /// Adds a signed header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> OutgoingMessage {
        self.headers.push(Header {
            name: name.into(),
            value: value.into(),
        });
        self
    }
}

/// A message that verified end to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Offset in its topic.
    pub offset: u64,
    /// Topic name.
    pub topic: String,
    /// Id of the key that signed it (one this client trusts).
    pub key_id: KeyId,
    /// The publisher's sequence number.
    pub seq: u64,
    /// Publisher clock, ms since the Unix epoch (signed).
    pub timestamp_ms: u64,
    /// Broker clock at acceptance, ms since the Unix epoch (not signed).
    pub received_ms: u64,
    /// MIME type of the payload.
    pub content_type: String,
    /// Signed headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// Where the publishing task answers one publish: its offset once durable,
/// or why not.
pub(crate) type Reply = oneshot::Sender<Result<u64, Error>>;

/// One publish on its way to the publishing task.
pub(crate) struct Request {
    /// The message to sign and send.
    pub message: OutgoingMessage,
    /// Where its answer goes.
    pub reply: Reply,
}

/// An acknowledgement to come: resolves to the offset once the message is
/// durable, or to the broker's typed rejection.
pub struct PendingAck {
    /// The other end of the publish's [`Reply`].
    ack: oneshot::Receiver<Result<u64, Error>>,
}

impl PendingAck {
    /// The ack for the publish whose [`Reply`] is the other end of `ack`.
    pub(crate) fn new(ack: oneshot::Receiver<Result<u64, Error>>) -> PendingAck {
        PendingAck { ack }
    }
}

impl Future for PendingAck {
    type Output = Result<u64, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.ack)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(Error::ConnectionLost("publisher stopped".into()))))
    }
}
