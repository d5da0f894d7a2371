//! The client file (TOML): where the broker is, the TLS material, the
//! signing key, and the publisher keys this client trusts (each for every
//! topic, or for the topics its entry names). Relative paths resolve
//! against the file's folder.

use crate::error::Error;
use crate::limits::{
    BROKERS_MAX, INFLIGHT_BATCHES_MAX, LEADER_WAIT_MS_DEFAULT, LEADER_WAIT_MS_MAX, LINGER_US_MAX,
    QUOTA_RETRIES_MAX, QUOTA_RETRY_WAIT_MS_MAX, RECONNECT_ATTEMPTS_DEFAULT, RECONNECT_ATTEMPTS_MAX,
    RECONNECT_WAIT_MS_DEFAULT, RECONNECT_WAIT_MS_MAX, RECONNECT_WAIT_MS_MIN, TRUST_KEYS_MAX,
    TRUST_TOPICS_PER_KEY_MAX,
};
use crate::verify::TrustedKey;
use serde::Deserialize;
use signet_proto::crypt::RecipientKey;
use signet_proto::{KeyId, PublicKey};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    /// Broker address, `host:port` (or `brokers`).
    broker: Option<String>,
    /// Several broker addresses (cluster nodes), tried in order.
    brokers: Option<Vec<String>>,
    /// Name the broker certificate must carry.
    server_name: String,
    /// CA certificate file (PEM).
    ca: PathBuf,
    /// This client's certificate file (PEM).
    cert: PathBuf,
    /// This client's TLS private key file (PEM).
    key: PathBuf,
    /// Ed25519 signing key file (PKCS#8 DER), needed to publish.
    signing_key: Option<PathBuf>,
    /// Trusted publisher keys, by key id: the public key as text (every
    /// topic), or a [`TrustEntry`] table.
    #[serde(default)]
    trust: HashMap<String, toml::Value>,
    /// Publisher linger, in µs (at most [`LINGER_US_MAX`]).
    linger_us: Option<u64>,
    /// Batches in flight (at most [`INFLIGHT_BATCHES_MAX`]).
    max_inflight_batches: Option<usize>,
    /// Retries of a `QuotaExceeded` publish (at most [`QUOTA_RETRIES_MAX`]).
    quota_retries: Option<u32>,
    /// Longest wait before such a retry, in ms (at most
    /// [`QUOTA_RETRY_WAIT_MS_MAX`]).
    quota_retry_max_ms: Option<u64>,
    /// Reconnect attempts after a lost connection (at most
    /// [`RECONNECT_ATTEMPTS_MAX`]; 0: never reconnect).
    reconnect_attempts: Option<u32>,
    /// Longest wait between reconnect attempts, in ms (at most
    /// [`RECONNECT_WAIT_MS_MAX`]).
    reconnect_max_ms: Option<u64>,
    /// How long `NotLeader` redirects in a row are followed, in ms (at
    /// most [`LEADER_WAIT_MS_MAX`]).
    leader_wait_ms: Option<u64>,
    /// Schema files by topic name or pattern.
    #[serde(default)]
    schemas: HashMap<String, PathBuf>,
    /// The `[encryption]` table.
    encryption: Option<EncryptionSection>,
}

/// The table form of a trust entry: `{ key = "ed25519:…", topics = [...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustEntry {
    /// The public key as text.
    key: String,
    /// Topic patterns the key may write.
    topics: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptionSection {
    /// X25519 private key files this client decrypts with.
    #[serde(default)]
    private_keys: Vec<PathBuf>,
    /// Recipient keys (as text) by topic name or pattern.
    #[serde(default)]
    recipients: HashMap<String, Vec<String>>,
}

/// What one client needs to connect, publish and verify.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker address, `host:port`: the first of `brokers`.
    pub broker: String,
    /// Every broker address the file lists (`broker`, or each of
    /// `brokers`), in order; `connect` tries them in turn until one
    /// answers.
    pub brokers: Vec<String>,
    /// Name the broker certificate must carry.
    pub server_name: String,
    /// CA certificate that signed the broker's certificate (PEM).
    pub ca: PathBuf,
    /// This client's certificate (PEM).
    pub cert: PathBuf,
    /// This client's TLS private key (PEM).
    pub key: PathBuf,
    /// Ed25519 signing key (PKCS#8 DER), needed to publish.
    pub signing_key: Option<PathBuf>,
    /// Publisher keys this client accepts, by key id, each with the topics
    /// it may write.
    pub trust: HashMap<KeyId, TrustedKey>,
    /// How long the publisher waits for more messages to fill a batch when
    /// batches are already in flight. Default 500 µs.
    pub linger: Duration,
    /// Batches sent but not yet acknowledged. Default 64.
    pub max_inflight_batches: usize,
    /// Opt-in: how many times a published message (`publish`,
    /// `publish_message`, `enqueue`) refused with `QuotaExceeded` and a
    /// retry hint is sent again, in order, after the broker's
    /// `retry_after`. Only the first refused message of a round spends a
    /// retry. Default 0 (no retry). At most 100.
    pub quota_retries: u32,
    /// The longest single wait of such a retry. Default 5 s.
    pub quota_retry_max: Duration,
    /// How many times in a row the client dials the broker again after a
    /// lost connection before it gives up (`Error::GaveUp`). Default 0
    /// (off: opt in). At most 1000.
    pub reconnect_attempts: u32,
    /// The longest wait between two attempts (the waits double from 50 ms
    /// up to this, each with full jitter). Default 2 s.
    pub reconnect_max: Duration,
    /// How long the client follows cluster nodes' `NotLeader` answers in a
    /// row (an election) before it gives up (`Error::GaveUp`). Default 30 s.
    pub leader_wait: Duration,
    /// X25519 private key files (32 raw bytes) this client decrypts with;
    /// several during a key rotation.
    pub private_keys: Vec<PathBuf>,
    /// Recipients to encrypt to, by topic name or pattern (first match wins,
    /// in name order). Come from this file only, never from the broker.
    pub recipients: Vec<(String, Vec<RecipientKey>)>,
    /// JSON Schema files by topic name or pattern (first match wins, in
    /// name order): publishes are validated before they are sent, with the
    /// broker's own rules, so a publisher learns early.
    pub schemas: Vec<(String, PathBuf)>,
}

