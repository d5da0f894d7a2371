//! One QUIC connection: its principal (from the verified certificate), its
//! ACL decision cache, and its streams. The first frame on a stream says
//! what the stream is: a publish stream or a subscription.

use crate::acl::DecisionCache;
use crate::audit::Event;
use crate::commit::{CommitReply, CommitRequest, Entry};
use crate::config::Policy;
use crate::ingest::{self, IngestContext, Verdict};
use crate::{Shared, metrics, publish, subscribe, tls};
use serde_json::json;
use signet_proto::codec::DecodeError;
use signet_proto::frame::{ClientFrame, Outcome, Publish, Rejection, ServerFrame};
use signet_proto::stream::{ReadError, read_frame, write_frame};
use signet_proto::{ErrorCode, StoredRecord, codec};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::JoinSet;

/// State of one authenticated connection.
pub(crate) struct Session {
    /// Broker-wide state.
    pub shared: Arc<Shared>,
    /// The principal named by the client certificate.
    pub principal: String,
    /// Shared with the audit log and the commit entries.
    pub principal_arc: Arc<str>,
    /// Publish batches read but not yet answered, on all of this
    /// connection's publish streams (`limits.max_inflight_batches`).
    pub inflight: Arc<Semaphore>,
    /// This connection's cached ACL decisions.
    pub decisions: Mutex<DecisionCache>,
    /// The connection, to close it on a protocol violation.
    pub conn: quinn::Connection,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Serves a connection until it closes or the broker shuts down.
pub(crate) async fn serve(
    conn: quinn::Connection,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let remote = conn.remote_address().to_string();
    let Some(principal) = tls::principal_of(&conn) else {
        metrics::connection_refused("no_principal");
        tracing::warn!(%remote, "certificate names no principal; closing");
        shared.audit.record(Event::new(
            "connection_refused",
            json!({ "reason": "certificate names no principal", "remote": remote }),
        ));
        conn.close(
            ErrorCode::Forbidden.0.into(),
            b"certificate names no principal",
        );
        return;
    };
    let Some(_slot) = shared.quota(&principal).open_connection() else {
        metrics::quota_hit("connections");
        tracing::warn!(%principal, %remote, "connection quota reached; closing");
        shared.audit.record(
            Event::new(
                "quota_breach",
                json!({ "principal": principal, "kind": "connections", "remote": remote }),
            )
            .noisy(&principal),
        );
        conn.close(
            ErrorCode::QuotaExceeded.0.into(),
            b"too many connections for this principal",
        );
        return;
    };
    tracing::info!(%principal, %remote, "connection accepted");
    shared.audit.record(Event::new(
        "connection_accepted",
        json!({ "principal": principal, "remote": remote }),
    ));
    let _live = LiveConnection::open(&shared, &principal, &remote);
    let session = Arc::new(Session {
        inflight: Arc::new(Semaphore::new(shared.config.limits.max_inflight_batches)),
        principal_arc: Arc::from(principal.as_str()),
        shared,
        principal,
        decisions: Mutex::new(DecisionCache::default()),
        conn: conn.clone(),
    });
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(handle_stream(session.clone(), send, recv));
                }
                Err(e) => {
                    tracing::debug!(principal = %session.principal, reason = %e, "connection closed");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    streams.shutdown().await;
}

/// An open connection: counted in the gauge, its closing audited however
/// it ends (also when the broker aborts it at shutdown).
struct LiveConnection {
    shared: Arc<Shared>,
    principal: String,
    remote: String,
}

impl LiveConnection {
    fn open(shared: &Arc<Shared>, principal: &str, remote: &str) -> LiveConnection {
        metrics::gauge_add(metrics::CONNECTIONS_LIVE, 1.0);
        LiveConnection {
            shared: shared.clone(),
            principal: principal.to_owned(),
            remote: remote.to_owned(),
        }
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        metrics::gauge_add(metrics::CONNECTIONS_LIVE, -1.0);
        self.shared.audit.record(Event::new(
            "connection_closed",
            json!({ "principal": self.principal, "remote": self.remote }),
        ));
    }
}

async fn handle_stream(
    session: Arc<Session>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = session.shared.config.frame_bytes_max;
    match read_frame::<ClientFrame, _>(&mut recv, max).await {
        Ok(Some(ClientFrame::Publish(first))) => publish::run(session, first, send, recv).await,
        Ok(Some(ClientFrame::Subscribe(sub))) => subscribe::run(session, sub, send, recv).await,
        Ok(None) => {}
        Err(e) => session.frame_error(&mut send, e).await,
    }
}

impl Session {
    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.shared.policy()
    }

    /// Answers a frame that could not be read: the peer gets a typed error,
    /// then the connection is closed (a peer that sends bad frames is broken
    /// or hostile). Other connections are not affected.
    pub async fn frame_error(&self, send: &mut quinn::SendStream, error: ReadError) {
        let rejection = match &error {
            ReadError::Decode(DecodeError::TooLarge { .. }) => {
                Rejection::new(ErrorCode::TooLarge, "frame larger than the broker allows")
            }
            ReadError::Decode(_) | ReadError::Truncated => {
                Rejection::new(ErrorCode::BadFrame, "malformed frame")
            }
            ReadError::Io(_) => return,
        };
        tracing::warn!(principal = %self.principal, code = %rejection.code, error = %error, "bad frame; closing connection");
        metrics::rejected(rejection.code);
        let _ = write_frame(send, &ServerFrame::Error(rejection.clone())).await;
        let _ = send.finish();
        self.conn
            .close(rejection.code.0.into(), rejection.detail.as_bytes());
    }

