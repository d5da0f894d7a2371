//! Mutual TLS at the handshake (THREATS T1, T2): clients without a
//! certificate, with a foreign CA's certificate or an expired one are
//! refused; a client that does not trust the broker's CA refuses it.

mod common;

use common::*;
use signet_admin::pki;
use signet_client::{Client, ClientConfig, Error};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

async fn attempt(config: ClientConfig) -> Result<u64, Error> {
    let client = Client::connect(config).await?;
    client.publish("orders.handshake", b"{}".to_vec()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_refused() {
    let mut sandbox = started().await;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(sandbox.pki_dir().join("ca.crt")).unwrap();
    for cert in rustls_pemfile_certs(&ca) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"signet/1".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let outcome = within(async {
        let conn = endpoint
            .connect(sandbox.addr().unwrap(), "localhost")?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        tokio::io::AsyncWriteExt::write_all(&mut send, &[0, 0, 0, 1, 0xc0]).await?;
        let mut buf = [0u8; 1];
        let n = recv.read(&mut buf).await?;
        anyhow::Ok(n)
    })
    .await;
    assert!(
        outcome.is_err(),
        "a client without a certificate got through: {outcome:?}"
    );
    sandbox.stop().await;
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_foreign_ca_is_refused() {
    let mut sandbox = started().await;
    let foreign = tempfile::tempdir().unwrap();
    pki::init(foreign.path(), &[]).unwrap();
    let files = pki::issue(foreign.path(), "alice").unwrap();
    let mut config = sandbox.client_config("alice").unwrap();
    config.cert = files.cert;
    config.key = files.key;
    assert!(within(attempt(config)).await.is_err());
    assert_eq!(stored_count(&sandbox, "orders.handshake").await, 0);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() {
    let mut sandbox = started().await;
    let now = OffsetDateTime::now_utc();
    let files = pki::issue_with_validity(
        &sandbox.pki_dir(),
        "alice-expired",
        now - Duration::days(30),
        now - Duration::days(1),
    )
    .unwrap();
    let mut config = sandbox.client_config("alice").unwrap();
    config.cert = files.cert;
    config.key = files.key;
    assert!(within(attempt(config)).await.is_err());
    assert_eq!(stored_count(&sandbox, "orders.handshake").await, 0);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_broker_from_untrusted_ca() {
    let mut sandbox = started().await;
    let foreign = tempfile::tempdir().unwrap();
    pki::init(foreign.path(), &[]).unwrap();
    let mut config = sandbox.client_config("alice").unwrap();
    config.ca = foreign.path().join("ca.crt");
    match within(Client::connect(config)).await {
        Err(Error::Connect(_)) => {}
        Err(other) => panic!("expected a connect error, got {other}"),
        Ok(_) => panic!("client accepted a broker its CA did not sign"),
    }
    // And a correct client still works.
    let alice = client(&sandbox, "alice").await;
    assert_eq!(
        within(alice.publish("orders.handshake", b"{}".to_vec()))
            .await
            .unwrap(),
        0
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_broker_with_wrong_name() {
    let mut sandbox = started().await;
    let mut config = sandbox.client_config("alice").unwrap();
    config.server_name = "not-the-broker.example".into();
    assert!(matches!(
        within(Client::connect(config)).await,
        Err(Error::Connect(_))
    ));
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_refuses_to_start_with_world_readable_key() {
    use std::os::unix::fs::PermissionsExt;
    let mut sandbox = sandbox(&principals());
    let key = sandbox.pki_dir().join("broker.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = sandbox.start().await.unwrap_err();
    assert!(format!("{err:#}").contains("chmod 600"), "{err:#}");
}
