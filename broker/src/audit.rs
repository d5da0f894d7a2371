//! The audit log: append-only JSON lines, one record per authentication
//! and authorization decision and per policy reload, each carrying the
//! SHA-256 of the previous line (`prev`), so an edit, a deleted line or two
//! swapped lines break the chain. The chain continues across restarts (the
//! last line is read back at start) and across rotation (a full file is
//! renamed `<name>.<n>` and the next file's first record points at its last).
//!
//! Recording never blocks the broker: records go through a bounded queue
//! to one writer thread; what does not fit is counted and reported in an
//! `audit_overflow` record. Noisy events (publish denials, quota breaches)
//! are written at most `limits.audit_noisy_per_sec_max` times a second per
//! principal and kind; the rest are counted in a `suppressed` summary record.

use crate::error::BrokerError;
use crate::settings::AuditSettings;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One thing that happened.
#[derive(Debug, Clone)]
pub struct Event {
    kind: &'static str,
    /// Rate-limit key (the principal) for noisy events.
    noisy: Option<String>,
    fields: Map<String, Value>,
}

impl Event {
    /// An event of `kind` with fields.
    pub fn new(kind: &'static str, fields: Value) -> Event {
        let fields = match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Event {
            kind,
            noisy: None,
            fields,
        }
    }

    /// Marks the event as rate-limited per `principal`.
    pub fn noisy(mut self, principal: &str) -> Event {
        self.noisy = Some(principal.to_owned());
        self
    }
}

/// Handle for recording events; cheap to clone. Disabled when the policy
/// has no `[audit]` section.
#[derive(Clone, Default)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    queue: SyncSender<Event>,
    dropped: AtomicU64,
}

impl Audit {
    /// A handle that records nothing.
    pub fn disabled() -> Audit {
        Audit::default()
    }

    /// Opens (or continues) the log and starts its writer thread. The
    /// thread ends when every handle is dropped.
    pub fn open(
        settings: &AuditSettings,
    ) -> Result<(Audit, std::thread::JoinHandle<()>), BrokerError> {
        let writer = Writer::open(settings)?;
        let (queue, records) = sync_channel(settings.queue_records_max);
        let inner = Arc::new(Inner {
            queue,
            dropped: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        let thread = std::thread::Builder::new()
            .name("signet-audit".into())
            .spawn(move || writer.run(records, weak))
            .map_err(|source| BrokerError::Thread {
                what: "audit writer",
                source,
            })?;
        Ok((Audit { inner: Some(inner) }, thread))
    }

    /// Records an event without waiting.
    pub fn record(&self, event: Event) {
        if let Some(inner) = &self.inner {
            match inner.queue.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    inner.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    /// Size at which the file is rotated.
    file_bytes_max: u64,
    /// Noisy records written per principal and kind per second.
    noisy_per_sec_max: u32,
    file: File,
    size: u64,
    next_seq: u64,
    prev: String,
    windows: HashMap<(&'static str, String), Window>,
}

struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// SHA-256 (hex) of one line, without its newline.
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, line))
}

fn rotated(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotated files of `path` (`<path>.1`, `<path>.2`, …), oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    (1..)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect()
}

fn last_line(path: &Path) -> Result<Option<Vec<u8>>, BrokerError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(BrokerError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut last = None;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|source| BrokerError::Read {
            path: path.to_owned(),
            source,
        })?;
        if !line.is_empty() {
            last = Some(line);
        }
    }
    Ok(last)
}

impl Writer {
    fn open(settings: &AuditSettings) -> Result<Writer, BrokerError> {
        let path = settings.path.clone();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| BrokerError::Read {
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut tail = last_line(&path)?;
        if tail.is_none()
            && let Some(newest) = rotated_files(&path).pop()
        {
            tail = last_line(&newest)?;
        }
        let (next_seq, prev) = match tail {
            Some(line) => {
                let seq = serde_json::from_slice::<Value>(&line)
                    .ok()
                    .and_then(|v| v.get("seq").and_then(Value::as_u64))
                    .map_or(0, |s| s + 1);
                (seq, line_hash(&line))
            }
            None => (0, GENESIS.to_owned()),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| BrokerError::Read {
                path: path.clone(),
                source,
            })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Writer {
            path,
            file_bytes_max: settings.file_bytes_max,
            noisy_per_sec_max: settings.noisy_per_sec_max,
            file,
            size,
            next_seq,
            prev,
            windows: HashMap::new(),
        })
    }

