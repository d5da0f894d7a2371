//! End-to-end payload encryption: HPKE (RFC 9180) base mode with
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and ChaCha20-Poly1305.
//!
//! The publisher draws a fresh random 32-byte content key per signed batch
//! (per recipient set within it), seals it to every recipient's X25519
//! public key with HPKE, and encrypts each payload with ChaCha20-Poly1305
//! under that key with the envelope's `seq` as nonce, and the canonical
//! bytes of the envelope *without its payload* as associated data (topic,
//! key id, seq, timestamp, content type, headers and the sealed keys are all
//! bound). Why per batch is safe: the key is random and never used after its
//! batch, and seqs within a batch are distinct (strictly increasing per
//! signing key), so no (key, nonce) pair repeats; each envelope still
//! carries the sealed keys and decrypts alone. The batch signature covers
//! the ciphertext: a subscriber verifies first, then decrypts.
//!
//! Key commitment: ChaCha20-Poly1305 does not commit to its key, so a
//! publisher could seal a different content key to each recipient and build
//! one ciphertext that opens under both, showing each recipient another
//! plaintext. The encryption block therefore carries
//! `SHA-256("signet/v1/key-commitment\0" ‖ content key)`, inside the signed
//! bytes; a subscriber checks the key it unsealed against it before
//! decrypting, so every recipient that decrypts at all used the same key.
//!
//! Key text forms: a recipient public key is `x25519:<base64>`; a private
//! key file holds the 32 raw bytes (mode 0600). A key's id is the first 16
//! bytes of SHA-256 of its public key, as for signing keys.

pub use crate::envelope::SUITE_X25519_SHA256_CHACHA20;
use crate::envelope::{Encryption, Envelope, KEY_COMMITMENT_BYTES, SealedKey};
use crate::keys::KeyId;
use crate::limits::RECIPIENTS_MAX;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// HPKE `info` for sealing content keys.
pub const CONTENT_KEY_INFO: &[u8] = b"signet/v1/content-key";

/// Domain-separation prefix of a content key's commitment.
pub const KEY_COMMITMENT_CONTEXT: &[u8] = b"signet/v1/key-commitment\0";

/// The commitment to a content key carried in [`Encryption::key_commitment`]:
/// `SHA-256(KEY_COMMITMENT_CONTEXT ‖ key)`.
pub fn key_commitment(key: &[u8; 32]) -> [u8; KEY_COMMITMENT_BYTES] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(KEY_COMMITMENT_CONTEXT);
    ctx.update(key);
    let mut out = [0u8; KEY_COMMITMENT_BYTES];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Compares two commitments without an early exit.
fn same_commitment(a: &[u8; KEY_COMMITMENT_BYTES], b: &[u8; KEY_COMMITMENT_BYTES]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why encryption or decryption failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptError {
    #[error("public key must look like `x25519:<base64>` of 32 bytes")]
    BadPublicKey,
    #[error("private key must be 32 bytes")]
    BadPrivateKey,
    #[error("no recipients to encrypt to")]
    NoRecipients,
    #[error("more than {RECIPIENTS_MAX} recipients")]
    TooManyRecipients,
    #[error("this client holds no key the payload was encrypted to")]
    NotARecipient,
    #[error("the payload does not decrypt")]
    Corrupt,
    #[error("unsupported encryption suite")]
    UnsupportedSuite,
    #[error("the content key does not match the envelope's key commitment")]
    KeyCommitment,
    #[error("encryption failed")]
    Failed,
}

/// A recipient's X25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct RecipientKey {
    public: <X25519HkdfSha256 as Kem>::PublicKey,
    id: KeyId,
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecipientKey({})", self.id)
    }
}

impl RecipientKey {
    /// From the 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<RecipientKey, CryptError> {
        let public = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(bytes)
            .map_err(|_| CryptError::BadPublicKey)?;
        Ok(RecipientKey {
            public,
            id: KeyId::of(bytes),
        })
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }
}

impl std::str::FromStr for RecipientKey {
    type Err = CryptError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b64 = s
            .trim()
            .strip_prefix("x25519:")
            .ok_or(CryptError::BadPublicKey)?;
        let bytes = B64.decode(b64).map_err(|_| CryptError::BadPublicKey)?;
        RecipientKey::from_bytes(&bytes)
    }
}

impl std::fmt::Display for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "x25519:{}", B64.encode(self.public.to_bytes()))
    }
}

/// A subscriber's X25519 private key. Never printed.
pub struct DecryptionKey {
    private: <X25519HkdfSha256 as Kem>::PrivateKey,
    public: RecipientKey,
}

impl std::fmt::Debug for DecryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DecryptionKey({}, <secret>)", self.public.id)
    }
}

impl DecryptionKey {
    /// From the 32 raw bytes of a private key file.
    pub fn from_bytes(bytes: &[u8]) -> Result<DecryptionKey, CryptError> {
        let private = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(bytes)
            .map_err(|_| CryptError::BadPrivateKey)?;
        let public = X25519HkdfSha256::sk_to_pk(&private);
        let id = KeyId::of(&public.to_bytes());
        Ok(DecryptionKey {
            private,
            public: RecipientKey { public, id },
        })
    }

