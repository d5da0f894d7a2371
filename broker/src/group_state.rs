//! The consumer-group state machine, pure: per (group, topic) a
//! [`Cursor`] (acked floor, next offset never leased, a bounded window of
//! per-message [`Entry`] states) and the transitions the one writer
//! applies. Every transition takes the time it is applied at and any
//! random token as arguments, never reading a clock or an RNG, so the
//! same commands give the same state anywhere (the commands can go
//! through a consensus log unchanged).

use crate::group_config::GroupPolicy;
use serde::{Deserialize, Serialize};
use signet_proto::ErrorCode;
use std::collections::BTreeMap;

/// A lease token.
pub type Token = [u8; 16];

/// Compares two byte strings in time that depends only on their lengths.
pub fn same_token(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Where one message of the window stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    /// Waiting for a member, not before this time.
    Available { after_ms: u64 },
    /// Leased to `member` until `deadline_ms`.
    Leased {
        token: Token,
        deadline_ms: u64,
        member: u64,
    },
    /// Acked: never delivered again.
    Acked,
    /// Dead-lettered: never delivered again.
    Dead,
}

/// One message of the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Times leased to the group so far.
    pub deliveries: u32,
    /// Its state.
    pub slot: Slot,
}

/// A group's position in one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Every offset below is acked or dead.
    pub floor: u64,
    /// The next offset never leased.
    pub next: u64,
    /// Offsets in `floor..next` (those below `floor` are gone).
    pub window: BTreeMap<u64, Entry>,
    /// Messages acked.
    pub acked: u64,
    /// Messages dead-lettered.
    pub dead: u64,
    /// Deliveries that were redeliveries.
    pub redelivered: u64,
    /// Messages retention removed before the group settled them (never
    /// leased, or waiting for a redelivery): the group's lost work.
    #[serde(default)]
    pub removed: u64,
}

impl Cursor {
    /// A cursor starting at `offset`.
    pub fn at(offset: u64) -> Cursor {
        Cursor {
            floor: offset,
            next: offset,
            ..Cursor::default()
        }
    }

    /// Drops settled entries at the bottom and raises the floor past them.
    fn compact(&mut self) {
        while let Some(entry) = self.window.first_entry() {
            if matches!(entry.get().slot, Slot::Acked | Slot::Dead) {
                entry.remove();
            } else {
                break;
            }
        }
        self.floor = self.window.keys().next().copied().unwrap_or(self.next);
    }

    /// How many of the group's unsettled messages lie below `first` (the
    /// topic's first offset: retention removed them): those never leased
    /// and those waiting for a redelivery. A leased one stays until its
    /// member settles it or the lease expires.
    pub fn removed_below(&self, first: u64) -> u64 {
        let never_leased = first.saturating_sub(self.next);
        let waiting = self
            .window
            .range(..first)
            .filter(|(_, e)| matches!(e.slot, Slot::Available { .. }))
            .count() as u64;
        never_leased + waiting
    }

    /// Gives up the unsettled messages below `first` (see
    /// [`Cursor::removed_below`]) and counts them in `removed`; returns how
    /// many.
    pub fn drop_removed(&mut self, first: u64) -> u64 {
        let lost = self.removed_below(first);
        if lost == 0 {
            return 0;
        }
        self.window
            .retain(|offset, e| *offset >= first || !matches!(e.slot, Slot::Available { .. }));
        self.next = self.next.max(first);
        self.removed = self.removed.saturating_add(lost);
        self.compact();
        lost
    }

    /// Deliveries leased and not settled.
    pub fn in_flight(&self) -> u64 {
        self.window
            .values()
            .filter(|e| matches!(e.slot, Slot::Leased { .. }))
            .count() as u64
    }
}

/// A message that must go to the dead-letter topic in this same write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadNote {
    /// Source topic.
    pub topic: String,
    /// Source offset.
    pub offset: u64,
    /// Deliveries it had.
    pub deliveries: u32,
    /// Why: `max_deliveries` or `term: <reason>`.
    pub reason: String,
}

/// One delivery leased by [`GroupState::lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Topic.
    pub topic: String,
    /// Offset.
    pub offset: u64,
    /// Delivery count, this one included.
    pub deliveries: u32,
    /// Its token.
    pub token: Token,
    /// Its deadline.
    pub deadline_ms: u64,
}

/// Why leasing stopped although messages wait, and when to try again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// Why the group cannot lease what waits, if it cannot.
    pub reason: Option<String>,
    /// The earliest time something becomes leasable (a backoff ends or a
    /// lease expires).
    pub wake_at_ms: Option<u64>,
}

