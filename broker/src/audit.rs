//! The audit log: append-only JSON lines, one record per authentication
//! and authorization decision and per policy reload, each carrying the
//! SHA-256 of the previous line (`prev`), so an edit, a deleted line or two
//! swapped lines break the chain. The chain continues across restarts (the
//! last line is read back at start) and across rotation (a full file is
//! renamed `<name>.<n>` and the next file's first record points at its
//! last; at most `audit_files_max` rotated files are kept).
//!
//! A hash chain alone does not stop someone who can write the file: they
//! can edit a record and recompute every later hash, or cut lines from
//! either end. So the broker signs checkpoints of the chain with its
//! identity key ([`checkpoint`]): after the first record of a run, every
//! `audit_checkpoint_records_max` records, when a record has waited
//! `audit_checkpoint_ms_max` unsigned, as the first record of each new
//! file, and at shutdown. Each checkpoint is also published to the system
//! topic [`CHECKPOINT_TOPIC`], so an auditor can keep them elsewhere and
//! later prove a cut tail ([`verify_signed`]).
//!
//! Recording never blocks the broker: records go through a bounded queue
//! to one writer thread. Peer events are rate-limited before the queue, per
//! kind, principal and remote address (`audit_noisy_per_sec_max` a second);
//! the rest are counted in a `suppressed` summary that keeps the addresses.
//! The broker's own rare records (start, stop, reloads) have queue room of
//! their own (`audit_reserved_records_max`) that peers cannot fill. What is
//! dropped anyway, and any record that fails to write, is counted in a
//! `gap` record, by kind.

mod checkpoint;
mod event;
mod limiter;
mod verify;
mod writer;

pub use checkpoint::{
    CHECKPOINT_CONTEXT, CHECKPOINT_TOPIC, Checkpoint, Checkpoints, MalformedCheckpoint,
    PublishCheckpoint, Reason,
};
pub use event::Event;
pub use verify::{ChainBreak, ChainSummary, SignedSummary, TAIL_SLACK_MS, verify, verify_signed};
pub use writer::{GENESIS, line_hash, rotated_files};

use crate::error::BrokerError;
use crate::settings::AuditSettings;
use event::Class;
use limiter::Limiter;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use writer::Writer;

/// An event on its way to the writer.
struct Queued {
    event: Event,
    /// Whether it may use the reserved room (a system event).
    reserved: bool,
}

/// What the handles and the writer share.
struct Shared {
    limiter: Mutex<Limiter>,
    /// Events dropped because the queue was full, by kind.
    dropped: Mutex<BTreeMap<&'static str, u64>>,
    /// Peer events queued and not yet taken by the writer.
    pending: AtomicUsize,
}

impl Shared {
    fn limiter(&self) -> MutexGuard<'_, Limiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_dropped(&self, kind: &'static str) {
        let mut dropped = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        *dropped.entry(kind).or_insert(0) += 1;
    }

    fn take_dropped(&self) -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut *self.dropped.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Handle for recording events; cheap to clone. Disabled when the policy
/// has no `[audit]` section.
#[derive(Clone, Default)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    queue: SyncSender<Queued>,
    /// Queue room peer events may use; the rest is reserved.
    peer_room: usize,
    shared: Arc<Shared>,
}

impl Audit {
    /// A handle that records nothing.
    pub fn disabled() -> Audit {
        Audit::default()
    }

    /// Opens (or continues) the log and starts its writer thread, which
    /// signs checkpoints when `checkpoints` is given. The thread ends (with
    /// a last checkpoint) when every handle is dropped.
    pub fn open(
        settings: &AuditSettings,
        checkpoints: Option<Checkpoints>,
    ) -> Result<(Audit, std::thread::JoinHandle<()>), BrokerError> {
        let (audit, writer, records) = Audit::parts(settings, checkpoints)?;
        let thread = std::thread::Builder::new()
            .name("signet-audit".into())
            .spawn(move || writer.run(records))
            .map_err(|source| BrokerError::Thread {
                what: "audit writer",
                source,
            })?;
        Ok((audit, thread))
    }

