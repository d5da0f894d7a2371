//! The ingest checks for one `Publish` batch, in order, each able only to
//! reject: batch shape → quota (messages/s, bytes/s, stored bytes: no
//! crypto, no disk) → envelope shape (size, topic, version) → publish ACL
//! → key bound to this principal → batch signature → topic payload rules
//! (encryption required, JSON Schema) → sequence above the key's mark →
//! timestamp within the skew window. What passes goes to the
//! group commit ([`crate::commit`]). Plain functions over values: no socket,
//! no runtime.

use crate::acl::{Action, DecisionCache};
use crate::config::Policy;
use crate::quota::{Breach, PrincipalQuota};
use crate::replay::ReplayGuard;
use signet_proto::frame::{Publish, Rejection};
use signet_proto::limits::BATCH_ENVELOPES_MAX;
use signet_proto::{Envelope, ErrorCode, Proof, batch};

/// What the checks decided for one envelope.
#[derive(Debug)]
pub enum Verdict {
    /// Refused; nothing of it will be stored.
    Rejected {
        /// Why.
        rejection: Rejection,
        /// The envelope's topic, for the audit log.
        topic: String,
    },
    /// Passed every check; to be committed with this proof.
    Accepted(Box<(Envelope, Proof)>),
}

/// What the ingest checks need besides the batch.
pub struct IngestContext<'a> {
    /// The policy in force.
    pub policy: &'a Policy,
    /// The connection's principal (from its certificate).
    pub principal: &'a str,
    /// The connection's ACL decision cache.
    pub decisions: &'a mut DecisionCache,
    /// The principal's quota state.
    pub quota: &'a PrincipalQuota,
    /// Replay marks.
    pub replay: &'a ReplayGuard,
    /// Largest payload, in bytes.
    pub payload_bytes_max: usize,
    /// Accepted clock skew, in ms.
    pub clock_skew_ms: u64,
    /// Broker clock, ms since the Unix epoch.
    pub now_ms: u64,
}

fn reject(code: ErrorCode, detail: &str) -> Option<Rejection> {
    Some(Rejection::new(code, detail))
}

/// Rejects every still-undecided envelope with the same code.
fn reject_rest(verdicts: &mut [Option<Rejection>], code: ErrorCode, detail: &str) {
    for v in verdicts.iter_mut().filter(|v| v.is_none()) {
        *v = reject(code, detail);
    }
}

/// Checks a batch. Returns `Err` when the frame itself is unusable (the
/// stream is then closed with `BadFrame`); otherwise one verdict per envelope.
pub fn check_publish(
    ctx: &mut IngestContext<'_>,
    publish: Publish,
) -> Result<Vec<Verdict>, Rejection> {
    let n = publish.envelopes.len();
    if n == 0 || n > BATCH_ENVELOPES_MAX {
        return Err(Rejection::new(
            ErrorCode::BadFrame,
            "a batch holds 1 to 256 envelopes",
        ));
    }
    let bytes: u64 = publish
        .envelopes
        .iter()
        .map(|e| e.payload.len() as u64)
        .sum();
    if let Err(breach) = ctx.quota.check_publish(n as u32, bytes) {
        let rejection = match breach {
            Breach::Rate { retry_after_ms } => Rejection {
                retry_after_ms: Some(retry_after_ms),
                ..Rejection::new(
                    ErrorCode::QuotaExceeded,
                    "message or byte rate quota exceeded",
                )
            },
            Breach::Stored => {
                Rejection::new(ErrorCode::QuotaExceeded, "stored bytes quota exceeded")
            }
        };
        return Ok(publish
            .envelopes
            .into_iter()
            .map(|e| Verdict::Rejected {
                rejection: rejection.clone(),
                topic: e.topic,
            })
            .collect());
    }
    let key_id = publish.envelopes[0].key_id;
    let mut verdicts: Vec<Option<Rejection>> = vec![None; n];
    if publish.envelopes.iter().any(|e| e.key_id != key_id) {
        reject_rest(
            &mut verdicts,
            ErrorCode::BadFrame,
            "all envelopes of a batch share one key",
        );
    }
    for (v, e) in verdicts.iter_mut().zip(&publish.envelopes) {
        if v.is_none()
            && let Err((code, detail)) = e.check_shape(ctx.payload_bytes_max)
        {
            *v = reject(code, detail);
        }
    }
    check_acl(ctx, &publish.envelopes, &mut verdicts);
    let key = match ctx.policy.key_owners.get(&key_id) {
        None => {
            reject_rest(
                &mut verdicts,
                ErrorCode::UnknownKey,
                "signing key is not known",
            );
            None
        }
        Some(owner) if owner != ctx.principal => {
            reject_rest(
                &mut verdicts,
                ErrorCode::KeyNotBound,
                "signing key is not bound to this principal",
            );
            None
        }
        Some(owner) => ctx
            .policy
            .principal(owner)
            .and_then(|p| p.keys.get(&key_id))
            .cloned(),
    };
    let signed = match key {
        Some(key) if verdicts.iter().any(Option::is_none) => {
            let signed =
                batch::verify_leaves(&key, batch::leaves(&publish.envelopes), &publish.signature);
            if signed.is_none() {
                reject_rest(
                    &mut verdicts,
                    ErrorCode::BadSignature,
                    "batch signature does not verify",
                );
            }
            signed
        }
        _ => None,
    };
    check_payloads(ctx, &publish.envelopes, &mut verdicts);
    check_replay_and_clock(ctx, &publish.envelopes, &mut verdicts)?;
    Ok(publish
        .envelopes
        .into_iter()
        .zip(verdicts)
        .enumerate()
        .map(|(i, (envelope, verdict))| match (verdict, &signed) {
            (None, Some(signed)) => Verdict::Accepted(Box::new((envelope, signed.proof(i)))),
            (rejection, _) => Verdict::Rejected {
                rejection: rejection
                    .unwrap_or_else(|| Rejection::new(ErrorCode::Internal, "unverified")),
                topic: envelope.topic,
            },
        })
        .collect())
}

