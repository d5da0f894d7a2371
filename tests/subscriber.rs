//! What a subscriber decides on its own, whatever the broker or its disk
//! says (THREATS T22, T23): a verified record delivered again at another
//! offset is a replay, and a trusted key writing outside the topics its
//! trust entry names is untrusted. Both are reported, never yielded.

mod common;

use common::*;
use signet_client::{Client, ClientConfig, Error, StartAt, Subscription};
use signet_proto::ErrorCode;

/// Behind the stopped broker's back: appends copies of the stored records
/// at `offsets` (of the topic whose records hold `payload_marker`) to the
/// end of that topic, in order, as if the broker had stored them again.
fn append_copies_on_disk(sandbox: &Sandbox, payload_marker: &[u8], offsets: &[u64]) {
    use signet_broker::store::{
        CF_MESSAGES, CF_PUBLISHED, CF_REPLAY, CF_SUBS, CF_TOPICS, CF_USAGE, MESSAGE_KEY_BYTES,
        message_key,
    };
    let families = [
        CF_MESSAGES,
        CF_TOPICS,
        CF_REPLAY,
        CF_USAGE,
        CF_SUBS,
        CF_PUBLISHED,
    ];
    let db =
        rocksdb::DB::open_cf(&rocksdb::Options::default(), sandbox.data_dir(), families).unwrap();
    let cf = db.cf_handle(CF_MESSAGES).unwrap();
    // The topic's records, by offset (found by the marker in their payload).
    let mut records = std::collections::BTreeMap::new();
    let mut topic_id = None;
    for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
        let (key, value) = item.unwrap();
        assert_eq!(key.len(), MESSAGE_KEY_BYTES);
        if value
            .windows(payload_marker.len())
            .any(|w| w == payload_marker)
        {
            let id = u32::from_be_bytes(key[..4].try_into().unwrap());
            let offset = u64::from_be_bytes(key[4..].try_into().unwrap());
            assert!(topic_id.is_none_or(|t| t == id), "one topic");
            topic_id = Some(id);
            records.insert(offset, value.to_vec());
        }
    }
    let topic_id = topic_id.expect("stored records found");
    let end = records.keys().last().unwrap() + 1;
    for (at, offset) in (end..).zip(offsets) {
        db.put_cf(cf, message_key(topic_id, at), &records[offset])
            .unwrap();
    }
    db.flush_cf(cf).unwrap();
}

/// Reads `count` items of a subscription: the offsets yielded as messages
/// and the (offset, code) of every verification error.
async fn read_items(sub: &mut Subscription, count: usize) -> (Vec<u64>, Vec<(u64, ErrorCode)>) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for _ in 0..count {
        match next(sub).await {
            Ok(m) => good.push(m.offset),
            Err(Error::Verify { offset, code, .. }) => bad.push((offset, code)),
            Err(other) => panic!("unexpected subscription error: {other}"),
        }
    }
    (good, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_copied_to_a_later_offset_is_reported_as_replay_never_yielded() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    for i in 0..3 {
        within(alice.publish("orders.pay", format!("PAY-{i}").into_bytes()))
            .await
            .unwrap();
    }
    alice.close().await;
    sandbox.stop().await;

    // A payment delivered twice: offset 2 again (the same seq as the last
    // one seen), then offset 0 again (a seq going backwards).
    append_copies_on_disk(&sandbox, b"PAY-", &[2, 0]);

    sandbox.start().await.unwrap();
    let alice = client(&sandbox, "alice").await;
    let later = within(alice.publish("orders.pay", b"PAY-3".to_vec()))
        .await
        .unwrap();
    assert_eq!(later, 5, "the copies took offsets 3 and 4");
    let reader = client(&sandbox, "auditor").await;
    let mut sub = within(reader.subscribe("orders.pay", StartAt::Earliest))
        .await
        .unwrap();
    let (good, bad) = read_items(&mut sub, 6).await;
    assert_eq!(
        (good, bad),
        (
            vec![0, 1, 2, 5],
            vec![(3, ErrorCode::Replay), (4, ErrorCode::Replay)]
        ),
        "copies are reported as Replay, never yielded; later messages still verify"
    );
    sandbox.stop().await;
}

/// The auditor's client file with alice's trust entry replaced by `entry`.
fn auditor_config(sandbox: &Sandbox, alice_entry: &str) -> Result<ClientConfig, String> {
    let alice = sandbox.public_key("alice").unwrap();
    let plain = format!("{:?} = {:?}", alice.id().to_hex(), alice.to_string());
    let text = sandbox.client_file_text("auditor").unwrap();
    assert!(text.contains(&plain), "alice is trusted in the plain form");
    let scoped = format!(
        "{:?} = {{ key = {:?}, {alice_entry} }}",
        alice.id().to_hex(),
        alice.to_string()
    );
    ClientConfig::parse(&text.replace(&plain, &scoped), sandbox.path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_key_outside_its_topics_is_reported_untrusted_never_yielded() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    for i in 0..3 {
        within(alice.publish("orders.created", format!("ORDER-{i}").into_bytes()))
            .await
            .unwrap();
    }
    let bob = client(&sandbox, "bob").await;
    within(bob.publish("billing.paid", b"PAID".to_vec()))
        .await
        .unwrap();

    // Alice may write billing only: her orders are untrusted here.
    let config = auditor_config(&sandbox, r#"topics = ["billing.>"]"#)
        .unwrap_or_else(|e| panic!("a trust entry with topics parses: {e}"));
    let reader = within(Client::connect(config)).await.unwrap();
    let mut sub = within(reader.subscribe("orders.created", StartAt::Earliest))
        .await
        .unwrap();
    let (good, bad) = read_items(&mut sub, 3).await;
    assert_eq!(
        (good, bad),
        (
            vec![],
            vec![
                (0, ErrorCode::Untrusted),
                (1, ErrorCode::Untrusted),
                (2, ErrorCode::Untrusted)
            ]
        ),
        "a trusted key outside its topics is reported, never yielded"
    );
    // Bob's entry is the plain form: trusted for every topic, as before.
    let mut billing = within(reader.subscribe("billing.paid", StartAt::Earliest))
        .await
        .unwrap();
    assert_eq!(next(&mut billing).await.unwrap().payload, b"PAID");

    // With orders in her entry, the same records verify.
    let config = auditor_config(&sandbox, r#"topics = ["billing.>", "orders.>"]"#).unwrap();
    let reader = within(Client::connect(config)).await.unwrap();
    let mut sub = within(reader.subscribe("orders.created", StartAt::Earliest))
        .await
        .unwrap();
    for i in 0..3u64 {
        let m = next(&mut sub).await.unwrap();
        assert_eq!(
            (m.offset, m.payload),
            (i, format!("ORDER-{i}").into_bytes())
        );
    }

    // Patterns are validated like the broker's.
    let refused = auditor_config(&sandbox, r#"topics = ["orders.>.x"]"#).unwrap_err();
    assert!(refused.contains("orders.>.x"), "{refused}");
    sandbox.stop().await;
}
