//! Work-queue topics (`retention = { work_queue = "<group>" }`): a message
//! is deleted in the same synced write as its group's ack or dead letter,
//! survives while it is leased, its bytes go back to its publisher, the
//! topic's first offset moves up to the group's acked floor, a plain
//! subscriber is told with a `Gap`; a SIGKILL between acks loses nothing
//! acked and deletes nothing early. Also: a group whose pending work
//! count/bytes/age retention removed counts it in `group info`
//! (`removed`), and the policy checks a work queue's group.

mod common;

use common::process::spawn_broker;
use common::seen::Seen;
use common::*;
use futures_util::StreamExt;
use signet_client::consumer::{Consumer, Delivery};
use signet_client::{Error, StartAt, Subscription};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOPIC: &str = "jobs.a";

fn group(name: &str, ack_wait: &str) -> String {
    format!(
        "[[group]]\nname = \"{name}\"\ntopics = [\"jobs.>\"]\nstart = \"earliest\"\nack_wait = \"{ack_wait}\"\nmax_deliveries = 5\nbackoff = []\ndead_letter = \"dlq.{name}\"\nmax_in_flight = 1000\n"
    )
}

fn work_queue(ack_wait: &str) -> String {
    format!(
        "{}{}[[topic]]\nname = \"jobs.>\"\nretention = {{ work_queue = \"billing\" }}\n",
        group("billing", ack_wait),
        group("work", "30s")
    )
}

