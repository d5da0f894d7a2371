//! TLS for the listener: TLS 1.3 only, ALPN `signet/1`, mutual TLS
//! mandatory (there is no listener without a client CA), no session
//! resumption, and the principal taken from the verified client
//! certificate's `signet://principal/<name>` URI SAN (never its CN).

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
use zeroize::Zeroizing;

/// The only ALPN protocol the broker speaks.
pub const ALPN: &[u8] = b"signet/1";

/// URI SAN prefix that names a principal in a client certificate.
pub const PRINCIPAL_URI_PREFIX: &str = "signet://principal/";

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
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
    let meta = std::fs::metadata(path).map_err(|source| BrokerError::Read {
        path: path.to_owned(),
        source,
    })?;
    check_mode(path, &meta)
}

fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), BrokerError> {
    use std::os::unix::fs::PermissionsExt;
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

/// Reads a private key file: refused when others can read it (checked on
/// the file opened, not the path), and the bytes read are wiped when
/// dropped.
pub fn read_private_key(path: &Path) -> Result<Zeroizing<Vec<u8>>, BrokerError> {
    use std::io::Read;
    let read_error = |source| BrokerError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    check_mode(path, &meta)?;
    // Sized up front so the buffer never moves (a move would leave a copy).
    let size = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut bytes = Zeroizing::new(Vec::with_capacity(size));
    file.read_to_end(&mut bytes).map_err(read_error)?;
    Ok(bytes)
}

/// The rustls server config: TLS 1.3 only, client certificates verified
/// against `paths.ca`, ALPN `signet/1`, no early data, and no session
/// resumption at all (no tickets, no session cache), so every connection
/// runs a full handshake with a certificate that is valid at that moment.
pub fn rustls_config(paths: &TlsPaths) -> Result<rustls::ServerConfig, BrokerError> {
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
    let pem = read_private_key(&paths.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| BrokerError::Tls(format!("{}: {e}", paths.key.display())))?;
    drop(pem);
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| BrokerError::Tls(format!("broker certificate/key: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(tls)
}

/// The QUIC server config: [`rustls_config`] and the transport bounds from
/// the limits. QUIC datagrams are off (the broker reads streams only).
pub fn server_config(
    paths: &TlsPaths,
    limits: &Limits,
) -> Result<quinn::ServerConfig, BrokerError> {
    let tls = rustls_config(paths)?;
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
        .send_window(limits.quic_send_window_bytes_max)
        .datagram_receive_buffer_size(None);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The principal named by a verified client certificate: its one URI SAN
/// `signet://principal/<name>`. A certificate without one (a subject CN
/// alone, as a shared enterprise CA issues them) or naming two different
/// principals names none: the CN is never used.
pub fn principal_from_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut found: Option<&str> = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(p) = uri.strip_prefix(PRINCIPAL_URI_PREFIX)
        {
            if !valid_principal(p) || found.is_some_and(|f| f != p) {
                return None;
            }
            found = Some(p);
        }
    }
    found.map(str::to_owned)
}

/// 1..=128 bytes, no control character and no whitespace (names with a
/// space are kept for the broker's own accounts).
fn valid_principal(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// The principal of an established connection, from its verified peer
/// certificate (never from anything the client says).
pub fn principal_of(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    principal_from_cert(certs.first()?.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_config_resumes_no_session() {
        let dir = tempfile::tempdir().unwrap();
        signet_admin::pki::init(dir.path(), &[]).unwrap();
        let tls = rustls_config(&TlsPaths {
            ca: dir.path().join("ca.crt"),
            cert: dir.path().join("broker.crt"),
            key: dir.path().join("broker.key"),
        })
        .unwrap();
        assert_eq!(tls.send_tls13_tickets, 0, "no stateful TLS 1.3 tickets");
        assert!(!tls.ticketer.enabled(), "no stateless tickets");
        assert!(!tls.session_storage.can_cache(), "no session cache");
        assert!(
            !tls.session_storage.put(b"id".to_vec(), b"session".to_vec()),
            "the cache keeps nothing"
        );
        assert_eq!(tls.max_early_data_size, 0, "no 0-RTT");
    }
}
