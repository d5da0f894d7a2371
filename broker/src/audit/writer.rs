//! The writer thread: appends records to the chain, writes `gap` records
//! for what was dropped or failed to write, summaries of what was rate
//! limited, signed checkpoints, and rotates the file (keeping a bounded
//! number of rotated files).

use super::checkpoint::{Checkpoints, Reason, Unsigned};
use super::event::Event;
use super::{Queued, Shared};
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::settings::AuditSettings;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest the writer sleeps between looks at the clock (summaries, time
/// checkpoints, syncing).
const TICK: Duration = Duration::from_secs(1);

/// SHA-256 (hex) of one line, without its newline.
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, line))
}

fn rotated(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Numbers `n` of the rotated files `<path>.<n>` beside `path`, ascending.
fn rotated_numbers(path: &Path) -> Vec<u64> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut numbers: Vec<u64> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix(&prefix)?;
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse().ok())
                .flatten()
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

/// Rotated files of `path` (`<path>.<n>`), oldest first. Older ones may
/// have been removed (the broker keeps `audit_files_max` of them).
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    rotated_numbers(path)
        .into_iter()
        .map(|n| rotated(path, n))
        .collect()
}

/// The end of a log file as read back at start.
struct Tail {
    /// The last complete non-empty line, if any.
    line: Option<Vec<u8>>,
    /// The file's length up to the end of its last complete line (a
    /// partial line after it, left by a crash mid-write, is not part of
    /// the chain).
    end: u64,
}

/// The end of the file at `path`; `None` when there is no file.
fn last_line(path: &Path) -> Result<Option<Tail>, BrokerError> {
    let read_error = |source| BrokerError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let mut reader = BufReader::new(file);
    let (mut last, mut end, mut pos) = (None, 0u64, 0u64);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(read_error)?;
        if n == 0 {
            break;
        }
        pos += n as u64;
        if line.last() == Some(&b'\n') {
            end = pos;
            line.pop();
            if !line.is_empty() {
                last = Some(line.clone());
            }
        }
    }
    Ok(Some(Tail { line: last, end }))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The writer thread's state.
pub(super) struct Writer {
    path: PathBuf,
    file_bytes_max: u64,
    files_max: usize,
    file: File,
    size: u64,
    next_seq: u64,
    prev: String,
    checkpoints: Option<Checkpoints>,
    every_records: u64,
    every: Duration,
    /// Records written since the last checkpoint.
    unsigned: u64,
    /// When the oldest of them was written.
    first_unsigned: Option<Instant>,
    /// Whether this run wrote its first checkpoint.
    started: bool,
    /// Records dropped before the writer saw them, by kind, not yet in a gap record.
    dropped: BTreeMap<&'static str, u64>,
    /// Records that failed to write, by kind, not yet in a gap record.
    failed: BTreeMap<&'static str, u64>,
    /// Bytes of a partial last line found at open and cut off.
    cut_bytes: u64,
    shared: Arc<Shared>,
}

