//! `signet keygen`: Ed25519 signing keys as PKCS#8 files (mode 0600).

use crate::files::write_secret;
use anyhow::{Context, Result};
use signet_proto::{PublicKey, SigningKey};
use std::path::Path;

/// Generates a signing key into `out` and returns its public key.
pub fn generate_ed25519(out: &Path) -> Result<PublicKey> {
    let der = SigningKey::generate_pkcs8().context("generating an Ed25519 key")?;
    let key = SigningKey::from_pkcs8(&der).context("reading the new key")?;
    write_secret(out, &der)?;
    Ok(key.public_key().clone())
}

/// Generates an X25519 encryption key into `out` (32 raw bytes, mode
/// 0600) and returns its public key.
pub fn generate_x25519(out: &Path) -> Result<signet_proto::crypt::RecipientKey> {
    let (bytes, key) =
        signet_proto::crypt::DecryptionKey::generate().context("generating an X25519 key")?;
    write_secret(out, &bytes)?;
    Ok(key.public_key().clone())
}

/// Reads a signing key's public half from its PKCS#8 file.
pub fn public_of(path: &Path) -> Result<PublicKey> {
    let der = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let key = SigningKey::from_pkcs8(&der)
        .with_context(|| format!("{} is not an Ed25519 PKCS#8 key", path.display()))?;
    Ok(key.public_key().clone())
}
