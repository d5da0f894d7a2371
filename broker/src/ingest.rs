//! The ingest checks for one `Publish` batch, as plain functions over
//! values: no socket, no runtime, no storage, no wall clock. The caller
//! passes the policy, the principal's quota state (whose buckets read an
//! injected clock), the broker time, and the replay marks
//! ([`ReplayMarks`]). Each step can only refuse, and they run in this
//! order, cheap before expensive:
//!
//! 1. [`check_batch_size`]: 1 to 256 envelopes (else the frame is unusable);
//! 2. [`check_quota`]: messages/s, record bytes/s, new topics/s, stored
//!    bytes (no crypto, no disk); the longest prefix that fits goes on, the
//!    rest is refused;
//! 3. [`check_envelope_shapes`]: one signing key per batch, version, topic
//!    name, the whole envelope's size, content type, headers, encryption
//!    suite and sealed-key sizes;
//! 4. [`check_acl`]: the principal may publish to the topic;
//! 5. [`check_key_binding`]: the key is known and bound to this principal;
//! 6. [`check_signature`]: the batch signature over the Merkle root;
//! 7. [`check_payload_rules`]: encrypted topics take only encrypted payloads
//!    with recipients, other topics no encrypted ones; schemas;
//! 8. [`check_replay_and_clock`]: seq above the key's mark, timestamp within
//!    the skew window; accepting moves the mark, so this runs last.
//!
//! What passes goes to the group commit ([`crate::commit`]).

use crate::acl::{Action, DecisionCache, is_system_topic};
use crate::policy::Policy;
use crate::quota::{Admission, Breach, Cost, DefaultClock, PrincipalQuota, Reservation};
use governor::clock::Clock;
use signet_proto::batch::{self, SignedBatch};
use signet_proto::frame::{Publish, Rejection};
use signet_proto::limits::{BATCH_ENVELOPES_MAX, PROOF_PATH_MAX};
use signet_proto::merkle::Hash;
use signet_proto::{Envelope, ErrorCode, KeyId, Proof, PublicKey, StoredRecord};
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

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
    /// Passed every check; to be committed (see [`Accepted`]).
    Accepted(Box<Accepted>),
    /// A retry of an envelope already stored, byte for byte (same key,
    /// seq and leaf hash): answered with its original offset, not stored
    /// again.
    Stored {
        /// Where it was stored.
        offset: u64,
    },
}

/// An envelope that passed every check, with what its commit needs.
#[derive(Debug)]
pub struct Accepted {
    pub envelope: Envelope,
    /// Its proof in the signed batch.
    pub proof: Proof,
    /// Its leaf hash, remembered for idempotent publish.
    pub leaf: Hash,
    /// The key its replay mark is kept under (scoped to its data group in
    /// a cluster: [`ReplayMarks::scoped`]), worked out once here.
    pub replay: KeyId,
}

/// What the ingest checks need besides the batch.
pub struct IngestContext<'a, C: Clock = DefaultClock> {
    /// The policy in force.
    pub policy: &'a Policy,
    /// The connection's principal (from its certificate).
    pub principal: &'a str,
    /// The connection's ACL decision cache.
    pub decisions: &'a mut DecisionCache,
    /// The principal's quota state.
    pub quota: &'a PrincipalQuota<C>,
    /// Largest envelope, in bytes of its canonical encoding (payload,
    /// headers, encryption block and all).
    pub message_bytes_max: usize,
    /// Accepted clock skew, in ms.
    pub clock_skew_ms_max: u64,
    /// Broker clock, ms since the Unix epoch.
    pub now_ms: u64,
    /// Whether a topic already has stored messages (a new one costs a
    /// topic token). Called once per distinct topic of a batch.
    pub topic_exists: &'a dyn Fn(&str) -> bool,
}

/// What the checks decided for a batch.
#[derive(Debug)]
pub struct Checked {
    /// One verdict per envelope, in order.
    pub verdicts: Vec<Verdict>,
    /// Stored bytes reserved for the envelopes the quota admitted; keep it
    /// until their commit has added what it stored (then drop it).
    pub reserved: Reservation,
}

/// The highest accepted seq per signing key, read and moved by
/// [`check_replay_and_clock`]. The broker's implementation reads storage
/// and locks on first use ([`crate::replay`]); tests use a `HashMap`.
pub trait ReplayMarks {
    /// Why a mark could not be read.
    type Error: std::fmt::Display;
    /// The key `key`'s marks for `topic` are kept under (a cluster keeps
    /// them per data group, see [`crate::replay::replay_key`]); the key
    /// itself by default.
    fn scoped(&self, key: &KeyId, topic: &str) -> KeyId {
        let _ = topic;
        *key
    }
    /// The highest accepted seq of `key` (0 when none: seqs start at 1).
    fn mark(&mut self, key: &KeyId) -> Result<u64, Self::Error>;
    /// Records `seq` as accepted for `key` (the caller checked it is above the mark).
    fn accept(&mut self, key: &KeyId, seq: u64);
    /// For a seq at or below the mark: the offset it was stored at, if the
    /// envelope stored with it had this `leaf` hash (same signed bytes)
    /// and the seq is still in the idempotency window.
    fn stored(&mut self, key: &KeyId, seq: u64, leaf: &Hash) -> Result<Option<u64>, Self::Error> {
        let _ = (key, seq, leaf);
        Ok(None)
    }
}

