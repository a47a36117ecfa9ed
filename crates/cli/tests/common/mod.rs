//! Helpers shared by the CLI's test binaries.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]
#![allow(dead_code, reason = "each test binary uses a part")]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// A server child process (`cipherinfer serve` on 127.0.0.1:0 with its store in `data_dir`, or
/// any other started by [`Remote::spawn`]); killed on drop.
pub struct Remote {
    child: Child,
    /// The URL the server announced on its first line of stdout.
    pub url: String,
}

impl Remote {
    /// Starts the server with `models` (comma-separated) and `extra` flags and waits for the
    /// URL it announces.
    pub fn start(data_dir: &Path, models: &str, extra: &[&OsStr]) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--bind", "127.0.0.1:0", "--model", models])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra);
        Self::spawn(command, "cipherinfer remote server listening on ")
    }

    /// Spawns any server `command` that announces its URL on its first line of stdout, after
    /// `prefix` (as `serve` and `local --http` do).
    pub fn spawn(mut command: Command, prefix: &str) -> Self {
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self { child, url }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
