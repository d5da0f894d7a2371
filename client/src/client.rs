//! The connection to a broker, publishing and subscribing.

use crate::config::ClientConfig;
use crate::error::Error;
use crate::payload::Payloads;
use crate::publisher::{self, PublisherSettings, Request};
use crate::seq::SeqAllocator;
use crate::subscription::Subscription;
use crate::tls;
use crate::verify::Verifier;
use signet_proto::crypt::DecryptionKey;
use signet_proto::envelope::CONTENT_TYPE_OCTET;
use signet_proto::frame::{ClientFrame, ServerFrame, StartAt, Subscribe};
use signet_proto::limits::FRAME_BYTES_MAX_DEFAULT;
use signet_proto::schema::Schema;
use signet_proto::stream::{read_frame, write_frame};
use signet_proto::{ErrorCode, Header, KeyId, SigningKey};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

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

/// An acknowledgement to come: resolves to the offset once the message is
/// durable, or to the broker's typed rejection.
pub struct PendingAck(oneshot::Receiver<Result<u64, Error>>);

impl Future for PendingAck {
    type Output = Result<u64, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(Error::ConnectionLost("publisher stopped".into()))))
    }
}

/// A connection to a broker.
pub struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    publisher: Option<mpsc::Sender<Request>>,
    trust: Verifier,
    frame_bytes_max: u32,
    quota_retries: u32,
    quota_retry_max: std::time::Duration,
    payloads: Arc<Payloads>,
}

