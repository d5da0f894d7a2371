//! Sequence numbers that strictly increase per signing key, also across
//! this client's restarts and across processes sharing one client file.
//!
//! The broker requires a key's seqs to arrive strictly increasing, which
//! two publishers (processes, or clients in one process) sharing a key
//! could not promise on their own. So a publisher holds an exclusive lock
//! on `<signing key>.seq.lock` while it has publishes in flight, and lets
//! it go once every batch it sent is answered; others wait for it (at most
//! `SEQ_LOCK_WAIT_MS_MAX`). On taking the lock it reads the reservation
//! `<signing key>.seq`: the first time, or when another publisher moved it
//! meanwhile, it starts at `max(reserved, now in ns since the epoch)`, above
//! everything the others used. Before a seq at or past the reservation is
//! used, the reservation moves [`RESERVE_BLOCK`] ahead: written to a new file
//! with a unique name (created exclusively, so never through a planted
//! link), synced, then renamed over the reservation. A restart (even with
//! the clock stepped back) starts above everything used before.
//!
//! No path is ever followed through a symbolic link: the lock and the
//! reservation are opened with `O_NOFOLLOW`, and a link found there is
//! refused. Only publishing opens an allocator; subscribing never does.

use crate::error::Error;
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many seqs one reservation covers.
pub const RESERVE_BLOCK: u64 = 1 << 24;

/// Largest reservation file read, in bytes (a u64 in decimal and a newline).
const RESERVATION_BYTES_MAX: u64 = 64;

/// Hands out strictly increasing seqs for one signing key.
#[derive(Debug)]
pub struct SeqAllocator {
    /// The reservation file, `<signing key>.seq`.
    path: PathBuf,
    /// The lock file, `<signing key>.seq.lock`.
    lock_path: PathBuf,
    /// The seq handed out next.
    next: u64,
    /// The first seq not covered by the reservation on disk (0: none yet).
    reserved: u64,
    /// The lock file, locked, while this allocator holds the key.
    lock: Option<File>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2))
}

/// `<signing key><suffix>`.
fn beside(signing_key: &Path, suffix: &str) -> PathBuf {
    let mut name = signing_key.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn config_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {e}", path.display()))
}

/// Opens `path` without following a symbolic link; a link there is
/// refused with a message that says so.
fn open_nofollow(path: &Path, flags: OFlags) -> Result<Option<File>, Error> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::open(path, flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(Errno::NOENT) if !flags.contains(OFlags::CREATE) => Ok(None),
        Err(Errno::LOOP) => Err(Error::Config(format!(
            "{} is a symbolic link; refusing to follow it",
            path.display()
        ))),
        Err(e) => Err(config_error(path, std::io::Error::from(e))),
    }
}

impl SeqAllocator {
    /// An allocator for the key at `signing_key`; it touches no file until
    /// it is first acquired.
    pub fn new(signing_key: &Path) -> SeqAllocator {
        SeqAllocator {
            path: beside(signing_key, ".seq"),
            lock_path: beside(signing_key, ".seq.lock"),
            next: 0,
            reserved: 0,
            lock: None,
        }
    }

    /// Takes the key's lock if no other publisher holds it; false when one
    /// does. Moves above the reservation when another publisher moved it.
    pub fn try_acquire(&mut self) -> Result<bool, Error> {
        if self.lock.is_some() {
            return Ok(true);
        }
        let lock = open_nofollow(&self.lock_path, OFlags::CREATE | OFlags::RDWR)?
            .ok_or_else(|| config_error(&self.lock_path, "cannot create"))?;
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => return Ok(false),
            Err(e) => return Err(config_error(&self.lock_path, std::io::Error::from(e))),
        }
        let on_disk = read_reservation(&self.path)?;
        if self.reserved == 0 || on_disk > self.reserved {
            self.next = self.next.max(on_disk).max(now_ns()).max(1);
            self.reserved = self.next;
            self.reserve()?;
        }
        self.lock = Some(lock);
        Ok(true)
    }

    /// Lets another publisher use the key (call once everything sent with
    /// this allocator's seqs has been answered).
    pub fn release(&mut self) {
        self.lock = None;
    }

    fn reserve(&mut self) -> Result<(), Error> {
        let reserved = self.next.saturating_add(RESERVE_BLOCK);
        write_reservation(&self.path, reserved)?;
        self.reserved = reserved;
        Ok(())
    }

    /// The next seq; the lock must be held.
    pub fn next(&mut self) -> Result<u64, Error> {
        if self.lock.is_none() {
            return Err(config_error(&self.path, "used without its lock"));
        }
        if self.next >= self.reserved {
            self.reserve()?;
        }
        let seq = self.next;
        self.next += 1;
        Ok(seq)
    }
}

