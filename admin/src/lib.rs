//! Signet's setup library: what an operator runs before a broker starts. A
//! certificate authority and certificates ([`pki`]), signing and encryption
//! key files ([`keys`]), and the one-folder dev setup ([`dev`]). Files are
//! written once, never overwritten, secrets at mode 0600 ([`files`]).
#![forbid(unsafe_code)]

pub mod cluster;
pub mod dev;
pub mod error;
pub mod files;
pub mod keys;
pub mod pki;

pub use error::AdminError;
