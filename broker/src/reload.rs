//! Hot reload of the policy: on SIGHUP, on a change of the policy file or
//! of a schema file it names, or on [`crate::Broker::reload`]. Everything
//! is parsed and validated first, then swapped in at once; on any error the
//! old policy stays, and the failure is logged, audited and counted.
//! Listener, TLS and storage settings are read at start only; a reload that
//! changes them applies the policy part and logs that a restart is needed.

use crate::audit::Event;
use crate::config::Config;
use crate::{Shared, metrics};
use notify::{RecursiveMode, Watcher};
use serde_json::json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// A new policy is in force.
    Applied { sha256: String },
    /// The file did not change.
    Unchanged,
}

/// Reads the policy file again and swaps the policy in if it is valid.
pub(crate) fn reload(shared: &Shared) -> Result<Reloaded, String> {
    let Some(path) = shared.config.source.clone() else {
        return Err("the broker was not started from a policy file".into());
    };
    let current = shared.policy();
    let loaded = Config::load(&path).map_err(|e| e.to_string());
    let new = match loaded {
        Ok(new) => new,
        Err(reason) => {
            tracing::error!(policy = %path.display(), %reason, "policy reload failed; keeping the old policy");
            metrics::reload(false);
            shared.audit.record(Event::new(
                "policy_reload",
                json!({ "outcome": "failed", "reason": reason, "kept_sha256": current.sha256 }),
            ));
            return Err(reason);
        }
    };
    if new.policy.sha256 == current.sha256 {
        return Ok(Reloaded::Unchanged);
    }
    warn_static_changes(&shared.config, &new);
    let mut policy = new.policy;
    policy.version = current.version + 1;
    let sha256 = policy.sha256.clone();
    shared.set_policy(policy);
    metrics::reload(true);
    tracing::info!(policy = %path.display(), %sha256, "policy reloaded");
    shared.audit.record(Event::new(
        "policy_reload",
        json!({ "outcome": "applied", "sha256": sha256 }),
    ));
    Ok(Reloaded::Applied { sha256 })
}

fn warn_static_changes(old: &Config, new: &Config) {
    if old.listen != new.listen
        || old.data_dir != new.data_dir
        || old.tls.ca != new.tls.ca
        || old.tls.cert != new.tls.cert
        || old.tls.key != new.tls.key
        || old.payload_bytes_max != new.payload_bytes_max
        || old.frame_bytes_max != new.frame_bytes_max
    {
        tracing::warn!(
            "listener, TLS, storage or size settings changed: they apply after a restart"
        );
    }
}

/// The files whose change triggers a reload.
fn watched_files(shared: &Shared) -> HashSet<PathBuf> {
    let mut files: HashSet<PathBuf> = shared
        .policy()
        .schema_files()
        .map(Path::to_path_buf)
        .collect();
    files.extend(shared.config.source.clone());
    files
}

/// Reloads on SIGHUP and on file changes until shutdown.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (changed, mut changes) = mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = changed.try_send(());
                }
            })
            .map_err(
                |e| tracing::warn!(error = %e, "file watching unavailable; reload with SIGHUP"),
            )
            .ok();
        let mut files = watched_files(&shared);
        let mut watched_dirs = HashSet::new();
        watch_dirs(watcher.as_mut(), &files, &mut watched_dirs);
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "SIGHUP handler unavailable"))
            .ok();
        loop {
            tokio::select! {
                Some(()) = changes.recv() => {}
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading the policy");
                }
                _ = shutdown.changed() => break,
            }
            let _ = reload(&shared);
            let now = watched_files(&shared);
            if now != files {
                files = now;
                watch_dirs(watcher.as_mut(), &files, &mut watched_dirs);
            }
        }
    })
}

fn watch_dirs(
    watcher: Option<&mut notify::RecommendedWatcher>,
    files: &HashSet<PathBuf>,
    watched: &mut HashSet<PathBuf>,
) {
    let Some(watcher) = watcher else {
        return;
    };
    for file in files {
        let dir = file
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        if watched.insert(dir.clone())
            && let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for policy changes");
        }
    }
}
