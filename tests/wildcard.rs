//! Pattern subscriptions (`sub --topic 'orders.>'`): every matching topic
//! the principal may read, including topics created after the
//! subscription opened, in offset order per topic; the subscribe grant
//! (allow, deny, roles) applied per topic, also after a reload; the number
//! of topics one subscription follows bounded.

mod common;

use common::codes::code;
use common::*;
use futures_util::StreamExt;
use signet_client::{Client, ErrorCode, Message, StartAt, Subscription};
use signet_proto::frame::{ClientFrame, ServerFrame, SubscribePattern, TopicOffset};
use signet_proto::stream::{read_frame, write_frame};
use std::collections::BTreeMap;

/// A writer for `orders.>` and `billing.>`; readers with several grants.
fn specs() -> Vec<PrincipalSpec> {
    vec![
        PrincipalSpec::new("writer")
            .publish("orders.>")
            .publish("billing.>"),
        // Everything under orders but its secret part.
        PrincipalSpec::new("reader")
            .subscribe("orders.>")
            .deny_subscribe("orders.secret.>"),
        // The same, through a role.
        PrincipalSpec::new("roled").role("order-reader"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ]
}

const ROLES: &str = r#"
[[role]]
name = "order-reader"
subscribe = ["orders.>"]
deny_subscribe = ["orders.secret.>"]
"#;

async fn publish(writer: &Client, topic: &str, payload: &str) -> u64 {
    within(writer.publish(topic, payload.as_bytes().to_vec()))
        .await
        .expect("published")
}

/// Reads messages until one carries `marker` as its payload; returns them all.
async fn until(sub: &mut Subscription, marker: &str) -> Vec<Message> {
    let mut seen = Vec::new();
    loop {
        let m = next(sub).await.expect("a verified message");
        let done = m.payload == marker.as_bytes();
        seen.push(m);
        if done {
            return seen;
        }
    }
}

/// Offsets and payloads per topic, in the order delivered.
fn per_topic(messages: &[Message]) -> BTreeMap<String, Vec<(u64, String)>> {
    let mut topics: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for m in messages {
        topics
            .entry(m.topic.clone())
            .or_default()
            .push((m.offset, String::from_utf8(m.payload.clone()).unwrap()));
    }
    topics
}

/// A raw `SubscribePattern` on `client`'s connection; the first answer.
async fn raw_pattern(
    client: &Client,
    pattern: &str,
    start: StartAt,
    resume: Vec<TopicOffset>,
) -> (quinn::SendStream, quinn::RecvStream, ServerFrame) {
    let (mut send, mut recv) = within(client.connection().open_bi()).await.unwrap();
    let frame = ClientFrame::SubscribePattern(SubscribePattern {
        pattern: pattern.into(),
        start,
        resume,
    });
    within(write_frame(&mut send, &frame)).await.unwrap();
    let answer = within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX))
        .await
        .unwrap()
        .expect("an answer");
    (send, recv, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_delivers_topics_created_before_and_after_it_opened_in_order_per_topic() {
    let mut sandbox = start_with(&specs(), ROLES).await;
    let writer = client(&sandbox, "writer").await;
    for i in 0..3 {
        publish(&writer, "orders.eu", &format!("eu-{i}")).await;
    }
    publish(&writer, "orders.us", "us-0").await;
    publish(&writer, "billing.eu", "not-matched").await;

    let reader = client(&sandbox, "reader").await;
    let mut sub = within(reader.subscribe("orders.>", StartAt::Earliest))
        .await
        .unwrap();
    // After the open: more on an old topic, and a topic created now.
    publish(&writer, "orders.us", "us-1").await;
    for i in 0..3 {
        publish(&writer, "orders.asia.new", &format!("asia-{i}")).await;
    }
    publish(&writer, "orders.eu", "eu-3").await;
    publish(&writer, "orders.us", "END").await;

    // Every message, then the marker; per-topic order has no gaps.
    let mut seen = until(&mut sub, "END").await;
    while seen.len() < 10 {
        seen.push(next(&mut sub).await.unwrap());
    }
    let topics = per_topic(&seen);
    let expect = |items: &[&str]| -> Vec<(u64, String)> {
        items
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64, p.to_string()))
            .collect()
    };
    assert_eq!(
        topics["orders.eu"],
        expect(&["eu-0", "eu-1", "eu-2", "eu-3"])
    );
    assert_eq!(topics["orders.us"], expect(&["us-0", "us-1", "END"]));
    assert_eq!(
        topics["orders.asia.new"],
        expect(&["asia-0", "asia-1", "asia-2"])
    );
    assert_eq!(topics.len(), 3, "billing.eu does not match: {topics:?}");

    // From the latest: only what comes after the open, old topics and new.
    let mut latest = within(reader.subscribe("orders.*", StartAt::Latest))
        .await
        .unwrap();
    publish(&writer, "orders.eu", "eu-4").await;
    publish(&writer, "orders.fresh", "fresh-0").await;
    publish(&writer, "orders.asia.new", "three-tokens").await;
    publish(&writer, "orders.us", "LATEST-END").await;
    let mut seen = until(&mut latest, "LATEST-END").await;
    while seen.len() < 3 {
        seen.push(next(&mut latest).await.unwrap());
    }
    let topics = per_topic(&seen);
    assert_eq!(topics["orders.eu"], vec![(4, "eu-4".to_string())]);
    assert_eq!(topics["orders.fresh"], vec![(0, "fresh-0".to_string())]);
    assert_eq!(topics["orders.us"], vec![(3, "LATEST-END".to_string())]);
    assert!(
        !topics.contains_key("orders.asia.new"),
        "`*` matches one token only"
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_never_delivers_or_names_a_topic_its_grant_denies() {
    let mut sandbox = start_with(&specs(), ROLES).await;
    let writer = client(&sandbox, "writer").await;
    publish(&writer, "orders.secret.pay", "SECRET-before").await;
    publish(&writer, "billing.eu", "BILLING-before").await;
    publish(&writer, "orders.open", "open-0").await;

    for name in ["reader", "roled"] {
        let reader = client(&sandbox, name).await;
        // `>` covers everything; only the granted part is delivered.
        let mut all = within(reader.subscribe(">", StartAt::Earliest))
            .await
            .unwrap();
        // The open answer names only readable topics.
        let (_s, _r, answer) = raw_pattern(&reader, ">", StartAt::Earliest, vec![]).await;
        let ServerFrame::SubscribedPattern { topics } = answer else {
            panic!("expected SubscribedPattern, got {answer:?}");
        };
        let names: Vec<&str> = topics.iter().map(|t| t.topic.as_str()).collect();
        assert_eq!(names, ["orders.open"], "{name}: names leaked");
        let (_s, _r, answer) =
            raw_pattern(&reader, "orders.secret.>", StartAt::Earliest, vec![]).await;
        assert_eq!(
            answer,
            ServerFrame::SubscribedPattern { topics: vec![] },
            "{name}: the denied part is empty"
        );

        // Topics created after the open: denied ones stay out too.
        let end = format!("END-{name}");
        publish(&writer, "orders.secret.new", "SECRET-after").await;
        publish(&writer, "billing.us", "BILLING-after").await;
        publish(&writer, "orders.open", &end).await;
        let seen = until(&mut all, &end).await;
        for m in &seen {
            assert!(
                m.topic.starts_with("orders.") && !m.topic.starts_with("orders.secret."),
                "{name} got {} from {}",
                String::from_utf8_lossy(&m.payload),
                m.topic
            );
        }
    }
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_takes_a_topic_away_stops_it_on_a_live_pattern() {
    let specs = [
        PrincipalSpec::new("writer").publish("orders.>"),
        PrincipalSpec::new("dave").subscribe("orders.>"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ];
    let mut sandbox = start_with(&specs, "").await;
    let writer = client(&sandbox, "writer").await;
    publish(&writer, "orders.a", "a-0").await;
    publish(&writer, "orders.b", "b-0").await;
    let dave = client(&sandbox, "dave").await;
    let mut sub = within(dave.subscribe("orders.>", StartAt::Earliest))
        .await
        .unwrap();
    let first = [next(&mut sub).await.unwrap(), next(&mut sub).await.unwrap()];
    assert_eq!(first.len(), 2);

    // orders.b is denied now.
    sandbox
        .set_spec(
            PrincipalSpec::new("dave")
                .subscribe("orders.>")
                .deny_subscribe("orders.b"),
        )
        .unwrap();
    sandbox.write_policy().unwrap();
    sandbox.reload().unwrap();
    publish(&writer, "orders.b", "AFTER-REVOKE").await;
    publish(&writer, "orders.a", "END").await;
    let seen = until(&mut sub, "END").await;
    assert!(
        seen.iter().all(|m| m.topic == "orders.a"),
        "orders.b delivered after the reload: {:?}",
        per_topic(&seen)
    );

    // Given back: it continues where it stopped, nothing skipped.
    sandbox
        .set_spec(PrincipalSpec::new("dave").subscribe("orders.>"))
        .unwrap();
    sandbox.write_policy().unwrap();
    sandbox.reload().unwrap();
    publish(&writer, "orders.b", "b-2").await;
    let mut b = Vec::new();
    while b.len() < 2 {
        let m = next(&mut sub).await.unwrap();
        assert_eq!(m.topic, "orders.b");
        b.push((m.offset, String::from_utf8(m.payload).unwrap()));
    }
    assert_eq!(b, [(1, "AFTER-REVOKE".to_string()), (2, "b-2".to_string())]);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_past_its_topic_limit_is_refused_with_too_many_topics() {
    let mut sandbox = start_with(
        &specs(),
        &format!("{ROLES}\n[limits]\npattern_topics_max = 2\n"),
    )
    .await;
    let writer = client(&sandbox, "writer").await;
    publish(&writer, "orders.a", "a").await;
    publish(&writer, "orders.b", "b").await;
    let reader = client(&sandbox, "reader").await;
    let mut sub = within(reader.subscribe("orders.>", StartAt::Earliest))
        .await
        .unwrap();
    next(&mut sub).await.unwrap();
    next(&mut sub).await.unwrap();
    // A third topic: the subscription ends with the typed code, nothing
    // from the third topic is delivered.
    publish(&writer, "orders.c", "c").await;
    let ended = next(&mut sub).await;
    assert_eq!(code(&ended), Some(ErrorCode::TooManyTopics), "{ended:?}");
    assert!(within(sub.next()).await.is_none());
    // Opening over the limit is refused the same way.
    let refused = within(reader.subscribe("orders.>", StartAt::Latest)).await;
    assert_eq!(code(&refused), Some(ErrorCode::TooManyTopics));
    // A denied topic does not count (nor reveal itself through the limit).
    publish(&writer, "billing.x", "x").await;
    let fits = within(reader.subscribe("*.a", StartAt::Latest)).await;
    assert!(fits.is_ok());
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_refuses_a_start_offset_and_foreign_resume_positions() {
    let mut sandbox = start_with(&specs(), ROLES).await;
    let reader = client(&sandbox, "reader").await;
    let refused = within(reader.subscribe("orders.>", StartAt::Offset(3))).await;
    assert_eq!(code(&refused), Some(ErrorCode::BadFrame));
    let refused = within(reader.subscribe("orders.>.x", StartAt::Latest)).await;
    assert_eq!(code(&refused), Some(ErrorCode::BadTopic));
    // Raw: the broker refuses the same, and resume positions outside the
    // pattern.
    for (pattern, start, resume, expected) in [
        ("orders.>", StartAt::Offset(1), vec![], ErrorCode::BadFrame),
        ("orders..x", StartAt::Latest, vec![], ErrorCode::BadTopic),
        (
            "orders.>",
            StartAt::Earliest,
            vec![TopicOffset {
                topic: "billing.eu".into(),
                offset: 0,
            }],
            ErrorCode::BadFrame,
        ),
    ] {
        let (_s, _r, answer) = raw_pattern(&reader, pattern, start, resume).await;
        match answer {
            ServerFrame::Error(r) => assert_eq!(r.code, expected, "{pattern}"),
            other => panic!("{pattern}: expected a refusal, got {other:?}"),
        }
    }
    sandbox.stop().await;
}