    /// Runs the ingest checks on a batch and hands what passed to the group
    /// commit. Returns the outcomes so far and the pending commit.
    pub async fn ingest(
        &self,
        publish: Publish,
        permit: OwnedSemaphorePermit,
    ) -> Result<PendingBatch, Rejection> {
        let request_id = publish.request_id;
        let now_ms = now_ms();
        let policy = self.policy();
        let quota = self.shared.quota_under(&policy, &self.principal);
        let verdicts = {
            let mut decisions = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
            let mut ctx = IngestContext {
                policy: &policy,
                principal: &self.principal,
                decisions: &mut decisions,
                quota: &quota,
                replay: &self.shared.replay,
                payload_bytes_max: self.shared.config.payload_bytes_max,
                clock_skew_ms: self.shared.config.clock_skew_ms,
                now_ms,
            };
            ingest::check_publish(&mut ctx, publish)?
        };
        let mut outcomes = Vec::with_capacity(verdicts.len());
        let mut entries = Vec::new();
        let mut accepted = Vec::new();
        let mut quota_breach = false;
        for (i, verdict) in verdicts.into_iter().enumerate() {
            match verdict {
                Verdict::Rejected { rejection, topic } => {
                    metrics::rejected(rejection.code);
                    tracing::debug!(principal = %self.principal, code = %rejection.code, "envelope rejected");
                    if rejection.code == ErrorCode::QuotaExceeded {
                        quota_breach = true;
                    } else {
                        self.shared.audit.record(
                            Event::new(
                                "publish_denied",
                                json!({ "principal": self.principal, "topic": topic, "code": rejection.code.to_string() }),
                            )
                            .noisy(&self.principal),
                        );
                    }
                    outcomes.push(Some(Outcome::Nack(rejection)));
                }
                Verdict::Accepted(accepted_envelope) => {
                    let (envelope, proof) = *accepted_envelope;
                    let (topic, key_id, seq) =
                        (envelope.topic.clone(), envelope.key_id, envelope.seq);
                    let payload_bytes = envelope.payload.len() as u64;
                    let record = StoredRecord {
                        received_ms: now_ms,
                        envelope,
                        proof,
                    };
                    let record = codec::encode_body(&record)
                        .map_err(|_| Rejection::new(ErrorCode::Internal, "internal error"))?;
                    entries.push(Entry {
                        topic,
                        record,
                        key_id,
                        seq,
                        principal: self.principal_arc.clone(),
                        payload_bytes,
                    });
                    accepted.push(i);
                    outcomes.push(None);
                }
            }
        }
        if quota_breach {
            metrics::quota_hit("publish");
            self.shared.audit.record(
                Event::new(
                    "quota_breach",
                    json!({ "principal": self.principal, "kind": "publish" }),
                )
                .noisy(&self.principal),
            );
        }
        let commit = if entries.is_empty() {
            None
        } else {
            let (reply, receiver) = oneshot::channel();
            let request = CommitRequest { entries, reply };
            match self.shared.commits.send(request).await {
                Ok(()) => Some(receiver),
                Err(_) => {
                    for i in &accepted {
                        outcomes[*i] = Some(Outcome::Nack(Rejection::new(
                            ErrorCode::Unavailable,
                            "broker shutting down",
                        )));
                    }
                    None
                }
            }
        };
        Ok(PendingBatch {
            request_id,
            outcomes,
            accepted,
            commit,
            _permit: permit,
        })
    }
}

/// A batch whose rejections are known and whose accepted envelopes wait for
/// their group commit.
pub(crate) struct PendingBatch {
    pub request_id: u64,
    /// One per envelope; `None` where the commit decides.
    pub outcomes: Vec<Option<Outcome>>,
    /// Indexes of the envelopes sent to the commit, in order.
    pub accepted: Vec<usize>,
    /// The commit's answer, if anything was sent to it.
    pub commit: Option<oneshot::Receiver<CommitReply>>,
    /// This batch's place in the connection's in-flight cap, held until
    /// its results are written.
    pub _permit: OwnedSemaphorePermit,
}

impl PendingBatch {
    /// Waits for the commit and returns one outcome per envelope.
    pub async fn resolve(self) -> (signet_proto::frame::Results, OwnedSemaphorePermit) {
        let mut outcomes = self.outcomes;
        if let Some(commit) = self.commit {
            let reply = commit.await.unwrap_or(Err(ErrorCode::Unavailable));
            match reply {
                Ok(offsets) => {
                    for (i, offset) in self.accepted.iter().zip(offsets) {
                        outcomes[*i] = Some(Outcome::Ack(offset));
                    }
                }
                Err(code) => {
                    metrics::rejected(code);
                    for i in &self.accepted {
                        outcomes[*i] =
                            Some(Outcome::Nack(Rejection::new(code, "message not stored")));
                    }
                }
            }
        }
        let results = signet_proto::frame::Results {
            request_id: self.request_id,
            outcomes: outcomes
                .into_iter()
                .map(|o| {
                    o.unwrap_or_else(|| {
                        Outcome::Nack(Rejection::new(ErrorCode::Internal, "internal error"))
                    })
                })
                .collect(),
        };
        (results, self._permit)
    }
}
