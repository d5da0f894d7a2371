//! Retention (THREATS T29, T30): per-topic count, byte and age limits
//! delete the oldest messages (the first offset moves up, offsets are never
//! reused, the disk shrinks), a subscriber that had not reached them is told
//! with a gap, the stored-bytes quota follows the data, and a disk below its
//! free-space floor refuses publishes with `StorageFull` and loses nothing.

mod common;

use common::process::spawn_broker;
use common::seen::Seen;
use common::*;
use signet_client::{Client, OutgoingMessage, StartAt};
use signet_proto::ErrorCode;
use std::time::Duration;

const TOPIC: &str = "orders.created";

fn retention_policy(limits: &str) -> String {
    format!("[[topic]]\nname = \"orders.>\"\nretention = {{ {limits} }}\n")
}

/// Publishes `n` messages of `size` bytes, pipelined; returns the offsets.
async fn publish_many(client: &Client, n: usize, size: usize) -> Vec<u64> {
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        let mut payload = format!("{i:08}").into_bytes();
        payload.resize(size, b'x');
        acks.push(
            within(client.enqueue(OutgoingMessage::new(TOPIC, payload)))
                .await
                .unwrap(),
        );
    }
    let mut offsets = Vec::with_capacity(n);
    for ack in acks {
        offsets.push(within(ack).await.unwrap());
    }
    offsets
}

