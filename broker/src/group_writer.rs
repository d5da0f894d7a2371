//! The consumer-group commands and their application by the one writer
//! ([`crate::commit`]). A command carries the group's policy, the time it
//! is applied at and a random seed (for lease tokens and dead-letter
//! salts), chosen before it reached the writer; applying it reads no clock
//! and no RNG. Its changes, and the dead letters it implies, are staged into
//! the writer's `WriteBatch` and become visible only after the synced
//! write succeeded ([`Groups::commit`]); a failed write discards them.
//!
//! Stored in the `subs` column family: `G` ‖ group → `1` (the group was
//! created: `start = "latest"` was resolved then), and `C` ‖ group ‖ `\0`
//! ‖ topic → the MessagePack of its [`Cursor`].

use crate::acl::{Action, Grants};
use crate::dead_letter::{self as deadletter, Build, DeadLetter};
use crate::error::StoreError;
use crate::group_config::{GroupPolicy, Start};
use crate::group_state::{Cursor, DeadNote, GroupState, Settlement, Token, Waiting};
use crate::store::{CF_SUBS, Store};
use serde::{Deserialize, Serialize};
use signet_proto::frame::{GroupStatus, GroupTopicStatus};
use signet_proto::{ErrorCode, SigningKey};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

/// What sessions need to serve group streams: whether groups can run (a
/// broker identity key signs dead letters), and a counter the writer
/// raises after every commit, which waiting members watch.
#[derive(Debug, Clone)]
pub struct Hub {
    /// Whether the broker has an identity key.
    pub enabled: bool,
    /// Raised after every commit.
    pub wake: watch::Receiver<u64>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            enabled: false,
            wake: watch::channel(0).1,
        }
    }
}

/// One command for the writer (also the entry a cluster's data group
/// replicates: it carries everything applying it reads).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Command {
    /// The group's policy when the command was made.
    pub group: Arc<GroupPolicy>,
    /// The time it applies at (broker clock, ms).
    pub now_ms: u64,
    /// Random bytes chosen before: lease tokens and dead-letter salts
    /// derive from them.
    pub seed: [u8; 32],
    /// What to do.
    pub op: Op,
}

/// What a command does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    /// Expire what is due, then lease up to `want` messages (0: only
    /// expire) to `member`, on topics its `grants` let it read; with
    /// `holding_max`, never so many that the member would hold more than
    /// that many live leases (a lease sent with settlements counts only
    /// the ones the writer accepted).
    Lease {
        member: u64,
        want: u32,
        holding_max: Option<u32>,
        grants: Arc<Grants>,
    },
    /// A member settles its lease.
    Settle {
        member: u64,
        topic: String,
        offset: u64,
        #[serde(with = "serde_bytes")]
        token: Vec<u8>,
        action: Settlement,
    },
    /// Report the group's state (changes nothing).
    Info,
}

/// One delivery leased: the message to read and send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLease {
    /// Topic.
    pub topic: String,
    /// Its id in message keys.
    pub topic_id: u32,
    /// Offset.
    pub offset: u64,
    /// Delivery count, this one included.
    pub deliveries: u32,
    /// Lease token.
    pub token: Token,
    /// Lease deadline.
    pub deadline_ms: u64,
}

/// A command's result, sent once its write is on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    /// Leases made (maybe none) and why the group waits.
    Leased {
        leases: Vec<GroupLease>,
        waiting: Waiting,
    },
    /// A settlement applied, or refused (nothing changed).
    Settled(Result<(), ErrorCode>),
    /// The group's state.
    Info(GroupStatus),
}

/// Commands sent together, answered together.
#[derive(Debug)]
pub struct GroupWork {
    /// The commands, applied in order.
    pub commands: Vec<Command>,
    /// One outcome per command, or why none was applied.
    pub reply: oneshot::Sender<Result<Vec<Outcome>, ErrorCode>>,
}

/// A dead letter to append to its topic in the same write.
#[derive(Debug)]
pub struct Append {
    /// The dead-letter topic.
    pub topic: String,
    /// The stored record.
    pub record: Vec<u8>,
    /// Its seq under the identity key.
    pub seq: u64,
    /// Its leaf hash.
    pub leaf: signet_proto::merkle::Hash,
}

