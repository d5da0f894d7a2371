//! `signet consume` and `signet group info`: a consumer-group member from a
//! shell, and a group's state as one JSON object.

use crate::output;
use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use futures_util::StreamExt;
use serde_json::{Value, json};
use signet_client::{Client, ClientConfig, Error as ClientError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// What `signet consume` does with each delivery after printing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Then {
    /// Ack it (done).
    Ack,
    /// Nak it (redeliver after the backoff, or --nak-delay).
    Nak,
    /// Leave it unsettled (its lease expires).
    None,
    /// Term it (dead-letter now).
    Term,
}

#[derive(Args)]
pub struct ConsumeArgs {
    /// The client file.
    #[arg(long)]
    pub client: PathBuf,
    /// The consumer group.
    #[arg(long)]
    pub group: String,
    /// Exit after this many deliveries (verified or reported bad).
    #[arg(long)]
    pub count: Option<u64>,
    /// What to do with each delivery.
    #[arg(long, value_enum, default_value = "ack")]
    pub then: Then,
    /// With --then nak: redeliver no sooner than this (ms; the backoff still applies).
    #[arg(long, value_name = "MS")]
    pub nak_delay: Option<u64>,
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Print a group's state as one JSON object.
    Info {
        /// The client file.
        #[arg(long)]
        client: PathBuf,
        /// The consumer group.
        #[arg(long)]
        group: String,
    },
}

fn code_name(e: &ClientError) -> String {
    match (e.code(), e) {
        (Some(code), _) => code.to_string(),
        (None, ClientError::Config(_)) => "ConfigError".to_string(),
        (None, _) => "ConnectionError".to_string(),
    }
}

/// `signet consume`.
pub async fn consume(args: ConsumeArgs) -> Result<ExitCode> {
    let config = ClientConfig::load(&args.client)?;
    let client = Client::connect(config).await?;
    let prefetch = args
        .count
        .map_or(signet_client::consumer::DEFAULT_PREFETCH, |c| {
            u32::try_from(c)
                .unwrap_or(u32::MAX)
                .min(signet_client::consumer::DEFAULT_PREFETCH)
        });
    let mut deliveries = match client.consume_with(&args.group, prefetch.max(1)).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "{}",
                json!({ "error": code_name(&e), "detail": e.to_string() })
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut stdout = tokio::io::stdout();
    let mut seen = 0u64;
    let mut bad = 0u64;
    while args.count.is_none_or(|c| seen < c) {
        let Some(item) = deliveries.next().await else {
            break;
        };
        seen += 1;
        match item {
            Ok(d) => {
                let mut line = output::message_json(&d.message);
                line["delivery_count"] = json!(d.delivery_count);
                line["group"] = json!(d.group);
                stdout.write_all(format!("{line}\n").as_bytes()).await?;
                stdout.flush().await?;
                let settled = match args.then {
                    Then::Ack => d.ack().await,
                    Then::Nak => d.nak(args.nak_delay.map(Duration::from_millis)).await,
                    Then::Term => d.term("signet consume --then term").await,
                    Then::None => Ok(()),
                };
                if let Err(e) = settled {
                    eprintln!(
                        "{}",
                        json!({ "offset": d.offset(), "topic": d.topic(), "error": code_name(&e), "detail": e.to_string() })
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
            Err(ClientError::Verify {
                offset,
                code,
                detail,
            }) => {
                bad += 1;
                eprintln!(
                    "{}",
                    json!({ "offset": offset, "error": code.to_string(), "detail": detail })
                );
            }
            Err(e) => {
                eprintln!(
                    "{}",
                    json!({ "error": code_name(&e), "detail": e.to_string() })
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    // Deliveries already received beyond --count go back to the group now
    // rather than at their lease deadline (one in flight still waits for it).
    use futures_util::FutureExt;
    while let Some(Some(Ok(extra))) = deliveries.next().now_or_never() {
        let _ = extra.nak(None).await;
    }
    drop(deliveries);
    client.close().await;
    Ok(if bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `signet group …`.
pub async fn group_command(command: GroupCommand) -> Result<ExitCode> {
    let GroupCommand::Info { client, group } = command;
    let config = ClientConfig::load(&client)?;
    let client = Client::connect(config).await?;
    let status = match client.group_info(&group).await {
        Ok(status) => status,
        Err(e) => {
            eprintln!(
                "{}",
                json!({ "error": code_name(&e), "detail": e.to_string() })
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let topics: Vec<Value> = status
        .topics
        .iter()
        .map(|t| {
            json!({
                "topic": t.topic,
                "next_offset": t.next_offset,
                "acked_floor": t.acked_floor,
                "next_unleased": t.next_unleased,
                "pending": t.pending,
                "in_flight": t.in_flight,
                "redelivered": t.redelivered,
                "acked": t.acked,
                "dead": t.dead,
                "removed": t.removed,
            })
        })
        .collect();
    println!(
        "{}",
        json!({ "group": status.group, "waiting": status.waiting, "topics": topics })
    );
    client.close().await;
    Ok(ExitCode::SUCCESS)
}

/// The `dead_letter` member of a `signet sub` line for a dead letter: what
/// the broker signed, and the original verified against its publisher.
pub fn dead_letter_json(client: &Client, m: &signet_client::Message) -> Result<Value, ClientError> {
    let opened = client.open_dead_letter(m)?;
    let l = &opened.letter;
    Ok(json!({
        "group": l.group,
        "source_topic": l.source_topic,
        "source_offset": l.source_offset,
        "delivery_count": l.delivery_count,
        "reason": l.reason,
        "published_ms": l.published_ms,
        "dead_ms": l.dead_ms,
        "broker_key_id": m.key_id.to_hex(),
        "broker_signature_verified": true,
        "original": output::message_json(&opened.original),
    }))
}