    fn run(mut self, records: Receiver<Event>, inner: std::sync::Weak<Inner>) {
        loop {
            match records.recv_timeout(Duration::from_secs(1)) {
                Ok(event) => {
                    self.take(event);
                    while let Ok(event) = records.try_recv() {
                        self.take(event);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if let Some(inner) = inner.upgrade() {
                let dropped = inner.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    self.write(Event::new("audit_overflow", json!({ "dropped": dropped })));
                }
            }
            self.flush_windows(false);
            let _ = self.file.sync_data();
        }
        self.flush_windows(true);
        let _ = self.file.sync_data();
    }

    fn take(&mut self, event: Event) {
        if let Some(principal) = event.noisy.clone() {
            let window = self
                .windows
                .entry((event.kind, principal))
                .or_insert(Window {
                    started: Instant::now(),
                    written: 0,
                    suppressed: 0,
                });
            if window.written >= self.noisy_per_sec_max {
                window.suppressed += 1;
                return;
            }
            window.written += 1;
        }
        self.write(event);
    }

    /// Writes a summary for each rate-limit window that has ended (all of
    /// them when `all`), and forgets it.
    fn flush_windows(&mut self, all: bool) {
        let ended: Vec<(&'static str, String)> = self
            .windows
            .iter()
            .filter(|(_, w)| all || w.started.elapsed() >= Duration::from_secs(1))
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            if let Some(w) = self.windows.remove(&key)
                && w.suppressed > 0
            {
                let summary = json!({ "of": key.0, "principal": key.1, "count": w.suppressed, "window_ms": w.started.elapsed().as_millis() as u64 });
                self.write(Event::new("suppressed", summary));
            }
        }
    }

    fn write(&mut self, event: Event) {
        let mut record = event.fields;
        record.insert("seq".into(), json!(self.next_seq));
        record.insert("time_ms".into(), json!(now_ms()));
        record.insert("event".into(), json!(event.kind));
        record.insert("prev".into(), json!(self.prev));
        let Ok(mut line) = serde_json::to_vec(&Value::Object(record)) else {
            return;
        };
        let hash = line_hash(&line);
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line) {
            tracing::error!(error = %e, path = %self.path.display(), "audit write failed");
            return;
        }
        self.size += line.len() as u64;
        self.prev = hash;
        self.next_seq += 1;
        if self.size >= self.file_bytes_max {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        let _ = self.file.sync_all();
        let n = rotated_files(&self.path).len() as u64 + 1;
        let target = rotated(&self.path, n);
        let reopened = std::fs::rename(&self.path, &target).and_then(|()| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
        });
        match reopened {
            Ok(file) => {
                self.file = file;
                self.size = 0;
            }
            Err(e) => {
                tracing::error!(error = %e, "audit rotation failed; continuing in the same file")
            }
        }
    }
}

/// Where a chain broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number in that file.
    pub line: usize,
    /// The record's seq, if it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Records checked.
    pub records: u64,
    /// Seq of the first record.
    pub first_seq: Option<u64>,
    /// Seq of the last record.
    pub last_seq: Option<u64>,
    /// Hash of the last record (the next record's `prev`).
    pub last_hash: String,
}

/// Checks the chain across `files`, in order (rotated files first, oldest
/// first, then the current one). The first record may continue an earlier
/// file not given; every later record must point at the one before it and
/// carry the next seq.
pub fn verify(files: &[PathBuf]) -> Result<ChainSummary, ChainBreak> {
    let mut summary = ChainSummary {
        records: 0,
        first_seq: None,
        last_seq: None,
        last_hash: String::new(),
    };
    for file in files {
        let broken = |line: usize, seq: Option<u64>, reason: String| ChainBreak {
            file: file.clone(),
            line,
            seq,
            reason,
        };
        let f = File::open(file).map_err(|e| broken(0, None, format!("cannot open: {e}")))?;
        for (i, line) in BufReader::new(f).split(b'\n').enumerate() {
            let line = line.map_err(|e| broken(i + 1, None, format!("cannot read: {e}")))?;
            let record: Value = serde_json::from_slice(&line)
                .map_err(|_| broken(i + 1, None, "not a JSON record".into()))?;
            let seq = record.get("seq").and_then(Value::as_u64);
            let prev = record.get("prev").and_then(Value::as_str);
            let (Some(seq), Some(prev)) = (seq, prev) else {
                return Err(broken(i + 1, seq, "record lacks seq or prev".into()));
            };
            if let Some(last) = summary.last_seq {
                if prev != summary.last_hash {
                    return Err(broken(
                        i + 1,
                        Some(seq),
                        "prev does not match the hash of the record before it".into(),
                    ));
                }
                if seq != last + 1 {
                    return Err(broken(
                        i + 1,
                        Some(seq),
                        format!("seq {seq} does not follow {last}"),
                    ));
                }
            } else if seq == 0 && prev != GENESIS {
                return Err(broken(
                    i + 1,
                    Some(seq),
                    "first record does not start the chain".into(),
                ));
            }
            summary.first_seq.get_or_insert(seq);
            summary.last_seq = Some(seq);
            summary.last_hash = line_hash(&line);
            summary.records += 1;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, max_bytes: u64) -> AuditSettings {
        AuditSettings {
            path: dir.join("audit.log"),
            file_bytes_max: max_bytes,
            queue_records_max: 8192,
            noisy_per_sec_max: 10,
        }
    }

    fn write_some(s: &AuditSettings, n: usize) {
        let (audit, thread) = Audit::open(s).unwrap();
        for i in 0..n {
            audit.record(Event::new("test", json!({ "i": i })));
        }
        drop(audit);
        thread.join().unwrap();
    }

    #[test]
    fn chain_continues_across_restart_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 4096);
        write_some(&s, 50);
        write_some(&s, 50);
        let mut files = rotated_files(&s.path);
        assert!(!files.is_empty(), "small max_bytes rotates");
        files.push(s.path.clone());
        let summary = verify(&files).unwrap();
        assert_eq!(summary.records, 100);
        assert_eq!((summary.first_seq, summary.last_seq), (Some(0), Some(99)));
    }

    #[test]
    fn noisy_events_are_summarized() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 30);
        let (audit, thread) = Audit::open(&s).unwrap();
        for _ in 0..1000 {
            audit.record(Event::new("publish_denied", json!({})).noisy("bob"));
        }
        drop(audit);
        thread.join().unwrap();
        let text = std::fs::read_to_string(&s.path).unwrap();
        let denied = text
            .lines()
            .filter(|l| l.contains("\"publish_denied\"") && !l.contains("\"suppressed\""))
            .count();
        assert_eq!(denied, s.noisy_per_sec_max as usize);
        let summary: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(summary["event"], "suppressed");
        assert_eq!(summary["count"], 1000 - u64::from(s.noisy_per_sec_max));
        verify(std::slice::from_ref(&s.path)).unwrap();
    }
}
