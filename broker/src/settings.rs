//! Settings read once at start: the listener, storage, TLS paths, the audit
//! log, metrics and the [`Limits`]. A reload never changes them (it warns
//! when the file's start-only sections changed; they apply after a restart).

use crate::cluster_config::ClusterSettings;
use crate::limits::{LimitError, Limits};
use crate::policy_file::{PolicyFile, StartOnly};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Paths of the broker's TLS material.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    /// CA certificate(s) that sign client certificates (PEM).
    pub ca: PathBuf,
    /// The broker's certificate chain (PEM).
    pub cert: PathBuf,
    /// The broker's private key (PEM, not world-readable).
    pub key: PathBuf,
}

/// Where the audit log goes and how it is bounded.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The current log file; rotated files sit beside it as `<name>.<n>`.
    pub path: PathBuf,
    /// Size at which the file is rotated, in bytes.
    pub file_bytes_max: u64,
    /// Rotated files kept; older ones are removed.
    pub files_max: usize,
    /// Peer records queued for the writer before new ones are dropped (and counted).
    pub queue_records_max: usize,
    /// Further queue room only the broker's own records may use.
    pub reserved_records_max: usize,
    /// Peer records written per kind, principal and remote address per second.
    pub noisy_per_sec_max: u32,
    /// Rate-limit windows tracked at once.
    pub rate_keys_max: usize,
    /// Records written before a checkpoint is signed.
    pub checkpoint_records_max: u64,
    /// Longest a record waits unsigned, in ms.
    pub checkpoint_ms_max: u64,
}

/// The start-only part of a policy file, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// UDP address the QUIC listener binds.
    pub listen: SocketAddr,
    /// RocksDB directory.
    pub data_dir: PathBuf,
    /// Prometheus endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// TLS material.
    pub tls: TlsPaths,
    /// The broker's Ed25519 identity key (PKCS#8, mode 0600), which signs
    /// audit checkpoints and system messages, if any.
    pub identity_key: Option<PathBuf>,
    /// The audit log, if any.
    pub audit: Option<AuditSettings>,
    /// Every bound on what peers can make the broker hold.
    pub limits: Limits,
    /// This node's place in a cluster; `None`: a single broker.
    pub cluster: Option<ClusterSettings>,
    /// The policy file these came from (for reloads), if any.
    pub source: Option<PathBuf>,
    /// The start-only sections as written, to tell a reload that changed them.
    pub(crate) as_written: StartOnly,
}

/// Resolves `path` against `base` unless it is absolute.
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

impl Settings {
    /// Builds the settings from a parsed file; relative paths resolve
    /// against `base`.
    pub fn from_file(file: &PolicyFile, base: &Path) -> Result<Settings, LimitError> {
        let b = &file.broker;
        let old_keys = [
            ("broker.max_message_bytes", b.max_message_bytes),
            ("broker.max_frame_bytes", b.max_frame_bytes),
            ("broker.clock_skew_ms", b.clock_skew_ms),
            (
                "audit.max_bytes",
                file.audit.as_ref().and_then(|a| a.max_bytes),
            ),
        ];
        let pairs: Vec<(String, u64)> = old_keys
            .iter()
            .filter_map(|(key, value)| value.map(|v| ((*key).to_owned(), v)))
            .chain(
                file.limits
                    .iter()
                    .map(|(key, value)| (format!("limits.{key}"), *value)),
            )
            .collect();
        let limits = Limits::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), *v)))?;
        Ok(Settings {
            listen: b.listen,
            data_dir: resolve(base, &b.data_dir),
            metrics: b.metrics,
            tls: TlsPaths {
                ca: resolve(base, &file.tls.ca),
                cert: resolve(base, &file.tls.cert),
                key: resolve(base, &file.tls.key),
            },
            identity_key: b.identity_key.as_ref().map(|p| resolve(base, p)),
            audit: file.audit.as_ref().map(|a| AuditSettings {
                path: resolve(base, &a.path),
                file_bytes_max: limits.audit_file_bytes_max,
                files_max: Limits::usize(limits.audit_files_max),
                queue_records_max: Limits::usize(limits.audit_queue_records_max),
                reserved_records_max: Limits::usize(limits.audit_reserved_records_max),
                noisy_per_sec_max: u32::try_from(limits.audit_noisy_per_sec_max)
                    .unwrap_or(u32::MAX),
                rate_keys_max: Limits::usize(limits.audit_rate_keys_max),
                checkpoint_records_max: limits.audit_checkpoint_records_max,
                checkpoint_ms_max: limits.audit_checkpoint_ms_max,
            }),
            limits,
            // Validated by `crate::config` (`ClusterSettings::from_section`).
            cluster: None,
            source: None,
            as_written: file.start_only(),
        })
    }
}
