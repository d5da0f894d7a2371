//! End-to-end verification of delivered messages, against the publisher
//! keys this client trusts (never keys the broker sends), the topics each
//! key may write, and each key's sequence order.
//!
//! A batch costs one signature check, and most of its envelopes one or two
//! hashes: once a root is verified, every node on the verified path (and
//! every sibling the path names) is known to belong to a tree that key
//! signed. Another envelope of the batch is authentic as soon as its path
//! reaches one of those nodes, so the walk stops there. Known nodes are kept
//! per signing key, so a node of key A's tree never vouches for an envelope
//! that names key B. Leaf and node hashes are domain separated, so a leaf
//! can only match a leaf.
//!
//! Offsets and receive times are not signed, so an authentic record can be
//! delivered again at another offset (by a broker, or by an edited disk).
//! A verifier serves one subscription and remembers, per key, the highest
//! seq it accepted ([`SeqOrder`]): a repeated or lower seq is a replay.

use crate::limits::{BATCH_ENVELOPES_MAX, KNOWN_NODES_MAX};
use crate::order::SeqOrder;
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

/// A publisher key this client trusts, and the topics it may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The Ed25519 public key.
    pub key: PublicKey,
    /// Topic patterns this key may write (validated like the broker's).
    /// `[">"]`, the meaning of a plain trust entry, is every topic.
    pub topics: Vec<String>,
}

impl TrustedKey {
    /// A key trusted for every topic (a plain `"<key id>" = "ed25519:…"`
    /// trust entry).
    pub fn all_topics(key: PublicKey) -> TrustedKey {
        TrustedKey {
            key,
            topics: vec![">".to_owned()],
        }
    }

    /// Whether this key may write `name`.
    pub fn may_write(&self, name: &str) -> bool {
        self.topics.iter().any(|p| topic::matches(p, name))
    }
}

/// Checks the stored records of one subscription against trusted keys.
/// Clone a fresh one per subscription: it remembers verified tree nodes
/// and each key's highest accepted seq.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// The publisher keys trusted, by key id, with their topics.
    trust: HashMap<KeyId, TrustedKey>,
    /// Tree nodes already authenticated.
    known: KnownNodes,
    /// The highest seq accepted per key (only trusted keys reach it).
    order: SeqOrder,
}

/// Nodes of trees a trusted key signed, per key.
#[derive(Debug, Clone, Default)]
struct KnownNodes {
    /// The nodes, per signing key.
    nodes: HashMap<KeyId, HashSet<Hash>>,
    /// Nodes in `nodes`, all keys together (at most [`KNOWN_NODES_MAX`]).
    count: usize,
}

impl Verifier {
    /// A verifier trusting exactly `trust`.
    pub fn new(trust: HashMap<KeyId, TrustedKey>) -> Verifier {
        Verifier {
            trust,
            known: KnownNodes::default(),
            order: SeqOrder::default(),
        }
    }

    /// Decodes and verifies one record delivered for a subscription to
    /// `subscribed` (a topic name or pattern). The record must decode, be
    /// on the subscribed topic (else `BadSignature`), name a trusted key
    /// (`UnknownKey`), its proof must lead to a root that key signed
    /// (`BadSignature`), the key must be trusted for the record's topic
    /// (`Untrusted`), and its seq must be above every seq this verifier
    /// accepted from that key (`Replay`). Only an accepted record moves
    /// the key's seq.
    pub fn verify(&mut self, subscribed: &str, bytes: &[u8]) -> Result<StoredRecord, Rejected> {
        let record = self.authentic(subscribed, bytes)?;
        let envelope = &record.envelope;
        self.order
            .accept(&envelope.key_id, envelope.seq)
            .map_err(|detail| rejected(ErrorCode::Replay, detail))?;
        Ok(record)
    }

    /// Like [`Verifier::verify`], with the seq order kept by the caller in
    /// `order` (a pattern subscription keeps one per topic: a key's seqs
    /// rise within each topic, not across topics delivered side by side).
    pub(crate) fn verify_in(
        &mut self,
        subscribed: &str,
        bytes: &[u8],
        order: &mut SeqOrder,
    ) -> Result<StoredRecord, Rejected> {
        let record = self.authentic(subscribed, bytes)?;
        let envelope = &record.envelope;
        order
            .accept(&envelope.key_id, envelope.seq)
            .map_err(|detail| rejected(ErrorCode::Replay, detail))?;
        Ok(record)
    }

