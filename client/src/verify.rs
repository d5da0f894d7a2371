//! End-to-end verification of delivered messages, against the publisher
//! keys this client trusts (never keys the broker sends).
//!
//! A batch costs one signature check, and most of its envelopes one or two
//! hashes: once a root is verified, every node on the verified path (and
//! every sibling the path names) is known to belong to a tree that key
//! signed. Another envelope of the batch is authentic as soon as its path
//! reaches one of those nodes, so the walk stops there. Known nodes are kept
//! per signing key, so a node of key A's tree never vouches for an envelope
//! that names key B. Leaf and node hashes are domain separated, so a leaf
//! can only match a leaf.

use crate::limits::{BATCH_ENVELOPES_MAX, KNOWN_NODES_MAX};
use signet_proto::merkle::{self, Hash};
use signet_proto::{ErrorCode, KeyId, PublicKey, StoredRecord, batch, codec, topic};
use std::collections::{HashMap, HashSet};

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
    /// The publisher keys trusted, by key id.
    trust: HashMap<KeyId, PublicKey>,
    /// Nodes of trees a trusted key signed, per key.
    known: HashMap<KeyId, HashSet<Hash>>,
    /// Nodes in `known`, all keys together (at most [`KNOWN_NODES_MAX`]).
    known_count: usize,
}

impl Verifier {
    /// A verifier trusting exactly `trust`.
    pub fn new(trust: HashMap<KeyId, PublicKey>) -> Verifier {
        Verifier {
            trust,
            known: HashMap::new(),
            known_count: 0,
        }
    }

    /// Decodes and verifies one record delivered for a subscription to
    /// `subscribed` (a topic name or pattern). The record must decode, name
    /// a trusted key, be on the subscribed topic, and its proof must lead to
    /// a root that key signed.
    pub fn verify(&mut self, subscribed: &str, bytes: &[u8]) -> Result<StoredRecord, Rejected> {
        let record: StoredRecord = codec::decode(bytes)
            .map_err(|_| rejected(ErrorCode::BadSignature, "record does not decode"))?;
        let envelope = &record.envelope;
        if !topic::matches(subscribed, &envelope.topic) {
            return Err(rejected(
                ErrorCode::BadSignature,
                "record is from another topic",
            ));
        }
        let key = self
            .trust
            .get(&envelope.key_id)
            .ok_or_else(|| rejected(ErrorCode::UnknownKey, "signing key is not trusted"))?;
        let proof = &record.proof;
        if !proof.shape_ok() || proof.leaf_count as usize > BATCH_ENVELOPES_MAX {
            return Err(rejected(ErrorCode::BadSignature, "malformed proof"));
        }
        let leaf = merkle::leaf_hash(&envelope.canonical_bytes());
        let known = self.known.entry(envelope.key_id).or_default();
        let mut walked = Vec::with_capacity(proof.path.len() * 2 + 2);
        let root = merkle::walk_path(
            &leaf,
            u64::from(proof.leaf_index),
            u64::from(proof.leaf_count),
            &proof.path,
            |node| {
                walked.push(*node);
                known.contains(node)
            },
        )
        .ok_or_else(|| rejected(ErrorCode::BadSignature, "Merkle proof does not verify"))?;
        if known.contains(&root) {
            return Ok(record);
        }
        let message = batch::batch_message(&envelope.key_id, proof.leaf_count, &root);
        if !key.verify(&message, &proof.signature) {
            return Err(rejected(
                ErrorCode::BadSignature,
                "signature does not verify",
            ));
        }
        if self.known_count + walked.len() + proof.path.len() > KNOWN_NODES_MAX {
            self.known.clear();
            self.known_count = 0;
        }
        let known = self.known.entry(envelope.key_id).or_default();
        for node in walked.into_iter().chain(proof.path.iter().copied()) {
            if known.insert(node) {
                self.known_count += 1;
            }
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_proto::envelope::{CONTENT_TYPE_OCTET, Envelope};
    use signet_proto::{SigningKey, codec};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_seed(&[seed; 32]).unwrap()
    }

    fn envelope(key_id: KeyId, i: usize) -> Envelope {
        Envelope {
            version: 1,
            salt: signet_proto::Salt([i as u8; 16]),
            topic: "t.a".into(),
            key_id,
            seq: i as u64 + 1,
            timestamp_ms: 1,
            content_type: CONTENT_TYPE_OCTET.into(),
            headers: vec![],
            encryption: None,
            payload: vec![i as u8; 8],
        }
    }

    fn records(signer: &SigningKey, claimed: KeyId, n: usize) -> Vec<Vec<u8>> {
        let envelopes: Vec<Envelope> = (0..n).map(|i| envelope(claimed, i)).collect();
        let signed = batch::sign(signer, &envelopes).unwrap();
        envelopes
            .into_iter()
            .enumerate()
            .map(|(i, envelope)| {
                codec::encode_body(&StoredRecord {
                    received_ms: 0,
                    envelope,
                    proof: signed.proof(i),
                })
                .unwrap()
            })
            .collect()
    }

    fn verifier(keys: &[&SigningKey]) -> Verifier {
        Verifier::new(
            keys.iter()
                .map(|k| (k.id(), k.public_key().clone()))
                .collect(),
        )
    }

    #[test]
    fn every_record_of_a_batch_verifies_in_any_order() {
        let a = key(1);
        let recs = records(&a, a.id(), 256);
        let mut v = verifier(&[&a]);
        for i in (0..256).rev().step_by(3).chain(0..256) {
            assert!(v.verify("t.a", &recs[i]).is_ok(), "record {i}");
        }
    }

    #[test]
    fn tampered_record_fails_after_its_batch_mates_verified() {
        let a = key(1);
        let recs = records(&a, a.id(), 16);
        let mut v = verifier(&[&a]);
        for r in &recs[..8] {
            v.verify("t.a", r).unwrap();
        }
        let mut record: StoredRecord = codec::decode(&recs[9]).unwrap();
        record.envelope.payload[0] ^= 1;
        let bytes = codec::encode_body(&record).unwrap();
        assert_eq!(
            v.verify("t.a", &bytes).unwrap_err().code,
            ErrorCode::BadSignature
        );
    }

    #[test]
    fn node_of_one_keys_tree_never_vouches_for_another_key() {
        let (a, b) = (key(1), key(2));
        // A signs a batch whose envelopes claim to be B's.
        let forged = records(&a, b.id(), 4);
        let honest = records(&a, a.id(), 4);
        let mut v = verifier(&[&a, &b]);
        for r in &honest {
            v.verify("t.a", r).unwrap();
        }
        for r in &forged {
            assert_eq!(
                v.verify("t.a", r).unwrap_err().code,
                ErrorCode::BadSignature
            );
        }
    }

    #[test]
    fn untrusted_key_and_foreign_topic_are_refused() {
        let a = key(1);
        let recs = records(&a, a.id(), 2);
        assert_eq!(
            verifier(&[]).verify("t.a", &recs[0]).unwrap_err().code,
            ErrorCode::UnknownKey
        );
        assert_eq!(
            verifier(&[&a]).verify("t.b", &recs[0]).unwrap_err().code,
            ErrorCode::BadSignature
        );
    }
}