impl ReplayMarks for HashMap<KeyId, u64> {
    type Error = std::convert::Infallible;

    fn mark(&mut self, key: &KeyId) -> Result<u64, Self::Error> {
        Ok(self.get(key).copied().unwrap_or(0))
    }

    fn accept(&mut self, key: &KeyId, seq: u64) {
        self.insert(*key, seq);
    }
}

/// A batch under check: its envelopes and, per envelope, the first
/// refusal (`None` while it still passes).
struct Checking {
    envelopes: Vec<Envelope>,
    refused: Vec<Option<Rejection>>,
    /// Retries of envelopes already stored: their offsets.
    stored: Vec<Option<u64>>,
    /// The keys their replay marks are kept under (set by the replay check).
    replay: Vec<KeyId>,
}

impl Checking {
    fn new(envelopes: Vec<Envelope>) -> Checking {
        Checking {
            refused: vec![None; envelopes.len()],
            stored: vec![None; envelopes.len()],
            replay: envelopes.iter().map(|e| e.key_id).collect(),
            envelopes,
        }
    }

    /// The envelopes still passing, with their verdict slots.
    fn passing(&mut self) -> impl Iterator<Item = (&mut Option<Rejection>, &Envelope)> {
        self.refused
            .iter_mut()
            .zip(&self.envelopes)
            .filter(|(refused, _)| refused.is_none())
    }

    fn any_passing(&self) -> bool {
        self.refused.iter().any(Option::is_none)
    }

    /// Refuses every envelope still passing.
    fn refuse_rest(&mut self, code: ErrorCode, detail: &str) {
        for (refused, _) in self.passing() {
            *refused = Some(Rejection::new(code, detail));
        }
    }

    /// One verdict per envelope; the accepted ones take their proof from
    /// the verified batch.
    fn verdicts(self, signed: Option<SignedBatch>) -> Vec<Verdict> {
        self.envelopes
            .into_iter()
            .zip(self.refused)
            .zip(self.stored)
            .zip(self.replay)
            .enumerate()
            .map(
                |(i, (((envelope, refused), stored), replay))| match (refused, &signed) {
                    _ if stored.is_some() => Verdict::Stored {
                        offset: stored.unwrap_or_default(),
                    },
                    (None, Some(signed)) => {
                        let leaf = signed
                            .tree
                            .leaves()
                            .get(i)
                            .copied()
                            .unwrap_or(Hash([0; 32]));
                        Verdict::Accepted(Box::new(Accepted {
                            envelope,
                            proof: signed.proof(i),
                            leaf,
                            replay,
                        }))
                    }
                    (refused, _) => Verdict::Rejected {
                        rejection: refused
                            .unwrap_or_else(|| Rejection::new(ErrorCode::Internal, "unverified")),
                        topic: envelope.topic,
                    },
                },
            )
            .collect()
    }
}

/// Checks a batch. Returns `Err` when the frame itself is unusable (the
/// stream is then closed with `BadFrame`) or the replay marks cannot be
/// read (`Unavailable`); otherwise one verdict per envelope, in order, and
/// the stored bytes reserved for what the quota admitted.
pub fn check_publish<C: Clock, M: ReplayMarks>(
    ctx: &mut IngestContext<'_, C>,
    publish: Publish,
    marks: &mut M,
) -> Result<Checked, Rejection> {
    check_batch_size(&publish)?;
    let mut batch = Checking::new(publish.envelopes);
    let admission = check_quota(ctx, &batch.envelopes);
    if let Some(breach) = admission.breach {
        let rejection = quota_rejection(breach);
        for refused in &mut batch.refused[admission.accepted..] {
            *refused = Some(rejection.clone());
        }
    }
    let reserved = admission.reserved;
    if !batch.any_passing() {
        return Ok(Checked {
            verdicts: batch.verdicts(None),
            reserved,
        });
    }
    check_envelope_shapes(ctx, &mut batch);
    check_acl(ctx, &mut batch);
    let key = check_key_binding(ctx, &mut batch);
    let signed = check_signature(key, &publish.signature, &mut batch);
    check_payload_rules(ctx, &mut batch);
    let leaves = signed.as_ref().map_or(&[][..], |s| s.tree.leaves());
    check_replay_and_clock(ctx, &mut batch, leaves, marks)?;
    Ok(Checked {
        verdicts: batch.verdicts(signed),
        reserved,
    })
}

/// Step 1: a batch holds 1 to [`BATCH_ENVELOPES_MAX`] envelopes.
pub fn check_batch_size(publish: &Publish) -> Result<(), Rejection> {
    let n = publish.envelopes.len();
    if n == 0 || n > BATCH_ENVELOPES_MAX {
        return Err(Rejection::new(
            ErrorCode::BadFrame,
            "a batch holds 1 to 256 envelopes",
        ));
    }
    Ok(())
}

