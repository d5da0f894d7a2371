//! A publish stream: pipelined `Publish` frames in, one `Results` frame out
//! per batch, in order. Reading and checking run ahead of the answers by at
//! most `limits.max_inflight_batches` batches per connection (all its
//! publish streams together); past that the stream stops being read, and
//! QUIC flow control pushes back on the publisher.

use crate::session::{PendingBatch, Session};
use signet_proto::ErrorCode;
use signet_proto::frame::{ClientFrame, Publish, Rejection, ServerFrame};
use signet_proto::stream::{read_frame, write_frame};
use std::sync::Arc;
use tokio::sync::mpsc;

enum Pending {
    Batch(PendingBatch),
    /// The stream ends with this error after the batches before it.
    Fail(Rejection),
}

/// Serves one publish stream, starting with its first batch.
pub(crate) async fn run(
    session: Arc<Session>,
    first: Publish,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (queue, mut pending) =
        mpsc::channel::<Pending>(session.shared.config.limits.max_inflight_batches);
    let reader = {
        let session = session.clone();
        async move {
            let mut next = Some(first);
            loop {
                let publish = match next.take() {
                    Some(p) => p,
                    None => match read_frame::<ClientFrame, _>(
                        &mut recv,
                        session.shared.config.frame_bytes_max,
                    )
                    .await
                    {
                        Ok(Some(ClientFrame::Publish(p))) => p,
                        Ok(Some(ClientFrame::Subscribe(_))) => {
                            let r = Rejection::new(
                                ErrorCode::BadFrame,
                                "subscribe on a publish stream",
                            );
                            let _ = queue.send(Pending::Fail(r)).await;
                            return None;
                        }
                        Ok(None) => return None,
                        Err(e) => return Some(e),
                    },
                };
                let Ok(permit) = session.inflight.clone().acquire_owned().await else {
                    return None;
                };
                let item = match session.ingest(publish, permit).await {
                    Ok(batch) => Pending::Batch(batch),
                    Err(rejection) => Pending::Fail(rejection),
                };
                let fail = matches!(item, Pending::Fail(_));
                if queue.send(item).await.is_err() || fail {
                    return None;
                }
            }
        }
    };
    let writer = async move {
        while let Some(item) = pending.recv().await {
            match item {
                Pending::Batch(batch) => {
                    let (results, permit) = batch.resolve().await;
                    let written = write_frame(&mut send, &ServerFrame::Results(results)).await;
                    drop(permit);
                    if written.is_err() {
                        break;
                    }
                }
                Pending::Fail(rejection) => {
                    crate::metrics::rejected(rejection.code);
                    let _ = write_frame(&mut send, &ServerFrame::Error(rejection)).await;
                    break;
                }
            }
        }
        send
    };
    let (read_error, mut send) = tokio::join!(reader, writer);
    match read_error {
        Some(e) => session.frame_error(&mut send, e).await,
        None => {
            let _ = send.finish();
        }
    }
}
