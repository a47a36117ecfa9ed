//! A real S3-compatible server for tests (shared by the remote server's tests and, by path, the
//! CLI's): `moto_server` (the `moto[server]` Python package),
//! started on a free loopback port with a fresh bucket.
//!
//! The server is found as `$CIPHERINFER_MOTO` or `moto_server` on `PATH`. Without it the S3
//! tests say so and pass, unless `CIPHERINFER_REQUIRE_S3` is set (as in CI), where its absence
//! fails them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cipherinfer_remote::{S3Credentials, S3Options, Store, StoreLocation};

/// A running `moto_server`, killed on drop.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Its port.
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CIPHERINFER_MOTO") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    })
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Moto {
    /// Starts `moto_server` on a free port; `None` (after saying why) if it is not installed
    /// and not required.
    pub fn start() -> Option<Self> {
        Self::start_on(free_port())
    }

    /// Whether `moto_server` can be started here (fails if it is required and missing).
    pub fn available() -> bool {
        if moto_binary().is_some() {
            return true;
        }
        assert!(
            std::env::var_os("CIPHERINFER_REQUIRE_S3").is_none(),
            "CIPHERINFER_REQUIRE_S3 is set but moto_server was not found \
             (set CIPHERINFER_MOTO or put it on PATH)"
        );
        eprintln!("moto_server not found: the S3 tests are skipped here (CI runs them)");
        false
    }

    /// Starts `moto_server` on `port`.
    pub fn start_on(port: u16) -> Option<Self> {
        if !Self::available() {
            return None;
        }
        let bin = moto_binary()?;
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    /// Creates `bucket` (moto accepts the unsigned request; plain HTTP/1.1 over a socket, so
    /// that every test crate can include this file).
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("reply");
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
    }

    /// How the server reaches this store.
    pub fn options(&self) -> S3Options {
        options_for(&self.endpoint)
    }

    /// The store over `bucket/prefix`.
    pub fn store(&self, bucket: &str, prefix: &str) -> Store {
        Store::s3(bucket, prefix, &self.options()).expect("s3 store")
    }
}

/// Options for an S3 server at `endpoint` (moto takes any credentials), with short waits.
pub fn options_for(endpoint: &str) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        path_style: true,
        request_timeout: Some(Duration::from_secs(3)),
        credentials: Some(S3Credentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
        }),
    }
}

/// `s3://bucket/prefix`.
pub fn location(bucket: &str, prefix: &str) -> StoreLocation {
    StoreLocation::S3 {
        bucket: bucket.into(),
        prefix: prefix.into(),
    }
}