/// What a member asks to do with its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settlement {
    /// Done.
    Ack,
    /// Redeliver after at least this delay (and the backoff).
    Nak(Option<u64>),
    /// Reset the deadline.
    Extend,
    /// Dead-letter now.
    Term(String),
}

/// A group's cursors, by topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// Cursors by topic.
    pub cursors: BTreeMap<String, Cursor>,
}

impl GroupState {
    /// Unsettled deliveries of the whole group.
    pub fn in_flight(&self) -> u64 {
        self.cursors.values().map(Cursor::in_flight).sum()
    }

    /// Live leases held by `member`, on every topic.
    pub fn leased_to(&self, member: u64) -> u64 {
        self.cursors
            .values()
            .flat_map(|c| c.window.values())
            .filter(|e| matches!(e.slot, Slot::Leased { member: m, .. } if m == member))
            .count() as u64
    }

    /// Ends every lease whose deadline passed by `now_ms`: it becomes
    /// available after its backoff, or dead when it had `max_deliveries`.
    /// Messages waiting with as many deliveries as a (lowered)
    /// `max_deliveries` die too.
    /// Returns how many messages changed state.
    pub fn expire(&mut self, policy: &GroupPolicy, now_ms: u64, dead: &mut Vec<DeadNote>) -> usize {
        let mut changed = 0;
        for (topic, cursor) in &mut self.cursors {
            let mut died = 0;
            for (offset, entry) in cursor.window.iter_mut() {
                let over = entry.deliveries >= policy.max_deliveries;
                match entry.slot {
                    Slot::Leased { deadline_ms, .. } if deadline_ms <= now_ms => {
                        entry.slot = if over {
                            Slot::Dead
                        } else {
                            Slot::Available {
                                after_ms: deadline_ms
                                    .saturating_add(policy.backoff_after(entry.deliveries)),
                            }
                        };
                    }
                    Slot::Available { .. } if over && entry.deliveries > 0 => {
                        entry.slot = Slot::Dead;
                    }
                    _ => continue,
                }
                changed += 1;
                if entry.slot == Slot::Dead {
                    died += 1;
                    dead.push(DeadNote {
                        topic: topic.clone(),
                        offset: *offset,
                        deliveries: entry.deliveries,
                        reason: "max_deliveries".into(),
                    });
                }
            }
            cursor.dead += died;
            cursor.compact();
        }
        changed
    }

    /// Leases up to `want` messages to `member` at `now_ms`: first those
    /// waiting for redelivery whose time came, then new ones, in offset
    /// order per topic, only on topics `readable` says the member may
    /// read, within `max_in_flight` for the group and `window_max`
    /// messages between a topic's floor and its next offset. `head(topic)`
    /// is the topic's next offset. Tokens come from `token(i)`.
    #[allow(clippy::too_many_arguments)]
    pub fn lease(
        &mut self,
        policy: &GroupPolicy,
        now_ms: u64,
        member: u64,
        want: u32,
        window_max: u64,
        readable: &dyn Fn(&str) -> bool,
        head: &dyn Fn(&str) -> u64,
        token: &mut dyn FnMut(usize) -> Token,
    ) -> (Vec<Lease>, Waiting) {
        let mut leases = Vec::new();
        let mut waiting = Waiting::default();
        let in_flight = self.in_flight();
        let room = u64::from(policy.max_in_flight).saturating_sub(in_flight);
        let mut budget = room.min(u64::from(want));
        let deadline_ms = now_ms.saturating_add(policy.ack_wait_ms);
        let mut work_waits = false;
        for (topic, cursor) in &mut self.cursors {
            for entry in cursor.window.values() {
                match entry.slot {
                    Slot::Available { after_ms } if after_ms > now_ms => {
                        waiting.wake_at_ms =
                            Some(waiting.wake_at_ms.map_or(after_ms, |w| w.min(after_ms)));
                    }
                    Slot::Leased { deadline_ms, .. } => {
                        waiting.wake_at_ms = Some(
                            waiting
                                .wake_at_ms
                                .map_or(deadline_ms, |w| w.min(deadline_ms)),
                        );
                    }
                    _ => {}
                }
            }
            if !readable(topic) {
                continue;
            }
            let top = head(topic);
            let ready = cursor
                .window
                .values()
                .any(|e| matches!(e.slot, Slot::Available { after_ms } if after_ms <= now_ms));
            if ready || cursor.next < top {
                work_waits = true;
            }
            for (offset, entry) in cursor.window.iter_mut() {
                if budget == 0 {
                    break;
                }
                if matches!(entry.slot, Slot::Available { after_ms } if after_ms <= now_ms) {
                    let t = token(leases.len());
                    entry.deliveries = entry.deliveries.saturating_add(1);
                    if entry.deliveries > 1 {
                        cursor.redelivered += 1;
                    }
                    entry.slot = Slot::Leased {
                        token: t,
                        deadline_ms,
                        member,
                    };
                    leases.push(Lease {
                        topic: topic.clone(),
                        offset: *offset,
                        deliveries: entry.deliveries,
                        token: t,
                        deadline_ms,
                    });
                    budget -= 1;
                }
            }
            while budget > 0 && cursor.next < top {
                if cursor.next.saturating_sub(cursor.floor) >= window_max {
                    waiting.reason = Some(format!(
                        "window full on {topic}: offset {} is not settled yet and {window_max} messages after it are leased or settled (group_window_max)",
                        cursor.floor
                    ));
                    break;
                }
                let t = token(leases.len());
                let offset = cursor.next;
                cursor.window.insert(
                    offset,
                    Entry {
                        deliveries: 1,
                        slot: Slot::Leased {
                            token: t,
                            deadline_ms,
                            member,
                        },
                    },
                );
                cursor.next += 1;
                leases.push(Lease {
                    topic: topic.clone(),
                    offset,
                    deliveries: 1,
                    token: t,
                    deadline_ms,
                });
                budget -= 1;
            }
        }
        if room == 0 && work_waits {
            waiting.reason = Some(format!(
                "max_in_flight reached: {in_flight} deliveries unacked (limit {})",
                policy.max_in_flight
            ));
        }
        (leases, waiting)
    }

