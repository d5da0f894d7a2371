//! End-to-end payload encryption (THREATS T10): the broker stores and
//! forwards ciphertext only, every recipient decrypts, anyone else gets a
//! typed `NotARecipient`, the signature covers the ciphertext, and an
//! encrypted topic refuses plaintext.

mod common;

use common::codes::{code, nack_codes};
use common::*;
use signet_client::{Client, ClientConfig, Error, OutgoingMessage, StartAt};
use signet_proto::ErrorCode;
use signet_proto::crypt::{self, DecryptionKey, RecipientKey};
use std::path::PathBuf;

const MARKER: &[u8] = b"PLAINTEXT-MARKER-salary-4242";

struct World {
    sandbox: Sandbox,
    keys: Vec<(PathBuf, RecipientKey)>,
}

fn key_file(sandbox: &Sandbox, name: &str) -> (PathBuf, RecipientKey) {
    let (bytes, key) = DecryptionKey::generate().unwrap();
    let path = sandbox
        .write_private(&format!("{name}.x25519"), &bytes)
        .unwrap();
    (path, key.public_key().clone())
}

async fn world() -> World {
    let sandbox = start_with(
        &[
            PrincipalSpec::new("alice").publish("payroll.>"),
            PrincipalSpec::new("r1").subscribe("payroll.>"),
            PrincipalSpec::new("r2").subscribe("payroll.>"),
            PrincipalSpec::new("outsider").subscribe("payroll.>"),
            PrincipalSpec::new("auditor").subscribe(">"),
        ],
        "[[topic]]\nname = \"payroll.>\"\nencrypted = true\n",
    )
    .await;
    let keys = ["r1", "r2", "outsider", "r1-new"]
        .iter()
        .map(|n| key_file(&sandbox, n))
        .collect();
    World { sandbox, keys }
}

impl World {
    fn reader(&self, name: &str, keys: &[usize]) -> ClientConfig {
        let mut config = self.sandbox.client_config(name).unwrap();
        config.private_keys = keys.iter().map(|&i| self.keys[i].0.clone()).collect();
        config
    }

    fn publisher(&self, recipients: &[usize]) -> ClientConfig {
        let mut config = self.sandbox.client_config("alice").unwrap();
        config.recipients = vec![(
            "payroll.>".into(),
            recipients.iter().map(|&i| self.keys[i].1.clone()).collect(),
        )];
        config
    }
}

async fn first(config: ClientConfig) -> Result<signet_client::Message, Error> {
    let client = within(Client::connect(config)).await.unwrap();
    let mut sub = within(client.subscribe("payroll.march", StartAt::Earliest))
        .await
        .unwrap();
    next(&mut sub).await
}

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            return files_contain(&path, needle);
        }
        std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_decrypt_others_cannot_and_the_broker_stores_no_plaintext() {
    let mut w = world().await;
    let alice = within(Client::connect(w.publisher(&[0, 1]))).await.unwrap();
    let m = OutgoingMessage::new("payroll.march", MARKER.to_vec()).content_type("text/plain");
    assert_eq!(within(alice.publish_message(m)).await.unwrap(), 0);
    assert_eq!(first(w.reader("r1", &[0])).await.unwrap().payload, MARKER);
    assert_eq!(first(w.reader("r2", &[1])).await.unwrap().payload, MARKER);
    match first(w.reader("outsider", &[2])).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::NotARecipient), "{e}"),
        Ok(m) => panic!("a non-recipient read {m:?}"),
    }
    alice.close().await;
    w.sandbox.stop().await;
    assert!(
        files_contain(&w.sandbox.data_dir(), b"payroll.march"),
        "the scan does see stored data"
    );
    assert!(
        !files_contain(&w.sandbox.data_dir(), MARKER),
        "plaintext reached the broker's files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reader_with_old_and_new_keys_decrypts_either() {
    let mut w = world().await;
    let to_new = within(Client::connect(w.publisher(&[3]))).await.unwrap();
    within(to_new.publish("payroll.march", MARKER.to_vec()))
        .await
        .unwrap();
    assert_eq!(
        first(w.reader("r1", &[0, 3])).await.unwrap().payload,
        MARKER
    );
    assert_eq!(
        code(&first(w.reader("r1", &[0])).await),
        Some(ErrorCode::NotARecipient)
    );
    w.sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_ciphertext_byte_is_bad_signature() {
    let mut w = world().await;
    let alice = client(&w.sandbox, "alice").await;
    let key = signing_key(&w.sandbox, "alice");
    let mut e = envelope(key.id(), "payroll.march", fresh_seq(), MARKER);
    crypt::encrypt(&mut e, &[w.keys[0].1.clone()]).unwrap();
    let mut publish = signed(&key, 1, vec![e]);
    publish.envelopes[0].payload[3] ^= 0x01;
    assert_eq!(
        nack_codes(raw_publish(&alice, publish).await),
        vec![Some(ErrorCode::BadSignature)]
    );
    assert_eq!(stored_count(&w.sandbox, "payroll.march").await, 0);
    w.sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_encrypted_topic_is_refused_and_client_checks_schema_after_decrypting() {
    let mut w = world().await;
    let plain = client(&w.sandbox, "alice").await;
    let refused = within(plain.publish("payroll.march", MARKER.to_vec()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::EncryptionRequired));
    // An encrypted payload the broker cannot check; a reader with the schema does.
    let alice = within(Client::connect(w.publisher(&[0]))).await.unwrap();
    let m = OutgoingMessage::new("payroll.march", br#"{"salary":1}"#.to_vec())
        .content_type("application/json");
    within(alice.publish_message(m)).await.unwrap();
    let mut strict = w.reader("r1", &[0]);
    strict.schemas = vec![(
        "payroll.>".into(),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/orders.created.json"),
    )];
    match first(strict).await {
        Err(Error::Verify { code, detail, .. }) => {
            assert_eq!(code, ErrorCode::SchemaViolation);
            assert!(detail.starts_with("schema violation at /"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        first(w.reader("r1", &[0])).await.unwrap().payload,
        br#"{"salary":1}"#
    );
    w.sandbox.stop().await;
}
