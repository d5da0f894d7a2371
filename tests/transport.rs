//! Transport exhaustion before any check (THREATS T12): frames that stall
//! mid-body cannot pin the broker's memory or stay open past their
//! deadline, and handshakes that stall cannot lock other addresses out.

mod common;

use common::codes::nack_codes;
use common::process::{spawn_broker, status_kib};
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use signet_proto::frame::{ClientFrame, ServerFrame};
use signet_proto::stream::{read_frame, write_frame};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const MIB: usize = 1024 * 1024;

/// Reproduction: a stream allocated what its length prefix announced (now:
/// what arrived) with no deadline for the body, so streams that announce
/// 4 MiB, send most of it and stall pinned memory for as long as they liked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_frames_neither_pin_memory_nor_outlive_their_deadline() {
    const STREAMS: usize = 48;
    const SENT: usize = 3 * MIB + MIB / 2;
    // The frame budget (16 MiB) and the QUIC connection window (8 MiB) the
    // broker may hold for one connection, plus allocator and QUIC overhead
    // (about 60 MiB in all, measured); the old broker grew by about 170 MiB.
    const GROWTH_MAX_KIB: u64 = 96 * 1024;
    let mut sandbox = sandbox(&principals());
    sandbox.set_extra_policy(
        "[limits]\nframe_read_ms_max = 300\ninflight_bytes_max = 16777216\nquic_connection_window_bytes_max = 8388608\n",
    );
    let (mut broker, _log) = spawn_broker(&mut sandbox, "warn,signet_broker=info").await;
    let pid = broker.id().unwrap();
    let bob = client(&sandbox, "bob").await;
    within(bob.publish("billing.warm", b"{}".to_vec()))
        .await
        .unwrap();
    let baseline = status_kib(pid, "VmRSS");

    // One connection, many streams: each announces a 4 MiB frame, sends
    // 3.5 MiB of it and stalls.
    let mallory = client(&sandbox, "alice").await;
    let body = Arc::new(vec![0x91u8; SENT]);
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (mut send, recv) = within(mallory.connection().open_bi()).await.unwrap();
        let body = body.clone();
        let writer = tokio::spawn(async move {
            send.write_all(&(4 * MIB as u32).to_be_bytes()).await?;
            send.write_all(&body).await?;
            // Stall: keep the stream open without finishing it.
            anyhow::Ok(send)
        });
        streams.push((writer, recv));
    }
    // Every stream sent what it could: the broker read it all, or stopped it.
    let mut held = Vec::new();
    for (writer, _) in &mut streams {
        if let Ok(Ok(send)) = within(writer).await {
            held.push(send);
        }
    }
    let peak = status_kib(pid, "VmHWM");
    eprintln!(
        "broker memory: baseline {baseline} KiB, peak {peak} KiB after {STREAMS} stalled frames"
    );
    assert!(
        peak.saturating_sub(baseline) <= GROWTH_MAX_KIB,
        "broker memory grew by {} KiB (peak {peak} KiB, baseline {baseline} KiB) for {STREAMS} stalled {}-byte frames",
        peak.saturating_sub(baseline),
        SENT
    );

    // A well-behaved client is served meanwhile.
    assert_eq!(
        within(bob.publish("billing.calm", b"{}".to_vec()))
            .await
            .unwrap(),
        0
    );

    // Every stalled stream is closed by the broker after its deadline.
    for (i, (_, mut recv)) in streams.into_iter().enumerate() {
        let answer = within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX)).await;
        match answer {
            Ok(Some(ServerFrame::Error(r))) => {
                assert_eq!(
                    r.code,
                    signet_proto::ErrorCode::BadFrame,
                    "stream {i}: {r:?}"
                )
            }
            Ok(None) | Err(_) => {}
            Ok(Some(other)) => panic!("stream {i}: unexpected {other:?}"),
        }
    }
    drop(held);
    broker.start_kill().unwrap();
    within(broker.wait()).await.unwrap();
}

/// The TLS client config of a sandbox principal, for raw quinn endpoints.
fn quic_client(sandbox: &Sandbox, name: &str) -> quinn::ClientConfig {
    let pki = sandbox.pki_dir();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.join("ca.crt")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(pki.join(format!("clients/{name}.crt")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.join(format!("clients/{name}.key"))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"signet/1".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(quic))
}

/// Connects as `name` from `local` (e.g. 127.0.0.2) and publishes one
/// signed envelope on a raw stream; returns its outcome codes.
async fn publish_from(
    sandbox: &Sandbox,
    name: &str,
    local: IpAddr,
    topic: &str,
) -> anyhow::Result<Vec<Option<signet_proto::ErrorCode>>> {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(local, 0))?;
    endpoint.set_default_client_config(quic_client(sandbox, name));
    let conn = endpoint.connect(sandbox.addr()?, "localhost")?.await?;
    let key = signing_key(sandbox, name);
    let publish = signed(&key, 1, vec![envelope(key.id(), topic, fresh_seq(), b"{}")]);
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &ClientFrame::Publish(publish)).await?;
    let answer = read_frame::<ServerFrame, _>(&mut recv, u32::MAX)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no answer"))?;
    conn.close(0u32.into(), b"done");
    Ok(nack_codes(answer))
}

