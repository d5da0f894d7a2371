//! [`AdminError`]: every way setting up can fail. The messages are the ones
//! `signet` prints (after `signet: `, with the cause after a colon).

use signet_proto::crypt::CryptError;
use signet_proto::keys::KeyError;
use std::path::PathBuf;

/// Why a PKI, key or dev-setup step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A file system call failed; `action` is e.g. `creating`, `reading`.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is already there; nothing is ever overwritten.
    #[error("{} already exists; not overwriting it", path.display())]
    Exists { path: PathBuf },
    /// The folder already holds a CA.
    #[error("{} already holds a CA; not overwriting it", dir.display())]
    CaExists { dir: PathBuf },
    /// A cluster size `cluster init` does not write.
    #[error("a cluster has 1 to 64 nodes, not {0}")]
    BadNodes(u16),
    /// A principal name a certificate cannot carry.
    #[error("principal {0:?} must be 1 to 128 of [A-Za-z0-9-_.@]")]
    BadPrincipal(String),
    /// A certificate step failed; `step` says which.
    #[error("{step}")]
    CertStep {
        step: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// A certificate operation failed.
    #[error(transparent)]
    Cert(#[from] rcgen::Error),
    /// Generating or re-reading a new Ed25519 key failed; `step` says which.
    #[error("{step}")]
    SigningKey {
        step: &'static str,
        #[source]
        source: KeyError,
    },
    /// Generating an X25519 key failed.
    #[error("generating an X25519 key")]
    EncryptionKey(#[source] CryptError),
    /// A file that should hold an Ed25519 PKCS#8 key does not.
    #[error("{} is not an Ed25519 PKCS#8 key", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
}

impl AdminError {
    /// An [`AdminError::Io`] for `action` on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> AdminError {
        let path = path.into();
        move |source| AdminError::Io {
            action,
            path,
            source,
        }
    }

    /// An [`AdminError::CertStep`] for `step`.
    pub(crate) fn cert(step: &'static str) -> impl FnOnce(rcgen::Error) -> AdminError {
        move |source| AdminError::CertStep { step, source }
    }
}