/// What the writer offers group commands: its view of topics (committed
/// and staged in this write), stored records, and staging.
pub trait Host {
    /// A topic's id and next offset, if it exists.
    fn topic(&self, name: &str) -> Option<(u32, u64)>;
    /// A topic's first offset (retention removed what is below; 0 for a
    /// topic that does not exist).
    fn first(&self, name: &str) -> u64;
    /// Every topic name.
    fn topic_names(&self) -> Vec<String>;
    /// A stored record.
    fn record(&self, topic_id: u32, offset: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// The highest seq of the identity key, persisted or staged.
    fn identity_mark(&mut self) -> Result<u64, StoreError>;
    /// Stages a message (the broker's own) and returns its offset.
    fn append(&mut self, append: Append) -> Result<u64, StoreError>;
    /// Stages a key and value of the group family.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
}

fn group_key(group: &str) -> Vec<u8> {
    let mut key = b"G".to_vec();
    key.extend_from_slice(group.as_bytes());
    key
}

fn cursor_key(group: &str, topic: &str) -> Vec<u8> {
    let mut key = b"C".to_vec();
    key.extend_from_slice(group.as_bytes());
    key.push(0);
    key.extend_from_slice(topic.as_bytes());
    key
}

/// 16 bytes derived from a command's seed for `purpose` and index `i`.
fn derive(seed: &[u8; 32], purpose: &[u8], i: usize) -> [u8; 16] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"signet/v1/group-seed\0");
    ctx.update(purpose);
    ctx.update(seed);
    ctx.update(&(i as u64).to_be_bytes());
    let digest = ctx.finish();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest.as_ref()[..16]);
    out
}

/// What a write settled on one work-queue topic: the messages its group
/// acked or dead-lettered, and the group's acked floor after it. The
/// writer deletes them in the same write ([`crate::commit`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkDone {
    /// Every offset below it is acked or dead-lettered by the owning group.
    pub floor: u64,
    /// Offsets acked or dead-lettered in this write.
    pub offsets: BTreeSet<u64>,
}

/// Every group's state, owned by the writer thread.
pub struct Groups {
    committed: HashMap<String, GroupState>,
    created: HashSet<String>,
    staged: HashMap<String, GroupState>,
    staged_created: HashSet<String>,
    dirty: BTreeSet<(String, String)>,
    /// Whether this write frees work or room for other members.
    changed: bool,
    /// Work-queue topics settled in this write.
    work_done: BTreeMap<String, WorkDone>,
    identity: Option<Arc<SigningKey>>,
    window_max: u64,
    wake: watch::Sender<u64>,
}

impl Groups {
    /// Loads every group's state; returns it and the receiver members wait
    /// on.
    pub fn load(
        store: &Store,
        identity: Option<Arc<SigningKey>>,
        window_max: u64,
    ) -> Result<(Groups, watch::Receiver<u64>), StoreError> {
        let corrupt = |what| StoreError::Corrupt {
            family: CF_SUBS,
            what,
        };
        let mut committed: HashMap<String, GroupState> = HashMap::new();
        let mut created = HashSet::new();
        for (key, value) in store.group_entries()? {
            match key.split_first() {
                Some((b'G', name)) => {
                    let name = String::from_utf8(name.to_vec()).map_err(|_| corrupt("group"))?;
                    created.insert(name);
                }
                Some((b'C', rest)) => {
                    let at = rest
                        .iter()
                        .position(|b| *b == 0)
                        .ok_or(corrupt("cursor key"))?;
                    let group = String::from_utf8(rest[..at].to_vec())
                        .map_err(|_| corrupt("cursor key"))?;
                    let topic = String::from_utf8(rest[at + 1..].to_vec())
                        .map_err(|_| corrupt("cursor key"))?;
                    let cursor: Cursor =
                        rmp_serde::from_slice(&value).map_err(|_| corrupt("cursor"))?;
                    committed
                        .entry(group)
                        .or_default()
                        .cursors
                        .insert(topic, cursor);
                }
                _ => return Err(corrupt("group key")),
            }
        }
        let (wake, receiver) = watch::channel(0);
        Ok((
            Groups {
                committed,
                created,
                staged: HashMap::new(),
                staged_created: HashSet::new(),
                dirty: BTreeSet::new(),
                changed: false,
                work_done: BTreeMap::new(),
                identity,
                window_max,
                wake,
            },
            receiver,
        ))
    }

