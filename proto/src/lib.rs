//! Signet's wire protocol, with no I/O and no async runtime.
//!
//! - [`envelope`]: the signed message and its canonical signing bytes;
//! - [`merkle`] and [`batch`]: batch signatures (one Ed25519 signature over a
//!   Merkle root, each envelope carrying its own inclusion proof);
//! - [`keys`]: key ids and the `ed25519:<base64>` text form;
//! - [`topic`]: topic names and patterns (`*` one token, `>` the rest);
//! - [`frame`] and [`codec`]: the frames and their one bounded decoder;
//! - [`code`]: stable error codes shared by broker and client;
//! - [`placement`]: which data group of a cluster holds a topic.
#![forbid(unsafe_code)]

pub mod batch;
mod bounded;
pub mod code;
pub mod codec;
#[cfg(feature = "encrypt")]
pub mod crypt;
pub mod dead_letter;
pub mod envelope;
mod fixed;
pub mod frame;
pub mod keys;
pub mod limits;
pub mod merkle;
pub mod placement;
#[cfg(feature = "schema")]
pub mod schema;
#[cfg(feature = "stream")]
pub mod stream;
pub mod topic;

pub use code::ErrorCode;
pub use envelope::{Envelope, Header, Proof, Salt, StoredRecord};
pub use keys::{KeyId, PublicKey, SigningKey};
