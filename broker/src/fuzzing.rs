//! Entry points for fuzz targets (`fuzz/`) and the corpus replay test
//! (`tests/fuzz_corpus.rs`). Each panics only on a bug.

use crate::config::Config;
use std::path::Path;

/// The policy-file parser and its validation ([`Config::parse`]): refuses
/// or accepts, never panics. Relative paths resolve against a folder that
/// does not exist, so a schema named by a relative path is refused without
/// reading anything.
pub fn policy_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, Path::new("/nonexistent/signet-fuzz"));
    }
}