    /// A fresh key: the 32 private bytes to store, and the key.
    pub fn generate() -> Result<(Vec<u8>, DecryptionKey), CryptError> {
        let mut ikm = [0u8; 32];
        SystemRandom::new()
            .fill(&mut ikm)
            .map_err(|_| CryptError::Failed)?;
        let (private, _) = X25519HkdfSha256::derive_keypair(&ikm);
        let bytes = private.to_bytes().to_vec();
        let key = DecryptionKey::from_bytes(&bytes)?;
        Ok((bytes, key))
    }

    /// The public half.
    pub fn public_key(&self) -> &RecipientKey {
        &self.public
    }
}

/// The associated data of the payload: the envelope's canonical bytes with
/// an empty payload.
fn payload_aad(envelope: &Envelope) -> Vec<u8> {
    envelope.canonical_bytes_with(&[])
}

fn content_cipher(key: &[u8; 32]) -> Result<LessSafeKey, CryptError> {
    let key = UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| CryptError::Failed)?;
    Ok(LessSafeKey::new(key))
}

/// The payload nonce of an envelope: its seq, big-endian, in 12 bytes.
fn nonce_for(seq: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

/// A fresh content key sealed to a set of recipients, for one batch.
pub struct ContentKey {
    key: [u8; 32],
    encryption: Encryption,
}

impl ContentKey {
    /// Draws a key and seals it to each recipient with HPKE.
    pub fn seal_to(recipients: &[RecipientKey]) -> Result<ContentKey, CryptError> {
        if recipients.is_empty() {
            return Err(CryptError::NoRecipients);
        }
        if recipients.len() > RECIPIENTS_MAX {
            return Err(CryptError::TooManyRecipients);
        }
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| CryptError::Failed)?;
        let mut rng = rand::rng();
        let mut sealed = Vec::with_capacity(recipients.len());
        for r in recipients {
            let (enc, sealed_key) =
                hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256, _>(
                    &OpModeS::Base,
                    &r.public,
                    CONTENT_KEY_INFO,
                    &key,
                    &[],
                    &mut rng,
                )
                .map_err(|_| CryptError::Failed)?;
            sealed.push(SealedKey {
                key_id: r.id,
                enc: enc.to_bytes().to_vec(),
                sealed_key,
            });
        }
        Ok(ContentKey {
            key,
            encryption: Encryption {
                suite: SUITE_X25519_SHA256_CHACHA20,
                key_commitment: key_commitment(&key),
                recipients: sealed,
            },
        })
    }

    /// Encrypts `envelope.payload` in place and records the sealed keys in
    /// `envelope.encryption`. Call before signing; within one batch, each
    /// envelope must have a distinct seq (the nonce).
    pub fn encrypt(&self, envelope: &mut Envelope) -> Result<(), CryptError> {
        envelope.encryption = Some(self.encryption.clone());
        let aad = payload_aad(envelope);
        content_cipher(&self.key)?
            .seal_in_place_append_tag(
                nonce_for(envelope.seq),
                Aad::from(aad),
                &mut envelope.payload,
            )
            .map_err(|_| CryptError::Failed)
    }
}

/// Encrypts one envelope to `recipients` with a content key of its own.
pub fn encrypt(envelope: &mut Envelope, recipients: &[RecipientKey]) -> Result<(), CryptError> {
    ContentKey::seal_to(recipients)?.encrypt(envelope)
}

