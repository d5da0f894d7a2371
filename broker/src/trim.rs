//! What retention deletes next from a topic: its oldest records below the
//! count limit, past the byte limit or older than the age limit, read to
//! learn their sizes and whose bytes they are. Used by the group-commit
//! writer ([`crate::commit`], count and bytes, in the same write as the
//! publishes) and by the passes ([`crate::trimmer`]).

use crate::error::StoreError;
use crate::fanout::Head;
use crate::retention::Retention;
use crate::store::Store;
use serde::de::IgnoredAny;
use signet_proto::{KeyId, codec};
use std::collections::HashMap;
use std::sync::Arc;

/// Records read per trim (one trim deletes at most this many).
const TRIM_RECORDS_MAX: usize = 4096;
/// Record bytes read per trim.
const TRIM_READ_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The fields of a stored record retention needs, decoded without
/// copying the rest (payload, headers, proof are skipped).
#[derive(serde::Deserialize)]
struct RecordHead(u64, EnvelopeHead, IgnoredAny);

/// An envelope's version, salt, topic and key id; the rest skipped.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct EnvelopeHead(
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    KeyId,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
);

/// When a stored record was received and which key signed it, if it
/// decodes.
pub fn record_head(record: &[u8]) -> Option<(u64, KeyId)> {
    let RecordHead(received_ms, envelope, _) = codec::decode(record).ok()?;
    Some((received_ms, envelope.3))
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
    let records = store.read_range(
        topic_id,
        head.first_offset,
        head.next_offset,
        TRIM_RECORDS_MAX,
        TRIM_READ_BYTES_MAX,
    )?;
    let mut to = head.first_offset;
    let mut bytes = 0u64;
    let mut freed: HashMap<Arc<str>, u64> = HashMap::new();
    for delivery in &records {
        let decoded = record_head(&delivery.record);
        let too_old = match (cutoff, decoded) {
            (Some(cutoff), Some((received_ms, _))) => received_ms < cutoff,
            _ => false,
        };
        if delivery.offset >= by_count && bytes >= excess && !too_old {
            break;
        }
        let len = delivery.record.len() as u64;
        bytes = bytes.saturating_add(len);
        if let Some((_, key_id)) = decoded
            && let Some(owner) = owner(key_id)?
        {
            *freed.entry(owner).or_insert(0) += len;
        }
        to = delivery.offset + 1;
    }
    if records.is_empty() && by_count > head.first_offset {
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
    use signet_proto::{Salt, SigningKey, StoredRecord, batch};

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
        assert_eq!(record_head(&bytes[..bytes.len() - 1]), None);
    }
}
