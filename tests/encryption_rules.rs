//! What an encryption block may claim (THREATS T10, T26).
//!
//! - An encrypted topic takes only a known suite with at least one
//!   recipient: plaintext dressed as `encryption: {suite: 0, recipients:
//!   []}` is refused; an unknown suite is refused on every topic; a topic
//!   that is not encrypted refuses an encryption block.
//! - A publisher cannot show two recipients two different plaintexts: it
//!   could seal a different content key to each and build one ciphertext
//!   that decrypts under both (ChaCha20-Poly1305 does not commit to its
//!   key), so the envelope commits to its content key and a subscriber
//!   checks that commitment before decrypting.

mod common;

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use common::codes::nack_codes;
use common::*;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeS, Serializable};
use num_bigint::{BigInt, BigUint, Sign};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use signet_client::{Client, Error, StartAt};
use signet_proto::crypt::{self, CONTENT_KEY_INFO, DecryptionKey};
use signet_proto::envelope::{CONTENT_TYPE_OCTET, Encryption, Envelope, SealedKey};
use signet_proto::{ErrorCode, KeyId};
use std::path::PathBuf;

/// `alice` publishes `orders.>` and `payroll.>`; `payroll.>` is encrypted;
/// `r1` and `r2` read `payroll.>`.
async fn world() -> Sandbox {
    start_with(
        &[
            PrincipalSpec::new("alice")
                .publish("orders.>")
                .publish("payroll.>"),
            PrincipalSpec::new("r1").subscribe("payroll.>"),
            PrincipalSpec::new("r2").subscribe("payroll.>"),
            PrincipalSpec::new("auditor").subscribe(">"),
        ],
        "[[topic]]\nname = \"payroll.>\"\nencrypted = true\n",
    )
    .await
}

/// A recipient: its key file, private key bytes and id.
struct Recipient {
    path: PathBuf,
    private: Vec<u8>,
    id: KeyId,
}

fn recipient(sandbox: &Sandbox, name: &str) -> Recipient {
    let (private, key) = DecryptionKey::generate().unwrap();
    let path = sandbox
        .write_private(&format!("{name}.x25519"), &private)
        .unwrap();
    Recipient {
        path,
        private,
        id: key.public_key().id(),
    }
}

