//! Consumer groups under SIGKILL: three members share a queue with random
//! acks, naks and lease expiries while the broker process (`signet broker`)
//! is killed twice. A checker over the recorded history then proves: every
//! message ends acked or dead-lettered (dead letters exactly once), no
//! acked message is delivered again, delivery counts never repeat or go
//! down, and no lease starts before the previous one on that message ended
//! (plus its backoff).

mod common;

use common::process::spawn_broker;
use common::*;
use futures_util::StreamExt;
use rand::Rng;
use signet_client::{Client, ClientConfig, StartAt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const MESSAGES: u64 = 240;
const ACK_WAIT_MS: u64 = 300;
const BACKOFF_MS: u64 = 50;

#[derive(Debug, Clone)]
enum Ev {
    /// A delivery received: offset, count, deadline (broker clock).
    Delivered {
        offset: u64,
        count: u32,
        deadline: u64,
    },
    /// An ack answered Ok (on disk).
    Acked { offset: u64, count: u32 },
    /// An ack or nak whose answer never came (the broker died).
    Unknown {
        offset: u64,
        count: u32,
        sent_ms: u64,
    },
    /// A nak sent at this time (broker clock = this clock).
    Naked {
        offset: u64,
        count: u32,
        sent_ms: u64,
    },
    /// Left to expire.
    Dropped,
}

fn specs() -> Vec<PrincipalSpec> {
    vec![
        PrincipalSpec::new("producer").publish("jobs.>"),
        PrincipalSpec::new("w1").subscribe("jobs.>").consume("work"),
        PrincipalSpec::new("w2").subscribe("jobs.>").consume("work"),
        PrincipalSpec::new("w3").subscribe("jobs.>").consume("work"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ]
}

async fn member(config: ClientConfig, mut epoch: watch::Receiver<u64>, log: Arc<Mutex<Vec<Ev>>>) {
    let record = |e: Ev| log.lock().unwrap().push(e);
    loop {
        epoch.borrow_and_update();
        let Ok(Ok(client)) =
            tokio::time::timeout(Duration::from_secs(2), Client::connect(config.clone())).await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(mut consumer) = client.consume_with("work", 8).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        loop {
            let d = tokio::select! {
                d = consumer.next() => d,
                _ = epoch.changed() => None,
            };
            let Some(Ok(d)) = d else { break };
            let (offset, count) = (d.offset(), d.delivery_count);
            record(Ev::Delivered {
                offset,
                count,
                deadline: d.deadline_ms,
            });
            let roll: u32 = rand::rng().random_range(0..100);
            if roll < 70 {
                let sent_ms = now_ms();
                match tokio::time::timeout(Duration::from_secs(2), d.ack()).await {
                    Ok(Ok(())) => record(Ev::Acked { offset, count }),
                    Ok(Err(e)) if e.code().is_some() => {}
                    _ => record(Ev::Unknown {
                        offset,
                        count,
                        sent_ms,
                    }),
                }
            } else if roll < 85 {
                let sent_ms = now_ms();
                record(Ev::Naked {
                    offset,
                    count,
                    sent_ms,
                });
                match tokio::time::timeout(Duration::from_secs(2), d.nak(None)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if e.code().is_some() => {}
                    _ => record(Ev::Unknown {
                        offset,
                        count,
                        sent_ms,
                    }),
                }
            } else {
                record(Ev::Dropped);
            }
        }
        drop(consumer);
        client.connection().close(0u32.into(), b"reconnect");
    }
}

fn acked_count(log: &Mutex<Vec<Ev>>) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Ev::Acked { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_leases_and_dead_letters_hold_across_two_sigkills() {
    let mut sandbox = sandbox(&specs());
    sandbox.set_extra_policy(&format!(
        "[[group]]\nname = \"work\"\ntopics = [\"jobs.>\"]\nstart = \"earliest\"\nack_wait = \"{ACK_WAIT_MS}ms\"\nmax_deliveries = 4\nbackoff = [\"{BACKOFF_MS}ms\"]\ndead_letter = \"dlq.work\"\nmax_in_flight = 1000\n"
    ));
    let (mut broker, _log) = spawn_broker(&mut sandbox, "info").await;
    let producer = client(&sandbox, "producer").await;
    for i in 0..MESSAGES {
        within(producer.publish("jobs.q", format!("{{\"i\":{i}}}").into_bytes()))
            .await
            .unwrap();
    }
    producer.close().await;

    let log = Arc::new(Mutex::new(Vec::new()));
    let (epoch_tx, epoch) = watch::channel(0u64);
    let mut members = Vec::new();
    for name in ["w1", "w2", "w3"] {
        members.push(tokio::spawn(member(
            sandbox.client_config(name).unwrap(),
            epoch.clone(),
            log.clone(),
        )));
    }
    for (kill, at) in [(1u64, MESSAGES as usize / 4), (2, MESSAGES as usize / 2)] {
        within(async {
            while acked_count(&log) < at {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        eprintln!("kill {kill} after {} acks", acked_count(&log));
        broker.start_kill().unwrap();
        within(broker.wait()).await.unwrap();
        epoch_tx.send_replace(kill);
        (broker, _) = spawn_broker(&mut sandbox, "info").await;
    }
    // Wait until every message is acked or dead, as the broker reports it.
    let watcher = client(&sandbox, "w1").await;
    within(async {
        loop {
            if let Ok(info) = watcher.group_info("work").await
                && let Some(t) = info.topics.first()
                && t.acked + t.dead == MESSAGES
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    for m in &members {
        m.abort();
    }
    let info = within(watcher.group_info("work")).await.unwrap();
    let t = &info.topics[0];
    assert_eq!((t.acked_floor, t.in_flight, t.pending), (MESSAGES, 0, 0));

    // Dead letters, read back verified.
    let broker_key = sandbox.broker_public_key().unwrap();
    let text = format!(
        "{}{:?} = {:?}\n",
        sandbox.client_file_text("auditor").unwrap(),
        broker_key.id().to_hex(),
        broker_key.to_string()
    );
    let auditor = within(Client::connect(
        ClientConfig::parse(&text, sandbox.path()).unwrap(),
    ))
    .await
    .unwrap();
    let mut dlq = within(auditor.subscribe("dlq.work", StartAt::Earliest))
        .await
        .unwrap();
    let dead_total = dlq.next_offset_at_open();
    let mut dead: HashMap<u64, u32> = HashMap::new();
    for _ in 0..dead_total {
        let m = next(&mut dlq).await.unwrap();
        let letter = auditor.open_dead_letter(&m).unwrap().letter;
        *dead.entry(letter.source_offset).or_default() += 1;
    }
    assert_eq!(dead_total, t.dead, "one dead letter per dead message");
    assert!(
        dead.values().all(|n| *n == 1),
        "a message dead-lettered twice: {dead:?}"
    );

    check(&log.lock().unwrap(), &dead);
    broker.start_kill().unwrap();
}

/// The checker over the recorded history.
fn check(log: &[Ev], dead: &HashMap<u64, u32>) {
    let mut leases: BTreeMap<u64, BTreeMap<u32, u64>> = BTreeMap::new();
    let mut acked: HashMap<u64, u32> = HashMap::new();
    let mut unknown: HashSet<u64> = HashSet::new();
    let mut naked: HashMap<(u64, u32), u64> = HashMap::new();
    for e in log {
        match e {
            Ev::Delivered {
                offset,
                count,
                deadline,
            } => {
                let previous = leases.entry(*offset).or_default().insert(*count, *deadline);
                assert!(
                    previous.is_none(),
                    "offset {offset}: delivery count {count} seen twice (counts must never repeat or go down)"
                );
            }
            Ev::Acked { offset, count } => {
                assert!(
                    acked.insert(*offset, *count).is_none(),
                    "offset {offset} acked twice"
                );
            }
            Ev::Unknown {
                offset,
                count,
                sent_ms,
            } => {
                unknown.insert(*offset);
                naked.entry((*offset, *count)).or_insert(*sent_ms);
            }
            Ev::Naked {
                offset,
                count,
                sent_ms,
            } => {
                naked.insert((*offset, *count), *sent_ms);
            }
            Ev::Dropped => {}
        }
    }
    for offset in 0..MESSAGES {
        let is_acked = acked.contains_key(&offset);
        let is_dead = dead.contains_key(&offset);
        assert!(
            !(is_acked && is_dead),
            "offset {offset} both acked and dead"
        );
        assert!(
            is_acked || is_dead || unknown.contains(&offset),
            "offset {offset} neither acked nor dead-lettered"
        );
    }
    for (offset, counts) in &leases {
        if let Some(acked_count) = acked.get(offset) {
            let last = counts.keys().max().copied().unwrap_or(0);
            assert_eq!(
                last, *acked_count,
                "offset {offset}: delivered again (count {last}) after the ack of delivery {acked_count}"
            );
        }
        // Consecutive leases: the next one starts (deadline - ack_wait) no
        // sooner than the previous one ended (its deadline, or its nak) plus
        // the backoff.
        for (count, deadline) in counts {
            let Some(next_deadline) = counts.get(&(count + 1)) else {
                continue;
            };
            let ended = naked
                .get(&(*offset, *count))
                .map_or(*deadline, |sent| (*sent).min(*deadline));
            let started = next_deadline - ACK_WAIT_MS;
            assert!(
                started >= ended + BACKOFF_MS,
                "offset {offset}: lease {} started at {started}, before lease {count} ended at {ended} + backoff",
                count + 1
            );
        }
    }
}