    fn parts(
        settings: &AuditSettings,
        checkpoints: Option<Checkpoints>,
    ) -> Result<(Audit, Writer, Receiver<Queued>), BrokerError> {
        let shared = Arc::new(Shared {
            limiter: Mutex::new(Limiter::new(
                settings.noisy_per_sec_max,
                settings.rate_keys_max,
            )),
            dropped: Mutex::new(BTreeMap::new()),
            pending: AtomicUsize::new(0),
        });
        let writer = Writer::open(settings, checkpoints, shared.clone())?;
        let (queue, records) =
            sync_channel(settings.queue_records_max + settings.reserved_records_max);
        let inner = Arc::new(Inner {
            queue,
            peer_room: settings.queue_records_max,
            shared,
        });
        Ok((Audit { inner: Some(inner) }, writer, records))
    }

    /// Records an event without waiting: a peer event within its rate
    /// limit and while the queue has room for peers, a system event while
    /// the queue has any room. What is not queued is counted (a
    /// `suppressed` summary or a `gap` record says how many).
    pub fn record(&self, event: Event) {
        let Some(inner) = &self.inner else {
            return;
        };
        let shared = &inner.shared;
        let reserved = event.class == Class::System;
        if !reserved {
            if !shared.limiter().admit(&event, Instant::now()) {
                return;
            }
            if shared.pending.fetch_add(1, Ordering::AcqRel) >= inner.peer_room {
                shared.pending.fetch_sub(1, Ordering::AcqRel);
                shared.count_dropped(event.kind);
                return;
            }
        }
        let kind = event.kind;
        match inner.queue.try_send(Queued { event, reserved }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if !reserved {
                    shared.pending.fetch_sub(1, Ordering::AcqRel);
                }
                shared.count_dropped(kind);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use signet_proto::SigningKey;
    use std::path::Path;

    fn settings(dir: &Path, max_bytes: u64) -> AuditSettings {
        AuditSettings {
            path: dir.join("audit.log"),
            file_bytes_max: max_bytes,
            files_max: 1000,
            queue_records_max: 8192,
            reserved_records_max: 64,
            noisy_per_sec_max: 10,
            rate_keys_max: 4096,
            checkpoint_records_max: 1000,
            checkpoint_ms_max: 60_000,
        }
    }

    fn key() -> Arc<SigningKey> {
        Arc::new(SigningKey::from_seed(&[9; 32]).unwrap())
    }

    fn signing(key: &Arc<SigningKey>) -> Option<Checkpoints> {
        Some(Checkpoints {
            key: key.clone(),
            publish: None,
        })
    }

    fn write_some(s: &AuditSettings, n: usize, checkpoints: Option<Checkpoints>) {
        let (audit, thread) = Audit::open(s, checkpoints).unwrap();
        for i in 0..n {
            audit.record(Event::system("test", json!({ "i": i })));
        }
        drop(audit);
        thread.join().unwrap();
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn all_files(s: &AuditSettings) -> Vec<std::path::PathBuf> {
        let mut files = rotated_files(&s.path);
        files.push(s.path.clone());
        files
    }

    #[test]
    fn chain_continues_across_restart_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 4096);
        write_some(&s, 50, None);
        write_some(&s, 50, None);
        let files = all_files(&s);
        assert!(files.len() > 1, "small max_bytes rotates");
        let summary = verify(&files).unwrap();
        assert_eq!(summary.records, 100);
        assert_eq!((summary.first_seq, summary.last_seq), (Some(0), Some(99)));
    }

    #[test]
    fn noisy_events_are_summarized() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 30);
        let (audit, thread) = Audit::open(&s, None).unwrap();
        for _ in 0..1000 {
            audit.record(Event::new(
                "publish_denied",
                json!({ "principal": "bob", "remote": "10.0.0.1:4000" }),
            ));
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
        assert_eq!(summary["principal"], "bob");
        assert_eq!(summary["remote"], "10.0.0.1");
        assert_eq!(summary["remotes"], json!(["10.0.0.1:4000"]));
        verify(std::slice::from_ref(&s.path)).unwrap();
    }

