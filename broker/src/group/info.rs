//! A `GroupInfo` stream: the group's state per topic (next offset, acked
//! floor, pending, in flight, redelivered, acked, dead) and why it waits,
//! for a principal that may join the group. The state is read by a
//! command through the writer, so it is the state as committed, in order
//! with every change.

use super::{now_ms, seed};
use crate::answer;
use crate::commit::CommitRequest;
use crate::group_config::valid_group_name;
use crate::group_writer::{Command, GroupWork, Op, Outcome};
use crate::state::ConnectionState;
use signet_proto::ErrorCode;
use signet_proto::frame::{GroupInfo, Rejection, ServerFrame};
use signet_proto::stream::write_frame;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Answers one `GroupInfo`.
pub async fn run(conn: Arc<ConnectionState>, info: GroupInfo, mut send: quinn::SendStream) {
    let refuse = |code, detail: &'static str| Rejection::new(code, detail);
    if !valid_group_name(&info.group) {
        return answer::refuse(
            &mut send,
            refuse(ErrorCode::NoSuchGroup, "invalid group name"),
        )
        .await;
    }
    let Some(group) = conn
        .policy()
        .consumable(&conn.principal, &info.group)
        .cloned()
    else {
        return answer::refuse(
            &mut send,
            refuse(
                ErrorCode::Forbidden,
                "not allowed to consume from this group",
            ),
        )
        .await;
    };
    let Some(seed) = seed() else {
        return answer::refuse(&mut send, refuse(ErrorCode::Internal, "no randomness")).await;
    };
    let (reply, answer) = oneshot::channel();
    let command = Command {
        group,
        now_ms: now_ms(),
        seed,
        op: Op::Info,
    };
    let work = GroupWork {
        commands: vec![command],
        reply,
    };
    if conn
        .broker
        .commits
        .send(CommitRequest::group(work).into())
        .await
        .is_err()
    {
        return answer::refuse(&mut send, refuse(ErrorCode::Unavailable, "broker stopping")).await;
    }
    match answer.await {
        Ok(Ok(outcomes)) => {
            if let Some(Outcome::Info(status)) = outcomes.into_iter().next() {
                let _ = write_frame(&mut send, &ServerFrame::GroupStatus(status)).await;
                let _ = send.finish();
                return;
            }
            answer::refuse(&mut send, refuse(ErrorCode::Internal, "no status")).await;
        }
        _ => {
            answer::refuse(
                &mut send,
                refuse(ErrorCode::Unavailable, "storage unavailable"),
            )
            .await;
        }
    }
}