impl Writer {
    pub(super) fn open(
        settings: &AuditSettings,
        checkpoints: Option<Checkpoints>,
        shared: Arc<Shared>,
    ) -> Result<Writer, BrokerError> {
        let path = settings.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| BrokerError::Read {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        let mut cut_bytes = 0;
        let mut tail = None;
        if let Some(Tail { line, end }) = last_line(&path)? {
            let len = std::fs::metadata(&path).map_or(end, |m| m.len());
            if len > end {
                cut_bytes = len - end;
                truncate(&path, end)?;
            }
            tail = line;
        }
        if tail.is_none()
            && let Some(newest) = rotated_files(&path).pop()
        {
            tail = last_line(&newest)?.and_then(|t| t.line);
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
        let file = open_append(&path).map_err(|source| BrokerError::Read {
            path: path.clone(),
            source,
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Writer {
            path,
            file_bytes_max: settings.file_bytes_max,
            files_max: settings.files_max,
            file,
            size,
            next_seq,
            prev,
            checkpoints,
            every_records: settings.checkpoint_records_max,
            every: Duration::from_millis(settings.checkpoint_ms_max),
            unsigned: 0,
            first_unsigned: None,
            started: false,
            dropped: BTreeMap::new(),
            failed: BTreeMap::new(),
            cut_bytes,
            shared,
        })
    }

    pub(super) fn run(mut self, records: Receiver<Queued>) {
        let tick = TICK.min(self.every);
        self.write_gap();
        loop {
            match records.recv_timeout(tick) {
                Ok(queued) => {
                    self.take(queued);
                    while let Ok(queued) = records.try_recv() {
                        self.take(queued);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.housekeeping(false);
        }
        self.housekeeping(true);
        if self.unsigned > 0 {
            self.checkpoint(Reason::Shutdown);
        }
        let _ = self.file.sync_data();
    }

    fn take(&mut self, queued: Queued) {
        if !queued.reserved {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
        }
        self.write_event(queued.event);
    }

    /// After each batch and at the end: a gap record for anything lost,
    /// summaries of ended rate-limit windows, a checkpoint if a record
    /// has waited `every` unsigned, and a sync.
    fn housekeeping(&mut self, all: bool) {
        self.write_gap();
        let summaries = self.shared.limiter().ended(Instant::now(), all);
        for summary in summaries {
            self.write_event(summary);
        }
        if self.unsigned > 0
            && self
                .first_unsigned
                .is_some_and(|t| t.elapsed() >= self.every)
        {
            self.checkpoint(Reason::Periodic);
        }
        let _ = self.file.sync_data();
    }

    fn write_gap(&mut self) {
        for (kind, n) in self.shared.take_dropped() {
            *self.dropped.entry(kind).or_insert(0) += n;
        }
        if self.dropped.is_empty() && self.failed.is_empty() && self.cut_bytes == 0 {
            return;
        }
        let mut fields = Map::new();
        if !self.dropped.is_empty() {
            fields.insert("dropped".into(), json!(self.dropped));
        }
        if !self.failed.is_empty() {
            fields.insert("failed_writes".into(), json!(self.failed));
        }
        if self.cut_bytes > 0 {
            fields.insert("partial_line_bytes_cut".into(), json!(self.cut_bytes));
        }
        if self.append("gap", fields, now_ms()).is_ok() {
            self.dropped.clear();
            self.failed.clear();
            self.cut_bytes = 0;
            self.after_record();
        }
    }

    /// The open file (tests swap it to make writes fail).
    #[cfg(test)]
    pub(super) fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    pub(super) fn write_event(&mut self, event: Event) {
        let kind = event.kind;
        match self.append(kind, event.fields, now_ms()) {
            Ok(()) => self.after_record(),
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), kind, "audit write failed; a gap record will count it");
                *self.failed.entry(kind).or_insert(0) += 1;
            }
        }
    }

    /// Counts a record written (not a checkpoint), signs when due, rotates
    /// when the file is full.
    fn after_record(&mut self) {
        self.unsigned += 1;
        self.first_unsigned.get_or_insert_with(Instant::now);
        if self.checkpoints.is_some() {
            if !self.started {
                self.checkpoint(Reason::Start);
            } else if self.unsigned >= self.every_records {
                self.checkpoint(Reason::Periodic);
            }
        }
        if self.size >= self.file_bytes_max {
            self.rotate();
        }
    }

    /// Appends one record: the fields, then `seq`, `time_ms`, `event` and
    /// `prev`. On failure nothing of it stays in the file.
    fn append(
        &mut self,
        kind: &str,
        mut record: Map<String, Value>,
        time_ms: u64,
    ) -> Result<(), std::io::Error> {
        record.insert("seq".into(), json!(self.next_seq));
        record.insert("time_ms".into(), json!(time_ms));
        record.insert("event".into(), json!(kind));
        record.insert("prev".into(), json!(self.prev));
        let mut line = serde_json::to_vec(&Value::Object(record))?;
        let hash = line_hash(&line);
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line) {
            // A partial line would break the chain for every later record.
            let _ = self.file.set_len(self.size);
            let _ = self.file.seek(SeekFrom::End(0));
            return Err(e);
        }
        self.size += line.len() as u64;
        self.prev = hash;
        self.next_seq += 1;
        if let Some(publish) = self
            .checkpoints
            .as_mut()
            .and_then(|c| c.publish.as_mut())
            .filter(|_| kind == "checkpoint")
        {
            line.pop();
            publish(&line);
        }
        Ok(())
    }

    /// Writes a checkpoint covering the last record written.
    fn checkpoint(&mut self, reason: Reason) {
        let Some(checkpoints) = &self.checkpoints else {
            return;
        };
        let (Some(covers_seq), Ok(covers_hash)) = (
            self.next_seq.checked_sub(1),
            hex::decode(&self.prev)
                .map_err(|_| ())
                .and_then(|h| <[u8; 32]>::try_from(h).map_err(|_| ())),
        ) else {
            return;
        };
        let time_ms = now_ms();
        let signed = Unsigned {
            seq: self.next_seq,
            time_ms,
            covers_seq,
            covers_hash,
            reason,
            every_records: self.every_records,
            every_ms: self.every.as_millis() as u64,
        }
        .sign(&checkpoints.key);
        match self.append("checkpoint", signed.fields(), time_ms) {
            Ok(()) => {
                self.unsigned = 0;
                self.first_unsigned = None;
                self.started = true;
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "audit checkpoint write failed");
                *self.failed.entry("checkpoint").or_insert(0) += 1;
            }
        }
    }

    /// Renames the full file to `<path>.<n+1>`, continues in a new one
    /// (whose first record is a rotation checkpoint, when signing), and
    /// removes the oldest rotated files beyond `files_max`.
    fn rotate(&mut self) {
        let _ = self.file.sync_all();
        let numbers = rotated_numbers(&self.path);
        let target = rotated(&self.path, numbers.last().map_or(1, |n| n + 1));
        let reopened = std::fs::rename(&self.path, &target).and_then(|()| open_append(&self.path));
        match reopened {
            Ok(file) => {
                self.file = file;
                self.size = 0;
            }
            Err(e) => {
                tracing::error!(error = %e, "audit rotation failed; continuing in the same file");
                return;
            }
        }
        let mut kept = rotated_numbers(&self.path);
        while kept.len() > self.files_max {
            let oldest = rotated(&self.path, kept.remove(0));
            match std::fs::remove_file(&oldest) {
                Ok(()) => {
                    tracing::info!(file = %oldest.display(), "removed the oldest rotated audit file")
                }
                Err(e) => {
                    tracing::warn!(file = %oldest.display(), error = %e, "cannot remove a rotated audit file");
                    break;
                }
            }
        }
        if self.checkpoints.is_some() {
            self.checkpoint(Reason::Rotation);
        }
    }
}

fn truncate(path: &Path, len: u64) -> Result<(), BrokerError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .map_err(|source| BrokerError::Read {
            path: path.to_owned(),
            source,
        })
}
