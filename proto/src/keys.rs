//! Signing keys, public keys, key ids and their text forms.
//!
//! A key id is the first 16 bytes of SHA-256 of the raw Ed25519 public key,
//! shown in lowercase hex. A public key's text form is `ed25519:<base64>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Length of an Ed25519 public key, in bytes.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Length of an Ed25519 signature, in bytes.
pub const SIGNATURE_BYTES: usize = 64;
/// Length of a key id, in bytes.
pub const KEY_ID_BYTES: usize = 16;

/// Errors reading keys.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("public key must look like `ed25519:<base64>`")]
    BadPrefix,
    #[error("public key is not valid base64")]
    BadBase64,
    #[error("public key must be {PUBLIC_KEY_BYTES} bytes")]
    BadLength,
    #[error("key id must be {KEY_ID_BYTES} bytes of hex")]
    BadKeyId,
    #[error("signing key is not a valid Ed25519 PKCS#8 document")]
    BadPkcs8,
}

/// The id of a signing key: the first 16 bytes of SHA-256 of its public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyId(#[serde(with = "crate::fixed")] pub [u8; KEY_ID_BYTES]);

impl KeyId {
    /// The id of the given raw public key.
    pub fn of(public_key: &[u8]) -> KeyId {
        let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
        let mut id = [0u8; KEY_ID_BYTES];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_BYTES]);
        KeyId(id)
    }

    /// Lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for KeyId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s.trim()).map_err(|_| KeyError::BadKeyId)?;
        let id: [u8; KEY_ID_BYTES] = bytes.try_into().map_err(|_| KeyError::BadKeyId)?;
        Ok(KeyId(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

/// An Ed25519 public key with its id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    bytes: [u8; PUBLIC_KEY_BYTES],
    id: KeyId,
}

impl PublicKey {
    /// From the raw 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, KeyError> {
        let bytes: [u8; PUBLIC_KEY_BYTES] = bytes.try_into().map_err(|_| KeyError::BadLength)?;
        Ok(PublicKey {
            bytes,
            id: KeyId::of(&bytes),
        })
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_BYTES] {
        &self.bytes
    }

    /// Checks an Ed25519 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(message, signature)
            .is_ok()
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b64 = s
            .trim()
            .strip_prefix("ed25519:")
            .ok_or(KeyError::BadPrefix)?;
        let bytes = B64.decode(b64).map_err(|_| KeyError::BadBase64)?;
        PublicKey::from_bytes(&bytes)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", B64.encode(self.bytes))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id.to_hex())
    }
}

/// An Ed25519 private signing key. Its bytes are never printed or logged.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl SigningKey {
    /// From a PKCS#8 v1 or v2 document (what `signet keygen` writes).
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, KeyError> {
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| KeyError::BadPkcs8)?;
        let public = PublicKey::from_bytes(pair.public_key().as_ref())?;
        Ok(SigningKey { pair, public })
    }

    /// A key from a 32-byte seed. For test vectors only: real keys come
    /// from [`SigningKey::generate_pkcs8`].
    pub fn from_seed(seed: &[u8; 32]) -> Result<SigningKey, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| KeyError::BadPkcs8)?;
        let public = PublicKey::from_bytes(pair.public_key().as_ref())?;
        Ok(SigningKey { pair, public })
    }

    /// A fresh key as a PKCS#8 document.
    pub fn generate_pkcs8() -> Result<Vec<u8>, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| KeyError::BadPkcs8)
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.public.id()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_BYTES] {
        let sig = self.pair.sign(message);
        let mut out = [0u8; SIGNATURE_BYTES];
        out.copy_from_slice(sig.as_ref());
        out
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, <secret>)", self.id().to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_text_round_trips() {
        let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let text = key.public_key().to_string();
        assert!(text.starts_with("ed25519:"));
        let back: PublicKey = text.parse().unwrap();
        assert_eq!(&back, key.public_key());
        assert_eq!(back.id().to_hex().parse::<KeyId>().unwrap(), key.id());
    }

    #[test]
    fn rejects_malformed_public_keys() {
        assert_eq!("x25519:AAAA".parse::<PublicKey>(), Err(KeyError::BadPrefix));
        assert_eq!("ed25519:!!".parse::<PublicKey>(), Err(KeyError::BadBase64));
        assert_eq!(
            "ed25519:AAAA".parse::<PublicKey>(),
            Err(KeyError::BadLength)
        );
    }

    #[test]
    fn signature_verifies_only_for_its_message() {
        let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let sig = key.sign(b"hello");
        assert!(key.public_key().verify(b"hello", &sig));
        assert!(!key.public_key().verify(b"hellp", &sig));
    }
}
