//! The fuzz corpus, replayed (THREATS T13). Every input kept in
//! `fuzz/corpus/<target>/` (seeds, and what fuzzing found) goes through the
//! same entry point its cargo-fuzz target calls, so `make test` and CI,
//! which have no cargo-fuzz, exercise every decoder a peer or a file can
//! reach. `make fuzz` runs the targets themselves.
//!
//! Seeds are built from the protocol's vectors (`proto/tests/vectors`);
//! write them again after a format change with
//! `SIGNET_WRITE_FUZZ_SEEDS=1 cargo test --release -p signet --test fuzz_corpus`
//! (inputs found by fuzzing are kept as they are).

use signet_client::{TrustedKey, Verifier};
use signet_proto::{SigningKey, StoredRecord, batch, codec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A fuzz target: its name (the file `fuzz/fuzz_targets/<name>.rs` and the
/// folder `fuzz/corpus/<name>/`), the entry point it calls, and that entry
/// point.
type Target = (&'static str, &'static str, fn(&[u8]));

/// Every fuzz target.
const TARGETS: &[Target] = &[
    (
        "client_frame",
        "signet_proto::codec::fuzzing::client_frame",
        signet_proto::codec::fuzzing::client_frame,
    ),
    (
        "server_frame",
        "signet_proto::codec::fuzzing::server_frame",
        signet_proto::codec::fuzzing::server_frame,
    ),
    (
        "stored_record",
        "signet_proto::codec::fuzzing::stored_record",
        signet_proto::codec::fuzzing::stored_record,
    ),
    (
        "verify_records",
        "signet_client::fuzzing::verify_records",
        signet_client::fuzzing::verify_records,
    ),
    (
        "schema_json",
        "signet_proto::schema::fuzzing::json",
        signet_proto::schema::fuzzing::json,
    ),
    (
        "schema_msgpack",
        "signet_proto::schema::fuzzing::msgpack",
        signet_proto::schema::fuzzing::msgpack,
    ),
    (
        "client_file",
        "signet_client::fuzzing::client_file",
        signet_client::fuzzing::client_file,
    ),
    (
        "policy_file",
        "signet_broker::fuzzing::policy_file",
        signet_broker::fuzzing::policy_file,
    ),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted, or nothing if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn names(paths: Vec<PathBuf>, strip: &str) -> Vec<String> {
    let mut names: Vec<String> = paths
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.strip_suffix(strip).unwrap_or(name).to_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn every_fuzz_target_calls_its_entry_point_and_has_a_corpus() {
    let mut listed: Vec<String> = TARGETS.iter().map(|t| t.0.to_owned()).collect();
    listed.sort();
    let targets = names(files(&fuzz_dir().join("fuzz_targets")), ".rs");
    assert_eq!(targets, listed, "fuzz/fuzz_targets/*.rs and TARGETS differ");
    let corpora: Vec<PathBuf> = std::fs::read_dir(fuzz_dir().join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        names(corpora, ""),
        listed,
        "fuzz/corpus/* and TARGETS differ"
    );
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (name, entry, _) in TARGETS {
        let source =
            std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs"))).unwrap();
        assert!(
            source.contains(&format!("{entry}(data)")),
            "{name}.rs calls {entry}"
        );
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{name}.rs\"")),
            "fuzz/Cargo.toml builds {name}"
        );
        assert!(
            !files(&fuzz_dir().join("corpus").join(name)).is_empty(),
            "fuzz/corpus/{name} holds at least a seed"
        );
    }
}

#[test]
fn every_corpus_input_passes_its_fuzz_entry_point() {
    let mut failed = Vec::new();
    let mut total = 0;
    for (name, _, entry) in TARGETS {
        for path in files(&fuzz_dir().join("corpus").join(name)) {
            let data = std::fs::read(&path).unwrap();
            total += 1;
            if std::panic::catch_unwind(|| entry(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(total > 0);
    assert!(failed.is_empty(), "inputs that fail: {failed:#?}");
}

/// The corpus of `verify_records` still reaches every verdict, a good
/// signature included (it goes stale when the envelope format changes:
/// then write the seeds again).
#[test]
fn verify_corpus_reaches_every_verdict() {
    use signet_client::fuzzing::{TRUSTED_TOPICS, split_records};
    let key = signing_key().public_key().clone();
    let trusted = TrustedKey {
        key: key.clone(),
        topics: TRUSTED_TOPICS.iter().map(|t| t.to_string()).collect(),
    };
    let mut reached = std::collections::BTreeSet::new();
    for path in files(&fuzz_dir().join("corpus/verify_records")) {
        let data = std::fs::read(path).unwrap();
        let mut v = Verifier::new(HashMap::from([(key.id(), trusted.clone())]));
        for bytes in split_records(&data) {
            reached.insert(match v.verify(">", bytes) {
                Ok(_) => "verified".to_owned(),
                Err(refused) => refused.code.to_string(),
            });
        }
    }
    for verdict in ["verified", "Untrusted", "Replay", "UnknownKey"] {
        assert!(
            reached.contains(verdict),
            "no record in fuzz/corpus/verify_records is {verdict} (reached {reached:?}): \
             if the format changed, write the seeds again (SIGNET_WRITE_FUZZ_SEEDS=1)"
        );
    }
}

#[test]
fn seeds_are_written_on_request() {
    if std::env::var_os("SIGNET_WRITE_FUZZ_SEEDS").is_none_or(|v| v != "1") {
        return;
    }
    for (target, name, bytes) in seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}

/// The JSON seeds mutated many times over (bytes replaced by JSON's
/// structural characters, deleted, repeated), each mutation through the
/// `schema_json` entry point: a cheap stand-in for `make fuzz` in CI that
/// reaches the reader's refusals (depth, parse, duplicate names) as well as
/// what it accepts.
#[test]
fn mutated_json_is_read_as_serde_json_reads_it_or_refused_for_a_reason() {
    const PIECES: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"\"",
        b"\\",
        b"\\u0061",
        b"\\ud800",
        b"-",
        b"1e308",
        b"0.5",
        b"null",
        b"\"a\":1,\"a\":2",
        b" ",
        b"\xc3\xa9",
        b"\xff",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound.max(1) as u64) as usize
    };
    let seeds: Vec<Vec<u8>> = seeds()
        .into_iter()
        .filter(|(target, _, _)| *target == "schema_json")
        .map(|(_, _, bytes)| bytes)
        .chain([signet_testkit::bench::order_payload()])
        .collect();
    let mut accepted = 0;
    let rounds = 20_000;
    for round in 0..rounds {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..1 + next(3) {
            let at = next(bytes.len() + 1);
            match next(3) {
                0 => {
                    let piece = PIECES[next(PIECES.len())];
                    bytes.splice(at..(at + 1).min(bytes.len()), piece.iter().copied());
                }
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {
                    let end = (at + next(16)).min(bytes.len());
                    let copy = bytes[at..end].to_vec();
                    bytes.splice(at..at, copy);
                }
            }
        }
        signet_proto::schema::fuzzing::json(&bytes);
        accepted += usize::from(signet_proto::schema::parse("application/json", &bytes).is_ok());
    }
    assert!(
        accepted > rounds / 20 && accepted < rounds / 2,
        "mutations reach both verdicts: {accepted} of {rounds} accepted"
    );
}

fn signing_key() -> SigningKey {
    SigningKey::from_seed(&signet_client::fuzzing::TRUSTED_SEED).unwrap()
}

/// A golden file of the protocol's vectors, as bytes.
fn vector(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("proto/tests/vectors")
        .join(name);
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A frame file's body (the entry points take bodies, as the codec does
/// once it has read the length prefix).
fn frame_body(name: &str) -> Vec<u8> {
    vector(name)[codec::LENGTH_PREFIX_BYTES..].to_vec()
}

/// Stored records of one batch signed by `key`: envelope `i` is the
/// vectors' stored envelope on `topics[i % len]` with seq `first_seq + i`.
fn batch_records(key: &SigningKey, topics: &[&str], first_seq: u64, n: usize) -> Vec<Vec<u8>> {
    let template: StoredRecord = codec::decode(&vector("stored_record.hex")).unwrap();
    let envelopes: Vec<_> = (0..n)
        .map(|i| {
            let mut e = template.envelope.clone();
            e.topic = topics[i % topics.len()].into();
            e.key_id = key.id();
            e.seq = first_seq + i as u64;
            e.payload = format!("{{\"i\":{i}}}").into_bytes();
            e
        })
        .collect();
    let signed = batch::sign(key, &envelopes).unwrap();
    envelopes
        .into_iter()
        .enumerate()
        .map(|(i, envelope)| {
            codec::encode_body(&StoredRecord {
                received_ms: template.received_ms + i as u64,
                envelope,
                proof: signed.proof(i),
            })
            .unwrap()
        })
        .collect()
}

/// Every seed: (target, name, bytes).
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use signet_client::fuzzing::join_records;
    let mut seeds = Vec::new();
    for name in [
        "subscribe_frame",
        "subscribe_earliest_frame",
        "subscribe_offset_frame",
        "publish_frame",
    ] {
        seeds.push((
            "client_frame",
            name.into(),
            frame_body(&format!("{name}.hex")),
        ));
    }
    for name in [
        "results_frame",
        "subscribed_frame",
        "deliver_frame",
        "error_frame",
    ] {
        seeds.push((
            "server_frame",
            name.into(),
            frame_body(&format!("{name}.hex")),
        ));
    }
    seeds.push((
        "stored_record",
        "vectors".into(),
        vector("stored_record.hex"),
    ));

    let key = signing_key();
    let other = SigningKey::from_seed(&[8; 32]).unwrap();
    let topics = ["vectors.t0", "vectors.t1", "vectors.t2"];
    let three = batch_records(&key, &topics, 1, 3);
    let sixteen = batch_records(&key, &topics[..2], 100, 16);
    let foreign = batch_records(&other, &topics[..1], 1, 2);
    for (name, records) in [
        ("vectors-record", vec![vector("stored_record.hex")]),
        ("batch-of-3-one-untrusted-topic", three.clone()),
        (
            "repeat-and-reorder",
            vec![
                three[0].clone(),
                three[1].clone(),
                three[1].clone(),
                three[0].clone(),
            ],
        ),
        ("batch-of-16-out-of-order", {
            let mut r = sixteen.clone();
            r.swap(3, 9);
            r
        }),
        ("untrusted-key", foreign),
    ] {
        seeds.push(("verify_records", name.into(), join_records(&records)));
    }

    for (name, json) in [
        (
            "object",
            r#"{"id":1,"items":[1,2.5,{"b":"[[\"{"}],"ok":true,"n":null}"#.to_owned(),
        ),
        ("depth-64", format!("{}{}", "[".repeat(64), "]".repeat(64))),
        ("depth-65", format!("{}{}", "[".repeat(65), "]".repeat(65))),
        ("escapes", r#"["\\", "\"]", "\u005b"]"#.to_owned()),
        (
            "duplicate-member",
            r#"{"id":1,"items":[{"a":1,"\u0061":2}],"id":1}"#.to_owned(),
        ),
    ] {
        seeds.push(("schema_json", name.into(), json.into_bytes()));
    }
    let value = serde_json::json!({"id": 1, "items": [1, -2, 2.5, {"b": "x"}], "n": null});
    let mut nested = vec![0x91u8; 65];
    nested.push(0xc0);
    let mut nan = vec![0xcb];
    nan.extend_from_slice(&f64::NAN.to_be_bytes());
    for (name, bytes) in [
        ("object", rmp_serde::to_vec(&value).unwrap()),
        ("depth-64", nested[1..].to_vec()),
        ("depth-65", nested),
        ("nan", nan),
        (
            "bin-and-ext",
            vec![0x92, 0xc4, 0x01, 0x00, 0xd4, 0x01, 0x02],
        ),
        ("truncated-array32", vec![0xdd, 0xff, 0xff]),
    ] {
        seeds.push(("schema_msgpack", name.into(), bytes));
    }

    let public = key.public_key();
    let other_public = other.public_key();
    seeds.push((
        "client_file",
        "both-trust-forms".into(),
        format!(
            r#"broker = "127.0.0.1:7443"
server_name = "localhost"
ca = "pki/ca.crt"
cert = "pki/clients/a.crt"
key = "pki/clients/a.key"
signing_key = "keys/a.ed25519"
linger_us = 500
max_inflight_batches = 64
quota_retries = 2
quota_retry_max_ms = 5000

[schemas]
"orders.created" = "schemas/orders.created.json"

[trust]
{:?} = {:?}
{:?} = {{ key = {:?}, topics = ["orders.>", "billing.*"] }}

[encryption]
private_keys = ["keys/a.x25519"]
recipients = {{ "payroll.>" = ["x25519:QxDul9iMwfCIpVdsd6sM9cOseX89lROcbIS1QpxZZio="] }}
"#,
            public.id().to_hex(),
            public.to_string(),
            other_public.id().to_hex(),
            other_public.to_string()
        )
        .into_bytes(),
    ));
    seeds.push((
        "policy_file",
        "readme-example".into(),
        format!(
            r#"[broker]
listen = "127.0.0.1:7443"
data_dir = "data"
max_message_bytes = 1048576
max_frame_bytes = 4194304
metrics = "127.0.0.1:9464"
clock_skew_ms = 300000

[tls]
ca = "pki/ca.crt"
cert = "pki/broker.crt"
key = "pki/broker.key"

[audit]
path = "data/audit.log"
max_bytes = 67108864

[limits]
connections_max = 1024
streams_per_connection_max = 64
inflight_batches_max = 64

[[role]]
name = "order-writer"
publish = ["orders.>"]
deny_publish = ["orders.internal.>"]

[[principal]]
name = "orders-service"
keys = [{:?}]
roles = ["order-writer"]
subscribe = ["billing.*"]
deny_subscribe = ["billing.secret"]
quota = {{ msgs_per_sec = 5000, bytes_per_sec = 5000000, stored_bytes = 1000000000, max_connections = 4, max_subscriptions = 16 }}

[[topic]]
name = "orders.created"

[[topic]]
name = "payroll.>"
encrypted = true
"#,
            public.to_string()
        )
        .into_bytes(),
    ));
    seeds
}
