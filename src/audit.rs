//! `signet audit verify`: the hash chain of audit files, and with
//! `--broker-key` their checkpoints signed by the broker's identity key;
//! with `--checkpoint` also that the log holds a checkpoint an auditor kept
//! (so a cut tail is caught).

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use signet_broker::audit::{ChainBreak, ChainSummary, Checkpoint, verify, verify_signed};
use signet_proto::{PublicKey, SigningKey};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The broker key: `ed25519:<base64>`, or a file holding that text (the
/// `broker.ed25519.pub` `signet pki init` writes) or the PKCS#8 key itself.
pub fn broker_key(arg: &str) -> Result<PublicKey> {
    if let Ok(key) = arg.parse::<PublicKey>() {
        return Ok(key);
    }
    let path = Path::new(arg);
    let bytes = std::fs::read(path)
        .with_context(|| format!("--broker-key {arg}: neither a public key nor a readable file"))?;
    if let Some(key) = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| t.trim().parse::<PublicKey>().ok())
    {
        return Ok(key);
    }
    SigningKey::from_pkcs8(&bytes)
        .map(|k| k.public_key().clone())
        .map_err(|_| anyhow!("{}: holds no Ed25519 key", path.display()))
}

/// A kept checkpoint: inline JSON, or a file of JSON lines (checkpoint
/// records, or `signet sub` lines whose payload is one); the newest wins.
pub fn kept_checkpoint(arg: &str) -> Result<Checkpoint> {
    let text = if arg.trim_start().starts_with('{') {
        arg.to_owned()
    } else {
        std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?
    };
    let mut newest: Option<Checkpoint> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value =
            serde_json::from_str(line).with_context(|| format!("{arg}: not a JSON line"))?;
        let record = if value.get("event").is_some() {
            &value
        } else {
            value.get("payload").unwrap_or(&value)
        };
        let checkpoint = Checkpoint::from_record(record)
            .with_context(|| format!("{arg}: not a checkpoint record"))?;
        if newest.as_ref().is_none_or(|n| checkpoint.seq > n.seq) {
            newest = Some(checkpoint);
        }
    }
    newest.ok_or_else(|| anyhow!("{arg}: holds no checkpoint"))
}

/// Runs the check and prints one line: `ok: …` or `broken: …`.
pub fn verify_command(
    files: &[PathBuf],
    broker_key_arg: Option<&str>,
    checkpoint_arg: Option<&str>,
) -> Result<ExitCode> {
    let result = match broker_key_arg {
        None => {
            if checkpoint_arg.is_some() {
                bail!("--checkpoint needs --broker-key");
            }
            verify(files)
        }
        Some(arg) => {
            let key = broker_key(arg)?;
            let kept = checkpoint_arg.map(kept_checkpoint).transpose()?;
            verify_signed(files, &key, kept.as_ref())
        }
    };
    Ok(report(result))
}

fn report(result: Result<ChainSummary, ChainBreak>) -> ExitCode {
    match result {
        Ok(summary) => {
            let signed = summary.signed.as_ref().map_or(String::new(), |s| {
                let kept = s
                    .saved_seq
                    .map_or(String::new(), |seq| format!("; kept checkpoint at seq {seq} found"));
                format!(
                    "; {} checkpoints signed by the broker key, the last covering seq {}, {} records after it{kept}",
                    s.checkpoints, s.last_covered_seq, s.unsigned_tail
                )
            });
            println!(
                "ok: {} records, seq {}..{}, chain intact{signed}; last hash {}",
                summary.records,
                summary.first_seq.map_or("-".into(), |s| s.to_string()),
                summary.last_seq.map_or("-".into(), |s| s.to_string()),
                summary.last_hash
            );
            ExitCode::SUCCESS
        }
        Err(b) => {
            println!(
                "broken: {} line {} (seq {}): {}",
                b.file.display(),
                b.line,
                b.seq.map_or("unknown".into(), |s| s.to_string()),
                b.reason
            );
            ExitCode::FAILURE
        }
    }
}
