//! The Signet broker: a QUIC + mutual TLS listener that accepts only signed
//! envelopes its policy allows, stores them durably in RocksDB with group
//! commits, and delivers them to subscribers in order.
//!
//! Read top to bottom, following a message:
//! - [`config`]: a policy file ([`policy_file`]) → start-only [`settings`]
//!   (with the [`limits`] table) and the hot-reloadable [`policy`];
//! - [`server`]: start-up, the accept loop (address validation, handshake
//!   caps and deadline, connection cap) and shutdown;
//! - [`tls`]: TLS 1.3, mandatory client certificates, principal from cert;
//! - [`handshake`]: handshakes in progress, capped overall and per address;
//! - [`session`]: one connection, dispatching its streams by first frame;
//! - [`frames`]: reading frames within the connection's budget and deadline;
//! - [`publish`]: a pipelined publish stream: permit → [`ingest`] → commit
//!   → answer;
//! - [`ingest`]: the checks, in order, each able only to reject
//!   ([`quota`], [`acl`], key binding, signature, payload rules,
//!   [`replay`] and clock);
//! - [`commit`]: the group commit into [`store`];
//! - [`retention`] ([`trim`], [`ledger`], [`trimmer`]): per-topic limits,
//!   the oldest records deleted in the group commit (whole committed runs
//!   by count from the [`ledger`], else read) and by periodic passes;
//! - [`subscribe`] and [`fanout`]: delivery from storage, stored then live;
//! - [`group`] ([`group_config`], [`group_state`], [`group_writer`],
//!   [`dead_letter`]): consumer groups (leases, acks, backoff, dead letters),
//!   their state changed only by commands the commit writer applies;
//! - [`state`]: what tasks share (broker-wide and per connection);
//! - [`answer`]: typed refusals written to peers;
//! - [`reload`]: hot reload of the policy (SIGHUP, file watch);
//! - [`audit`]: the hash-chained audit log, with checkpoints signed by the
//!   broker's identity key and published by [`system`];
//! - [`metrics`]: counters for every acceptance and rejection;
//! - [`cluster`] ([`cluster_config`]): a broker as a node of a cluster
//!   (phase A: the metadata Raft group and the node transport).
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod acl;
pub mod answer;
pub mod audit;
pub mod chunk;
pub mod clock;
pub mod cluster;
pub mod cluster_config;
pub mod commit;
pub mod config;
pub mod dead_letter;
pub mod disk;
pub mod error;
pub mod fanout;
pub mod floors;
pub mod frames;
pub mod fuzzing;
pub mod group;
pub mod group_config;
pub mod group_state;
pub mod group_writer;
pub mod handshake;
pub mod ingest;
pub mod ledger;
pub mod limits;
pub mod message_key;
pub mod metrics;
pub mod pattern;
pub mod policy;
pub mod policy_file;
pub mod publish;
pub mod quota;
pub mod reload;
pub mod replay;
pub mod retention;
pub mod server;
pub mod session;
pub mod settings;
pub mod state;
pub mod store;
pub mod subscribe;
pub mod system;
pub mod tls;
pub mod trim;
pub mod trimmer;
pub mod units;

pub use config::Config;
pub use error::BrokerError;
pub use reload::Reloaded;
pub use server::{Broker, start};
