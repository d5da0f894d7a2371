//! What the client does to payloads besides signing: encrypt to the
//! recipients its client file names for a topic, decrypt with its own
//! X25519 keys, and check payloads against its own copies of schemas
//! (before sending; for encrypted topics also after decrypting, since the
//! broker cannot see those payloads).

use crate::error::Error;
use crate::message::Message;
use signet_proto::crypt::{self, ContentKey, CryptError, DecryptionKey, RecipientKey};

/// Content keys of one batch, by recipient set.
pub(crate) type BatchKeys = std::collections::HashMap<usize, ContentKey>;
use signet_proto::schema::Schema;
use signet_proto::{Envelope, ErrorCode, StoredRecord, topic};

/// Keys and schemas from the client file.
#[derive(Default)]
pub(crate) struct Payloads {
    /// This client's X25519 private keys (several during a rotation).
    pub keys: Vec<DecryptionKey>,
    /// Recipients per topic pattern (first match wins, in name order).
    pub recipients: Vec<(String, Vec<RecipientKey>)>,
    /// Schemas per topic pattern (first match wins, in name order).
    pub schemas: Vec<(String, Schema)>,
}

fn first_match<'a, T>(list: &'a [(String, T)], name: &str) -> Option<&'a T> {
    list.iter()
        .find(|(p, _)| topic::matches(p, name))
        .map(|(_, t)| t)
}

impl Payloads {
    /// Checks a payload against this client's schema for the topic, if any.
    pub fn validate(&self, topic: &str, content_type: &str, payload: &[u8]) -> Result<(), String> {
        match first_match(&self.schemas, topic) {
            Some(schema) => schema
                .check(content_type, payload)
                .map_err(|v| format!("schema violation {v}")),
            None => Ok(()),
        }
    }

    /// Encrypts the envelope's payload when the client file names
    /// recipients for its topic. `batch_keys` holds this batch's content
    /// keys, one per recipient set, drawn on first use.
    pub fn seal(&self, envelope: &mut Envelope, batch_keys: &mut BatchKeys) -> Result<(), Error> {
        let failed = |e: CryptError| Error::Invalid {
            code: ErrorCode::EncryptionRequired,
            detail: e.to_string(),
        };
        let Some(index) = self
            .recipients
            .iter()
            .position(|(p, _)| topic::matches(p, &envelope.topic))
        else {
            return Ok(());
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = batch_keys.entry(index) {
            slot.insert(ContentKey::seal_to(&self.recipients[index].1).map_err(failed)?);
        }
        match batch_keys.get(&index) {
            Some(key) => key.encrypt(envelope).map_err(failed),
            None => Err(failed(CryptError::Failed)),
        }
    }

    /// Turns a verified record into a message: decrypts an encrypted payload
    /// (a typed `NotARecipient` when this client holds none of its keys) and
    /// validates it against the client's schema for the topic.
    pub fn open(&self, offset: u64, record: StoredRecord) -> Result<Message, Error> {
        let e = record.envelope;
        let failed = |code: ErrorCode, detail: String| Error::Verify {
            offset,
            code,
            detail,
        };
        let payload = match &e.encryption {
            None => e.payload,
            Some(_) => {
                let plaintext = crypt::decrypt(&e, &self.keys).map_err(|err| match err {
                    CryptError::NotARecipient => failed(ErrorCode::NotARecipient, err.to_string()),
                    CryptError::UnsupportedSuite => {
                        failed(ErrorCode::UnsupportedSuite, err.to_string())
                    }
                    // A key commitment mismatch included: a publisher
                    // showing recipients different plaintexts.
                    other => failed(ErrorCode::BadSignature, other.to_string()),
                })?;
                self.validate(&e.topic, &e.content_type, &plaintext)
                    .map_err(|detail| failed(ErrorCode::SchemaViolation, detail))?;
                plaintext
            }
        };
        Ok(Message {
            offset,
            topic: e.topic,
            key_id: e.key_id,
            seq: e.seq,
            timestamp_ms: e.timestamp_ms,
            received_ms: record.received_ms,
            content_type: e.content_type,
            headers: e.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            payload,
        })
    }
}