fn sealed_to(r: &Recipient, content_key: &[u8; 32]) -> SealedKey {
    let sk = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(&r.private).unwrap();
    let pk = X25519HkdfSha256::sk_to_pk(&sk);
    let (enc, sealed_key) =
        hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256, _>(
            &OpModeS::Base,
            &pk,
            CONTENT_KEY_INFO,
            content_key,
            &[],
            &mut rand::rng(),
        )
        .unwrap();
    SealedKey {
        key_id: r.id,
        enc: enc.to_bytes().to_vec(),
        sealed_key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_dressed_as_encryption_is_refused_on_an_encrypted_topic() {
    let mut sandbox = world().await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let r1 = recipient(&sandbox, "r1");
    let seq = fresh_seq();
    let dressed = |seq: u64, suite: u16, recipients: Vec<SealedKey>| {
        let mut e = envelope(key.id(), "payroll.march", seq, b"salary=5200");
        e.encryption = Some(Encryption {
            suite,
            key_commitment: [0; 32],
            recipients,
        });
        e
    };
    let envelopes = vec![
        dressed(seq, 0, vec![]),
        dressed(seq + 1, 1, vec![]),
        dressed(seq + 2, 7, vec![sealed_to(&r1, &[1; 32])]),
    ];
    assert_eq!(
        nack_codes(raw_publish(&alice, signed(&key, 1, envelopes)).await),
        vec![
            Some(ErrorCode::UnsupportedSuite),
            Some(ErrorCode::EncryptionRequired),
            Some(ErrorCode::UnsupportedSuite),
        ]
    );
    assert_eq!(stored_count(&sandbox, "payroll.march").await, 0);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_block_on_a_plain_topic_is_refused_and_unknown_suites_everywhere() {
    let mut sandbox = world().await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let r1 = recipient(&sandbox, "r1");
    let r1_public = DecryptionKey::from_bytes(&r1.private)
        .unwrap()
        .public_key()
        .clone();
    let seq = fresh_seq();
    let mut sealed = envelope(key.id(), "orders.plain", seq, b"{}");
    crypt::encrypt(&mut sealed, &[r1_public]).unwrap();
    let mut unknown = envelope(key.id(), "orders.plain", seq + 1, b"{}");
    unknown.encryption = Some(Encryption {
        suite: 2,
        key_commitment: [0; 32],
        recipients: vec![sealed_to(&r1, &[1; 32])],
    });
    let plain = envelope(key.id(), "orders.plain", seq + 2, b"{}");
    assert_eq!(
        nack_codes(raw_publish(&alice, signed(&key, 1, vec![sealed, unknown, plain])).await),
        vec![
            Some(ErrorCode::EncryptionNotAllowed),
            Some(ErrorCode::UnsupportedSuite),
            None
        ]
    );
    assert_eq!(stored_count(&sandbox, "orders.plain").await, 1);
    sandbox.stop().await;
}

// --- One ciphertext, two content keys -------------------------------------

/// 2^130 − 5, Poly1305's prime.
fn prime() -> BigUint {
    (BigUint::from(1u8) << 130u32) - BigUint::from(5u8)
}

/// Poly1305's one-time key `(r, s)` for ChaCha20-Poly1305 under `key` and
/// `nonce` (RFC 8439 2.6: the first 32 bytes of ChaCha20 block 0).
fn poly_key(key: &[u8; 32], nonce: &[u8; 12]) -> (BigUint, BigUint) {
    let mut block = [0u8; 64];
    ChaCha20::new(key.into(), nonce.into()).apply_keystream(&mut block);
    let mut r = [0u8; 16];
    r.copy_from_slice(&block[..16]);
    for i in [3, 7, 11, 15] {
        r[i] &= 0x0f;
    }
    for i in [4, 8, 12] {
        r[i] &= 0xfc;
    }
    (
        BigUint::from_bytes_le(&r),
        BigUint::from_bytes_le(&block[16..32]),
    )
}

/// The 16-byte blocks Poly1305 reads for an AEAD (RFC 8439 2.8): the AAD
/// and ciphertext each zero-padded, then both lengths.
fn mac_blocks(aad: &[u8], ciphertext: &[u8]) -> Vec<[u8; 16]> {
    let mut data = aad.to_vec();
    data.resize(aad.len().div_ceil(16) * 16, 0);
    data.extend_from_slice(ciphertext);
    data.resize(data.len().div_ceil(16) * 16, 0);
    data.extend_from_slice(&(aad.len() as u64).to_le_bytes());
    data.extend_from_slice(&(ciphertext.len() as u64).to_le_bytes());
    data.chunks(16).map(|c| c.try_into().unwrap()).collect()
}

/// Poly1305's accumulator over full blocks, before `s` is added.
fn poly_acc(blocks: &[[u8; 16]], r: &BigUint) -> BigUint {
    let p = prime();
    let high = BigUint::from(1u8) << 128u32;
    blocks.iter().fold(BigUint::default(), |acc, b| {
        ((acc + BigUint::from_bytes_le(b) + &high) * r) % &p
    })
}

fn tag(acc: &BigUint, s: &BigUint) -> [u8; 16] {
    let t = (acc + s) % (BigUint::from(1u8) << 128u32);
    let mut out = [0u8; 16];
    let bytes = t.to_bytes_le();
    out[..bytes.len()].copy_from_slice(&bytes);
    out
}

/// A 32-byte ciphertext and tag that open under both `k1` and `k2` (with
/// this nonce and AAD): a multi-key collision on Poly1305. The second block
/// is a counter; the first is solved for so the two tags agree.
fn two_key_ciphertext(k1: &[u8; 32], k2: &[u8; 32], nonce: &[u8; 12], aad: &[u8]) -> Vec<u8> {
    let p = prime();
    let pi = BigInt::from_biguint(Sign::Plus, p.clone());
    let high = BigUint::from(1u8) << 128u32;
    let (r1, s1) = poly_key(k1, nonce);
    let (r2, s2) = poly_key(k2, nonce);
    // Block x is at aad_blocks, then block y, then the lengths: the
    // accumulator multiplies x by r^3.
    let cube = |r: &BigUint| r.modpow(&BigUint::from(3u8), &p);
    let (c1, c2) = (cube(&r1), cube(&r2));
    let diff = (BigInt::from_biguint(Sign::Plus, c1.clone())
        - BigInt::from_biguint(Sign::Plus, c2.clone()))
    .modpow(&BigInt::from(1), &pi);
    let inv = diff.modpow(&(&pi - BigInt::from(2)), &pi);
    for y in 0u64.. {
        let mut ct = [0u8; 32];
        ct[16..24].copy_from_slice(&y.to_le_bytes());
        let blocks = mac_blocks(aad, &ct);
        // Accumulators with x = 0, i.e. its block value 2^128 taken out.
        let base = |r: &BigUint, c: &BigUint| {
            let with_zero = BigInt::from_biguint(Sign::Plus, poly_acc(&blocks, r));
            with_zero - BigInt::from_biguint(Sign::Plus, &high * c)
        };
        let (a1, a2) = (base(&r1, &c1), base(&r2, &c2));
        for d in -6i64..=6 {
            // Want acc1 − acc2 = s2 − s1 + d·2^128 exactly.
            let delta = BigInt::from_biguint(Sign::Plus, s2.clone())
                - BigInt::from_biguint(Sign::Plus, s1.clone())
                + BigInt::from(d) * BigInt::from_biguint(Sign::Plus, high.clone());
            let n = (((&delta - &a1 + &a2) % &pi + &pi) % &pi * &inv) % &pi;
            let Some(n) = n.to_biguint() else { continue };
            if n < high || n >= (&high << 1u32) {
                continue;
            }
            let x = (n - &high).to_bytes_le();
            ct[..16].fill(0);
            ct[..x.len()].copy_from_slice(&x);
            let blocks = mac_blocks(aad, &ct);
            let t1 = tag(&poly_acc(&blocks, &r1), &s1);
            let t2 = tag(&poly_acc(&blocks, &r2), &s2);
            if t1 == t2 {
                let mut payload = ct.to_vec();
                payload.extend_from_slice(&t1);
                return payload;
            }
        }
    }
    unreachable!()
}

fn open(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
    let cipher = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).unwrap());
    let mut buf = payload.to_vec();
    let plain = cipher
        .open_in_place(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            &mut buf,
        )
        .ok()?;
    Some(plain.to_vec())
}

const K1: [u8; 32] = [0x11; 32];
const K2: [u8; 32] = [0x22; 32];

/// An envelope on `topic` sealing [`K1`] to `r1` and [`K2`] to `r2`, whose
/// one ciphertext opens under both keys (to different plaintexts), with
/// the key commitment the publisher chose to write.
fn equivocating_envelope(
    key: KeyId,
    topic: &str,
    r1: &Recipient,
    r2: &Recipient,
    key_commitment: [u8; 32],
) -> Envelope {
    let (k1, k2) = (K1, K2);
    let mut e = envelope(key, topic, fresh_seq(), b"");
    e.content_type = CONTENT_TYPE_OCTET.into();
    e.encryption = Some(Encryption {
        suite: 1,
        key_commitment,
        recipients: vec![sealed_to(r1, &k1), sealed_to(r2, &k2)],
    });
    let aad = e.canonical_bytes_with(&[]);
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&e.seq.to_be_bytes());
    e.payload = two_key_ciphertext(&k1, &k2, &nonce, &aad);
    // The forgery is real: both keys open it, to different plaintexts.
    let p1 = open(&k1, &nonce, &aad, &e.payload).expect("opens under k1");
    let p2 = open(&k2, &nonce, &aad, &e.payload).expect("opens under k2");
    assert_ne!(p1, p2);
    e
}

