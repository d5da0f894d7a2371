//! A throwaway world for tests and benchmarks: a fresh PKI, one signing key
//! per principal, a policy, and a real broker on an ephemeral loopback port
//! with its own RocksDB folder. Nothing is mocked.

use anyhow::{Context, Result, anyhow};
use signet_admin::{dev, keys, pki};
use signet_broker::{Broker, Config};
use signet_client::ClientConfig;
use signet_proto::PublicKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One principal of the sandbox and its grants.
#[derive(Debug, Clone, Default)]
pub struct PrincipalSpec {
    pub name: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub deny_publish: Vec<String>,
    pub deny_subscribe: Vec<String>,
    pub roles: Vec<String>,
    /// Consumer groups it may join.
    pub consume: Vec<String>,
    /// An inline TOML table, e.g. `{ msgs_per_sec = 100 }`.
    pub quota: Option<String>,
}

impl PrincipalSpec {
    /// A principal with no grants.
    pub fn new(name: &str) -> PrincipalSpec {
        PrincipalSpec {
            name: name.into(),
            ..PrincipalSpec::default()
        }
    }

    /// Adds a publish grant.
    pub fn publish(mut self, pattern: &str) -> PrincipalSpec {
        self.publish.push(pattern.into());
        self
    }

    /// Adds a subscribe grant.
    pub fn subscribe(mut self, pattern: &str) -> PrincipalSpec {
        self.subscribe.push(pattern.into());
        self
    }

    /// Adds a publish deny rule.
    pub fn deny_publish(mut self, pattern: &str) -> PrincipalSpec {
        self.deny_publish.push(pattern.into());
        self
    }

    /// Adds a subscribe deny rule.
    pub fn deny_subscribe(mut self, pattern: &str) -> PrincipalSpec {
        self.deny_subscribe.push(pattern.into());
        self
    }

    /// Adds a role (define it with [`Sandbox::set_extra_policy`]).
    pub fn role(mut self, role: &str) -> PrincipalSpec {
        self.roles.push(role.into());
        self
    }

    /// Adds a `consume` grant (define the group with [`Sandbox::set_extra_policy`]).
    pub fn consume(mut self, group: &str) -> PrincipalSpec {
        self.consume.push(group.into());
        self
    }

    /// Sets the quota, as an inline TOML table.
    pub fn quota(mut self, table: &str) -> PrincipalSpec {
        self.quota = Some(table.into());
        self
    }
}

struct Member {
    spec: PrincipalSpec,
    key_path: PathBuf,
    public: PublicKey,
    tls: pki::ClientFiles,
    /// Whether the policy binds the signing key to the principal.
    bound: bool,
}

/// A PKI, keys, policy and (when started) a broker, in a temporary folder.
pub struct Sandbox {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    extra_policy: String,
    /// Whether the policy has an `[audit]` section (it does by default).
    audit: bool,
    broker: Option<Broker>,
    addr: Option<SocketAddr>,
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

impl Sandbox {
    /// Creates the PKI and keys for `principals`. The broker is not started.
    pub fn new(principals: &[PrincipalSpec]) -> Result<Sandbox> {
        let dir = tempfile::Builder::new().prefix("signet-").tempdir()?;
        pki::init(&dir.path().join("pki"), &[])?;
        let mut members = Vec::new();
        for spec in principals {
            let tls = pki::issue(&dir.path().join("pki"), &spec.name)?;
            let key_path = dir
                .path()
                .join("keys")
                .join(format!("{}.ed25519", spec.name));
            let public = keys::generate_ed25519(&key_path)?;
            members.push(Member {
                spec: spec.clone(),
                key_path,
                public,
                tls,
                bound: true,
            });
        }
        Ok(Sandbox {
            dir,
            members,
            extra_policy: String::new(),
            audit: true,
            broker: None,
            addr: None,
        })
    }

    /// The sandbox's folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a private key file named `name` in the sandbox, readable by
    /// its owner only (clients refuse key files others may read).
    pub fn write_private(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.path().join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| path.display().to_string())?;
        file.write_all(bytes)?;
        Ok(path)
    }

    /// The broker's RocksDB folder.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The PKI folder (`ca.crt`, `clients/…`).
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// TOML appended to the generated policy (e.g. a `[limits]` table).
    pub fn set_extra_policy(&mut self, text: &str) {
        self.extra_policy = text.to_owned();
    }

    fn member(&self, name: &str) -> Result<&Member> {
        self.members
            .iter()
            .find(|m| m.spec.name == name)
            .ok_or_else(|| anyhow!("no principal {name} in the sandbox"))
    }

    /// Replaces a principal's grants, roles and quota (then
    /// [`Sandbox::write_policy`] and reload to apply).
    pub fn set_spec(&mut self, spec: PrincipalSpec) -> Result<()> {
        let member = self
            .members
            .iter_mut()
            .find(|m| m.spec.name == spec.name)
            .ok_or_else(|| anyhow!("no principal {} in the sandbox", spec.name))?;
        member.spec = spec;
        Ok(())
    }

    /// Removes a principal's signing key from the policy (it stays on disk).
    pub fn unbind_key(&mut self, name: &str) -> Result<()> {
        let member = self
            .members
            .iter_mut()
            .find(|m| m.spec.name == name)
            .ok_or_else(|| anyhow!("no principal {name} in the sandbox"))?;
        member.bound = false;
        Ok(())
    }

