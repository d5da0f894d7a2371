//! Quotas that count what is really stored and held (THREATS T12, T13):
//! headers and recipients cost stored bytes, new topics cost a per-principal
//! rate, subscriptions to names never published leave nothing behind, and a
//! publisher over its rate is slowed, never starved.

mod common;

use common::codes::nack_codes;
use common::*;
use futures_util::StreamExt;
use signet_client::StartAt;
use signet_proto::codec::{self, LENGTH_PREFIX_BYTES};
use signet_proto::frame::{ClientFrame, Outcome, ServerFrame, Subscribe};
use signet_proto::stream::write_frame;
use signet_proto::{ErrorCode, Header};
use tokio::process::Command;

const SIGNET: &str = env!("CARGO_BIN_EXE_signet");

/// Reads one server frame from a raw stream (`None` at its end).
async fn raw_frame(recv: &mut quinn::RecvStream) -> Option<ServerFrame> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    within(recv.read_exact(&mut prefix)).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
    within(recv.read_exact(&mut body))
        .await
        .expect("frame body");
    Some(codec::decode(&body).expect("a server frame"))
}

/// The bytes of the first `count` stored records of `topic`, read raw as
/// the auditor (exactly what the broker stored).
async fn stored_record_bytes(sandbox: &Sandbox, topic: &str, count: usize) -> usize {
    let auditor = client(sandbox, "auditor").await;
    let (mut send, mut recv) = within(auditor.connection().open_bi()).await.unwrap();
    let frame = ClientFrame::Subscribe(Subscribe {
        topic: topic.into(),
        start: StartAt::Earliest,
    });
    within(write_frame(&mut send, &frame)).await.unwrap();
    let mut bytes = 0;
    let mut seen = 0;
    while seen < count {
        match raw_frame(&mut recv).await {
            Some(ServerFrame::Subscribed { .. }) => {}
            Some(ServerFrame::Deliver(chunk)) => {
                seen += chunk.len();
                bytes += chunk.iter().map(|d| d.record.len()).sum::<usize>();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    bytes
}

/// Per envelope of a raw publish's answer: the code and retry hint of a nack.
fn refusals(frame: ServerFrame) -> Vec<Option<(ErrorCode, Option<u64>)>> {
    match frame {
        ServerFrame::Results(r) => r
            .outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Ack(_) => None,
                Outcome::Nack(r) => Some((r.code, r.retry_after_ms)),
            })
            .collect(),
        other => panic!("expected results, got {other:?}"),
    }
}

/// Reproduction: an empty payload with large headers cost no quota, so one
/// principal could fill the disk with headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_count_against_the_stored_bytes_quota() {
    const QUOTA: usize = 50_000;
    let specs = [
        PrincipalSpec::new("heavy")
            .publish("heavy.>")
            .quota(&format!("{{ stored_bytes = {QUOTA} }}")),
        PrincipalSpec::new("auditor").subscribe(">"),
    ];
    let mut sandbox = start_with(&specs, "").await;
    let heavy = client(&sandbox, "heavy").await;
    let key = signing_key(&sandbox, "heavy");
    let seq = fresh_seq();
    let mut codes = Vec::new();
    for i in 0..10u64 {
        let mut e = envelope(key.id(), "heavy.h", seq + i, b"");
        e.headers = (0..4)
            .map(|h| Header {
                name: format!("h{h}"),
                value: vec![b'x'; 4000],
            })
            .collect();
        codes.extend(nack_codes(
            raw_publish(&heavy, signed(&key, i, vec![e])).await,
        ));
    }
    let accepted = codes.iter().take_while(|c| c.is_none()).count();
    assert!(
        (1..10).contains(&accepted),
        "{accepted} of 10 header-only envelopes of ~16 KB accepted under a {QUOTA}-byte quota: {codes:?}"
    );
    assert!(
        codes[accepted..]
            .iter()
            .all(|c| *c == Some(ErrorCode::QuotaExceeded)),
        "{codes:?}"
    );
    assert_eq!(stored_count(&sandbox, "heavy.h").await, accepted as u64);
    let stored = stored_record_bytes(&sandbox, "heavy.h", accepted).await;
    assert!(
        stored <= QUOTA,
        "{stored} record bytes stored under a {QUOTA}-byte quota"
    );
    sandbox.stop().await;
}

