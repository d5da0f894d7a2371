//! `signet cluster init`: a cluster of `n` nodes on 127.0.0.1 in one
//! folder. A CA (`pki/`), per node a node certificate
//! (`pki/nodes/node<id>.crt`, see [`pki::issue_node`]), an identity key
//! (`node<id>/identity.ed25519`) and a policy file (`node<id>.toml`, its
//! data in `node<id>/data`), signing keys for a `publisher` and a
//! `subscriber`, and their client files listing every node in `brokers`.
//! Node `i` serves clients on `base_port + i - 1` and its node transport
//! on `base_port + 100 + i - 1`.

use crate::dev::{EXAMPLE_SCHEMA, client_file_text};
use crate::files::write_public;
use crate::{AdminError, keys, pki};
use signet_proto::PublicKey;
use std::path::{Path, PathBuf};

/// The default first client port.
pub const DEFAULT_BASE_PORT: u16 = 7451;
/// The most nodes `init` writes.
pub const NODES_MAX: u16 = 64;

/// What `init` wrote.
#[derive(Debug, Clone)]
pub struct ClusterFiles {
    /// The folder, absolute.
    pub dir: PathBuf,
    /// The policy file of each node, by increasing id (node 1 first).
    pub nodes: Vec<PathBuf>,
    /// The `publisher` client file.
    pub publisher: PathBuf,
    /// The `subscriber` client file.
    pub subscriber: PathBuf,
}

/// Node `id`'s client and node-transport addresses.
pub fn addresses(base_port: u16, id: u16) -> (String, String) {
    let client = base_port.saturating_add(id - 1);
    let raft = base_port.saturating_add(100).saturating_add(id - 1);
    (format!("127.0.0.1:{client}"), format!("127.0.0.1:{raft}"))
}

fn node_policy(
    id: u16,
    nodes: u16,
    base_port: u16,
    publisher: &PublicKey,
    subscriber: &PublicKey,
) -> String {
    let (client, raft) = addresses(base_port, id);
    let peers: Vec<String> = (1..=nodes)
        .map(|peer| {
            let (c, r) = addresses(base_port, peer);
            format!("  {{ id = {peer}, client = \"{c}\", raft = \"{r}\" }},")
        })
        .collect();
    let peers = peers.join("\n");
    // One data group per node (at most 16), each first led by another
    // node, so the topics' writes spread over the nodes.
    let data_groups = nodes.min(16);
    format!(
        r#"# Signet cluster node {id}, written by `signet cluster init`. Edit freely.

[broker]
listen = "{client}"
data_dir = "node{id}/data"
identity_key = "node{id}/identity.ed25519"

[tls]
ca = "pki/ca.crt"
cert = "pki/nodes/node{id}.crt"
key = "pki/nodes/node{id}.key"

[audit]
path = "node{id}/data/audit.log"

# Topics are spread over `data_groups` Raft groups by their first token
# (`orders`, `payments`, ...); each group has its own leader. Fixed for the
# life of the cluster: it decides where stored topics are.
[cluster]
node_id = {id}
raft_listen = "{raft}"
data_groups = {data_groups}
peers = [
{peers}
]

[[role]]
name = "orders-writer"
publish = ["orders.>", "payments.>", "shipping.>"]
deny_publish = ["orders.dlq.>"]

[[role]]
name = "orders-reader"
subscribe = ["orders.>", "payments.>", "shipping.>"]
consume = ["orders-workers"]

[[principal]]
name = "publisher"
keys = ["{publisher}"]
roles = ["orders-writer"]

[[principal]]
name = "subscriber"
keys = ["{subscriber}"]
roles = ["orders-reader"]

[[topic]]
name = "orders.created"
schema = "schemas/orders.created.json"

[[topic]]
name = "orders.>"

[[topic]]
name = "payments.>"

[[topic]]
name = "shipping.>"

# A consumer group: its leases, acks and dead letters go through the Raft
# log of the data group holding `orders`, so they survive the loss of any
# one node. Its topics and dead_letter share the first token `orders`, so
# that one data group holds them all.
[[group]]
name = "orders-workers"
topics = ["orders.>"]
start = "earliest"
ack_wait = "30s"
max_deliveries = 5
backoff = ["1s", "5s"]
dead_letter = "orders.dlq.workers"
max_in_flight = 1000
"#
    )
}