/// One `[trust]` entry: `"<key id>" = "ed25519:…"` (every topic) or
/// `"<key id>" = { key = "ed25519:…", topics = ["orders.>"] }`.
fn trust_entry(id: &str, entry: &toml::Value) -> Result<(KeyId, TrustedKey), String> {
    let id: KeyId = id
        .parse()
        .map_err(|e| format!("trust key id {id:?}: {e}"))?;
    let (key, topics) = match entry {
        toml::Value::String(key) => (key.clone(), None),
        toml::Value::Table(_) => {
            let entry: TrustEntry = entry
                .clone()
                .try_into()
                .map_err(|e| format!("trust entry {id}: {e}"))?;
            (entry.key, Some(entry.topics))
        }
        _ => {
            return Err(format!(
                "trust entry {id}: expected \"ed25519:<key>\" or {{ key = \"ed25519:<key>\", topics = [...] }}"
            ));
        }
    };
    let key: PublicKey = key.parse().map_err(|e| format!("trust key {id}: {e}"))?;
    if key.id() != id {
        return Err(format!(
            "trust entry {id} holds a key whose id is {}: the id must be the key's",
            key.id()
        ));
    }
    let Some(topics) = topics else {
        return Ok((id, TrustedKey::all_topics(key)));
    };
    if topics.is_empty() || topics.len() > TRUST_TOPICS_PER_KEY_MAX {
        return Err(format!(
            "trust entry {id}: topics must name 1 to {TRUST_TOPICS_PER_KEY_MAX} patterns (remove the entry to trust the key for nothing)"
        ));
    }
    for pattern in &topics {
        signet_proto::topic::validate_pattern(pattern)
            .map_err(|e| format!("trust entry {id}: pattern {pattern:?}: {e}"))?;
    }
    Ok((id, TrustedKey { key, topics }))
}

