//! Refusals written to peers: a typed [`Rejection`] on the stream, counted
//! in the metrics. Details are short and safe; internals go to the log.

use crate::frames::FrameError;
use crate::metrics;
use crate::state::ConnectionState;
use signet_proto::ErrorCode;
use signet_proto::codec::DecodeError;
use signet_proto::frame::{Rejection, ServerFrame};
use signet_proto::stream::{ReadError, write_frame};

/// Refuses a stream: writes the rejection and finishes the stream.
pub async fn refuse(send: &mut quinn::SendStream, rejection: Rejection) {
    metrics::rejected(rejection.code);
    let _ = write_frame(send, &ServerFrame::Error(rejection)).await;
    let _ = send.finish();
}

/// Answers a frame that could not be read: the peer gets a typed error,
/// then the connection is closed (a peer that sends bad frames is broken
/// or hostile). Other connections are not affected.
pub async fn frame_error(conn: &ConnectionState, send: &mut quinn::SendStream, error: ReadError) {
    let rejection = match &error {
        ReadError::Decode(DecodeError::TooLarge { .. }) => {
            Rejection::new(ErrorCode::TooLarge, "frame larger than the broker allows")
        }
        ReadError::Decode(_) | ReadError::Truncated => {
            Rejection::new(ErrorCode::BadFrame, "malformed frame")
        }
        ReadError::Io(_) => return,
    };
    tracing::warn!(principal = %conn.principal, code = %rejection.code, error = %error, "bad frame; closing connection");
    let (code, detail) = (rejection.code, rejection.detail.clone());
    refuse(send, rejection).await;
    conn.conn.close(code.0.into(), detail.as_bytes());
}

/// Answers a frame that could not be read: as [`frame_error`] for a bad
/// frame (the connection is closed); a frame that did not arrive in time
/// is refused on its stream alone, and the peer is told to stop sending.
pub async fn frame_failure(
    conn: &ConnectionState,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    error: FrameError,
) {
    match error {
        FrameError::Read(e) => frame_error(conn, send, e).await,
        FrameError::TimedOut(deadline) => {
            tracing::warn!(principal = %conn.principal, ?deadline, "frame not received in time; stream refused");
            let _ = recv.stop(ErrorCode::BadFrame.0.into());
            refuse(
                send,
                Rejection::new(
                    ErrorCode::BadFrame,
                    "frame not received within the broker's deadline",
                ),
            )
            .await;
        }
    }
}
