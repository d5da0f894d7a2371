//! The connection in use, shared by every task that owns a stream on it
//! (the publisher, each subscription), and the one place that dials the
//! broker again after the connection is lost.
//!
//! A task whose stream failed asks [`Link::reconnect`] with the
//! generation of the connection it used. The first task to ask dials; the
//! others wait on the same lock and get the new connection (a newer
//! generation) without dialing again. Dialing waits before each attempt:
//! 50 ms doubling up to `reconnect_max`, each wait drawn uniformly from
//! zero to that bound (full jitter), for at most `reconnect_attempts`
//! attempts in a row; then, and at once for what a retry cannot fix, the
//! task gets [`Error::GaveUp`]. Not retried: a connection this client
//! closed; a broker close with a code other than `Unavailable` or
//! `QuotaExceeded` (e.g. `Forbidden`: the certificate names no principal
//! the broker knows); a TLS failure (a certificate refused either way).
//! Anything that owns a stream (a consumer-group member, say) re-opens it
//! the same way: on a lost connection, `reconnect(generation)`, then open
//! its stream again on the connection returned.

use crate::error::Error;
use crate::limits::RECONNECT_WAIT_MS_MIN;
use signet_proto::ErrorCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How the link dials again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReconnectPolicy {
    /// Attempts in a row before giving up (0: never reconnect).
    pub attempts: u32,
    /// The longest wait before one attempt.
    pub wait_max: Duration,
}

/// A connection and its generation (1 for the first, then +1 per dial).
#[derive(Clone)]
pub(crate) struct Current {
    pub conn: quinn::Connection,
    pub generation: u64,
}

/// The shared handle on the connection in use.
#[derive(Clone)]
pub(crate) struct Link {
    shared: Arc<Shared>,
}

struct Shared {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    server_name: String,
    policy: ReconnectPolicy,
    current: Mutex<Current>,
    /// Set by [`Link::close`]: nothing dials any more.
    closed: std::sync::atomic::AtomicBool,
}

/// Whether a lost connection is worth dialing again, from why it closed.
pub(crate) fn retryable(error: &quinn::ConnectionError) -> bool {
    use quinn::ConnectionError as E;
    match error {
        E::LocallyClosed | E::VersionMismatch | E::CidsExhausted => false,
        E::ApplicationClosed(close) => {
            let code = u64::from(close.error_code);
            code == u64::from(ErrorCode::Unavailable.0)
                || code == u64::from(ErrorCode::QuotaExceeded.0)
        }
        // TLS alerts are transport codes 0x100..=0x1ff: a certificate or
        // handshake refused, which no retry fixes.
        E::TransportError(e) => !is_crypto(u64::from(e.code)),
        E::ConnectionClosed(close) => !is_crypto(u64::from(close.error_code)),
        E::Reset | E::TimedOut => true,
    }
}

fn is_crypto(code: u64) -> bool {
    (0x100..0x200).contains(&code)
}

/// A wait drawn uniformly from `[0, bound]` (full jitter).
fn jitter(bound: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let random = ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map(|()| u64::from_le_bytes(bytes))
        .unwrap_or(u64::MAX);
    let ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(random % ms.saturating_add(1))
}

impl Link {
    /// A link on an established connection.
    pub fn new(
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        server_name: String,
        conn: quinn::Connection,
        policy: ReconnectPolicy,
    ) -> Link {
        Link {
            shared: Arc::new(Shared {
                endpoint,
                addr,
                server_name,
                policy,
                current: Mutex::new(Current {
                    conn,
                    generation: 1,
                }),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The connection in use.
    pub async fn current(&self) -> Current {
        self.shared.current.lock().await.clone()
    }

    /// The endpoint connections run on.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.shared.endpoint
    }

    /// Stops reconnecting and closes the connection in use.
    pub async fn close(&self) {
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let current = self.shared.current.lock().await;
        current.conn.close(0u32.into(), b"bye");
    }

    /// Whether the connection of `generation` is gone (rather than only
    /// one stream on it).
    pub async fn lost(&self, generation: u64) -> bool {
        let current = self.shared.current.lock().await;
        current.generation != generation || current.conn.close_reason().is_some()
    }

    /// A live connection newer than `generation`: the one another task
    /// already dialed, or a new one dialed now (see the module doc for
    /// the waits and what gives up).
    pub async fn reconnect(&self, generation: u64) -> Result<Current, Error> {
        let mut current = self.shared.current.lock().await;
        if current.generation != generation && current.conn.close_reason().is_none() {
            return Ok(current.clone());
        }
        let why = match current.conn.close_reason() {
            Some(reason) => reason,
            // The caller's stream failed on a live connection: nothing to redial.
            None => return Ok(current.clone()),
        };
        if self.shared.closed.load(std::sync::atomic::Ordering::SeqCst)
            || !retryable(&why)
            || self.shared.policy.attempts == 0
        {
            return Err(Error::GaveUp {
                attempts: 0,
                last: why.to_string(),
            });
        }
        let mut bound = Duration::from_millis(RECONNECT_WAIT_MS_MIN);
        let mut last = why.to_string();
        for attempt in 1..=self.shared.policy.attempts {
            tokio::time::sleep(jitter(bound)).await;
            bound = (bound * 2).min(self.shared.policy.wait_max);
            if self.shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let connecting = match self
                .shared
                .endpoint
                .connect(self.shared.addr, &self.shared.server_name)
            {
                Ok(connecting) => connecting,
                Err(e) => {
                    return Err(Error::GaveUp {
                        attempts: attempt,
                        last: e.to_string(),
                    });
                }
            };
            match connecting.await {
                Ok(conn) => {
                    tracing::info!(attempt, "reconnected to the broker");
                    current.conn = conn;
                    current.generation += 1;
                    return Ok(current.clone());
                }
                Err(e) if retryable(&e) => {
                    tracing::debug!(attempt, error = %e, "reconnect attempt failed");
                    last = e.to_string();
                }
                Err(e) => {
                    return Err(Error::GaveUp {
                        attempts: attempt,
                        last: e.to_string(),
                    });
                }
            }
        }
        Err(Error::GaveUp {
            attempts: self.shared.policy.attempts,
            last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bound() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(40)) <= Duration::from_millis(40));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_refused_certificate_is_not_retried() {
        assert!(is_crypto(0x100 + 42));
        assert!(!is_crypto(0x0a));
        assert!(!retryable(&quinn::ConnectionError::LocallyClosed));
        assert!(retryable(&quinn::ConnectionError::TimedOut));
        assert!(retryable(&quinn::ConnectionError::Reset));
    }
}