    /// The staged state of `group`, created (and its cursors for every
    /// topic it consumes added) if needed.
    fn stage_group(&mut self, group: &GroupPolicy, host: &mut dyn Host) -> Result<(), StoreError> {
        let name = &group.name;
        if !self.staged.contains_key(name) {
            let state = self.committed.get(name).cloned().unwrap_or_default();
            self.staged.insert(name.clone(), state);
        }
        let new_group = !self.created.contains(name) && !self.staged_created.contains(name);
        if new_group {
            host.put(&group_key(name), b"1")?;
            self.staged_created.insert(name.clone());
        }
        let Some(state) = self.staged.get_mut(name) else {
            return Ok(());
        };
        for topic in host.topic_names() {
            if !group.consumes(&topic) || state.cursors.contains_key(&topic) {
                continue;
            }
            // A topic met when the group is created starts where `start`
            // says; a topic that appears later starts at its beginning.
            let at = match (new_group, group.start) {
                (true, Start::Latest) => host.topic(&topic).map_or(0, |t| t.1),
                _ => 0,
            };
            state.cursors.insert(topic.clone(), Cursor::at(at));
            self.dirty.insert((name.clone(), topic));
        }
        Ok(())
    }

    /// Applies one command to the staged state; dead letters it implies
    /// are appended through `host`.
    pub fn apply(&mut self, command: &Command, host: &mut dyn Host) -> Result<Outcome, StoreError> {
        let policy = &*command.group;
        if let Op::Info = command.op {
            return Ok(Outcome::Info(self.status(policy, host)));
        }
        self.stage_group(policy, host)?;
        let window_max = self.window_max;
        let Some(state) = self.staged.get_mut(&policy.name) else {
            return Ok(Outcome::Settled(Err(ErrorCode::Internal)));
        };
        let mut dead = Vec::new();
        let mut acked = None;
        let outcome = match &command.op {
            Op::Lease {
                member,
                want,
                holding_max,
                grants,
            } => {
                // Work retention removed before the group settled it is
                // given up (and counted) before anything is leased.
                for (topic, cursor) in state.cursors.iter_mut() {
                    if cursor.drop_removed(host.first(topic)) > 0 {
                        self.dirty.insert((policy.name.clone(), topic.clone()));
                    }
                }
                let expired = state.expire(policy, command.now_ms, &mut dead);
                let want = match holding_max {
                    Some(max) => {
                        let held = u32::try_from(state.leased_to(*member)).unwrap_or(u32::MAX);
                        (*want).min(max.saturating_sub(held))
                    }
                    None => *want,
                };
                let readable = |t: &str| grants.allows(Action::Subscribe, t);
                let head = |t: &str| host.topic(t).map_or(0, |(_, next)| next);
                let seed = command.seed;
                let (leases, waiting) = state.lease(
                    policy,
                    command.now_ms,
                    *member,
                    want,
                    window_max,
                    &readable,
                    &head,
                    &mut |i| derive(&seed, b"token", i),
                );
                if expired > 0 || !leases.is_empty() {
                    for topic in state.cursors.keys() {
                        self.dirty.insert((policy.name.clone(), topic.clone()));
                    }
                }
                if expired > 0 {
                    self.changed = true;
                }
                let leases = leases
                    .into_iter()
                    .filter_map(|l| {
                        let (topic_id, _) = host.topic(&l.topic)?;
                        Some(GroupLease {
                            topic: l.topic,
                            topic_id,
                            offset: l.offset,
                            deliveries: l.deliveries,
                            token: l.token,
                            deadline_ms: l.deadline_ms,
                        })
                    })
                    .collect();
                Outcome::Leased { leases, waiting }
            }
            Op::Settle {
                member,
                topic,
                offset,
                token,
                action,
            } => {
                let result = state.settle(
                    policy,
                    command.now_ms,
                    *member,
                    topic,
                    *offset,
                    token,
                    action,
                    &mut dead,
                );
                if result.is_ok() {
                    self.dirty.insert((policy.name.clone(), topic.clone()));
                    self.changed = true;
                    if *action == Settlement::Ack {
                        acked = Some((topic.clone(), *offset));
                    }
                }
                Outcome::Settled(result)
            }
            Op::Info => Outcome::Settled(Err(ErrorCode::Internal)),
        };
        let done = acked
            .into_iter()
            .chain(dead.iter().map(|n| (n.topic.clone(), n.offset)));
        for (topic, offset) in done {
            if !policy.owns(&topic) {
                continue;
            }
            let floor = state.cursors.get(&topic).map_or(0, |c| c.floor);
            let work = self.work_done.entry(topic).or_default();
            work.floor = work.floor.max(floor);
            work.offsets.insert(offset);
        }
        for (i, note) in dead.iter().enumerate() {
            self.dead_letter(command, note, derive(&command.seed, b"salt", i), host)?;
        }
        Ok(outcome)
    }

