//! The `signet` command's library: PKI and key generation, the dev setup,
//! message output, and the benchmark. The binary (`main.rs`) is a thin
//! argument parser over these; tests and benches use them directly.
#![forbid(unsafe_code)]

pub mod bench;
pub mod dev;
pub mod files;
pub mod keys;
pub mod output;
pub mod pki;
pub mod sandbox;