/// One key's allocator shared by the publishers of one client (one per
/// data group of a cluster, see `crate::lanes`): they hold the key's lock
/// together (taken by the first that needs it, let go when the last is
/// idle) and draw from one sequence, so each publisher's seqs still rise.
#[derive(Debug, Clone)]
pub struct SharedSeq {
    inner: std::sync::Arc<std::sync::Mutex<Holders>>,
}

#[derive(Debug)]
struct Holders {
    alloc: SeqAllocator,
    /// Publishers holding the lock now.
    count: u32,
}

/// One publisher's use of a [`SharedSeq`].
#[derive(Debug)]
pub struct SeqHandle {
    shared: SharedSeq,
    holding: bool,
}

impl SharedSeq {
    /// A shared allocator for the key at `signing_key`.
    pub fn new(signing_key: &Path) -> SharedSeq {
        SharedSeq {
            inner: std::sync::Arc::new(std::sync::Mutex::new(Holders {
                alloc: SeqAllocator::new(signing_key),
                count: 0,
            })),
        }
    }

    /// A handle for one more publisher.
    pub fn handle(&self) -> SeqHandle {
        SeqHandle {
            shared: self.clone(),
            holding: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Holders> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SeqHandle {
    /// [`SeqAllocator::acquire`] for this publisher: waits up to `wait`
    /// while a publisher of another client (or process) holds the key.
    pub async fn acquire(&mut self, wait: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        loop {
            if self.try_acquire()? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Config(format!(
                    "{}: another publisher kept this signing key busy for {} ms",
                    self.shared.lock().alloc.path.display(),
                    wait.as_millis()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// [`SeqAllocator::try_acquire`] for this publisher: true at once when
    /// another publisher of this client holds the lock.
    pub fn try_acquire(&mut self) -> Result<bool, Error> {
        if self.holding {
            return Ok(true);
        }
        let mut holders = self.shared.lock();
        if holders.count == 0 && !holders.alloc.try_acquire()? {
            return Ok(false);
        }
        holders.count += 1;
        self.holding = true;
        Ok(true)
    }

    /// Whether this publisher holds the key's lock.
    pub fn held(&self) -> bool {
        self.holding
    }

    /// This publisher is idle (everything it sent is answered); the lock
    /// goes when no publisher of this client holds it.
    pub fn release(&mut self) {
        if !std::mem::take(&mut self.holding) {
            return;
        }
        let mut holders = self.shared.lock();
        holders.count = holders.count.saturating_sub(1);
        if holders.count == 0 {
            holders.alloc.release();
        }
    }

    /// The next seq; this publisher must hold the lock.
    pub fn next(&mut self) -> Result<u64, Error> {
        let mut holders = self.shared.lock();
        if !self.holding {
            return Err(config_error(&holders.alloc.path, "used without its lock"));
        }
        holders.alloc.next()
    }
}

impl Drop for SeqHandle {
    fn drop(&mut self) {
        self.release();
    }
}

/// The reservation on disk, 0 when there is none.
fn read_reservation(path: &Path) -> Result<u64, Error> {
    let Some(file) = open_nofollow(path, OFlags::RDONLY)? else {
        return Ok(0);
    };
    let mut text = String::new();
    file.take(RESERVATION_BYTES_MAX)
        .read_to_string(&mut text)
        .map_err(|e| config_error(path, e))?;
    text.trim()
        .parse::<u64>()
        .map_err(|_| config_error(path, "not a sequence number"))
}

/// Writes `reserved` to a new file with a unique name beside `path`, syncs
/// it, and renames it over `path` (a rename replaces a link, never follows
/// it); then syncs the folder so the rename survives a crash.
fn write_reservation(path: &Path, reserved: u64) -> Result<(), Error> {
    let mut nonce = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| config_error(path, "no randomness for a temporary name"))?;
    let tmp = beside(
        path,
        &format!(".{}.{}.tmp", std::process::id(), hex::encode(nonce)),
    );
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{reserved}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        config_error(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquired(key: &Path) -> SeqAllocator {
        let mut a = SeqAllocator::new(key);
        assert!(a.try_acquire().unwrap());
        a
    }

    #[test]
    fn seqs_increase_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.ed25519");
        let mut a = acquired(&key);
        let first = a.next().unwrap();
        let second = a.next().unwrap();
        assert!(second > first);
        drop(a);
        let mut b = acquired(&key);
        assert!(b.next().unwrap() > second);
    }

    #[test]
    fn reopen_stays_above_a_reservation_ahead_of_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.ed25519");
        let ahead = now_ns() + 1_000_000_000_000;
        std::fs::write(dir.path().join("k.ed25519.seq"), format!("{ahead}\n")).unwrap();
        let mut a = acquired(&key);
        assert!(a.next().unwrap() >= ahead);
    }

    #[test]
    fn publishers_sharing_a_key_take_turns_and_each_turn_starts_above_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.ed25519");
        let mut a = acquired(&key);
        let mut b = SeqAllocator::new(&key);
        assert!(!b.try_acquire().unwrap(), "a holds the key");
        assert!(b.next().is_err(), "no seq without the lock");
        let a1 = a.next().unwrap();
        a.release();
        assert!(b.try_acquire().unwrap());
        let b1 = b.next().unwrap();
        assert!(b1 > a1);
        b.release();
        assert!(a.try_acquire().unwrap());
        assert!(a.next().unwrap() > b1, "a moves above what b used");
        a.release();
        // Alone again: taking the lock back costs no new reservation.
        let before = std::fs::read_to_string(dir.path().join("k.ed25519.seq")).unwrap();
        assert!(a.try_acquire().unwrap());
        let after = std::fs::read_to_string(dir.path().join("k.ed25519.seq")).unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn handles_of_one_client_hold_the_key_together_and_draw_rising_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.ed25519");
        let shared = SharedSeq::new(&key);
        let (mut a, mut b) = (shared.handle(), shared.handle());
        assert!(a.try_acquire().unwrap());
        assert!(b.try_acquire().unwrap(), "no turn-taking inside one client");
        let (a1, b1, a2) = (a.next().unwrap(), b.next().unwrap(), a.next().unwrap());
        assert!(a1 < b1 && b1 < a2);
        // Another client of the key waits until both are idle.
        let mut other = SeqAllocator::new(&key);
        a.release();
        assert!(!other.try_acquire().unwrap(), "b still holds the key");
        assert!(a.next().is_err(), "no seq without the lock");
        b.release();
        assert!(other.try_acquire().unwrap());
        assert!(other.next().unwrap() > a2);
    }

    #[test]
    fn links_at_the_reservation_or_the_lock_are_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.ed25519");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        for suffix in [".seq", ".seq.lock"] {
            let _ = std::fs::remove_file(beside(&key, ".seq.lock"));
            let link = beside(&key, suffix);
            std::os::unix::fs::symlink(&victim, &link).unwrap();
            match SeqAllocator::new(&key).try_acquire() {
                Err(Error::Config(m)) => assert!(m.contains("symbolic link"), "{m}"),
                other => panic!("{suffix}: {other:?}"),
            }
            std::fs::remove_file(&link).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        // No temporary file is left behind.
        let mut a = acquired(&key);
        a.next().unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
