//! Errors the broker library returns to its embedder (start-up, config,
//! storage). Errors sent to peers are [`signet_proto::ErrorCode`]s instead.

use std::path::PathBuf;

/// Why the broker could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid policy {path}: {reason}")]
    Policy { path: PathBuf, reason: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("unsafe configuration: {0}")]
    Unsafe(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics endpoint failed: {0}")]
    Metrics(String),
}
