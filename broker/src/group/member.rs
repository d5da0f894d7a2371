//! One consumer-group member: a stream that starts with `Consume`. After
//! the checks (a `consume` grant for the group, an identity key to sign
//! dead letters) the broker answers `Joined`, then leases messages to the
//! member through the writer (each lease on disk before its delivery is
//! sent) and sends them as `GroupDeliver` frames; the member's `Settle`
//! frames become commands for the writer, each answered by one `Settled`
//! after its write, in order.
//!
//! The member holds at most `prefetch` (≤ `group_prefetch_max`)
//! deliveries; it asks for more when one settles, when anything was
//! committed (new messages, another member's settlement), and when the
//! earliest backoff or lease deadline the writer reported passes. A reload
//! that takes the `consume` grant away ends the stream with `Forbidden`;
//! the member's leases then expire at their deadlines.
//!
//! On a cluster node the commands go through the data group's log
//! ([`crate::cluster::ClusterNode::submit_work`]) instead, so every
//! replica applies them; a member joins only on the data leader and its
//! stream ends with `NotLeader` when this node stops leading.

use super::{now_ms, seed};
use crate::answer;
use crate::audit::Event;
use crate::cluster::{PublishError, not_leader};
use crate::commit::CommitRequest;
use crate::frames::{self, FrameError};
use crate::group_config::{GroupPolicy, valid_group_name};
use crate::group_state::{Settlement, Waiting};
use crate::group_writer::{Command, GroupLease, GroupWork, Op, Outcome};
use crate::limits::Limits;
use crate::state::ConnectionState;
use serde_json::json;
use signet_proto::ErrorCode;
use signet_proto::frame::{
    ClientFrame, Consume, GroupDelivery, Outcome as Wire, Rejection, ServerFrame, Settle,
    SettleAction,
};
use signet_proto::limits::{DELIVER_MESSAGES_MAX, TERM_REASON_BYTES_MAX};
use signet_proto::stream::write_frame;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Receiver<Result<Vec<Outcome>, ErrorCode>>;

async fn refuse(send: &mut quinn::SendStream, code: ErrorCode, detail: &str) {
    answer::refuse(send, Rejection::new(code, detail)).await;
}

/// Sends commands to the writer (a cluster node: to the log of data group
/// `data_group`, which every replica's writer applies); `None` if it
/// stopped.
async fn submit(conn: &ConnectionState, data_group: u64, commands: Vec<Command>) -> Option<Reply> {
    let (reply, answer) = oneshot::channel();
    if let Some(cluster) = &conn.broker.cluster {
        // Queued here, in the member's order; answered by a task.
        let submitted = cluster.submit_work(data_group, commands).await;
        tokio::spawn(async move {
            let result = match submitted {
                Ok(pending) => pending.await,
                Err(e) => Err(e),
            };
            let _ = reply.send(result.map_err(|e| match e {
                PublishError::NotLeader { .. } => ErrorCode::NotLeader,
                PublishError::Refused(code) => code,
                PublishError::Unavailable(why) => {
                    tracing::warn!(error = %why, "group commands not committed by the cluster");
                    ErrorCode::Unavailable
                }
            }));
        });
        return Some(answer);
    }
    conn.broker
        .commits
        .send(CommitRequest::group(GroupWork { commands, reply }).into())
        .await
        .ok()?;
    Some(answer)
}

