//! The node transport's TLS and its listener. QUIC with TLS 1.3 only and
//! mutual TLS both ways: a node presents its node certificate (URI SAN
//! `signet://node/<id>`, issued by the cluster CA) as server and as
//! client. A connecting peer is served only when its certificate chains
//! to the cluster CA **and** names a node id among `[cluster] peers`
//! (other than this node); every request must then say it comes from that
//! id, and a Raft call may only claim leadership or candidacy for it.
//! Anything else closes the connection before the request reaches Raft.

use super::types::MetaRaft;
use super::wire::{self, NODE_ALPN, PeerStatus, Reply, Request, Rpc};
use crate::cluster_config::ClusterSettings;
use crate::error::BrokerError;
use crate::limits::Limits;
use crate::settings::TlsPaths;
use crate::tls::{read_certs, read_private_key};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// URI SAN prefix that names a node in a node certificate.
pub const NODE_URI_PREFIX: &str = "signet://node/";

/// QUIC close code for a peer that is not a cluster node.
const NOT_A_NODE: u32 = 0x4e;

/// The DNS name a node certificate carries for node `id`, which a dialing
/// node asks for (so the name check ties the connection to that node).
pub fn node_dns_name(id: u64) -> String {
    format!("node-{id}.signet")
}

/// The node id named by a certificate: its one URI SAN
/// `signet://node/<id>` (a certificate naming two, or none, names none).
pub fn node_from_cert(der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut found: Option<u64> = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(id) = uri.strip_prefix(NODE_URI_PREFIX)
        {
            let id: u64 = id.parse().ok()?;
            if found.is_some_and(|f| f != id) {
                return None;
            }
            found = Some(id);
        }
    }
    found
}

/// The node id of a connection's verified peer certificate.
pub fn node_of(conn: &quinn::Connection) -> Option<u64> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_from_cert(certs.first()?.as_ref())
}

fn roots(paths: &TlsPaths) -> Result<RootCertStore, BrokerError> {
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&paths.ca)? {
        roots
            .add(ca)
            .map_err(|e| BrokerError::Tls(format!("cluster CA {}: {e}", paths.ca.display())))?;
    }
    Ok(roots)
}

fn identity(
    paths: &TlsPaths,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), BrokerError> {
    let chain = read_certs(&paths.cert)?;
    let pem = read_private_key(&paths.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| BrokerError::Tls(format!("{}: {e}", paths.key.display())))?;
    Ok((chain, key))
}

fn transport(limits: &Limits) -> Result<quinn::TransportConfig, BrokerError> {
    let mut transport = quinn::TransportConfig::default();
    let varint =
        |value: u64| quinn::VarInt::from_u64(value).map_err(|e| BrokerError::Tls(e.to_string()));
    transport
        .max_concurrent_bidi_streams(varint(limits.streams_per_connection_max)?)
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(limits.idle_ms_max))
                .map_err(|e| BrokerError::Tls(e.to_string()))?,
        ))
        .keep_alive_interval(Some(Duration::from_millis(limits.idle_ms_max / 3)))
        .datagram_receive_buffer_size(None);
    Ok(transport)
}

/// The server side: client certificates mandatory and verified against
/// the cluster CA, ALPN `signet-node/1`, no resumption, no early data.
pub fn server_config(
    paths: &TlsPaths,
    limits: &Limits,
) -> Result<quinn::ServerConfig, BrokerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(paths)?), provider.clone())
            .build()
            .map_err(|e| BrokerError::Tls(format!("node verifier: {e}")))?;
    let (chain, key) = identity(paths)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| BrokerError::Tls(format!("node certificate/key: {e}")))?;
    tls.alpn_protocols = vec![NODE_ALPN.to_vec()];
    tls.max_early_data_size = 0;
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| BrokerError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport(limits)?));
    Ok(config)
}

/// The client side: the peer's certificate verified against the cluster
/// CA (and the name `node-<id>.signet`), this node's certificate sent.
pub fn client_config(
    paths: &TlsPaths,
    limits: &Limits,
) -> Result<quinn::ClientConfig, BrokerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key) = identity(paths)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .with_root_certificates(roots(paths)?)
        .with_client_auth_cert(chain, key)
        .map_err(|e| BrokerError::Tls(format!("node certificate/key: {e}")))?;
    tls.alpn_protocols = vec![NODE_ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| BrokerError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport(limits)?));
    Ok(config)
}

/// What the listener needs.
pub(crate) struct Served {
    pub raft: MetaRaft,
    /// The data groups this node is a member of, by group id.
    pub data: Vec<(u64, super::types::DataRaft)>,
    pub settings: ClusterSettings,
    pub frame_bytes_max: u64,
    pub rpc_timeout: Duration,
    pub handshakes_max: usize,
    /// Set while the node is cut off from its peers: calls are read and
    /// dropped unanswered, as a partition would lose them.
    pub isolated: Arc<std::sync::atomic::AtomicBool>,
    /// When a peer with another `data_groups` was last logged (once per
    /// [`SHAPE_WARNING_EVERY`], not once per heartbeat).
    pub warned: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often a peer whose `data_groups` differs is logged.
const SHAPE_WARNING_EVERY: Duration = Duration::from_secs(10);

impl Served {
    /// Logs a peer whose `data_groups` differs, at most once per
    /// [`SHAPE_WARNING_EVERY`].
    fn warn_shape(&self, peer: u64, theirs: u64) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_none_or(|at| at.elapsed() >= SHAPE_WARNING_EVERY) {
            *warned = Some(std::time::Instant::now());
            tracing::error!(
                peer,
                theirs,
                ours = self.settings.data_groups,
                "node transport: refused a peer whose [cluster] data_groups differs (every node must say the same)"
            );
        }
    }

