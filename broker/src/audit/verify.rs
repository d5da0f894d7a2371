//! Checking a log: the hash chain alone ([`verify`]), or the chain and
//! its checkpoints against the broker's identity key ([`verify_signed`]).
//!
//! With the key, a log passes only if:
//! - every record chains to the one before it (as without the key);
//! - it starts at the chain's first record (seq 0, `prev` = [`GENESIS`]),
//!   or at a `rotation` checkpoint (a new file's first record), so a head
//!   cut anywhere else is caught, while removing whole old files (which
//!   the broker does itself, keeping `audit_files_max`) is not;
//! - every checkpoint is signed by the key and covers the record before
//!   it, so no record before the last checkpoint can be edited, even with
//!   every later hash recomputed;
//! - there is at least one checkpoint, and after the last one no more
//!   records than it says the broker writes unsigned (`every_records`),
//!   spanning no longer than `every_ms` (plus [`TAIL_SLACK_MS`]);
//! - given a checkpoint an auditor kept (from the system topic), the log
//!   holds that very checkpoint at its seq and extends to it, so a cut
//!   tail is caught.
//!
//! A tail cut right after an earlier checkpoint leaves a log that is
//! well-formed: only a kept checkpoint tells it from a log that ends there.

use super::checkpoint::{Checkpoint, Reason};
use super::writer::{GENESIS, line_hash};
use serde_json::Value;
use signet_proto::PublicKey;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

/// Slack on `every_ms` for the records after the last checkpoint: the
/// writer looks at the clock about once a second, and a checkpoint may
/// wait for its publication.
pub const TAIL_SLACK_MS: u64 = 5_000;

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

/// What the checkpoints of a log that verified say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedSummary {
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Seq of the record the last checkpoint covers.
    pub last_covered_seq: u64,
    /// Records after the last checkpoint (unsigned, within its bounds).
    pub unsigned_tail: u64,
    /// Seq of the kept checkpoint found in the log, if one was given.
    pub saved_seq: Option<u64>,
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
    /// With a broker key: what the checkpoints say.
    pub signed: Option<SignedSummary>,
}

/// Checks the chain across `files`, in order (rotated files first, oldest
/// first, then the current one). The first record may continue an earlier
/// file not given; every later record must point at the one before it and
/// carry the next seq. Checkpoint signatures are not checked.
pub fn verify(files: &[PathBuf]) -> Result<ChainSummary, ChainBreak> {
    walk(files, None, None)
}

/// [`verify`], and the checkpoints against the broker's identity `key`,
/// and, given `saved` (a checkpoint an auditor kept), that the log holds
/// it and extends to it. See the module documentation for the rules.
pub fn verify_signed(
    files: &[PathBuf],
    key: &PublicKey,
    saved: Option<&Checkpoint>,
) -> Result<ChainSummary, ChainBreak> {
    walk(files, Some(key), saved)
}

/// The last checkpoint seen and what came after it.
struct Tail {
    checkpoint: Checkpoint,
    records: u64,
    first_time_ms: Option<u64>,
    last_time_ms: u64,
}

