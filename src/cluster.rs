//! `signet cluster init`, `signet cluster status` and `signet dev --cluster`.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};
use signet_admin::cluster;
use signet_client::{Client, ClientConfig, Error as ClientError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Write a cluster of nodes on 127.0.0.1: a CA, per node a node certificate, identity key and
    /// policy file (DIR/node1.toml …), and DIR/publisher.toml / DIR/subscriber.toml listing every node.
    Init {
        /// The folder (must not hold a CA).
        #[arg(long)]
        dir: PathBuf,
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        /// Node i serves clients on PORT+i-1 and its node transport on PORT+100+i-1.
        #[arg(long, default_value_t = cluster::DEFAULT_BASE_PORT)]
        port: u16,
    },
    /// Print the cluster's state as one JSON object, asked of the first node that answers.
    Status {
        /// The client file.
        #[arg(long)]
        client: PathBuf,
    },
}

fn code_name(e: &ClientError) -> String {
    match (e.code(), e) {
        (Some(code), _) => code.to_string(),
        (None, ClientError::Config(_)) => "ConfigError".to_string(),
        (None, _) => "ConnectionError".to_string(),
    }
}

/// `signet cluster …`.
pub async fn cluster_command(command: ClusterCommand) -> Result<ExitCode> {
    match command {
        ClusterCommand::Init { dir, nodes, port } => {
            let files = cluster::init(&dir, nodes, port)?;
            for (i, node) in files.nodes.iter().enumerate() {
                println!("node {}: signet broker --config {}", i + 1, node.display());
            }
            println!("publisher client file: {}", files.publisher.display());
            println!("subscriber client file: {}", files.subscriber.display());
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Status { client } => status(client).await,
    }
}

async fn status(client: PathBuf) -> Result<ExitCode> {
    let config = ClientConfig::load(&client)?;
    let client = match Client::connect(config).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!(
                "{}",
                json!({ "error": code_name(&e), "detail": e.to_string() })
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let status = match client.cluster_status().await {
        Ok(status) => status,
        Err(e) => {
            eprintln!(
                "{}",
                json!({ "error": code_name(&e), "detail": e.to_string() })
            );
            client.close().await;
            return Ok(ExitCode::FAILURE);
        }
    };
    let nodes: Vec<Value> = status
        .nodes
        .iter()
        .map(|n| json!({ "id": n.id, "client": n.client, "state": n.state, "term": n.term }))
        .collect();
    let groups: Vec<Value> = status
        .groups
        .iter()
        .map(|g| {
            json!({
                "name": g.name,
                "leader": g.leader,
                "term": g.term,
                "commit_index": g.commit_index,
                "applied_index": g.applied_index,
                "compacted_index": g.compacted_index,
                "members": g.members,
            })
        })
        .collect();
    println!(
        "{}",
        json!({ "answered_by": status.node_id, "nodes": nodes, "groups": groups })
    );
    client.close().await;
    Ok(ExitCode::SUCCESS)
}

/// `signet dev --cluster N`: writes a cluster of `nodes` under `dir` when
/// it holds none (as `cluster init`), runs every node in this process
/// until Ctrl-C, and prints how to use it.
pub async fn dev_cluster(dir: &Path, nodes: u16, port: u16) -> Result<()> {
    let written = (1..)
        .take_while(|id| dir.join(format!("node{id}.toml")).exists())
        .count();
    let files = if written == 0 {
        cluster::init(dir, nodes, port)?
    } else if written == usize::from(nodes) {
        cluster::ClusterFiles {
            dir: dir.to_path_buf(),
            nodes: (1..=nodes)
                .map(|id| dir.join(format!("node{id}.toml")))
                .collect(),
            publisher: dir.join("publisher.toml"),
            subscriber: dir.join("subscriber.toml"),
        }
    } else {
        anyhow::bail!(
            "{} holds a cluster of {written} nodes, not {nodes}: use --cluster {written} or another --dir",
            dir.display()
        );
    };
    let mut brokers = Vec::new();
    for node in &files.nodes {
        let config = signet_broker::Config::load(node)?;
        brokers.push(signet_broker::start(config).await?);
    }
    println!(
        "signet dev cluster: {} nodes in this process",
        brokers.len()
    );
    for (node, broker) in files.nodes.iter().zip(&brokers) {
        println!(
            "  node:       {}  ({})",
            broker.local_addr(),
            node.display()
        );
    }
    println!(
        "  publisher:  {}  (lists every node)",
        files.publisher.display()
    );
    println!(
        "  subscriber: {}  (lists every node)",
        files.subscriber.display()
    );
    println!("try:");
    println!(
        "  signet cluster status --client {}",
        files.publisher.display()
    );
    println!(
        "  signet pub --client {} --topic orders.created --data '{{\"id\":1}}'",
        files.publisher.display()
    );
    crate::wait_for_signal().await?;
    for broker in brokers {
        broker.shutdown().await;
    }
    Ok(())
}
