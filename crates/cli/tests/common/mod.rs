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
    pub fn spawn(command: Command, prefix: &str) -> Self {
        Self::spawn_logging(command, prefix, Stdio::inherit())
    }

    /// [`Remote::spawn`] with the server's stderr (its log) sent to `log`; `RUST_LOG` is
    /// `warn` unless the command sets it.
    pub fn spawn_logging(mut command: Command, prefix: &str, log: impl Into<Stdio>) -> Self {
        if !command.get_envs().any(|(k, _)| k == "RUST_LOG") {
            command.env("RUST_LOG", "warn");
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
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

impl Remote {
    /// Sends SIGTERM (a service manager's stop) and waits up to `limit` for the exit status.
    pub fn terminate(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// Kills the server at once (SIGKILL: no shutdown, no flush) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
