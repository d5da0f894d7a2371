//! The client side of mutual TLS: TLS 1.3 only, the broker verified
//! against the CA in the client file (there is no way to skip this), and
//! the client certificate presented.

use crate::config::ClientConfig;
use crate::error::Error;
use crate::keyfile::read_private;
use crate::limits::{NODE_IDLE_MS_MAX, NODE_KEEP_ALIVE_MS};
use quinn::crypto::rustls::QuicClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;

/// The only ALPN protocol spoken.
pub const ALPN: &[u8] = b"signet/1";

fn certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{}: no certificate", path.display())));
    }
    Ok(certs)
}

/// The QUIC client config for `config`.
pub fn client_config(config: &ClientConfig) -> Result<quinn::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs(&config.ca)? {
        roots
            .add(ca)
            .map_err(|e| Error::Config(format!("{}: {e}", config.ca.display())))?;
    }
    let chain = certs(&config.cert)?;
    let pem = read_private(&config.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| Error::Config(format!("{}: {e}", config.key.display())))?;
    drop(pem);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| Error::Config(format!("client certificate/key: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::Config(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .stream_receive_window((8u32 * 1024 * 1024).into())
        .receive_window((32u32 * 1024 * 1024).into())
        .send_window(32 * 1024 * 1024)
        .datagram_receive_buffer_size(None);
    if config.brokers.len() > 1 {
        // A cluster: a node that dies without a word is noticed in
        // seconds, so in-flight publishes move to the new leader.
        transport
            .keep_alive_interval(Some(Duration::from_millis(NODE_KEEP_ALIVE_MS)))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(Duration::from_millis(NODE_IDLE_MS_MAX))
                    .map_err(|e| Error::Config(e.to_string()))?,
            ));
    }
    client.transport_config(Arc::new(transport));
    Ok(client)
}
