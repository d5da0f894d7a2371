//! A cluster of real brokers: three nodes on 127.0.0.1 written by
//! `cluster init` (three data groups, each first led by another node),
//! real QUIC with mutual TLS between them, real RocksDB logs.

mod common;
#[path = "common/history.rs"]
mod history;

use common::within;
use history::Replica;
use signet_broker::cluster::{ClusterNode, MetaCommand, MetaOutcome, forge};
use signet_broker::{Broker, Config};
use signet_client::{Client, ClientConfig, Error, StartAt};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The data group holding the `orders.*` topics these tests use (`cluster
/// init` writes one data group per node).
fn orders() -> u64 {
    signet_proto::placement::group_of("orders", 3)
}

/// A base port whose six ports (clients and node transports) are free now.
fn free_base() -> u16 {
    for _ in 0..200 {
        let base = 20_000 + (rand::random::<u16>() % 30_000);
        let free = (0..3u16).all(|i| {
            [base + i, base + 100 + i]
                .iter()
                .all(|port| std::net::UdpSocket::bind(("127.0.0.1", *port)).is_ok())
        });
        if free {
            return base;
        }
    }
    panic!("no free ports");
}

struct Cluster {
    _dir: tempfile::TempDir,
    files: signet_admin::cluster::ClusterFiles,
    brokers: Vec<Option<Broker>>,
    /// Applied to each node's configuration before it starts.
    tweak: fn(&mut Config),
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(|_| {}).await
    }

    async fn start_with(tweak: fn(&mut Config)) -> Cluster {
        Cluster::start_editing(tweak, |policy| policy.to_owned()).await
    }

    /// A cluster whose node policy files `edit` rewrote before the start.
    async fn start_editing(tweak: fn(&mut Config), edit: fn(&str) -> String) -> Cluster {
        Cluster::start_some(tweak, edit, &[1, 2, 3]).await
    }

    /// [`Cluster::start_editing`], starting only the nodes `ids`.
    async fn start_some(tweak: fn(&mut Config), edit: fn(&str) -> String, ids: &[u64]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let files = signet_admin::cluster::init(&dir.path().join("c"), 3, free_base()).unwrap();
        for node in &files.nodes {
            let text = std::fs::read_to_string(node).unwrap();
            std::fs::write(node, edit(&text)).unwrap();
        }
        let mut cluster = Cluster {
            _dir: dir,
            files,
            brokers: vec![None, None, None],
            tweak,
        };
        for id in ids {
            cluster.start_node(*id).await;
        }
        cluster
    }

    async fn start_node(&mut self, id: u64) {
        let mut config = Config::load(&self.files.nodes[(id - 1) as usize]).unwrap();
        (self.tweak)(&mut config);
        let listen = config.settings.listen;
        let broker = signet_broker::start(config)
            .await
            .unwrap_or_else(|e| panic!("node {id} (client {listen}): {e}"));
        self.brokers[(id - 1) as usize] = Some(broker);
    }

    async fn stop_node(&mut self, id: u64) {
        let broker = self.brokers[(id - 1) as usize].take().unwrap();
        broker.shutdown().await;
    }

    fn node(&self, id: u64) -> Arc<ClusterNode> {
        self.brokers[(id - 1) as usize]
            .as_ref()
            .unwrap()
            .cluster()
            .unwrap()
    }

    fn running(&self) -> Vec<Arc<ClusterNode>> {
        self.brokers
            .iter()
            .flatten()
            .map(|b| b.cluster().unwrap())
            .collect()
    }

    /// Waits until every running node applied `check`.
    async fn applied_everywhere(&self, check: impl Fn(&signet_broker::cluster::MetaState) -> bool) {
        for node in self.running() {
            let mut view = node.watch_metadata();
            within(view.wait_for(|s| check(s))).await.unwrap();
        }
    }

    /// Node `id`'s client address.
    fn client_addr(&self, id: u64) -> String {
        self.brokers[(id - 1) as usize]
            .as_ref()
            .unwrap()
            .local_addr()
            .to_string()
    }

    /// A client of the `publisher` or `subscriber` file whose `brokers`
    /// list is `ids`' client addresses, in order.
    async fn client(&self, file: &Path, ids: &[u64]) -> Client {
        client_of(file, ids.iter().map(|id| self.client_addr(*id)).collect()).await
    }

    /// [`Cluster::client`]'s configuration, to change before connecting.
    fn client_config(&self, file: &Path, ids: &[u64]) -> ClientConfig {
        config_of(file, ids.iter().map(|id| self.client_addr(*id)).collect())
    }

    /// What node `id` holds of `topic` up to `count` messages.
    async fn replica(&self, id: u64, topic: &str, count: usize) -> Replica {
        let client = self.client(&self.files.subscriber, &[id]).await;
        replica_of(&client, topic, count).await
    }

    /// Node `id`'s (first offset, next offset, bytes) of `topic`.
    fn topic_state(&self, id: u64, topic: &str) -> Option<(u64, u64, u64)> {
        self.brokers[(id - 1) as usize]
            .as_ref()
            .unwrap()
            .topic_state(topic)
    }

    /// Waits until node `id`'s first offset of `topic` is at least `first`
    /// (the state is read every 10 ms; a trim has no event to await).
    async fn await_first(&self, id: u64, topic: &str, first: u64) {
        within(async {
            while self.topic_state(id, topic).is_none_or(|s| s.0 < first) {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    async fn shutdown(mut self) {
        for broker in self.brokers.iter_mut().filter_map(Option::take) {
            broker.shutdown().await;
        }
    }
}

/// A client of the `publisher` or `subscriber` file whose `brokers` list
/// is `addrs`, in order.
async fn client_of(file: &Path, addrs: Vec<String>) -> Client {
    within(Client::connect(config_of(file, addrs)))
        .await
        .unwrap()
}

/// The `publisher` or `subscriber` file whose `brokers` list is `addrs`.
fn config_of(file: &Path, addrs: Vec<String>) -> ClientConfig {
    let mut config = ClientConfig::load(file).unwrap();
    config.brokers = addrs;
    config.broker = config.brokers[0].clone();
    config
}

/// What the node `client` is connected to holds of `topic`, up to `count`
/// messages, read by a subscription from offset 0: (offset, message id).
async fn replica_of(client: &Client, topic: &str, count: usize) -> Replica {
    let mut sub = within(client.subscribe(topic, StartAt::Offset(0)))
        .await
        .unwrap();
    let mut replica = Replica::default();
    while replica.held.len() < count {
        let m = common::next(&mut sub).await.unwrap();
        let message_id: u64 = String::from_utf8(m.payload).unwrap().parse().unwrap();
        replica.held.push((m.offset, message_id));
    }
    replica
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_elect_a_leader_and_apply_a_metadata_command_on_all_three() {
    let cluster = Cluster::start().await;
    let leader = within(cluster.node(1).wait_for_leader(None)).await;
    for id in 1..=3 {
        assert_eq!(within(cluster.node(id).wait_for_leader(None)).await, leader);
    }
    // The leader registers every node in the metadata.
    cluster.applied_everywhere(|s| s.nodes.len() == 3).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let refused = cluster
        .node(follower)
        .propose(MetaCommand::SetPolicy { sha256: "x".into() })
        .await
        .unwrap_err();
    assert!(
        matches!(refused, signet_broker::cluster::ClusterError::NotLeader { leader: Some(l) } if l == leader),
        "{refused:?}"
    );
    let outcome = cluster
        .node(leader)
        .propose(MetaCommand::PutGroup {
            name: "orders".into(),
            members: vec![1, 2, 3],
            topics: vec!["orders.>".into()],
        })
        .await
        .unwrap();
    assert_eq!(outcome, MetaOutcome::Applied);
    cluster
        .applied_everywhere(|s| {
            s.groups
                .get("orders")
                .is_some_and(|g| g.members == [1, 2, 3] && g.topics == ["orders.>"])
        })
        .await;
    for node in cluster.running() {
        assert_eq!(
            node.metadata().policy_sha256,
            None,
            "the refused command left nothing"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_follows_the_loss_of_the_leader_and_the_log_survives_a_restart() {
    let mut cluster = Cluster::start().await;
    let first = within(cluster.node(1).wait_for_leader(None)).await;
    cluster.applied_everywhere(|s| s.nodes.len() == 3).await;
    let set = |v: &str| MetaCommand::SetPolicy { sha256: v.into() };
    assert_eq!(
        cluster.node(first).propose(set("v1")).await.unwrap(),
        MetaOutcome::Applied
    );
    cluster
        .applied_everywhere(|s| s.policy_sha256.as_deref() == Some("v1"))
        .await;

    cluster.stop_node(first).await;
    let survivor = (1..=3).find(|id| *id != first).unwrap();
    let second = within(cluster.node(survivor).wait_for_leader(Some(first))).await;
    assert_ne!(second, first);
    assert_eq!(
        cluster.node(second).propose(set("v2")).await.unwrap(),
        MetaOutcome::Applied
    );
    cluster
        .applied_everywhere(|s| s.policy_sha256.as_deref() == Some("v2"))
        .await;

    // The old leader comes back: what it applied before is on its disk,
    // and it catches up with what was committed while it was away.
    cluster.start_node(first).await;
    let back = cluster.node(first).metadata();
    assert!(
        matches!(back.policy_sha256.as_deref(), Some("v1" | "v2")),
        "applied state read back from disk: {back:?}"
    );
    assert_eq!(back.nodes.len(), 3);
    cluster
        .applied_everywhere(|s| s.policy_sha256.as_deref() == Some("v2"))
        .await;
    cluster.shutdown().await;
}

/// Dials node `target`'s transport with `cert`/`key` (trusting `ca`) and
/// sends `frame`; returns whether a reply came back.
async fn send_as(ca: &Path, cert: &Path, key: &Path, target: &ClusterNode, frame: &[u8]) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![signet_broker::cluster::wire::NODE_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let server_name = signet_broker::cluster::transport::node_dns_name(target.id());
    let conn = match within(endpoint.connect(target.raft_addr(), &server_name).unwrap()).await {
        Ok(conn) => conn,
        Err(_) => return false,
    };
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return false;
    };
    if send.write_all(frame).await.is_err() {
        return false;
    }
    let _ = send.finish();
    let mut prefix = [0u8; 4];
    let answered = within(recv.read_exact(&mut prefix)).await.is_ok();
    // The node closes a connection it refuses; wait for that (or for the
    // answer) before looking at its state.
    if !answered {
        within(conn.closed()).await;
    }
    answered
}

/// Node 1's state before an attack, to compare after it.
async fn settled_leader(cluster: &Cluster) -> Arc<ClusterNode> {
    let leader = within(cluster.node(1).wait_for_leader(None)).await;
    cluster.applied_everywhere(|s| s.nodes.len() == 3).await;
    let node = cluster.node(leader);
    within(node.wait_applied()).await;
    node
}

fn assert_nothing_applied(cluster: &Cluster, target: &ClusterNode, term_before: u64) {
    assert!(
        target.term() < term_before + 10,
        "the forged leader's term was not taken"
    );
    for node in cluster.running() {
        assert_ne!(
            node.metadata().policy_sha256.as_deref(),
            Some("forged"),
            "the forged entry was applied on node {}",
            node.id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_certificate_cannot_pose_as_a_node() {
    let cluster = Cluster::start().await;
    let target = settled_leader(&cluster).await;
    let term_before = target.term();
    let other = (1..=3).find(|id| *id != target.id()).unwrap();
    let frame = forge::takeover(&target, other, "forged");
    let pki: PathBuf = cluster.files.dir.join("pki");
    // The publisher's certificate is issued by the cluster CA and passes
    // the TLS chain check, but names a principal, not a node.
    let answered = send_as(
        &pki.join("ca.crt"),
        &pki.join("clients/publisher.crt"),
        &pki.join("clients/publisher.key"),
        &target,
        &frame,
    )
    .await;
    assert!(
        !answered,
        "a client certificate got an answer from the node transport"
    );
    assert_nothing_applied(&cluster, &target, term_before);
    // The forged frame is well formed: the same node, asked by a real
    // peer speaking for itself, still serves its peers (status works).
    let status = target.status().await;
    assert!(
        status.nodes.iter().all(|n| n.state != "unreachable"),
        "{status:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_from_another_ca_is_refused() {
    let cluster = Cluster::start().await;
    let target = settled_leader(&cluster).await;
    let term_before = target.term();
    let other = (1..=3).find(|id| *id != target.id()).unwrap();
    let frame = forge::takeover(&target, other, "forged");
    // A whole other cluster: its node `other` carries `signet://node/<other>`,
    // but from another CA.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue = signet_admin::cluster::init(rogue_dir.path(), 3, 7451).unwrap();
    let rogue_pki = rogue.dir.join("pki");
    let answered = send_as(
        // The rogue trusts the real CA to get as far as the node's check.
        &cluster.files.dir.join("pki/ca.crt"),
        &rogue_pki.join(format!("nodes/node{other}.crt")),
        &rogue_pki.join(format!("nodes/node{other}.key")),
        &target,
        &frame,
    )
    .await;
    assert!(
        !answered,
        "a node certificate from another CA got an answer"
    );
    assert_nothing_applied(&cluster, &target, term_before);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_data_groups_differ_is_refused_both_ways_and_the_others_go_on() {
    // Node 3 counts two data groups where its peers count three: it
    // would place topics in other groups than they do.
    let cluster = Cluster::start_editing(
        |_| {},
        |policy| match policy.contains("node_id = 3") {
            true => policy.replace("data_groups = 3", "data_groups = 2"),
            false => policy.to_owned(),
        },
    )
    .await;
    assert_eq!(cluster.node(3).data_groups(), 2);
    // Nodes 1 and 2 are a majority: they elect and ack.
    let topic = "payments.shape";
    let group = signet_proto::placement::group_of(topic, 3);
    within(cluster.node(1).wait_for_data_leader(group, None)).await;
    let publisher = cluster.client(&cluster.files.publisher, &[1, 2]).await;
    let acks = within(publish_ids(&publisher, topic, 0..10)).await;
    assert_eq!(acks.len(), 10);
    // Each side refuses the other, and says why.
    for (asker, asked) in [(1, 3), (2, 3), (3, 1)] {
        let status = cluster.node(asker).status().await;
        let view = status.nodes.iter().find(|n| n.id == asked).unwrap();
        assert_eq!(
            view.state, "refused",
            "node {asker} about node {asked}: {view:?}"
        );
        assert!(
            view.refused
                .as_deref()
                .is_some_and(|why| why.contains("data_groups differ")),
            "{view:?}"
        );
    }
    // Node 3 took no part: no metadata, no data entry of any group.
    assert!(cluster.node(3).metadata().nodes.is_empty());
    for group in 1..=2 {
        assert_eq!(cluster.node(3).data_last_log(group), None, "group {group}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_init_then_three_broker_processes_and_cluster_status_shows_a_leader() {
    use common::process::signet;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("c");
    let base = free_base().to_string();
    let init = signet(&[
        "cluster",
        "init",
        "--dir",
        d.to_str().unwrap(),
        "--nodes",
        "3",
        "--port",
        &base,
    ])
    .await;
    assert!(init.ok(), "{}", init.stderr);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let policy = d.join(format!("node{id}.toml"));
        nodes.push(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_signet"))
                .args(["broker", "--config", policy.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    let client = d.join("publisher.toml");
    // Each probe is a whole `cluster status` run; the cluster is ready
    // when one names a leader that every node follows.
    let status = within(async {
        loop {
            let run = signet(&["cluster", "status", "--client", client.to_str().unwrap()]).await;
            if !run.ok() {
                continue;
            }
            let status: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
            let leader = &status["groups"][0]["leader"];
            let states: Vec<&str> = status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["state"].as_str().unwrap())
                .collect();
            let data_led = status["groups"].as_array().unwrap()[1..]
                .iter()
                .all(|g| g["leader"].is_u64());
            if leader.is_u64()
                && data_led
                && states.iter().filter(|s| **s == "leader").count() == 1
                && states.iter().filter(|s| **s == "follower").count() == 2
            {
                return status;
            }
        }
    })
    .await;
    let group = &status["groups"][0];
    assert_eq!(group["name"], "meta");
    assert_eq!(group["members"], serde_json::json!([1, 2, 3]));
    assert!(group["term"].as_u64().unwrap() >= 1);
    assert!(group["commit_index"].is_u64());
    assert!(
        status["groups"][1].get("compacted_index").is_some(),
        "{status}"
    );
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    // One data group per node, each first led by another node.
    let data: Vec<(String, u64)> = status["groups"].as_array().unwrap()[1..]
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_owned(),
                g["leader"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        data,
        vec![
            ("data-1".into(), 1),
            ("data-2".into(), 2),
            ("data-3".into(), 3)
        ],
        "{status}"
    );
    drop(nodes);
}

/// A topic of each data group: `payments` (group 1), `orders` (2) and
/// `shipping` (3) with three groups.
const SPREAD: [(&str, u64); 3] = [
    ("payments.spread", 1),
    ("orders.spread", 2),
    ("shipping.spread", 3),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_data_groups_are_led_by_three_nodes_and_losing_one_node_moves_only_the_group_it_led()
{
    let mut cluster = Cluster::start().await;
    for (topic, group) in SPREAD {
        assert_eq!(cluster.node(1).group_of(topic), group, "{topic}");
        let leader = within(cluster.node(1).wait_for_data_leader(group, None)).await;
        assert_eq!(
            leader, group,
            "data group {group} is first led by node {group}"
        );
    }
    // One publisher given every node (node 1 first), publishing to the
    // three topics at once: it opens a lane per data group, each on its
    // own connection to that group's leader, so the three leaders take
    // its writes at the same time.
    let publisher = cluster.client(&cluster.files.publisher, &[1, 2, 3]).await;
    let runs = SPREAD
        .iter()
        .map(|(topic, _)| publish_ids(&publisher, topic, 0..300));
    let acks = within(futures_util::future::join_all(runs)).await;
    for ((topic, _), acks) in SPREAD.iter().zip(&acks) {
        assert_eq!(acks.len(), 300, "{topic}: every publish acked");
        for id in 1..=3 {
            let replica = cluster.replica(id, topic, 300).await;
            history::check(acks, &replica).unwrap();
        }
    }
    // Node 2 stops: group 2 elects a leader among 1 and 3; groups 1 and 3
    // keep theirs.
    cluster.stop_node(2).await;
    let moved = within(cluster.node(1).wait_for_data_leader(2, Some(2))).await;
    assert_ne!(moved, 2);
    for group in [1u64, 3] {
        assert_eq!(
            cluster.node(1).data_leader(group),
            Some(group),
            "group {group} kept its leader"
        );
    }
    for (i, (topic, _)) in SPREAD.iter().enumerate() {
        let more = within(publish_ids(&publisher, topic, 300..400)).await;
        assert_eq!(more.len(), 100, "{topic}: acked after node 2 stopped");
        let mut all = acks[i].clone();
        all.extend(more);
        for id in [1, 3] {
            let replica = cluster.replica(id, topic, 400).await;
            history::check(&all, &replica).unwrap();
        }
    }
    cluster.shutdown().await;
}

/// Each replica holds exactly offsets `0..=last`, the checker finds no
/// acked message lost, duplicated or moved, and the replicas are the same.
fn assert_replicas_agree(acks: &HashMap<u64, u64>, replicas: &[(u64, Replica)], last: u64) {
    for (id, replica) in replicas {
        assert_eq!(
            replica.held.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            (0..=last).collect::<Vec<_>>(),
            "node {id}: dense offsets"
        );
    }
    let held: Vec<Replica> = replicas.iter().map(|(_, r)| r.clone()).collect();
    history::check_all(acks, &held).unwrap();
    assert!(held.iter().all(|r| r == &held[0]), "the replicas agree");
}

/// Publishes messages `ids` (each payload its id) pipelined through one
/// client; returns id → acked offset for every ack received.
async fn publish_ids(client: &Client, topic: &str, ids: std::ops::Range<u64>) -> HashMap<u64, u64> {
    publish_counting(client, topic, ids, &tokio::sync::Semaphore::new(0)).await
}

/// [`publish_ids`], adding a permit to `acked` for each ack as it comes.
async fn publish_counting(
    client: &Client,
    topic: &str,
    ids: std::ops::Range<u64>,
    acked: &tokio::sync::Semaphore,
) -> HashMap<u64, u64> {
    let sends = ids.map(|id| async move {
        let result = client.publish(topic, id.to_string()).await;
        if result.is_ok() {
            acked.add_permits(1);
        }
        (id, result)
    });
    let mut acks = HashMap::new();
    let mut errors: HashMap<String, usize> = HashMap::new();
    for (id, result) in futures_util::future::join_all(sends).await {
        match result {
            Ok(offset) => {
                acks.insert(id, offset);
            }
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    if !errors.is_empty() {
        eprintln!("{topic}: {} acked; refused: {errors:?}", acks.len());
    }
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_pipelined_publishes_to_the_leader_are_acked_and_held_at_the_same_offsets_on_every_node()
 {
    let cluster = Cluster::start().await;
    let leader = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let publisher = cluster.client(&cluster.files.publisher, &[leader]).await;
    let topic = "orders.replicated";
    let acks = within(publish_ids(&publisher, topic, 0..1_000)).await;
    assert_eq!(acks.len(), 1_000, "every publish acked");
    let mut offsets: Vec<u64> = acks.values().copied().collect();
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (0..1_000).collect::<Vec<_>>(),
        "dense offsets from 0"
    );
    let mut replicas = Vec::new();
    for id in 1..=3 {
        replicas.push(cluster.replica(id, topic, 1_000).await);
    }
    history::check_all(&acks, &replicas).unwrap();
    assert!(
        replicas.iter().all(|r| r == &replicas[0]),
        "every node holds the same messages"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_refuses_a_publish_with_not_leader_naming_the_leader_and_stores_nothing() {
    let cluster = Cluster::start().await;
    let leader = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    within(cluster.node(follower).wait_for_data_leader(orders(), None)).await;
    let der = std::fs::read(cluster.files.dir.join("keys/publisher.ed25519")).unwrap();
    let key = signet_proto::SigningKey::from_pkcs8(&der).unwrap();
    let client = cluster.client(&cluster.files.publisher, &[follower]).await;
    let seq = common::fresh_seq();
    let publish = common::signed(
        &key,
        1,
        vec![common::envelope(key.id(), "orders.refused", seq, b"1")],
    );
    let answer = common::raw_publish(&client, publish.clone()).await;
    let codes: Vec<_> = common::codes::nack_codes(answer.clone());
    assert_eq!(
        codes,
        vec![Some(signet_proto::ErrorCode::NotLeader)],
        "{answer:?}"
    );
    let expected = format!("leader {}", cluster.client_addr(leader));
    let signet_proto::frame::ServerFrame::Results(results) = answer else {
        panic!("{answer:?}")
    };
    let signet_proto::frame::Outcome::Nack(rejection) = &results.outcomes[0] else {
        panic!("{results:?}")
    };
    assert_eq!(rejection.detail, expected);
    // The same bytes sent to the leader are stored at offset 0: the
    // refused publish left nothing on any node.
    let at_leader = cluster.client(&cluster.files.publisher, &[leader]).await;
    let answer = common::raw_publish(&at_leader, publish).await;
    let signet_proto::frame::ServerFrame::Results(results) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(results.outcomes, vec![signet_proto::frame::Outcome::Ack(0)]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_whose_broker_list_starts_with_a_follower_follows_not_leader_and_publishes() {
    let cluster = Cluster::start().await;
    let leader = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    within(cluster.node(follower).wait_for_data_leader(orders(), None)).await;
    let others: Vec<u64> = std::iter::once(follower)
        .chain((1..=3).filter(|id| *id != follower))
        .collect();
    let publisher = cluster.client(&cluster.files.publisher, &others).await;
    let topic = "orders.redirected";
    let acks = within(publish_ids(&publisher, topic, 0..200)).await;
    assert_eq!(acks.len(), 200, "every publish acked after the redirect");
    for id in 1..=3 {
        let replica = cluster.replica(id, topic, 200).await;
        history::check(&acks, &replica).unwrap();
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_follower_down_does_not_stop_acks_and_two_nodes_down_stop_every_ack() {
    let mut cluster = Cluster::start().await;
    let leader = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let publisher = cluster.client(&cluster.files.publisher, &[leader]).await;
    let topic = "orders.majority";
    cluster.stop_node(followers[0]).await;
    let acks = within(publish_ids(&publisher, topic, 0..100)).await;
    assert_eq!(acks.len(), 100, "2 of 3 is a majority: every publish acked");
    cluster.stop_node(followers[1]).await;
    // The leader alone: nothing is committed, so nothing is acked.
    let lone = within(publish_ids(&publisher, topic, 100..110)).await;
    assert!(lone.is_empty(), "acked without a majority: {lone:?}");
    let replica = cluster.replica(leader, topic, 100).await;
    history::check(&acks, &replica).unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_stopped_under_ten_thousand_pipelined_publishes_loses_no_acked_message_and_a_new_leader_takes_over()
 {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cluster = Cluster::start().await;
    let leader = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let order: Vec<u64> = std::iter::once(leader)
        .chain((1..=3).filter(|id| *id != leader))
        .collect();
    let survivor = order[1];
    let publisher = cluster.client(&cluster.files.publisher, &order).await;
    let topic = "orders.failover";
    let long = std::time::Duration::from_secs(300);
    let node = cluster.node(leader);
    let (acks, stopped) = tokio::join!(
        tokio::time::timeout(long, publish_ids(&publisher, topic, 0..10_000)),
        async {
            // Stopped once some publishes are applied and more in flight.
            within(node.wait_data_applied(orders(), 20)).await;
            let stopped = std::time::Instant::now();
            cluster.stop_node(leader).await;
            stopped
        }
    );
    let acks = acks.expect("every publish answered");
    // In-flight publishes move to the new leader with the same key and
    // seq: each is acked, once (the checker below).
    assert_eq!(acks.len(), 10_000, "every publish acked across the stop");
    let new_leader = within(
        cluster
            .node(survivor)
            .wait_for_data_leader(orders(), Some(leader)),
    )
    .await;
    assert_ne!(new_leader, leader);
    // Publishing resumes on the new leader (through the same client).
    let resumed = within(publisher.publish(topic, "10000".to_string()))
        .await
        .expect("publishing resumes");
    eprintln!(
        "leader {leader} stopped; {} of 10000 acked; new leader {new_leader}; publishing resumed {:?} after the stop",
        acks.len(),
        stopped.elapsed()
    );
    let mut acks = acks;
    acks.insert(10_000, resumed);
    // Everything up to the resumed publish is committed: each survivor
    // holds exactly offsets 0..=resumed.
    let held = usize::try_from(resumed + 1).unwrap();
    let mut replicas = Vec::new();
    for id in order[1..].iter().copied() {
        replicas.push((id, cluster.replica(id, topic, held).await));
    }
    assert_replicas_agree(&acks, &replicas, resumed);
    cluster.shutdown().await;
}

/// A publisher of the cluster's nodes `ids` that dials again at most twice
/// in a row, waiting at most 50 ms, and follows `NotLeader` for `leader_wait`.
async fn impatient_publisher(cluster: &Cluster, ids: &[u64], leader_wait: Duration) -> Client {
    let mut config = cluster.client_config(&cluster.files.publisher, ids);
    config.reconnect_attempts = 2;
    config.reconnect_max = Duration::from_millis(50);
    config.leader_wait = leader_wait;
    within(Client::connect(config)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_follows_an_election_longer_than_its_reconnect_attempts_and_gives_up_only_after_its_leader_wait()
 {
    // Node 1 first leads data group 1 (the `payments.*` topics): until it
    // starts, nobody leads that group and nodes 2 and 3 answer every
    // publish `NotLeader` naming no leader, as during an election.
    let mut cluster = Cluster::start_some(|_| {}, |p| p.to_owned(), &[2, 3]).await;
    let topic = "payments.elected";
    assert_eq!(signet_proto::placement::group_of(topic, 3), 1);
    // Redirects in a row end after the client's leader wait, with
    // `GaveUp`, however few dials failed.
    let hasty = impatient_publisher(&cluster, &[2, 3], Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    match within(hasty.publish(topic, "lost".to_string())).await {
        Err(Error::GaveUp { last, .. }) => assert!(last.contains("no leader"), "{last}"),
        other => panic!("expected GaveUp, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(500));
    // Each redirect reaches a node that answers: it spends none of the
    // two reconnect attempts (before, the third redirect gave up within
    // ~150 ms), and the publish waits for a leader.
    let patient = impatient_publisher(&cluster, &[2, 3], Duration::from_secs(60)).await;
    let mut publish = std::pin::pin!(patient.publish(topic, "0".to_string()));
    assert!(
        tokio::time::timeout(Duration::from_secs(2), &mut publish)
            .await
            .is_err(),
        "the publish ended while no node led its group"
    );
    cluster.start_node(1).await;
    let offset = within(publish)
        .await
        .expect("acked once the group has a leader");
    assert_eq!(offset, 0, "the publish that gave up took no offset");
    let replica = cluster.replica(1, topic, 1).await;
    assert_eq!(replica.held, vec![(0, 0)]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_the_others_acks_nothing_and_its_unacked_tail_is_discarded_after_healing()
 {
    // A publish without a majority is answered after 3 s (not the default 10 s).
    let cluster = Cluster::start_with(|c| c.settings.limits.raft_commit_ms_max = 3_000).await;
    let old = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let topic = "orders.partitioned";
    // A client of the old leader only: the partition is between the nodes,
    // not between this client and its node.
    let at_old = cluster.client(&cluster.files.publisher, &[old]).await;
    let mut acks = within(publish_ids(&at_old, topic, 0..100)).await;
    assert_eq!(acks.len(), 100);
    cluster.node(old).isolate(true);
    // The cut-off leader may log these, but no majority has them: none is
    // acked.
    let cut = within(publish_ids(&at_old, topic, 100..150)).await;
    assert!(cut.is_empty(), "acked without a majority: {cut:?}");
    // The majority side elects a leader and takes writes.
    let new = within(
        cluster
            .node(others[0])
            .wait_for_data_leader(orders(), Some(old)),
    )
    .await;
    assert_ne!(new, old);
    let at_new = cluster.client(&cluster.files.publisher, &[new]).await;
    let written = within(publish_ids(&at_new, topic, 150..250)).await;
    assert_eq!(written.len(), 100, "the majority side acks");
    acks.extend(written);
    // Healed: the old leader follows the new term; whatever it logged
    // alone is replaced by the new leader's log.
    cluster.node(old).isolate(false);
    within(cluster.node(old).wait_for_data_leader(orders(), Some(old))).await;
    let last = within(at_new.publish(topic, "250".to_string()))
        .await
        .unwrap();
    acks.insert(250, last);
    assert_eq!(last, 200, "the 50 unacked publishes took no offsets");
    let mut replicas = Vec::new();
    for id in 1..=3 {
        let replica = cluster.replica(id, topic, 201).await;
        assert!(
            replica.held.iter().all(|(_, m)| !(100..150).contains(m)),
            "node {id} holds a publish only the cut-off leader logged"
        );
        replicas.push((id, replica));
    }
    assert_replicas_agree(&acks, &replicas, 200);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_node_under_load_loses_and_duplicates_no_acked_message() {
    let mut cluster = Cluster::start().await;
    within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let publisher = cluster.client(&cluster.files.publisher, &[1, 2, 3]).await;
    let topic = "orders.rolling";
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked = tokio::sync::Semaphore::new(0);
    let load = async {
        // Rounds of 500 pipelined publishes until every node has been
        // restarted once, at most one round per 50 ms (10,000 msgs/s,
        // under the publisher's default quota of 50,000/s: unpaced, a
        // fast machine hit it and got `QuotaExceeded`).
        let (mut acks, mut sent) = (HashMap::new(), 0u64);
        let mut pace = tokio::time::interval(std::time::Duration::from_millis(50));
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            pace.tick().await;
            acks.extend(publish_counting(&publisher, topic, sent..sent + 500, &acked).await);
            sent += 500;
        }
        (acks, sent)
    };
    let restarts = async {
        for id in 1..=3 {
            // Each restart happens under load: some publishes acked since
            // the last one.
            within(acked.acquire_many(300)).await.unwrap().forget();
            cluster.stop_node(id).await;
            cluster.start_node(id).await;
            // Caught up: the restarted node applied what the leader has.
            let others: Vec<u64> = (1..=3).filter(|other| *other != id).collect();
            let leader = within(cluster.node(others[0]).wait_for_data_leader(orders(), None)).await;
            let last = cluster.node(leader).data_last_log(orders()).unwrap_or(0);
            within(cluster.node(id).wait_data_applied(orders(), last)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let ((mut acks, sent), ()) = tokio::time::timeout(std::time::Duration::from_secs(300), async {
        tokio::join!(load, restarts)
    })
    .await
    .expect("the load and the restarts end");
    eprintln!("rolling restart: {} of {sent} acked", acks.len());
    assert_eq!(
        acks.len() as u64,
        sent,
        "every publish acked through the restarts"
    );
    let last = within(publisher.publish(topic, sent.to_string()))
        .await
        .unwrap();
    acks.insert(sent, last);
    let held = usize::try_from(last + 1).unwrap();
    let leader = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let end = cluster.node(leader).data_last_log(orders()).unwrap_or(0);
    for id in 1..=3 {
        within(cluster.node(id).wait_data_applied(orders(), end)).await;
    }
    let mut replicas = Vec::new();
    for id in 1..=3 {
        replicas.push((id, cluster.replica(id, topic, held).await));
    }
    assert_replicas_agree(&acks, &replicas, last);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn age_retention_is_a_log_entry_of_the_leader_and_a_follower_cut_off_deletes_nothing() {
    let cluster = Cluster::start_editing(
        |config| {
            config.settings.limits.retention_check_ms_max = 20;
        },
        |policy| {
            policy.replace(
                "[[topic]]\nname = \"orders.>\"",
                "[[topic]]\nname = \"orders.aged\"\nretention = { max_age = \"300ms\" }\n\n[[topic]]\nname = \"orders.>\"",
            )
        },
    )
    .await;
    let leader = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let cut = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != cut).unwrap();
    let publisher = cluster.client(&cluster.files.publisher, &[leader]).await;
    let topic = "orders.aged";
    let acks = publish_ids(&publisher, topic, 0..50).await;
    assert_eq!(acks.len(), 50);
    let end = cluster.node(leader).data_last_log(orders()).unwrap_or(0);
    within(cluster.node(cut).wait_data_applied(orders(), end)).await;
    // The follower is cut off holding all 50; its clock says they are
    // old just as the leader's does.
    cluster.node(cut).isolate(true);
    cluster.await_first(leader, topic, 50).await;
    cluster.await_first(other, topic, 50).await;
    assert_eq!(
        cluster.topic_state(cut, topic).map(|s| s.0),
        Some(0),
        "a follower cut off from the leader deleted messages on its own"
    );
    // Healed, it applies the leader's trim from the log.
    cluster.node(cut).isolate(false);
    cluster.await_first(cut, topic, 50).await;
    for id in 1..=3 {
        let (first, next, bytes) = cluster.topic_state(id, topic).unwrap();
        assert_eq!((first, next, bytes), (50, 50, 0), "node {id}");
    }
    cluster.shutdown().await;
}

/// Publishes `rounds` rounds of 20 pipelined messages (each round at least
/// one log entry), ids from `from` on.
async fn publish_rounds(client: &Client, topic: &str, from: u64, rounds: u64) -> HashMap<u64, u64> {
    let mut acks = HashMap::new();
    for round in 0..rounds {
        let start = from + round * 20;
        acks.extend(publish_ids(client, topic, start..start + 20).await);
    }
    acks
}

/// A data group's log is deleted only up to what every node holds on
/// disk: with a compaction point every 20 entries, every node compacts
/// under load; a follower stopped meanwhile holds the point back (the
/// others keep the entries it lacks) and catches up from the log when it
/// returns; every node restarts on its compacted log; and the replicas
/// agree on every acked message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_group_log_is_compacted_only_up_to_what_every_node_holds_and_a_stopped_follower_catches_up()
 {
    let mut cluster = Cluster::start_with(|c| c.settings.limits.raft_compact_entries = 20).await;
    let leader = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let publisher = cluster.client(&cluster.files.publisher, &[1, 2, 3]).await;
    let topic = "orders.compacted";
    let mut acks = within(publish_rounds(&publisher, topic, 0, 30)).await;
    for id in 1..=3 {
        within(cluster.node(id).wait_data_compacted(orders(), 20)).await;
    }
    // Stopped, the follower's progress stays where it was: no node
    // compacts past what it holds.
    let held = cluster.node(follower).data_last_log(orders()).unwrap();
    cluster.stop_node(follower).await;
    acks.extend(within(publish_rounds(&publisher, topic, 600, 30)).await);
    let leader = within(cluster.node(leader).wait_for_data_leader(orders(), None)).await;
    let end = cluster.node(leader).data_last_log(orders()).unwrap();
    assert!(end > held + 20, "the log grew while the follower was down");
    for id in (1..=3).filter(|id| *id != follower) {
        let compacted = cluster.node(id).data_compacted(orders()).unwrap();
        assert!(
            compacted <= held,
            "node {id} compacted to {compacted}, past {held}, what the stopped follower holds"
        );
    }
    // Back, it catches up from the others' logs (no snapshot: a data
    // group's snapshot holds no messages and is refused), and compaction
    // moves past the point it held back.
    cluster.start_node(follower).await;
    within(cluster.node(follower).wait_data_applied(orders(), end)).await;
    acks.extend(within(publish_rounds(&publisher, topic, 1_200, 30)).await);
    for id in 1..=3 {
        within(cluster.node(id).wait_data_compacted(orders(), held + 1)).await;
    }
    // Every node restarts on its compacted log.
    for id in 1..=3 {
        cluster.stop_node(id).await;
        cluster.start_node(id).await;
    }
    let last = within(publisher.publish(topic, "1800")).await.unwrap();
    acks.insert(1_800, last);
    assert_eq!(acks.len(), 1_801, "every publish acked");
    let leader = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let end = cluster.node(leader).data_last_log(orders()).unwrap();
    let mut replicas = Vec::new();
    for id in 1..=3 {
        within(cluster.node(id).wait_data_applied(orders(), end)).await;
        let held = usize::try_from(last + 1).unwrap();
        replicas.push((id, cluster.replica(id, topic, held).await));
    }
    assert_replicas_agree(&acks, &replicas, last);
    cluster.shutdown().await;
}

/// A second consumer group, on the `payments.*` topics (another data group
/// than `orders-workers`').
const PAYMENTS_WORKERS: &str = r#"
[[group]]
name = "payments-workers"
topics = ["payments.>"]
start = "earliest"
ack_wait = "30s"
max_deliveries = 5
dead_letter = "payments.dlq.workers"
max_in_flight = 1000
"#;

/// Takes `n` deliveries from `consumer`, acking each: their message ids.
async fn take_and_ack(consumer: &mut signet_client::Consumer, n: usize) -> Vec<u64> {
    use futures_util::StreamExt;
    let mut ids = Vec::new();
    while ids.len() < n {
        let delivery = within(consumer.next())
            .await
            .expect("the membership ended")
            .expect("a verified delivery");
        let id: u64 = String::from_utf8(delivery.message.payload.clone())
            .unwrap()
            .parse()
            .unwrap();
        within(delivery.ack()).await.unwrap();
        ids.push(id);
    }
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_client_consumes_two_groups_led_by_two_nodes_and_each_member_follows_its_own_leader() {
    // A second consumer group, on the `payments.*` topics: another data
    // group than `orders-workers`, first led by another node.
    let cluster = Cluster::start_editing(
        |_| {},
        |policy| {
            policy
                .replace(
                    r#"consume = ["orders-workers"]"#,
                    r#"consume = ["orders-workers", "payments-workers"]"#,
                )
                .replace(
                    r#"deny_publish = ["orders.dlq.>"]"#,
                    r#"deny_publish = ["orders.dlq.>", "payments.dlq.>"]"#,
                )
                + PAYMENTS_WORKERS
        },
    )
    .await;
    let payments = signet_proto::placement::group_of("payments", 3);
    let orders_leader = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let payments_leader = within(cluster.node(1).wait_for_data_leader(payments, None)).await;
    assert_ne!(orders_leader, payments_leader);
    let publisher = cluster.client(&cluster.files.publisher, &[1, 2, 3]).await;
    assert_eq!(
        within(publish_ids(&publisher, "orders.work", 0..20))
            .await
            .len(),
        20
    );
    assert_eq!(
        within(publish_ids(&publisher, "payments.work", 100..120))
            .await
            .len(),
        20
    );
    // The worker's file starts at the node that leads neither group: each
    // member is sent to its group's leader.
    let third = (1..=3)
        .find(|id| *id != orders_leader && *id != payments_leader)
        .unwrap();
    let worker = cluster
        .client(
            &cluster.files.subscriber,
            &[third, orders_leader, payments_leader],
        )
        .await;
    let mut orders_member = within(worker.consume_with("orders-workers", 8))
        .await
        .unwrap();
    let mut payments_member = within(worker.consume_with("payments-workers", 8))
        .await
        .unwrap();
    // Both at once: with one shared connection, each member's redirect
    // closed the other's streams, and they pulled it back and forth.
    let (orders_ids, payments_ids) = tokio::join!(
        take_and_ack(&mut orders_member, 20),
        take_and_ack(&mut payments_member, 20)
    );
    assert_eq!(orders_ids, (0..20).collect::<Vec<u64>>());
    assert_eq!(payments_ids, (100..120).collect::<Vec<u64>>());
    worker.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_member_redirected_long_ago_follows_its_group_to_a_new_leader() {
    let cluster = Cluster::start().await;
    let old = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    // The worker's file starts at a node that does not lead: the member
    // joins through a redirect. Redirects in a row end after 1 s.
    let mut config = cluster.client_config(&cluster.files.subscriber, &[others[0], old, others[1]]);
    config.leader_wait = Duration::from_secs(1);
    let worker = within(Client::connect(config)).await.unwrap();
    let mut member = within(worker.consume_with("orders-workers", 8))
        .await
        .unwrap();
    // Idle past the leader wait and past the 5 s after which a connection
    // counts as in use: the passing time is what is under test here (no
    // event marks it).
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The leader is cut off, the others elect, the old one rejoins as a
    // follower and ends the member's stream with `NotLeader`: a redirect
    // long after the one that joined, which starts a new run.
    cluster.node(old).isolate(true);
    let new = within(
        cluster
            .node(others[0])
            .wait_for_data_leader(orders(), Some(old)),
    )
    .await;
    cluster.node(old).isolate(false);
    within(cluster.node(old).wait_for_data_leader(orders(), Some(old))).await;
    let publisher = cluster.client(&cluster.files.publisher, &[new]).await;
    assert_eq!(
        within(publish_ids(&publisher, "orders.idle", 0..5))
            .await
            .len(),
        5
    );
    assert_eq!(
        take_and_ack(&mut member, 5).await,
        (0..5).collect::<Vec<u64>>()
    );
    worker.close().await;
    cluster.shutdown().await;
}

/// What a consumer saw, in the order it saw it.
#[derive(Default)]
struct Consumed {
    /// (offset, when received), in arrival order.
    deliveries: Vec<(u64, u64)>,
    /// Offset → how many deliveries had arrived when its ack was confirmed.
    acked: HashMap<u64, usize>,
    /// Offsets held unsettled → their lease deadline.
    held: HashMap<u64, u64>,
    /// Acks refused or unanswered (the member moved): their leases end at
    /// their deadlines.
    failed: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_group_keeps_its_acks_and_leases_through_a_rolling_restart() {
    const TOTAL: u64 = 600;
    const ACK_WAIT_MS: u64 = 15_000;
    let mut cluster = Cluster::start_editing(
        |_| {},
        |policy| policy.replace("ack_wait = \"30s\"", "ack_wait = \"15s\""),
    )
    .await;
    let leader = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let publisher = cluster.client(&cluster.files.publisher, &[1, 2, 3]).await;
    let topic = "orders.work";
    let acks = publish_ids(&publisher, topic, 0..TOTAL).await;
    assert_eq!(acks.len() as u64, TOTAL);
    let worker = cluster.client(&cluster.files.subscriber, &[1, 2, 3]).await;
    let mut consumer = within(worker.consume_with("orders-workers", 16))
        .await
        .unwrap();
    let acked = tokio::sync::Semaphore::new(0);
    // Restarts done so far: the consumer acks at most 50 past each
    // restart's start until it is over, so work is acked before, during
    // and after every move of the leader.
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(0u64);
    // The data leader first (the group's state must come from the log on
    // the node that takes over), then the others.
    let order: Vec<u64> = std::iter::once(leader)
        .chain((1..=3).filter(|id| *id != leader))
        .collect();
    let restarts = async {
        let mut first_done = None;
        let mut leaders = vec![leader];
        for id in order {
            within(acked.acquire_many(100)).await.unwrap().forget();
            cluster.stop_node(id).await;
            // The others take over before it is back (else the restarted
            // leader may win the next election with its own state).
            let others: Vec<u64> = (1..=3).filter(|other| *other != id).collect();
            let leader = within(
                cluster
                    .node(others[0])
                    .wait_for_data_leader(orders(), Some(id)),
            )
            .await;
            leaders.push(leader);
            cluster.start_node(id).await;
            let last = cluster.node(leader).data_last_log(orders()).unwrap_or(0);
            within(cluster.node(id).wait_data_applied(orders(), last)).await;
            first_done.get_or_insert(signet_broker::group::now_ms());
            done_tx.send_modify(|done| *done += 1);
        }
        assert_ne!(leaders[1], leader, "the data leader changed: {leaders:?}");
        first_done.unwrap()
    };
    let consume = async {
        use futures_util::StreamExt;
        let mut seen = Consumed::default();
        // Deliveries held unsettled, kept alive.
        let mut kept = Vec::new();
        let worker = &worker;
        let all_acked = move || async move {
            let status = within(worker.group_info("orders-workers")).await.unwrap();
            status
                .topics
                .iter()
                .find(|t| t.topic == topic)
                .is_some_and(|t| t.acked_floor == TOTAL)
        };
        loop {
            let delivery = tokio::select! {
                d = consumer.next() => d,
                changed = done_rx.changed(), if *done_rx.borrow() < 3 => {
                    changed.unwrap();
                    if *done_rx.borrow() == 3 && all_acked().await {
                        break;
                    }
                    continue;
                }
            };
            let delivery = within(async { delivery })
                .await
                .expect("the membership stream goes on")
                .expect("a verified delivery");
            let offset = delivery.message.offset;
            seen.deliveries
                .push((offset, signet_broker::group::now_ms()));
            if seen.held.len() < 3 && delivery.delivery_count == 1 && seen.acked.is_empty() {
                seen.held.insert(offset, delivery.deadline_ms);
                kept.push(delivery);
                continue;
            }
            loop {
                let done = *done_rx.borrow();
                if done >= 3 || (seen.acked.len() as u64) < 100 * (done + 1) + 50 {
                    break;
                }
                within(done_rx.changed()).await.unwrap();
            }
            match delivery.ack().await {
                Ok(()) => {
                    // The first confirmation counts (a later one would be
                    // of a redelivery).
                    let at = seen.deliveries.len();
                    seen.acked.entry(offset).or_insert(at);
                    acked.add_permits(1);
                }
                Err(_) => seen.failed += 1,
            }
            if *done_rx.borrow() == 3 && all_acked().await {
                break;
            }
        }
        drop(kept);
        seen
    };
    let (first_restart_done, seen) =
        tokio::time::timeout(std::time::Duration::from_secs(300), async {
            tokio::join!(restarts, consume)
        })
        .await
        .expect("the consumer and the restarts end");
    eprintln!(
        "consumer group through a rolling restart: {} deliveries, {} acks confirmed, {} acks failed",
        seen.deliveries.len(),
        seen.acked.len(),
        seen.failed
    );
    // The held leases were live when their leader was restarted.
    let deadline_min = seen.held.values().min().copied().unwrap();
    assert!(
        first_restart_done < deadline_min,
        "the leader restart ({first_restart_done}) ended before the held leases' deadlines ({deadline_min}); ack_wait {ACK_WAIT_MS} ms"
    );
    // Acks kept: nothing acked is delivered again.
    for (i, (offset, _)) in seen.deliveries.iter().enumerate() {
        if let Some(confirmed) = seen.acked.get(offset) {
            assert!(
                i < *confirmed,
                "offset {offset} delivered again after its ack was confirmed"
            );
        }
    }
    // Leases kept: a held message goes to no one before its deadline.
    for (offset, deadline) in &seen.held {
        let times: Vec<u64> = seen
            .deliveries
            .iter()
            .filter(|(o, _)| o == offset)
            .map(|(_, at)| *at)
            .collect();
        assert!(
            times[1..].iter().all(|at| at >= deadline),
            "held offset {offset} (lease until {deadline}) delivered again at {:?}",
            &times[1..]
        );
        assert!(
            times.len() >= 2,
            "held offset {offset} redelivered after its lease"
        );
    }
    // Every replica holds the same group state: all acked, none dead.
    let leader = within(cluster.node(1).wait_for_data_leader(orders(), None)).await;
    let end = cluster.node(leader).data_last_log(orders()).unwrap_or(0);
    for id in 1..=3 {
        within(cluster.node(id).wait_data_applied(orders(), end)).await;
        let client = cluster.client(&cluster.files.subscriber, &[id]).await;
        let status = within(client.group_info("orders-workers")).await.unwrap();
        let t = status.topics.iter().find(|t| t.topic == topic).unwrap();
        assert_eq!(
            (t.acked_floor, t.acked, t.dead, t.in_flight),
            (TOTAL, TOTAL, 0, 0),
            "node {id}: {t:?}"
        );
    }
    cluster.shutdown().await;
}

/// Three `signet broker` processes of one `cluster init`, each with its
/// own data dir, killed when dropped.
struct Processes {
    _dir: tempfile::TempDir,
    files: signet_admin::cluster::ClusterFiles,
    children: Vec<Option<tokio::process::Child>>,
}

impl Processes {
    async fn start() -> Processes {
        let dir = tempfile::tempdir().unwrap();
        let files = signet_admin::cluster::init(&dir.path().join("c"), 3, free_base()).unwrap();
        let mut processes = Processes {
            _dir: dir,
            files,
            children: vec![None, None, None],
        };
        for id in 1..=3 {
            processes.spawn(id);
        }
        processes
    }

    /// Starts node `id`'s broker process (its log in `node<id>.log`).
    fn spawn(&mut self, id: u64) {
        let policy = &self.files.nodes[(id - 1) as usize];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.files.dir.join(format!("node{id}.log")))
            .unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_signet"))
            .args(["broker", "--config", policy.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.children[(id - 1) as usize] = Some(child);
    }

    /// SIGKILL to node `id`'s process; returns once it is gone.
    async fn kill(&mut self, id: u64) {
        let mut child = self.children[(id - 1) as usize].take().unwrap();
        child.start_kill().unwrap();
        within(child.wait()).await.unwrap();
    }

    fn client_addr(&self, id: u64) -> String {
        let config = Config::load(&self.files.nodes[(id - 1) as usize]).unwrap();
        config.settings.listen.to_string()
    }

    async fn client(&self, file: &Path, ids: &[u64]) -> Client {
        client_of(file, ids.iter().map(|id| self.client_addr(*id)).collect()).await
    }

    /// The data group's leader once each node of `ids` names the same one,
    /// other than `not` (asked through `cluster status` on each node).
    async fn data_leader(&self, ids: &[u64], not: Option<u64>) -> u64 {
        let mut clients = Vec::new();
        for id in ids {
            clients.push(self.client(&self.files.subscriber, &[*id]).await);
        }
        within(async {
            loop {
                let mut named = Vec::new();
                for client in &clients {
                    let leader = match client.cluster_status().await {
                        Ok(status) => status
                            .groups
                            .iter()
                            .find(|g| g.name == format!("data-{}", orders()))
                            .and_then(|g| g.leader),
                        Err(_) => None,
                    };
                    named.push(leader);
                }
                if let Some(Some(leader)) = named.first().copied()
                    && named.iter().all(|l| *l == Some(leader))
                    && Some(leader) != not
                {
                    return leader;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_under_ten_thousand_pipelined_publishes_loses_no_acked_message() {
    let mut nodes = Processes::start().await;
    let leader = nodes.data_leader(&[1, 2, 3], None).await;
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    // The client file `cluster init` wrote lists every node; the leader first.
    let order: Vec<u64> = std::iter::once(leader).chain(survivors.clone()).collect();
    let publisher = nodes.client(&nodes.files.publisher, &order).await;
    let topic = "orders.killed";
    let acked = tokio::sync::Semaphore::new(0);
    let long = std::time::Duration::from_secs(300);
    let (acks, killed) = tokio::join!(
        tokio::time::timeout(long, publish_counting(&publisher, topic, 0..10_000, &acked)),
        async {
            // Killed once some publishes are acked and more in flight.
            within(acked.acquire_many(100)).await.unwrap().forget();
            let killed = std::time::Instant::now();
            nodes.kill(leader).await;
            killed
        }
    );
    let acks = acks.expect("every publish answered");
    assert_eq!(acks.len(), 10_000, "every publish acked across the kill");
    let new_leader = nodes.data_leader(&survivors, Some(leader)).await;
    let resumed = within(publisher.publish(topic, "10000".to_string()))
        .await
        .expect("publishing resumes on the new leader");
    eprintln!(
        "leader {leader} killed (SIGKILL); {} of 10000 acked; new leader {new_leader}; publishing resumed {:?} after the kill",
        acks.len(),
        killed.elapsed()
    );
    let mut acks = acks;
    acks.insert(10_000, resumed);
    // Every survivor holds exactly offsets 0..=resumed, each acked
    // message once at its acked offset; the killed node, restarted, holds
    // the same (its unacked tail, if any, replaced by the new leader's log).
    nodes.spawn(leader);
    let held = usize::try_from(resumed + 1).unwrap();
    let mut replicas = Vec::new();
    for id in survivors.iter().copied().chain([leader]) {
        let client = nodes.client(&nodes.files.subscriber, &[id]).await;
        replicas.push((id, replica_of(&client, topic, held).await));
    }
    assert_replicas_agree(&acks, &replicas, resumed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_cluster_runs_three_nodes_in_one_process_that_take_a_publish_and_serve_it() {
    use common::process::signet;
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let base = free_base().to_string();
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(["dev", "--cluster", "3", "--port", &base, "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let (mut nodes, mut publisher, mut subscriber) = (0, None, None);
    while publisher.is_none() || subscriber.is_none() {
        let line = within(lines.next_line())
            .await
            .unwrap()
            .expect("dev --cluster prints its files");
        let line = line.trim_start();
        let path = || line.split_whitespace().nth(1).map(str::to_owned);
        if line.starts_with("node:") {
            nodes += 1;
        } else if line.starts_with("publisher:") {
            publisher = path();
        } else if line.starts_with("subscriber:") {
            subscriber = path();
        }
    }
    assert_eq!(nodes, 3);
    let (publisher, subscriber) = (publisher.unwrap(), subscriber.unwrap());
    // The nodes listen before the files are printed; the first publish may
    // meet an election and follow `NotLeader` to the leader.
    let run = signet(&[
        "pub",
        "--client",
        &publisher,
        "--topic",
        "orders.created",
        "--data",
        r#"{"id":1}"#,
    ])
    .await;
    assert!(run.ok(), "{}", run.stderr);
    let run = signet(&[
        "sub",
        "--client",
        &subscriber,
        "--topic",
        "orders.created",
        "--from-offset",
        "0",
        "--count",
        "1",
    ])
    .await;
    assert!(run.ok(), "{}", run.stderr);
    let got: serde_json::Value = serde_json::from_str(run.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(got["payload"], serde_json::json!({"id": 1}));
    assert_eq!(got["offset"], 0);
    let status = signet(&["cluster", "status", "--client", &publisher]).await;
    assert!(status.ok(), "{}", status.stderr);
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    dev.start_kill().unwrap();
    let _ = within(dev.wait()).await;
}