/// Reads the client file's decryption keys and schemas.
fn load_payloads(config: &ClientConfig) -> Result<Payloads, Error> {
    let schemas = config
        .schemas
        .iter()
        .map(|(pattern, path)| Ok((pattern.clone(), Schema::load(path).map_err(Error::Config)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    let keys = config
        .private_keys
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            DecryptionKey::from_bytes(&bytes)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Payloads {
        keys,
        recipients: config.recipients.clone(),
        schemas,
    })
}

async fn resolve(broker: &str) -> Result<SocketAddr, Error> {
    tokio::net::lookup_host(broker)
        .await
        .map_err(|e| Error::Connect(format!("{broker}: {e}")))?
        .next()
        .ok_or_else(|| Error::Connect(format!("{broker}: no address")))
}

impl Client {
    /// Connects with mutual TLS and, if the config names a signing key,
    /// gets ready to publish.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let signer = match &config.signing_key {
            Some(path) => {
                let der = std::fs::read(path)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                let key = SigningKey::from_pkcs8(&der)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                Some((Arc::new(key), SeqAllocator::open(path)?))
            }
            None => None,
        };
        let payloads = Arc::new(load_payloads(&config)?);
        let quic = tls::client_config(&config)?;
        let addr = resolve(&config.broker).await?;
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
                .parse()
                .map_err(|_| Error::Connect("bind".into()))?
        } else {
            "0.0.0.0:0"
                .parse()
                .map_err(|_| Error::Connect("bind".into()))?
        };
        let socket =
            signet_proto::stream::udp_socket(bind).map_err(|e| Error::Connect(e.to_string()))?;
        let runtime =
            quinn::default_runtime().ok_or_else(|| Error::Connect("no async runtime".into()))?;
        let mut endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
                .map_err(|e| Error::Connect(e.to_string()))?;
        endpoint.set_default_client_config(quic);
        let conn = endpoint
            .connect(addr, &config.server_name)
            .map_err(|e| Error::Connect(e.to_string()))?
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let frame_bytes_max = FRAME_BYTES_MAX_DEFAULT;
        let publisher = signer.map(|(key, seq)| {
            publisher::start(
                conn.clone(),
                key,
                seq,
                PublisherSettings {
                    linger: config.linger,
                    max_inflight_batches: config.max_inflight_batches,
                    frame_bytes_max,
                    payloads: payloads.clone(),
                },
            )
        });
        Ok(Client {
            endpoint,
            conn,
            publisher,
            trust: Verifier::new(config.trust),
            frame_bytes_max,
            payloads,
            quota_retries: config.quota_retries,
            quota_retry_max: config.quota_retry_max,
        })
    }

    /// Publishes `payload` as `application/octet-stream` and returns its
    /// offset once the broker has it on disk.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<u64, Error> {
        self.publish_message(OutgoingMessage::new(topic, payload))
            .await
    }

    /// Publishes a message and returns its offset once durable. When the
    /// client file opts in (`quota_retries`), a `QuotaExceeded` refusal is
    /// retried after the broker's `retry_after`, a bounded number of times.
    pub async fn publish_message(&self, message: OutgoingMessage) -> Result<u64, Error> {
        if self.quota_retries == 0 {
            return self.enqueue(message).await?.await;
        }
        let mut attempt = 0;
        loop {
            match self.enqueue(message.clone()).await?.await {
                Err(e)
                    if e.code() == Some(ErrorCode::QuotaExceeded)
                        && attempt < self.quota_retries =>
                {
                    attempt += 1;
                    let wait = e
                        .retry_after()
                        .unwrap_or(std::time::Duration::from_millis(100))
                        .min(self.quota_retry_max);
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Queues a message and returns at once (after waiting only if the
    /// queue is full) with a future for its ack. Messages are sent in the
    /// order they are queued; many can be in flight on one connection.
    pub async fn enqueue(&self, message: OutgoingMessage) -> Result<PendingAck, Error> {
        let queue = self.publisher.as_ref().ok_or(Error::NoSigningKey)?;
        self.validate(&message)?;
        let (reply, ack) = oneshot::channel();
        queue
            .send(Request { message, reply })
            .await
            .map_err(|_| Error::ConnectionLost("publisher stopped".into()))?;
        Ok(PendingAck(ack))
    }

    /// Checks a message against the client file's schema for its topic, if
    /// any, with the broker's rules: `Error::Invalid { code:
    /// SchemaViolation, .. }` names the path and keyword of the first error.
    pub fn validate(&self, message: &OutgoingMessage) -> Result<(), Error> {
        self.payloads
            .validate(&message.topic, &message.content_type, &message.payload)
            .map_err(|detail| Error::Invalid {
                code: ErrorCode::SchemaViolation,
                detail,
            })
    }

    /// Subscribes to a topic from `start`. Every message is verified
    /// against this client's trusted keys before it is yielded.
    pub async fn subscribe(&self, topic: &str, start: StartAt) -> Result<Subscription, Error> {
        if let Err(e) = signet_proto::topic::validate_name(topic) {
            return Err(Error::Invalid {
                code: ErrorCode::BadTopic,
                detail: e.to_string(),
            });
        }
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| Error::ConnectionLost(e.to_string()))?;
        let request = ClientFrame::Subscribe(Subscribe {
            topic: topic.to_owned(),
            start,
        });
        write_frame(&mut send, &request)
            .await
            .map_err(|e| Error::ConnectionLost(e.to_string()))?;
        match read_frame::<ServerFrame, _>(&mut recv, self.frame_bytes_max).await {
            Ok(Some(ServerFrame::Subscribed { next_offset })) => Ok(Subscription::start(
                topic.to_owned(),
                next_offset,
                send,
                recv,
                self.trust.clone(),
                self.payloads.clone(),
                self.frame_bytes_max,
            )),
            Ok(Some(ServerFrame::Error(r))) => Err(Error::rejected(r)),
            Ok(Some(_)) => Err(Error::Protocol("unexpected answer to subscribe".into())),
            Ok(None) => Err(Error::ConnectionLost("subscription refused".into())),
            Err(e) => Err(Error::ConnectionLost(e.to_string())),
        }
    }

    /// The underlying QUIC connection, for tools that speak frames
    /// directly (tests, diagnostics). The TLS checks already happened.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Why the connection closed, if it has.
    pub fn close_reason(&self) -> Option<String> {
        self.conn.close_reason().map(|r| r.to_string())
    }

    /// Closes the connection. Await every pending ack first: what is still
    /// in flight when the connection closes may or may not be stored.
    pub async fn close(self) {
        drop(self.publisher);
        self.conn.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }
}