/// Reproduction: every new topic name added permanent state, and with a
/// wildcard grant one principal could create tens of thousands a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_publisher_creates_only_its_burst_of_new_topics() {
    let specs = [
        PrincipalSpec::new("wild")
            .publish(">")
            .quota("{ topics_per_sec = 5 }"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ];
    let mut sandbox = start_with(&specs, "").await;
    let wild = client(&sandbox, "wild").await;
    let key = signing_key(&sandbox, "wild");
    let seq = fresh_seq();
    let envelopes = (0..20u64)
        .map(|i| envelope(key.id(), &format!("wild.t{i}"), seq + i, b"{}"))
        .collect();
    let answer = refusals(raw_publish(&wild, signed(&key, 1, envelopes)).await);
    assert!(answer[..5].iter().all(Option::is_none), "{answer:?}");
    for refusal in &answer[5..] {
        let Some((code, retry_after_ms)) = refusal else {
            panic!("a sixth new topic in the same second was created: {answer:?}");
        };
        assert_eq!(*code, ErrorCode::QuotaExceeded);
        assert!(retry_after_ms.is_some_and(|ms| ms >= 1), "{answer:?}");
    }
    for i in 0..20 {
        let expected = u64::from(i < 5);
        assert_eq!(
            stored_count(&sandbox, &format!("wild.t{i}")).await,
            expected,
            "wild.t{i}"
        );
    }
    // Topics that exist cost no topic token: publishing to them goes on.
    let again = signed(
        &key,
        2,
        vec![envelope(key.id(), "wild.t0", seq + 100, b"{}")],
    );
    assert_eq!(nack_codes(raw_publish(&wild, again).await), vec![None]);
    sandbox.stop().await;
}

/// Reproduction: every subscription to a name never published left a
/// permanent entry in the broker's topic registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_to_names_never_published_leave_nothing_behind() {
    let specs = [
        PrincipalSpec::new("alice").publish("orders.>"),
        PrincipalSpec::new("auditor")
            .subscribe(">")
            .quota("{ max_subscriptions = 100000 }"),
    ];
    let mut sandbox = start_with(&specs, "").await;
    let alice = client(&sandbox, "alice").await;
    within(alice.publish("orders.real", b"1".to_vec()))
        .await
        .unwrap();
    let heads = || sandbox.broker().expect("running").topic_heads();
    let before = heads();
    let auditor = client(&sandbox, "auditor").await;
    let opened = futures_util::stream::iter(0..10_000u32)
        .map(|i| {
            let auditor = &auditor;
            async move {
                let sub = auditor
                    .subscribe(&format!("ghost.n{i}"), StartAt::Latest)
                    .await
                    .expect("subscribed");
                drop(sub);
            }
        })
        .buffer_unordered(32)
        .count();
    assert_eq!(within(opened).await, 10_000);
    // The broker ends each subscription when it sees the stream closed.
    let settled = async {
        loop {
            if heads() == before {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let left = tokio::time::timeout(WAIT, settled).await;
    assert!(
        left.is_ok(),
        "the registry holds {} topic heads after 10,000 closed subscriptions to unpublished names (was {before})",
        heads()
    );
    // A topic with messages keeps its head.
    assert_eq!(stored_count(&sandbox, "orders.real").await, 1);
    sandbox.stop().await;
}

/// Reproduction: with `msgs_per_sec = 5`, 0 of 300 `signet pub --lines`
/// publishes were accepted: every automatic batch exceeded the burst and
/// was refused whole, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_publisher_is_slowed_not_starved() {
    const LINES: usize = 20;
    let specs = [
        PrincipalSpec::new("slow")
            .publish("slow.>")
            .quota("{ msgs_per_sec = 5 }"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ];
    let mut sandbox = start_with(&specs, "").await;
    let file = sandbox.path().join("slow-client.toml");
    let text = format!(
        "quota_retries = 10\n{}",
        sandbox.client_file_text("slow").unwrap()
    );
    std::fs::write(&file, text).unwrap();
    let lines: Vec<String> = (0..LINES).map(|i| format!("line-{i:02}")).collect();
    let input = sandbox.path().join("lines.txt");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = within(
        Command::new(SIGNET)
            .args(["pub", "--client", file.to_str().unwrap()])
            .args(["--topic", "slow.lines", "--lines", "--file"])
            .arg(&input)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let refused = stdout.lines().filter(|l| l.contains("error")).count();
    assert!(
        out.status.success(),
        "{refused} of {LINES} lines refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offsets: Vec<u64> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, (0..LINES as u64).collect::<Vec<_>>());
    let auditor = client(&sandbox, "auditor").await;
    let mut sub = within(auditor.subscribe("slow.lines", StartAt::Earliest))
        .await
        .unwrap();
    for line in &lines {
        assert_eq!(next(&mut sub).await.unwrap().payload, line.as_bytes());
    }
    sandbox.stop().await;
}
