//! The policy file as written: TOML → these serde structs, nothing more.
//! Unknown fields are errors everywhere (a typo in `deny_publish` must not
//! silently grant). [`crate::settings`] turns the start-only sections into
//! [`crate::settings::Settings`]; [`crate::policy`] turns the rest into a
//! [`crate::policy::Policy`].

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Listener, storage and size settings.
    pub broker: BrokerSection,
    /// TLS material.
    pub tls: TlsSection,
    /// The audit log, if any.
    pub audit: Option<AuditSection>,
    /// Limit overrides by key (see [`crate::limits`]).
    #[serde(default)]
    pub limits: BTreeMap<String, u64>,
    /// Named sets of grants.
    #[serde(default, rename = "role")]
    pub roles: Vec<RoleSection>,
    /// Who may connect, with which keys and grants.
    #[serde(default, rename = "principal")]
    pub principals: Vec<PrincipalSection>,
    /// Per-topic settings.
    #[serde(default, rename = "topic")]
    pub topics: Vec<TopicSection>,
    /// Consumer groups.
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupSection>,
    /// This node's place in a cluster; absent: a single broker.
    pub cluster: Option<ClusterSection>,
}

impl PolicyFile {
    /// Parses policy text.
    pub fn parse(text: &str) -> Result<PolicyFile, toml::de::Error> {
        toml::from_str(text)
    }

    /// The sections read only at start, to tell whether a reload changed them.
    pub fn start_only(&self) -> StartOnly {
        StartOnly {
            broker: self.broker.clone(),
            tls: self.tls.clone(),
            audit: self.audit.clone(),
            limits: self.limits.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

/// The sections that take effect only at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOnly {
    /// `[broker]`.
    pub broker: BrokerSection,
    /// `[tls]`.
    pub tls: TlsSection,
    /// `[audit]`.
    pub audit: Option<AuditSection>,
    /// `[limits]`.
    pub limits: BTreeMap<String, u64>,
    /// `[cluster]`.
    pub cluster: Option<ClusterSection>,
}

/// `[cluster]`: `node_id = 1`, `raft_listen = "127.0.0.1:7541"`,
/// `peers = [{ id = 1, client = "127.0.0.1:7441", raft = "127.0.0.1:7541" }, …]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This node's id.
    pub node_id: u64,
    /// UDP address of this node's node transport (QUIC, mutual TLS).
    pub raft_listen: SocketAddr,
    /// Every node of the cluster, this one included.
    pub peers: Vec<PeerSection>,
    /// How many data groups share the topics (by their first token, see
    /// `signet_proto::placement`); 1 when absent. Fixed for the life of
    /// the cluster: it decides where stored topics are.
    #[serde(default)]
    pub data_groups: Option<u64>,
}

/// One entry of `[cluster] peers`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// The node's id.
    pub id: u64,
    /// Where clients reach it.
    pub client: String,
    /// Where its node transport listens.
    pub raft: SocketAddr,
}

/// `[broker]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// UDP address of the QUIC listener.
    pub listen: SocketAddr,
    /// RocksDB folder.
    pub data_dir: PathBuf,
    /// Limit `message_bytes_max`, under its original key.
    pub max_message_bytes: Option<u64>,
    /// Limit `frame_bytes_max`, under its original key.
    pub max_frame_bytes: Option<u64>,
    /// Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// Limit `clock_skew_ms_max`, under its original key.
    pub clock_skew_ms: Option<u64>,
    /// The broker's Ed25519 identity key file (PKCS#8, mode 0600).
    pub identity_key: Option<PathBuf>,
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// CA of client certificates.
    pub ca: PathBuf,
    /// The broker's certificate chain.
    pub cert: PathBuf,
    /// The broker's private key.
    pub key: PathBuf,
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// The current log file.
    pub path: PathBuf,
    /// Limit `audit_file_bytes_max`, under its original key.
    pub max_bytes: Option<u64>,
}

/// Topic patterns granted or denied, on a role or a principal.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantFields {
    /// Patterns that may be published to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Patterns that may be subscribed to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Patterns never published to (beats `publish`).
    #[serde(default)]
    pub deny_publish: Vec<String>,
    /// Patterns never subscribed to (beats `subscribe`).
    #[serde(default)]
    pub deny_subscribe: Vec<String>,
    /// Consumer groups that may be joined.
    #[serde(default)]
    pub consume: Vec<String>,
}

/// `[[role]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSection {
    /// Its name, referenced by principals.
    pub name: String,
    /// What it grants.
    #[serde(flatten)]
    pub grants: GrantFields,
}

/// `[[principal]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSection {
    /// The name its client certificate carries.
    pub name: String,
    /// Signing keys, `ed25519:<base64>`.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Roles it holds.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Grants on the principal itself.
    #[serde(flatten)]
    pub grants: GrantFields,
    /// Its quotas, if not the defaults.
    pub quota: Option<QuotaSection>,
}

/// Per-principal quotas as written; a missing field takes its default.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QuotaSection {
    /// Messages per second.
    pub msgs_per_sec: Option<u32>,
    /// Record bytes per second.
    pub bytes_per_sec: Option<u32>,
    /// Record bytes stored.
    pub stored_bytes: Option<u64>,
    /// Open connections.
    pub max_connections: Option<u32>,
    /// Open subscriptions.
    pub max_subscriptions: Option<u32>,
    /// New topics per second.
    pub topics_per_sec: Option<u32>,
}

/// `[[topic]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSection {
    /// Exact name or pattern.
    pub name: String,
    /// JSON Schema file for payloads.
    pub schema: Option<PathBuf>,
    /// Whether plaintext is refused.
    #[serde(default)]
    pub encrypted: bool,
    /// Retention limits of each matching topic.
    pub retention: Option<RetentionSection>,
}

/// A size as written: a TOML integer (bytes) or a string like `"10GiB"`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SizeText {
    /// Bytes.
    Bytes(u64),
    /// With a unit.
    Text(String),
}

/// `retention = { max_age = "7d", max_bytes = "10GiB", max_msgs = 1000000 }`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// Oldest message kept, by the broker's receive time (`"7d"`).
    pub max_age: Option<String>,
    /// Most record bytes kept per topic.
    pub max_bytes: Option<SizeText>,
    /// Most messages kept per topic.
    pub max_msgs: Option<u64>,
    /// A consumer group whose acks and dead letters delete messages.
    pub work_queue: Option<String>,
}

/// `[[group]]`: a consumer group.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GroupSection {
    /// Its name, referenced by `consume` grants.
    pub name: String,
    /// Topic names or patterns it consumes.
    pub topics: Vec<String>,
    /// `earliest` or `latest`: where a new group begins.
    pub start: String,
    /// A delivery not acked by then is redelivered, e.g. `"30s"`.
    pub ack_wait: String,
    /// Deliveries before a message is dead-lettered.
    pub max_deliveries: u32,
    /// Delay before redelivery n (the last repeats), e.g. `["1s", "5s"]`.
    #[serde(default)]
    pub backoff: Vec<String>,
    /// The topic that receives dead letters.
    pub dead_letter: String,
    /// Unacked deliveries for the whole group.
    pub max_in_flight: u32,
}
