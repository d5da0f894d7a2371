//! Entry points for fuzz targets (`fuzz/`) and the corpus replay test
//! (`tests/fuzz_corpus.rs`). Each panics only on a bug.

use crate::config::ClientConfig;
use crate::limits::{TRUST_KEYS_MAX, TRUST_TOPICS_PER_KEY_MAX};
use crate::verify::{TrustedKey, Verifier};
use signet_proto::{ErrorCode, SigningKey, StoredRecord, batch, codec, topic};
use std::collections::HashMap;
use std::path::Path;

/// The seed of the key the verification target trusts: the test vectors'
/// key (`07` × 32), so the vectors' stored record verifies.
pub const TRUSTED_SEED: [u8; 32] = [7; 32];

/// The topics the verification target trusts [`TRUSTED_SEED`]'s key for.
pub const TRUSTED_TOPICS: [&str; 2] = ["vectors.t0", "vectors.t1"];

/// Most records one input is split into.
pub const RECORDS_PER_INPUT_MAX: usize = 16;

/// Splits an input into records: each is a `u16` big-endian length then
/// that many bytes (the last one takes what is left).
pub fn split_records(mut data: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    while !data.is_empty() && records.len() < RECORDS_PER_INPUT_MAX {
        let (len, rest) = match data {
            [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
            _ => (data.len(), &data[..0]),
        };
        let (record, rest) = rest.split_at(len.min(rest.len()));
        records.push(record);
        data = rest;
    }
    records
}

/// Joins records the way [`split_records`] splits them (for seeds).
pub fn join_records(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let len = u16::try_from(r.len()).expect("a seed record fits a u16 length");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// A subscriber's verification of a sequence of delivered records
/// ([`split_records`]), each subscribed on its own topic: every verdict
/// agrees with verifying the record alone with
/// [`signet_proto::batch::verify_record`] (so the verifier's batch cache
/// never vouches for a record that does not verify alone), the key's
/// topics, and the seqs accepted before it.
pub fn verify_records(data: &[u8]) {
    let Ok(signer) = SigningKey::from_seed(&TRUSTED_SEED) else {
        return;
    };
    let key = signer.public_key().clone();
    let trusted = TrustedKey {
        key: key.clone(),
        topics: TRUSTED_TOPICS.iter().map(|t| t.to_string()).collect(),
    };
    let mut verifier = Verifier::new(HashMap::from([(key.id(), trusted.clone())]));
    let mut highest: Option<u64> = None;
    for bytes in split_records(data) {
        let decoded = codec::decode::<StoredRecord>(bytes).ok();
        let subscribed = decoded
            .as_ref()
            .map(|r| r.envelope.topic.as_str())
            .filter(|t| topic::validate_name(t).is_ok())
            .unwrap_or(TRUSTED_TOPICS[0])
            .to_owned();
        let verdict = verifier.verify(&subscribed, bytes);
        let Some(record) = decoded else {
            assert_eq!(
                verdict.map(|_| ()).unwrap_err().code,
                ErrorCode::BadSignature
            );
            continue;
        };
        let envelope = &record.envelope;
        let ours = envelope.key_id == key.id();
        let alone = ours && batch::verify_record(&key, envelope, &record.proof);
        let on_topic = topic::matches(&subscribed, &envelope.topic);
        match verdict {
            Ok(accepted) => {
                assert_eq!(accepted, record);
                assert!(alone && on_topic, "accepted only what verifies alone");
                assert!(trusted.may_write(&envelope.topic));
                assert!(highest.is_none_or(|h| envelope.seq > h), "seq increases");
                highest = Some(envelope.seq);
            }
            Err(refused) => match refused.code {
                ErrorCode::BadSignature => assert!(!on_topic || (ours && !alone)),
                ErrorCode::UnknownKey => assert!(on_topic && !ours),
                ErrorCode::Untrusted => assert!(alone && !trusted.may_write(&envelope.topic)),
                ErrorCode::Replay => {
                    assert!(alone && trusted.may_write(&envelope.topic));
                    assert!(highest.is_some_and(|h| envelope.seq <= h));
                }
                other => panic!("unexpected verdict {other}"),
            },
        }
    }
}

/// The client-file parser: never panics, and what it accepts keeps the
/// trust table's rules. Relative paths resolve against a folder that does
/// not exist; nothing is read.
pub fn client_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = ClientConfig::parse(text, Path::new("/nonexistent/signet-fuzz")) else {
        return;
    };
    assert!(config.trust.len() <= TRUST_KEYS_MAX);
    for (id, trusted) in &config.trust {
        assert_eq!(trusted.key.id(), *id);
        assert!((1..=TRUST_TOPICS_PER_KEY_MAX).contains(&trusted.topics.len()));
        for pattern in &trusted.topics {
            assert!(topic::validate_pattern(pattern).is_ok());
        }
    }
}