/// Serves one member until it leaves, its grant is revoked or the broker stops.
pub async fn run(
    conn: Arc<ConnectionState>,
    consume: Consume,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    if !valid_group_name(&consume.group) {
        return refuse(&mut send, ErrorCode::NoSuchGroup, "invalid group name").await;
    }
    let mut policy_changes = conn.broker.watch_policy();
    let Some(group) = conn
        .policy()
        .consumable(&conn.principal, &consume.group)
        .cloned()
    else {
        tracing::info!(principal = %conn.principal, group = %consume.group, "consume denied");
        conn.broker.audit.record(Event::new(
            "consume_denied",
            json!({ "principal": &*conn.principal, "remote": conn.conn.remote_address().to_string(), "group": consume.group, "code": ErrorCode::Forbidden.to_string() }),
        ));
        return refuse(
            &mut send,
            ErrorCode::Forbidden,
            "not allowed to consume from this group",
        )
        .await;
    };
    if !conn.broker.groups.enabled {
        return refuse(
            &mut send,
            ErrorCode::Unavailable,
            "consumer groups need the broker's identity key ([broker] identity_key)",
        )
        .await;
    }
    // The data group whose log holds the group's commands (the policy
    // was refused at load unless there is one).
    let data_group = match &conn.broker.cluster {
        Some(cluster) => group.data_group(cluster.data_groups()).unwrap_or(1),
        None => 0,
    };
    if let Some(cluster) = &conn.broker.cluster
        && !cluster.leads_data(data_group)
    {
        // A group's leases and settlements go through the data group's
        // leader: the member joins there.
        let leader = cluster.data_leader_client(data_group);
        return answer::refuse(&mut send, not_leader(leader)).await;
    }
    let Some(member_seed) = seed() else {
        return refuse(&mut send, ErrorCode::Internal, "no randomness").await;
    };
    let member = u64::from_be_bytes([
        member_seed[0],
        member_seed[1],
        member_seed[2],
        member_seed[3],
        member_seed[4],
        member_seed[5],
        member_seed[6],
        member_seed[7],
    ]);
    let prefetch = consume.prefetch.clamp(
        1,
        u32::try_from(conn.broker.limits().group_prefetch_max).unwrap_or(u32::MAX),
    );
    if write_frame(
        &mut send,
        &ServerFrame::Joined {
            group: group.name.clone(),
        },
    )
    .await
    .is_err()
    {
        return;
    }
    tracing::info!(principal = %conn.principal, group = %group.name, "member joined");
    conn.broker.audit.record(Event::new(
        "member_joined",
        json!({ "principal": &*conn.principal, "remote": conn.conn.remote_address().to_string(), "group": group.name }),
    ));
    let (frames_tx, frames_rx) = mpsc::channel(4);
    let reader = tokio::spawn(read_frames(conn.clone(), recv, frames_tx));
    let mut m = Member {
        conn: &conn,
        group,
        data_group,
        member,
        prefetch,
        held: HashMap::new(),
        send: &mut send,
    };
    let reason = m.serve(frames_rx, &mut policy_changes).await;
    reader.abort();
    tracing::info!(principal = %conn.principal, group = %consume.group, reason, "member left");
    conn.broker.audit.record(Event::new(
        "member_left",
        json!({ "principal": &*conn.principal, "remote": conn.conn.remote_address().to_string(), "group": consume.group, "reason": reason }),
    ));
}

/// Reads the member's frames; ends with the error (or `None` at the end).
async fn read_frames(
    conn: Arc<ConnectionState>,
    mut recv: quinn::RecvStream,
    out: mpsc::Sender<Result<ClientFrame, FrameError>>,
) -> quinn::RecvStream {
    loop {
        let frame = match frames::wait_start(&mut recv).await {
            Ok(Some(first)) => frames::read_started(&conn, &mut recv, first)
                .await
                .map(|b| b.frame),
            Ok(None) => return recv,
            Err(e) => Err(e),
        };
        let failed = frame.is_err();
        if out.send(frame).await.is_err() || failed {
            return recv;
        }
    }
}

/// A settlement sent to the writer, waiting for its outcome.
struct Pending {
    reply: Reply,
    /// The ops of the frame: (topic, offset, action), `None` for one
    /// refused before the writer.
    ops: Vec<(String, u64, Option<SettleAction>)>,
    /// Outcomes of ops refused before the writer.
    early: Vec<Option<Rejection>>,
    /// A lease command follows the settlements in the same write (its
    /// outcome is the last).
    leases: bool,
}

struct Member<'a> {
    conn: &'a ConnectionState,
    group: Arc<GroupPolicy>,
    /// A cluster's data group holding the group's commands (0: none).
    data_group: u64,
    member: u64,
    prefetch: u32,
    /// Deliveries leased to this member and not settled: deadline by
    /// (topic, offset).
    held: HashMap<(String, u64), u64>,
    send: &'a mut quinn::SendStream,
}

