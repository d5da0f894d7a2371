//! The policy file: TOML on disk → a typed, validated [`Config`].
//!
//! Everything is checked before the broker starts: unknown fields, topic
//! patterns, key formats, keys bound to two principals, roles that do not
//! exist, limits out of range. Relative paths resolve against the policy
//! file's folder.

use crate::acl::{Grants, PatternSet};
use crate::error::BrokerError;
use crate::quota::QuotaLimits;
use serde::Deserialize;
use signet_proto::limits::FRAME_BYTES_MAX_DEFAULT;
use signet_proto::schema::Schema;
use signet_proto::{KeyId, PublicKey, topic};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    broker: BrokerSection,
    tls: TlsSection,
    audit: Option<AuditSection>,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default, rename = "role")]
    roles: Vec<RoleSection>,
    #[serde(default, rename = "principal")]
    principals: Vec<PrincipalSection>,
    #[serde(default, rename = "topic")]
    topics: Vec<TopicSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokerSection {
    listen: SocketAddr,
    data_dir: PathBuf,
    max_message_bytes: Option<usize>,
    max_frame_bytes: Option<u32>,
    metrics: Option<SocketAddr>,
    clock_skew_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditSection {
    path: PathBuf,
    max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_connections: Option<usize>,
    max_streams_per_connection: Option<u32>,
    max_inflight_batches: Option<usize>,
    idle_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFields {
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    deny_publish: Vec<String>,
    #[serde(default)]
    deny_subscribe: Vec<String>,
}

impl GrantFields {
    /// Validates every pattern and compiles the four sets.
    fn compile(&self, owner: &str) -> Result<Grants, String> {
        let set = |patterns: &[String]| -> Result<PatternSet, String> {
            let mut set = PatternSet::default();
            for p in patterns {
                topic::validate_pattern(p).map_err(|e| format!("{owner}: pattern {p:?}: {e}"))?;
                set.insert(p);
            }
            Ok(set)
        };
        Ok(Grants {
            publish: set(&self.publish)?,
            subscribe: set(&self.subscribe)?,
            deny_publish: set(&self.deny_publish)?,
            deny_subscribe: set(&self.deny_subscribe)?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleSection {
    name: String,
    #[serde(flatten)]
    grants: GrantFields,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalSection {
    name: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(flatten)]
    grants: GrantFields,
    quota: Option<QuotaSection>,
}

/// Per-principal quotas as written in the policy; a missing field takes
/// its default from [`QuotaLimits::DEFAULT`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct QuotaSection {
    msgs_per_sec: Option<u32>,
    bytes_per_sec: Option<u32>,
    stored_bytes: Option<u64>,
    max_connections: Option<u32>,
    max_subscriptions: Option<u32>,
}

impl QuotaSection {
    fn limits(section: Option<&QuotaSection>, owner: &str) -> Result<QuotaLimits, String> {
        let d = QuotaLimits::DEFAULT;
        let Some(q) = section else {
            return Ok(d);
        };
        let limits = QuotaLimits {
            msgs_per_sec: q.msgs_per_sec.unwrap_or(d.msgs_per_sec),
            bytes_per_sec: q.bytes_per_sec.unwrap_or(d.bytes_per_sec),
            stored_bytes: q.stored_bytes.unwrap_or(d.stored_bytes),
            max_connections: q.max_connections.unwrap_or(d.max_connections),
            max_subscriptions: q.max_subscriptions.unwrap_or(d.max_subscriptions),
        };
        if limits.msgs_per_sec == 0
            || limits.bytes_per_sec == 0
            || limits.max_connections == 0
            || limits.stored_bytes == 0
        {
            return Err(format!(
                "{owner}: quota values must be at least 1 (use deny rules to shut a principal out)"
            ));
        }
        Ok(limits)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicSection {
    name: String,
    schema: Option<PathBuf>,
    #[serde(default)]
    encrypted: bool,
    retention: Option<toml::Table>,
}

/// Paths of the broker's TLS material.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    /// CA certificate(s) that sign client certificates (PEM).
    pub ca: PathBuf,
    /// The broker's certificate chain (PEM).
    pub cert: PathBuf,
    /// The broker's private key (PEM, not world-readable).
    pub key: PathBuf,
}

/// Transport and resource limits. Each bounds what peers can make the
/// broker hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent connections, all principals together. Default 1024.
    pub max_connections: usize,
    /// Concurrent bidirectional streams a peer may open per connection
    /// (one per subscription, plus publish streams). Default 64.
    pub max_streams_per_connection: u32,
    /// Publish batches read but not yet acknowledged, per publish stream.
    /// Default 64 (so at most 64 × 256 envelopes in flight per stream).
    pub max_inflight_batches: usize,
    /// A connection silent this long is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// A handshake not done in this time is dropped. Default 10 s.
    pub handshake_timeout: Duration,
}

/// One principal's keys and grants.
#[derive(Debug, Clone)]
pub struct PrincipalPolicy {
    /// Signing keys bound to this principal.
    pub keys: HashMap<KeyId, PublicKey>,
    /// Grants merged from the principal and its roles.
    pub grants: Grants,
    /// Quotas (explicit or the defaults).
    pub quota: QuotaLimits,
}

/// Per-topic settings (schema, encryption, retention) keyed by pattern.
#[derive(Debug, Clone)]
pub struct TopicPolicy {
    /// Exact name or pattern.
    pub pattern: String,
    /// JSON Schema file, resolved.
    pub schema: Option<PathBuf>,
    /// That schema, compiled once per policy load.
    pub compiled: Option<Arc<Schema>>,
    /// Whether plaintext publishes are refused.
    pub encrypted: bool,
}

/// Who may do what, and with which keys.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Increases with every successful reload; caches compare it.
    pub version: u64,
    /// SHA-256 (hex) of the policy file this came from.
    pub sha256: String,
    /// Principals by name.
    pub principals: HashMap<String, PrincipalPolicy>,
    /// Every bound key, to tell `UnknownKey` from `KeyNotBound`.
    pub key_owners: HashMap<KeyId, String>,
    /// Topic settings, in file order.
    pub topics: Vec<TopicPolicy>,
}

impl Policy {
    /// The principal's policy, if it is known.
    pub fn principal(&self, name: &str) -> Option<&PrincipalPolicy> {
        self.principals.get(name)
    }

    /// The settings of a topic: the first `[[topic]]` entry, in file
    /// order, whose name or pattern matches it.
    pub fn topic_settings(&self, name: &str) -> Option<&TopicPolicy> {
        self.topics
            .iter()
            .find(|t| topic::matches(&t.pattern, name))
    }

    /// A principal's quota: its own, or the defaults for one the policy
    /// does not name.
    pub fn quota(&self, name: &str) -> QuotaLimits {
        self.principal(name)
            .map_or(QuotaLimits::DEFAULT, |p| p.quota)
    }

    /// Schema files the policy names (a change to one triggers a reload).
    pub fn schema_files(&self) -> impl Iterator<Item = &Path> {
        self.topics.iter().filter_map(|t| t.schema.as_deref())
    }
}

/// Where the audit log goes.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The current log file; rotated files sit beside it as `<name>.<n>`.
    pub path: PathBuf,
    /// Size at which the file is rotated, in bytes. Default 64 MiB.
    pub max_bytes: u64,
}

/// A validated broker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP address the QUIC listener binds.
    pub listen: SocketAddr,
    /// RocksDB directory.
    pub data_dir: PathBuf,
    /// Largest payload accepted, in bytes. Default 1 MiB.
    pub payload_bytes_max: usize,
    /// Largest frame accepted, in bytes. Default 4 MiB.
    pub frame_bytes_max: u32,
    /// Prometheus endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// Largest accepted difference between a publisher's timestamp and the
    /// broker clock, in ms. Default 300,000 (5 minutes).
    pub clock_skew_ms: u64,
    /// TLS material.
    pub tls: TlsPaths,
    /// The audit log, if any.
    pub audit: Option<AuditSettings>,
    /// The policy file this was read from (for reloads).
    pub source: Option<PathBuf>,
    /// Transport limits.
    pub limits: Limits,
    /// Principals, keys, grants, topics.
    pub policy: Policy,
}

/// Default largest payload, in bytes.
pub const PAYLOAD_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Default clock skew window, in ms.
pub const CLOCK_SKEW_MS_DEFAULT: u64 = 5 * 60 * 1000;

impl Config {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Config, BrokerError> {
        let text = std::fs::read_to_string(path).map_err(|source| BrokerError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::parse(&text, base).map_err(|reason| BrokerError::Policy {
            path: path.to_owned(),
            reason,
        })?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parses and validates policy text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let b = &file.broker;
        let payload_bytes_max = b.max_message_bytes.unwrap_or(PAYLOAD_BYTES_MAX_DEFAULT);
        let frame_bytes_max = b.max_frame_bytes.unwrap_or(FRAME_BYTES_MAX_DEFAULT);
        if payload_bytes_max == 0 || payload_bytes_max > 64 * 1024 * 1024 {
            return Err("broker.max_message_bytes must be between 1 and 64 MiB".into());
        }
        if (frame_bytes_max as usize) < payload_bytes_max + 4096
            || frame_bytes_max > 256 * 1024 * 1024
        {
            return Err(
                "broker.max_frame_bytes must exceed max_message_bytes by at least 4096 and be at most 256 MiB"
                    .into(),
            );
        }
        let l = &file.limits;
        let limits = Limits {
            max_connections: bounded(
                "limits.max_connections",
                l.max_connections,
                1024,
                1,
                1_000_000,
            )?,
            max_streams_per_connection: bounded(
                "limits.max_streams_per_connection",
                l.max_streams_per_connection,
                64,
                1,
                10_000,
            )?,
            max_inflight_batches: bounded(
                "limits.max_inflight_batches",
                l.max_inflight_batches,
                64,
                1,
                4096,
            )?,
            idle_timeout: Duration::from_millis(bounded(
                "limits.idle_timeout_ms",
                l.idle_timeout_ms,
                30_000,
                100,
                3_600_000,
            )?),
            handshake_timeout: Duration::from_millis(bounded(
                "limits.handshake_timeout_ms",
                l.handshake_timeout_ms,
                10_000,
                100,
                600_000,
            )?),
        };
        let mut policy = build_policy(file.roles, file.principals, file.topics, &resolve)?;
        policy.version = 1;
        policy.sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()));
        Ok(Config {
            listen: b.listen,
            data_dir: resolve(&b.data_dir),
            payload_bytes_max,
            frame_bytes_max,
            metrics: b.metrics,
            clock_skew_ms: b.clock_skew_ms.unwrap_or(CLOCK_SKEW_MS_DEFAULT),
            tls: TlsPaths {
                ca: resolve(&file.tls.ca),
                cert: resolve(&file.tls.cert),
                key: resolve(&file.tls.key),
            },
            audit: file.audit.map(|a| AuditSettings {
                path: resolve(&a.path),
                max_bytes: a.max_bytes.unwrap_or(64 * 1024 * 1024).max(4096),
            }),
            source: None,
            limits,
            policy,
        })
    }
}

fn bounded<T: PartialOrd + Copy + std::fmt::Display>(
    name: &str,
    value: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, String> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(format!("{name} must be between {min} and {max}, not {v}"));
    }
    Ok(v)
}

