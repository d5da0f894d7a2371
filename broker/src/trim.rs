//! What retention deletes next from a topic: its oldest records below the
//! count limit, past the byte limit or older than the age limit, read to
//! learn their sizes and whose bytes they are. Used by the group-commit
//! writer ([`crate::commit`], count and bytes, in the same write as the
//! publishes) and by the passes ([`crate::trimmer`]).

use crate::error::StoreError;
use crate::fanout::Head;
use crate::retention::Retention;
use crate::store::Store;
use signet_proto::KeyId;
use signet_proto::keys::KEY_ID_BYTES;
use std::collections::HashMap;
use std::sync::Arc;

/// Records read per trim (one trim deletes at most this many).
const TRIM_RECORDS_MAX: usize = 4096;
/// Record bytes read per trim.
const TRIM_READ_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Fields of a stored record's envelope before its key id: version, salt,
/// topic (the envelope is a MessagePack array in field order).
const ENVELOPE_FIELDS: u32 = 10;

/// When a stored record was received and which key signed it, if its
/// head decodes: read straight from the MessagePack bytes up to the key
/// id, the rest (payload, headers, proof) is not looked at. Retention
/// reads thousands of records per trim in the writer thread; decoding
/// each whole record through serde was most of that cost.
pub fn record_head(record: &[u8]) -> Option<(u64, KeyId)> {
    use rmp::decode::{read_array_len, read_bin_len, read_int, read_str_len};
    let mut rd = record;
    if read_array_len(&mut rd).ok()? != 3 {
        return None;
    }
    let received_ms: u64 = read_int(&mut rd).ok()?;
    if read_array_len(&mut rd).ok()? != ENVELOPE_FIELDS {
        return None;
    }
    let _version: u8 = read_int(&mut rd).ok()?;
    let salt = read_bin_len(&mut rd).ok()? as usize;
    rd = rd.get(salt..)?;
    let topic = read_str_len(&mut rd).ok()? as usize;
    rd = rd.get(topic..)?;
    let key_len = read_bin_len(&mut rd).ok()? as usize;
    let key: [u8; KEY_ID_BYTES] = rd.get(..key_len)?.try_into().ok()?;
    Some((received_ms, KeyId(key)))
}

/// When a stored record was received, if it decodes.
pub fn received_ms(record: &[u8]) -> Option<u64> {
    record_head(record).map(|(received_ms, _)| received_ms)
}

/// One trim: the range and whose bytes it frees.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The topic's first offset.
    pub from: u64,
    /// Its new first offset.
    pub to: u64,
    /// Record bytes in the range.
    pub bytes: u64,
    /// Those bytes per principal that stored them.
    pub freed: Vec<(Arc<str>, u64)>,
}

impl Plan {
    /// This trim followed by `next`, which starts where this one ends.
    pub fn then(mut self, next: Plan) -> Plan {
        debug_assert_eq!(self.to, next.from);
        self.to = next.to;
        self.bytes = self.bytes.saturating_add(next.bytes);
        for (owner, bytes) in next.freed {
            match self.freed.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, total)) => *total = total.saturating_add(bytes),
                None => self.freed.push((owner, bytes)),
            }
        }
        self.freed.sort();
        self
    }
}

/// How far a topic must go: below `by_count`, `excess` bytes from the
/// oldest, and every record received before `cutoff`.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// The count limit's first readable offset.
    pub by_count: u64,
    /// Bytes past the byte limit.
    pub excess: u64,
    /// The age limit's cutoff (ms since the epoch), when it is applied.
    pub cutoff: Option<u64>,
}

impl Floor {
    /// The floor of a topic at `head`; the age limit only when `now_ms`
    /// is given.
    pub fn of(retention: &Retention, head: &Head, now_ms: Option<u64>) -> Floor {
        Floor {
            by_count: retention.first_readable(head.first_offset, head.next_offset),
            excess: retention
                .max_bytes
                .map_or(0, |max| head.stored_bytes.saturating_sub(max)),
            cutoff: now_ms.and_then(|now| retention.age_cutoff_ms(now)),
        }
    }

    /// Whether the group commit should trim now: a sixteenth of a limit
    /// (at least one message or byte) past it, so the oldest records go in
    /// a few large ranges rather than one per commit (many small range
    /// deletions slow RocksDB's reads; reads obey the count limit exactly
    /// anyway).
    pub fn worth_trimming(&self, retention: &Retention, head: &Head) -> bool {
        let count_slack = retention.max_msgs.map_or(u64::MAX, |m| (m / 16).max(1));
        let byte_slack = retention.max_bytes.map_or(u64::MAX, |m| (m / 16).max(1));
        self.by_count.saturating_sub(head.first_offset) >= count_slack || self.excess >= byte_slack
    }

    /// Whether the topic at `head` is within every limit (or may be).
    pub fn is_met(&self, head: &Head) -> bool {
        self.by_count <= head.first_offset && self.excess == 0 && self.cutoff.is_none()
    }
}

