//! The connection to a broker, publishing and subscribing.

use crate::config::ClientConfig;
use crate::consumer::Consumer;
use crate::error::Error;
use crate::keyfile::read_private;
use crate::lanes::Lanes;
use crate::link::{Link, ReconnectPolicy};
use crate::message::{OutgoingMessage, PendingAck, Request};
use crate::payload::Payloads;
use crate::publisher::PublisherSettings;
use crate::seq::SharedSeq;
use crate::subscription::{self, Subscription};
use crate::tls;
use crate::verify::Verifier;
use signet_proto::crypt::DecryptionKey;
use signet_proto::frame::{ClusterStatus, GroupStatus, StartAt};
use signet_proto::schema::Schema;
use signet_proto::{ErrorCode, SigningKey};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

/// A connection to a broker.
pub struct Client {
    /// The connection in use, dialed again after it is lost.
    link: Link,
    /// The first connection (for [`Client::connection`]).
    conn: quinn::Connection,
    /// Where publishes go (one publishing task, or one per data group of
    /// a cluster); `None` without a signing key.
    publisher: Option<Lanes>,
    /// The publisher keys this client trusts; each subscription gets a copy.
    trust: Verifier,
    /// Decryption keys, recipients and schemas from the client file.
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
            let bytes = read_private(path)?;
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
        .map_err(|e| Error::Connect(e.to_string()))?
        .next()
        .ok_or_else(|| Error::Connect(format!("{broker}: no address")))
}