/// Step 2: the longest prefix of the batch that fits the principal's
/// message, byte, new-topic and stored-bytes quotas is admitted (and
/// charged); the caller refuses the rest. An envelope costs
/// [`record_bytes_max`] bytes and, when its topic has no stored message
/// and no earlier envelope of the batch names it, one new topic.
pub fn check_quota<C: Clock>(ctx: &IngestContext<'_, C>, envelopes: &[Envelope]) -> Admission {
    let mut seen: HashSet<&str> = HashSet::new();
    let costs: Vec<Cost> = envelopes
        .iter()
        .map(|e| Cost {
            bytes: record_bytes_max(e),
            new_topic: seen.insert(&e.topic) && !(ctx.topic_exists)(&e.topic),
        })
        .collect();
    ctx.quota.admit(&costs)
}

/// The refusal of an envelope the quota did not admit.
pub fn quota_rejection(breach: Breach) -> Rejection {
    match breach {
        Breach::Rate { retry_after_ms } => Rejection {
            retry_after_ms: Some(retry_after_ms),
            ..Rejection::new(
                ErrorCode::QuotaExceeded,
                "message, byte or new-topic rate quota exceeded",
            )
        },
        Breach::Stored => Rejection::new(ErrorCode::QuotaExceeded, "stored bytes quota exceeded"),
    }
}

/// Counts the bytes written to it (a record's encoded size without
/// building it).
struct ByteCount(u64);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len() as u64);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn encoded_len<T: serde::Serialize>(value: &T) -> u64 {
    let mut count = ByteCount(0);
    match rmp_serde::encode::write(&mut count, value) {
        Ok(()) => count.0,
        // Not reachable for our types; count something rather than nothing.
        Err(_) => count.0.max(1),
    }
}

/// The most a stored record adds to its envelope: the record's array
/// header, the largest receive time and the largest proof (signature,
/// index, count, a full Merkle path). About 360 bytes.
static RECORD_OVERHEAD_BYTES_MAX: LazyLock<u64> = LazyLock::new(|| {
    let empty = Envelope {
        version: 0,
        salt: signet_proto::Salt([0; 16]),
        topic: String::new(),
        key_id: KeyId([0; 16]),
        seq: 0,
        timestamp_ms: 0,
        content_type: String::new(),
        headers: vec![],
        encryption: None,
        payload: vec![],
    };
    let record = StoredRecord {
        received_ms: u64::MAX,
        envelope: empty.clone(),
        proof: Proof {
            signature: vec![0xff; 64],
            leaf_index: u32::MAX,
            leaf_count: u32::MAX,
            path: vec![Hash([0xff; 32]); PROOF_PATH_MAX],
        },
    };
    encoded_len(&record).saturating_sub(encoded_len(&empty))
});

/// The most bytes `envelope`'s stored record can take: what quotas count
/// (bytes/s and stored bytes). Every field counts (topic, content type,
/// headers, encryption recipients, payload), not only the payload; the
/// group commit then counts the record's exact size, never more than this.
pub fn record_bytes_max(envelope: &Envelope) -> u64 {
    encoded_len(envelope).saturating_add(*RECORD_OVERHEAD_BYTES_MAX)
}

/// Step 3: every envelope is signed by the batch's one key and is well
/// formed (version, topic name, whole-envelope size, content type,
/// headers, encryption suite and sealed-key sizes).
fn check_envelope_shapes<C: Clock>(ctx: &IngestContext<'_, C>, batch: &mut Checking) {
    let key_id = batch.envelopes[0].key_id;
    if batch.envelopes.iter().any(|e| e.key_id != key_id) {
        batch.refuse_rest(
            ErrorCode::BadFrame,
            "all envelopes of a batch share one key",
        );
    }
    for (refused, e) in batch.passing() {
        if let Err((code, detail)) = e.check_shape(ctx.message_bytes_max) {
            *refused = Some(Rejection::new(code, detail));
        }
    }
}

/// Step 4: the principal may publish to each envelope's topic (never to
/// a system topic, which only the broker writes).
fn check_acl<C: Clock>(ctx: &mut IngestContext<'_, C>, batch: &mut Checking) {
    let grants = ctx.policy.principal(ctx.principal).map(|p| &p.grants);
    for (refused, e) in batch.passing() {
        let allowed = !is_system_topic(&e.topic)
            && grants.is_some_and(|g| {
                ctx.decisions
                    .allows(ctx.policy.version, g, Action::Publish, &e.topic)
            });
        if !allowed {
            *refused = Some(Rejection::new(
                ErrorCode::Forbidden,
                "not allowed to publish to this topic",
            ));
        }
    }
}

