//! Helpers for end-to-end tests: a real broker in a sandbox, real clients,
//! raw frames for attacks, typed error codes ([`codes`]), and timeouts
//! instead of sleeps.
#![allow(dead_code)]

pub mod codes;
pub mod process;
pub mod raw;
pub mod seen;

use futures_util::StreamExt;
use signet_client::{Client, Message, StartAt, Subscription};
use signet_proto::envelope::CONTENT_TYPE_JSON;
use signet_proto::frame::{ClientFrame, Publish, ServerFrame};
use signet_proto::stream::{read_frame, write_frame};
use signet_proto::{Envelope, KeyId, SigningKey, batch};
pub use signet_testkit::sandbox::{PrincipalSpec, Sandbox};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest any single awaited event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test after [`WAIT`].
pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("timed out waiting for an event")
}

/// Principals most tests use: `alice` publishes and reads `orders.>`,
/// `bob` publishes `billing.>` only, `auditor` reads everything.
pub fn principals() -> Vec<PrincipalSpec> {
    vec![
        PrincipalSpec::new("alice")
            .publish("orders.>")
            .subscribe("orders.>"),
        PrincipalSpec::new("bob").publish("billing.>"),
        PrincipalSpec::new("auditor").subscribe(">"),
    ]
}

/// A sandbox for `specs` (PKI, keys), broker not started: to prepare
/// files first, or to run the broker as a separate process.
pub fn sandbox(specs: &[PrincipalSpec]) -> Sandbox {
    Sandbox::new(specs).expect("sandbox")
}

/// Starts `sandbox`'s broker with `extra_policy` (TOML: `[limits]`,
/// `[[role]]`, `[[topic]]`…) appended to the generated policy; relative
/// paths in it resolve against the sandbox folder.
pub async fn launch(mut sandbox: Sandbox, extra_policy: &str) -> Sandbox {
    sandbox.set_extra_policy(extra_policy);
    sandbox.start().await.expect("broker starts");
    sandbox
}

/// A started sandbox for `specs` with `extra_policy`: [`sandbox`] then
/// [`launch`].
pub async fn start_with(specs: &[PrincipalSpec], extra_policy: &str) -> Sandbox {
    launch(sandbox(specs), extra_policy).await
}

/// A started sandbox with [`principals`] and the generated policy only.
pub async fn started() -> Sandbox {
    start_with(&principals(), "").await
}

/// A connected client for `name`.
pub async fn client(sandbox: &Sandbox, name: &str) -> Client {
    within(Client::connect(
        sandbox.client_config(name).expect("config"),
    ))
    .await
    .expect("connects")
}

/// The signing key of `name`.
pub fn signing_key(sandbox: &Sandbox, name: &str) -> SigningKey {
    let der = std::fs::read(sandbox.signing_key_path(name).unwrap()).unwrap();
    SigningKey::from_pkcs8(&der).unwrap()
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A fresh seq well above anything a client allocated before.
pub fn fresh_seq() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        + (1 << 40)
}

/// An envelope as a publisher would build it (with a fresh random salt).
pub fn envelope(key: KeyId, topic: &str, seq: u64, payload: &[u8]) -> Envelope {
    Envelope {
        version: 1,
        salt: signet_proto::Salt::random().expect("random salt"),
        topic: topic.into(),
        key_id: key,
        seq,
        timestamp_ms: now_ms(),
        content_type: CONTENT_TYPE_JSON.into(),
        headers: vec![],
        encryption: None,
        payload: payload.to_vec(),
    }
}

/// A `Publish` frame of `envelopes` signed by `key`.
pub fn signed(key: &SigningKey, request_id: u64, envelopes: Vec<Envelope>) -> Publish {
    let signed = batch::sign(key, &envelopes).expect("sign");
    Publish {
        request_id,
        signature: signed.signature,
        envelopes,
    }
}

/// Sends one raw `Publish` on a new stream of `client`'s connection and
/// returns the broker's answer.
pub async fn raw_publish(client: &Client, publish: Publish) -> ServerFrame {
    let (mut send, mut recv) = within(client.connection().open_bi()).await.expect("stream");
    within(write_frame(&mut send, &ClientFrame::Publish(publish)))
        .await
        .expect("write");
    within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX))
        .await
        .expect("read")
        .expect("an answer")
}

/// How many messages `topic` holds, asked as the `auditor`.
pub async fn stored_count(sandbox: &Sandbox, topic: &str) -> u64 {
    let auditor = client(sandbox, "auditor").await;
    let sub = within(auditor.subscribe(topic, StartAt::Latest))
        .await
        .expect("subscribe");
    sub.next_offset_at_open()
}

/// The next item of a subscription.
pub async fn next(sub: &mut Subscription) -> Result<Message, signet_client::Error> {
    within(sub.next()).await.expect("subscription ended")
}
