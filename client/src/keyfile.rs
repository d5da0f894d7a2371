//! Reading private key files (the TLS key, the signing key, X25519 keys):
//! refused when the group or others may read them, as the broker refuses
//! its own, and the bytes read are wiped when dropped.

use crate::error::Error;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use zeroize::Zeroizing;

/// The bytes of the private key file at `path`, checked on the file
/// opened (not the path, which could change in between).
pub(crate) fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    let fail = |e: std::io::Error| Error::Config(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::Config(format!(
            "private key {} has mode {:o}: readable by group or others; run `chmod 600` on it",
            path.display(),
            mode & 0o777
        )));
    }
    // Sized up front so the buffer never moves (a move would leave a copy).
    let size = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut bytes = Zeroizing::new(Vec::with_capacity(size));
    file.read_to_end(&mut bytes).map_err(fail)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_group_or_world_readable_keys_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, b"secret").unwrap();
        for mode in [0o640, 0o604, 0o660, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match read_private(&path) {
                Err(Error::Config(m)) => assert!(m.contains("chmod 600"), "{m}"),
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private(&path).unwrap().as_slice(), b"secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_private(&path).unwrap().as_slice(), b"secret");
    }
}
