//! Policy you can change and prove (THREATS T3, T4, T11, T14, T16): roles
//! and deny rules, hot reload, quotas, and the audit trail they leave.

mod common;

use common::codes::{code, nack_codes};
use common::*;
use signet_client::{Client, StartAt};
use signet_proto::ErrorCode;

/// The audit log's records, read after the broker stopped (which flushes it).
fn audit_records(sandbox: &Sandbox) -> Vec<serde_json::Value> {
    std::fs::read_to_string(sandbox.audit_path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const WRITER_ROLE: &str = r#"
[[role]]
name = "writer"
publish = ["orders.>", "metrics.*", "a.>"]
deny_publish = ["orders.internal.>"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_grants_deny_rules_and_wildcard_edges() {
    let specs = [
        PrincipalSpec::new("carol").role("writer"),
        PrincipalSpec::new("auditor")
            .subscribe(">")
            .deny_subscribe("orders.internal.>"),
    ];
    let mut sandbox = start_with(&specs, WRITER_ROLE).await;
    let carol = client(&sandbox, "carol").await;
    assert_eq!(
        within(carol.publish("orders.created", b"1".to_vec()))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        code(&within(carol.publish("orders.internal.audit", b"x".to_vec())).await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        within(carol.publish("metrics.cpu", b"1".to_vec()))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        code(&within(carol.publish("metrics.cpu.user", b"x".to_vec())).await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code(&within(carol.publish("metrics", b"x".to_vec())).await),
        Some(ErrorCode::Forbidden)
    );
    // `a.>` does not match `a`.
    assert_eq!(
        code(&within(carol.publish("a", b"x".to_vec())).await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        within(carol.publish("a.b.c", b"1".to_vec())).await.unwrap(),
        0
    );
    // Invalid names: the client refuses them, and so does the broker.
    assert_eq!(
        code(&within(carol.publish("a..b", b"x".to_vec())).await),
        Some(ErrorCode::BadTopic)
    );
    let key = signing_key(&sandbox, "carol");
    for bad in ["a..b", "a.*", "a.>", "", "a. b"] {
        let publish = signed(&key, 1, vec![envelope(key.id(), bad, fresh_seq(), b"{}")]);
        assert_eq!(
            nack_codes(raw_publish(&carol, publish).await),
            vec![Some(ErrorCode::BadTopic)],
            "{bad:?}"
        );
    }
    // Subscribe: deny beats the `>` grant.
    let auditor = client(&sandbox, "auditor").await;
    let refused = within(auditor.subscribe("orders.internal.audit", StartAt::Earliest)).await;
    assert_eq!(code(&refused), Some(ErrorCode::Forbidden));
    assert_eq!(stored_count(&sandbox, "metrics.cpu").await, 1);
    assert_eq!(stored_count(&sandbox, "a").await, 0);
    sandbox.stop().await;
    let denied = audit_records(&sandbox)
        .into_iter()
        .filter(|r| r["event"] == "publish_denied" && r["principal"] == "carol")
        .count();
    assert!(denied >= 4, "publish denials are audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_by_file_change_closes_revoked_subscription_and_forbids_publish() {
    let dave = PrincipalSpec::new("dave")
        .publish("orders.>")
        .subscribe("orders.>");
    let mut sandbox = start_with(&[dave, PrincipalSpec::new("auditor").subscribe(">")], "").await;
    let client = client(&sandbox, "dave").await;
    let mut sub = within(client.subscribe("orders.x", StartAt::Latest))
        .await
        .unwrap();
    within(client.publish("orders.x", b"before".to_vec()))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await.unwrap().payload, b"before");

    // Revoke everything by editing the file; the file watch reloads it.
    sandbox.set_spec(PrincipalSpec::new("dave")).unwrap();
    sandbox.write_policy().unwrap();
    match next(&mut sub).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}"),
        Ok(m) => panic!("revoked subscription delivered {m:?}"),
    }
    assert_eq!(
        code(&within(client.publish("orders.x", b"after".to_vec())).await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(stored_count(&sandbox, "orders.x").await, 1);
    sandbox.stop().await;
    let records = audit_records(&sandbox);
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "policy_reload" && r["outcome"] == "applied")
    );
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "subscription_closed" && r["reason"] == "revoked")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_policy_is_refused_old_policy_kept_and_failure_audited() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    std::fs::write(sandbox.policy_path(), "[broker]\nlisten = \"nonsense\"\n").unwrap();
    let err = sandbox.reload().unwrap_err();
    assert!(format!("{err:#}").contains("invalid policy"), "{err:#}");
    // The old policy is still in force.
    assert_eq!(
        within(alice.publish("orders.kept", b"1".to_vec()))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        code(&within(alice.publish("billing.x", b"1".to_vec())).await),
        Some(ErrorCode::Forbidden)
    );
    sandbox.stop().await;
    assert!(
        audit_records(&sandbox)
            .iter()
            .any(|r| r["event"] == "policy_reload"
                && r["outcome"] == "failed"
                && r["reason"].as_str().is_some_and(|s| !s.is_empty()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_signing_key_is_refused_from_the_next_message() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    within(alice.publish("orders.k", b"1".to_vec()))
        .await
        .unwrap();
    sandbox.unbind_key("alice").unwrap();
    sandbox.write_policy().unwrap();
    sandbox.reload().unwrap();
    assert_eq!(
        code(&within(alice.publish("orders.k", b"2".to_vec())).await),
        Some(ErrorCode::UnknownKey)
    );
    assert_eq!(stored_count(&sandbox, "orders.k").await, 1);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_principal_is_refused_while_another_publishes_freely() {
    let specs = [
        PrincipalSpec::new("flood")
            .publish("flood.>")
            .quota("{ msgs_per_sec = 100 }"),
        PrincipalSpec::new("alice").publish("orders.>"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ];
    let mut sandbox = start_with(&specs, "").await;
    let flood = client(&sandbox, "flood").await;
    let alice = client(&sandbox, "alice").await;
    let mut flood_acks = Vec::new();
    for i in 0..2000u32 {
        let m = signet_client::OutgoingMessage::new("flood.x", i.to_be_bytes().to_vec());
        flood_acks.push(within(flood.enqueue(m)).await.unwrap());
    }
    let mut alice_acks = Vec::new();
    for i in 0..300u32 {
        let m = signet_client::OutgoingMessage::new("orders.calm", i.to_be_bytes().to_vec());
        alice_acks.push(within(alice.enqueue(m)).await.unwrap());
    }
    let (mut accepted, mut refused) = (0, 0);
    for ack in flood_acks {
        match within(ack).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded), "{e}");
                assert!(e.retry_after().is_some_and(|d| d.as_millis() >= 1));
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0 && accepted <= 200 + 100,
        "accepted {accepted}, refused {refused}"
    );
    for ack in alice_acks {
        within(ack)
            .await
            .expect("the calm principal is never refused");
    }
    assert_eq!(stored_count(&sandbox, "flood.x").await, accepted);
    // The flooder's connection stays open; with opt-in retry it gets through.
    let mut config = sandbox.client_config("flood").unwrap();
    config.quota_retries = 50;
    let patient = within(Client::connect(config)).await.unwrap();
    within(patient.publish("flood.x", b"patient".to_vec()))
        .await
        .unwrap();
    within(flood.publish("flood.y", b"x".to_vec())).await.ok();
    assert!(
        flood.close_reason().is_none(),
        "over-quota connection stays open"
    );
    sandbox.stop().await;
    assert!(
        audit_records(&sandbox)
            .iter()
            .any(|r| r["event"] == "quota_breach" && r["principal"] == "flood")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_quota_applies_at_once() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    within(alice.publish("orders.q", b"1".to_vec()))
        .await
        .unwrap();
    sandbox
        .set_spec(
            PrincipalSpec::new("alice")
                .publish("orders.>")
                .subscribe("orders.>")
                .quota("{ msgs_per_sec = 1 }"),
        )
        .unwrap();
    sandbox.write_policy().unwrap();
    sandbox.reload().unwrap();
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(code(
            &within(alice.publish("orders.q", b"x".to_vec())).await,
        ));
    }
    assert!(codes.contains(&Some(ErrorCode::QuotaExceeded)), "{codes:?}");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_bytes_quota_holds_across_a_restart() {
    let specs = [
        // A message costs its stored record: the payload and about 150
        // bytes of envelope and proof (up to 360 more are reserved while
        // it is checked). 600 fits; 600 + 500 does not; 600 + 300 does.
        PrincipalSpec::new("small")
            .publish("small.>")
            .quota("{ stored_bytes = 1600 }"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ];
    let mut sandbox = start_with(&specs, "").await;
    let small = client(&sandbox, "small").await;
    within(small.publish("small.a", vec![1; 600]))
        .await
        .unwrap();
    let refused = within(small.publish("small.a", vec![2; 500]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::QuotaExceeded));
    small.close().await;
    sandbox.restart().await.unwrap();
    let small = client(&sandbox, "small").await;
    assert_eq!(
        code(&within(small.publish("small.a", vec![3; 500])).await),
        Some(ErrorCode::QuotaExceeded)
    );
    within(small.publish("small.a", vec![4; 300]))
        .await
        .unwrap();
    assert_eq!(stored_count(&sandbox, "small.a").await, 2);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_subscription_quotas_per_principal() {
    let specs = [
        PrincipalSpec::new("one")
            .publish("one.>")
            .subscribe("one.>")
            .quota("{ max_connections = 1, max_subscriptions = 1 }"),
        PrincipalSpec::new("alice").publish("orders.>"),
    ];
    let mut sandbox = start_with(&specs, "").await;
    let first = client(&sandbox, "one").await;
    let _sub = within(first.subscribe("one.a", StartAt::Latest))
        .await
        .unwrap();
    let second_sub = within(first.subscribe("one.b", StartAt::Latest)).await;
    assert_eq!(code(&second_sub), Some(ErrorCode::QuotaExceeded));
    let second = async {
        let c = Client::connect(sandbox.client_config("one")?).await?;
        c.publish("one.x", b"x".to_vec())
            .await
            .map_err(anyhow::Error::from)
    };
    assert!(
        within(second).await.is_err(),
        "a second connection of the principal is refused"
    );
    let alice = client(&sandbox, "alice").await;
    within(alice.publish("orders.ok", b"1".to_vec()))
        .await
        .unwrap();
    within(first.publish("one.x", b"still served".to_vec()))
        .await
        .unwrap();
    sandbox.stop().await;
}
