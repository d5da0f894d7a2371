//! One QUIC connection: find its principal (from the verified certificate),
//! take its connection slot, then accept its streams and hand each to
//! [`crate::publish`] or [`crate::subscribe`] by its first frame.

use crate::answer;
use crate::audit::Event;
use crate::frames::{self, Budgeted};
use crate::metrics;
use crate::state::{BrokerState, ConnectionState};
use crate::{group, pattern, publish, subscribe, tls};
use serde_json::json;
use signet_proto::ErrorCode;
use signet_proto::frame::ClientFrame;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Serves a connection until it closes or the broker shuts down.
pub async fn serve(
    conn: quinn::Connection,
    broker: Arc<BrokerState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let remote = conn.remote_address().to_string();
    let Some(principal) = tls::principal_of(&conn) else {
        metrics::connection_refused("no_principal");
        tracing::warn!(%remote, "certificate names no principal; closing");
        broker.audit.record(Event::new(
            "connection_refused",
            json!({ "reason": "certificate names no principal", "remote": remote }),
        ));
        conn.close(
            ErrorCode::Forbidden.0.into(),
            b"certificate names no principal",
        );
        return;
    };
    let quota = match broker.quota(&broker.policy(), &principal) {
        Ok(quota) => quota,
        Err(e) => {
            tracing::error!(%principal, error = %e, "usage unreadable; closing");
            conn.close(ErrorCode::Unavailable.0.into(), b"storage unavailable");
            return;
        }
    };
    let Some(_slot) = quota.open_connection() else {
        metrics::quota_hit("connections");
        tracing::warn!(%principal, %remote, "connection quota reached; closing");
        broker.audit.record(Event::new(
            "quota_breach",
            json!({ "principal": principal, "kind": "connections", "remote": remote }),
        ));
        conn.close(
            ErrorCode::QuotaExceeded.0.into(),
            b"too many connections for this principal",
        );
        return;
    };
    tracing::info!(%principal, %remote, "connection accepted");
    broker.audit.record(Event::new(
        "connection_accepted",
        json!({ "principal": principal, "remote": remote }),
    ));
    let _live = LiveConnection::open(&broker, &principal, &remote);
    let state = Arc::new(ConnectionState::new(broker, &principal, conn.clone()));
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(dispatch(state.clone(), send, recv));
                }
                Err(e) => {
                    tracing::debug!(%principal, reason = %e, "connection closed");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = shutdown.changed() => {
                // Said explicitly: `Unavailable` tells the client to dial
                // again (dropping the connection would close it with 0).
                conn.close(ErrorCode::Unavailable.0.into(), b"broker shutting down");
                break;
            }
        }
    }
    streams.shutdown().await;
}

/// Reads a stream's first frame (within the connection's frame budget
/// and deadline, see [`frames`]) and serves the stream by its kind.
async fn dispatch(
    conn: Arc<ConnectionState>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let read = match frames::wait_start(&mut recv).await {
        Ok(Some(first)) => frames::read_started(&conn, &mut recv, first).await,
        Ok(None) => return,
        Err(e) => Err(e),
    };
    match read {
        Ok(Budgeted {
            frame: ClientFrame::Publish(first),
            budget,
        }) => publish::run(conn, first, budget, send, recv).await,
        Ok(Budgeted {
            frame: ClientFrame::Subscribe(sub),
            budget,
        }) => {
            drop(budget);
            subscribe::run(conn, sub, send, recv).await;
        }
        Ok(Budgeted {
            frame: ClientFrame::Consume(consume),
            budget,
        }) => {
            drop(budget);
            group::member::run(conn, consume, send, recv).await;
        }
        Ok(Budgeted {
            frame: ClientFrame::GroupInfo(info),
            budget,
        }) => {
            drop(budget);
            group::info::run(conn, info, send).await;
        }
        Ok(Budgeted {
            frame: ClientFrame::Settle(_),
            ..
        }) => {
            answer::refuse(
                &mut send,
                signet_proto::frame::Rejection::new(
                    ErrorCode::BadFrame,
                    "Settle outside a consume stream",
                ),
            )
            .await;
        }
        Ok(Budgeted {
            frame: ClientFrame::SubscribePattern(sub),
            budget,
        }) => {
            drop(budget);
            pattern::run(conn, sub, send, recv).await;
        }
        Ok(Budgeted {
            frame: ClientFrame::ClusterStatus,
            budget,
        }) => {
            drop(budget);
            cluster_status(&conn, send).await;
        }
        Ok(Budgeted {
            frame: ClientFrame::Placement,
            budget,
        }) => {
            drop(budget);
            placement(&conn, send).await;
        }
        Err(e) => answer::frame_failure(&conn, &mut send, &mut recv, e).await,
    }
}

/// An open connection: counted in the gauge, its closing audited however
/// it ends (also when the broker aborts it at shutdown).
struct LiveConnection {
    broker: Arc<BrokerState>,
    principal: String,
    remote: String,
}

impl LiveConnection {
    fn open(broker: &Arc<BrokerState>, principal: &str, remote: &str) -> LiveConnection {
        metrics::gauge_add(metrics::CONNECTIONS_LIVE, 1.0);
        LiveConnection {
            broker: broker.clone(),
            principal: principal.to_owned(),
            remote: remote.to_owned(),
        }
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        metrics::gauge_add(metrics::CONNECTIONS_LIVE, -1.0);
        self.broker.audit.record(Event::new(
            "connection_closed",
            json!({ "principal": self.principal, "remote": self.remote }),
        ));
    }
}

/// Answers a `ClusterStatus` (any authenticated principal may ask): the
/// cluster as this node sees it, or `NotClustered` from a single broker.
async fn cluster_status(conn: &ConnectionState, mut send: quinn::SendStream) {
    let Some(cluster) = clustered(conn, &mut send).await else {
        return;
    };
    let status = cluster.status().await;
    answer_once(
        send,
        signet_proto::frame::ServerFrame::ClusterStatus(status),
    )
    .await;
}

/// Answers a `Placement` (any authenticated principal may ask): the data
/// group count and each group's leader as this node knows them, or
/// `NotClustered` from a single broker.
async fn placement(conn: &ConnectionState, mut send: quinn::SendStream) {
    let Some(cluster) = clustered(conn, &mut send).await else {
        return;
    };
    let placement = signet_proto::frame::Placement {
        data_groups: cluster.data_groups(),
        leaders: (1..=cluster.data_groups())
            .map(|g| cluster.data_leader_client(g))
            .collect(),
    };
    answer_once(send, signet_proto::frame::ServerFrame::Placement(placement)).await;
}

/// This node's cluster part; a single broker refuses with `NotClustered`.
async fn clustered(
    conn: &ConnectionState,
    send: &mut quinn::SendStream,
) -> Option<Arc<crate::cluster::ClusterNode>> {
    let cluster = conn.broker.cluster.clone();
    if cluster.is_none() {
        answer::refuse(
            send,
            signet_proto::frame::Rejection::new(
                ErrorCode::NotClustered,
                "this broker is not a node of a cluster",
            ),
        )
        .await;
    }
    cluster
}

/// Writes the stream's one answer and finishes it.
async fn answer_once(mut send: quinn::SendStream, frame: signet_proto::frame::ServerFrame) {
    if signet_proto::stream::write_frame(&mut send, &frame)
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
}
