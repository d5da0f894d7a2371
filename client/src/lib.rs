//! The Signet client: connect with mutual TLS, publish signed messages
//! (pipelined and batch-signed automatically), and subscribe to verified
//! message streams.
//!
//! ```no_run
//! # async fn demo() -> Result<(), signet_client::Error> {
//! use futures_util::StreamExt;
//! let config = signet_client::ClientConfig::load("publisher.toml".as_ref())?;
//! let client = signet_client::Client::connect(config).await?;
//! let offset = client.publish("orders.created", br#"{"id":1}"#.to_vec()).await?;
//! let mut messages = client.subscribe("orders.created", signet_client::StartAt::Offset(offset)).await?;
//! let first = messages.next().await;
//! # Ok(()) }
//! ```
//!
//! Every delivered message is verified against the publisher keys in the
//! client file's `[trust]` table (never keys the broker sends) and the
//! topics each key may write, and its seq must be above every seq the
//! subscription already yielded from that key, before it is yielded; one
//! that fails is yielded as [`Error::Verify`], never as a message.
#![forbid(unsafe_code)]

mod client;
mod config;
pub mod consumer;
pub mod dead_letter;
mod error;
pub mod fuzzing;
mod keyfile;
mod lanes;
mod limits;
mod link;
mod message;
mod order;
mod payload;
mod publisher;
mod seq;
mod subscription;
mod tls;
mod verify;

pub use client::Client;
pub use config::ClientConfig;
pub use consumer::{Consumer, Delivery};
pub use error::Error;
pub use message::{Message, OutgoingMessage, PendingAck};
pub use signet_proto::ErrorCode;
pub use signet_proto::frame::StartAt;
pub use subscription::Subscription;
pub use verify::{TrustedKey, Verifier};