    /// Applies a member's settlement of its lease `token` on `topic` at
    /// `offset`. A token that is not the live lease of that member on that
    /// message (stale, forged, another member's) is refused with
    /// `LeaseInvalid` and changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn settle(
        &mut self,
        policy: &GroupPolicy,
        now_ms: u64,
        member: u64,
        topic: &str,
        offset: u64,
        token: &[u8],
        action: &Settlement,
        dead: &mut Vec<DeadNote>,
    ) -> Result<(), ErrorCode> {
        let cursor = self.cursors.get_mut(topic).ok_or(ErrorCode::LeaseInvalid)?;
        let entry = cursor
            .window
            .get_mut(&offset)
            .ok_or(ErrorCode::LeaseInvalid)?;
        let Slot::Leased {
            token: live,
            member: holder,
            ..
        } = &entry.slot
        else {
            return Err(ErrorCode::LeaseInvalid);
        };
        // The token is compared first and always, in constant time.
        let token_ok = same_token(live, token);
        if !token_ok || *holder != member {
            return Err(ErrorCode::LeaseInvalid);
        }
        let mut die = |entry: &mut Entry, reason: String, cursor_dead: &mut u64| {
            entry.slot = Slot::Dead;
            *cursor_dead += 1;
            dead.push(DeadNote {
                topic: topic.to_owned(),
                offset,
                deliveries: entry.deliveries,
                reason,
            });
        };
        match action {
            Settlement::Ack => {
                entry.slot = Slot::Acked;
                cursor.acked += 1;
            }
            Settlement::Nak(delay) => {
                if entry.deliveries >= policy.max_deliveries {
                    die(entry, "max_deliveries".into(), &mut cursor.dead);
                } else {
                    let wait = policy
                        .backoff_after(entry.deliveries)
                        .max(delay.unwrap_or(0));
                    entry.slot = Slot::Available {
                        after_ms: now_ms.saturating_add(wait),
                    };
                }
            }
            Settlement::Extend => {
                if let Slot::Leased { deadline_ms, .. } = &mut entry.slot {
                    *deadline_ms = now_ms.saturating_add(policy.ack_wait_ms);
                }
            }
            Settlement::Term(reason) => {
                die(entry, format!("term: {reason}"), &mut cursor.dead);
            }
        }
        cursor.compact();
        Ok(())
    }
}

#[cfg(test)]
mod removed_tests {
    use super::*;

