//! Reading a client's frames within the connection's bounds, so that what
//! a peer sends can pin neither memory nor a stream before any check:
//!
//! - waiting for a frame to start costs nothing (an idle stream holds no
//!   buffer), so there is no deadline before its first byte;
//! - once it started, its length prefix and then its body must each arrive
//!   within `limits.frame_read_ms_max`;
//! - before its body is read the frame takes its announced length from the
//!   connection's frame budget (`limits.inflight_bytes_max`), held until
//!   the frame is answered: all frames being read and batches in flight on
//!   a connection together hold at most that many bytes.
//!
//! The body is read into a buffer of the announced length, whose bytes the
//! frame budget already holds.

use crate::state::ConnectionState;
use signet_proto::codec::{self, DecodeError, LENGTH_PREFIX_BYTES};
use signet_proto::frame::ClientFrame;
use signet_proto::stream::{READ_CHUNK_BYTES, ReadError};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Too large, malformed, truncated, or the stream failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The frame started but did not arrive within `frame_read_ms_max`.
    #[error("frame not received within {0:?}")]
    TimedOut(Duration),
}

/// A frame read, with its share of the connection's frame budget (hold it
/// until the frame is answered).
#[derive(Debug)]
pub struct Budgeted {
    /// The frame.
    pub frame: ClientFrame,
    /// Its bytes in the connection's frame budget.
    pub budget: OwnedSemaphorePermit,
}

fn io(error: impl Into<std::io::Error>) -> FrameError {
    FrameError::Read(ReadError::Io(error.into()))
}

/// Waits for the first byte of the next frame, however long; `None` when
/// the stream ends cleanly between frames.
pub async fn wait_start(recv: &mut quinn::RecvStream) -> Result<Option<u8>, FrameError> {
    let mut first = [0u8; 1];
    match recv.read(&mut first).await.map_err(io)? {
        None | Some(0) => Ok(None),
        Some(_) => Ok(Some(first[0])),
    }
}

/// Reads the rest of a frame that started with `first`: the length prefix
/// within the deadline, then its share of the frame budget (however long
/// that takes: other frames of this connection are being answered), then
/// the body within the deadline.
pub async fn read_started(
    conn: &ConnectionState,
    recv: &mut quinn::RecvStream,
    first: u8,
) -> Result<Budgeted, FrameError> {
    let limits = conn.broker.limits();
    let deadline = Duration::from_millis(limits.frame_read_ms_max);
    let mut prefix = [first, 0, 0, 0];
    match tokio::time::timeout(
        deadline,
        recv.read_exact(&mut prefix[1..LENGTH_PREFIX_BYTES]),
    )
    .await
    {
        Err(_) => return Err(FrameError::TimedOut(deadline)),
        Ok(Err(quinn::ReadExactError::FinishedEarly(_))) => {
            return Err(FrameError::Read(ReadError::Truncated));
        }
        Ok(Err(quinn::ReadExactError::ReadError(e))) => return Err(io(e)),
        Ok(Ok(())) => {}
    }
    let len = codec::body_len(prefix, limits.frame_bytes_max_u32()).map_err(ReadError::from)?;
    let share = u32::try_from(len.min(limits.inflight_bytes())).unwrap_or(u32::MAX);
    let budget = conn
        .frame_budget
        .clone()
        .acquire_many_owned(share)
        .await
        .map_err(|_| io(std::io::Error::other("connection closing")))?;
    let body = match tokio::time::timeout(deadline, read_body(recv, len)).await {
        Err(_) => return Err(FrameError::TimedOut(deadline)),
        Ok(body) => body?,
    };
    let frame = codec::decode::<ClientFrame>(&body).map_err(ReadError::from)?;
    Ok(Budgeted { frame, budget })
}

/// Reads exactly `len` body bytes. The buffer is sized once (its bytes are
/// in the frame budget already); its pages are only touched, and so only
/// resident, as bytes arrive.
async fn read_body(recv: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, FrameError> {
    let mut body = Vec::with_capacity(len);
    while body.len() < len {
        let want = (len - body.len()).min(READ_CHUNK_BYTES);
        match recv.read_chunk(want, true).await.map_err(io)? {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => return Err(FrameError::Read(ReadError::Truncated)),
        }
    }
    Ok(body)
}

impl From<DecodeError> for FrameError {
    fn from(e: DecodeError) -> FrameError {
        FrameError::Read(ReadError::Decode(e))
    }
}