    /// Appends the dead letter of `note` to the group's dead-letter topic.
    fn dead_letter(
        &self,
        command: &Command,
        note: &DeadNote,
        salt: [u8; 16],
        host: &mut dyn Host,
    ) -> Result<(), StoreError> {
        let Some(key) = &self.identity else {
            // Members cannot join without an identity key, so no message
            // can die without one; nothing is appended.
            tracing::error!(group = %command.group.name, "dead letter without an identity key");
            return Ok(());
        };
        let record = match host.topic(&note.topic) {
            Some((id, _)) => host.record(id, note.offset)?,
            None => None,
        };
        let seq = host
            .identity_mark()?
            .saturating_add(1)
            .max(command.now_ms.saturating_mul(1_000_000));
        let letter = DeadLetter {
            group: command.group.name.clone(),
            source_topic: note.topic.clone(),
            source_offset: note.offset,
            delivery_count: note.deliveries,
            reason: note.reason.clone(),
            published_ms: record.as_deref().and_then(deadletter::received_ms),
            dead_ms: command.now_ms,
            record: record.map(hex::encode).unwrap_or_default(),
        };
        let Some((bytes, leaf)) = deadletter::build(Build {
            key,
            topic: &command.group.dead_letter,
            letter,
            seq,
            salt,
        }) else {
            tracing::error!(group = %command.group.name, "dead letter could not be built");
            return Ok(());
        };
        host.append(Append {
            topic: command.group.dead_letter.clone(),
            record: bytes,
            seq,
            leaf,
        })?;
        Ok(())
    }

    fn status(&self, policy: &GroupPolicy, host: &dyn Host) -> GroupStatus {
        let state = self
            .staged
            .get(&policy.name)
            .or_else(|| self.committed.get(&policy.name));
        let mut topics = Vec::new();
        let mut waiting = None;
        if let Some(state) = state {
            let in_flight_all = state.in_flight();
            for (topic, c) in &state.cursors {
                let head = host.topic(topic).map_or(0, |t| t.1);
                let first = host.first(topic);
                let ready = c
                    .window
                    .range(first..)
                    .filter(|(_, e)| matches!(e.slot, crate::group_state::Slot::Available { .. }));
                let pending = head.saturating_sub(c.next.max(first)) + ready.count() as u64;
                let removed = c.removed.saturating_add(c.removed_below(first));
                let in_flight = c.in_flight();
                if pending > 0 {
                    if in_flight_all >= u64::from(policy.max_in_flight) {
                        waiting = Some(format!(
                            "max_in_flight reached: {in_flight_all} deliveries unacked (limit {})",
                            policy.max_in_flight
                        ));
                    } else if head > c.next && c.next - c.floor >= self.window_max {
                        waiting = Some(format!(
                            "window full on {topic}: offset {} is not settled yet (group_window_max {})",
                            c.floor, self.window_max
                        ));
                    }
                }
                topics.push(GroupTopicStatus {
                    topic: topic.clone(),
                    next_offset: head,
                    acked_floor: c.floor,
                    next_unleased: c.next,
                    pending,
                    in_flight,
                    redelivered: c.redelivered,
                    acked: c.acked,
                    dead: c.dead,
                    removed,
                });
            }
        }
        GroupStatus {
            group: policy.name.clone(),
            waiting,
            topics,
        }
    }

    /// Stages every cursor changed in this write.
    pub fn finish(&mut self, host: &mut dyn Host) -> Result<(), StoreError> {
        for (group, topic) in &self.dirty {
            if let Some(cursor) = self.staged.get(group).and_then(|s| s.cursors.get(topic)) {
                let value = rmp_serde::to_vec(cursor).map_err(|_| StoreError::Corrupt {
                    family: CF_SUBS,
                    what: "cursor encoding",
                })?;
                host.put(&cursor_key(group, topic), &value)?;
            }
        }
        Ok(())
    }

    /// The work-queue topics settled in this write (taken once, by the
    /// writer, after every command of the write was applied).
    pub fn take_work_done(&mut self) -> BTreeMap<String, WorkDone> {
        std::mem::take(&mut self.work_done)
    }

    /// The write is on disk: the staged state becomes the state. Waiting
    /// members are woken when messages were stored (`stored`) or a
    /// settlement or expiry freed work or room.
    pub fn commit(&mut self, stored: bool) {
        self.committed.extend(self.staged.drain());
        self.created.extend(self.staged_created.drain());
        self.dirty.clear();
        self.work_done.clear();
        if stored || std::mem::take(&mut self.changed) {
            self.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The write failed: nothing staged happened.
    pub fn discard(&mut self) {
        self.staged.clear();
        self.staged_created.clear();
        self.dirty.clear();
        self.work_done.clear();
        self.changed = false;
    }
}