    #[test]
    fn retention_removed_work_is_counted_once_and_leases_survive() {
        let mut c = Cursor::at(0);
        c.next = 4;
        let leased = Slot::Leased {
            token: [1; 16],
            deadline_ms: 9,
            member: 1,
        };
        for (o, slot) in [
            (0, Slot::Available { after_ms: 0 }),
            (1, leased.clone()),
            (2, Slot::Acked),
            (3, Slot::Available { after_ms: 0 }),
        ] {
            c.window.insert(
                o,
                Entry {
                    deliveries: 1,
                    slot,
                },
            );
        }
        // The topic now starts at 6: offset 0 and 3 (waiting) and 4, 5
        // (never leased) are lost; the lease on 1 stays.
        assert_eq!(c.removed_below(6), 4);
        assert_eq!(c.drop_removed(6), 4);
        assert_eq!((c.removed, c.next, c.floor), (4, 6, 1));
        assert_eq!(c.window.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(c.drop_removed(6), 0, "counted once");
        assert_eq!(c.drop_removed(0), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group_config::{Start, group_policy};
    use crate::policy_file::GroupSection;

    fn policy(max_deliveries: u32, max_in_flight: u32) -> GroupPolicy {
        let g = group_policy(&GroupSection {
            name: "g".into(),
            topics: vec!["t.>".into()],
            start: "earliest".into(),
            ack_wait: "100ms".into(),
            max_deliveries,
            backoff: vec!["10ms".into(), "50ms".into()],
            dead_letter: "dlq.g".into(),
            max_in_flight,
        })
        .unwrap();
        assert_eq!(g.start, Start::Earliest);
        g
    }

    fn state() -> GroupState {
        let mut s = GroupState::default();
        s.cursors.insert("t.a".into(), Cursor::at(0));
        s
    }

    fn lease(s: &mut GroupState, p: &GroupPolicy, now: u64, member: u64, want: u32) -> Vec<Lease> {
        s.lease(p, now, member, want, 4, &|_| true, &|_| 10, &mut |i| {
            [(now as u8) ^ (i as u8) ^ (member as u8).rotate_left(4); 16]
        })
        .0
    }

    #[test]
    fn ack_settles_for_good_and_raises_the_floor() {
        let p = policy(3, 100);
        let mut s = state();
        let l = lease(&mut s, &p, 1000, 1, 2);
        assert_eq!(l.len(), 2);
        let mut dead = vec![];
        s.settle(
            &p,
            1001,
            1,
            "t.a",
            0,
            &l[0].token,
            &Settlement::Ack,
            &mut dead,
        )
        .unwrap();
        assert_eq!(s.cursors["t.a"].floor, 1);
        // Even long after every deadline, offset 0 never comes back.
        s.expire(&p, 10_000, &mut dead);
        let again = lease(&mut s, &p, 10_000, 2, 10);
        assert!(again.iter().all(|l| l.offset != 0));
        assert_eq!(again[0].offset, 1);
        assert_eq!(again[0].deliveries, 2);
    }

    #[test]
    fn wrong_stale_and_other_members_tokens_change_nothing() {
        let p = policy(3, 100);
        let mut s = state();
        let l = lease(&mut s, &p, 1000, 1, 1);
        let before = s.clone();
        let mut dead = vec![];
        let forged = [0xAAu8; 16];
        for (member, token) in [
            (1, &forged[..]),
            (2, &l[0].token[..]),
            (1, &l[0].token[..5]),
        ] {
            assert_eq!(
                s.settle(
                    &p,
                    1001,
                    member,
                    "t.a",
                    0,
                    token,
                    &Settlement::Ack,
                    &mut dead
                ),
                Err(ErrorCode::LeaseInvalid)
            );
        }
        assert_eq!(s, before);
        // After expiry and a new lease, the first token is stale.
        s.expire(&p, 1100, &mut dead);
        let l2 = lease(&mut s, &p, 1110, 1, 1);
        assert_eq!(l2[0].offset, 0);
        let before = s.clone();
        assert_eq!(
            s.settle(
                &p,
                1111,
                1,
                "t.a",
                0,
                &l[0].token,
                &Settlement::Ack,
                &mut dead
            ),
            Err(ErrorCode::LeaseInvalid)
        );
        assert_eq!(s, before);
    }

    #[test]
    fn redelivery_waits_for_the_backoff_after_expiry_and_nak() {
        let p = policy(5, 100);
        let mut s = state();
        let mut dead = vec![];
        let l = lease(&mut s, &p, 1000, 1, 1);
        // Expired at 1100; backoff after delivery 1 is 10ms.
        s.expire(&p, 1105, &mut dead);
        assert!(lease(&mut s, &p, 1105, 1, 1).iter().all(|x| x.offset != 0));
        let _ = l;
        let mut s = state();
        let l = lease(&mut s, &p, 1000, 1, 1);
        s.settle(
            &p,
            1000,
            1,
            "t.a",
            0,
            &l[0].token,
            &Settlement::Nak(None),
            &mut dead,
        )
        .unwrap();
        let (none, _) = s.lease(&p, 1009, 1, 1, 4, &|_| true, &|_| 1, &mut |_| [6; 16]);
        assert!(none.is_empty(), "not before the backoff");
        let l = s
            .lease(&p, 1010, 1, 1, 4, &|_| true, &|_| 1, &mut |_| [7; 16])
            .0;
        assert_eq!((l[0].offset, l[0].deliveries), (0, 2));
        // A nak delay longer than the backoff wins.
        s.settle(
            &p,
            1020,
            1,
            "t.a",
            0,
            &[7; 16],
            &Settlement::Nak(Some(500)),
            &mut dead,
        )
        .unwrap();
        let (l, w) = s.lease(&p, 1100, 1, 1, 4, &|_| true, &|_| 1, &mut |_| [8; 16]);
        assert!(l.is_empty());
        assert_eq!(w.wake_at_ms, Some(1520));
    }

    #[test]
    fn extend_moves_the_deadline_without_counting_a_delivery() {
        let p = policy(5, 100);
        let mut s = state();
        let mut dead = vec![];
        let l = lease(&mut s, &p, 1000, 1, 1);
        s.settle(
            &p,
            1090,
            1,
            "t.a",
            0,
            &l[0].token,
            &Settlement::Extend,
            &mut dead,
        )
        .unwrap();
        s.expire(&p, 1150, &mut dead);
        let e = &s.cursors["t.a"].window[&0];
        assert!(matches!(
            e.slot,
            Slot::Leased {
                deadline_ms: 1190,
                ..
            }
        ));
        assert_eq!(e.deliveries, 1);
    }

    #[test]
    fn the_last_delivery_dies_once_and_term_dies_at_once() {
        let p = policy(2, 100);
        let mut s = state();
        let mut dead = vec![];
        lease(&mut s, &p, 1000, 1, 1);
        s.expire(&p, 1100, &mut dead);
        lease(&mut s, &p, 1110, 1, 1);
        s.expire(&p, 1210, &mut dead);
        s.expire(&p, 1310, &mut dead);
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].offset, dead[0].deliveries), (0, 2));
        assert_eq!(s.cursors["t.a"].dead, 1);
        let l = lease(&mut s, &p, 1400, 1, 1);
        assert_eq!(l[0].offset, 1);
        s.settle(
            &p,
            1401,
            1,
            "t.a",
            1,
            &l[0].token,
            &Settlement::Term("bad".into()),
            &mut dead,
        )
        .unwrap();
        assert_eq!(dead[1].reason, "term: bad");
        assert_eq!(s.cursors["t.a"].floor, 2);
    }

