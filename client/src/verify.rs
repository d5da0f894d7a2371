//! End-to-end verification of delivered messages, against the publisher
//! keys this client trusts (never keys the broker sends), the topics each
//! key may write, and each key's sequence order.
//!
//! A batch costs one signature check, and most of its envelopes their leaf
//! hash and a node hash or two. Each record's proof is checked exactly as
//! if alone (its walk leads to a root, and its key signed that root with
//! the record's own leaf count and signature), but the walk is shortened:
//! the verifier remembers each step of the walks it verified for the
//! latest batches (the node reached, its place in the tree, and the path
//! left), keyed by signing key, leaf count and signature. A later walk
//! that reaches a remembered step with the same path left would hash its
//! way to the same root, so it ends there with that root
//! ([`merkle::walk_path`]); what follows (the known-root check, else the
//! signature check) is the same either way.
//!
//! Offsets and receive times are not signed, so an authentic record can be
//! delivered again at another offset (by a broker, or by an edited disk).
//! A verifier serves one subscription and remembers, per key, the highest
//! seq it accepted ([`SeqOrder`]): a repeated or lower seq is a replay.

use crate::limits::{KNOWN_TREES_MAX, KNOWN_WALKS_MAX};
use crate::order::SeqOrder;
use signet_proto::merkle::{Hash, Step};
use signet_proto::{ErrorCode, KeyId, PublicKey, StoredRecord, batch, codec, topic};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

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
    /// The steps of verified walks through the latest trees.
    walks: Walks,
}

/// Which signed batch a record's proof names, before its root is known.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WalkId {
    key_id: KeyId,
    leaf_count: u32,
    signature: [u8; 64],
}

/// Where a verified walk was at one node: the node's place (RFC 9162's
/// `fn`, `sn`) and the path that walk had left from there (its proof's
/// path, from `taken` on).
#[derive(Debug, Clone)]
struct Seen {
    f_n: u64,
    s_n: u64,
    path: Arc<[Hash]>,
    taken: usize,
}

/// The steps of the verified walks through one signed tree, by node.
#[derive(Debug, Clone)]
struct Walk {
    id: WalkId,
    root: Hash,
    steps: HashMap<Hash, Seen, BuildHasherDefault<NodeHasher>>,
}

impl Walk {
    /// The root, if a verified walk took `step` with `rest` left.
    fn ends(&self, step: &Step, rest: &[Hash]) -> Option<Hash> {
        let seen = self.steps.get(&step.node)?;
        (seen.f_n == step.f_n && seen.s_n == step.s_n && seen.path.get(seen.taken..) == Some(rest))
            .then_some(self.root)
    }
}

/// Hashes a tree node by its first eight bytes. Nodes are SHA-256
/// outputs, so these are as good as random; a node crafted to collide
/// costs a scan of one walk's table, which holds at most ~511 nodes.
#[derive(Debug, Default)]
struct NodeHasher(u64);

impl Hasher for NodeHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for (i, byte) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*byte) << (8 * i);
        }
    }

    fn write_usize(&mut self, _length: usize) {}
}

/// The walks of the latest [`KNOWN_WALKS_MAX`] verified trees, newest
/// last (a record is most likely of the newest batch).
#[derive(Debug, Clone, Default)]
struct Walks {
    trees: VecDeque<Walk>,
}

impl Walks {
    fn find(&self, id: &WalkId) -> Option<&Walk> {
        self.trees.iter().rev().find(|walk| walk.id == *id)
    }

    /// Remembers the `steps` of a verified walk along `path` to `root` in
    /// the tree `id` names.
    fn remember(&mut self, id: WalkId, root: Hash, path: &[Hash], steps: Vec<(Step, usize)>) {
        if steps.is_empty() {
            return;
        }
        let held = self
            .trees
            .iter()
            .rposition(|walk| walk.id == id && walk.root == root);
        let at = match held {
            Some(at) => at,
            None => {
                if self.trees.len() >= KNOWN_WALKS_MAX {
                    self.trees.pop_front();
                }
                self.trees.push_back(Walk {
                    id,
                    root,
                    steps: HashMap::default(),
                });
                self.trees.len() - 1
            }
        };
        let Some(walk) = self.trees.get_mut(at) else {
            return;
        };
        let path: Arc<[Hash]> = Arc::from(path);
        for (step, taken) in steps {
            walk.steps.entry(step.node).or_insert_with(|| Seen {
                f_n: step.f_n,
                s_n: step.s_n,
                path: path.clone(),
                taken,
            });
        }
    }

