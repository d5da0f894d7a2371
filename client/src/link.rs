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
//! attempts in a row (a connection lost within [`STABLE_CONNECTION`] of
//! being made, and that carried no ack, does not start a new count); then, and at once for what a
//! retry cannot fix, the task gets [`Error::GaveUp`].
//!
//! A cluster node's `NotLeader` is followed by [`Link::redirect`]: to the
//! leader it names, else (an election under way) to the next address of
//! the client file, with the same growing waits. A redirect that reaches
//! a node spends none of the attempts (the node answered; an election on
//! a loaded machine may take many rounds); only its failed dials do.
//! Redirects in a row end instead after `leader_wait` (30 s by default)
//! without an ack (a redirect from a connection that lasted
//! [`STABLE_CONNECTION`] starts a new run). Not retried: a
//! connection this client closed; a broker close with a code other than
//! `Unavailable` (e.g. `Forbidden`: the certificate names no principal the
//! broker knows; `QuotaExceeded`: the principal's connection quota); a TLS
//! failure (a certificate refused either way).
//! Anything that owns a stream (a consumer-group member, say) re-opens it
//! the same way: on a lost connection, `reconnect(generation)`, then open
//! its stream again on the connection returned.

use crate::error::Error;
use crate::limits::{NODE_DIAL_MS_MAX, RECONNECT_WAIT_MS_MIN};
use signet_proto::ErrorCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How the link dials again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReconnectPolicy {
    /// Attempts in a row before giving up (0: never reconnect).
    pub attempts: u32,
    /// The longest wait before one attempt.
    pub wait_max: Duration,
    /// How long `NotLeader` redirects in a row are followed.
    pub leader_wait: Duration,
}

/// A connection and its generation (1 for the first, then +1 per dial).
#[derive(Clone)]
pub(crate) struct Current {
    pub conn: quinn::Connection,
    pub generation: u64,
    /// When it was established.
    established: Instant,
    /// Dials in a row that led to it without a connection lasting
    /// [`STABLE_CONNECTION`] in between.
    streak: u32,
    /// Closed by the link to follow a `NotLeader` (not by the application):
    /// dialed again on the next use even if that redirect gave up.
    redirected: bool,
    /// `NotLeader` redirects in a row (since the last ack, each to a
    /// connection that did not last [`STABLE_CONNECTION`]): when the first
    /// was, and how many (the backoff of the next one).
    redirects: Option<(Instant, u32)>,
}

/// A connection that lasted this long was in use: the next loss starts a
/// new count of attempts. One lost sooner (a broker that accepts and at
/// once closes, say at its connection cap) counts on, so such a loop ends
/// after `reconnect_attempts` dials.
const STABLE_CONNECTION: Duration = Duration::from_secs(5);

/// The shared handle on the connection in use.
#[derive(Clone)]
pub(crate) struct Link {
    shared: Arc<Shared>,
}

struct Shared {
    endpoint: quinn::Endpoint,
    /// The address dialed again: the one that answered last, or where a
    /// `NotLeader` pointed.
    addr: std::sync::Mutex<SocketAddr>,
    /// Every address of the client file, in order.
    brokers: Vec<SocketAddr>,
    server_name: String,
    policy: ReconnectPolicy,
    current: Mutex<Current>,
    /// Set by [`Link::close`]: nothing dials any more.
    closed: std::sync::atomic::AtomicBool,
    /// The links made by [`Link::sibling`], closed with this one.
    siblings: std::sync::Mutex<Vec<std::sync::Weak<Shared>>>,
}

