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

/// A certificate the sandbox CA signed for `cn` with a subject CN only and
/// no `signet://principal/` URI SAN, as a shared enterprise CA issues them.
fn cn_only_certificate(sandbox: &Sandbox, cn: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
    use std::os::unix::fs::OpenOptionsExt;
    let pki = sandbox.pki_dir();
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let ca_cert =
        CertificateParams::from_ca_cert_pem(&std::fs::read_to_string(pki.join("ca.crt")).unwrap())
            .unwrap()
            .self_signed(&ca_key)
            .unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let cert_path = sandbox.path().join(format!("{cn}-cn-only.crt"));
    let key_path = sandbox.path().join(format!("{cn}-cn-only.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .unwrap();
    std::io::Write::write_all(&mut f, key.serialize_pem().as_bytes()).unwrap();
    (cert_path, key_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_signed_certificate_with_only_a_cn_names_no_principal() {
    let mut sandbox = started().await;
    let (cert, key) = cn_only_certificate(&sandbox, "alice");
    let der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(&cert).unwrap()
    };
    assert_eq!(signet_broker::tls::principal_from_cert(&der), None);
    let mut config = sandbox.client_config("alice").unwrap();
    config.cert = cert;
    config.key = key;
    let outcome = within(attempt(config)).await;
    assert!(
        outcome.is_err(),
        "a CN-only certificate got in as alice: {outcome:?}"
    );
    assert_eq!(stored_count(&sandbox, "orders.handshake").await, 0);
    sandbox.stop().await;
    let log = std::fs::read_to_string(sandbox.audit_path()).unwrap();
    assert!(
        log.contains("certificate names no principal"),
        "the refusal is audited: {log}"
    );
}

/// A client session store that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_issues_no_session_tickets_so_no_session_outlives_its_certificate() {
    use rustls::pki_types::pem::PemObject;
    use signet_proto::frame::{ClientFrame, ServerFrame, StartAt, Subscribe};
    use signet_proto::stream::{read_frame, write_frame};
    let mut sandbox = started().await;
    let pki = sandbox.pki_dir();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&std::fs::read(pki.join("ca.crt")).unwrap()) {
        roots.add(cert).unwrap();
    }
    let chain = rustls_pemfile_certs(&std::fs::read(pki.join("clients/alice.crt")).unwrap());
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_file(pki.join("clients/alice.key")).unwrap();
    let store = Arc::new(CountingStore {
        inner: rustls::client::ClientSessionMemoryCache::new(16),
        tickets: Default::default(),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"signet/1".to_vec()];
    tls.resumption = rustls::client::Resumption::store(store.clone());
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    for _ in 0..2 {
        let conn = within(
            endpoint
                .connect(sandbox.addr().unwrap(), "localhost")
                .unwrap(),
        )
        .await
        .expect("alice connects");
        // A full round trip after the handshake: any ticket the broker
        // sends arrives before the answer.
        let (mut send, mut recv) = within(conn.open_bi()).await.unwrap();
        let subscribe = ClientFrame::Subscribe(Subscribe {
            topic: "orders.tickets".into(),
            start: StartAt::Latest,
        });
        within(write_frame(&mut send, &subscribe)).await.unwrap();
        let answer = within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX))
            .await
            .unwrap();
        assert!(
            matches!(answer, Some(ServerFrame::Subscribed { .. })),
            "{answer:?}"
        );
        conn.close(0u32.into(), b"bye");
    }
    endpoint.wait_idle().await;
    assert_eq!(
        store.tickets.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the broker handed out session tickets: a resumed session would skip the certificate check"
    );
    sandbox.stop().await;
}
