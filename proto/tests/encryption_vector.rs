//! End-to-end encryption vector, pinned in `tests/vectors/encryption.json`
//! so another implementation can check its sealing and opening byte for
//! byte (see `docs/PROTOCOL.md`, "End-to-end encryption").
//!
//! The vector is built here from the protocol description, with the HPKE
//! and AEAD primitives called directly and every random input fixed: the
//! recipient key and the sender's ephemeral key come from the RFC 9180
//! Appendix A.2 inputs, the content key is 00 01 .. 1f, the salt a0 a1 .. af.
//! `crypt::decrypt`
//! must then open it, which ties the description to the crate's code. The
//! envelope is the one `publish_frame.hex` carries.
//! Regenerate (only when the format deliberately changes) with
//! `SIGNET_WRITE_VECTORS=1 cargo test -p signet-proto --features encrypt --test encryption_vector`.
#![cfg(feature = "encrypt")]

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeS, Serializable};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use serde_json::{Value, json};
use signet_proto::crypt::{
    self, CONTENT_KEY_INFO, DecryptionKey, KEY_COMMITMENT_CONTEXT, SUITE_X25519_SHA256_CHACHA20,
};
use signet_proto::envelope::{CONTENT_TYPE_JSON, Encryption, Envelope, Header, SealedKey};
use signet_proto::frame::ClientFrame;
use signet_proto::{KeyId, Salt, SigningKey, batch, codec, merkle};

/// The publisher's Ed25519 seed (the same key as `vectors.json`).
const SIGNING_SEED: [u8; 32] = [7; 32];
/// RFC 9180 A.2 `ikmR`: the recipient's X25519 key pair is derived from it.
const RECIPIENT_IKM: &str = "1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df";
/// RFC 9180 A.2 `ikmE`: the 32 bytes the sender's RNG yields for its ephemeral key.
const EPHEMERAL_IKM: &str = "909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b";
const PLAINTEXT: &[u8] = br#"{"salary":5200}"#;

/// An "RNG" that yields fixed bytes: HPKE draws exactly the 32 bytes of
/// the ephemeral key's IKM from it, which makes `enc` deterministic.
struct FixedRng(Vec<u8>);

impl rand::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        unreachable!("HPKE only fills byte buffers")
    }
    fn next_u64(&mut self) -> u64 {
        unreachable!("HPKE only fills byte buffers")
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert!(dest.len() <= self.0.len(), "fixed RNG exhausted");
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
    }
}

impl rand::CryptoRng for FixedRng {}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn content_key() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

/// The envelope's salt: a0 a1 .. af.
fn salt() -> Salt {
    Salt(std::array::from_fn(|i| 0xa0 + i as u8))
}

/// SHA-256 of the commitment context and the content key, computed here
/// from the description (not with `crypt::key_commitment`).
fn commitment() -> [u8; 32] {
    let mut input = KEY_COMMITMENT_CONTEXT.to_vec();
    input.extend_from_slice(&content_key());
    ring::digest::digest(&ring::digest::SHA256, &input)
        .as_ref()
        .try_into()
        .unwrap()
}

/// The recipient's private key bytes (what its key file holds) and public key.
fn recipient() -> (Vec<u8>, Vec<u8>) {
    let (sk, pk) = X25519HkdfSha256::derive_keypair(&h(RECIPIENT_IKM));
    (sk.to_bytes().to_vec(), pk.to_bytes().to_vec())
}

/// The envelope before encryption: plaintext payload, no encryption block.
fn plain_envelope() -> Envelope {
    let key = SigningKey::from_seed(&SIGNING_SEED).unwrap();
    Envelope {
        version: 1,
        salt: salt(),
        topic: "payroll.march".into(),
        key_id: key.id(),
        seq: 42,
        timestamp_ms: 1_700_000_000_000,
        content_type: CONTENT_TYPE_JSON.into(),
        headers: vec![Header {
            name: "trace".into(),
            value: b"abc".to_vec(),
        }],
        encryption: None,
        payload: PLAINTEXT.to_vec(),
    }
}

