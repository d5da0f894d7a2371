//! Sequence numbers that strictly increase per signing key, also across
//! this client's restarts.
//!
//! A run starts at `max(reserved, now in ns since the epoch)`, where
//! `reserved` is read from `<signing key>.seq`. Before a seq at or past the
//! reservation is used, the reservation moves [`RESERVE_BLOCK`] ahead and is
//! synced to disk, so a restart (even with the clock stepped back) starts
//! above everything used before, at the cost of one small write per block.
//! One signing key is meant for one running process at a time.

use crate::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// How many seqs one reservation covers.
pub const RESERVE_BLOCK: u64 = 1 << 24;

/// Hands out strictly increasing seqs for one signing key.
#[derive(Debug)]
pub struct SeqAllocator {
    /// The reservation file, `<signing key>.seq`.
    path: PathBuf,
    /// The seq handed out next.
    next: u64,
    /// The first seq not covered by the reservation on disk.
    reserved: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2))
}

impl SeqAllocator {
    /// Opens (or creates) the reservation file next to the signing key.
    pub fn open(signing_key: &Path) -> Result<SeqAllocator, Error> {
        let mut name = signing_key.as_os_str().to_owned();
        name.push(".seq");
        let path = PathBuf::from(name);
        let reserved = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| Error::Config(format!("{}: not a sequence number", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(Error::Config(format!("{}: {e}", path.display()))),
        };
        let next = reserved.max(now_ns()).max(1);
        let mut alloc = SeqAllocator {
            path,
            next,
            reserved: next,
        };
        alloc.reserve()?;
        Ok(alloc)
    }

    fn reserve(&mut self) -> Result<(), Error> {
        let reserved = self.next.saturating_add(RESERVE_BLOCK);
        let tmp = self.path.with_extension("seq.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{reserved}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| Error::Config(format!("{}: {e}", self.path.display())))?;
        self.reserved = reserved;
        Ok(())
    }

    /// The next seq.
    pub fn next(&mut self) -> Result<u64, Error> {
        if self.next >= self.reserved {
            self.reserve()?;
        }
        let seq = self.next;
        self.next += 1;
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_increase_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.ed25519");
        let mut a = SeqAllocator::open(&key).unwrap();
        let first = a.next().unwrap();
        let second = a.next().unwrap();
        assert!(second > first);
        drop(a);
        let mut b = SeqAllocator::open(&key).unwrap();
        assert!(b.next().unwrap() > second);
    }

    #[test]
    fn reopen_stays_above_a_reservation_ahead_of_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.ed25519");
        let ahead = now_ns() + 1_000_000_000_000;
        std::fs::write(dir.path().join("k.ed25519.seq"), format!("{ahead}\n")).unwrap();
        let mut a = SeqAllocator::open(&key).unwrap();
        assert!(a.next().unwrap() >= ahead);
    }
}
