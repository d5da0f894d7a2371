//! Signet's test tooling (not published): a throwaway [`sandbox`] (a fresh
//! PKI, keys, a policy and a real broker in a temporary folder) and the
//! [`bench`] scenarios, used by the end-to-end tests, the benchmark and
//! `signet bench`.
#![forbid(unsafe_code)]

pub mod bench;
pub mod bench_cluster;
pub mod bench_consume;
pub mod sandbox;
