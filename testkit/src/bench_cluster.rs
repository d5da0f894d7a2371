//! The cluster benchmark: acked publishes per second and publish→ack
//! latency through a three-node cluster on this machine (every accepted
//! batch logged, fsynced and applied on all three, acked after a majority
//! has it on disk), against one broker in the same run.

use crate::bench::{BenchArgs, Report, publish_load, publish_spread};
use anyhow::{Context, Result, bail};
use signet_broker::{Broker, Config};
use signet_client::{Client, ClientConfig};
use std::time::Instant;

/// Nodes in the benchmark cluster.
const NODES: u16 = 3;

/// The topic the cluster run publishes to (its data group's leader is
/// the one measured).
const TOPIC: &str = "orders.bench";

/// Topics of the three data groups `cluster init` writes for three nodes
/// (`payments` in group 1, `orders` in 2, `shipping` in 3), each first led
/// by another node.
const SPREAD: [&str; 3] = ["payments.bench", "orders.bench", "shipping.bench"];

/// A base port whose client and node-transport ports are free now (node
/// `i` serves clients on `base + i - 1`, peers on `base + 100 + i - 1`).
fn free_base() -> Result<u16> {
    for attempt in 0..200u16 {
        let seed = u16::try_from(std::process::id() % 20_000).unwrap_or(0);
        let base = 30_000 + (seed + attempt * 97) % 20_000;
        let free = (0..NODES).all(|i| {
            [base + i, base + 100 + i]
                .iter()
                .all(|port| std::net::UdpSocket::bind(("127.0.0.1", *port)).is_ok())
        });
        if free {
            return Ok(base);
        }
    }
    bail!("no free ports for a cluster")
}

/// One publish run through a fresh three-node cluster (files written by
/// `cluster init`, the nodes in this process), publishing to one topic
/// (one data group's leader) or, with `spread`, to a topic of each of the
/// three data groups in turn (three leaders, one lane each).
pub async fn cluster_run(args: &BenchArgs, spread: bool) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let files = signet_admin::cluster::init(&dir.path().join("c"), NODES, free_base()?)?;
    let mut brokers: Vec<Broker> = Vec::new();
    for node in &files.nodes {
        brokers.push(signet_broker::start(Config::load(node)?).await?);
    }
    let node = brokers[0].cluster().context("a cluster node")?;
    for group in 1..=node.data_groups() {
        node.wait_for_data_leader(group, None).await;
    }
    let leader = node.wait_for_data_leader(node.group_of(TOPIC), None).await;
    let index = usize::try_from(leader)?
        .checked_sub(1)
        .context("node ids start at 1")?;
    let mut config = ClientConfig::load(&files.publisher)?;
    let leader_addr = brokers
        .get(index)
        .context("the leader is one of the nodes")?
        .local_addr()
        .to_string();
    // The leader first: no redirect in the measured run.
    config.brokers.retain(|b| *b != leader_addr);
    config.brokers.insert(0, leader_addr.clone());
    config.broker = leader_addr;
    let client = Client::connect(config).await?;
    let started = Instant::now();
    let hist = if spread {
        publish_spread(&client, &SPREAD, args).await?
    } else {
        publish_load(&client, TOPIC, args, None).await?
    };
    let report = Report::publish_only(args, args.size, started.elapsed(), &hist);
    client.close().await;
    for broker in brokers {
        broker.shutdown().await;
    }
    Ok(report)
}

/// One round's runs: one broker, the cluster on one topic (one data
/// group), the cluster on a topic of each of its three data groups.
pub struct Round {
    pub single: Report,
    pub cluster: Report,
    pub spread: Report,
}

/// `rounds` rounds of one broker and the cluster (one topic, then three
/// groups), the order rotating per round, each run on fresh data dirs.
pub async fn cluster_vs_single(args: BenchArgs, rounds: usize) -> Result<Vec<Round>> {
    let mut out = Vec::new();
    for round in 0..rounds {
        let mut single = None;
        let mut cluster = None;
        let mut spread = None;
        for run in 0..3 {
            match (round + run) % 3 {
                0 => single = Some(crate::bench::single_run(&args).await?),
                1 => cluster = Some(cluster_run(&args, false).await?),
                _ => spread = Some(cluster_run(&args, true).await?),
            }
        }
        out.push(Round {
            single: single.context("one broker ran")?,
            cluster: cluster.context("the cluster ran")?,
            spread: spread.context("the spread cluster ran")?,
        });
    }
    Ok(out)
}
