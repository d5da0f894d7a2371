//! The free-space floor: below `limits.storage_free_bytes_min` (also
//! written `[broker] min_free_bytes`) on the data folder's file system,
//! publishes are refused with `StorageFull` before any check or write.
//! Subscriptions, retention and everything else go on (retention is what
//! frees space), and publishing resumes by itself once space returns. The
//! space is read with `statvfs` at start and every
//! `limits.storage_check_ms_max`.

use crate::metrics;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Whether the data folder is below its free-space floor.
#[derive(Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    floor: u64,
    full: AtomicBool,
}

impl DiskGuard {
    /// A guard for `dir`, checked once now.
    pub fn new(dir: &Path, floor: u64) -> DiskGuard {
        let guard = DiskGuard {
            dir: dir.to_owned(),
            floor,
            full: AtomicBool::new(false),
        };
        guard.check();
        guard
    }

    /// Whether publishes are refused now.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Reads the free space again. An unreadable file system counts as
    /// full: refusing a publish loses nothing, a failed write might.
    pub fn check(&self) {
        let free = free_bytes(&self.dir);
        let full = free.is_none_or(|free| free < self.floor);
        let was = self.full.swap(full, Ordering::AcqRel);
        if full != was {
            match free {
                Some(free) if full => tracing::warn!(
                    free,
                    floor = self.floor,
                    "disk space below the floor: publishes are refused with StorageFull"
                ),
                None => tracing::error!("free disk space unreadable: publishes are refused"),
                Some(free) => {
                    tracing::info!(free, "disk space back above the floor: publishing resumes")
                }
            }
        }
        metrics::storage_full(full);
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s file system.
fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Checks `guard` every `every` until shutdown.
pub fn spawn(
    guard: Arc<DiskGuard>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            let guard = guard.clone();
            let _ = tokio::task::spawn_blocking(move || guard.check()).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_above_the_free_space_is_full_and_zero_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DiskGuard::new(dir.path(), u64::MAX).is_full());
        assert!(!DiskGuard::new(dir.path(), 0).is_full());
        assert!(DiskGuard::new(&dir.path().join("missing"), 0).is_full());
    }
}
