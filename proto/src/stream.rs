//! Reading and writing frames over an async byte stream (a QUIC stream).
//! The length prefix is checked before the body is allocated.

use crate::codec::{self, DecodeError, LENGTH_PREFIX_BYTES};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Most bytes a frame read asks for at once; the body buffer grows by at
/// most this much ahead of the bytes actually received.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads one frame. `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<T, R>(reader: &mut R, frame_bytes_max: u32) -> Result<Option<T>, ReadError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let mut filled = 0;
    while filled < LENGTH_PREFIX_BYTES {
        let n = reader.read(&mut prefix[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(ReadError::Truncated)
            };
        }
        filled += n;
    }
    let len = codec::body_len(prefix, frame_bytes_max)?;
    // The buffer grows as bytes arrive, never ahead of them: a peer that
    // announces a large frame and sends little pins little.
    let mut body = Vec::with_capacity(len.min(READ_CHUNK_BYTES));
    while body.len() < len {
        let want = (len - body.len()).min(READ_CHUNK_BYTES);
        let n = (&mut *reader)
            .take(want as u64)
            .read_to_end(&mut body)
            .await?;
        if n == 0 {
            return Err(ReadError::Truncated);
        }
    }
    Ok(Some(codec::decode(&body)?))
}

/// Why a frame could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Encode(#[from] codec::EncodeError),
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one frame.
pub async fn write_frame<T, W>(writer: &mut W, frame: &T) -> Result<(), WriteError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let bytes = codec::encode(frame)?;
    writer.write_all(&bytes).await?;
    Ok(())
}

/// Socket buffer size asked for QUIC endpoints, in bytes. The kernel caps
/// it at `net.core.rmem_max`/`wmem_max`. With the default (about 200 KiB) a
/// busy loopback peer overflows the receive buffer, and every dropped
/// datagram costs a QUIC loss-recovery delay.
pub const UDP_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// A UDP socket bound to `addr` with large send and receive buffers, for a
/// QUIC endpoint.
pub fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    // Best effort: a smaller buffer still works, only with more drops.
    socket.set_recv_buffer_size(UDP_BUFFER_BYTES).ok();
    socket.set_send_buffer_size(UDP_BUFFER_BYTES).ok();
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