/// Writes a cluster of `nodes` nodes into `dir` (which must not hold a CA).
pub fn init(dir: &Path, nodes: u16, base_port: u16) -> Result<ClusterFiles, AdminError> {
    if nodes == 0 || nodes > NODES_MAX {
        return Err(AdminError::BadNodes(nodes));
    }
    std::fs::create_dir_all(dir).map_err(AdminError::io("creating", dir))?;
    let dir = dir
        .canonicalize()
        .map_err(AdminError::io("resolving", dir))?;
    let pki_dir = dir.join("pki");
    pki::init(&pki_dir, &[])?;
    let mut identities = Vec::new();
    for id in 1..=nodes {
        pki::issue_node(&pki_dir, u64::from(id))?;
        let key = dir.join(format!("node{id}")).join("identity.ed25519");
        identities.push(keys::generate_ed25519(&key)?);
    }
    let mut signers = Vec::new();
    for principal in ["publisher", "subscriber"] {
        pki::issue(&pki_dir, principal)?;
        let key = dir.join("keys").join(format!("{principal}.ed25519"));
        signers.push(keys::generate_ed25519(&key)?);
    }
    write_public(
        &dir.join("schemas").join("orders.created.json"),
        EXAMPLE_SCHEMA.as_bytes(),
    )?;
    let mut policies = Vec::new();
    for id in 1..=nodes {
        let path = dir.join(format!("node{id}.toml"));
        let text = node_policy(id, nodes, base_port, &signers[0], &signers[1]);
        write_public(&path, text.as_bytes())?;
        policies.push(path);
    }
    let brokers: Vec<String> = (1..=nodes).map(|id| addresses(base_port, id).0).collect();
    let mut trust = signers.clone();
    trust.extend(identities);
    let mut client_files = Vec::new();
    for principal in ["publisher", "subscriber"] {
        let path = dir.join(format!("{principal}.toml"));
        let text = client_file_text(
            &brokers[0],
            "localhost",
            Path::new("pki/ca.crt"),
            &Path::new("pki/clients").join(format!("{principal}.crt")),
            &Path::new("pki/clients").join(format!("{principal}.key")),
            (principal == "publisher")
                .then(|| Path::new("keys").join("publisher.ed25519"))
                .as_deref(),
            &trust,
        )
        .replacen(
            &format!("broker = {:?}\n", brokers[0]),
            &format!("brokers = {brokers:?}\n"),
            1,
        );
        write_public(&path, text.as_bytes())?;
        client_files.push(path);
    }
    Ok(ClusterFiles {
        dir,
        nodes: policies,
        publisher: client_files[0].clone(),
        subscriber: client_files[1].clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_policy_per_node_and_clients_listing_every_node() {
        let dir = tempfile::tempdir().unwrap();
        let files = init(dir.path(), 3, 7451).unwrap();
        assert_eq!(files.nodes.len(), 3);
        let node2 = std::fs::read_to_string(&files.nodes[1]).unwrap();
        assert!(node2.contains("node_id = 2"));
        assert!(node2.contains("raft_listen = \"127.0.0.1:7552\""));
        assert!(node2.contains("consume = [\"orders-workers\"]"));
        let client = std::fs::read_to_string(&files.publisher).unwrap();
        assert!(
            client
                .contains("brokers = [\"127.0.0.1:7451\", \"127.0.0.1:7452\", \"127.0.0.1:7453\"]")
        );
        assert!(!client.contains("\nbroker ="));
        assert!(dir.path().join("pki/nodes/node3.crt").exists());
        assert!(matches!(
            init(dir.path(), 3, 7451),
            Err(AdminError::CaExists { .. })
        ));
        assert!(matches!(
            init(dir.path(), 0, 7451),
            Err(AdminError::BadNodes(0))
        ));
    }
}
