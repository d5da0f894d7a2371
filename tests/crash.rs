//! Data loss (THREATS T17): the broker process is killed with SIGKILL while
//! pipelined publishes are in flight; after a restart every acknowledged
//! message is there, with its offset and payload.

mod common;

use common::*;
use signet::sandbox::Sandbox;
use signet_client::{Client, OutgoingMessage, StartAt};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const SIGNET: &str = env!("CARGO_BIN_EXE_signet");

/// The port in a log line like `broker listening local_addr=127.0.0.1:PORT`
/// (ANSI colours around the field are skipped).
fn listening_port(line: &str) -> Option<u16> {
    let at = line.find("127.0.0.1:")? + "127.0.0.1:".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_message_survives_kill_9() {
    let mut sandbox = Sandbox::new(&principals()).unwrap();
    sandbox.write_policy().unwrap();
    let mut broker = Command::new(SIGNET)
        .args([
            "broker",
            "--config",
            sandbox.policy_path().to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(broker.stderr.take().unwrap()).lines();
    let port = loop {
        let line = within(log.next_line())
            .await
            .unwrap()
            .expect("broker starts");
        if line.contains("broker listening") {
            break listening_port(&line).expect("port in the log line");
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    sandbox.set_addr(([127, 0, 0, 1], port).into());

    let alice = within(Client::connect(sandbox.client_config("alice").unwrap()))
        .await
        .unwrap();
    let mut acks = Vec::new();
    for i in 0..5000u32 {
        let m = OutgoingMessage::new("orders.crash", i.to_be_bytes().to_vec());
        acks.push(within(alice.enqueue(m)).await.unwrap());
    }
    let mut acked = Vec::new();
    for (i, ack) in acks.into_iter().enumerate() {
        if acked.len() == 1000 && broker.try_wait().unwrap().is_none() {
            broker.start_kill().unwrap();
            within(broker.wait()).await.unwrap();
            // A killed peer sends no close: end the connection here instead
            // of waiting for the idle timeout. Acks already read stay good.
            alice.connection().close(0u32.into(), b"broker killed");
        }
        if let Ok(offset) = within(ack).await {
            acked.push((offset, i as u32));
        }
    }
    assert!(acked.len() >= 1000, "acked {}", acked.len());

    sandbox.start().await.unwrap();
    let reader = client(&sandbox, "auditor").await;
    let mut sub = within(reader.subscribe("orders.crash", StartAt::Earliest))
        .await
        .unwrap();
    let stored = sub.next_offset_at_open();
    assert!(
        stored >= acked.len() as u64,
        "stored {stored} < acked {}",
        acked.len()
    );
    let mut by_offset = std::collections::HashMap::new();
    for _ in 0..stored {
        let m = next(&mut sub).await.unwrap();
        by_offset.insert(m.offset, m.payload);
    }
    for (offset, i) in acked {
        assert_eq!(
            by_offset.get(&offset).map(Vec::as_slice),
            Some(&i.to_be_bytes()[..]),
            "offset {offset}"
        );
    }
    sandbox.stop().await;
}
