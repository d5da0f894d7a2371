//! TLS for the listener: TLS 1.3 only, ALPN `signet/1`, mutual TLS
//! mandatory (there is no listener without a client CA), and the principal
//! taken from the verified client certificate.

use crate::error::BrokerError;
use crate::limits::Limits;
use crate::settings::TlsPaths;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The only ALPN protocol the broker speaks.
pub const ALPN: &[u8] = b"signet/1";

/// URI SAN prefix that names a principal in a client certificate.
pub const PRINCIPAL_URI_PREFIX: &str = "signet://principal/";

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| BrokerError::Tls(format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| BrokerError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(BrokerError::Tls(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// Refuses a private key file that others can read (T16).
pub fn check_key_file_mode(path: &Path) -> Result<(), BrokerError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| BrokerError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(BrokerError::Unsafe(format!(
            "private key {} has mode {:o}: readable by group or others; run `chmod 600` on it",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// The QUIC server config: rustls with client auth against `paths.ca`.
pub fn server_config(
    paths: &TlsPaths,
    limits: &Limits,
) -> Result<quinn::ServerConfig, BrokerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&paths.ca)? {
        roots
            .add(ca)
            .map_err(|e| BrokerError::Tls(format!("client CA {}: {e}", paths.ca.display())))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| BrokerError::Tls(format!("client verifier: {e}")))?;
    let chain = read_certs(&paths.cert)?;
    check_key_file_mode(&paths.key)?;
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .map_err(|e| BrokerError::Tls(format!("{}: {e}", paths.key.display())))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| BrokerError::Tls(format!("broker certificate/key: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| BrokerError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let varint =
        |value: u64| quinn::VarInt::from_u64(value).map_err(|e| BrokerError::Tls(e.to_string()));
    transport
        .max_concurrent_bidi_streams(varint(limits.streams_per_connection_max)?)
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(std::time::Duration::from_millis(limits.idle_ms_max))
                .map_err(|e| BrokerError::Tls(e.to_string()))?,
        ))
        .keep_alive_interval(None)
        .stream_receive_window(varint(limits.quic_stream_window_bytes_max)?)
        .receive_window(varint(limits.quic_connection_window_bytes_max)?)
        .send_window(limits.quic_send_window_bytes_max);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The principal named by a verified client certificate: its URI SAN
/// `signet://principal/<name>`, else its subject CN.
pub fn principal_from_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && let Some(p) = uri.strip_prefix(PRINCIPAL_URI_PREFIX)
                && valid_principal(p)
            {
                return Some(p.to_owned());
            }
        }
    }
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    valid_principal(cn).then(|| cn.to_owned())
}

fn valid_principal(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && !name.chars().any(|c| c.is_control())
}

/// The principal of an established connection, from its verified peer
/// certificate (never from anything the client says).
pub fn principal_of(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    principal_from_cert(certs.first()?.as_ref())
}