    #[test]
    fn lowering_max_deliveries_kills_what_is_over_it() {
        let p = policy(5, 100);
        let mut s = state();
        let mut dead = vec![];
        let l = lease(&mut s, &p, 1000, 1, 1);
        s.settle(
            &p,
            1000,
            1,
            "t.a",
            0,
            &l[0].token,
            &Settlement::Nak(None),
            &mut dead,
        )
        .unwrap();
        let lower = policy(1, 100);
        s.expire(&lower, 1001, &mut dead);
        assert_eq!(dead.len(), 1);
    }

    #[test]
    fn in_flight_and_window_caps_say_why_they_wait() {
        let p = policy(5, 2);
        let mut s = state();
        assert_eq!(lease(&mut s, &p, 1000, 1, 10).len(), 2);
        let (l, w) = s.lease(&p, 1000, 1, 10, 4, &|_| true, &|_| 10, &mut |_| [1; 16]);
        assert!(l.is_empty());
        assert!(w.reason.unwrap().contains("max_in_flight"));
        let p = policy(5, 100);
        let mut s = state();
        assert_eq!(lease(&mut s, &p, 1000, 1, 10).len(), 4, "window of 4");
        let (_, w) = s.lease(&p, 1000, 1, 10, 4, &|_| true, &|_| 10, &mut |_| [1; 16]);
        assert!(w.reason.unwrap().contains("window full"));
    }

    #[test]
    fn unreadable_topics_are_left_to_other_members() {
        let p = policy(5, 100);
        let mut s = state();
        let (l, _) = s.lease(&p, 1000, 1, 10, 4, &|_| false, &|_| 10, &mut |_| [1; 16]);
        assert!(l.is_empty());
        assert_eq!(s, state());
    }
}
