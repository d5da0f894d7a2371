//! Secrets and defaults (THREATS T15, T16): the broker creates its data
//! folder for its owner only and does not accept QUIC datagrams. (The
//! client-side key-file checks, the audit log's mode and the warning of a
//! broker without an audit trail come with the rest of the audit work.)

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_folder_is_created_for_its_owner_only() {
    let mut sandbox = started().await;
    sandbox.stop().await;
    assert_eq!(mode(&sandbox.data_dir()), 0o700, "data folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_datagrams_are_disabled() {
    let mut sandbox = started().await;
    let alice = client(&sandbox, "alice").await;
    assert_eq!(
        alice.connection().max_datagram_size(),
        None,
        "the broker advertises QUIC datagram support"
    );
    alice.close().await;
    sandbox.stop().await;
}