fn walk(
    files: &[PathBuf],
    key: Option<&PublicKey>,
    saved: Option<&Checkpoint>,
) -> Result<ChainSummary, ChainBreak> {
    let mut summary = ChainSummary {
        records: 0,
        first_seq: None,
        last_seq: None,
        last_hash: String::new(),
        signed: None,
    };
    let mut checkpoints = 0u64;
    let mut tail: Option<Tail> = None;
    let mut saved_found = false;
    let mut end = (PathBuf::new(), 0usize);
    if let Some(saved) = saved
        && let Some(key) = key
        && !saved.verify(key)
    {
        return Err(ChainBreak {
            file: files.first().cloned().unwrap_or_default(),
            line: 0,
            seq: Some(saved.seq),
            reason: "the kept checkpoint is not signed by this broker key".into(),
        });
    }
    for file in files {
        let broken = |line: usize, seq: Option<u64>, reason: String| ChainBreak {
            file: file.clone(),
            line,
            seq,
            reason,
        };
        let f = File::open(file).map_err(|e| broken(0, None, format!("cannot open: {e}")))?;
        end = (file.clone(), 0);
        for (i, line) in BufReader::new(f).split(b'\n').enumerate() {
            let n = i + 1;
            end.1 = n;
            let line = line.map_err(|e| broken(n, None, format!("cannot read: {e}")))?;
            let record: Value = serde_json::from_slice(&line)
                .map_err(|_| broken(n, None, "not a JSON record".into()))?;
            let seq = record.get("seq").and_then(Value::as_u64);
            let prev = record.get("prev").and_then(Value::as_str);
            let (Some(seq), Some(prev)) = (seq, prev) else {
                return Err(broken(n, seq, "record lacks seq or prev".into()));
            };
            let is_checkpoint = record.get("event").and_then(Value::as_str) == Some("checkpoint");
            if let Some(last) = summary.last_seq {
                if prev != summary.last_hash {
                    return Err(broken(
                        n,
                        Some(seq),
                        "prev does not match the hash of the record before it".into(),
                    ));
                }
                if seq != last + 1 {
                    return Err(broken(
                        n,
                        Some(seq),
                        format!("seq {seq} does not follow {last}"),
                    ));
                }
            } else if seq == 0 && prev != GENESIS {
                return Err(broken(
                    n,
                    Some(seq),
                    "first record does not start the chain".into(),
                ));
            }
            let time_ms = record.get("time_ms").and_then(Value::as_u64).unwrap_or(0);
            if let Some(key) = key {
                let checkpoint = if is_checkpoint {
                    let cp = Checkpoint::from_record(&record)
                        .map_err(|e| broken(n, Some(seq), e.to_string()))?;
                    check_checkpoint(&cp, key, prev).map_err(|r| broken(n, Some(seq), r))?;
                    Some(cp)
                } else {
                    None
                };
                if summary.last_seq.is_none() {
                    let file_start = checkpoint
                        .as_ref()
                        .is_some_and(|cp| cp.reason == Reason::Rotation);
                    let chain_start = seq == 0 && prev == GENESIS;
                    if !chain_start && !file_start {
                        return Err(broken(
                            n,
                            Some(seq),
                            format!(
                                "the log starts at seq {seq}, neither the chain's first record nor a file start the broker signed: its head was cut"
                            ),
                        ));
                    }
                }
                if let Some(saved) = saved
                    && seq == saved.seq
                {
                    if checkpoint.as_ref() != Some(saved) {
                        return Err(broken(
                            n,
                            Some(seq),
                            "this record is not the kept checkpoint of the same seq".into(),
                        ));
                    }
                    saved_found = true;
                }
                match checkpoint {
                    Some(cp) => {
                        checkpoints += 1;
                        tail = Some(Tail {
                            checkpoint: cp,
                            records: 0,
                            first_time_ms: None,
                            last_time_ms: time_ms,
                        });
                    }
                    None => {
                        if let Some(t) = tail.as_mut() {
                            t.records += 1;
                            t.first_time_ms.get_or_insert(time_ms);
                            t.last_time_ms = time_ms;
                        }
                    }
                }
            }
            summary.first_seq.get_or_insert(seq);
            summary.last_seq = Some(seq);
            summary.last_hash = line_hash(&line);
            summary.records += 1;
        }
    }
    let Some(key) = key else {
        return Ok(summary);
    };
    let at_end = |reason: String| ChainBreak {
        file: end.0.clone(),
        line: end.1,
        seq: summary.last_seq,
        reason,
    };
    let Some(tail) = tail else {
        return Err(at_end(format!(
            "no checkpoint signed by key {}: nothing in the log is signed",
            key.id()
        )));
    };
    let cp = &tail.checkpoint;
    if tail.records > cp.every_records {
        return Err(at_end(format!(
            "{} records after the last checkpoint (seq {}), but the broker signs every {}: records were added after it",
            tail.records, cp.seq, cp.every_records
        )));
    }
    if let Some(first) = tail.first_time_ms {
        let span = tail.last_time_ms.saturating_sub(first);
        if span > cp.every_ms.saturating_add(TAIL_SLACK_MS) {
            return Err(at_end(format!(
                "the records after the last checkpoint (seq {}) span {span} ms, but the broker signs within {} ms",
                cp.seq, cp.every_ms
            )));
        }
    }
    if let Some(saved) = saved
        && !saved_found
    {
        let reason = match (summary.first_seq, summary.last_seq) {
            (_, Some(last)) if last < saved.seq => format!(
                "the log ends at seq {last}, before the kept checkpoint at seq {}: its tail was cut",
                saved.seq
            ),
            (Some(first), _) if first > saved.seq => format!(
                "the log starts at seq {first}, after the kept checkpoint at seq {}: the file holding it is missing",
                saved.seq
            ),
            _ => format!("the kept checkpoint at seq {} is not in the log", saved.seq),
        };
        return Err(at_end(reason));
    }
    summary.signed = Some(SignedSummary {
        checkpoints,
        last_covered_seq: cp.covers_seq,
        unsigned_tail: tail.records,
        saved_seq: saved.map(|s| s.seq),
    });
    Ok(summary)
}

/// A checkpoint record must be signed by `key` and cover the record
/// before it.
fn check_checkpoint(cp: &Checkpoint, key: &PublicKey, prev: &str) -> Result<(), String> {
    if cp.key_id != key.id() {
        return Err(format!(
            "checkpoint signed by key {}, not by the broker key {}",
            cp.key_id,
            key.id()
        ));
    }
    if !cp.verify(key) {
        return Err("checkpoint signature does not verify".into());
    }
    if cp.covers_seq.checked_add(1) != Some(cp.seq) || hex::encode(cp.covers_hash) != prev {
        return Err("checkpoint does not cover the record before it".into());
    }
    Ok(())
}