/// Dials the file's brokers in order and keeps the first that completes
/// the handshake; the error names the last failure.
async fn dial_first(
    config: &ClientConfig,
    quic: quinn::ClientConfig,
) -> Result<(quinn::Endpoint, SocketAddr, quinn::Connection), Error> {
    let mut last = Error::Connect("no broker address".into());
    for broker in &config.brokers {
        match dial(broker, &config.server_name, quic.clone()).await {
            Ok(dialed) => return Ok(dialed),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One broker: a QUIC endpoint and a connection with mutual TLS.
async fn dial(
    broker: &str,
    server_name: &str,
    quic: quinn::ClientConfig,
) -> Result<(quinn::Endpoint, SocketAddr, quinn::Connection), Error> {
    let addr = resolve(broker).await?;
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
        .connect(addr, server_name)
        .map_err(|e| Error::Connect(e.to_string()))?
        .await
        .map_err(|e| Error::Connect(e.to_string()))?;
    Ok((endpoint, addr, conn))
}

impl Client {
    /// Connects with mutual TLS and, if the config names a signing key,
    /// gets ready to publish.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let signer = match &config.signing_key {
            Some(path) => {
                let der = read_private(path)?;
                let key = SigningKey::from_pkcs8(&der)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                Some((Arc::new(key), path.clone()))
            }
            None => None,
        };
        let payloads = Arc::new(load_payloads(&config)?);
        let quic = tls::client_config(&config)?;
        let (endpoint, addr, conn) = dial_first(&config, quic).await?;
        // Every address of the file, for reconnects and `NotLeader`
        // redirects without a leader named (one that does not resolve now
        // is left out).
        let mut brokers = Vec::with_capacity(config.brokers.len());
        for broker in &config.brokers {
            if let Ok(resolved) = resolve(broker).await {
                brokers.push(resolved);
            }
        }
        let link = Link::new(
            endpoint,
            addr,
            brokers,
            config.server_name.clone(),
            conn.clone(),
            ReconnectPolicy {
                attempts: config.reconnect_attempts,
                wait_max: config.reconnect_max,
                leader_wait: config.leader_wait,
            },
        );
        let publisher = signer.map(|(key, key_path)| {
            Lanes::new(
                link.clone(),
                key,
                SharedSeq::new(&key_path),
                PublisherSettings {
                    linger: config.linger,
                    max_inflight_batches: config.max_inflight_batches,
                    payloads: payloads.clone(),
                    quota_retries: config.quota_retries,
                    quota_retry_max: config.quota_retry_max,
                },
                config.brokers.len() > 1,
            )
        });
        Ok(Client {
            link,
            conn,
            publisher,
            trust: Verifier::new(config.trust),
            payloads,
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
    /// retried after the broker's `retry_after`, a bounded number of times,
    /// keeping the order of publishes (see [`Client::enqueue`]).
    pub async fn publish_message(&self, message: OutgoingMessage) -> Result<u64, Error> {
        self.enqueue(message).await?.await
    }

    /// Queues a message and returns at once (after waiting only if the
    /// queue is full) with a future for its ack. Messages are sent in the
    /// order they are queued; many can be in flight on one connection.
    /// With `quota_retries` in the client file, messages the broker refuses
    /// with `QuotaExceeded` and a retry hint are sent again after it, in
    /// their order and before newer ones; the ack resolves when one attempt
    /// is stored or the retries are spent.
    pub async fn enqueue(&self, message: OutgoingMessage) -> Result<PendingAck, Error> {
        let lanes = self.publisher.as_ref().ok_or(Error::NoSigningKey)?;
        self.validate(&message)?;
        let queue = lanes.queue(&message.topic).await?;
        let (reply, ack) = oneshot::channel();
        queue
            .send(Request { message, reply })
            .await
            .map_err(|_| Error::ConnectionLost("publisher stopped".into()))?;
        Ok(PendingAck::new(ack))
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

    /// Subscribes to a topic, or to a pattern (`orders.>`, `*.created`:
    /// every matching topic this principal may read, including topics
    /// created later, in offset order per topic). Every message is verified
    /// against this client's trusted keys before it is yielded. A pattern
    /// starts each topic at `Earliest` or `Latest` (`Offset` is refused
    /// with `BadFrame`). After a lost connection the subscription resumes
    /// by itself where delivery stopped (see the client file's
    /// `reconnect_attempts`).
    pub async fn subscribe(&self, topic: &str, start: StartAt) -> Result<Subscription, Error> {
        let pattern = signet_proto::topic::validate_name(topic).is_err();
        if pattern {
            if let Err(e) = signet_proto::topic::validate_pattern(topic) {
                return Err(Error::Invalid {
                    code: ErrorCode::BadTopic,
                    detail: e.to_string(),
                });
            }
            if let StartAt::Offset(_) = start {
                return Err(Error::Invalid {
                    code: ErrorCode::BadFrame,
                    detail: "a pattern subscription starts at Earliest or Latest".into(),
                });
            }
        }
        subscription::subscribe(
            self.link.clone(),
            topic,
            pattern,
            start,
            self.trust.clone(),
            self.payloads.clone(),
        )
        .await
    }

    /// Joins the consumer group `group` (with the default prefetch of
    /// [`crate::consumer::DEFAULT_PREFETCH`] deliveries). Every delivery is
    /// verified against this client's trusted keys before it is yielded.
    pub async fn consume(&self, group: &str) -> Result<Consumer, Error> {
        self.consume_with(group, crate::consumer::DEFAULT_PREFETCH)
            .await
    }

    /// Joins `group` holding at most `prefetch` unsettled deliveries (the
    /// broker caps it at its `group_prefetch_max`).
    pub async fn consume_with(&self, group: &str, prefetch: u32) -> Result<Consumer, Error> {
        // A cluster: the member gets a connection of its own, so following
        // its data group's leader (`NotLeader`) moves none of the client's
        // other streams. Two members whose groups another node leads would
        // otherwise pull one shared connection back and forth.
        let link = match self.link.several() {
            true => self.link.sibling(None).await?,
            false => self.link.clone(),
        };
        let mut current = link.current().await;
        let streams = loop {
            match crate::consumer::join(&current.conn, group, prefetch).await {
                Ok(streams) => break streams,
                Err(e) => current = link.retry_on(&current, e).await?,
            }
        };
        let membership = crate::consumer::Membership {
            link,
            current,
            group: group.to_owned(),
            prefetch,
        };
        Ok(Consumer::start(
            membership,
            streams,
            self.trust.clone(),
            self.payloads.clone(),
        ))
    }

    /// Opens a dead letter received on a subscription: parses what the
    /// broker says and verifies the original message it carries against
    /// this client's trusted keys.
    pub fn open_dead_letter(
        &self,
        message: &crate::Message,
    ) -> Result<crate::dead_letter::OpenedDeadLetter, Error> {
        crate::dead_letter::open(self.trust.clone(), &self.payloads, message)
    }

    /// The cluster as the connected node sees it (`Rejected { code:
    /// NotClustered }` from a single broker).
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        let mut current = self.link.current().await;
        loop {
            match crate::consumer::cluster_status(&current.conn).await {
                Ok(status) => return Ok(status),
                Err(e) => current = self.link.retry_on(&current, e).await?,
            }
        }
    }

    /// The state of consumer group `group` (for a principal that may join it).
    pub async fn group_info(&self, group: &str) -> Result<GroupStatus, Error> {
        let mut current = self.link.current().await;
        loop {
            match crate::consumer::group_info(&current.conn, group).await {
                Ok(status) => return Ok(status),
                Err(e) => current = self.link.retry_on(&current, e).await?,
            }
        }
    }

    /// The first QUIC connection, for tools that speak frames directly
    /// (tests, diagnostics). The TLS checks already happened. It is not
    /// replaced when the client reconnects.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Why the first connection closed, if it has.
    pub fn close_reason(&self) -> Option<String> {
        self.conn.close_reason().map(|r| r.to_string())
    }

    /// Closes the connection. Await every pending ack first: what is still
    /// in flight when the connection closes may or may not be stored.
    pub async fn close(self) {
        drop(self.publisher);
        // Closes the lanes' and members' connections too (its siblings).
        self.link.close().await;
        self.conn.close(0u32.into(), b"bye");
        self.link.endpoint().wait_idle().await;
    }
}