fn build_policy(
    roles: Vec<RoleSection>,
    principals: Vec<PrincipalSection>,
    topics: Vec<TopicSection>,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Policy, String> {
    let mut role_grants: HashMap<String, Grants> = HashMap::new();
    for role in roles {
        let grants = role.grants.compile(&format!("role {:?}", role.name))?;
        if role_grants.insert(role.name.clone(), grants).is_some() {
            return Err(format!("role {:?} is defined twice", role.name));
        }
    }
    let mut policy = Policy::default();
    for p in principals {
        if p.name.is_empty() || p.name.len() > 128 || p.name.chars().any(|c| c.is_control()) {
            return Err(format!(
                "principal name {:?} is empty, too long or has control characters",
                p.name
            ));
        }
        let owner = format!("principal {:?}", p.name);
        let mut grants = p.grants.compile(&owner)?;
        let quota = QuotaSection::limits(p.quota.as_ref(), &owner)?;
        for role in &p.roles {
            let g = role_grants
                .get(role)
                .ok_or_else(|| format!("principal {:?} names unknown role {role:?}", p.name))?;
            grants.extend(g);
        }
        let mut keys = HashMap::new();
        for text in &p.keys {
            let key: PublicKey = text
                .parse()
                .map_err(|e| format!("principal {:?}: key {text:?}: {e}", p.name))?;
            if let Some(owner) = policy.key_owners.insert(key.id(), p.name.clone()) {
                return Err(format!(
                    "key {} is bound to both {owner:?} and {:?}; a key belongs to one principal",
                    key.id(),
                    p.name
                ));
            }
            keys.insert(key.id(), key);
        }
        let entry = PrincipalPolicy {
            keys,
            grants,
            quota,
        };
        if policy.principals.insert(p.name.clone(), entry).is_some() {
            return Err(format!("principal {:?} is defined twice", p.name));
        }
    }
    for t in topics {
        topic::validate_pattern(&t.name).map_err(|e| format!("topic {:?}: {e}", t.name))?;
        if t.encrypted && t.schema.is_some() {
            return Err(format!(
                "topic {:?}: a topic cannot have both a broker-side schema and encryption",
                t.name
            ));
        }
        let _ = t.retention;
        let schema = t.schema.as_deref().map(resolve);
        let compiled = match &schema {
            Some(path) => Some(Arc::new(
                Schema::load(path).map_err(|e| format!("topic {:?}: {e}", t.name))?,
            )),
            None => None,
        };
        policy.topics.push(TopicPolicy {
            pattern: t.name,
            schema,
            compiled,
            encrypted: t.encrypted,
        });
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[broker]
listen = "127.0.0.1:7443"
data_dir = "data"

[tls]
ca = "pki/ca.crt"
cert = "pki/broker.crt"
key = "pki/broker.key"
"#;

    fn key() -> String {
        let der = signet_proto::SigningKey::generate_pkcs8().unwrap();
        signet_proto::SigningKey::from_pkcs8(&der)
            .unwrap()
            .public_key()
            .to_string()
    }

    #[test]
    fn parses_design_example_and_merges_roles() {
        let text = format!(
            r#"{BASE}
[audit]
path = "data/audit.log"

[[role]]
name = "order-writer"
publish = ["orders.>"]
deny_publish = ["orders.internal.>"]

[[principal]]
name = "orders-service"
keys = ["{}"]
roles = ["order-writer"]
subscribe = ["billing.*"]
quota = {{ msgs_per_sec = 5000, bytes_per_sec = 5000000, stored_bytes = 1000000000 }}

[[topic]]
name = "orders.created"
schema = "schemas/orders.created.json"
retention = {{ max_age = "7d", max_bytes = "10GiB" }}

[[topic]]
name = "payroll.>"
encrypted = true
"#,
            key()
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("schemas")).unwrap();
        std::fs::write(
            dir.path().join("schemas/orders.created.json"),
            r#"{"type":"object"}"#,
        )
        .unwrap();
        let config = Config::parse(&text, dir.path()).unwrap();
        assert_eq!(config.data_dir, dir.path().join("data"));
        let orders = config.policy.topic_settings("orders.created").unwrap();
        assert!(orders.compiled.is_some());
        assert!(
            config
                .policy
                .topic_settings("payroll.march")
                .unwrap()
                .encrypted
        );
        assert!(config.policy.topic_settings("billing.x").is_none());
        let p = config.policy.principal("orders-service").unwrap();
        assert_eq!(p.grants.publish.patterns(), ["orders.>".to_string()]);
        assert_eq!(p.grants.subscribe.patterns(), ["billing.*".to_string()]);
        assert_eq!(p.quota.msgs_per_sec, 5000);
        assert_eq!(
            p.quota.max_connections,
            QuotaLimits::DEFAULT.max_connections
        );
        assert_eq!(p.keys.len(), 1);
        assert_eq!(config.policy.topics.len(), 2);
    }

    #[test]
    fn refuses_unknown_fields_unknown_roles_and_bad_patterns() {
        let typo = format!("{BASE}\n[[principal]]\nname = \"a\"\ndeny_publsh = [\"x\"]\n");
        assert!(
            Config::parse(&typo, Path::new("."))
                .unwrap_err()
                .contains("unknown field")
        );
        let role = format!("{BASE}\n[[principal]]\nname = \"a\"\nroles = [\"nope\"]\n");
        assert!(
            Config::parse(&role, Path::new("."))
                .unwrap_err()
                .contains("unknown role")
        );
        let pattern = format!("{BASE}\n[[principal]]\nname = \"a\"\npublish = [\"a.>.b\"]\n");
        assert!(
            Config::parse(&pattern, Path::new("."))
                .unwrap_err()
                .contains("pattern")
        );
    }

    #[test]
    fn refuses_a_key_bound_to_two_principals() {
        let k = key();
        let text = format!(
            "{BASE}\n[[principal]]\nname = \"a\"\nkeys = [\"{k}\"]\n[[principal]]\nname = \"b\"\nkeys = [\"{k}\"]\n"
        );
        assert!(
            Config::parse(&text, Path::new("."))
                .unwrap_err()
                .contains("bound to both")
        );
    }

    #[test]
    fn refuses_limits_out_of_range() {
        let text = format!("{BASE}\n[limits]\nmax_connections = 0\n");
        assert!(
            Config::parse(&text, Path::new("."))
                .unwrap_err()
                .contains("max_connections")
        );
    }
}
