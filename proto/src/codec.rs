//! The one frame codec: `u32` big-endian body length, then a MessagePack
//! body. The length is checked against the limit before any allocation; a
//! body must decode completely, with no trailing bytes; every list in it is
//! capped while it is decoded (see `bounded`), so a body decodes into at
//! most a small multiple of its size.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Size of the length prefix, in bytes.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("empty frame")]
    Empty,
    #[error("malformed frame body")]
    Malformed,
    #[error("trailing bytes after frame body")]
    Trailing,
}

/// Why a frame could not be encoded (only for values larger than a frame can carry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("value could not be serialized")]
    Serialize,
    #[error("frame larger than u32::MAX bytes")]
    TooLarge,
}

/// Encodes `frame` as length prefix + body.
pub fn encode<T: Serialize>(frame: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; LENGTH_PREFIX_BYTES];
    rmp_serde::encode::write(&mut out, frame).map_err(|_| EncodeError::Serialize)?;
    let body = u32::try_from(out.len() - LENGTH_PREFIX_BYTES).map_err(|_| EncodeError::TooLarge)?;
    out[..LENGTH_PREFIX_BYTES].copy_from_slice(&body.to_be_bytes());
    Ok(out)
}

/// Encodes a value as a bare MessagePack body (no length prefix), e.g. a
/// stored record.
pub fn encode_body<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    rmp_serde::to_vec(value).map_err(|_| EncodeError::Serialize)
}

/// [`encode_body`] into a buffer of `capacity` bytes to start with (the
/// caller's estimate of the encoded size: a right guess means one
/// allocation and no copy as the buffer grows).
pub fn encode_body_sized<T: Serialize>(value: &T, capacity: usize) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(capacity);
    rmp_serde::encode::write(&mut out, value).map_err(|_| EncodeError::Serialize)?;
    Ok(out)
}

/// Reads a length prefix and checks it against `max` before the caller
/// allocates the body.
pub fn body_len(prefix: [u8; LENGTH_PREFIX_BYTES], max: u32) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix);
    if len == 0 {
        return Err(DecodeError::Empty);
    }
    if len > max {
        return Err(DecodeError::TooLarge { len, max });
    }
    Ok(len as usize)
}

/// Decodes a whole body; trailing bytes are an error. Byte strings are
/// read straight from `body` (no intermediate buffer).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    let value = T::deserialize(&mut de).map_err(|_| DecodeError::Malformed)?;
    // The body must end exactly here: reading one more value must hit the end.
    match serde::de::IgnoredAny::deserialize(&mut de) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Ok(value)
        }
        _ => Err(DecodeError::Trailing),
    }
}

/// Entry points for fuzz targets: decode, and if that succeeds, check that
/// encode → decode is stable.
pub mod fuzzing {
    use crate::envelope::StoredRecord;
    use crate::frame::{ClientFrame, ServerFrame};

    /// Fuzz the client-frame decoder. Panics only on a codec bug.
    pub fn client_frame(data: &[u8]) {
        if let Ok(frame) = super::decode::<ClientFrame>(data) {
            let again = super::encode(&frame).expect("decoded frames re-encode");
            let back: ClientFrame = super::decode(&again[4..]).expect("re-encoded frames decode");
            assert_eq!(back, frame);
        }
    }

    /// Fuzz the server-frame decoder.
    pub fn server_frame(data: &[u8]) {
        if let Ok(frame) = super::decode::<ServerFrame>(data) {
            let again = super::encode(&frame).expect("decoded frames re-encode");
            let back: ServerFrame = super::decode(&again[4..]).expect("re-encoded frames decode");
            assert_eq!(back, frame);
        }
    }

    /// Fuzz the stored-record decoder.
    pub fn stored_record(data: &[u8]) {
        if let Ok(record) = super::decode::<StoredRecord>(data) {
            let again = super::encode_body(&record).expect("decoded records re-encode");
            let back: StoredRecord = super::decode(&again).expect("re-encoded records decode");
            assert_eq!(back, record);
        }
    }
}