impl ClientConfig {
    /// Reads a client file.
    pub fn load(path: &Path) -> Result<ClientConfig, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        ClientConfig::parse(&text, base)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parses client-file text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<ClientConfig, String> {
        let file: ClientFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        if file.trust.len() > TRUST_KEYS_MAX {
            return Err(format!(
                "trust: {} entries, at most {TRUST_KEYS_MAX}",
                file.trust.len()
            ));
        }
        let mut trust = HashMap::new();
        for (id, entry) in &file.trust {
            let (id, trusted) = trust_entry(id, entry)?;
            trust.insert(id, trusted);
        }
        let (private_keys, recipients) = match &file.encryption {
            None => (Vec::new(), Vec::new()),
            Some(e) => {
                let mut recipients = Vec::new();
                for (pattern, keys) in &e.recipients {
                    signet_proto::topic::validate_pattern(pattern).map_err(|err| {
                        format!("encryption.recipients: pattern {pattern:?}: {err}")
                    })?;
                    let keys = keys
                        .iter()
                        .map(|k| {
                            k.parse::<RecipientKey>()
                                .map_err(|err| format!("recipient {k:?}: {err}"))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    if keys.is_empty() {
                        return Err(format!(
                            "encryption.recipients: {pattern:?} names no recipient"
                        ));
                    }
                    let max = signet_proto::limits::RECIPIENTS_MAX;
                    if keys.len() > max {
                        return Err(format!(
                            "encryption.recipients: {pattern:?} names more than {max} recipients"
                        ));
                    }
                    recipients.push((pattern.clone(), keys));
                }
                recipients.sort_by(|a, b| a.0.cmp(&b.0));
                (
                    e.private_keys.iter().map(|p| resolve(p)).collect(),
                    recipients,
                )
            }
        };
        let max_inflight_batches = file.max_inflight_batches.unwrap_or(64);
        if !(1..=INFLIGHT_BATCHES_MAX).contains(&max_inflight_batches) {
            return Err(format!(
                "max_inflight_batches must be between 1 and {INFLIGHT_BATCHES_MAX}"
            ));
        }
        let brokers = match (file.broker, file.brokers) {
            (Some(one), None) => vec![one],
            (None, Some(many)) if !many.is_empty() => many,
            (None, Some(_)) => return Err("brokers is empty; list at least one address".into()),
            (None, None) => return Err("missing field `broker` (or `brokers`)".into()),
            (Some(_), Some(_)) => {
                return Err("both `broker` and `brokers`: give exactly one of them".into());
            }
        };
        if brokers.len() > BROKERS_MAX {
            return Err(format!(
                "brokers: {} addresses, at most {BROKERS_MAX}",
                brokers.len()
            ));
        }
        Ok(ClientConfig {
            broker: brokers[0].clone(),
            brokers,
            server_name: file.server_name,
            ca: resolve(&file.ca),
            cert: resolve(&file.cert),
            key: resolve(&file.key),
            signing_key: file.signing_key.as_deref().map(resolve),
            trust,
            linger: Duration::from_micros(file.linger_us.unwrap_or(500).min(LINGER_US_MAX)),
            max_inflight_batches,
            schemas: {
                let mut schemas: Vec<(String, PathBuf)> = file
                    .schemas
                    .iter()
                    .map(|(t, p)| (t.clone(), resolve(p)))
                    .collect();
                schemas.sort();
                for (pattern, _) in &schemas {
                    signet_proto::topic::validate_pattern(pattern)
                        .map_err(|e| format!("schemas: pattern {pattern:?}: {e}"))?;
                }
                schemas
            },
            private_keys,
            recipients,
            quota_retries: file.quota_retries.unwrap_or(0).min(QUOTA_RETRIES_MAX),
            quota_retry_max: Duration::from_millis(
                file.quota_retry_max_ms
                    .unwrap_or(5_000)
                    .min(QUOTA_RETRY_WAIT_MS_MAX),
            ),
            reconnect_attempts: file
                .reconnect_attempts
                .unwrap_or(RECONNECT_ATTEMPTS_DEFAULT)
                .min(RECONNECT_ATTEMPTS_MAX),
            reconnect_max: Duration::from_millis(
                file.reconnect_max_ms
                    .unwrap_or(RECONNECT_WAIT_MS_DEFAULT)
                    .clamp(RECONNECT_WAIT_MS_MIN, RECONNECT_WAIT_MS_MAX),
            ),
            leader_wait: Duration::from_millis(
                file.leader_wait_ms
                    .unwrap_or(LEADER_WAIT_MS_DEFAULT)
                    .min(LEADER_WAIT_MS_MAX),
            ),
        })
    }
}

#[cfg(test)]
mod trust_tests {
    use super::*;

    fn key() -> PublicKey {
        let der = signet_proto::SigningKey::generate_pkcs8().unwrap();
        signet_proto::SigningKey::from_pkcs8(&der)
            .unwrap()
            .public_key()
            .clone()
    }

    fn parse_trust(entry: impl Fn(&PublicKey) -> String) -> Result<ClientConfig, String> {
        let k = key();
        let text = format!(
            "broker = \"b:1\"\nserver_name = \"s\"\nca = \"ca\"\ncert = \"c\"\nkey = \"k\"\n[trust]\n{:?} = {}\n",
            k.id().to_hex(),
            entry(&k)
        );
        ClientConfig::parse(&text, Path::new("."))
    }

    #[test]
    fn plain_entry_trusts_every_topic_and_table_entry_its_topics() {
        let plain = parse_trust(|k| format!("{:?}", k.to_string())).unwrap();
        let trusted = plain.trust.values().next().unwrap();
        assert!(trusted.may_write("orders.a") && trusted.may_write("x"));
        let scoped = parse_trust(|k| {
            format!(
                "{{ key = {:?}, topics = [\"orders.>\", \"a.*\"] }}",
                k.to_string()
            )
        })
        .unwrap();
        let trusted = scoped.trust.values().next().unwrap();
        assert!(trusted.may_write("orders.a.b") && trusted.may_write("a.b"));
        assert!(!trusted.may_write("billing.a") && !trusted.may_write("a.b.c"));
    }

    #[test]
    fn bad_table_entries_are_refused_with_their_reason() {
        for (entry, reason) in [
            ("{ key = {k:?}, topics = [] }", "1 to 64 patterns"),
            ("{ key = {k:?}, topics = [\"a.>.b\"] }", "pattern \"a.>.b\""),
            ("{ key = {k:?} }", "missing field `topics`"),
            (
                "{ key = {k:?}, topics = [\"a\"], x = 1 }",
                "unknown field `x`",
            ),
            ("7", "expected"),
        ] {
            let err = parse_trust(|k| entry.replace("{k:?}", &format!("{:?}", k.to_string())))
                .unwrap_err();
            assert!(err.contains(reason), "{entry}: {err}");
        }
    }
}
