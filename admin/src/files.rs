//! Writing files, with secrets at mode 0600.

use crate::AdminError;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes a secret (private key) readable by its owner only. Refuses to
/// overwrite an existing file.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), AdminError> {
    write_new(path, bytes, 0o600)
}

/// Writes a public file (certificate, config). Refuses to overwrite.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), AdminError> {
    write_new(path, bytes, 0o644)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AdminError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(AdminError::io("creating", parent))?;
    }
    if path.exists() {
        return Err(AdminError::Exists {
            path: path.to_owned(),
        });
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(AdminError::io("creating", path))?;
    f.write_all(bytes)
        .map_err(AdminError::io("writing", path))?;
    f.sync_all().map_err(AdminError::io("syncing", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_are_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/secret.key");
        write_secret(&path, b"x").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = write_public(&path, b"y").unwrap_err();
        assert!(matches!(err, AdminError::Exists { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("{} already exists; not overwriting it", path.display())
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
    }
}