/// Whether a lost connection is worth dialing again, from why it closed.
pub(crate) fn retryable(error: &quinn::ConnectionError) -> bool {
    use quinn::ConnectionError as E;
    match error {
        E::LocallyClosed | E::VersionMismatch | E::CidsExhausted => false,
        // The broker stopping, its storage failing or its connection cap:
        // worth another try. Not a principal's own connection quota
        // (`QuotaExceeded`): the application holds too many connections.
        // Code 0: the broker dropped the connection without a reason (its
        // task ended, as when a node stops).
        E::ApplicationClosed(close) => {
            let code = u64::from(close.error_code);
            code == u64::from(ErrorCode::Unavailable.0) || code == 0
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
        brokers: Vec<SocketAddr>,
        server_name: String,
        conn: quinn::Connection,
        policy: ReconnectPolicy,
    ) -> Link {
        Link {
            shared: Arc::new(Shared {
                endpoint,
                addr: std::sync::Mutex::new(addr),
                brokers,
                server_name,
                policy,
                current: Mutex::new(Current {
                    conn,
                    generation: 1,
                    established: Instant::now(),
                    streak: 0,
                    redirected: false,
                    redirects: None,
                }),
                closed: std::sync::atomic::AtomicBool::new(false),
                siblings: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// Whether the client file lists several brokers (cluster nodes).
    pub fn several(&self) -> bool {
        self.shared.brokers.len() > 1
    }

    /// A new link on a connection of its own (same endpoint, broker list,
    /// server name and reconnect policy): dialed to `addr` when given (a
    /// cluster data group's leader), else to the address in use, then, if
    /// that fails, to the client file's other addresses in order. Closed
    /// when this link is.
    pub async fn sibling(&self, addr: Option<SocketAddr>) -> Result<Link, Error> {
        let first = addr.unwrap_or_else(|| self.addr());
        let others = self.shared.brokers.iter().copied().filter(|b| *b != first);
        let mut last = "no broker address".to_owned();
        for candidate in std::iter::once(first).chain(others) {
            let connecting = match self
                .shared
                .endpoint
                .connect(candidate, &self.shared.server_name)
            {
                Ok(connecting) => connecting,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            match self.bounded(connecting).await {
                Ok(conn) => {
                    let sibling = Link::new(
                        self.shared.endpoint.clone(),
                        candidate,
                        self.shared.brokers.clone(),
                        self.shared.server_name.clone(),
                        conn,
                        self.shared.policy,
                    );
                    let mut siblings = self
                        .shared
                        .siblings
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    siblings.retain(|s| s.strong_count() > 0);
                    siblings.push(Arc::downgrade(&sibling.shared));
                    return Ok(sibling);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(Error::Connect(last))
    }

    /// The connection in use.
    pub async fn current(&self) -> Current {
        self.shared.current.lock().await.clone()
    }

    /// The endpoint connections run on.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.shared.endpoint
    }

    /// Stops reconnecting and closes the connection in use, and those of
    /// its siblings.
    pub async fn close(&self) {
        let siblings: Vec<Arc<Shared>> = self
            .shared
            .siblings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        for shared in std::iter::once(&self.shared).chain(&siblings) {
            shared
                .closed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let current = shared.current.lock().await;
            current.conn.close(0u32.into(), b"bye");
        }
    }

    /// Whether the connection of `generation` is gone (rather than only
    /// one stream on it).
    pub async fn lost(&self, generation: u64) -> bool {
        let current = self.shared.current.lock().await;
        current.generation != generation || current.conn.close_reason().is_some()
    }

    /// After opening a stream on `current` failed with `error`: the
    /// connection to try again on when that connection is gone (dialed
    /// again as [`Link::reconnect`] allows), or after a cluster node's
    /// `NotLeader` the leader's (see [`Link::redirect`]), or `error` as it
    /// is (another failure, or reconnecting is off). Callers loop: open, and on an
    /// error `current = link.retry_on(&current, e).await?`.
    pub async fn retry_on(&self, current: &Current, error: Error) -> Result<Current, Error> {
        match error {
            Error::ConnectionLost(detail)
                if self.shared.policy.attempts > 0 && self.lost(current.generation).await =>
            {
                tracing::debug!(%detail, "stream lost with its connection; dialing again");
                self.reconnect(current.generation).await
            }
            // A cluster node that does not lead (a consumer group's
            // commands go through the leader): follow it there.
            Error::Rejected {
                code: ErrorCode::NotLeader,
                detail,
                ..
            } if self.shared.policy.attempts > 0 => {
                tracing::debug!(%detail, "not the leader; redirecting");
                self.redirect(current.generation, leader_named(&detail))
                    .await
            }
            error => Err(error),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self.shared.addr.lock() {
            Ok(addr) => *addr,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn set_addr(&self, to: SocketAddr) {
        match self.shared.addr.lock() {
            Ok(mut addr) => *addr = to,
            Err(poisoned) => *poisoned.into_inner() = to,
        }
    }

    /// A dial, given up after [`NODE_DIAL_MS_MAX`] when the client file
    /// lists several brokers (a cluster node that is down does not answer
    /// at all, and the next one should be tried).
    async fn bounded(
        &self,
        connecting: quinn::Connecting,
    ) -> Result<quinn::Connection, quinn::ConnectionError> {
        if self.shared.brokers.len() < 2 {
            return connecting.await;
        }
        match tokio::time::timeout(Duration::from_millis(NODE_DIAL_MS_MAX), connecting).await {
            Ok(result) => result,
            Err(_) => Err(quinn::ConnectionError::TimedOut),
        }
    }

    /// Moves to the address after the current one in the client file.
    fn next_broker(&self) {
        let brokers = &self.shared.brokers;
        if brokers.len() < 2 {
            return;
        }
        let now = self.addr();
        let next = brokers
            .iter()
            .position(|b| *b == now)
            .map_or(0, |i| (i + 1) % brokers.len());
        self.set_addr(brokers[next]);
    }

    /// The connection of `generation` carried an ack: the dials that led
    /// to it are not counted against the next loss (a rolling restart of
    /// a cluster moves a client several times within seconds, each time
    /// to a node that works).
    pub async fn progressed(&self, generation: u64) {
        let mut current = self.shared.current.lock().await;
        if current.generation == generation {
            current.streak = 0;
            current.redirects = None;
        }
    }

    /// A cluster node answered `NotLeader`: closes the connection of
    /// `generation` and dials `leader` (when the node named one), else the
    /// next address of the client file, after a backoff that grows with
    /// each redirect in a row. Gives up (`GaveUp`) when redirects in a row
    /// have lasted the policy's `leader_wait`, or its attempts of failed
    /// dials in a row are spent.
    pub async fn redirect(
        &self,
        generation: u64,
        leader: Option<SocketAddr>,
    ) -> Result<Current, Error> {
        let mut current = self.shared.current.lock().await;
        if current.generation != generation && current.conn.close_reason().is_none() {
            return Ok(current.clone());
        }
        current.conn.close(0u32.into(), b"not the leader");
        current.redirected = true;
        // A connection that lasted was in use (an idle consumer-group
        // member's, say): this redirect starts a new run.
        let (since, rounds) = match current.redirects {
            Some(run) if current.established.elapsed() < STABLE_CONNECTION => run,
            _ => (Instant::now(), 0),
        };
        if since.elapsed() >= self.shared.policy.leader_wait {
            return Err(Error::GaveUp {
                attempts: rounds,
                last: format!(
                    "not the leader: no leader reached within {} ms",
                    self.shared.policy.leader_wait.as_millis()
                ),
            });
        }
        current.redirects = Some((since, rounds + 1));
        match leader {
            Some(leader) => self.set_addr(leader),
            None => self.next_broker(),
        }
        self.redial(&mut current, Redial::Redirect, "not the leader".to_owned())
            .await
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
        // Closed by a redirect that gave up (not by the application): the
        // next use dials again.
        let redirected = current.redirected && matches!(why, quinn::ConnectionError::LocallyClosed);
        if self.shared.closed.load(std::sync::atomic::Ordering::SeqCst)
            || !(retryable(&why) || redirected)
            || self.shared.policy.attempts == 0
        {
            return Err(Error::GaveUp {
                attempts: 0,
                last: why.to_string(),
            });
        }
        self.redial(&mut current, Redial::Lost, why.to_string())
            .await
    }

    /// Dials the link's address again with the module doc's backoff (the
    /// streak of attempts in a row grows it), moving to the next address
    /// of the client file after each failed dial, at most the policy's
    /// attempts (`GaveUp`); `current` becomes the new connection.
    async fn redial(
        &self,
        current: &mut Current,
        why: Redial,
        mut last: String,
    ) -> Result<Current, Error> {
        // A connection that lasted was in use: the dials (and, after a
        // loss, the redirects) before it are not counted on.
        let lasted = current.established.elapsed() >= STABLE_CONNECTION;
        let mut streak = if lasted { 0 } else { current.streak };
        let redirects = match why {
            Redial::Lost if lasted => None,
            _ => current.redirects,
        };
        // The backoff grows with the attempts in a row, or for a redirect
        // with the redirects in a row.
        let mut backoff = match why {
            Redial::Lost => streak,
            Redial::Redirect => current
                .redirects
                .map_or(0, |(_, rounds)| rounds.saturating_sub(1)),
        };
        while streak < self.shared.policy.attempts {
            streak += 1;
            let bound = Duration::from_millis(RECONNECT_WAIT_MS_MIN)
                .saturating_mul(1 << backoff.min(20))
                .min(self.shared.policy.wait_max);
            backoff += 1;
            tokio::time::sleep(jitter(bound)).await;
            if self.shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            if streak == 1 && matches!(why, Redial::Lost) {
                // A cluster: the node that was lost is likely down; the
                // next one answers, or redirects to the leader.
                self.next_broker();
            }
            let connecting = self
                .shared
                .endpoint
                .connect(self.addr(), &self.shared.server_name)
                .map_err(|e| Error::GaveUp {
                    attempts: streak,
                    last: e.to_string(),
                })?;
            match self.bounded(connecting).await {
                Ok(conn) => {
                    match why {
                        Redial::Lost => {
                            tracing::info!(attempt = streak, "reconnected to the broker")
                        }
                        Redial::Redirect => {
                            tracing::info!(attempt = streak, "redirected to the cluster leader")
                        }
                    }
                    *current = Current {
                        conn,
                        generation: current.generation + 1,
                        established: Instant::now(),
                        // A node that answered a redirect spends no
                        // attempt; a dial after a loss does (until an
                        // ack, or the connection lasts).
                        streak: match why {
                            Redial::Lost => streak,
                            Redial::Redirect => streak - 1,
                        },
                        redirected: false,
                        redirects,
                    };
                    return Ok(current.clone());
                }
                // A redirect tries every node; a lost connection gives up
                // on an error a new dial cannot mend (a refused certificate).
                Err(e) if retryable(&e) || matches!(why, Redial::Redirect) => {
                    tracing::debug!(attempt = streak, error = %e, "dial failed");
                    last = e.to_string();
                    // A cluster node that is down: the next one of the file.
                    self.next_broker();
                }
                Err(e) => {
                    return Err(Error::GaveUp {
                        attempts: streak,
                        last: e.to_string(),
                    });
                }
            }
        }
        Err(Error::GaveUp {
            attempts: match why {
                Redial::Lost => self.shared.policy.attempts,
                Redial::Redirect => streak,
            },
            last,
        })
    }
}

/// The leader a `NotLeader` detail names (`leader <addr>`), if any.
pub(crate) fn leader_named(detail: &str) -> Option<SocketAddr> {
    detail
        .strip_prefix("leader ")
        .and_then(|addr| addr.parse().ok())
}

/// Why the link dials again.
#[derive(Clone, Copy)]
enum Redial {
    /// The connection was lost.
    Lost,
    /// A cluster node answered `NotLeader`.
    Redirect,
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