    /// The policy file.
    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("signet.toml")
    }

    /// The broker's identity public key (it signs audit checkpoints).
    pub fn broker_public_key(&self) -> Result<PublicKey> {
        Ok(keys::public_of(&pki::identity_key_path(&self.pki_dir()))?)
    }

    /// The audit log.
    pub fn audit_path(&self) -> PathBuf {
        self.data_dir().join("audit.log")
    }

    /// Writes the policy file for the running broker's address.
    pub fn write_policy(&self) -> Result<()> {
        let listen = self
            .addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        std::fs::write(self.policy_path(), self.policy_text(listen))?;
        Ok(())
    }

    /// Asks the running broker to reload its policy file now.
    pub fn reload(&self) -> Result<signet_broker::Reloaded> {
        let broker = self
            .broker
            .as_ref()
            .ok_or_else(|| anyhow!("broker not started"))?;
        broker.reload().map_err(|e| anyhow!(e))
    }

    /// A principal's signing public key.
    pub fn public_key(&self, name: &str) -> Result<PublicKey> {
        Ok(self.member(name)?.public.clone())
    }

    /// A principal's signing key file.
    pub fn signing_key_path(&self, name: &str) -> Result<PathBuf> {
        Ok(self.member(name)?.key_path.clone())
    }

    /// Leaves the `[audit]` section out of the policy (the broker then
    /// keeps no audit log).
    pub fn without_audit(&mut self) {
        self.audit = false;
    }

    /// The policy text for a broker listening on `listen`.
    pub fn policy_text(&self, listen: SocketAddr) -> String {
        let mut text = format!(
            "[broker]\nlisten = \"{listen}\"\ndata_dir = \"data\"\nidentity_key = \"pki/broker.ed25519\"\n\n[tls]\nca = \"pki/ca.crt\"\ncert = \"pki/broker.crt\"\nkey = \"pki/broker.key\"\n\n"
        );
        if self.audit {
            text.push_str("[audit]\npath = \"data/audit.log\"\n\n");
        }
        for m in &self.members {
            let s = &m.spec;
            let keys = if m.bound {
                vec![m.public.to_string()]
            } else {
                vec![]
            };
            text.push_str(&format!(
                "[[principal]]\nname = {:?}\nkeys = {}\nroles = {}\npublish = {}\nsubscribe = {}\ndeny_publish = {}\ndeny_subscribe = {}\n",
                s.name,
                toml_list(&keys),
                toml_list(&s.roles),
                toml_list(&s.publish),
                toml_list(&s.subscribe),
                toml_list(&s.deny_publish),
                toml_list(&s.deny_subscribe),
            ));
            if !s.consume.is_empty() {
                text.push_str(&format!("consume = {}\n", toml_list(&s.consume)));
            }
            if let Some(quota) = &s.quota {
                text.push_str(&format!("quota = {quota}\n"));
            }
            text.push('\n');
        }
        text.push_str(&self.extra_policy);
        text
    }

    /// Writes the policy and starts the broker (on an ephemeral port the
    /// first time, on the same port after a restart).
    pub async fn start(&mut self) -> Result<SocketAddr> {
        self.write_policy()?;
        let config = Config::load(&self.policy_path())?;
        let broker = signet_broker::start(config)
            .await
            .context("starting the broker")?;
        let addr = broker.local_addr();
        self.broker = Some(broker);
        self.addr = Some(addr);
        Ok(addr)
    }

    /// The running broker (after `start`).
    pub fn broker(&self) -> Option<&Broker> {
        self.broker.as_ref()
    }

    /// Stops the broker; RocksDB is closed when this returns.
    pub async fn stop(&mut self) {
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await;
        }
    }

    /// Stops and starts the broker on the same data and port.
    pub async fn restart(&mut self) -> Result<SocketAddr> {
        self.stop().await;
        self.start().await
    }

    /// Sets the address clients use and a later `start` listens on (for a
    /// broker run as a separate process on this sandbox's files).
    pub fn set_addr(&mut self, addr: SocketAddr) {
        self.addr = Some(addr);
    }

    /// The broker's address (after `start`).
    pub fn addr(&self) -> Result<SocketAddr> {
        self.addr.ok_or_else(|| anyhow!("broker not started"))
    }

    /// A client file's text for `name`, trusting every sandbox principal's key.
    pub fn client_file_text(&self, name: &str) -> Result<String> {
        let m = self.member(name)?;
        let trust: Vec<PublicKey> = self.members.iter().map(|m| m.public.clone()).collect();
        Ok(dev::client_file_text(
            &self.addr()?.to_string(),
            "localhost",
            &self.pki_dir().join("ca.crt"),
            &m.tls.cert,
            &m.tls.key,
            Some(&m.key_path),
            &trust,
        ))
    }

    /// Writes `name`'s client file into the sandbox and returns its path.
    pub fn write_client_file(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, self.client_file_text(name)?)?;
        Ok(path)
    }

    /// `name`'s client config.
    pub fn client_config(&self, name: &str) -> Result<ClientConfig> {
        ClientConfig::parse(&self.client_file_text(name)?, self.dir.path()).map_err(|e| anyhow!(e))
    }
}
