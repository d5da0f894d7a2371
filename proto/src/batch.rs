//! Batch signatures: one Ed25519 signature over the Merkle root of 1..=256
//! envelopes, each envelope then carrying a [`Proof`] so it verifies alone.
//!
//! The signed message is
//! `"signet/v1/batch\0" ‖ key_id (16) ‖ leaf_count (u32 BE) ‖ root (32)`.

use crate::envelope::{Envelope, Proof};
use crate::keys::{KeyId, PublicKey, SigningKey};
use crate::limits::BATCH_ENVELOPES_MAX;
use crate::merkle::{self, Hash, Step, Tree};

/// Domain-separation prefix of the batch message.
pub const BATCH_CONTEXT: &[u8] = b"signet/v1/batch\0";

/// Length of the batch message, in bytes.
pub const BATCH_MESSAGE_BYTES: usize = BATCH_CONTEXT.len() + 16 + 4 + 32;

/// The bytes a batch signature covers.
pub fn batch_message(key_id: &KeyId, leaf_count: u32, root: &Hash) -> [u8; BATCH_MESSAGE_BYTES] {
    let mut out = [0u8; BATCH_MESSAGE_BYTES];
    let (context, rest) = out.split_at_mut(BATCH_CONTEXT.len());
    context.copy_from_slice(BATCH_CONTEXT);
    let (id, rest) = rest.split_at_mut(16);
    id.copy_from_slice(&key_id.0);
    let (count, root_out) = rest.split_at_mut(4);
    count.copy_from_slice(&leaf_count.to_be_bytes());
    root_out.copy_from_slice(&root.0);
    out
}

/// The Merkle leaves of a batch of envelopes.
pub fn leaves(envelopes: &[Envelope]) -> Vec<Hash> {
    envelopes
        .iter()
        .map(|e| merkle::leaf_hash(&e.canonical_bytes()))
        .collect()
}

/// A signed batch: the tree and the signature over its root.
#[derive(Debug, Clone)]
pub struct SignedBatch {
    /// The Merkle tree over the batch's leaves.
    pub tree: Tree,
    /// Ed25519 signature over [`batch_message`].
    pub signature: Vec<u8>,
}

impl SignedBatch {
    /// The proof for leaf `index`.
    pub fn proof(&self, index: usize) -> Proof {
        Proof {
            signature: self.signature.clone(),
            leaf_index: index as u32,
            leaf_count: self.tree.leaf_count() as u32,
            path: self.tree.path(index),
        }
    }
}

/// Signs 1..=[`BATCH_ENVELOPES_MAX`] envelopes with `key`. Returns `None` for
/// an empty or oversized batch.
pub fn sign(key: &SigningKey, envelopes: &[Envelope]) -> Option<SignedBatch> {
    if envelopes.len() > BATCH_ENVELOPES_MAX {
        return None;
    }
    let tree = Tree::build(leaves(envelopes))?;
    let message = batch_message(&key.id(), tree.leaf_count() as u32, &tree.root());
    Some(SignedBatch {
        signature: key.sign(&message).to_vec(),
        tree,
    })
}

/// Checks a batch signature over the tree of `leaves`, as the broker does
/// on ingest (the tree is rebuilt, no paths travel). Returns the signed
/// batch, whose proofs are then stored with each envelope.
pub fn verify_leaves(key: &PublicKey, leaves: Vec<Hash>, signature: &[u8]) -> Option<SignedBatch> {
    if leaves.len() > BATCH_ENVELOPES_MAX {
        return None;
    }
    let tree = Tree::build(leaves)?;
    let message = batch_message(&key.id(), tree.leaf_count() as u32, &tree.root());
    key.verify(&message, signature).then(|| SignedBatch {
        tree,
        signature: signature.to_vec(),
    })
}

/// The root an envelope's proof leads to, or `None` if the proof is
/// malformed or cannot belong to a tree of its stated size.
pub fn proof_root(envelope: &Envelope, proof: &Proof) -> Option<Hash> {
    proof_root_with(envelope, proof, |_, _| None)
}

/// As [`proof_root`], offering each step of the walk to `known` (see
/// [`merkle::walk_path`]): a verifier that remembers the steps of walks it
/// already verified ends a walk at the first one it meets.
pub fn proof_root_with(
    envelope: &Envelope,
    proof: &Proof,
    known: impl FnMut(&Step, &[Hash]) -> Option<Hash>,
) -> Option<Hash> {
    if !proof.shape_ok() || proof.leaf_count as usize > BATCH_ENVELOPES_MAX {
        return None;
    }
    let leaf = merkle::leaf_hash(&envelope.canonical_bytes());
    merkle::walk_path(
        &leaf,
        u64::from(proof.leaf_index),
        u64::from(proof.leaf_count),
        &proof.path,
        known,
    )
}

/// Verifies one stored envelope on its own: the proof leads to a root, and
/// `key` signed that root. The caller checks that `key` is the one the
/// envelope names and that it trusts it.
pub fn verify_record(key: &PublicKey, envelope: &Envelope, proof: &Proof) -> bool {
    match proof_root(envelope, proof) {
        Some(root) => {
            let message = batch_message(&key.id(), proof.leaf_count, &root);
            key.verify(&message, &proof.signature)
        }
        None => false,
    }
}