fn build() -> Value {
    let key = SigningKey::from_seed(&SIGNING_SEED).unwrap();
    let (recipient_sk, recipient_pk) = recipient();
    let recipient_id = KeyId::of(&recipient_pk);
    let pk = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(&recipient_pk).unwrap();
    // 1. Seal the content key to the recipient: HPKE base mode, info
    //    "signet/v1/content-key", empty aad, plaintext = the 32-byte key.
    let (enc, sealed_key) =
        hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256, _>(
            &OpModeS::Base,
            &pk,
            CONTENT_KEY_INFO,
            &content_key(),
            &[],
            &mut FixedRng(h(EPHEMERAL_IKM)),
        )
        .unwrap();
    // 2. Record the sealed key in the envelope, then take the AAD: the
    //    canonical bytes with an empty payload (encryption block included).
    let mut envelope = plain_envelope();
    envelope.encryption = Some(Encryption {
        suite: SUITE_X25519_SHA256_CHACHA20,
        key_commitment: commitment(),
        recipients: vec![SealedKey {
            key_id: recipient_id,
            enc: enc.to_bytes().to_vec(),
            sealed_key: sealed_key.clone(),
        }],
    });
    let aad = envelope.canonical_bytes_with(&[]);
    // 3. Encrypt the payload: ChaCha20-Poly1305, nonce = 4 zero bytes ‖ seq (u64 BE).
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&envelope.seq.to_be_bytes());
    let cipher = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &content_key()).unwrap());
    let mut payload = PLAINTEXT.to_vec();
    cipher
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut payload,
        )
        .unwrap();
    envelope.payload = payload;
    // 4. Sign the batch of this one envelope.
    let canonical = envelope.canonical_bytes();
    let signed = batch::sign(&key, std::slice::from_ref(&envelope)).unwrap();
    json!({
        "description": "Signet v1 end-to-end encryption vector: one envelope, one recipient. HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305; the sender's ephemeral IKM and the recipient's IKM are RFC 9180 A.2's ikmE and ikmR. The key commitment is SHA-256 of key_commitment_context_hex and content_key_hex. The payload is ChaCha20-Poly1305 under content_key with nonce_hex and aad_hex. The envelope is the one in publish_frame.hex.",
        "suite": SUITE_X25519_SHA256_CHACHA20,
        "hpke_info_hex": hex::encode(CONTENT_KEY_INFO),
        "recipient_private_key_hex": hex::encode(&recipient_sk),
        "recipient_public_key_hex": hex::encode(&recipient_pk),
        "recipient_public_key": format!("x25519:{}", base64_std(&recipient_pk)),
        "recipient_key_id": recipient_id.to_hex(),
        "ephemeral_ikm_hex": EPHEMERAL_IKM,
        "enc_hex": hex::encode(enc.to_bytes()),
        "content_key_hex": hex::encode(content_key()),
        "key_commitment_context_hex": hex::encode(KEY_COMMITMENT_CONTEXT),
        "key_commitment_hex": hex::encode(commitment()),
        "sealed_key_hex": hex::encode(&sealed_key),
        "signing_seed_hex": hex::encode(SIGNING_SEED),
        "envelope": {
            "version": envelope.version,
            "salt_hex": hex::encode(envelope.salt.0),
            "topic": envelope.topic,
            "key_id": envelope.key_id.to_hex(),
            "seq": envelope.seq,
            "timestamp_ms": envelope.timestamp_ms,
            "content_type": envelope.content_type,
            "headers": envelope.headers.iter().map(|h| json!([h.name, hex::encode(&h.value)])).collect::<Vec<_>>(),
            "plaintext_hex": hex::encode(PLAINTEXT),
        },
        "aad_hex": hex::encode(&aad),
        "nonce_hex": hex::encode(nonce),
        "payload_hex": hex::encode(&envelope.payload),
        "canonical_hex": hex::encode(&canonical),
        "leaf_hex": hex::encode(merkle::leaf_hash(&canonical).0),
        "root_hex": hex::encode(signed.tree.root().0),
        "batch_message_hex": hex::encode(batch::batch_message(&key.id(), 1, &signed.tree.root())),
        "signature_hex": hex::encode(&signed.signature),
    })
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/encryption.json")
}

