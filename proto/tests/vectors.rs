//! Test vectors: canonical bytes, leaf hashes, Merkle roots, paths and
//! batch signatures for batches of 1, 2, 3 and 256 envelopes, pinned in
//! `tests/vectors/vectors.json` so another implementation can check itself.
//! Regenerate (only when the format deliberately changes) with
//! `SIGNET_WRITE_VECTORS=1 cargo test -p signet-proto --test vectors`.

use serde_json::{Value, json};
use signet_proto::envelope::{CONTENT_TYPE_JSON, Envelope, Header};
use signet_proto::merkle::{self, Hash};
use signet_proto::{KeyId, Salt, SigningKey, batch};

const SEED: [u8; 32] = [7; 32];
const SIZES: [usize; 4] = [1, 2, 3, 256];

/// Envelope `i`'s salt: byte `j` is `(16·i + j) mod 256`.
fn salt(i: usize) -> Salt {
    Salt(std::array::from_fn(|j| (16 * i + j) as u8))
}

fn envelope(key: KeyId, i: usize) -> Envelope {
    Envelope {
        version: 1,
        salt: salt(i),
        topic: format!("vectors.t{}", i % 3),
        key_id: key,
        seq: i as u64 + 1,
        timestamp_ms: 1_700_000_000_000 + i as u64,
        content_type: CONTENT_TYPE_JSON.into(),
        headers: if i.is_multiple_of(2) {
            vec![Header {
                name: "h".into(),
                value: vec![i as u8],
            }]
        } else {
            vec![]
        },
        encryption: None,
        payload: format!("{{\"i\":{i}}}").into_bytes(),
    }
}

fn hx(h: &Hash) -> String {
    hex::encode(h.0)
}

fn build() -> Value {
    let key = SigningKey::from_seed(&SEED).unwrap();
    let mut batches = Vec::new();
    for size in SIZES {
        let envelopes: Vec<Envelope> = (0..size).map(|i| envelope(key.id(), i)).collect();
        let signed = batch::sign(&key, &envelopes).unwrap();
        let shown: Vec<usize> = if size <= 3 {
            (0..size).collect()
        } else {
            vec![0, 1, 128, 255]
        };
        let leaves: Vec<Value> = shown
            .iter()
            .map(|&i| {
                let e = &envelopes[i];
                json!({
                    "index": i,
                    "salt_hex": hex::encode(e.salt.0),
                    "topic": e.topic,
                    "seq": e.seq,
                    "timestamp_ms": e.timestamp_ms,
                    "content_type": e.content_type,
                    "headers": e.headers.iter().map(|h| json!([h.name, hex::encode(&h.value)])).collect::<Vec<_>>(),
                    "payload_hex": hex::encode(&e.payload),
                    "canonical_hex": hex::encode(e.canonical_bytes()),
                    "leaf_hex": hx(&merkle::leaf_hash(&e.canonical_bytes())),
                    "path_hex": signed.tree.path(i).iter().map(hx).collect::<Vec<_>>(),
                })
            })
            .collect();
        batches.push(json!({
            "size": size,
            "root_hex": hx(&signed.tree.root()),
            "batch_message_hex": hex::encode(batch::batch_message(&key.id(), size as u32, &signed.tree.root())),
            "signature_hex": hex::encode(&signed.signature),
            "leaves": leaves,
        }));
    }
    json!({
        "description": "Signet v1 vectors. Envelope i of every batch: salt bytes (16i+j) mod 256 for j = 0..15, topic vectors.t{i%3}, seq i+1, timestamp 1700000000000+i, content type application/json, header (\"h\", [i]) when i is even, payload {\"i\":i}, no encryption.",
        "seed_hex": hex::encode(SEED),
        "public_key": key.public_key().to_string(),
        "key_id": key.id().to_hex(),
        "batches": batches,
    })
}

fn path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/vectors.json")
}

#[test]
fn vectors_match_pinned_file() {
    let built = build();
    if std::env::var_os("SIGNET_WRITE_VECTORS").is_some() {
        std::fs::write(path(), serde_json::to_string_pretty(&built).unwrap() + "\n").unwrap();
    }
    let pinned: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    assert_eq!(built, pinned, "vectors changed: the wire format moved");
}