    fn clear(&mut self) {
        self.trees.clear();
    }
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
        let key_id = record.envelope.key_id;
        let signature: Option<[u8; 64]> = proof.signature.as_slice().try_into().ok();
        let id = signature.map(|signature| WalkId {
            key_id,
            leaf_count: proof.leaf_count,
            signature,
        });
        let known = id.as_ref().and_then(|id| self.walks.find(id));
        let mut steps = Vec::new();
        let mut remembered = false;
        let root = batch::proof_root_with(&record.envelope, proof, |step, rest| {
            if let Some(root) = known.and_then(|walk| walk.ends(step, rest)) {
                remembered = true;
                return Some(root);
            }
            steps.push((*step, proof.path.len() - rest.len()));
            None
        })
        .ok_or_else(|| rejected(ErrorCode::BadSignature, "Merkle proof does not verify"))?;
        let bad_signature = || rejected(ErrorCode::BadSignature, "signature does not verify");
        let (Some(signature), Some(id)) = (signature, id) else {
            return Err(bad_signature());
        };
        let tree = SignedTree {
            root,
            leaf_count: proof.leaf_count,
            signature,
        };
        // A remembered walk is of a tree in `trees` (both are cleared
        // together), so only a walk that met none needs the lookup.
        if !remembered && !self.trees.get(&key_id).is_some_and(|t| t.contains(&tree)) {
            let message = batch::batch_message(&key_id, proof.leaf_count, &root);
            if !key.verify(&message, &proof.signature) {
                return Err(bad_signature());
            }
            if self.count >= KNOWN_TREES_MAX {
                self.trees.clear();
                self.walks.clear();
                self.count = 0;
            }
            if self.trees.entry(key_id).or_default().insert(tree) {
                self.count += 1;
            }
        }
        self.walks.remember(id, root, &proof.path, steps);
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

    /// Steps remembered for all trees.
    fn remembered(known: &KnownTrees) -> usize {
        known.walks.trees.iter().map(|w| w.steps.len()).sum()
    }

    fn decoded(recs: &[Vec<u8>]) -> Vec<StoredRecord> {
        recs.iter().map(|r| codec::decode(r).unwrap()).collect()
    }

    /// A batch mate's walk ends at the first step a verified walk took:
    /// record 1 hashes one node, record 2 two, a repeat none (each new
    /// step is remembered, so the count shows where each walk ended).
    #[test]
    fn a_batch_mates_walk_ends_at_the_first_step_a_verified_walk_took() {
        let a = key(1);
        let recs = decoded(&records(&a, a.id(), 256));
        let mut known = KnownTrees::default();
        known.authenticate(a.public_key(), &recs[0]).unwrap();
        assert_eq!(remembered(&known), 9, "the leaf and eight nodes");
        known.authenticate(a.public_key(), &recs[1]).unwrap();
        assert_eq!(remembered(&known), 10, "record 1's leaf only");
        known.authenticate(a.public_key(), &recs[2]).unwrap();
        assert_eq!(remembered(&known), 12, "record 2's leaf and one node");
        known.authenticate(a.public_key(), &recs[2]).unwrap();
        assert_eq!(remembered(&known), 12, "a repeat ends at its leaf");
        for record in &recs[3..] {
            known.authenticate(a.public_key(), record).unwrap();
        }
        assert_eq!(remembered(&known), 511, "every leaf and node once");
    }

    /// Every record of a batch verified (so every step of its tree is
    /// remembered), then each record with one bit of one path hash flipped,
    /// or another leaf index, or another leaf count: the verifier's verdict
    /// is always the verdict of checking the record alone (refused), also
    /// when the walk meets a remembered step with a different path above
    /// it. 13 leaves, so some nodes are promoted.
    #[test]
    fn a_walk_meeting_remembered_steps_gives_the_verdict_of_the_record_alone() {
        let a = key(1);
        let recs = decoded(&records(&a, a.id(), 13));
        let mut known = KnownTrees::default();
        for record in &recs {
            known.authenticate(a.public_key(), record).unwrap();
        }
        let mut variants = Vec::new();
        for record in &recs {
            for j in 0..record.proof.path.len() {
                for bit in [0, 77, 255] {
                    let mut changed = record.clone();
                    changed.proof.path[j].0[bit / 8] ^= 1 << (bit % 8);
                    variants.push(changed);
                }
            }
            for index in 0..14 {
                let mut changed = record.clone();
                changed.proof.leaf_index = index;
                variants.push(changed);
            }
            for count in [12, 14, 16] {
                let mut changed = record.clone();
                changed.proof.leaf_count = count;
                variants.push(changed);
            }
        }
        let mut refused = 0;
        for changed in &variants {
            let alone = batch::verify_record(a.public_key(), &changed.envelope, &changed.proof);
            let verdict = known.authenticate(a.public_key(), changed);
            assert_eq!(verdict.is_ok(), alone, "{:?}", changed.proof);
            if let Err(e) = verdict {
                assert_eq!(e.code, ErrorCode::BadSignature);
                refused += 1;
            }
        }
        // Only the 13 unchanged leaf indexes verify.
        assert_eq!(refused, variants.len() - 13);
    }
}