fn pinned() -> Value {
    let text = std::fs::read_to_string(path()).unwrap_or_else(|e| {
        panic!(
            "{} is missing or unreadable ({e}); create it with SIGNET_WRITE_VECTORS=1",
            path().display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// The encrypted envelope the pinned vector describes.
fn pinned_envelope(v: &Value) -> Envelope {
    let s = |k: &str| v[k].as_str().unwrap().to_owned();
    let mut envelope = plain_envelope();
    envelope.encryption = Some(Encryption {
        suite: v["suite"].as_u64().unwrap() as u16,
        key_commitment: h(&s("key_commitment_hex")).try_into().unwrap(),
        recipients: vec![SealedKey {
            key_id: s("recipient_key_id").parse().unwrap(),
            enc: h(&s("enc_hex")),
            sealed_key: h(&s("sealed_key_hex")),
        }],
    });
    envelope.payload = h(&s("payload_hex"));
    envelope
}

#[test]
fn encryption_vector_matches_pinned_file() {
    let built = build();
    if std::env::var_os("SIGNET_WRITE_VECTORS").is_some() {
        std::fs::write(path(), serde_json::to_string_pretty(&built).unwrap() + "\n").unwrap();
    }
    assert_eq!(
        built,
        pinned(),
        "encryption vector changed: the format moved"
    );
}

#[test]
fn pinned_vector_decrypts_with_the_recipient_key_only() {
    let v = pinned();
    let envelope = pinned_envelope(&v);
    let sk = h(v["recipient_private_key_hex"].as_str().unwrap());
    let key = DecryptionKey::from_bytes(&sk).unwrap();
    assert_eq!(
        key.public_key().to_string(),
        v["recipient_public_key"].as_str().unwrap()
    );
    assert_eq!(crypt::decrypt(&envelope, &[key]).unwrap(), PLAINTEXT);
    let (_, stranger) = DecryptionKey::generate().unwrap();
    assert_eq!(
        crypt::decrypt(&envelope, &[stranger]),
        Err(crypt::CryptError::NotARecipient)
    );
}

#[test]
fn pinned_vector_sealed_key_opens_to_the_content_key() {
    let v = pinned();
    let (sk, _) = X25519HkdfSha256::derive_keypair(&h(RECIPIENT_IKM));
    let enc =
        <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&h(v["enc_hex"].as_str().unwrap()))
            .unwrap();
    let opened = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &hpke::OpModeR::Base,
        &sk,
        &enc,
        CONTENT_KEY_INFO,
        &h(v["sealed_key_hex"].as_str().unwrap()),
        &[],
    )
    .unwrap();
    assert_eq!(hex::encode(opened), v["content_key_hex"].as_str().unwrap());
}

#[test]
fn publish_golden_carries_the_encrypted_envelope_and_it_decrypts() {
    let v = pinned();
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/publish_frame.hex");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{} is missing ({e})", file.display()));
    let bytes = h(text.trim());
    let ClientFrame::Publish(publish) = codec::decode::<ClientFrame>(&bytes[4..]).unwrap() else {
        panic!("publish_frame.hex holds another frame");
    };
    assert_eq!(publish.envelopes, vec![pinned_envelope(&v)]);
    assert_eq!(
        hex::encode(&publish.signature),
        v["signature_hex"].as_str().unwrap()
    );
    let (sk, _) = recipient();
    let key = DecryptionKey::from_bytes(&sk).unwrap();
    assert_eq!(
        crypt::decrypt(&publish.envelopes[0], &[key]).unwrap(),
        PLAINTEXT
    );
}

#[test]
fn pinned_vector_with_another_key_commitment_does_not_decrypt() {
    let v = pinned();
    let mut envelope = pinned_envelope(&v);
    if let Some(e) = envelope.encryption.as_mut() {
        e.key_commitment[31] ^= 1;
    }
    let sk = h(v["recipient_private_key_hex"].as_str().unwrap());
    let key = DecryptionKey::from_bytes(&sk).unwrap();
    assert_eq!(
        crypt::decrypt(&envelope, &[key]),
        Err(crypt::CryptError::KeyCommitment)
    );
}
