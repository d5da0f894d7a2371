//! The `messages` family's keys: topic id (u32 BE) ‖ offset (u64 BE), so a
//! topic's records sort by offset and topics never interleave.

/// Length of a message key.
pub const MESSAGE_KEY_BYTES: usize = 12;

/// The `messages` key of `offset` in topic `topic_id`.
pub fn message_key(topic_id: u32, offset: u64) -> [u8; MESSAGE_KEY_BYTES] {
    let mut key = [0u8; MESSAGE_KEY_BYTES];
    key[..4].copy_from_slice(&topic_id.to_be_bytes());
    key[4..].copy_from_slice(&offset.to_be_bytes());
    key
}

/// The topic id and offset of a `messages` key; `None` for any other key.
pub fn parse_message_key(key: &[u8]) -> Option<(u32, u64)> {
    let key: &[u8; MESSAGE_KEY_BYTES] = key.try_into().ok()?;
    let (tid, off) = key.split_at(4);
    Some((
        u32::from_be_bytes(tid.try_into().ok()?),
        u64::from_be_bytes(off.try_into().ok()?),
    ))
}
