//! `signet keygen`: Ed25519 signing keys as PKCS#8 files and X25519
//! encryption keys as 32 raw bytes (both mode 0600).

use crate::AdminError;
use crate::files::write_secret;
use signet_proto::crypt::{DecryptionKey, RecipientKey};
use signet_proto::{PublicKey, SigningKey};
use std::path::Path;
use zeroize::Zeroizing;

/// Generates a signing key into `out` and returns its public key.
pub fn generate_ed25519(out: &Path) -> Result<PublicKey, AdminError> {
    let der =
        Zeroizing::new(
            SigningKey::generate_pkcs8().map_err(|source| AdminError::SigningKey {
                step: "generating an Ed25519 key",
                source,
            })?,
        );
    let key = SigningKey::from_pkcs8(&der).map_err(|source| AdminError::SigningKey {
        step: "reading the new key",
        source,
    })?;
    write_secret(out, &der)?;
    Ok(key.public_key().clone())
}

/// Generates an X25519 encryption key into `out` (32 raw bytes, mode
/// 0600) and returns its public key.
pub fn generate_x25519(out: &Path) -> Result<RecipientKey, AdminError> {
    let (bytes, key) = DecryptionKey::generate().map_err(AdminError::EncryptionKey)?;
    write_secret(out, &bytes)?;
    Ok(key.public_key().clone())
}

/// Reads a signing key's public half from its PKCS#8 file.
pub fn public_of(path: &Path) -> Result<PublicKey, AdminError> {
    let der = Zeroizing::new(std::fs::read(path).map_err(AdminError::io("reading", path))?);
    let key = SigningKey::from_pkcs8(&der).map_err(|source| AdminError::Key {
        path: path.to_owned(),
        source,
    })?;
    Ok(key.public_key().clone())
}
