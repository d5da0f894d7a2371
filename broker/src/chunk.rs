//! One chunk of one topic read from storage for a subscription (exact or
//! pattern), with retention applied: never below the topic's first
//! readable offset ([`crate::retention`]: what is stored, and the count
//! limit), never a record past the age limit. What is skipped becomes a
//! [`Piece::Gap`] (sent as a `Gap` frame: first and last offset, reason
//! `retention`) between the deliveries, so a subscriber can tell retention
//! from loss.
//!
//! A chunk is at most `DELIVER_MESSAGES_MAX` messages and
//! `limits.deliver_chunk_bytes_max` bytes (or one larger record alone).

use crate::clock::now_ms;
use crate::fanout::Head;
use crate::limits::Limits;
use crate::policy::Policy;
use crate::state::ConnectionState;
use crate::trim;
use signet_proto::frame::{Delivery, Gap, ServerFrame};
use signet_proto::limits::DELIVER_MESSAGES_MAX;
use signet_proto::stream::write_frame;

/// What to send next, and where the cursor goes after it.
pub struct Step {
    /// Deliveries and gaps, in offset order.
    pub pieces: Vec<Piece>,
    /// The next offset to read.
    pub cursor: u64,
}

/// Reads the next chunk of `topic` (id `topic_id`) from `cursor`, up to
/// the head `now`; `Err` when storage failed (logged).
pub async fn read(
    conn: &ConnectionState,
    topic: &str,
    topic_id: u32,
    cursor: u64,
    now: &Head,
) -> Result<Step, ()> {
    let policy = conn.broker.policy();
    let floor = first_readable(&policy, topic, now);
    if cursor < floor {
        return Ok(Step {
            pieces: vec![Piece::Gap(cursor, floor - 1)],
            cursor: floor,
        });
    }
    let cutoff = policy
        .retention(topic)
        .and_then(|r| r.age_cutoff_ms(now_ms()));
    let store = conn.broker.store.clone();
    let end = now.next_offset;
    let chunk_bytes_max = Limits::usize(conn.broker.limits().deliver_chunk_bytes_max);
    let read = tokio::task::spawn_blocking(move || {
        store.read_range(topic_id, cursor, end, DELIVER_MESSAGES_MAX, chunk_bytes_max)
    })
    .await;
    let Ok(Ok(chunk)) = read else {
        tracing::error!(%topic, "subscription read failed");
        return Err(());
    };
    // Holes in the chunk (or an empty chunk) are ranges retention deleted
    // meanwhile; records past the age limit are skipped.
    let read_to = chunk.last().map_or(end, |d| d.offset + 1);
    Ok(Step {
        pieces: split(chunk, cursor, read_to, cutoff),
        cursor: read_to,
    })
}

/// The lowest offset of `topic` a subscription may read now.
pub fn first_readable(policy: &Policy, topic: &str, head: &Head) -> u64 {
    policy.retention(topic).map_or(head.first_offset, |r| {
        r.first_readable(head.first_offset, head.next_offset)
    })
}

/// Sends a `Gap` of `from..=to` of `topic` (reason `retention`).
pub async fn send_gap(
    send: &mut quinn::SendStream,
    topic: &str,
    from: u64,
    to: u64,
) -> Result<(), signet_proto::stream::WriteError> {
    let gap = Gap {
        topic: topic.to_owned(),
        from,
        to,
        reason: "retention".into(),
    };
    write_frame(send, &ServerFrame::Gap(gap)).await
}

/// What a chunk becomes on the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Deliver(Vec<Delivery>),
    /// Offsets `from..=to` removed.
    Gap(u64, u64),
}

/// Splits a chunk read from `cursor` up to (not including) `end` into
/// deliveries and gaps: offsets missing from the chunk, and records
/// received before `cutoff` (past the age limit).
fn split(chunk: Vec<Delivery>, cursor: u64, end: u64, cutoff: Option<u64>) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut records = Vec::new();
    let mut gap: Option<(u64, u64)> = None;
    let mut expected = cursor;
    let push_gap = |pieces: &mut Vec<Piece>, records: &mut Vec<Delivery>, from, to| {
        if !records.is_empty() {
            pieces.push(Piece::Deliver(std::mem::take(records)));
        }
        pieces.push(Piece::Gap(from, to));
    };
    for d in chunk {
        let too_old = cutoff.is_some_and(|c| trim::received_ms(&d.record).is_some_and(|r| r < c));
        let start = if d.offset > expected {
            Some(expected)
        } else {
            None
        };
        if too_old {
            let from = gap.map_or(start.unwrap_or(d.offset), |(from, _)| from);
            gap = Some((from, d.offset));
        } else {
            match (gap.take(), start) {
                (Some((from, _)), _) => push_gap(&mut pieces, &mut records, from, d.offset - 1),
                (None, Some(from)) => push_gap(&mut pieces, &mut records, from, d.offset - 1),
                (None, None) => {}
            }
            expected = d.offset + 1;
            records.push(d);
            continue;
        }
        expected = d.offset + 1;
    }
    if let Some((from, _)) = gap {
        push_gap(&mut pieces, &mut records, from, end - 1);
    } else if expected < end {
        push_gap(&mut pieces, &mut records, expected, end - 1);
    }
    if !records.is_empty() {
        pieces.push(Piece::Deliver(records));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(offset: u64) -> Delivery {
        Delivery {
            offset,
            record: Vec::new(),
        }
    }

    fn offsets(piece: &Piece) -> Vec<u64> {
        match piece {
            Piece::Deliver(r) => r.iter().map(|d| d.offset).collect(),
            Piece::Gap(..) => Vec::new(),
        }
    }

    #[test]
    fn holes_and_a_deleted_tail_become_gaps_between_deliveries() {
        let pieces = split(vec![d(3), d(4), d(7)], 1, 10, None);
        assert_eq!(pieces.len(), 5);
        assert_eq!(pieces[0], Piece::Gap(1, 2));
        assert_eq!(offsets(&pieces[1]), [3, 4]);
        assert_eq!(pieces[2], Piece::Gap(5, 6));
        assert_eq!(offsets(&pieces[3]), [7]);
        assert_eq!(pieces[4], Piece::Gap(8, 9));
        assert_eq!(split(Vec::new(), 4, 6, None), [Piece::Gap(4, 5)]);
        let whole = split(vec![d(0), d(1)], 0, 2, None);
        assert_eq!(whole.len(), 1);
        assert_eq!(offsets(&whole[0]), [0, 1]);
    }
}