/// Waits until the broker reports the topic at `first` (a retention pass).
async fn await_first(sandbox: &Sandbox, first: u64) -> (u64, u64, u64) {
    within(async {
        loop {
            if let Some(state) = sandbox.broker().unwrap().topic_state(TOPIC)
                && state.0 >= first
            {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_limit_keeps_the_newest_tells_a_late_reader_and_frees_the_disk() {
    let mut sandbox = start_with(&principals(), &retention_policy("max_msgs = 100")).await;
    let alice = client(&sandbox, "alice").await;
    let auditor = client(&sandbox, "auditor").await;
    let mut live = within(auditor.subscribe(TOPIC, StartAt::Latest))
        .await
        .unwrap();
    let offsets = publish_many(&alice, 1000, 1024).await;
    assert_eq!(offsets, (0..1000).collect::<Vec<u64>>(), "offsets continue");
    // A reader that keeps up sees every offset, delivered or (if it fell
    // more than 100 behind) announced.
    Seen::until(&mut live, TOPIC, 999).await.covers(0, 999);
    // A reader from offset 0 is told 0..=899 are gone, then reads the rest.
    let mut late = within(auditor.subscribe(TOPIC, StartAt::Offset(0)))
        .await
        .unwrap();
    let seen = Seen::until(&mut late, TOPIC, 999).await;
    assert_eq!(seen.gaps, [(0, 899)]);
    assert_eq!(seen.delivered, (900..1000).collect::<Vec<u64>>());
    let mut earliest = within(auditor.subscribe(TOPIC, StartAt::Earliest))
        .await
        .unwrap();
    assert_eq!(
        next(&mut earliest).await.unwrap().offset,
        900,
        "no gap from earliest"
    );
    // The first offset moved on disk; the stored bytes went back to alice.
    let (first, next_offset, bytes) = await_first(&sandbox, 900).await;
    assert_eq!((first, next_offset), (900, 1000));
    let broker = sandbox.broker().unwrap();
    let alice_bytes = broker.stored_bytes("alice").unwrap();
    assert_eq!(alice_bytes, bytes, "alice's quota counts what is kept");
    assert!(bytes < 100 * 2048, "100 records of ~1.3 KB, not {bytes}");
    let on_disk = broker.compact_storage().unwrap();
    assert!(
        on_disk < 1000 * 1024 / 2,
        "compacted messages take {on_disk} bytes for 100 kept of 1000 published"
    );
    drop((live, late, earliest));
    alice.close().await;
    auditor.close().await;
    // Restart: the first offset and the bytes are on disk.
    sandbox.restart().await.unwrap();
    let state = sandbox.broker().unwrap().topic_state(TOPIC).unwrap();
    assert_eq!(state, (900, 1000, bytes));
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_limit_holds_the_topic_under_it() {
    let mut sandbox = start_with(&principals(), &retention_policy("max_bytes = 20000")).await;
    let alice = client(&sandbox, "alice").await;
    for _ in 0..200 {
        let mut payload = vec![b'x'; 1000];
        payload[0] = b'{';
        within(alice.publish(TOPIC, payload)).await.unwrap();
        let (_, _, bytes) = sandbox.broker().unwrap().topic_state(TOPIC).unwrap();
        // Acked means trimmed in the same write once a sixteenth over:
        // at most 20000 * 17 / 16 and one record.
        assert!(bytes <= 21250 + 1200, "topic holds {bytes} bytes");
    }
    let (first, next_offset, bytes) = sandbox.broker().unwrap().topic_state(TOPIC).unwrap();
    assert!(first > 150 && next_offset == 200 && bytes <= 21250 + 1200);
    let auditor = client(&sandbox, "auditor").await;
    let mut late = within(auditor.subscribe(TOPIC, StartAt::Offset(0)))
        .await
        .unwrap();
    let seen = Seen::until(&mut late, TOPIC, 199).await;
    seen.covers(0, 199);
    assert_eq!(seen.gaps.first().map(|g| g.0), Some(0));
    assert!(seen.delivered.len() as u64 <= 200 - first + 1);
    alice.close().await;
    auditor.close().await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_limit_removes_old_messages_even_without_new_publishes() {
    let mut sandbox = start_with(
        &principals(),
        &format!(
            "{}[limits]\nretention_check_ms_max = 20\n",
            retention_policy("max_age = \"300ms\"")
        ),
    )
    .await;
    let alice = client(&sandbox, "alice").await;
    publish_many(&alice, 10, 100).await;
    // No more publishes: a pass deletes them once they are 300 ms old.
    let (first, next_offset, bytes) = await_first(&sandbox, 10).await;
    assert_eq!((first, next_offset, bytes), (10, 10, 0));
    assert_eq!(sandbox.broker().unwrap().stored_bytes("alice"), Some(0));
    let auditor = client(&sandbox, "auditor").await;
    let mut late = within(auditor.subscribe(TOPIC, StartAt::Offset(0)))
        .await
        .unwrap();
    let offset = within(alice.publish(TOPIC, b"fresh".to_vec()))
        .await
        .unwrap();
    assert_eq!(offset, 10, "offsets are never reused");
    let seen = Seen::until(&mut late, TOPIC, 10).await;
    assert_eq!((seen.gaps, seen.delivered), (vec![(0, 9)], vec![10]));
    alice.close().await;
    auditor.close().await;
    sandbox.stop().await;
}

/// Reproduction: stored bytes only ever went up, so a publisher at its
/// quota was locked out for good even though retention kept its topic small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_on_a_topic_with_retention_is_never_locked_out_by_its_quota() {
    let specs = [
        PrincipalSpec::new("alice")
            .publish("orders.>")
            .quota("{ stored_bytes = 100000 }"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ];
    let mut sandbox = start_with(&specs, &retention_policy("max_bytes = 50000")).await;
    let alice = client(&sandbox, "alice").await;
    let payload = vec![b'p'; 10 * 1024];
    for i in 0..1000u64 {
        match within(alice.publish(TOPIC, payload.clone())).await {
            Ok(offset) => assert_eq!(offset, i),
            Err(e) => panic!("publish {i} (of 10 MB) refused: {e}"),
        }
    }
    let stored = sandbox.broker().unwrap().stored_bytes("alice").unwrap();
    assert!(
        stored <= 50000 * 17 / 16 + 11 * 1024,
        "alice is charged {stored} bytes"
    );
    alice.close().await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_floor_publishes_are_refused_and_nothing_is_written() {
    let mut sandbox = start_with(
        &principals(),
        "[limits]\nstorage_free_bytes_min = 1152921504606846976\n",
    )
    .await;
    let alice = client(&sandbox, "alice").await;
    for _ in 0..3 {
        let err = within(alice.publish(TOPIC, b"{}".to_vec()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::StorageFull), "{err}");
    }
    assert_eq!(stored_count(&sandbox, TOPIC).await, 0);
    assert_eq!(sandbox.broker().unwrap().topic_state(TOPIC), None);
    alice.close().await;
    sandbox.stop().await;
}

/// The broker process refuses publishes for lack of space, is killed with
/// SIGKILL while refusing, and restarts with room: everything acked before
/// is there, byte for byte, and publishing goes on at the next offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_refusing_for_space_loses_nothing_acked() {
    let mut sandbox = sandbox(&principals());
    let (mut broker, _log) = spawn_broker(&mut sandbox, "warn,signet_broker=info").await;
    let alice = within(Client::connect(sandbox.client_config("alice").unwrap()))
        .await
        .unwrap();
    let offsets = publish_many(&alice, 50, 64).await;
    alice.close().await;
    broker.kill().await.unwrap();

    sandbox.set_extra_policy("[limits]\nstorage_free_bytes_min = 1152921504606846976\n");
    let (mut broker, _log) = spawn_broker(&mut sandbox, "warn,signet_broker=info").await;
    let alice = within(Client::connect(sandbox.client_config("alice").unwrap()))
        .await
        .unwrap();
    let pending: Vec<_> = futures_util::future::join_all(
        (0..20).map(|_| alice.enqueue(OutgoingMessage::new(TOPIC, b"refused".to_vec()))),
    )
    .await;
    for ack in pending {
        let err = within(ack.unwrap()).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::StorageFull));
    }
    broker.kill().await.unwrap();

    sandbox.set_extra_policy("");
    let (mut broker, _log) = spawn_broker(&mut sandbox, "warn,signet_broker=info").await;
    let auditor = within(Client::connect(sandbox.client_config("auditor").unwrap()))
        .await
        .unwrap();
    let mut sub = within(auditor.subscribe(TOPIC, StartAt::Earliest))
        .await
        .unwrap();
    assert_eq!(sub.next_offset_at_open(), 50, "nothing refused was stored");
    for (i, offset) in offsets.iter().enumerate() {
        let m = next(&mut sub).await.unwrap();
        assert_eq!(m.offset, *offset);
        assert!(m.payload.starts_with(format!("{i:08}").as_bytes()));
    }
    let alice = within(Client::connect(sandbox.client_config("alice").unwrap()))
        .await
        .unwrap();
    assert_eq!(
        within(alice.publish(TOPIC, b"again".to_vec()))
            .await
            .unwrap(),
        50
    );
    assert_eq!(next(&mut sub).await.unwrap().offset, 50);
    drop(sub);
    broker.kill().await.unwrap();
}

/// A small tmpfs for the data folder, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "this test mounts a tmpfs (as root) to fill a disk for real"
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A real file system fills up: publishes are refused, subscribers still
/// read; space comes back: publishing resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_stops_when_the_disk_fills_and_resumes_when_space_returns() {
    let sandbox = sandbox(&principals());
    let _tmpfs = Tmpfs::mount(&sandbox.data_dir(), 256 * 1024 * 1024);
    let mut sandbox = launch(
        sandbox,
        "[limits]\nstorage_free_bytes_min = 67108864\nstorage_check_ms_max = 20\n",
    )
    .await;
    let alice = client(&sandbox, "alice").await;
    let auditor = client(&sandbox, "auditor").await;
    assert_eq!(
        within(alice.publish(TOPIC, b"1".to_vec())).await.unwrap(),
        0
    );
    // Something else fills the disk to below the 64 MiB floor.
    let ballast = sandbox.data_dir().join("ballast");
    let free = rustix::fs::statvfs(sandbox.data_dir()).unwrap();
    let fill = free.f_bavail * free.f_frsize - 48 * 1024 * 1024;
    std::fs::write(&ballast, vec![0u8; fill as usize]).unwrap();
    let refused = within(async {
        loop {
            match alice.publish(TOPIC, b"2".to_vec()).await {
                Err(e) if e.code() == Some(ErrorCode::StorageFull) => return e,
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert_eq!(refused.code(), Some(ErrorCode::StorageFull));
    let stored = stored_count(&sandbox, TOPIC).await;
    // Reads go on while full.
    let mut sub = within(auditor.subscribe(TOPIC, StartAt::Earliest))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await.unwrap().offset, 0);
    // Space returns: the same client publishes again, at the next offset.
    std::fs::remove_file(&ballast).unwrap();
    let offset = within(async {
        loop {
            match alice.publish(TOPIC, b"3".to_vec()).await {
                Ok(offset) => return offset,
                Err(e) if e.code() == Some(ErrorCode::StorageFull) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert_eq!(offset, stored);
    drop(sub);
    alice.close().await;
    auditor.close().await;
    sandbox.stop().await;
}

/// A pattern subscription gets the same retention view as an exact one:
/// a live reader of `orders.>` sees every offset of the trimmed topic
/// delivered or announced as a gap, `Earliest` starts at the first
/// readable offset without a gap, and a resume position below the first
/// offset is answered with a `Gap` frame naming the topic and the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_is_told_what_retention_removed() {
    use signet_proto::frame::{ClientFrame, Gap, ServerFrame, SubscribePattern, TopicOffset};
    use signet_proto::stream::{read_frame, write_frame};

    let mut sandbox = start_with(&principals(), &retention_policy("max_msgs = 100")).await;
    let alice = client(&sandbox, "alice").await;
    let auditor = client(&sandbox, "auditor").await;
    let mut live = within(auditor.subscribe("orders.>", StartAt::Latest))
        .await
        .unwrap();
    publish_many(&alice, 1000, 1024).await;
    Seen::until(&mut live, TOPIC, 999).await.covers(0, 999);
    await_first(&sandbox, 900).await;

    let mut earliest = within(auditor.subscribe("orders.>", StartAt::Earliest))
        .await
        .unwrap();
    let first = next(&mut earliest).await.unwrap();
    assert_eq!((first.topic.as_str(), first.offset), (TOPIC, 900));

    // On the wire: resuming at 0 is told 0..=899 are gone, then gets 900.
    let (mut send, mut recv) = within(auditor.connection().open_bi()).await.unwrap();
    let frame = ClientFrame::SubscribePattern(SubscribePattern {
        pattern: "orders.>".into(),
        start: signet_proto::frame::StartAt::Earliest,
        resume: vec![TopicOffset {
            topic: TOPIC.into(),
            offset: 0,
        }],
    });
    within(write_frame(&mut send, &frame)).await.unwrap();
    let read = async |recv: &mut quinn::RecvStream| {
        within(read_frame::<ServerFrame, _>(recv, 1 << 24))
            .await
            .unwrap()
            .unwrap()
    };
    assert!(matches!(
        read(&mut recv).await,
        ServerFrame::SubscribedPattern { .. }
    ));
    assert_eq!(
        read(&mut recv).await,
        ServerFrame::Gap(Gap {
            topic: TOPIC.into(),
            from: 0,
            to: 899,
            reason: "retention".into(),
        })
    );
    match read(&mut recv).await {
        ServerFrame::DeliverTopic { topic, deliveries } => {
            assert_eq!(topic, TOPIC);
            assert_eq!(deliveries[0].offset, 900);
        }
        other => panic!("expected deliveries, got {other:?}"),
    }
    drop((live, earliest));
    alice.close().await;
    auditor.close().await;
    sandbox.stop().await;
}