/// The next trim of the records of `topic_id` stored from
/// `head.first_offset` up to `head.next_offset` (at most
/// [`TRIM_RECORDS_MAX`] records), or `None` when they are within `floor`.
/// `owner` tells whose bytes a key's records are.
pub fn plan(
    store: &Store,
    topic_id: u32,
    head: &Head,
    floor: &Floor,
    mut owner: impl FnMut(KeyId) -> Result<Option<Arc<str>>, StoreError>,
) -> Result<Option<Plan>, StoreError> {
    if floor.is_met(head) {
        return Ok(None);
    }
    let Floor {
        by_count,
        excess,
        cutoff,
    } = *floor;
    // A count limit alone says how many records go: read only those.
    let wanted = if excess == 0 && cutoff.is_none() {
        usize::try_from(by_count.saturating_sub(head.first_offset))
            .unwrap_or(usize::MAX)
            .min(TRIM_RECORDS_MAX)
    } else {
        TRIM_RECORDS_MAX
    };
    let mut to = head.first_offset;
    let mut bytes = 0u64;
    let mut freed: HashMap<Arc<str>, u64> = HashMap::new();
    let mut seen = false;
    store.scan_range(
        topic_id,
        head.first_offset,
        head.next_offset,
        wanted,
        TRIM_READ_BYTES_MAX,
        |offset, record| {
            seen = true;
            let decoded = record_head(record);
            let too_old = match (cutoff, decoded) {
                (Some(cutoff), Some((received_ms, _))) => received_ms < cutoff,
                _ => false,
            };
            if offset >= by_count && bytes >= excess && !too_old {
                return Ok(false);
            }
            let len = record.len() as u64;
            bytes = bytes.saturating_add(len);
            if let Some((_, key_id)) = decoded
                && let Some(owner) = owner(key_id)?
            {
                *freed.entry(owner).or_insert(0) += len;
            }
            to = offset + 1;
            Ok(true)
        },
    )?;
    if !seen && by_count > head.first_offset {
        // Nothing stored below the count floor (already deleted): move on.
        to = by_count.min(head.next_offset);
    }
    if to <= head.first_offset {
        return Ok(None);
    }
    let mut freed: Vec<_> = freed.into_iter().collect();
    freed.sort();
    Ok(Some(Plan {
        from: head.first_offset,
        to,
        bytes,
        freed,
    }))
}

/// What a work-queue write deletes from one topic.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removal {
    /// The topic's new first offset.
    pub first: u64,
    /// The stored records deleted, one by one (no range tombstones: a
    /// work queue deletes a few records per write).
    pub offsets: Vec<u64>,
    /// Their record bytes.
    pub bytes: u64,
    /// Those bytes per principal that stored them.
    pub freed: Vec<(Arc<str>, u64)>,
}

/// The records of a work-queue topic (id `topic_id`, first offset `first`,
/// records committed below `end`) its group settled: every record still
/// stored below the group's acked `floor` (at most [`TRIM_RECORDS_MAX`] per
/// write; the first offset moves past them) and the offsets `done` in
/// this write above it. `owner` tells whose bytes a key's records are.
pub fn settled(
    store: &Store,
    topic_id: u32,
    first: u64,
    end: u64,
    floor: u64,
    done: &std::collections::BTreeSet<u64>,
    mut owner: impl FnMut(KeyId) -> Result<Option<Arc<str>>, StoreError>,
) -> Result<Removal, StoreError> {
    let floor = floor.min(end);
    let mut removal = Removal {
        first,
        ..Removal::default()
    };
    let mut freed: HashMap<Arc<str>, u64> = HashMap::new();
    let mut take = |offset: u64, record: &[u8], removal: &mut Removal| -> Result<(), StoreError> {
        let len = record.len() as u64;
        removal.offsets.push(offset);
        removal.bytes = removal.bytes.saturating_add(len);
        if let Some((_, key_id)) = record_head(record)
            && let Some(owner) = owner(key_id)?
        {
            *freed.entry(owner).or_insert(0) += len;
        }
        Ok(())
    };
    if floor > first {
        let records = store.read_range(
            topic_id,
            first,
            floor,
            TRIM_RECORDS_MAX,
            TRIM_READ_BYTES_MAX,
        )?;
        let full = records.len() >= TRIM_RECORDS_MAX
            || records.iter().map(|d| d.record.len()).sum::<usize>() >= TRIM_READ_BYTES_MAX;
        for d in &records {
            take(d.offset, &d.record, &mut removal)?;
        }
        removal.first = match (full, records.last()) {
            (true, Some(last)) => last.offset + 1,
            _ => floor,
        };
    }
    for offset in done.range(removal.first.max(first)..end) {
        if let Some(record) = store.message(topic_id, *offset)? {
            take(*offset, &record, &mut removal)?;
        }
    }
    let mut freed: Vec<_> = freed.into_iter().collect();
    freed.sort();
    removal.freed = freed;
    Ok(removal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_proto::envelope::{CONTENT_TYPE_OCTET, Envelope};
    use signet_proto::{Salt, SigningKey, StoredRecord, batch, codec};

    #[test]
    fn the_record_head_is_the_stored_records_time_and_key() {
        let key = SigningKey::from_seed(&[9; 32]).unwrap();
        let envelope = Envelope {
            version: 1,
            salt: Salt([1; 16]),
            topic: "t.a".into(),
            key_id: key.id(),
            seq: 5,
            timestamp_ms: 7,
            content_type: CONTENT_TYPE_OCTET.into(),
            headers: vec![],
            encryption: None,
            payload: vec![3; 300],
        };
        let signed = batch::sign(&key, std::slice::from_ref(&envelope)).unwrap();
        let record = StoredRecord {
            received_ms: 1234,
            envelope,
            proof: signed.proof(0),
        };
        let bytes = codec::encode_body(&record).unwrap();
        assert_eq!(record_head(&bytes), Some((1234, key.id())));
        // Only the head is read: a record cut in its payload still names
        // its key; one cut before the key id end does not decode.
        assert_eq!(
            record_head(&bytes[..bytes.len() - 1]),
            Some((1234, key.id()))
        );
        let key_end = bytes
            .windows(16)
            .position(|w| w == key.id().0)
            .expect("the key id is in the record")
            + 16;
        assert_eq!(record_head(&bytes[..key_end - 1]), None);
        assert_eq!(record_head(&bytes[..key_end]), Some((1234, key.id())));
        assert_eq!(record_head(b"\x93"), None);
    }
}