/// Step 5: the batch's key is known and bound to this principal; returns it.
fn check_key_binding<C: Clock>(
    ctx: &IngestContext<'_, C>,
    batch: &mut Checking,
) -> Option<PublicKey> {
    let key_id = batch.envelopes[0].key_id;
    match ctx.policy.key_owners.get(&key_id) {
        None => {
            batch.refuse_rest(ErrorCode::UnknownKey, "signing key is not known");
            None
        }
        Some(owner) if owner != ctx.principal => {
            batch.refuse_rest(
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
    }
}

/// Step 6: the batch signature verifies over the Merkle root of all the
/// batch's envelopes (checked only if something still passes). A bad
/// signature refuses the whole batch.
fn check_signature(
    key: Option<PublicKey>,
    signature: &[u8],
    batch: &mut Checking,
) -> Option<SignedBatch> {
    let key = key.filter(|_| batch.any_passing())?;
    let signed = batch::verify_leaves(&key, batch::leaves(&batch.envelopes), signature);
    if signed.is_none() {
        batch.refuse_rest(ErrorCode::BadSignature, "batch signature does not verify");
    }
    signed
}

/// Step 7: topic payload rules: an `encrypted` topic takes only encrypted
/// payloads sealed to at least one recipient, any other topic refuses an
/// encryption block; a topic with a schema refuses payloads that do not
/// fit it (schemas were compiled when the policy was loaded).
fn check_payload_rules<C: Clock>(ctx: &IngestContext<'_, C>, batch: &mut Checking) {
    for (refused, e) in batch.passing() {
        let settings = ctx.policy.topic_settings(&e.topic);
        let encrypted = settings.is_some_and(|s| s.encrypted);
        if let Err(rejection) = check_encryption_rule(encrypted, e) {
            *refused = Some(rejection);
        } else if let Some(schema) = settings.and_then(|s| s.compiled.as_ref())
            && let Err(violation) = schema.check(&e.content_type, &e.payload)
        {
            *refused = Some(Rejection::new(
                ErrorCode::SchemaViolation,
                format!("schema violation {violation}"),
            ));
        }
    }
}

/// Whether an envelope's encryption block fits its topic: present with at
/// least one recipient on an encrypted topic (the suite was checked with
/// the shape), absent elsewhere.
fn check_encryption_rule(encrypted: bool, e: &Envelope) -> Result<(), Rejection> {
    match (&e.encryption, encrypted) {
        (None, true) => Err(Rejection::new(
            ErrorCode::EncryptionRequired,
            "this topic only accepts encrypted payloads",
        )),
        (Some(enc), true) if enc.recipients.is_empty() => Err(Rejection::new(
            ErrorCode::EncryptionRequired,
            "an encrypted payload is sealed to at least one recipient",
        )),
        (Some(_), false) => Err(Rejection::new(
            ErrorCode::EncryptionNotAllowed,
            "this topic does not accept encrypted payloads",
        )),
        _ => Ok(()),
    }
}

/// Step 8: each seq is above its key's mark and each timestamp within the
/// skew window; each envelope that passes moves the mark. Marks are read
/// only if something still passes (so only for keys bound in the policy).
/// A seq at or below the mark is `Replay`, unless the same envelope (same
/// leaf hash, so the same signed bytes) is stored under that key and seq
/// within the idempotency window: then it is a retry, answered with the
/// original offset ([`Verdict::Stored`]) and not stored again.
fn check_replay_and_clock<C: Clock, M: ReplayMarks>(
    ctx: &IngestContext<'_, C>,
    batch: &mut Checking,
    leaves: &[Hash],
    marks: &mut M,
) -> Result<(), Rejection> {
    let unavailable = |err: M::Error| {
        tracing::error!(error = %err, "replay mark unreadable");
        Rejection::new(ErrorCode::Unavailable, "storage unavailable")
    };
    for (i, (((refused, e), stored), key)) in batch
        .refused
        .iter_mut()
        .zip(&batch.envelopes)
        .zip(batch.stored.iter_mut())
        .zip(batch.replay.iter_mut())
        .enumerate()
    {
        if refused.is_some() {
            continue;
        }
        *key = marks.scoped(&e.key_id, &e.topic);
        let key = *key;
        let mark = marks.mark(&key).map_err(unavailable)?;
        if e.seq <= mark {
            *refused = Some(Rejection::new(
                ErrorCode::Replay,
                "sequence number already used",
            ));
            if let Some(leaf) = leaves.get(i) {
                *stored = marks.stored(&key, e.seq, leaf).map_err(unavailable)?;
            }
        } else if e.timestamp_ms.abs_diff(ctx.now_ms) > ctx.clock_skew_ms_max {
            *refused = Some(Rejection::new(
                ErrorCode::StaleTimestamp,
                "timestamp outside the accepted clock skew",
            ));
        } else {
            marks.accept(&key, e.seq);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_file::PolicyFile;
    use crate::quota::Quotas;
    use governor::clock::FakeRelativeClock;
    use signet_proto::envelope::{CONTENT_TYPE_JSON, Encryption, SealedKey};
    use signet_proto::{Header, SigningKey};
    use std::time::Duration;

    const NOW_MS: u64 = 1_700_000_000_000;

    /// A policy, three keys and a fake clock: `alice` may publish
    /// `orders.>` (10 messages/s, 20,000 stored bytes), `bob` everything.
    struct World {
        policy: Policy,
        alice: SigningKey,
        bob: SigningKey,
        stranger: SigningKey,
        quotas: Quotas<FakeRelativeClock>,
        clock: FakeRelativeClock,
        decisions: DecisionCache,
        marks: HashMap<KeyId, u64>,
        _dir: tempfile::TempDir,
    }

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap()
    }

    fn world() -> World {
        let (alice, bob, stranger) = (key(), key(), key());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("order.json"),
            r#"{"type":"object","required":["id"]}"#,
        )
        .unwrap();
        let text = format!(
            r#"
[broker]
listen = "127.0.0.1:0"
data_dir = "data"
[tls]
ca = "ca.crt"
cert = "b.crt"
key = "b.key"
[[principal]]
name = "alice"
keys = ["{}"]
publish = ["orders.>"]
quota = {{ msgs_per_sec = 10, stored_bytes = 20000 }}
[[principal]]
name = "bob"
keys = ["{}"]
publish = [">"]
[[topic]]
name = "orders.secret"
encrypted = true
[[topic]]
name = "orders.checked"
schema = "order.json"
"#,
            alice.public_key(),
            bob.public_key()
        );
        let policy =
            Policy::from_file(PolicyFile::parse(&text).unwrap(), &text, dir.path()).unwrap();
        let clock = FakeRelativeClock::default();
        World {
            policy,
            alice,
            bob,
            stranger,
            quotas: Quotas::with_clock(1 << 20, clock.clone()),
            clock,
            decisions: DecisionCache::default(),
            marks: HashMap::new(),
            _dir: dir,
        }
    }

    fn envelope(key: &SigningKey, topic: &str, seq: u64, payload: &[u8]) -> Envelope {
        Envelope {
            version: 1,
            salt: signet_proto::Salt::random().unwrap(),
            topic: topic.into(),
            key_id: key.id(),
            seq,
            timestamp_ms: NOW_MS,
            content_type: CONTENT_TYPE_JSON.into(),
            headers: vec![],
            encryption: None,
            payload: payload.to_vec(),
        }
    }

    fn signed(key: &SigningKey, envelopes: Vec<Envelope>) -> Publish {
        Publish {
            request_id: 1,
            signature: batch::sign(key, &envelopes).unwrap().signature,
            envelopes,
        }
    }

    impl World {
        /// Runs the checks as `principal` and returns one code per
        /// envelope (`None` for accepted).
        fn check(
            &mut self,
            principal: &str,
            publish: Publish,
        ) -> Result<Vec<Option<ErrorCode>>, Rejection> {
            let quota = self
                .quotas
                .get(principal, self.policy.quota(principal), || Ok::<u64, ()>(0))
                .unwrap();
            let mut ctx = IngestContext {
                policy: &self.policy,
                principal,
                decisions: &mut self.decisions,
                quota: &quota,
                message_bytes_max: 1024,
                clock_skew_ms_max: 60_000,
                now_ms: NOW_MS,
                topic_exists: &|_: &str| false,
            };
            let verdicts = check_publish(&mut ctx, publish, &mut self.marks)?.verdicts;
            Ok(verdicts
                .into_iter()
                .map(|v| match v {
                    Verdict::Accepted(_) | Verdict::Stored { .. } => None,
                    Verdict::Rejected { rejection, .. } => Some(rejection.code),
                })
                .collect())
        }

        /// One envelope by alice on `topic`, checked as alice.
        fn alice_one(&mut self, topic: &str, seq: u64, payload: &[u8]) -> Option<ErrorCode> {
            let publish = signed(
                &self.alice,
                vec![envelope(&self.alice, topic, seq, payload)],
            );
            self.check("alice", publish).unwrap()[0]
        }
    }

    #[test]
    fn accepts_a_well_signed_batch_and_moves_the_mark() {
        let mut w = world();
        let envelopes = (1..=3)
            .map(|seq| envelope(&w.alice, "orders.created", seq, b"{}"))
            .collect();
        let publish = signed(&w.alice, envelopes);
        let quota = w
            .quotas
            .get("alice", w.policy.quota("alice"), || Ok::<u64, ()>(0))
            .unwrap();
        let mut ctx = IngestContext {
            policy: &w.policy,
            principal: "alice",
            decisions: &mut w.decisions,
            quota: &quota,
            message_bytes_max: 1024,
            clock_skew_ms_max: 60_000,
            now_ms: NOW_MS,
            topic_exists: &|_: &str| false,
        };
        let verdicts = check_publish(&mut ctx, publish, &mut w.marks)
            .unwrap()
            .verdicts;
        for (i, verdict) in verdicts.iter().enumerate() {
            let Verdict::Accepted(accepted) = verdict else {
                panic!("envelope {i} refused: {verdict:?}");
            };
            assert_eq!(accepted.proof.leaf_index as usize, i);
            assert!(batch::verify_record(
                w.alice.public_key(),
                &accepted.envelope,
                &accepted.proof
            ));
        }
        assert_eq!(w.marks.get(&w.alice.id()), Some(&3));
    }

    #[test]
    fn rejects_an_empty_or_oversized_batch_as_an_unusable_frame() {
        let mut w = world();
        let empty = Publish {
            request_id: 1,
            signature: vec![0; 64],
            envelopes: vec![],
        };
        assert_eq!(
            w.check("alice", empty).unwrap_err().code,
            ErrorCode::BadFrame
        );
        let many = Publish {
            request_id: 1,
            signature: vec![0; 64],
            envelopes: (1..=257)
                .map(|s| envelope(&w.alice, "orders.a", s, b"{}"))
                .collect(),
        };
        assert_eq!(
            w.check("alice", many).unwrap_err().code,
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn rejects_mixed_keys_as_bad_frame() {
        let mut w = world();
        let envelopes = vec![
            envelope(&w.alice, "orders.a", 1, b"{}"),
            envelope(&w.bob, "orders.a", 2, b"{}"),
        ];
        let publish = signed(&w.alice, envelopes);
        assert_eq!(
            w.check("alice", publish).unwrap(),
            [Some(ErrorCode::BadFrame), Some(ErrorCode::BadFrame)]
        );
    }

    #[test]
    fn rejects_bad_shapes_with_their_codes() {
        let mut w = world();
        let mut version = envelope(&w.alice, "orders.a", 1, b"{}");
        version.version = 2;
        let bad_topic = envelope(&w.alice, "orders..a", 2, b"{}");
        let too_large = envelope(&w.alice, "orders.a", 3, &[b'x'; 1025]);
        let mut content_type = envelope(&w.alice, "orders.a", 4, b"{}");
        content_type.content_type = String::new();
        let mut header = envelope(&w.alice, "orders.a", 5, b"{}");
        header.headers.push(Header {
            name: String::new(),
            value: vec![],
        });
        let good = envelope(&w.alice, "orders.a", 6, b"{}");
        let publish = signed(
            &w.alice,
            vec![version, bad_topic, too_large, content_type, header, good],
        );
        assert_eq!(
            w.check("alice", publish).unwrap(),
            [
                Some(ErrorCode::UnsupportedVersion),
                Some(ErrorCode::BadTopic),
                Some(ErrorCode::TooLarge),
                Some(ErrorCode::BadFrame),
                Some(ErrorCode::BadFrame),
                None
            ]
        );
    }

    #[test]
    fn rejects_a_topic_outside_the_grants_as_forbidden() {
        let mut w = world();
        assert_eq!(
            w.alice_one("billing.a", 1, b"{}"),
            Some(ErrorCode::Forbidden)
        );
        assert!(w.marks.is_empty(), "no mark read or moved");
    }

    #[test]
    fn system_topics_are_forbidden_whatever_the_grants() {
        let mut w = world();
        // bob may publish to `>`, yet not to the broker's own topics.
        let publish = signed(
            &w.bob,
            vec![
                envelope(&w.bob, "signet.audit.checkpoints", 1, b"{}"),
                envelope(&w.bob, "signet", 2, b"{}"),
                envelope(&w.bob, "signets.fine", 3, b"{}"),
            ],
        );
        assert_eq!(
            w.check("bob", publish).unwrap(),
            [Some(ErrorCode::Forbidden), Some(ErrorCode::Forbidden), None]
        );
    }

    #[test]
    fn rejects_unknown_and_foreign_keys() {
        let mut w = world();
        let stranger = signed(
            &w.stranger,
            vec![envelope(&w.stranger, "orders.a", 1, b"{}")],
        );
        assert_eq!(
            w.check("alice", stranger).unwrap(),
            [Some(ErrorCode::UnknownKey)]
        );
        let bobs = signed(&w.bob, vec![envelope(&w.bob, "orders.a", 1, b"{}")]);
        assert_eq!(
            w.check("alice", bobs).unwrap(),
            [Some(ErrorCode::KeyNotBound)]
        );
    }

    #[test]
    fn rejects_a_bad_signature_for_the_whole_batch() {
        let mut w = world();
        let mut publish = signed(
            &w.alice,
            vec![
                envelope(&w.alice, "orders.a", 1, b"{}"),
                envelope(&w.alice, "orders.a", 2, b"{}"),
            ],
        );
        publish.envelopes[1].payload = b"[]".to_vec();
        assert_eq!(
            w.check("alice", publish).unwrap(),
            [Some(ErrorCode::BadSignature), Some(ErrorCode::BadSignature)]
        );
    }

    #[test]
    fn encryption_blocks_must_fit_the_topic_and_schemas_are_checked() {
        let mut w = world();
        assert_eq!(
            w.alice_one("orders.secret", 1, b"{}"),
            Some(ErrorCode::EncryptionRequired)
        );
        assert_eq!(
            w.alice_one("orders.checked", 2, b"{}"),
            Some(ErrorCode::SchemaViolation)
        );
        assert_eq!(w.alice_one("orders.checked", 3, br#"{"id":1}"#), None);
        let sealed = |seq, topic: &str, suite, recipients| {
            let mut e = envelope(&w.alice, topic, seq, b"\x01");
            e.encryption = Some(Encryption {
                suite,
                key_commitment: [0; 32],
                recipients: vec![
                    SealedKey {
                        key_id: KeyId([1; 16]),
                        enc: vec![0; 32],
                        sealed_key: vec![0; 48],
                    };
                    recipients
                ],
            });
            e
        };
        let publish = signed(
            &w.alice,
            vec![
                sealed(4, "orders.secret", 1, 1),
                sealed(5, "orders.secret", 1, 0),
                sealed(6, "orders.secret", 0, 0),
                sealed(7, "orders.plain", 1, 1),
                sealed(8, "orders.checked", 1, 1),
            ],
        );
        assert_eq!(
            w.check("alice", publish).unwrap(),
            [
                None,
                Some(ErrorCode::EncryptionRequired),
                Some(ErrorCode::UnsupportedSuite),
                Some(ErrorCode::EncryptionNotAllowed),
                Some(ErrorCode::EncryptionNotAllowed),
            ]
        );
    }

    #[test]
    fn rejects_a_used_seq_as_replay_and_a_skewed_clock_as_stale() {
        let mut w = world();
        assert_eq!(w.alice_one("orders.a", 5, b"{}"), None);
        assert_eq!(w.alice_one("orders.a", 5, b"{}"), Some(ErrorCode::Replay));
        assert_eq!(w.alice_one("orders.a", 4, b"{}"), Some(ErrorCode::Replay));
        let mut late = envelope(&w.alice, "orders.a", 6, b"{}");
        late.timestamp_ms = NOW_MS - 60_001;
        let publish = signed(&w.alice, vec![late]);
        assert_eq!(
            w.check("alice", publish).unwrap(),
            [Some(ErrorCode::StaleTimestamp)]
        );
        assert_eq!(
            w.marks.get(&w.alice.id()),
            Some(&5),
            "a refusal moves no mark"
        );
    }

    /// One code and retry hint per envelope of a checked batch.
    fn outcomes(checked: &Checked) -> Vec<Option<(ErrorCode, Option<u64>)>> {
        checked
            .verdicts
            .iter()
            .map(|v| match v {
                Verdict::Accepted(_) | Verdict::Stored { .. } => None,
                Verdict::Rejected { rejection, .. } => {
                    Some((rejection.code, rejection.retry_after_ms))
                }
            })
            .collect()
    }

    #[test]
    fn rate_quota_admits_a_prefix_and_refuses_the_rest_with_an_exact_retry_hint() {
        let mut w = world();
        let ten = (1..=10)
            .map(|seq| envelope(&w.alice, "orders.a", seq, b"{}"))
            .collect();
        let publish = signed(&w.alice, ten);
        assert_eq!(w.check("alice", publish).unwrap(), [None; 10]);
        let quota = w
            .quotas
            .get("alice", w.policy.quota("alice"), || Ok::<u64, ()>(0))
            .unwrap();
        let three = |w: &World, first: u64| {
            signed(
                &w.alice,
                (first..first + 3)
                    .map(|seq| envelope(&w.alice, "orders.a", seq, b"{}"))
                    .collect(),
            )
        };
        let quota_exceeded = |ms| Some((ErrorCode::QuotaExceeded, Some(ms)));
        let (first, again) = (three(&w, 11), three(&w, 11));
        let mut ctx = IngestContext {
            policy: &w.policy,
            principal: "alice",
            decisions: &mut w.decisions,
            quota: &quota,
            message_bytes_max: 1024,
            clock_skew_ms_max: 60_000,
            now_ms: NOW_MS,
            topic_exists: &|_: &str| false,
        };
        // Empty bucket: nothing fits; the first envelope fits in 100 ms.
        let checked = check_publish(&mut ctx, first, &mut w.marks).unwrap();
        assert_eq!(outcomes(&checked), [quota_exceeded(100); 3]);
        assert_eq!(checked.reserved.bytes(), 0);
        w.clock.advance(Duration::from_millis(250));
        // Two tokens: the first two go, in order; the third fits 50 ms later.
        let checked = check_publish(&mut ctx, again, &mut w.marks).unwrap();
        assert_eq!(
            outcomes(&checked),
            [None, None, quota_exceeded(50)],
            "a prefix is admitted, the rest refused"
        );
        assert!(checked.reserved.bytes() > 0);
    }

    #[test]
    fn new_topics_past_the_topic_quota_are_refused_and_known_topics_cost_none() {
        let mut w = world();
        let limits = crate::quota::QuotaLimits {
            topics_per_sec: 2,
            ..crate::quota::QuotaLimits::DEFAULT
        };
        let quota = w.quotas.get("bob", limits, || Ok::<u64, ()>(0)).unwrap();
        let topics = ["new.a", "new.a", "known.a", "new.b", "new.c", "known.a"];
        let envelopes = (1u64..)
            .zip(topics)
            .map(|(seq, topic)| envelope(&w.bob, topic, seq, b"{}"))
            .collect();
        let asked = std::cell::RefCell::new(Vec::new());
        let topic_exists = |topic: &str| {
            asked.borrow_mut().push(topic.to_owned());
            topic == "known.a"
        };
        let mut ctx = IngestContext {
            policy: &w.policy,
            principal: "bob",
            decisions: &mut w.decisions,
            quota: &quota,
            message_bytes_max: 1024,
            clock_skew_ms_max: 60_000,
            now_ms: NOW_MS,
            topic_exists: &topic_exists,
        };
        let checked = check_publish(&mut ctx, signed(&w.bob, envelopes), &mut w.marks).unwrap();
        let refused = Some((ErrorCode::QuotaExceeded, Some(500)));
        assert_eq!(
            outcomes(&checked),
            [None, None, None, None, refused, refused],
            "the third new topic and everything after it wait"
        );
        assert_eq!(
            *asked.borrow(),
            ["new.a", "known.a", "new.b", "new.c"],
            "asked once per distinct topic"
        );
    }

    #[test]
    fn a_record_never_takes_more_than_its_quota_cost_and_every_field_counts() {
        let key = key();
        let envelopes: Vec<Envelope> = (1..=256)
            .map(|seq| {
                let mut e = envelope(&key, "orders.a", seq, b"");
                e.headers = (0..4)
                    .map(|h| Header {
                        name: format!("h{h}"),
                        value: vec![0xab; 4000],
                    })
                    .collect();
                e.encryption = Some(Encryption {
                    suite: 1,
                    key_commitment: [0xee; 32],
                    recipients: vec![
                        signet_proto::envelope::SealedKey {
                            key_id: KeyId([0xcd; 16]),
                            enc: vec![1; 32],
                            sealed_key: vec![2; 48],
                        };
                        3
                    ],
                });
                e
            })
            .collect();
        let signed = batch::sign(&key, &envelopes).unwrap();
        for (i, e) in envelopes.iter().enumerate() {
            let cost = record_bytes_max(e);
            assert!(
                cost >= 16_000 + 3 * 80,
                "headers and recipients count: {cost}"
            );
            let record = StoredRecord {
                received_ms: NOW_MS,
                envelope: e.clone(),
                proof: signed.proof(i),
            };
            let stored = signet_proto::codec::encode_body(&record).unwrap().len() as u64;
            assert!(stored <= cost, "record {i}: {stored} bytes > cost {cost}");
            assert!(
                cost - stored < 400,
                "record {i}: cost {cost} far above {stored}"
            );
        }
    }

    #[test]
    fn stored_bytes_quota_refuses_before_any_other_check() {
        let mut w = world();
        let quota = w
            .quotas
            .get("alice", w.policy.quota("alice"), || Ok::<u64, ()>(0))
            .unwrap();
        quota.add_stored(19_999);
        // Forbidden topic and a bad signature too: the quota answers first.
        let mut publish = signed(&w.alice, vec![envelope(&w.alice, "billing.a", 1, b"{}")]);
        publish.signature = vec![0; 64];
        assert_eq!(
            w.check("alice", publish).unwrap(),
            [Some(ErrorCode::QuotaExceeded)]
        );
    }

    #[test]
    fn checks_run_in_order_so_the_first_failed_step_names_the_refusal() {
        let mut w = world();
        // Forbidden and badly signed: Forbidden (the ACL runs before the signature).
        let mut publish = signed(&w.alice, vec![envelope(&w.alice, "billing.a", 1, b"{}")]);
        publish.signature = vec![0; 64];
        assert_eq!(
            w.check("alice", publish).unwrap(),
            [Some(ErrorCode::Forbidden)]
        );
        // Unknown key and a bad signature: UnknownKey.
        let mut publish = signed(
            &w.stranger,
            vec![envelope(&w.stranger, "orders.a", 1, b"{}")],
        );
        publish.signature = vec![0; 64];
        assert_eq!(
            w.check("alice", publish).unwrap(),
            [Some(ErrorCode::UnknownKey)]
        );
        // Badly signed replay: BadSignature (replay is checked last).
        assert_eq!(w.alice_one("orders.a", 7, b"{}"), None);
        let mut publish = signed(&w.alice, vec![envelope(&w.alice, "orders.a", 7, b"{}")]);
        publish.signature = vec![0; 64];
        assert_eq!(
            w.check("alice", publish).unwrap(),
            [Some(ErrorCode::BadSignature)]
        );
        // Schema violation with a used seq: SchemaViolation.
        assert_eq!(
            w.alice_one("orders.checked", 7, b"{}"),
            Some(ErrorCode::SchemaViolation)
        );
    }

    #[test]
    fn unreadable_marks_make_the_batch_unavailable() {
        struct Broken;
        impl ReplayMarks for Broken {
            type Error = &'static str;
            fn mark(&mut self, _: &KeyId) -> Result<u64, &'static str> {
                Err("disk gone")
            }
            fn accept(&mut self, _: &KeyId, _: u64) {}
        }
        let mut w = world();
        let quota = w
            .quotas
            .get("alice", w.policy.quota("alice"), || Ok::<u64, ()>(0))
            .unwrap();
        let mut ctx = IngestContext {
            policy: &w.policy,
            principal: "alice",
            decisions: &mut w.decisions,
            quota: &quota,
            message_bytes_max: 1024,
            clock_skew_ms_max: 60_000,
            now_ms: NOW_MS,
            topic_exists: &|_: &str| false,
        };
        let publish = signed(&w.alice, vec![envelope(&w.alice, "orders.a", 1, b"{}")]);
        let refusal = check_publish(&mut ctx, publish, &mut Broken).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Unavailable);
    }
}
