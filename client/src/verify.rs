//! End-to-end verification of delivered messages, against the publisher
//! keys this client trusts (never keys the broker sends).
//!
//! A batch costs one signature check: a verified (key, leaf count, root,
//! signature) is remembered (bounded), and the other envelopes of the same
//! batch only need their Merkle path hashed.

use signet_proto::merkle::Hash;
use signet_proto::{ErrorCode, KeyId, PublicKey, StoredRecord, batch, codec, topic};
use std::collections::{HashMap, HashSet};

/// Verified batch roots remembered before the cache is cleared.
pub const VERIFIED_ROOTS_MAX: usize = 4096;

/// Why a delivered record is not good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The code reported to the application.
    pub code: ErrorCode,
    /// What failed.
    pub detail: &'static str,
}

fn rejected(code: ErrorCode, detail: &'static str) -> Rejected {
    Rejected { code, detail }
}

/// Checks stored records against trusted keys.
#[derive(Debug, Clone)]
pub struct Verifier {
    trust: HashMap<KeyId, PublicKey>,
    verified: HashSet<(KeyId, u32, Hash, Vec<u8>)>,
}

impl Verifier {
    /// A verifier trusting exactly `trust`.
    pub fn new(trust: HashMap<KeyId, PublicKey>) -> Verifier {
        Verifier {
            trust,
            verified: HashSet::new(),
        }
    }

    /// Decodes and verifies one record delivered for a subscription to
    /// `subscribed` (a topic name or pattern). The record must decode, name
    /// a trusted key, be on the subscribed topic, and its proof must lead to
    /// a root that key signed.
    pub fn verify(&mut self, subscribed: &str, bytes: &[u8]) -> Result<StoredRecord, Rejected> {
        let record: StoredRecord =
            codec::decode(bytes).map_err(|_| rejected(ErrorCode::BadSignature, "record does not decode"))?;
        let envelope = &record.envelope;
        if !topic::matches(subscribed, &envelope.topic) {
            return Err(rejected(ErrorCode::BadSignature, "record is from another topic"));
        }
        let key = self
            .trust
            .get(&envelope.key_id)
            .ok_or_else(|| rejected(ErrorCode::UnknownKey, "signing key is not trusted"))?;
        let root = batch::proof_root(envelope, &record.proof)
            .ok_or_else(|| rejected(ErrorCode::BadSignature, "Merkle proof does not verify"))?;
        let cache_key = (
            envelope.key_id,
            record.proof.leaf_count,
            root,
            record.proof.signature.clone(),
        );
        if self.verified.contains(&cache_key) {
            return Ok(record);
        }
        let message = batch::batch_message(&envelope.key_id, record.proof.leaf_count, &root);
        if !key.verify(&message, &record.proof.signature) {
            return Err(rejected(ErrorCode::BadSignature, "signature does not verify"));
        }
        if self.verified.len() >= VERIFIED_ROOTS_MAX {
            self.verified.clear();
        }
        self.verified.insert(cache_key);
        Ok(record)
    }
}
