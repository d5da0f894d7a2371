//! Errors the broker library returns to its embedder (start-up, config,
//! reload, storage). Errors sent to peers are [`signet_proto::ErrorCode`]s
//! instead.

use crate::limits::LimitError;
use crate::policy::PolicyError;
use std::path::PathBuf;

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not a policy file (TOML syntax, unknown or mistyped field).
    #[error("{0}")]
    Syntax(#[from] toml::de::Error),
    /// A limit is unknown or out of range.
    #[error("{0}")]
    Limit(#[from] LimitError),
    /// Principals, roles or topics are invalid.
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// The `[cluster]` section is inconsistent.
    #[error("{0}")]
    Cluster(#[from] crate::cluster_config::ClusterConfigError),
}

/// Why RocksDB could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB itself failed.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A column family the broker creates at open is missing.
    #[error("column family {0} missing")]
    MissingFamily(&'static str),
    /// A stored key or value does not have the shape the broker writes.
    #[error("corrupt {what} in column family {family}")]
    Corrupt {
        family: &'static str,
        what: &'static str,
    },
}

/// Why the broker could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid policy {path}: {source}")]
    Policy { path: PathBuf, source: ConfigError },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("unsafe configuration: {0}")]
    Unsafe(String),
    #[error("storage error: {0}")]
    Storage(#[from] StoreError),
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the broker was not started from a policy file")]
    NoPolicyFile,
    #[error("the broker has stopped")]
    Stopped,
}

impl BrokerError {
    /// A config error about the file at `path`.
    pub fn config(path: &std::path::Path, error: ConfigError) -> BrokerError {
        match error {
            ConfigError::Read { path, source } => BrokerError::Read { path, source },
            other => BrokerError::Policy {
                path: path.to_owned(),
                source: other,
            },
        }
    }
}