    #[test]
    fn a_full_queue_leaves_a_gap_with_counts_and_system_records_keep_their_room() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), 1 << 30);
        s.queue_records_max = 64;
        s.reserved_records_max = 16;
        s.noisy_per_sec_max = 10_000;
        // The writer does not run yet: the queue fills and stays full.
        let (audit, writer, records) = Audit::parts(&s, None).unwrap();
        for i in 0..200 {
            audit.record(Event::new(
                "publish_denied",
                json!({ "principal": "bob", "i": i }),
            ));
        }
        audit.record(Event::system(
            "policy_reload",
            json!({ "outcome": "applied" }),
        ));
        drop(audit);
        writer.run(records);
        let records = lines(&s.path);
        let written = records
            .iter()
            .filter(|r| r["event"] == "publish_denied")
            .count();
        assert_eq!(written, 64);
        assert!(records.iter().any(|r| r["event"] == "policy_reload"));
        let gap = records
            .iter()
            .find(|r| r["event"] == "gap")
            .expect("a gap record");
        assert_eq!(gap["dropped"]["publish_denied"], 200 - 64);
        verify(std::slice::from_ref(&s.path)).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_no_partial_line_and_a_gap_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 30);
        let (audit, mut writer, records) = Audit::parts(&s, None).unwrap();
        writer.write_event(Event::system("before", json!({})));
        // Writes fail while the file is opened read-only.
        let good = std::mem::replace(writer.file_mut(), std::fs::File::open(&s.path).unwrap());
        writer.write_event(Event::system("lost", json!({})));
        writer.write_event(Event::system("lost", json!({})));
        *writer.file_mut() = good;
        drop(audit);
        writer.run(records);
        let records = lines(&s.path);
        assert_eq!(records[0]["event"], "before");
        assert_eq!(records[1]["event"], "gap");
        assert_eq!(records[1]["failed_writes"]["lost"], 2);
        verify(std::slice::from_ref(&s.path)).unwrap();
    }

    #[test]
    fn a_partial_last_line_is_cut_at_start_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 30);
        write_some(&s, 3, None);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&s.path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"seq\":3,\"ev").unwrap();
        drop(f);
        write_some(&s, 1, None);
        let records = lines(&s.path);
        assert_eq!(records[3]["event"], "gap");
        assert_eq!(records[3]["partial_line_bytes_cut"], 12);
        verify(std::slice::from_ref(&s.path)).unwrap();
    }

    #[test]
    fn checkpoints_are_signed_at_start_every_n_records_and_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), 1 << 30);
        s.checkpoint_records_max = 4;
        let key = key();
        let published = Arc::new(Mutex::new(Vec::new()));
        let sink = published.clone();
        let checkpoints = Some(Checkpoints {
            key: key.clone(),
            publish: Some(Box::new(move |line: &[u8]| {
                sink.lock().unwrap().push(line.to_vec())
            })),
        });
        write_some(&s, 10, checkpoints);
        let records = lines(&s.path);
        let reasons: Vec<&str> = records
            .iter()
            .filter(|r| r["event"] == "checkpoint")
            .map(|r| r["reason"].as_str().unwrap())
            .collect();
        assert_eq!(reasons, ["start", "periodic", "periodic", "shutdown"]);
        assert_eq!(records.last().unwrap()["reason"], "shutdown");
        assert_eq!(published.lock().unwrap().len(), 4);
        let text = std::fs::read_to_string(&s.path).unwrap();
        let last_line = text.lines().last().unwrap().as_bytes().to_vec();
        assert_eq!(
            published.lock().unwrap()[3],
            last_line,
            "published as written"
        );
        let summary = verify_signed(
            std::slice::from_ref(&s.path),
            key.public_key(),
            Some(&Checkpoint::from_record(records.last().unwrap()).unwrap()),
        )
        .unwrap();
        let signed = summary.signed.unwrap();
        assert_eq!((signed.checkpoints, signed.unsigned_tail), (4, 0));
    }

    #[test]
    fn rotation_keeps_at_most_files_max_and_each_file_opens_with_a_signed_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), 4096);
        s.files_max = 2;
        s.checkpoint_records_max = 10;
        let key = key();
        write_some(&s, 200, signing(&key));
        let rotated = rotated_files(&s.path);
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        let files = all_files(&s);
        for file in &files {
            let first = &lines(file)[0];
            assert_eq!(
                (&first["event"], &first["reason"]),
                (&json!("checkpoint"), &json!("rotation"))
            );
        }
        let summary = verify_signed(&files, key.public_key(), None).unwrap();
        assert!(summary.first_seq.unwrap() > 0);
        // Without the first line, the oldest file's head is cut.
        let text = std::fs::read_to_string(&files[0]).unwrap();
        let cut: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        std::fs::write(&files[0], cut).unwrap();
        let broken = verify_signed(&files, key.public_key(), None).unwrap_err();
        assert!(broken.reason.contains("head was cut"), "{}", broken.reason);
    }
}
