//! Raw frames for attacks whose answer may be a frame or a closed
//! connection: a frame the broker cannot decode gets `Error(BadFrame)`
//! and the connection is closed, and the close may overtake the frame.

use super::within;
use signet_client::Client;
use signet_proto::ErrorCode;
use signet_proto::codec;
use signet_proto::frame::{ClientFrame, Outcome, Publish, ServerFrame};
use signet_proto::stream::read_frame;

/// What the broker answered one raw frame.
#[derive(Debug)]
pub enum Answer {
    /// A frame on the stream.
    Frame(ServerFrame),
    /// The connection was closed with this application code.
    Closed(u64),
}

impl Answer {
    /// Whether the frame was refused as a whole with `code`: an `Error`
    /// frame, or the connection closed with that code.
    pub fn refused_with(&self, code: ErrorCode) -> bool {
        match self {
            Answer::Frame(ServerFrame::Error(r)) => r.code == code,
            Answer::Closed(c) => *c == u64::from(code.0),
            Answer::Frame(_) => false,
        }
    }

    /// Whether no envelope of the frame was acknowledged.
    pub fn nothing_acked(&self) -> bool {
        match self {
            Answer::Frame(ServerFrame::Results(r)) => {
                r.outcomes.iter().all(|o| matches!(o, Outcome::Nack(_)))
            }
            Answer::Frame(ServerFrame::Error(_)) | Answer::Closed(_) => true,
            Answer::Frame(_) => false,
        }
    }
}

/// Sends `frame` (whole: length prefix and body) on a new stream of
/// `client`'s connection and returns the answer.
pub async fn send_bytes(client: &Client, frame: &[u8]) -> Answer {
    let conn = client.connection();
    let (mut send, mut recv) = within(conn.open_bi()).await.expect("stream");
    // The broker may close the connection before it read everything.
    let _ = within(send.write_all(frame)).await;
    match within(read_frame::<ServerFrame, _>(&mut recv, u32::MAX)).await {
        Ok(Some(frame)) => Answer::Frame(frame),
        _ => match within(conn.closed()).await {
            quinn::ConnectionError::ApplicationClosed(c) => Answer::Closed(c.error_code.into()),
            other => panic!("connection ended without a code: {other:?}"),
        },
    }
}

/// Sends one `Publish` on a new stream and returns the answer.
pub async fn send_publish(client: &Client, publish: Publish) -> Answer {
    let frame = codec::encode(&ClientFrame::Publish(publish)).expect("encode");
    send_bytes(client, &frame).await
}