impl Member<'_> {
    fn credit(&mut self, now: u64) -> u32 {
        self.held.retain(|_, deadline| *deadline > now);
        self.prefetch
            .saturating_sub(u32::try_from(self.held.len()).unwrap_or(u32::MAX))
    }

    /// A lease of up to `want` deliveries (never past `holding_max` live
    /// leases of this member), under the grants in force now.
    fn lease(&self, want: u32, holding_max: Option<u32>) -> Option<Command> {
        let grants = match self.conn.policy().principal(&self.conn.principal) {
            Some(p) => Arc::new(p.grants.clone()),
            None => Arc::new(crate::acl::Grants::default()),
        };
        self.command(Op::Lease {
            member: self.member,
            want,
            holding_max,
            grants,
        })
    }

    fn command(&self, op: Op) -> Option<Command> {
        Some(Command {
            group: self.group.clone(),
            now_ms: now_ms(),
            seed: seed()?,
            op,
        })
    }

    async fn serve(
        &mut self,
        mut frames: mpsc::Receiver<Result<ClientFrame, FrameError>>,
        policy: &mut tokio::sync::watch::Receiver<Arc<crate::policy::Policy>>,
    ) -> &'static str {
        let mut wake = self.conn.broker.groups.wake.clone();
        let mut lease: Option<Reply> = None;
        let mut settles: VecDeque<Pending> = VecDeque::new();
        let mut want = true;
        let mut forced = true;
        let mut next_wake: Option<u64> = None;
        // A settle write in flight carries a lease command.
        let mut settle_leasing = false;
        loop {
            let now = now_ms();
            if lease.is_none() && !settle_leasing && want {
                let credit = self.credit(now);
                if credit > 0 || forced {
                    let Some(command) = self.lease(credit, None) else {
                        return "no randomness";
                    };
                    let Some(reply) = submit(self.conn, self.data_group, vec![command]).await
                    else {
                        return "broker stopping";
                    };
                    lease = Some(reply);
                    want = false;
                    forced = false;
                }
            }
            let held_wake = self.held.values().min().copied();
            let wake_at = match (next_wake, held_wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = wake_at.map(|at| Duration::from_millis(at.saturating_sub(now) + 1));
            tokio::select! {
                frame = frames.recv() => match frame {
                    Some(Ok(ClientFrame::Settle(ops))) => {
                        // With no lease outstanding, the next lease rides in
                        // the settlements' write (one synced write, not two).
                        let lease_too = lease.is_none() && !settle_leasing;
                        match self.settle(ops, lease_too).await {
                            Some(p) => {
                                settle_leasing |= p.leases;
                                settles.push_back(p);
                            }
                            None => return "broker stopping",
                        }
                    }
                    Some(Ok(_)) => {
                        let detail = "only Settle frames follow Consume";
                        refuse(self.send, ErrorCode::BadFrame, detail).await;
                        self.conn.conn.close(ErrorCode::BadFrame.0.into(), detail.as_bytes());
                        return "bad frame";
                    }
                    Some(Err(e)) => {
                        if let FrameError::Read(read) = e {
                            answer::frame_error(self.conn, self.send, read).await;
                        } else {
                            refuse(self.send, ErrorCode::BadFrame, "frame not received within the broker's deadline").await;
                        }
                        return "bad frame";
                    }
                    None => return "closed by member",
                },
                out = wait(&mut lease), if lease.is_some() => {
                    lease = None;
                    match out {
                        Ok(Outcome::Leased { leases, waiting }) => {
                            next_wake = waiting.wake_at_ms;
                            if !leases.is_empty() {
                                want = true;
                                if self.deliver(leases).await.is_err() {
                                    return "stream closed";
                                }
                            }
                        }
                        Err(ErrorCode::NotLeader) => return self.not_leader().await,
                        _ => {
                            refuse(self.send, ErrorCode::Unavailable, "storage unavailable").await;
                            return "storage unavailable";
                        }
                    }
                }
                out = wait_settle(settles.front_mut()), if !settles.is_empty() => {
                    let Some(pending) = settles.pop_front() else { continue };
                    if pending.leases {
                        settle_leasing = false;
                    }
                    let moved = matches!(out, Err(ErrorCode::NotLeader));
                    let settled = self.settled(pending, out).await;
                    if moved {
                        return self.not_leader().await;
                    }
                    match settled {
                        Ok(Some(waiting)) => {
                            next_wake = waiting.wake_at_ms;
                            want = true;
                        }
                        Ok(None) => want = true,
                        Err(()) => return "stream closed",
                    }
                }
                changed = wake.changed() => {
                    if changed.is_err() {
                        return "broker stopping";
                    }
                    want = true;
                }
                _ = tokio::time::sleep(sleep.unwrap_or(Duration::from_secs(3600))), if sleep.is_some() => {
                    want = true;
                    forced = true;
                    next_wake = None;
                }
                changed = policy.changed() => {
                    if changed.is_err() {
                        return "broker stopping";
                    }
                    let policy = policy.borrow_and_update().clone();
                    match policy.consumable(&self.conn.principal, &self.group.name) {
                        Some(group) => {
                            self.group = group.clone();
                            want = true;
                            forced = true;
                        }
                        None => {
                            refuse(self.send, ErrorCode::Forbidden, "membership revoked by a policy reload").await;
                            return "revoked";
                        }
                    }
                }
                _ = self.send.stopped() => return "closed by member",
            }
        }
    }

    /// Ends the stream with `NotLeader` (naming the leader when known): this
    /// node lost the data group's leadership; the member joins the new
    /// leader, and its leases here end at their deadlines.
    async fn not_leader(&mut self) -> &'static str {
        let leader = self
            .conn
            .broker
            .cluster
            .as_ref()
            .and_then(|c| c.data_leader_client(self.data_group));
        answer::refuse(self.send, not_leader(leader)).await;
        "not the leader"
    }

    /// Turns one `Settle` frame into commands and sends them to the writer.
    /// With `lease_too`, a lease command for the credit these settlements
    /// free (acks, naks and terms of deliveries this member holds) goes in
    /// the same write, after them.
    async fn settle(&mut self, ops: Vec<Settle>, lease_too: bool) -> Option<Pending> {
        let freed = ops
            .iter()
            .filter(|op| {
                !matches!(op.action, SettleAction::Extend)
                    && self.held.contains_key(&(op.topic.clone(), op.offset))
            })
            .count();
        let mut commands = Vec::with_capacity(ops.len() + 1);
        let mut meta = Vec::with_capacity(ops.len());
        let mut early = Vec::with_capacity(ops.len());
        for op in ops {
            let action = match &op.action {
                SettleAction::Ack => Settlement::Ack,
                SettleAction::Nak(delay) => Settlement::Nak(*delay),
                SettleAction::Extend => Settlement::Extend,
                SettleAction::Term(reason) => {
                    let mut reason = reason.clone();
                    if reason.len() > TERM_REASON_BYTES_MAX {
                        let mut cut = TERM_REASON_BYTES_MAX;
                        while !reason.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        reason.truncate(cut);
                    }
                    Settlement::Term(reason)
                }
            };
            let command = self.command(Op::Settle {
                member: self.member,
                topic: op.topic.clone(),
                offset: op.offset,
                token: op.token,
                action,
            })?;
            commands.push(command);
            meta.push((op.topic, op.offset, Some(op.action)));
            early.push(None);
        }
        let credit = self
            .credit(now_ms())
            .saturating_add(u32::try_from(freed).unwrap_or(u32::MAX))
            .min(self.prefetch);
        let leases = lease_too && credit > 0;
        if leases {
            // Counted in the writer after the settlements: refused ones
            // free nothing, so the member never holds past its prefetch.
            commands.push(self.lease(credit, Some(self.prefetch))?);
        }
        let reply = submit(self.conn, self.data_group, commands).await?;
        Some(Pending {
            reply,
            ops: meta,
            early,
            leases,
        })
    }

    /// Answers one `Settle` frame once its write returned, then sends what
    /// a lease that rode along leased (and returns why the group waits).
    async fn settled(
        &mut self,
        pending: Pending,
        out: Result<Vec<Outcome>, ErrorCode>,
    ) -> Result<Option<Waiting>, ()> {
        let mut results = Vec::with_capacity(pending.ops.len());
        let mut leased = None;
        let mut failed = None;
        let outcomes: Vec<Option<Outcome>> = match out {
            Ok(mut outcomes) => {
                if pending.leases && outcomes.len() > pending.ops.len() {
                    leased = outcomes.pop();
                }
                outcomes.into_iter().map(Some).collect()
            }
            Err(code) => {
                failed = Some(code);
                pending.ops.iter().map(|_| None).collect()
            }
        };
        for (((topic, offset, action), outcome), early) in
            pending.ops.into_iter().zip(outcomes).zip(pending.early)
        {
            if let Some(rejection) = early {
                results.push(Wire::Nack(rejection));
                continue;
            }
            match outcome {
                Some(Outcome::Settled(Ok(()))) => {
                    match action {
                        Some(SettleAction::Extend) => {
                            let deadline = now_ms().saturating_add(self.group.ack_wait_ms);
                            if let Some(d) = self.held.get_mut(&(topic.clone(), offset)) {
                                *d = deadline;
                            }
                        }
                        _ => {
                            self.held.remove(&(topic.clone(), offset));
                        }
                    }
                    results.push(Wire::Ack(offset));
                }
                Some(Outcome::Settled(Err(code))) => results.push(Wire::Nack(Rejection::new(
                    code,
                    "the lease token is not this member's live lease on that message",
                ))),
                _ => results.push(Wire::Nack(match failed {
                    Some(ErrorCode::NotLeader) => Rejection::new(
                        ErrorCode::NotLeader,
                        "this node no longer leads the group; the settlement may still apply, else the lease ends at its deadline",
                    ),
                    _ => Rejection::new(
                        ErrorCode::Unavailable,
                        "the settlement was not confirmed; the lease ends at its deadline",
                    ),
                })),
            }
        }
        write_frame(self.send, &ServerFrame::Settled(results))
            .await
            .map_err(|_| ())?;
        match leased {
            Some(Outcome::Leased { leases, waiting }) => {
                if !leases.is_empty() {
                    self.deliver(leases).await?;
                }
                Ok(Some(waiting))
            }
            _ => Ok(None),
        }
    }

    /// Reads the leased records and sends them.
    async fn deliver(&mut self, leases: Vec<GroupLease>) -> Result<(), ()> {
        for lease in &leases {
            self.held
                .insert((lease.topic.clone(), lease.offset), lease.deadline_ms);
        }
        let store = self.conn.broker.store.clone();
        let chunk_bytes_max = Limits::usize(self.conn.broker.limits().deliver_chunk_bytes_max);
        let read = tokio::task::spawn_blocking(move || {
            let mut chunks: Vec<Vec<GroupDelivery>> = vec![Vec::new()];
            let mut bytes = 0usize;
            for l in leases {
                let Ok(Some(record)) = store.message(l.topic_id, l.offset) else {
                    tracing::error!(topic = %l.topic, offset = l.offset, "leased record unreadable");
                    continue;
                };
                let full = chunks.last().is_some_and(|c| {
                    c.len() >= DELIVER_MESSAGES_MAX
                        || (!c.is_empty() && bytes.saturating_add(record.len()) > chunk_bytes_max)
                });
                if full {
                    chunks.push(Vec::new());
                    bytes = 0;
                }
                bytes = bytes.saturating_add(record.len());
                if let Some(chunk) = chunks.last_mut() {
                    chunk.push(GroupDelivery {
                        topic: l.topic,
                        offset: l.offset,
                        delivery_count: l.deliveries,
                        token: l.token.to_vec(),
                        deadline_ms: l.deadline_ms,
                        record,
                    });
                }
            }
            chunks
        })
        .await
        .map_err(|_| ())?;
        for chunk in read {
            if chunk.is_empty() {
                continue;
            }
            let n = chunk.len();
            write_frame(self.send, &ServerFrame::GroupDeliver(chunk))
                .await
                .map_err(|_| ())?;
            crate::metrics::delivered(n);
        }
        Ok(())
    }
}

/// The lease reply's first outcome, or why there is none.
async fn wait(lease: &mut Option<Reply>) -> Result<Outcome, ErrorCode> {
    let Some(reply) = lease.as_mut() else {
        return Err(ErrorCode::Internal);
    };
    match reply.await {
        Ok(Ok(outcomes)) => outcomes.into_iter().next().ok_or(ErrorCode::Internal),
        Ok(Err(code)) => Err(code),
        Err(_) => Err(ErrorCode::Unavailable),
    }
}

/// The front settlement's outcomes.
async fn wait_settle(front: Option<&mut Pending>) -> Result<Vec<Outcome>, ErrorCode> {
    match front {
        Some(p) => (&mut p.reply).await.unwrap_or(Err(ErrorCode::Unavailable)),
        None => std::future::pending().await,
    }
}