    fn data_group(&self, group: u64) -> Option<&super::types::DataRaft> {
        self.data
            .iter()
            .find(|(id, _)| *id == group)
            .map(|(_, r)| r)
    }
}

/// Accepts peers until shutdown.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    served: Arc<Served>,
    mut shutdown: watch::Receiver<bool>,
) {
    let handshakes = Arc::new(Semaphore::new(served.handshakes_max));
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        if !incoming.remote_address_validated() {
            let _ = incoming.retry();
            continue;
        }
        let Ok(slot) = handshakes.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let served = served.clone();
        connections.spawn(async move {
            let handshake = tokio::time::timeout(served.rpc_timeout, incoming).await;
            drop(slot);
            if let Ok(Ok(conn)) = handshake {
                serve_peer(conn, served).await;
            }
        });
    }
    connections.shutdown().await;
}

/// Whether `id` may speak to this node as a peer.
fn is_peer(settings: &ClusterSettings, id: u64) -> bool {
    id != settings.node_id && settings.peer(id).is_some()
}

async fn serve_peer(conn: quinn::Connection, served: Arc<Served>) {
    let remote = conn.remote_address();
    let Some(peer) = node_of(&conn).filter(|id| is_peer(&served.settings, *id)) else {
        tracing::warn!(%remote, "node transport: refused a certificate that names no cluster peer");
        conn.close(NOT_A_NODE.into(), b"not a node of this cluster");
        return;
    };
    let mut streams = JoinSet::new();
    loop {
        let (send, recv) = tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => continue,
        };
        let served = served.clone();
        let conn = conn.clone();
        streams.spawn(async move {
            serve_stream(conn, peer, send, recv, served).await;
        });
    }
    streams.shutdown().await;
}

async fn serve_stream(
    conn: quinn::Connection,
    peer: u64,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    served: Arc<Served>,
) {
    let read = tokio::time::timeout(
        served.rpc_timeout,
        wire::read::<Request>(&mut recv, served.frame_bytes_max),
    )
    .await;
    let Ok(Ok(request)) = read else {
        conn.close(NOT_A_NODE.into(), b"bad node frame");
        return;
    };
    if request.from != peer || request.rpc.claimed_node().is_some_and(|id| id != peer) {
        tracing::warn!(
            peer,
            claimed = request.from,
            "node transport: a peer spoke for another node; connection closed"
        );
        let _ = wire::write(
            &mut send,
            &Reply::Refused("not the node the certificate names".into()),
        )
        .await;
        conn.close(NOT_A_NODE.into(), b"a node speaks for itself only");
        return;
    }
    if served.isolated.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    // A node counting other data groups places topics elsewhere: its
    // entries and votes would mix two placements in one log.
    if request.data_groups != served.settings.data_groups {
        served.warn_shape(peer, request.data_groups);
        let why = format!(
            "data_groups differ: {} at node {peer}, {} at node {}",
            request.data_groups, served.settings.data_groups, served.settings.node_id
        );
        if wire::write(&mut send, &Reply::Refused(why)).await.is_ok() {
            let _ = send.finish();
        }
        return;
    }
    let raft = &served.raft;
    let reply = match request.rpc {
        Rpc::Append(r) => Reply::Append(raft.append_entries(r).await),
        Rpc::Vote(r) => Reply::Vote(raft.vote(r).await),
        Rpc::Snapshot(r) => Reply::Snapshot(raft.install_snapshot(r).await),
        Rpc::Status => {
            let metrics = raft.metrics().borrow().clone();
            Reply::Status(PeerStatus {
                state: super::state_name(metrics.state).to_owned(),
                term: metrics.current_term,
            })
        }
        Rpc::DataAppend(group, r) => match served.data_group(group) {
            Some(data) => Reply::DataAppend(data.append_entries(r).await),
            None => Reply::Refused(format!("no data group {group} here")),
        },
        Rpc::DataVote(group, r) => match served.data_group(group) {
            Some(data) => Reply::DataVote(data.vote(r).await),
            None => Reply::Refused(format!("no data group {group} here")),
        },
        Rpc::DataSnapshot(group, r) => match served.data_group(group) {
            Some(data) => Reply::DataSnapshot(data.install_snapshot(r).await),
            None => Reply::Refused(format!("no data group {group} here")),
        },
    };
    if wire::write(&mut send, &reply).await.is_ok() {
        let _ = send.finish();
    }
}
