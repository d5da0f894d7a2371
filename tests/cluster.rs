//! A cluster of real brokers (phase A: the metadata Raft group and the
//! node transport): three nodes on 127.0.0.1 written by `cluster init`,
//! real QUIC with mutual TLS between them, real RocksDB logs.

mod common;
#[path = "common/history.rs"]
mod history;

use common::within;
use history::Replica;
use signet_broker::cluster::{ClusterNode, MetaCommand, MetaOutcome, forge};
use signet_broker::{Broker, Config};
use signet_client::{Client, ClientConfig, StartAt};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let files = signet_admin::cluster::init(&dir.path().join("c"), 3, free_base()).unwrap();
        let mut cluster = Cluster {
            _dir: dir,
            files,
            brokers: vec![None, None, None],
        };
        for id in 1..=3 {
            cluster.start_node(id).await;
        }
        cluster
    }

    async fn start_node(&mut self, id: u64) {
        let config = Config::load(&self.files.nodes[(id - 1) as usize]).unwrap();
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
        let mut config = ClientConfig::load(file).unwrap();
        config.brokers = ids.iter().map(|id| self.client_addr(*id)).collect();
        config.broker = config.brokers[0].clone();
        within(Client::connect(config)).await.unwrap()
    }

    /// What node `id` holds of `topic` up to `count` messages, read by a
    /// subscriber connected to that node: (offset, message id).
    async fn replica(&self, id: u64, topic: &str, count: usize) -> Replica {
        let client = self.client(&self.files.subscriber, &[id]).await;
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

    async fn shutdown(mut self) {
        for broker in self.brokers.iter_mut().filter_map(Option::take) {
            broker.shutdown().await;
        }
    }
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
            if leader.is_u64()
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
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    drop(nodes);
}

/// Publishes messages `ids` (each payload its id) pipelined through one
/// client; returns id → acked offset for every ack received.
async fn publish_ids(client: &Client, topic: &str, ids: std::ops::Range<u64>) -> HashMap<u64, u64> {
    let sends = ids.map(|id| async move { (id, client.publish(topic, id.to_string()).await) });
    let mut acks = HashMap::new();
    for (id, result) in futures_util::future::join_all(sends).await {
        if let Ok(offset) = result {
            acks.insert(id, offset);
        }
    }
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_pipelined_publishes_to_the_leader_are_acked_and_held_at_the_same_offsets_on_every_node()
 {
    let cluster = Cluster::start().await;
    let leader = within(cluster.node(1).wait_for_data_leader(None)).await;
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
    let leader = within(cluster.node(1).wait_for_data_leader(None)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    within(cluster.node(follower).wait_for_data_leader(None)).await;
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
    let leader = within(cluster.node(1).wait_for_data_leader(None)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    within(cluster.node(follower).wait_for_data_leader(None)).await;
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
    let leader = within(cluster.node(1).wait_for_data_leader(None)).await;
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
    let mut cluster = Cluster::start().await;
    let leader = within(cluster.node(1).wait_for_data_leader(None)).await;
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
            within(node.wait_data_applied(20)).await;
            let stopped = std::time::Instant::now();
            cluster.stop_node(leader).await;
            stopped
        }
    );
    let acks = acks.expect("every publish answered");
    let new_leader = within(cluster.node(survivor).wait_for_data_leader(Some(leader))).await;
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
        let replica = cluster.replica(id, topic, held).await;
        assert_eq!(
            replica.held.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            (0..=resumed).collect::<Vec<_>>(),
            "node {id}: dense offsets"
        );
        replicas.push(replica);
    }
    history::check_all(&acks, &replicas).unwrap();
    assert_eq!(replicas[0], replicas[1], "the survivors agree");
    cluster.shutdown().await;
}
