//! `cipherinfer serve` and the channel it offers: plain HTTP off loopback is refused before any
//! model is compiled, the TLS flags go together and bad files are reported, and with a
//! certificate the server announces an `https://` URL; the connection flags bound slow and
//! numerous connections; SIGTERM drains and stops it.
#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{BIN, Remote, temp};

/// Runs `cipherinfer serve ARGS`, which must exit by itself within `limit`.
fn serve_exits(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "cipherinfer serve {args:?} still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn plain_http_off_loopback_is_refused_before_compiling_models() {
    let data = temp("refuse").join("data");
    for bind in ["0.0.0.0:0", "[::]:0"] {
        let out = serve_exits(
            &["--bind", bind, "--data-dir", data.to_str().unwrap()],
            Duration::from_secs(20),
        );
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        assert!(stderr.contains("refusing to serve plain HTTP"), "{stderr}");
        assert!(
            stderr.contains("--tls-cert FILE --tls-key FILE"),
            "{stderr}"
        );
        assert!(stderr.contains("--behind-tls-proxy"), "{stderr}");
        assert!(!stderr.contains("compiling models"), "{stderr}");
        assert!(!data.exists(), "the data directory was created");
    }
}

#[test]
fn the_tls_flags_go_together() {
    let out = serve_exits(&["--tls-cert", "cert.pem"], Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--tls-key"),
        "{}",
        text(&out.stderr)
    );
    let out = serve_exits(&["--tls-key", "key.pem"], Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--tls-cert"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_unreadable_certificate_is_reported_before_compiling_models() {
    let dir = temp("nocert");
    let cert = dir.join("absent-cert.pem");
    let key = dir.join("absent-key.pem");
    let out = serve_exits(
        &[
            "--bind",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot read the TLS certificate file"),
        "{stderr}"
    );
    assert!(stderr.contains("absent-cert.pem"), "{stderr}");
    assert!(!stderr.contains("compiling models"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_a_certificate_the_server_announces_https() {
    let dir = temp("https");
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();

    let serving = Remote::start(
        &dir.join("data"),
        "mnist-cnn",
        &[
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ],
    );
    let url = &serving.url;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert!(url.ends_with("/mcp"), "{url}");
    drop(serving);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads until the server closes `stream` (true) or `within` passes (false); returns what it
/// wrote too.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut seen = Vec::new();
    let closed = match stream.read_to_end(&mut seen) {
        Ok(_) => true,
        // A reset is a close too; a timeout is not.
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    (text(&seen), closed)
}

#[test]
fn the_connection_flags_bound_slow_and_numerous_connections() {
    let dir = temp("conn-limits");
    let serving = Remote::start(
        &dir.join("data"),
        "mnist-cnn",
        &[
            "--max-connections-per-address".as_ref(),
            "1".as_ref(),
            "--header-timeout-s".as_ref(),
            "3".as_ref(),
        ],
    );
    let url = &serving.url;
    let addr = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/mcp"))
        .unwrap_or_else(|| panic!("unexpected URL {url}"))
        .to_string();
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

    // One silent connection takes this address's only place ...
    let started = Instant::now();
    let mut silent = TcpStream::connect(&addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // ... so a second one is closed without an answer ...
    let mut second = TcpStream::connect(&addr).unwrap();
    let _ = second.write_all(healthz);
    let (written, closed) = read_until_closed(&mut second, Duration::from_secs(5));
    assert!(closed && written.is_empty(), "{written}");
    // ... and the silent one is closed after --header-timeout-s.
    let (written, closed) = read_until_closed(&mut silent, Duration::from_secs(15));
    assert!(closed && written.is_empty(), "{written}");
    assert!(started.elapsed() >= Duration::from_millis(2900));

    // Then the place is free again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut next = TcpStream::connect(&addr).unwrap();
        let _ = next.write_all(healthz);
        let (written, _) = read_until_closed(&mut next, Duration::from_secs(2));
        if written.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the place was not given back: {written:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(serving);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connection_flags_out_of_range_are_refused() {
    for (flag, value) in [
        ("--header-timeout-s", "0"),
        ("--header-timeout-s", "18446744073709551615"),
        ("--body-timeout-s", "100000"),
        ("--max-connections", "0"),
        ("--max-connections", "99999999999"),
        ("--max-connections-per-address", "2000000"),
    ] {
        let out = serve_exits(&[flag, value], Duration::from_secs(20));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("compiling models"), "{stderr}");
    }
}

#[test]
fn sigterm_drains_and_stops_the_server() {
    let dir = temp("sigterm");
    let mut remote = Remote::start(&dir, "mnist-cnn", &[]);
    // Ready before; after SIGTERM it drains (nothing runs) and exits cleanly, well within the
    // drain deadline.
    let base = remote.url.trim_end_matches("/mcp").to_string();
    let addr = base.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (reply, _) = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"status\":\"ready\""), "{reply}");
    let status = remote
        .terminate(Duration::from_secs(20))
        .expect("serve stops after SIGTERM");
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