/// Decrypts a verified envelope's payload with the first of `keys` it was
/// sealed to, after checking the unsealed content key against the
/// envelope's key commitment.
pub fn decrypt(envelope: &Envelope, keys: &[DecryptionKey]) -> Result<Vec<u8>, CryptError> {
    let Some(encryption) = &envelope.encryption else {
        return Ok(envelope.payload.clone());
    };
    if encryption.suite != SUITE_X25519_SHA256_CHACHA20 {
        return Err(CryptError::UnsupportedSuite);
    }
    let (key, sealed) = keys
        .iter()
        .find_map(|k| {
            encryption
                .recipients
                .iter()
                .find(|r| r.key_id == k.public.id)
                .map(|r| (k, r))
        })
        .ok_or(CryptError::NotARecipient)?;
    let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&sealed.enc)
        .map_err(|_| CryptError::Corrupt)?;
    let content_key = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &key.private,
        &enc,
        CONTENT_KEY_INFO,
        &sealed.sealed_key,
        &[],
    )
    .map_err(|_| CryptError::Corrupt)?;
    let content_key: [u8; 32] = content_key.try_into().map_err(|_| CryptError::Corrupt)?;
    if !same_commitment(&key_commitment(&content_key), &encryption.key_commitment) {
        return Err(CryptError::KeyCommitment);
    }
    let mut ciphertext = envelope.payload.clone();
    let aad = payload_aad(envelope);
    let plaintext = content_cipher(&content_key)?
        .open_in_place(nonce_for(envelope.seq), Aad::from(aad), &mut ciphertext)
        .map_err(|_| CryptError::Corrupt)?;
    Ok(plaintext.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            version: 1,
            salt: crate::Salt([9; 16]),
            topic: "payroll.march".into(),
            key_id: KeyId([1; 16]),
            seq: 7,
            timestamp_ms: 1,
            content_type: "application/json".into(),
            headers: vec![],
            encryption: None,
            payload: br#"{"salary":1}"#.to_vec(),
        }
    }

    #[test]
    fn every_recipient_decrypts_and_others_cannot() {
        let (_, a) = DecryptionKey::generate().unwrap();
        let (_, b) = DecryptionKey::generate().unwrap();
        let (_, c) = DecryptionKey::generate().unwrap();
        let mut e = envelope();
        encrypt(&mut e, &[a.public_key().clone(), b.public_key().clone()]).unwrap();
        assert_ne!(e.payload, envelope().payload);
        assert_eq!(
            decrypt(&e, std::slice::from_ref(&a)).unwrap(),
            envelope().payload
        );
        assert_eq!(
            decrypt(&e, std::slice::from_ref(&b)).unwrap(),
            envelope().payload
        );
        assert_eq!(
            decrypt(&e, std::slice::from_ref(&c)),
            Err(CryptError::NotARecipient)
        );
        // Rotation: a holder of old and new keys decrypts with either.
        assert_eq!(decrypt(&e, &[c, a]).unwrap(), envelope().payload);
    }

    #[test]
    fn header_and_ciphertext_are_bound() {
        let (_, a) = DecryptionKey::generate().unwrap();
        let mut e = envelope();
        encrypt(&mut e, &[a.public_key().clone()]).unwrap();
        let mut moved = e.clone();
        moved.topic = "payroll.april".into();
        assert_eq!(
            decrypt(&moved, std::slice::from_ref(&a)),
            Err(CryptError::Corrupt)
        );
        let mut flipped = e.clone();
        flipped.payload[0] ^= 1;
        assert_eq!(
            decrypt(&flipped, std::slice::from_ref(&a)),
            Err(CryptError::Corrupt)
        );
    }

    #[test]
    fn one_content_key_serves_a_batch_and_each_envelope_decrypts_alone() {
        let (_, a) = DecryptionKey::generate().unwrap();
        let key = ContentKey::seal_to(&[a.public_key().clone()]).unwrap();
        let mut batch: Vec<Envelope> = (0..4u64)
            .map(|i| Envelope {
                seq: 100 + i,
                ..envelope()
            })
            .collect();
        for e in &mut batch {
            key.encrypt(e).unwrap();
        }
        assert_ne!(batch[0].payload, batch[1].payload, "distinct nonces");
        for e in &batch {
            assert_eq!(
                decrypt(e, std::slice::from_ref(&a)).unwrap(),
                envelope().payload
            );
        }
        let mut swapped = batch[0].clone();
        swapped.payload = batch[1].payload.clone();
        assert_eq!(
            decrypt(&swapped, std::slice::from_ref(&a)),
            Err(CryptError::Corrupt)
        );
    }

    #[test]
    fn a_content_key_other_than_the_committed_one_is_refused_before_decrypting() {
        let (_, a) = DecryptionKey::generate().unwrap();
        let mut e = envelope();
        encrypt(&mut e, &[a.public_key().clone()]).unwrap();
        let mut recommitted = e.clone();
        if let Some(enc) = recommitted.encryption.as_mut() {
            enc.key_commitment = key_commitment(&[0; 32]);
        }
        assert_eq!(
            decrypt(&recommitted, std::slice::from_ref(&a)),
            Err(CryptError::KeyCommitment)
        );
        assert_eq!(
            decrypt(&e, std::slice::from_ref(&a)).unwrap(),
            envelope().payload
        );
    }

    #[test]
    fn commitment_is_sha256_of_the_context_and_the_key() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let mut input = KEY_COMMITMENT_CONTEXT.to_vec();
        input.extend_from_slice(&key);
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        assert_eq!(&key_commitment(&key)[..], digest.as_ref());
        assert_eq!(KEY_COMMITMENT_CONTEXT.len(), 25);
    }

    #[test]
    fn too_many_recipients_are_refused_when_sealing() {
        let (_, a) = DecryptionKey::generate().unwrap();
        let many = vec![a.public_key().clone(); RECIPIENTS_MAX + 1];
        assert!(matches!(
            ContentKey::seal_to(&many),
            Err(CryptError::TooManyRecipients)
        ));
    }

    #[test]
    fn key_text_round_trips() {
        let (bytes, a) = DecryptionKey::generate().unwrap();
        let text = a.public_key().to_string();
        assert!(text.starts_with("x25519:"));
        assert_eq!(&text.parse::<RecipientKey>().unwrap(), a.public_key());
        assert_eq!(
            DecryptionKey::from_bytes(&bytes).unwrap().public_key(),
            a.public_key()
        );
    }
}
