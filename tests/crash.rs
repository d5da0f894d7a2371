//! The broker as a separate process. Data loss (THREATS T17): it is killed
//! with SIGKILL while pipelined publishes are in flight; after a restart
//! every acknowledged message is there, with its offset and payload. Leaking
//! logs (T15): with every log level on, no payload and no key material.

mod common;

use common::process::spawn_broker;
use common::*;
use signet_client::{Client, OutgoingMessage, StartAt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_hold_no_payloads_and_no_key_material() {
    let mut sandbox = sandbox(&principals());
    let (mut broker, log) = spawn_broker(&mut sandbox, "trace").await;
    let marker = "PAYLOAD-MARKER-7f3a9c";
    let alice = within(Client::connect(sandbox.client_config("alice").unwrap()))
        .await
        .unwrap();
    let bob = within(Client::connect(sandbox.client_config("bob").unwrap()))
        .await
        .unwrap();
    within(alice.publish("orders.logs", marker.as_bytes().to_vec()))
        .await
        .unwrap();
    let _ = within(bob.publish("orders.logs", marker.as_bytes().to_vec())).await;
    let mut sub = within(alice.subscribe("orders.logs", StartAt::Earliest))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await.unwrap().payload, marker.as_bytes());
    drop(sub);
    alice.close().await;
    bob.close().await;
    broker.start_kill().unwrap();
    within(broker.wait()).await.unwrap();
    let text = within(log).await.unwrap().join("\n");
    assert!(text.contains("connection accepted"), "the broker did log");
    assert!(!text.contains(marker), "a payload reached the logs");
    let hex_marker: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(
        !text.contains(&hex_marker),
        "payload bytes in hex reached the logs"
    );
    let key_pem = std::fs::read_to_string(sandbox.pki_dir().join("clients/alice.key")).unwrap();
    for line in key_pem
        .lines()
        .filter(|l| l.len() > 20 && !l.starts_with("-----"))
    {
        assert!(
            !text.contains(line),
            "TLS private key material reached the logs"
        );
    }
    assert!(
        !text.contains("PRIVATE KEY"),
        "a PEM private key reached the logs"
    );
    let signing = std::fs::read(sandbox.signing_key_path("alice").unwrap()).unwrap();
    let signing_hex: String = signing.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        !text.contains(&signing_hex[signing_hex.len() - 40..]),
        "signing key bytes reached the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_message_survives_kill_9() {
    let mut sandbox = sandbox(&principals());
    let (mut broker, _log) = spawn_broker(&mut sandbox, "info").await;

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
