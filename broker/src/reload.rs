//! Hot reload of the policy: on SIGHUP, on a change of the policy file or
//! of a schema file it names, or on [`crate::Broker::reload`]. Everything
//! is parsed and validated first, then swapped in at once; on any error the
//! old policy stays, and the failure is logged, audited and counted.
//! Listener, TLS and storage settings are read at start only; a reload that
//! changes them applies the policy part and logs that a restart is needed.

use crate::audit::Event;
use crate::config;
use crate::error::{BrokerError, ConfigError};
use crate::metrics;
use crate::policy::Policy;
use crate::policy_file::{PolicyFile, StartOnly};
use crate::state::BrokerState;
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
/// Only the policy is built; the start-only sections are compared with
/// the running ones, and a change to them is logged (it needs a restart).
pub fn reload(broker: &BrokerState) -> Result<Reloaded, BrokerError> {
    let path = broker
        .settings
        .source
        .clone()
        .ok_or(BrokerError::NoPolicyFile)?;
    let current = broker.policy();
    let (start_only, policy) = match read_policy(&path) {
        Ok(read) => read,
        Err(error) => {
            let error = BrokerError::config(&path, error);
            let reason = error.to_string();
            tracing::error!(policy = %path.display(), %reason, "policy reload failed; keeping the old policy");
            metrics::reload(false);
            broker.audit.record(Event::system(
                "policy_reload",
                json!({ "outcome": "failed", "reason": reason, "kept_sha256": current.sha256 }),
            ));
            return Err(error);
        }
    };
    if policy.sha256 == current.sha256 {
        return Ok(Reloaded::Unchanged);
    }
    if start_only != broker.settings.as_written {
        tracing::warn!(
            "listener, TLS, storage, audit or limit settings changed: they apply after a restart"
        );
    }
    let policy = Policy {
        version: current.version + 1,
        ..policy
    };
    let sha256 = policy.sha256.clone();
    broker.set_policy(policy);
    metrics::reload(true);
    tracing::info!(policy = %path.display(), %sha256, "policy reloaded");
    broker.audit.record(Event::system(
        "policy_reload",
        json!({ "outcome": "applied", "sha256": sha256 }),
    ));
    Ok(Reloaded::Applied { sha256 })
}

/// The file's start-only sections as written, and the policy it holds.
fn read_policy(path: &Path) -> Result<(StartOnly, Policy), ConfigError> {
    let text = config::read(path)?;
    let file = PolicyFile::parse(&text)?;
    let start_only = file.start_only();
    let policy = Policy::from_file(file, &text, config::base_of(path))?;
    Ok((start_only, policy))
}

/// The files whose change triggers a reload.
fn watched_files(broker: &BrokerState) -> HashSet<PathBuf> {
    let mut files: HashSet<PathBuf> = broker
        .policy()
        .schema_files()
        .map(Path::to_path_buf)
        .collect();
    files.extend(broker.settings.source.clone());
    files
}

/// Reloads on SIGHUP and on file changes until shutdown.
pub fn spawn(
    broker: Arc<BrokerState>,
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
        let mut files = watched_files(&broker);
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
            let _ = reload(&broker);
            let now = watched_files(&broker);
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