async fn first(
    sandbox: &Sandbox,
    name: &str,
    r: &Recipient,
    topic: &str,
) -> Result<signet_client::Message, Error> {
    let mut config = sandbox.client_config(name).unwrap();
    config.private_keys = vec![r.path.clone()];
    let client = within(Client::connect(config)).await.unwrap();
    let mut sub = within(client.subscribe(topic, StartAt::Earliest))
        .await
        .unwrap();
    next(&mut sub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ciphertext_under_two_content_keys_is_an_error_for_both_recipients() {
    let mut sandbox = world().await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let (r1, r2) = (recipient(&sandbox, "r1"), recipient(&sandbox, "r2"));
    // The commitment names neither key (what else could it name?).
    let e = equivocating_envelope(key.id(), "payroll.march", &r1, &r2, [0; 32]);
    // The broker cannot see the content keys: it stores the envelope.
    assert_eq!(
        nack_codes(raw_publish(&alice, signed(&key, 1, vec![e])).await),
        vec![None]
    );
    let got1 = first(&sandbox, "r1", &r1, "payroll.march").await;
    let got2 = first(&sandbox, "r2", &r2, "payroll.march").await;
    if let (Ok(m1), Ok(m2)) = (&got1, &got2) {
        assert_eq!(
            m1.payload, m2.payload,
            "two recipients were shown two different plaintexts of one message"
        );
    }
    for got in [got1, got2] {
        match got {
            Err(Error::Verify { offset, code, .. }) => {
                assert_eq!((offset, code), (0, ErrorCode::BadSignature));
            }
            other => panic!("an equivocating envelope was delivered: {other:?}"),
        }
    }
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committing_to_one_of_two_content_keys_lets_only_that_recipient_read() {
    let mut sandbox = world().await;
    let alice = client(&sandbox, "alice").await;
    let key = signing_key(&sandbox, "alice");
    let (r1, r2) = (recipient(&sandbox, "r1"), recipient(&sandbox, "r2"));
    let commitment = crypt::key_commitment(&K1);
    let e = equivocating_envelope(key.id(), "payroll.april", &r1, &r2, commitment);
    assert_eq!(
        nack_codes(raw_publish(&alice, signed(&key, 1, vec![e])).await),
        vec![None]
    );
    // r1 unsealed the committed key and reads the one plaintext there is;
    // r2 unsealed another key and is told so instead of reading another.
    let m1 = first(&sandbox, "r1", &r1, "payroll.april").await.unwrap();
    assert_eq!(m1.payload.len(), 32);
    match first(&sandbox, "r2", &r2, "payroll.april").await {
        Err(Error::Verify { offset, code, .. }) => {
            assert_eq!((offset, code), (0, ErrorCode::BadSignature));
        }
        other => panic!("a second plaintext was delivered: {other:?}"),
    }
    sandbox.stop().await;
}