#[test]
fn pinned_signatures_verify_with_pinned_key() {
    let pinned: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    let key: signet_proto::PublicKey = pinned["public_key"].as_str().unwrap().parse().unwrap();
    for b in pinned["batches"].as_array().unwrap() {
        let message = hex::decode(b["batch_message_hex"].as_str().unwrap()).unwrap();
        let signature = hex::decode(b["signature_hex"].as_str().unwrap()).unwrap();
        assert!(key.verify(&message, &signature));
        let root = hex::decode(b["root_hex"].as_str().unwrap()).unwrap();
        for leaf in b["leaves"].as_array().unwrap() {
            let l: [u8; 32] = hex::decode(leaf["leaf_hex"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            let path: Vec<Hash> = leaf["path_hex"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    Hash(
                        hex::decode(p.as_str().unwrap())
                            .unwrap()
                            .try_into()
                            .unwrap(),
                    )
                })
                .collect();
            let got = merkle::root_from_path(
                &Hash(l),
                leaf["index"].as_u64().unwrap(),
                b["size"].as_u64().unwrap(),
                &path,
            )
            .unwrap();
            assert_eq!(got.0.to_vec(), root);
        }
    }
}

#[test]
fn every_envelope_of_every_batch_verifies_alone() {
    let key = SigningKey::from_seed(&SEED).unwrap();
    for size in SIZES {
        let envelopes: Vec<Envelope> = (0..size).map(|i| envelope(key.id(), i)).collect();
        let signed = batch::sign(&key, &envelopes).unwrap();
        for (i, e) in envelopes.iter().enumerate() {
            assert!(batch::verify_record(key.public_key(), e, &signed.proof(i)));
        }
    }
}

#[test]
fn proof_moved_to_another_leaf_fails() {
    let key = SigningKey::from_seed(&SEED).unwrap();
    for size in [2usize, 3, 256] {
        let envelopes: Vec<Envelope> = (0..size).map(|i| envelope(key.id(), i)).collect();
        let signed = batch::sign(&key, &envelopes).unwrap();
        // Envelope 1 carrying envelope 0's proof.
        assert!(!batch::verify_record(
            key.public_key(),
            &envelopes[1],
            &signed.proof(0)
        ));
        // Envelope 0's proof with envelope 1's index.
        let mut moved = signed.proof(0);
        moved.leaf_index = 1;
        assert!(!batch::verify_record(
            key.public_key(),
            &envelopes[0],
            &moved
        ));
    }
}

#[test]
fn leaf_hash_passed_off_as_node_fails() {
    let key = SigningKey::from_seed(&SEED).unwrap();
    let envelopes: Vec<Envelope> = (0..4).map(|i| envelope(key.id(), i)).collect();
    let signed = batch::sign(&key, &envelopes).unwrap();
    let leaves = batch::leaves(&envelopes);
    // The node over leaves 0 and 1 differs from a leaf made of the same bytes.
    let node = merkle::node_hash(&leaves[0], &leaves[1]);
    let mut joined = leaves[0].0.to_vec();
    joined.extend_from_slice(&leaves[1].0);
    assert_ne!(merkle::leaf_hash(&joined), node);
    // Presenting that node as leaf 0 of a 2-leaf tree reaches the same root,
    // but the signature covers the leaf count (4), so a claim of 2 fails.
    let path = vec![merkle::node_hash(&leaves[2], &leaves[3])];
    let root = merkle::root_from_path(&node, 0, 2, &path).unwrap();
    assert_eq!(root, signed.tree.root());
    let message = batch::batch_message(&key.id(), 2, &root);
    assert!(!key.public_key().verify(&message, &signed.signature));
    // And a batch-of-one claim with the node as its leaf fails the same way.
    let message = batch::batch_message(&key.id(), 1, &node);
    assert!(!key.public_key().verify(&message, &signed.signature));
}

#[test]
fn any_flipped_byte_breaks_the_proof() {
    let key = SigningKey::from_seed(&SEED).unwrap();
    let envelopes: Vec<Envelope> = (0..3).map(|i| envelope(key.id(), i)).collect();
    let signed = batch::sign(&key, &envelopes).unwrap();
    let mut e = envelopes[2].clone();
    e.payload[0] ^= 1;
    assert!(!batch::verify_record(
        key.public_key(),
        &e,
        &signed.proof(2)
    ));
    let mut e = envelopes[2].clone();
    e.topic = "vectors.t3".into();
    assert!(!batch::verify_record(
        key.public_key(),
        &e,
        &signed.proof(2)
    ));
    let mut e = envelopes[2].clone();
    e.headers[0].value[0] ^= 1;
    assert!(!batch::verify_record(
        key.public_key(),
        &e,
        &signed.proof(2)
    ));
}
