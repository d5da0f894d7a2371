//! The hot-reloadable policy: principals with their keys, grants and
//! quotas, roles merged in, and per-topic settings (schema, encryption).
//! Built from the policy file's `[[role]]`, `[[principal]]` and `[[topic]]`
//! sections and validated whole; a reload builds a new one and swaps it in.

use crate::acl::{Grants, PatternSet};
use crate::group_config::{GroupError, GroupPolicy, group_policy};
use crate::policy_file::{GrantFields, PolicyFile, QuotaSection};
use crate::quota::QuotaLimits;
use crate::retention::Retention;
use crate::settings::resolve;
use signet_proto::schema::Schema;
use signet_proto::{KeyId, PublicKey, topic};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the policy sections are invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A topic pattern in a grant is malformed.
    #[error("{owner}: pattern {pattern:?}: {reason}")]
    BadPattern {
        owner: String,
        pattern: String,
        reason: String,
    },
    /// Two roles or principals share a name.
    #[error("{kind} {name:?} is defined twice")]
    Duplicate { kind: &'static str, name: String },
    /// A principal's name cannot be a certificate's principal.
    #[error("principal name {0:?} is empty, too long or has control characters")]
    BadPrincipalName(String),
    /// A principal names a role that does not exist.
    #[error("principal {principal:?} names unknown role {role:?}")]
    UnknownRole { principal: String, role: String },
    /// A key is not `ed25519:<base64>` of a valid key.
    #[error("principal {principal:?}: key {key:?}: {reason}")]
    BadKey {
        principal: String,
        key: String,
        reason: String,
    },
    /// A key is bound to two principals.
    #[error("key {key} is bound to both {first:?} and {second:?}; a key belongs to one principal")]
    KeyBoundTwice {
        key: KeyId,
        first: String,
        second: String,
    },
    /// A quota value is zero.
    #[error(
        "principal {0:?}: quota values must be at least 1 (use deny rules to shut a principal out)"
    )]
    ZeroQuota(String),
    /// A topic entry is malformed or inconsistent.
    #[error("topic {topic:?}: {reason}")]
    Topic { topic: String, reason: String },
    /// A `[[group]]` is malformed.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// A `consume` grant names a group the policy does not define.
    #[error("{owner}: consume names unknown group {group:?}")]
    UnknownGroup { owner: String, group: String },
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
    /// Consumer groups it may join (its own and its roles').
    pub consume: BTreeSet<String>,
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
    /// Retention limits of each matching topic (none: kept forever).
    pub retention: Option<Retention>,
}

