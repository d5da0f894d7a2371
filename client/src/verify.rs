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

use crate::limits::KNOWN_TREES_MAX;
use crate::order::SeqOrder;
use signet_proto::merkle::Hash;
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
    /// Batches already authenticated.
    known: KnownTrees,
    /// The highest seq accepted per key (only trusted keys reach it).
    order: SeqOrder,
}

/// A batch a trusted key signed, as one of its records' proofs names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SignedTree {
    root: Hash,
    leaf_count: u32,
    signature: [u8; 64],
}

/// Batches whose signature verified, per key, so each batch's Ed25519
/// signature is checked once per subscription.
#[derive(Debug, Clone, Default)]
struct KnownTrees {
    /// The trees, per signing key.
    trees: HashMap<KeyId, HashSet<SignedTree>>,
    /// Trees in `trees`, all keys together (at most [`KNOWN_TREES_MAX`]).
    count: usize,
}

impl Verifier {
    /// A verifier trusting exactly `trust`.
    pub fn new(trust: HashMap<KeyId, TrustedKey>) -> Verifier {
        Verifier {
            trust,
            known: KnownTrees::default(),
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
        let record = self.verify_any_order(subscribed, bytes)?;
        self.order
            .accept(&record.envelope.key_id, record.envelope.seq)
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
        let record = self.verify_any_order(subscribed, bytes)?;
        order
            .accept(&record.envelope.key_id, record.envelope.seq)
            .map_err(|detail| rejected(ErrorCode::Replay, detail))?;
        Ok(record)
    }

    /// As [`Verifier::verify`] without the seq order: for consumer-group
    /// deliveries, which come in any order and again after a nak or an
    /// expired lease. Everything else (topic, trusted key, proof,
    /// signature, the key's topics) is checked.
    pub fn verify_any_order(
        &mut self,
        subscribed: &str,
        bytes: &[u8],
    ) -> Result<StoredRecord, Rejected> {
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

impl KnownTrees {
    /// Checks that the record's proof leads to a root `key` signed, with
    /// exactly the record's own leaf count and signature: the same check
    /// as verifying the record alone ([`batch::verify_record`]), with the
    /// Ed25519 verification done once per batch.
    fn authenticate(&mut self, key: &PublicKey, record: &StoredRecord) -> Result<(), Rejected> {
        let proof = &record.proof;
        let root = batch::proof_root(&record.envelope, proof)
            .ok_or_else(|| rejected(ErrorCode::BadSignature, "Merkle proof does not verify"))?;
        let bad_signature = || rejected(ErrorCode::BadSignature, "signature does not verify");
        let signature: [u8; 64] = proof
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| bad_signature())?;
        let tree = SignedTree {
            root,
            leaf_count: proof.leaf_count,
            signature,
        };
        let key_id = record.envelope.key_id;
        if self.trees.get(&key_id).is_some_and(|t| t.contains(&tree)) {
            return Ok(());
        }
        let message = batch::batch_message(&key_id, proof.leaf_count, &root);
        if !key.verify(&message, &proof.signature) {
            return Err(bad_signature());
        }
        if self.count >= KNOWN_TREES_MAX {
            self.trees.clear();
            self.count = 0;
        }
        if self.trees.entry(key_id).or_default().insert(tree) {
            self.count += 1;
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

    /// Found by the `verify_records` fuzz target: once one record of a
    /// batch verified, another record of the same batch with a broken
    /// signature (or a wrong leaf count) was accepted from the cache, so
    /// the client yielded a record that does not verify alone.
    #[test]
    fn a_record_whose_own_proof_is_broken_is_refused_even_after_its_batch_verified() {
        let a = key(1);
        let recs = records(&a, a.id(), 4);
        let mut known = KnownTrees::default();
        let first: StoredRecord = codec::decode(&recs[0]).unwrap();
        assert!(known.authenticate(a.public_key(), &first).is_ok());
        let mut broken_signature: StoredRecord = codec::decode(&recs[1]).unwrap();
        broken_signature.proof.signature[7] ^= 1;
        let mut broken_count: StoredRecord = codec::decode(&recs[2]).unwrap();
        broken_count.proof.leaf_count = 3;
        for broken in [&broken_signature, &broken_count] {
            assert!(!batch::verify_record(
                a.public_key(),
                &broken.envelope,
                &broken.proof
            ));
            assert_eq!(
                known.authenticate(a.public_key(), broken).unwrap_err().code,
                ErrorCode::BadSignature
            );
        }
        let last: StoredRecord = codec::decode(&recs[3]).unwrap();
        assert!(known.authenticate(a.public_key(), &last).is_ok());
    }

    #[test]
    fn every_record_of_a_batch_verifies_in_any_order() {
        let a = key(1);
        let recs = records(&a, a.id(), 256);
        let mut v = verifier(&[&a]);
        // Authenticity in any order, on one batch cache (a subscription
        // would refuse a seq going back: that is the next test's subject).
        let mut known = KnownTrees::default();
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