fn check_acl(
    ctx: &mut IngestContext<'_>,
    envelopes: &[Envelope],
    verdicts: &mut [Option<Rejection>],
) {
    let grants = ctx.policy.principal(ctx.principal).map(|p| &p.grants);
    for (v, e) in verdicts.iter_mut().zip(envelopes) {
        if v.is_some() {
            continue;
        }
        let allowed = grants.is_some_and(|g| {
            ctx.decisions
                .allows(ctx.policy.version, g, Action::Publish, &e.topic)
        });
        if !allowed {
            *v = reject(ErrorCode::Forbidden, "not allowed to publish to this topic");
        }
    }
}

/// Topic payload rules: an `encrypted` topic refuses plaintext; a topic
/// with a schema refuses payloads that do not fit it (schemas were compiled
/// when the policy was loaded).
fn check_payloads(
    ctx: &IngestContext<'_>,
    envelopes: &[Envelope],
    verdicts: &mut [Option<Rejection>],
) {
    for (v, e) in verdicts.iter_mut().zip(envelopes) {
        if v.is_some() {
            continue;
        }
        let Some(settings) = ctx.policy.topic_settings(&e.topic) else {
            continue;
        };
        if settings.encrypted && e.encryption.is_none() {
            *v = reject(
                ErrorCode::EncryptionRequired,
                "this topic only accepts encrypted payloads",
            );
        } else if let Some(schema) = &settings.compiled
            && let Err(violation) = schema.check(&e.content_type, &e.payload)
        {
            *v = Some(Rejection::new(
                ErrorCode::SchemaViolation,
                format!("schema violation {violation}"),
            ));
        }
    }
}

fn check_replay_and_clock(
    ctx: &mut IngestContext<'_>,
    envelopes: &[Envelope],
    verdicts: &mut [Option<Rejection>],
) -> Result<(), Rejection> {
    if verdicts.iter().all(Option::is_some) {
        return Ok(());
    }
    let mut lock = ctx.replay.lock();
    for (v, e) in verdicts.iter_mut().zip(envelopes) {
        if v.is_some() {
            continue;
        }
        let mark = lock.mark(&e.key_id).map_err(|err| {
            tracing::error!(error = %err, "replay mark unreadable");
            Rejection::new(ErrorCode::Unavailable, "storage unavailable")
        })?;
        if e.seq <= mark {
            *v = reject(ErrorCode::Replay, "sequence number already used");
        } else if e.timestamp_ms.abs_diff(ctx.now_ms) > ctx.clock_skew_ms {
            *v = reject(
                ErrorCode::StaleTimestamp,
                "timestamp outside the accepted clock skew",
            );
        } else {
            lock.accept(&e.key_id, e.seq);
        }
    }
    Ok(())
}