/// Who may do what, and with which keys.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Increases with every successful reload; caches compare it.
    pub version: u64,
    /// SHA-256 (hex) of what this policy was built from: the policy
    /// file's text, then for each schema file it names (in file order) a
    /// NUL byte, the file's length (u64 BE) and its bytes. Without schemas
    /// it is the SHA-256 of the file. A reload that finds it unchanged
    /// changes nothing, so every input the policy reads is in it.
    pub sha256: String,
    /// Principals by name.
    pub principals: HashMap<String, PrincipalPolicy>,
    /// Every bound key, to tell `UnknownKey` from `KeyNotBound`.
    pub key_owners: HashMap<KeyId, String>,
    /// Topic settings, in file order.
    pub topics: Vec<TopicPolicy>,
    /// Consumer groups by name.
    pub groups: HashMap<String, Arc<GroupPolicy>>,
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

    /// The retention limits of `topic`, if any.
    pub fn retention(&self, topic: &str) -> Option<&Retention> {
        self.topic_settings(topic)
            .and_then(|t| t.retention.as_ref())
    }

    /// A principal's quota: its own, or the defaults for one the policy
    /// does not name.
    pub fn quota(&self, name: &str) -> QuotaLimits {
        self.principal(name)
            .map_or(QuotaLimits::DEFAULT, |p| p.quota)
    }

    /// The group `name` if `principal` may join it: the group exists and
    /// the principal (or one of its roles) has a `consume` grant for it.
    pub fn consumable(&self, principal: &str, name: &str) -> Option<&Arc<GroupPolicy>> {
        let p = self.principal(principal)?;
        if !p.consume.contains(name) {
            return None;
        }
        self.groups.get(name)
    }

    /// Schema files the policy names (a change to one triggers a reload).
    pub fn schema_files(&self) -> impl Iterator<Item = &Path> {
        self.topics.iter().filter_map(|t| t.schema.as_deref())
    }

    /// Builds the policy from a parsed file whose text was `text`; schema
    /// paths resolve against `base`. The version is 1; a reload raises it.
    pub fn from_file(file: PolicyFile, text: &str, base: &Path) -> Result<Policy, PolicyError> {
        let roles = role_grants(file.roles)?;
        let data_groups = file
            .cluster
            .as_ref()
            .map_or(1, |c| c.data_groups.unwrap_or(1));
        let mut policy = Policy {
            version: 1,
            ..Policy::default()
        };
        for g in &file.groups {
            let group = group_policy(g)?;
            group.data_group(data_groups).map_err(|reason| GroupError {
                group: g.name.clone(),
                reason,
            })?;
            if policy
                .groups
                .insert(group.name.clone(), Arc::new(group))
                .is_some()
            {
                return Err(PolicyError::Duplicate {
                    kind: "group",
                    name: g.name.clone(),
                });
            }
        }
        for p in file.principals {
            policy.add_principal(p, &roles)?;
        }
        policy.check_dead_letter_topics()?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(text.as_bytes());
        for t in file.topics {
            policy.topics.push(topic_policy(t, base, &mut digest)?);
        }
        policy.sha256 = hex::encode(digest.finish());
        policy.check_work_queues()?;
        Ok(policy)
    }

    /// A `retention.work_queue` must name a group that consumes every
    /// topic its `[[topic]]` matches (by one of the group's patterns), and
    /// no topic may be the work queue of two groups. Each group then learns
    /// which topics it owns.
    fn check_work_queues(&mut self) -> Result<(), PolicyError> {
        let owners: Vec<(usize, &str, &str)> = self
            .topics
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let group = t.retention.as_ref()?.work_queue.as_deref()?;
                Some((i, t.pattern.as_str(), group))
            })
            .collect();
        let refuse = |topic: &str, reason: String| PolicyError::Topic {
            topic: topic.to_owned(),
            reason,
        };
        for (n, (_, pattern, group)) in owners.iter().enumerate() {
            let Some(g) = self.groups.get(*group) else {
                return Err(refuse(
                    pattern,
                    format!("retention.work_queue names unknown group {group:?}"),
                ));
            };
            let covered = g
                .topics
                .patterns()
                .iter()
                .any(|p| crate::retention::covers(p, pattern));
            if !covered {
                return Err(refuse(
                    pattern,
                    format!(
                        "retention.work_queue: group {group:?} does not consume every topic this entry matches (its topics are {:?})",
                        g.topics.patterns()
                    ),
                ));
            }
            if let Some((_, other, other_group)) = owners[..n]
                .iter()
                .find(|(_, p, g)| g != group && crate::retention::overlap(p, pattern))
            {
                return Err(refuse(
                    pattern,
                    format!(
                        "retention.work_queue: topics matching both {other:?} and this entry would belong to two groups ({other_group:?} and {group:?}); a work-queue topic has one group"
                    ),
                ));
            }
        }
        for (name, group) in self.groups.iter_mut() {
            let Some(last) = owners.iter().rev().find(|(_, _, g)| g == name) else {
                continue;
            };
            let list: Vec<(String, bool)> = self.topics[..=last.0]
                .iter()
                .map(|t| {
                    let owned = t.retention.as_ref().and_then(|r| r.work_queue.as_deref())
                        == Some(name.as_str());
                    (t.pattern.clone(), owned)
                })
                .collect();
            Arc::make_mut(group).work_queue = list;
        }
        Ok(())
    }

    /// Only the broker writes dead letters: no principal may publish to a
    /// group's dead-letter topic (a reader could not tell a forged one from
    /// the broker's by its topic).
    fn check_dead_letter_topics(&self) -> Result<(), PolicyError> {
        for group in self.groups.values() {
            let mut writers: Vec<&String> = self
                .principals
                .iter()
                .filter(|(_, p)| {
                    p.grants
                        .allows(crate::acl::Action::Publish, &group.dead_letter)
                })
                .map(|(name, _)| name)
                .collect();
            writers.sort();
            if let Some(name) = writers.first() {
                return Err(PolicyError::Group(GroupError {
                    group: group.name.clone(),
                    reason: format!(
                        "principal {name:?} may publish to dead_letter {:?}: only the broker writes dead letters (add a deny_publish)",
                        group.dead_letter
                    ),
                }));
            }
        }
        Ok(())
    }

    fn add_principal(
        &mut self,
        p: crate::policy_file::PrincipalSection,
        roles: &HashMap<String, (Grants, Vec<String>)>,
    ) -> Result<(), PolicyError> {
        if p.name.is_empty() || p.name.len() > 128 || p.name.chars().any(|c| c.is_control()) {
            return Err(PolicyError::BadPrincipalName(p.name));
        }
        let owner = format!("principal {:?}", p.name);
        let mut grants = compile_grants(&p.grants, &owner)?;
        let quota = quota_limits(p.quota.as_ref(), &p.name)?;
        let mut consume: BTreeSet<String> = p.grants.consume.iter().cloned().collect();
        for role in &p.roles {
            let (g, c) = roles.get(role).ok_or_else(|| PolicyError::UnknownRole {
                principal: p.name.clone(),
                role: role.clone(),
            })?;
            grants.extend(g);
            consume.extend(c.iter().cloned());
        }
        if let Some(group) = consume.iter().find(|g| !self.groups.contains_key(*g)) {
            return Err(PolicyError::UnknownGroup {
                owner: owner.clone(),
                group: group.clone(),
            });
        }
        let mut keys = HashMap::new();
        for text in &p.keys {
            let key: PublicKey =
                text.parse()
                    .map_err(|e: signet_proto::keys::KeyError| PolicyError::BadKey {
                        principal: p.name.clone(),
                        key: text.clone(),
                        reason: e.to_string(),
                    })?;
            if let Some(first) = self.key_owners.insert(key.id(), p.name.clone()) {
                return Err(PolicyError::KeyBoundTwice {
                    key: key.id(),
                    first,
                    second: p.name,
                });
            }
            keys.insert(key.id(), key);
        }
        let entry = PrincipalPolicy {
            keys,
            grants,
            quota,
            consume,
        };
        if self.principals.insert(p.name.clone(), entry).is_some() {
            return Err(PolicyError::Duplicate {
                kind: "principal",
                name: p.name,
            });
        }
        Ok(())
    }
}