/// A UDP relay in front of the broker: each client flow gets through QUIC
/// address validation (its Initial, the broker's Retry, its Initial with
/// the token) and then every datagram is dropped, so the broker holds a
/// handshake that never completes. Upstream sockets bind to `upstream`.
/// Sends `true` on the returned channel when a flow passed the Retry, or
/// `false` when the broker answered its first Initial with anything else
/// (a refusal).
async fn stalling_relay(
    broker: SocketAddr,
    upstream: IpAddr,
) -> (SocketAddr, mpsc::UnboundedReceiver<bool>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let (passed, passed_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        struct Flow {
            up: Arc<UdpSocket>,
            retried: Arc<AtomicBool>,
            forwarded: u32,
        }
        let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = front.recv_from(&mut buf).await else {
                return;
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = flows.entry(from) {
                let up = Arc::new(UdpSocket::bind((upstream, 0)).await.unwrap());
                let retried = Arc::new(AtomicBool::new(false));
                let (up2, retried2, front2) = (up.clone(), retried.clone(), front.clone());
                let refused = passed.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut first = true;
                    while let Ok(n) = up2.recv(&mut buf).await {
                        // QUIC v1 long header, packet type Retry.
                        let retry = n > 0 && buf[0] & 0xf0 == 0xf0;
                        if retry && !retried2.swap(true, Ordering::SeqCst) {
                            let _ = front2.send_to(&buf[..n], from).await;
                        } else if first && !retry {
                            let _ = refused.send(false);
                        }
                        first = false;
                    }
                });
                slot.insert(Flow {
                    up,
                    retried,
                    forwarded: 0,
                });
            }
            let Some(flow) = flows.get_mut(&from) else {
                continue;
            };
            let retried = flow.retried.load(Ordering::SeqCst);
            if flow.forwarded == 0 || (retried && flow.forwarded == 1) {
                let _ = flow.up.send_to(&buf[..n], broker).await;
                flow.forwarded += 1;
                if flow.forwarded == 2 {
                    let _ = passed.send(true);
                }
            }
        }
    });
    (addr, passed_rx)
}

/// Opens `count` connections through the relay, each from its own port;
/// they pass address validation and stall in the handshake (or are
/// refused at once). Returns the endpoints (the attempts live as long as
/// they do).
async fn stall_handshakes(
    sandbox: &Sandbox,
    relay: SocketAddr,
    passed: &mut mpsc::UnboundedReceiver<bool>,
    count: usize,
) -> Vec<quinn::Endpoint> {
    let mut endpoints = Vec::new();
    for _ in 0..count {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quic_client(sandbox, "alice"));
        let connecting = endpoint.connect(relay, "localhost").unwrap();
        tokio::spawn(async move {
            let _ = connecting.await;
        });
        within(passed.recv()).await.expect("the relay runs");
        endpoints.push(endpoint);
    }
    endpoints
}

/// Reproduction: the global connection permit was taken before the
/// handshake, so one host that passed address validation and stalled its
/// handshakes held every slot and nobody else could connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_from_one_address_do_not_lock_others_out() {
    let mut sandbox = start_with(
        &principals(),
        "[limits]\nmax_connections = 4\nhandshake_timeout_ms = 60000\n",
    )
    .await;
    let (relay, mut passed) = stalling_relay(sandbox.addr().unwrap(), [127, 0, 0, 1].into()).await;
    let _stalled = stall_handshakes(&sandbox, relay, &mut passed, 8).await;
    let served = within(publish_from(
        &sandbox,
        "alice",
        [127, 0, 0, 2].into(),
        "orders.elsewhere",
    ))
    .await;
    assert!(
        matches!(served, Ok(ref codes) if codes == &[None]),
        "a client from 127.0.0.2 was not served while 8 handshakes from 127.0.0.1 stalled: {served:?}"
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_progress_are_capped_per_address() {
    let mut sandbox = start_with(
        &principals(),
        "[limits]\nhandshakes_per_ip_max = 2\nhandshake_ms_max = 60000\n",
    )
    .await;
    let (relay, mut passed) = stalling_relay(sandbox.addr().unwrap(), [127, 0, 0, 1].into()).await;
    let _stalled = stall_handshakes(&sandbox, relay, &mut passed, 2).await;
    // A third handshake from 127.0.0.1 is refused while two are in progress.
    let third = within(publish_from(
        &sandbox,
        "alice",
        [127, 0, 0, 1].into(),
        "orders.same_host",
    ))
    .await;
    assert!(
        third.is_err(),
        "a third handshake from one address was let in: {third:?}"
    );
    // Another address is served.
    let other = within(publish_from(
        &sandbox,
        "alice",
        [127, 0, 0, 2].into(),
        "orders.other_host",
    ))
    .await
    .unwrap();
    assert_eq!(other, vec![None]);
    sandbox.stop().await;
}
