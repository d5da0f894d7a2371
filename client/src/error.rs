//! The client's one error type. Every broker code arrives as an
//! [`ErrorCode`], reachable through [`Error::code`].

use signet_proto::ErrorCode;
use std::time::Duration;

/// What went wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The client file or a file it names is missing or invalid.
    #[error("client config: {0}")]
    Config(String),
    /// The connection could not be set up (address, TLS, handshake).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection or stream ended; what was in flight is unknown.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The broker refused the request with a typed code.
    #[error("rejected by broker: {code}: {detail}")]
    Rejected {
        /// The broker's code.
        code: ErrorCode,
        /// The broker's short explanation.
        detail: String,
        /// For `QuotaExceeded`: when to try again, in ms.
        retry_after_ms: Option<u64>,
    },
    /// The client refused to send something invalid (same codes as the broker).
    #[error("invalid: {code}: {detail}")]
    Invalid {
        /// The code the broker would have answered.
        code: ErrorCode,
        /// What is wrong.
        detail: String,
    },
    /// A delivered message failed end-to-end verification; it is not yielded.
    #[error("message at offset {offset} failed verification: {code}: {detail}")]
    Verify {
        /// The message's offset in its topic.
        offset: u64,
        /// Why it failed.
        code: ErrorCode,
        /// What failed.
        detail: String,
    },
    /// Messages `from..=to` of `topic` were removed by the broker's
    /// retention before this subscription reached them; the subscription
    /// goes on at `to + 1`. Not a verification failure: the broker says so
    /// explicitly (a broker hiding messages would have to say this too).
    #[error(
        "messages {from}..={to} of {topic} were removed ({reason}) before this subscription reached them"
    )]
    Gap {
        /// The topic.
        topic: String,
        /// The first offset removed.
        from: u64,
        /// The last offset removed.
        to: u64,
        /// Why (`retention`).
        reason: String,
    },
    /// The client file names no signing key, so this client cannot publish.
    #[error("no signing key configured")]
    NoSigningKey,
    /// The connection was lost and the client stopped dialing again:
    /// `attempts` attempts failed in a row, or the last one failed in a way
    /// a retry cannot fix (the broker's certificate or ours refused, the
    /// address unusable), or reconnecting is off (`reconnect_attempts =
    /// 0`). What was in flight is unknown.
    #[error("gave up reconnecting after {attempts} attempts: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Why the connection was lost, or why the last attempt failed.
        last: String,
    },
    /// The broker broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The stable error code, where there is one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Rejected { code, .. }
            | Error::Invalid { code, .. }
            | Error::Verify { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// For `QuotaExceeded`: when the broker said to try again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Rejected {
                retry_after_ms: Some(ms),
                ..
            } => Some(Duration::from_millis(*ms)),
            _ => None,
        }
    }

    pub(crate) fn rejected(r: signet_proto::frame::Rejection) -> Error {
        Error::Rejected {
            code: r.code,
            detail: r.detail,
            retry_after_ms: r.retry_after_ms,
        }
    }
}
