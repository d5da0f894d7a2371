//! Payloads you can trust (THREATS T9): JSON Schema on ingest for JSON and
//! MessagePack, limits before parsing, schemas compiled per policy load, the
//! same check in the client, and encrypted topics refusing plaintext.

mod common;

use common::codes::code;
use common::*;
use serde_json::{Value, json};
use signet_client::{Client, Error, OutgoingMessage};
use signet_proto::ErrorCode;

fn schema_source() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/orders.created.json")
}

/// `alice` publishes `orders.>` and `payroll.>`; `orders.created` has a
/// copy of the example schema (tests may break it), `payroll.>` is encrypted.
async fn schema_sandbox() -> Sandbox {
    let sandbox = sandbox(&[
        PrincipalSpec::new("alice")
            .publish("orders.>")
            .publish("payroll.>"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ]);
    let schema = sandbox.path().join("orders.created.json");
    std::fs::copy(schema_source(), &schema).unwrap();
    let policy = format!(
        "[[topic]]\nname = \"orders.created\"\nschema = {:?}\n\n[[topic]]\nname = \"payroll.>\"\nencrypted = true\n",
        schema.display().to_string()
    );
    launch(sandbox, &policy).await
}

fn json_message(value: &Value) -> OutgoingMessage {
    OutgoingMessage::new("orders.created", value.to_string().into_bytes())
        .content_type("application/json")
}

/// Publishes `m` and checks it is refused with `SchemaViolation` whose
/// detail contains `expected` (`at <path>: <keyword>`).
async fn assert_refused(alice: &Client, m: OutgoingMessage, expected: &str) {
    let refused = within(alice.publish_message(m)).await;
    assert_eq!(
        code(&refused),
        Some(ErrorCode::SchemaViolation),
        "{expected}: {refused:?}"
    );
    let text = refused.unwrap_err().to_string();
    assert!(text.contains(expected), "{expected}: {text}");
}

fn valid_order() -> Value {
    json!({
        "id": 42, "status": "paid", "customer_id": "C12345", "currency": "EUR",
        "total_cents": 1999, "priority": 3, "gift": false, "coupon": null,
        "tags": ["web"], "shipping": { "city": "Lyon", "country": "FR", "zip": "69001" },
        "items": [{ "sku": "ABC-1", "qty": 2, "price_cents": 999 }],
        "metadata": { "source": "test" }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_json_and_msgpack_payloads_are_accepted() {
    let mut sandbox = schema_sandbox().await;
    let alice = client(&sandbox, "alice").await;
    assert_eq!(
        within(alice.publish_message(json_message(&valid_order())))
            .await
            .unwrap(),
        0
    );
    let packed = rmp_serde::to_vec_named(&valid_order()).unwrap();
    let m = OutgoingMessage::new("orders.created", packed).content_type("application/msgpack");
    assert_eq!(within(alice.publish_message(m)).await.unwrap(), 1);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_violated_keyword_is_refused_with_its_path_and_nothing_is_stored() {
    let mut sandbox = schema_sandbox().await;
    let alice = client(&sandbox, "alice").await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({ "id": "42" }), "/id", "type"),
        (json!({ "status": "new" }), "/", "required"),
        (json!({ "id": 1, "status": "lost" }), "/status", "enum"),
        (
            json!({ "id": 1, "customer_id": "X1" }),
            "/customer_id",
            "pattern",
        ),
        (json!({ "id": 0 }), "/id", "minimum"),
        (json!({ "id": 1, "priority": 10 }), "/priority", "maximum"),
        (
            json!({ "id": 1, "bogus": true }),
            "/",
            "additionalProperties",
        ),
        (
            json!({ "id": 1, "items": [{ "sku": "ABC-1", "qty": 1 }, { "sku": "ABC-2", "qty": 0 }] }),
            "/items/1/qty",
            "minimum",
        ),
        (
            json!({ "id": 1, "items": [{ "sku": "ABC-1", "qty": 1, "x": 1 }] }),
            "/items/0",
            "additionalProperties",
        ),
        (
            json!({ "id": 1, "shipping": { "city": "Lyon" } }),
            "/shipping",
            "required",
        ),
    ];
    for (payload, path, keyword) in &cases {
        let expected = format!("at {path}: {keyword}");
        assert_refused(&alice, json_message(payload), &expected).await;
        // MessagePack payloads get the same verdict.
        let packed = rmp_serde::to_vec_named(payload).unwrap();
        let m = OutgoingMessage::new("orders.created", packed).content_type("application/msgpack");
        assert_refused(&alice, m, &expected).await;
    }
    let other =
        OutgoingMessage::new("orders.created", br#"{"id":1}"#.to_vec()).content_type("text/plain");
    assert_refused(&alice, other, "at /: contentType").await;
    assert_eq!(stored_count(&sandbox, "orders.created").await, 0);
    sandbox.stop().await;
}

/// A JSON object naming a member twice means different things to different
/// parsers: `serde_json` (the broker's before) kept the last value, many
/// others keep the first. The broker checked `"status": "paid"` and stored
/// a payload whose first-wins readers see `"status": "void"`, a value the
/// schema forbids. Such payloads are now refused on a schema topic, as are
/// MessagePack maps naming a key twice and bytes after a MessagePack value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_named_twice_is_refused_so_no_reader_sees_a_value_the_schema_did_not_check() {
    let mut sandbox = schema_sandbox().await;
    let alice = client(&sandbox, "alice").await;
    let payloads: [(&[u8], &str); 3] = [
        (
            br#"{"id": 1, "status": "void", "status": "paid"}"#,
            "/status",
        ),
        (br#"{"id": 1, "id": 2}"#, "/id"),
        (
            br#"{"id": 1, "items": [{"sku": "ABC-1", "qty": 1, "qty": 2}]}"#,
            "/items/0/qty",
        ),
    ];
    for (payload, path) in payloads {
        let m = OutgoingMessage::new("orders.created", payload.to_vec())
            .content_type("application/json");
        assert_refused(&alice, m, &format!("at {path}: duplicateKey")).await;
    }
    // A MessagePack map naming "status" twice (rmp-serde kept the last).
    let mut packed = vec![0x83, 0xa2, b'i', b'd', 0x01];
    for status in ["void", "paid"] {
        packed.extend_from_slice(&[0xa6, b's', b't', b'a', b't', b'u', b's', 0xa4]);
        packed.extend_from_slice(status.as_bytes());
    }
    let m = OutgoingMessage::new("orders.created", packed).content_type("application/msgpack");
    assert_refused(&alice, m, "at /status: duplicateKey").await;
    // Bytes after a MessagePack value (rmp-serde ignored them; decoders
    // that refuse them would choke on the stored message).
    let mut trailing = rmp_serde::to_vec_named(&valid_order()).unwrap();
    trailing.push(0xc0);
    let m = OutgoingMessage::new("orders.created", trailing).content_type("application/msgpack");
    assert_refused(&alice, m, "at /: parse").await;
    assert_eq!(stored_count(&sandbox, "orders.created").await, 0);
    // The refusals took no offset: the next valid order is the first.
    assert_eq!(
        within(alice.publish_message(json_message(&valid_order())))
            .await
            .unwrap(),
        0
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_or_huge_payloads_are_refused_before_parsing() {
    let mut sandbox = schema_sandbox().await;
    let alice = client(&sandbox, "alice").await;
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let m =
        OutgoingMessage::new("orders.created", deep.into_bytes()).content_type("application/json");
    assert_refused(&alice, m, "at /: depth").await;
    let huge = format!("{{\"id\":1,\"note\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let m =
        OutgoingMessage::new("orders.created", huge.into_bytes()).content_type("application/json");
    assert_eq!(
        code(&within(alice.publish_message(m)).await),
        Some(ErrorCode::TooLarge)
    );
    assert_eq!(stored_count(&sandbox, "orders.created").await, 0);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_schema_fails_the_reload_and_the_old_schema_stays() {
    let mut sandbox = schema_sandbox().await;
    let alice = client(&sandbox, "alice").await;
    std::fs::write(
        sandbox.path().join("orders.created.json"),
        r#"{"type": "nonsense-type"}"#,
    )
    .unwrap();
    let err = sandbox.reload().unwrap_err();
    assert!(
        format!("{err:#}").contains("orders.created.json"),
        "{err:#}"
    );
    assert_eq!(
        within(alice.publish_message(json_message(&valid_order())))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        code(&within(alice.publish_message(json_message(&json!({ "id": "x" })))).await),
        Some(ErrorCode::SchemaViolation),
        "old schema still enforced"
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_validates_before_sending_with_the_same_verdict() {
    let mut sandbox = schema_sandbox().await;
    let mut config = sandbox.client_config("alice").unwrap();
    config.schemas = vec![("orders.created".into(), schema_source())];
    let checked = within(Client::connect(config)).await.unwrap();
    let unchecked = client(&sandbox, "alice").await;
    let bad = json_message(&json!({ "id": 1, "items": [{ "sku": "ABC-1", "qty": 0 }] }));
    let local = checked.validate(&bad).unwrap_err();
    assert!(matches!(
        local,
        Error::Invalid {
            code: ErrorCode::SchemaViolation,
            ..
        }
    ));
    let remote = within(unchecked.publish_message(bad.clone()))
        .await
        .unwrap_err();
    let detail = |e: &Error| match e {
        Error::Invalid { detail, .. } | Error::Rejected { detail, .. } => detail.clone(),
        other => panic!("{other}"),
    };
    assert_eq!(detail(&local), detail(&remote));
    assert!(matches!(
        within(checked.publish_message(bad)).await,
        Err(Error::Invalid { .. })
    ));
    assert_eq!(
        within(checked.publish_message(json_message(&valid_order())))
            .await
            .unwrap(),
        0
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_publish_to_encrypted_topic_is_refused() {
    let mut sandbox = schema_sandbox().await;
    let alice = client(&sandbox, "alice").await;
    assert_eq!(
        code(&within(alice.publish("payroll.march", b"salary".to_vec())).await),
        Some(ErrorCode::EncryptionRequired)
    );
    assert_eq!(stored_count(&sandbox, "payroll.march").await, 0);
    sandbox.stop().await;
}

/// Reproduction: tightening a schema file and reloading changed nothing,
/// because the reload compared only the policy file's hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tightened_schema_file_applies_on_reload() {
    let mut sandbox = schema_sandbox().await;
    let alice = client(&sandbox, "alice").await;
    assert_eq!(
        within(alice.publish_message(json_message(&valid_order())))
            .await
            .unwrap(),
        0,
        "the old schema accepts the order"
    );
    std::fs::write(
        sandbox.path().join("orders.created.json"),
        r#"{"type": "object", "required": ["id", "approved_by"]}"#,
    )
    .unwrap();
    // The file watch may reload first; either way the new schema is in
    // force once this returns.
    sandbox.reload().unwrap();
    assert_eq!(
        code(&within(alice.publish_message(json_message(&valid_order()))).await),
        Some(ErrorCode::SchemaViolation),
        "the tightened schema refuses what the old one accepted"
    );
    assert_eq!(stored_count(&sandbox, "orders.created").await, 1);
    sandbox.stop().await;
}