fn specs() -> Vec<PrincipalSpec> {
    vec![
        PrincipalSpec::new("producer").publish("jobs.>"),
        PrincipalSpec::new("w1")
            .subscribe("jobs.>")
            .consume("billing"),
        PrincipalSpec::new("w2").subscribe("jobs.>").consume("work"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ]
}

async fn publish_n(sandbox: &Sandbox, n: u64) {
    let producer = client(sandbox, "producer").await;
    for i in 0..n {
        let offset = within(producer.publish(TOPIC, format!("{{\"i\":{i}}}").into_bytes()))
            .await
            .unwrap();
        assert!(offset < 1000);
    }
    producer.close().await;
}

async fn next_delivery(c: &mut Consumer) -> Delivery {
    within(c.next())
        .await
        .expect("membership ended")
        .expect("a verified delivery")
}

/// What a plain subscriber from offset 0 reads up to offset `last`: the
/// offsets delivered, and the gaps (each must say `retention`).
async fn stored(sandbox: &Sandbox, last: u64) -> (BTreeSet<u64>, Vec<(u64, u64)>) {
    let auditor = client(sandbox, "auditor").await;
    let mut sub: Subscription = within(auditor.subscribe(TOPIC, StartAt::Offset(0)))
        .await
        .unwrap();
    let seen = Seen::until(&mut sub, TOPIC, last).await;
    drop(sub);
    auditor.close().await;
    (seen.delivered.into_iter().collect(), seen.gaps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queue_messages_disappear_once_acked_or_dead_lettered_and_survive_while_leased() {
    let mut sandbox = start_with(&specs(), &work_queue("30s")).await;
    publish_n(&sandbox, 6).await;
    let broker = sandbox.broker().unwrap();
    let (_, _, all_bytes) = broker.topic_state(TOPIC).unwrap();
    assert_eq!(broker.stored_bytes("producer"), Some(all_bytes));

    let w1 = client(&sandbox, "w1").await;
    let mut c = within(w1.consume_with("billing", 6)).await.unwrap();
    let mut d = Vec::new();
    for _ in 0..6 {
        d.push(next_delivery(&mut c).await);
    }
    d.sort_by_key(Delivery::offset);
    assert_eq!(
        d.iter().map(Delivery::offset).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );

    // Leased, nothing is deleted.
    assert_eq!(broker.topic_state(TOPIC).unwrap(), (0, 6, all_bytes));
    assert_eq!(stored(&sandbox, 5).await, ((0..6).collect(), vec![]));

    // Ack 1 (above the leased 0): 1 is gone at once, in the ack's write;
    // the first offset stays at 0 (still leased); its bytes went back.
    within(d[1].ack()).await.unwrap();
    let (first, next_offset, bytes) = broker.topic_state(TOPIC).unwrap();
    assert_eq!((first, next_offset), (0, 6));
    assert!(bytes < all_bytes);
    assert_eq!(broker.stored_bytes("producer"), Some(bytes));
    let (delivered, gaps) = stored(&sandbox, 5).await;
    assert_eq!(delivered, [0, 2, 3, 4, 5].into());
    assert_eq!(gaps, [(1, 1)], "the hole is told as a gap");

    // Dead-letter 0: it is gone and the first offset moves past 0 and 1.
    within(d[0].term("bad input")).await.unwrap();
    let (first, _, bytes) = broker.topic_state(TOPIC).unwrap();
    assert_eq!(first, 2);
    assert_eq!(broker.stored_bytes("producer"), Some(bytes));
    let (delivered, gaps) = stored(&sandbox, 5).await;
    assert_eq!(delivered, [2, 3, 4, 5].into());
    assert_eq!(gaps, [(0, 1)]);
    // The dead letter holds the deleted record (read before the delete).
    assert_eq!(stored_count(&sandbox, "dlq.billing").await, 1);

    for x in &d[2..] {
        within(x.ack()).await.unwrap();
    }
    assert_eq!(broker.topic_state(TOPIC).unwrap(), (6, 6, 0));
    assert_eq!(broker.stored_bytes("producer"), Some(0));
    let info = within(w1.group_info("billing")).await.unwrap();
    let t = &info.topics[0];
    assert_eq!(
        (t.acked, t.dead, t.removed, t.pending, t.acked_floor),
        (5, 1, 0, 0, 6)
    );
    drop(c);
    w1.close().await;

    // On disk: after a restart the topic is still empty from 6 on.
    sandbox.restart().await.unwrap();
    assert_eq!(
        sandbox.broker().unwrap().topic_state(TOPIC).unwrap(),
        (6, 6, 0)
    );
    let auditor = client(&sandbox, "auditor").await;
    let sub = within(auditor.subscribe(TOPIC, StartAt::Earliest))
        .await
        .unwrap();
    assert_eq!(sub.next_offset_at_open(), 6);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_info_counts_pending_work_that_retention_removed() {
    let policy = format!(
        "{}{}[[topic]]\nname = \"jobs.>\"\nretention = {{ max_msgs = 16 }}\n",
        group("work", "30s"),
        group("billing", "30s")
    );
    let mut sandbox = start_with(&specs(), &policy).await;
    publish_n(&sandbox, 2).await;
    let w2 = client(&sandbox, "w2").await;
    // One delivery at a time: 0 acked, 1 held (leased) while the count
    // limit removes 2..=28.
    let mut c = within(w2.consume_with("work", 1)).await.unwrap();
    let d0 = next_delivery(&mut c).await;
    assert_eq!(d0.offset(), 0);
    within(d0.ack()).await.unwrap();
    let d1 = next_delivery(&mut c).await;
    assert_eq!(d1.offset(), 1);
    publish_n(&sandbox, 43).await;
    assert_eq!(sandbox.broker().unwrap().topic_state(TOPIC).unwrap().0, 29);
    let info = within(w2.group_info("work")).await.unwrap();
    let t = &info.topics[0];
    assert_eq!(
        (t.removed, t.pending, t.in_flight, t.acked),
        (27, 16, 1, 1),
        "2..=28 were removed before the group got to them"
    );
    // `signet group info` prints it too.
    let file = sandbox.write_client_file("w2").unwrap();
    let run = common::process::signet(&[
        "group",
        "info",
        "--client",
        file.to_str().unwrap(),
        "--group",
        "work",
    ])
    .await;
    assert!(run.ok(), "{}", run.stderr);
    let info: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let t = &info["topics"][0];
    assert_eq!(
        (t["removed"].as_u64(), t["pending"].as_u64()),
        (Some(27), Some(16))
    );
    // The held lease is still the member's to settle; the group goes on
    // at the first offset retention left.
    within(d1.ack()).await.unwrap();
    let d = next_delivery(&mut c).await;
    assert_eq!((d.offset(), d.delivery_count), (29, 1));
    within(d.ack()).await.unwrap();
    let info = within(w2.group_info("work")).await.unwrap();
    let t = &info.topics[0];
    assert_eq!((t.removed, t.acked, t.acked_floor), (27, 3, 30));
    drop(c);
    w2.close().await;
    // Stopped before the process exits: RocksDB's threads must not outlive
    // the test (a compaction running at exit aborted with "pthread lock").
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_queue_needs_one_existing_group_that_consumes_its_topics() {
    let topic = |name: &str, group: &str| {
        format!("[[topic]]\nname = \"{name}\"\nretention = {{ work_queue = \"{group}\" }}\n")
    };
    let cases = [
        (topic("jobs.>", "nobody"), "unknown group \"nobody\""),
        (
            format!(
                "{}{}",
                group("billing", "30s"),
                topic("orders.>", "billing")
            ),
            "does not consume every topic",
        ),
        (
            format!("{}{}", group("billing", "30s"), topic(">", "billing")),
            "does not consume every topic",
        ),
        (
            format!(
                "{}{}{}{}",
                group("billing", "30s"),
                group("work", "30s"),
                topic("jobs.a", "billing"),
                topic("jobs.*", "work")
            ),
            "two groups",
        ),
        (
            format!(
                "{}[[topic]]\nname = \"jobs.>\"\nretention = {{ work_queue = \"billing\", max_msgs = 5 }}\n",
                group("billing", "30s")
            ),
            "cannot be combined",
        ),
    ];
    for (extra, why) in cases {
        let mut sandbox = sandbox(&principals());
        sandbox.set_extra_policy(&extra);
        let err = sandbox.start().await.expect_err("policy refused");
        let text = format!("{err:#}");
        assert!(text.contains(why), "{why}: {text}");
        assert!(sandbox.broker().is_none(), "nothing runs");
    }
    // One group owning several patterns it consumes is fine.
    let ok = format!(
        "{}[[topic]]\nname = \"jobs.a\"\nretention = {{ work_queue = \"billing\" }}\n[[topic]]\nname = \"jobs.b.*\"\nretention = {{ work_queue = \"billing\" }}\n",
        group("billing", "30s")
    );
    let mut sandbox = start_with(&principals(), &ok).await;
    sandbox.stop().await;
}

/// Acks (even offsets) race a SIGKILL of the broker process. After the
/// restart: every message whose ack was answered is gone and never
/// delivered again; every message the group had not settled is still
/// stored and delivered again; what is stored is exactly what the group
/// still had to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_between_acks_loses_nothing_acked_and_deletes_nothing_early() {
    const N: u64 = 60;
    let mut sandbox = sandbox(&specs());
    sandbox.set_extra_policy(&work_queue("1s"));
    let (mut broker, _log) = spawn_broker(&mut sandbox, "info").await;
    publish_n(&sandbox, N).await;

    let w1 = client(&sandbox, "w1").await;
    let mut c = within(w1.consume_with("billing", N as u32)).await.unwrap();
    let mut all = Vec::new();
    for _ in 0..N {
        all.push(next_delivery(&mut c).await);
    }
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let acker = {
        let acked = acked.clone();
        let evens: Vec<Delivery> = all.into_iter().filter(|d| d.offset() % 2 == 0).collect();
        tokio::spawn(async move {
            for d in evens {
                match tokio::time::timeout(Duration::from_secs(2), d.ack()).await {
                    Ok(Ok(())) => {
                        acked.lock().unwrap().insert(d.offset());
                    }
                    _ => return,
                }
            }
        })
    };
    within(async {
        while acked.lock().unwrap().len() < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    broker.start_kill().unwrap();
    within(broker.wait()).await.unwrap();
    let _ = within(acker).await;
    drop(c);
    let acked: BTreeSet<u64> = acked.lock().unwrap().clone();
    assert!(acked.len() >= 10, "{}", acked.len());

    let (mut broker, _log) = spawn_broker(&mut sandbox, "info").await;
    let (still, _) = stored(&sandbox, N - 1).await;
    assert!(still.is_disjoint(&acked), "an acked message survived");
    for odd in (1..N).step_by(2) {
        assert!(still.contains(&odd), "unacked {odd} was deleted");
    }
    // The group delivers again exactly what is stored (leases from before
    // the crash expire after ack_wait).
    let w1 = client(&sandbox, "w1").await;
    let mut c = within(w1.consume_with("billing", N as u32)).await.unwrap();
    let mut again = BTreeSet::new();
    while again.len() < still.len() {
        let d = next_delivery(&mut c).await;
        assert!(
            !acked.contains(&d.offset()),
            "acked {} came back",
            d.offset()
        );
        assert!(again.insert(d.offset()), "{} twice", d.offset());
        within(d.ack()).await.unwrap();
    }
    assert_eq!(again, still);
    let info = within(w1.group_info("billing")).await.unwrap();
    let t = &info.topics[0];
    assert_eq!((t.acked, t.acked_floor, t.in_flight), (N, N, 0));
    let auditor = client(&sandbox, "auditor").await;
    let sub = within(auditor.subscribe(TOPIC, StartAt::Earliest))
        .await
        .unwrap();
    assert_eq!(sub.next_offset_at_open(), N);
    drop(sub);
    let (delivered, gaps) = {
        let mut s = within(auditor.subscribe(TOPIC, StartAt::Offset(0)))
            .await
            .unwrap();
        match next(&mut s).await {
            Err(Error::Gap { from, to, .. }) => (BTreeSet::<u64>::new(), vec![(from, to)]),
            other => panic!("expected one gap, got {other:?}"),
        }
    };
    assert!(delivered.is_empty());
    assert_eq!(gaps, [(0, N - 1)], "everything is gone once settled");
    drop(c);
    broker.start_kill().unwrap();
    within(broker.wait()).await.unwrap();
}

/// A settlement with a forged token (on a leased message, or on one never
/// leased) is refused with `LeaseInvalid` and deletes nothing: only a
/// settlement the group accepted deletes from a work queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_ack_on_a_work_queue_is_refused_and_deletes_nothing() {
    use signet_client::ErrorCode;
    use signet_proto::frame::{ClientFrame, Outcome, ServerFrame, Settle, SettleAction};
    use signet_proto::stream::{read_frame, write_frame};

    let mut sandbox = start_with(&specs(), &work_queue("30s")).await;
    publish_n(&sandbox, 2).await;
    let broker = sandbox.broker().unwrap();
    let before = broker.topic_state(TOPIC).unwrap();
    let w1 = client(&sandbox, "w1").await;
    let (mut send, mut recv) = within(signet_client::consumer::join(w1.connection(), "billing", 1))
        .await
        .unwrap();
    let frame = within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX))
        .await
        .unwrap()
        .unwrap();
    let ServerFrame::GroupDeliver(ds) = frame else {
        panic!("expected a delivery, got {frame:?}");
    };
    assert_eq!(ds[0].offset, 0);
    for (offset, token) in [(0u64, vec![0x5a; 16]), (1, ds[0].token.clone())] {
        let settle = Settle {
            topic: TOPIC.into(),
            offset,
            token,
            action: SettleAction::Ack,
        };
        within(write_frame(&mut send, &ClientFrame::Settle(vec![settle])))
            .await
            .unwrap();
        let answer = within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX))
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(&answer, ServerFrame::Settled(o) if matches!(&o[0], Outcome::Nack(r) if r.code == ErrorCode::LeaseInvalid)),
            "{answer:?}"
        );
    }
    assert_eq!(
        broker.topic_state(TOPIC).unwrap(),
        before,
        "nothing deleted"
    );
    assert_eq!(broker.stored_bytes("producer"), Some(before.2));
    assert_eq!(stored(&sandbox, 1).await, ([0, 1].into(), vec![]));
    let info = within(w1.group_info("billing")).await.unwrap();
    assert_eq!((info.topics[0].acked, info.topics[0].in_flight), (0, 1));
    sandbox.stop().await;
}