    /// Every check of [`Verifier::verify`] but the seq order.
    fn authentic(&mut self, subscribed: &str, bytes: &[u8]) -> Result<StoredRecord, Rejected> {
        let record: StoredRecord = codec::decode(bytes)
            .map_err(|_| rejected(ErrorCode::BadSignature, "record does not decode"))?;
        let envelope = &record.envelope;
        if !topic::matches(subscribed, &envelope.topic) {
            return Err(rejected(
                ErrorCode::BadSignature,
                "record is from another topic",
            ));
        }
        let trusted = self
            .trust
            .get(&envelope.key_id)
            .ok_or_else(|| rejected(ErrorCode::UnknownKey, "signing key is not trusted"))?;
        self.known.authenticate(&trusted.key, &record)?;
        if !trusted.may_write(&envelope.topic) {
            return Err(rejected(
                ErrorCode::Untrusted,
                "signing key is not trusted for this topic",
            ));
        }
        Ok(record)
    }
}

impl KnownNodes {
    /// Checks that the record's proof leads to a root `key` signed.
    fn authenticate(&mut self, key: &PublicKey, record: &StoredRecord) -> Result<(), Rejected> {
        let envelope = &record.envelope;
        let proof = &record.proof;
        if !proof.shape_ok() || proof.leaf_count as usize > BATCH_ENVELOPES_MAX {
            return Err(rejected(ErrorCode::BadSignature, "malformed proof"));
        }
        let leaf = merkle::leaf_hash(&envelope.canonical_bytes());
        let known = self.nodes.entry(envelope.key_id).or_default();
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
            return Ok(());
        }
        let message = batch::batch_message(&envelope.key_id, proof.leaf_count, &root);
        if !key.verify(&message, &proof.signature) {
            return Err(rejected(
                ErrorCode::BadSignature,
                "signature does not verify",
            ));
        }
        if self.count + walked.len() + proof.path.len() > KNOWN_NODES_MAX {
            self.nodes.clear();
            self.count = 0;
        }
        let known = self.nodes.entry(envelope.key_id).or_default();
        for node in walked.into_iter().chain(proof.path.iter().copied()) {
            if known.insert(node) {
                self.count += 1;
            }
        }
        Ok(())
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
                .map(|k| (k.id(), TrustedKey::all_topics(k.public_key().clone())))
                .collect(),
        )
    }

    #[test]
    fn every_record_of_a_batch_verifies_in_any_order() {
        let a = key(1);
        let recs = records(&a, a.id(), 256);
        let mut v = verifier(&[&a]);
        // Authenticity in any order, on one node cache (a subscription
        // would refuse a seq going back: that is the next test's subject).
        let mut known = KnownNodes::default();
        for i in (0..256).rev().step_by(3).chain(0..256) {
            let record: StoredRecord = codec::decode(&recs[i]).unwrap();
            assert!(
                known.authenticate(a.public_key(), &record).is_ok(),
                "record {i}"
            );
        }
        for (i, record) in recs.iter().enumerate() {
            assert!(v.verify("t.a", record).is_ok(), "record {i}");
        }
    }

    #[test]
    fn repeated_or_backwards_seq_is_replay_and_verifies_nothing_twice() {
        let a = key(1);
        let recs = records(&a, a.id(), 4);
        let mut v = verifier(&[&a]);
        v.verify("t.a", &recs[0]).unwrap();
        v.verify("t.a", &recs[2]).unwrap();
        for again in [&recs[2], &recs[1], &recs[0]] {
            assert_eq!(v.verify("t.a", again).unwrap_err().code, ErrorCode::Replay);
        }
        v.verify("t.a", &recs[3]).unwrap();
        // A record that fails verification does not move the key's seq.
        let mut forged: StoredRecord = codec::decode(&recs[3]).unwrap();
        forged.envelope.seq = 1000;
        let forged = codec::encode_body(&forged).unwrap();
        assert_eq!(
            v.verify("t.a", &forged).unwrap_err().code,
            ErrorCode::BadSignature
        );
        let later = records(&a, a.id(), 8);
        v.verify("t.a", &later[7]).unwrap();
    }

    #[test]
    fn trusted_key_outside_its_topics_is_untrusted_and_moves_no_seq() {
        let a = key(1);
        let recs = records(&a, a.id(), 2);
        let scoped = |topics: &[&str]| {
            Verifier::new(HashMap::from([(
                a.id(),
                TrustedKey {
                    key: a.public_key().clone(),
                    topics: topics.iter().map(|t| t.to_string()).collect(),
                },
            )]))
        };
        let mut v = scoped(&["b.>", "t.b"]);
        assert_eq!(
            v.verify("t.a", &recs[0]).unwrap_err().code,
            ErrorCode::Untrusted
        );
        assert_eq!(
            v.verify("t.a", &recs[0]).unwrap_err().code,
            ErrorCode::Untrusted,
            "an untrusted record moves no seq"
        );
        let mut v = scoped(&["b.>", "t.*"]);
        v.verify("t.a", &recs[0]).unwrap();
        v.verify("t.a", &recs[1]).unwrap();
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
