//! Helpers shared by the CLI's test binaries.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// The `cipherinfer` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_cipherinfer");

/// A fresh directory under the system's temporary directory.
pub fn temp(name: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cipherinfer-cli-{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
