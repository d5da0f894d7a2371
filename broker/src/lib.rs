//! The Signet broker: a QUIC + mutual TLS listener that accepts only signed
//! envelopes its policy allows, stores them durably in RocksDB with group
//! commits, and delivers them to subscribers in order.
//!
//! Read top to bottom, following a message:
//! - [`config`]: the policy file → a validated [`Config`];
//! - [`tls`]: TLS 1.3, mandatory client certificates, principal from cert;
//! - [`server`]: the accept loop (connection cap, address validation);
//! - `session`: one connection, dispatching its streams;
//! - `publish`: a pipelined publish stream;
//! - [`ingest`]: the checks, in order, each able only to reject
//!   ([`quota`], [`acl`], key binding, signature, schema and encryption
//!   rules, [`replay`], clock);
//! - [`commit`]: the group commit into [`store`];
//! - [`fanout`] and `subscribe`: delivery from storage, stored then live;
//! - [`quota`]: per-principal rates, stored bytes, connections, subscriptions;
//! - [`reload`]: hot reload of the policy (SIGHUP, file watch);
//! - [`audit`]: the hash-chained audit log;
//! - [`metrics`]: counters for every acceptance and rejection.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod acl;
pub mod audit;
pub mod commit;
pub mod config;
pub mod error;
pub mod fanout;
pub mod ingest;
pub mod metrics;
mod publish;
pub mod quota;
pub mod reload;
pub mod replay;
pub mod server;
mod session;
pub mod store;
mod subscribe;
pub mod tls;

pub use config::Config;
pub use error::BrokerError;
pub use reload::Reloaded;
pub(crate) use server::Shared;
pub use server::{Broker, start};
