//! What the broker itself says: messages on system topics (names under
//! `signet.`, which no principal may publish to, see
//! [`crate::acl::is_system_topic`]), signed by the broker's Ed25519
//! identity key and written through the normal group commit, so they are
//! durable, ordered and delivered like any other message. A subscriber
//! with a subscribe grant verifies them against the broker key it trusts.
//! The first use is the audit log's checkpoints.

use crate::commit::{Command, CommitRequest, Entry};
use crate::error::{BrokerError, StoreError};
use crate::quota::Reservation;
use crate::store::Store;
use crate::tls;
use signet_proto::envelope::{CONTENT_TYPE_JSON, ENVELOPE_VERSION};
use signet_proto::{Envelope, ErrorCode, Salt, SigningKey, StoredRecord, batch, codec};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

pub use crate::commit::BROKER_PRINCIPAL;

/// Why a system message was not published.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// The envelope could not be signed or encoded.
    #[error("cannot build the message")]
    Build,
    /// The commit writer has stopped.
    #[error("the commit writer has stopped")]
    Stopped,
    /// The commit failed.
    #[error("commit failed: {0}")]
    Commit(ErrorCode),
}

/// Reads the broker's identity key: a PKCS#8 Ed25519 file others may not
/// read (refused like the TLS key); the bytes read are wiped.
pub fn load_identity(path: &Path) -> Result<SigningKey, BrokerError> {
    let der = tls::read_private_key(path)?;
    SigningKey::from_pkcs8(&der).map_err(|e| {
        BrokerError::Unsafe(format!(
            "identity key {}: not an Ed25519 PKCS#8 key ({e})",
            path.display()
        ))
    })
}

fn now() -> (u64, u64) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (
        d.as_millis() as u64,
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2),
    )
}

/// Publishes the broker's own messages, one at a time, in order.
pub struct SystemPublisher {
    key: Arc<SigningKey>,
    commits: mpsc::Sender<Command>,
    /// The seq of the next message (strictly above every one stored).
    next_seq: u64,
}

impl SystemPublisher {
    /// A publisher whose seqs start above the key's stored replay mark.
    pub fn new(
        key: Arc<SigningKey>,
        commits: mpsc::Sender<Command>,
        store: &Store,
    ) -> Result<SystemPublisher, StoreError> {
        let mark = store.replay_mark(&key.id())?.unwrap_or(0);
        Ok(SystemPublisher {
            next_seq: mark.saturating_add(1).max(now().1),
            key,
            commits,
        })
    }

    /// Signs `payload` (JSON) as a message on `topic` and waits until it is
    /// committed; returns its offset. Blocks the calling thread: call it
    /// from a thread of its own, never from async code.
    pub fn publish_blocking(&mut self, topic: &str, payload: Vec<u8>) -> Result<u64, SystemError> {
        let (received_ms, now_ns) = now();
        let seq = self.next_seq.max(now_ns);
        let envelope = Envelope {
            version: ENVELOPE_VERSION,
            topic: topic.to_owned(),
            key_id: self.key.id(),
            seq,
            timestamp_ms: received_ms,
            content_type: CONTENT_TYPE_JSON.to_owned(),
            headers: Vec::new(),
            encryption: None,
            salt: Salt::random().map_err(|_| SystemError::Build)?,
            payload,
        };
        let signed =
            batch::sign(&self.key, std::slice::from_ref(&envelope)).ok_or(SystemError::Build)?;
        let leaf = signed
            .tree
            .leaves()
            .first()
            .copied()
            .ok_or(SystemError::Build)?;
        let record = StoredRecord {
            received_ms,
            envelope,
            proof: signed.proof(0),
        };
        let record = codec::encode_body(&record).map_err(|_| SystemError::Build)?;
        let (reply, answer) = oneshot::channel();
        let request = CommitRequest {
            entries: vec![Entry {
                topic: topic.to_owned(),
                record: record.into(),
                key_id: self.key.id(),
                seq,
                // Written by this node's own writer, never replicated.
                replay: self.key.id(),
                leaf,
                principal: Arc::from(BROKER_PRINCIPAL),
            }],
            reply,
            // The broker's own messages are under no principal's quota.
            reserved: Reservation::default(),
            group: None,
        };
        self.commits
            .blocking_send(Command::Publish(request))
            .map_err(|_| SystemError::Stopped)?;
        let offsets = answer
            .blocking_recv()
            .map_err(|_| SystemError::Stopped)?
            .map_err(SystemError::Commit)?;
        self.next_seq = seq.saturating_add(1);
        offsets.first().copied().ok_or(SystemError::Stopped)
    }
}
