//! Reading a policy file: TOML ([`crate::policy_file`]) → start-only
//! [`Settings`] and the hot-reloadable [`Policy`], both validated before the
//! broker starts. Relative paths resolve against the policy file's folder.

use crate::cluster_config::ClusterSettings;
use crate::error::{BrokerError, ConfigError};
use crate::policy::Policy;
use crate::policy_file::PolicyFile;
use crate::settings::Settings;
use std::path::Path;

/// A validated broker configuration: what is read once, and the policy.
#[derive(Debug, Clone)]
pub struct Config {
    /// Settings read at start only.
    pub settings: Settings,
    /// Principals, keys, grants, topics: replaced whole by a reload.
    pub policy: Policy,
}

/// Reads a policy file's text.
pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The folder relative paths in `path` resolve against.
pub(crate) fn base_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

impl Config {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Config, BrokerError> {
        let text = read(path).map_err(|e| BrokerError::config(path, e))?;
        let mut config =
            Config::parse(&text, base_of(path)).map_err(|e| BrokerError::config(path, e))?;
        config.settings.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parses and validates policy text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let file = PolicyFile::parse(text)?;
        let mut settings = Settings::from_file(&file, base)?;
        settings.cluster = file
            .cluster
            .as_ref()
            .map(ClusterSettings::from_section)
            .transpose()?;
        let policy = Policy::from_file(file, text, base)?;
        Ok(Config { settings, policy })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::QuotaLimits;

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

    fn refusal(text: &str) -> String {
        Config::parse(text, Path::new(".")).unwrap_err().to_string()
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
        assert_eq!(config.settings.data_dir, dir.path().join("data"));
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
        assert!(refusal(&typo).contains("unknown field"));
        let role = format!("{BASE}\n[[principal]]\nname = \"a\"\nroles = [\"nope\"]\n");
        assert!(refusal(&role).contains("unknown role"));
        let pattern = format!("{BASE}\n[[principal]]\nname = \"a\"\npublish = [\"a.>.b\"]\n");
        assert!(refusal(&pattern).contains("pattern"));
    }

    #[test]
    fn refuses_a_key_bound_to_two_principals() {
        let k = key();
        let text = format!(
            "{BASE}\n[[principal]]\nname = \"a\"\nkeys = [\"{k}\"]\n[[principal]]\nname = \"b\"\nkeys = [\"{k}\"]\n"
        );
        assert!(refusal(&text).contains("bound to both"));
    }

    #[test]
    fn refuses_limits_out_of_range() {
        let text = format!("{BASE}\n[limits]\nmax_connections = 0\n");
        assert!(refusal(&text).contains("max_connections"));
        let unknown = format!("{BASE}\n[limits]\nmax_conections = 3\n");
        assert!(refusal(&unknown).contains("unknown limit"));
    }

    #[test]
    fn old_file_keys_set_the_limits() {
        let text = BASE.replace(
            "data_dir = \"data\"",
            "data_dir = \"data\"\nmax_message_bytes = 2097152\nmax_frame_bytes = 8388608\nclock_skew_ms = 1000",
        ) + "\n[limits]\nmax_inflight_batches = 3\nidle_timeout_ms = 5000\n";
        let limits = Config::parse(&text, Path::new("."))
            .unwrap()
            .settings
            .limits;
        assert_eq!(limits.message_bytes_max, 2 * 1024 * 1024);
        assert_eq!(limits.frame_bytes_max, 8 * 1024 * 1024);
        assert_eq!(limits.clock_skew_ms_max, 1000);
        assert_eq!(limits.inflight_batches_max, 3);
        assert_eq!(limits.idle_ms_max, 5000);
    }
}
