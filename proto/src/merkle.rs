//! Merkle trees over envelope hashes, RFC 6962 style.
//!
//! Leaves are `SHA-256(0x00 ‖ canonical bytes)`, internal nodes
//! `SHA-256(0x01 ‖ left ‖ right)`, so a leaf hash can never pass for a node.
//! The tree over `n` leaves is RFC 6962's (split at the largest power of two
//! below `n`); built bottom-up, an odd last node is promoted unchanged, which
//! gives the same tree. Proofs are RFC 6962 audit paths, checked with the
//! RFC 9162 §2.1.3.2 algorithm.

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Length of a hash, in bytes.
pub const HASH_BYTES: usize = 32;

/// A SHA-256 value: a leaf, a node or a root.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hash(#[serde(with = "crate::fixed")] pub [u8; HASH_BYTES]);

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", hex::encode(self.0))
    }
}

fn finish(ctx: Context) -> Hash {
    let mut out = [0u8; HASH_BYTES];
    out.copy_from_slice(ctx.finish().as_ref());
    Hash(out)
}

/// The leaf hash of an envelope's canonical bytes.
pub fn leaf_hash(canonical: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(canonical);
    finish(ctx)
}

/// The hash of an internal node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(&left.0);
    ctx.update(&right.0);
    finish(ctx)
}

/// A whole tree, kept level by level so every path is read off without
/// rehashing. Level 0 is the leaves; the last level is the root alone.
#[derive(Debug, Clone)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// The leaf hashes, in order.
    pub fn leaves(&self) -> &[Hash] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    /// Builds the tree over `leaves`. Returns `None` for no leaves.
    pub fn build(leaves: Vec<Hash>) -> Option<Tree> {
        if leaves.is_empty() {
            return None;
        }
        let mut levels = vec![leaves];
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node_hash(left, right),
                    [odd] => *odd,
                    _ => unreachable!("chunks(2) yields one or two"),
                })
                .collect();
            levels.push(above);
        }
        Some(Tree { levels })
    }

    /// Number of leaves.
    pub fn leaf_count(&self) -> usize {
        self.levels[0].len()
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        self.levels[self.levels.len() - 1][0]
    }

    /// The audit path of leaf `index`, leaf to root (empty for one leaf).
    pub fn path(&self, mut index: usize) -> Vec<Hash> {
        let mut path = Vec::with_capacity(self.levels.len());
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = index ^ 1;
            if let Some(hash) = level.get(sibling) {
                path.push(*hash);
            }
            index >>= 1;
        }
        path
    }
}

/// The root implied by `leaf` at `index` of `count` leaves with `path`, or
/// `None` if the path cannot belong to such a tree (RFC 9162 §2.1.3.2).
pub fn root_from_path(leaf: &Hash, index: u64, count: u64, path: &[Hash]) -> Option<Hash> {
    walk_path(leaf, index, count, path, |_, _| None)
}

/// Where a walk from a leaf to the root stands: the node it reached and
/// that node's place (RFC 9162's `fn` and `sn` at that point). The rest of
/// the walk depends on nothing else but the path still to take, so two
/// walks at the same step with the same path left end at the same root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Step {
    /// The leaf, or the node computed last.
    pub node: Hash,
    /// Its index among the nodes of its level (`fn`).
    pub f_n: u64,
    /// The index of the last node of its level (`sn`).
    pub s_n: u64,
}

/// Walks from `leaf` towards the root as [`root_from_path`] does, offering
/// the leaf and each computed node, with the path still to take, to
/// `known`. If `known` answers a root, the walk ends there with it: the
/// caller vouches that an earlier walk from the same [`Step`] with the same
/// path left reached that root (so the answer is the one the whole walk
/// would give). Otherwise the root, or `None` for an impossible path.
pub fn walk_path(
    leaf: &Hash,
    index: u64,
    count: u64,
    path: &[Hash],
    mut known: impl FnMut(&Step, &[Hash]) -> Option<Hash>,
) -> Option<Hash> {
    if index >= count {
        return None;
    }
    let mut step = Step {
        node: *leaf,
        f_n: index,
        s_n: count - 1,
    };
    if let Some(root) = known(&step, path) {
        return Some(root);
    }
    for (taken, p) in path.iter().enumerate() {
        if step.s_n == 0 {
            return None;
        }
        if step.f_n & 1 == 1 || step.f_n == step.s_n {
            step.node = node_hash(p, &step.node);
            while step.f_n & 1 == 0 && step.f_n != 0 {
                step.f_n >>= 1;
                step.s_n >>= 1;
            }
        } else {
            step.node = node_hash(&step.node, p);
        }
        step.f_n >>= 1;
        step.s_n >>= 1;
        if let Some(root) = known(&step, &path[taken + 1..]) {
            return Some(root);
        }
    }
    (step.s_n == 0).then_some(step.node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u32).to_be_bytes()))
            .collect()
    }

    /// RFC 6962 MTH, written recursively as the RFC gives it.
    fn mth(leaves: &[Hash]) -> Hash {
        if leaves.len() == 1 {
            return leaves[0];
        }
        // The largest power of two smaller than n.
        let k = 1usize << (usize::BITS - 1 - (leaves.len() - 1).leading_zeros());
        node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
    }

    #[test]
    fn bottom_up_tree_equals_rfc6962_mth() {
        for n in 1..=70 {
            let l = leaves(n);
            let tree = Tree::build(l.clone()).unwrap();
            assert_eq!(tree.root(), mth(&l), "n = {n}");
        }
    }

    #[test]
    fn every_path_verifies_for_its_own_leaf_only() {
        for n in [1usize, 2, 3, 5, 7, 8, 13, 256] {
            let l = leaves(n);
            let tree = Tree::build(l.clone()).unwrap();
            for (i, leaf) in l.iter().enumerate() {
                let path = tree.path(i);
                assert!(path.len() <= 8);
                assert_eq!(
                    root_from_path(leaf, i as u64, n as u64, &path),
                    Some(tree.root())
                );
                if n > 1 {
                    let other = (i + 1) % n;
                    assert_ne!(
                        root_from_path(leaf, other as u64, n as u64, &path),
                        Some(tree.root())
                    );
                }
            }
        }
    }

    #[test]
    fn batch_of_one_has_empty_path_and_leaf_root() {
        let l = leaves(1);
        let tree = Tree::build(l.clone()).unwrap();
        assert!(tree.path(0).is_empty());
        assert_eq!(tree.root(), l[0]);
    }

    #[test]
    fn rejects_index_out_of_range_and_long_paths() {
        let l = leaves(4);
        let tree = Tree::build(l.clone()).unwrap();
        assert_eq!(root_from_path(&l[0], 4, 4, &tree.path(0)), None);
        let mut long = tree.path(0);
        long.push(l[1]);
        assert_eq!(root_from_path(&l[0], 0, 4, &long), None);
        assert_eq!(root_from_path(&l[0], 0, 4, &tree.path(0)[..1]), None);
    }
}