/// Validates every pattern and compiles the four sets.
fn compile_grants(fields: &GrantFields, owner: &str) -> Result<Grants, PolicyError> {
    let set = |patterns: &[String]| -> Result<PatternSet, PolicyError> {
        let mut set = PatternSet::default();
        for p in patterns {
            topic::validate_pattern(p).map_err(|e| PolicyError::BadPattern {
                owner: owner.to_owned(),
                pattern: p.clone(),
                reason: e.to_string(),
            })?;
            set.insert(p);
        }
        Ok(set)
    };
    Ok(Grants {
        publish: set(&fields.publish)?,
        subscribe: set(&fields.subscribe)?,
        deny_publish: set(&fields.deny_publish)?,
        deny_subscribe: set(&fields.deny_subscribe)?,
    })
}

fn role_grants(
    roles: Vec<crate::policy_file::RoleSection>,
) -> Result<HashMap<String, (Grants, Vec<String>)>, PolicyError> {
    let mut out = HashMap::new();
    for role in roles {
        let grants = compile_grants(&role.grants, &format!("role {:?}", role.name))?;
        let consume = role.grants.consume.clone();
        if out.insert(role.name.clone(), (grants, consume)).is_some() {
            return Err(PolicyError::Duplicate {
                kind: "role",
                name: role.name,
            });
        }
    }
    Ok(out)
}

/// A principal's quotas: the section's values over the defaults.
fn quota_limits(section: Option<&QuotaSection>, owner: &str) -> Result<QuotaLimits, PolicyError> {
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
        topics_per_sec: q.topics_per_sec.unwrap_or(d.topics_per_sec),
    };
    if limits.msgs_per_sec == 0
        || limits.bytes_per_sec == 0
        || limits.max_connections == 0
        || limits.stored_bytes == 0
        || limits.topics_per_sec == 0
    {
        return Err(PolicyError::ZeroQuota(owner.to_owned()));
    }
    Ok(limits)
}

/// One `[[topic]]` entry, its schema compiled; the schema file's bytes go
/// into `digest` (read before the schema is compiled: if the file changes
/// in between, the next reload sees a different hash and applies it).
fn topic_policy(
    t: crate::policy_file::TopicSection,
    base: &Path,
    digest: &mut ring::digest::Context,
) -> Result<TopicPolicy, PolicyError> {
    let invalid = |reason: String| PolicyError::Topic {
        topic: t.name.clone(),
        reason,
    };
    topic::validate_pattern(&t.name).map_err(|e| invalid(e.to_string()))?;
    if t.encrypted && t.schema.is_some() {
        return Err(invalid(
            "a topic cannot have both a broker-side schema and encryption".into(),
        ));
    }
    let schema = t.schema.as_deref().map(|p| resolve(base, p));
    let compiled = match &schema {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| invalid(format!("schema {}: {e}", path.display())))?;
            digest.update(&[0]);
            digest.update(&(bytes.len() as u64).to_be_bytes());
            digest.update(&bytes);
            Some(Arc::new(Schema::load(path).map_err(invalid)?))
        }
        None => None,
    };
    let retention = t
        .retention
        .as_ref()
        .map(Retention::from_section)
        .transpose()
        .map_err(invalid)?;
    Ok(TopicPolicy {
        pattern: t.name,
        schema,
        compiled,
        encrypted: t.encrypted,
        retention,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[broker]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"d\"\n[tls]\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n";

    fn load(text: &str, base: &Path) -> Policy {
        Policy::from_file(PolicyFile::parse(text).unwrap(), text, base).unwrap()
    }

    #[test]
    fn a_work_queue_group_owns_the_topics_its_entry_decides() {
        let text = format!(
            "{TEXT}[[group]]\nname = \"billing\"\ntopics = [\"jobs.>\"]\nstart = \"earliest\"\nack_wait = \"1s\"\nmax_deliveries = 3\ndead_letter = \"dlq.billing\"\nmax_in_flight = 10\n[[topic]]\nname = \"jobs.b\"\n[[topic]]\nname = \"jobs.>\"\nretention = {{ work_queue = \"billing\" }}\n"
        );
        let policy = load(&text, Path::new("/"));
        let g = &policy.groups["billing"];
        assert!(g.owns("jobs.a"));
        assert!(g.owns("jobs.x.y"));
        assert!(
            !g.owns("jobs.b"),
            "the first matching entry (no retention) decides"
        );
        assert!(!g.owns("orders.a"));
    }

    #[test]
    fn no_principal_may_publish_to_a_dead_letter_topic() {
        let dir = tempfile::tempdir().unwrap();
        let group = "[[group]]\nname = \"g\"\ntopics = [\"jobs.>\"]\nstart = \"earliest\"\nack_wait = \"1s\"\nmax_deliveries = 3\ndead_letter = \"dlq.g\"\nmax_in_flight = 10\n";
        let text = format!(
            "{TEXT}{group}[[principal]]\nname = \"p\"\npublish = [\">\"]\nconsume = [\"g\"]\n"
        );
        let err = Policy::from_file(PolicyFile::parse(&text).unwrap(), &text, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("only the broker writes dead letters"), "{err}");
        let text = format!(
            "{TEXT}{group}[[principal]]\nname = \"p\"\npublish = [\">\"]\ndeny_publish = [\"dlq.>\"]\nconsume = [\"g\", \"nope\"]\n"
        );
        let err = Policy::from_file(PolicyFile::parse(&text).unwrap(), &text, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown group \"nope\""), "{err}");
        let text = format!(
            "{TEXT}{group}[[principal]]\nname = \"p\"\npublish = [\">\"]\ndeny_publish = [\"dlq.>\"]\nconsume = [\"g\"]\n"
        );
        let policy = load(&text, dir.path());
        assert!(policy.consumable("p", "g").is_some());
        assert!(policy.consumable("p", "other").is_none());
    }

    #[test]
    fn a_consumer_group_of_a_cluster_must_keep_its_topics_and_dead_letters_in_one_data_group() {
        let cluster = |groups: u64| {
            format!(
                "[cluster]\nnode_id = 1\nraft_listen = \"127.0.0.1:9001\"\ndata_groups = {groups}\npeers = [{{ id = 1, client = \"127.0.0.1:8001\", raft = \"127.0.0.1:9001\" }}]\n"
            )
        };
        let group = |topics: &str, dead_letter: &str| {
            format!(
                "[[group]]\nname = \"g\"\ntopics = [{topics}]\nstart = \"earliest\"\nack_wait = \"1s\"\nmax_deliveries = 3\ndead_letter = \"{dead_letter}\"\nmax_in_flight = 10\n"
            )
        };
        let refusal = |text: String| {
            Policy::from_file(PolicyFile::parse(&text).unwrap(), &text, Path::new("/"))
                .unwrap_err()
                .to_string()
        };
        // orders is in group 2 of 3, dlq in group 3, payments in group 1.
        let split = refusal(format!(
            "{TEXT}{}{}",
            cluster(3),
            group("\"orders.>\"", "dlq.orders")
        ));
        assert!(
            split.contains("\"orders.>\" is in data group 2 and \"dlq.orders\" in data group 3"),
            "{split}"
        );
        let wild = refusal(format!(
            "{TEXT}{}{}",
            cluster(3),
            group("\"*.created\"", "orders.dlq")
        ));
        assert!(wild.contains("starts with a wildcard"), "{wild}");
        let two = refusal(format!(
            "{TEXT}{}{}",
            cluster(3),
            group("\"orders.>\", \"payments.>\"", "orders.dlq")
        ));
        assert!(two.contains("must share one data group"), "{two}");
        // One first token, or one data group, or a single broker: loaded.
        load(
            &format!(
                "{TEXT}{}{}",
                cluster(3),
                group("\"orders.>\"", "orders.dlq")
            ),
            Path::new("/"),
        );
        load(
            &format!("{TEXT}{}{}", cluster(1), group("\">\"", "dlq.orders")),
            Path::new("/"),
        );
        load(
            &format!("{TEXT}{}", group("\"*.created\"", "dlq.orders")),
            Path::new("/"),
        );
    }

    #[test]
    fn the_hash_covers_the_policy_text_and_every_schema_file() {
        let dir = tempfile::tempdir().unwrap();
        let plain = load(TEXT, dir.path());
        assert_eq!(
            plain.sha256,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, TEXT.as_bytes())),
            "without schemas it is the file's SHA-256"
        );
        let text = format!("{TEXT}[[topic]]\nname = \"a.b\"\nschema = \"s.json\"\n");
        std::fs::write(dir.path().join("s.json"), r#"{"type":"object"}"#).unwrap();
        let before = load(&text, dir.path());
        assert_eq!(before.sha256, load(&text, dir.path()).sha256);
        std::fs::write(dir.path().join("s.json"), r#"{"type":"array"}"#).unwrap();
        let after = load(&text, dir.path());
        assert_ne!(
            before.sha256, after.sha256,
            "a schema edit changes the hash"
        );
    }
}
