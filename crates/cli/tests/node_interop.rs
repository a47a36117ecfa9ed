//! Interoperability with JavaScript/TypeScript MCP clients nobody on this team wrote, all pinned in
//! `tests/interop/node/package.json` and installed by `.ci/run` (`npm ci`):
//!
//! * the official TypeScript SDK runs `tests/interop/node/client.ts` against `cipherinfer serve`
//!   (Streamable HTTP) and `cipherinfer local` (stdio, as the README's host configuration);
//! * the MCP Inspector CLI lists and calls the tools of both servers, with its schema-portability
//!   check in strict mode;
//! * the MCP conformance suite runs its protocol-level server scenarios (those that need no
//!   fixture tools of the suite's own) at both specification versions the servers speak, against
//!   both servers over HTTP; `conformance-baseline.yml` names the few checks that need fixtures.
//!
//! Node comes from `CIPHERINFER_NODE` (default `node`; Node >= 23, which runs TypeScript by type
//! stripping). Without Node or the installed packages the tests print a skip notice and pass,
//! unless `CIPHERINFER_REQUIRE_INTEROP=1` (CI), where they fail.
#![cfg(all(feature = "server", feature = "client"))]
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{BIN, Remote, temp};
use serde_json::Value;

fn node() -> String {
    std::env::var("CIPHERINFER_NODE").unwrap_or_else(|_| "node".into())
}

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/node")
}

/// The entry script of an installed package's command.
fn package_bin(package: &str, script: &str) -> PathBuf {
    node_dir()
        .join("node_modules/@modelcontextprotocol")
        .join(package)
        .join(script)
}

/// Whether Node (>= 22.6) and the packages are there; if not, fails under
/// `CIPHERINFER_REQUIRE_INTEROP=1`.
fn node_or_skip(test: &str) -> bool {
    let version = Command::new(node()).arg("--version").output().ok();
    let major = version
        .as_ref()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let v = String::from_utf8_lossy(&o.stdout);
            v.trim()
                .trim_start_matches('v')
                .split('.')
                .next()?
                .parse::<u32>()
                .ok()
        });
    let installed = node_dir()
        .join("node_modules/@modelcontextprotocol/sdk")
        .is_dir();
    if major.is_some_and(|m| m >= 23) && installed {
        return true;
    }
    let required = std::env::var("CIPHERINFER_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
    let why = format!(
        "Node {major:?} from `{}` (need >= 23, or set CIPHERINFER_NODE), packages installed: \
         {installed} (npm ci in {})",
        node(),
        node_dir().display()
    );
    assert!(!required, "CIPHERINFER_REQUIRE_INTEROP=1 but {why}");
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// Runs `node args…` in the package directory with Node's directory first on PATH.
fn run_node(args: &[&OsStr]) -> Output {
    let node = node();
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = Path::new(&node)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        let mut joined = dir.as_os_str().to_owned();
        joined.push(":");
        joined.push(&path);
        path = joined;
    }
    Command::new(&node)
        .args(args)
        .current_dir(node_dir())
        .env("PATH", path)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `cipherinfer local --http 127.0.0.1:0` with its store under `home`; killed on drop.
fn local_http(home: &Path) -> Remote {
    let mut command = Command::new(BIN);
    command
        .args(["local", "--http", "127.0.0.1:0", "--key-dir"])
        .arg(home.join("keys"));
    Remote::spawn(command, "cipherinfer local server listening on ")
}

/// The TypeScript SDK reads both servers: tools with titles and annotations, primes above 2^53
/// exact through JavaScript (keys generated from them match the parameter id), readable errors,
/// -32602 for an unknown tool.
#[test]
fn typescript_sdk_talks_to_both_servers() {
    if !node_or_skip("typescript_sdk_talks_to_both_servers") {
        return;
    }
    let dir = temp("ts");
    let remote = Remote::start(&dir.join("server"), "mnist-cnn", &[]);
    let home = dir.join("home");
    let images = dir.join("images");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&images).unwrap();
    let out = run_node(&[
        "client.ts".as_ref(),
        BIN.as_ref(),
        remote.url.as_ref(),
        home.as_os_str(),
        images.as_os_str(),
    ]);
    let (stdout, stderr) = text(&out);
    print!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ok: remote"), "{stdout}");
    assert!(stdout.contains("ok: local"), "{stdout}");
    drop(remote);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the Inspector CLI against `target` (a URL, or a command and its arguments) with
/// `options`: whether it succeeded, its stdout and its stderr.
fn inspect(target: &[&OsStr], options: &[&str]) -> (bool, String, String) {
    let inspector = package_bin("inspector", "clients/launcher/build/index.js");
    let mut args: Vec<&OsStr> = vec![inspector.as_os_str(), "--cli".as_ref()];
    args.extend(target.iter().copied());
    args.extend(options.iter().map(OsStr::new));
    let out = run_node(&args);
    let (stdout, stderr) = text(&out);
    (out.status.success(), stdout, stderr)
}

/// The Inspector CLI lists both servers' tools with no schema-portability warning in strict mode,
/// and calls a tool of each.
#[test]
fn inspector_cli_lists_and_calls_both_servers() {
    if !node_or_skip("inspector_cli_lists_and_calls_both_servers") {
        return;
    }
    let dir = temp("inspector");
    let remote = Remote::start(&dir.join("server"), "mnist-cnn", &[]);
    let keys = dir.join("home/keys");
    let remote_target: Vec<&OsStr> = vec![remote.url.as_ref()];
    let local_target: Vec<&OsStr> = vec![
        BIN.as_ref(),
        "local".as_ref(),
        "--key-dir".as_ref(),
        keys.as_os_str(),
    ];
    for (name, target, tools) in [("remote", &remote_target, 10), ("local", &local_target, 5)] {
        let (ok, stdout, stderr) = inspect(target, &["--method", "tools/list", "--strict"]);
        assert!(ok, "{name}: {stdout}\n{stderr}");
        let listed: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(
            listed["tools"].as_array().map(Vec::len),
            Some(tools),
            "{name}: {stdout}"
        );
        assert!(
            !stderr.contains("Warning: tool"),
            "{name}: schema-portability warnings:\n{stderr}"
        );
    }
    let call = ["--method", "tools/call", "--tool-name"];
    let (ok, stdout, stderr) = inspect(
        &remote_target,
        &[&call[..], &["describe_capabilities"]].concat(),
    );
    assert!(ok, "{stdout}\n{stderr}");
    let called: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        called["structuredContent"]["models"][0]["name"], "mnist-cnn",
        "{stdout}"
    );
    // A failed call: the Inspector shows the error object, not a schema-validation failure.
    let failing = [
        "fhe_decrypt",
        "--tool-arg",
        "client_id=nobody",
        "encrypted_logit_path=relative.ct",
    ];
    let (ok, stdout, stderr) = inspect(&local_target, &[&call[..], &failing].concat());
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("ERROR_PATH_NOT_ALLOWED"),
        "{stdout}\n{stderr}"
    );
    drop(remote);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The conformance suite's protocol-level server scenarios, at 2025-11-25 and at 2026-07-28,
/// against `serve` and against `local --http`.
#[test]
fn conformance_suite_protocol_scenarios_pass_on_both_servers() {
    if !node_or_skip("conformance_suite_protocol_scenarios_pass_on_both_servers") {
        return;
    }
    let suite = package_bin("conformance", "dist/index.js");
    let baseline = node_dir().join("conformance-baseline.yml");
    let dir = temp("conformance");
    let remote = Remote::start(&dir.join("server"), "mnist-cnn", &[]);
    let local = local_http(&dir.join("home"));
    let scenarios: [(&str, &[&str]); 2] = [
        (
            "2025-11-25",
            &[
                "server-initialize",
                "server-session-lifecycle",
                "ping",
                "tools-list",
                "dns-rebinding-protection",
                "server-sse-multiple-streams",
            ],
        ),
        (
            "2026-07-28",
            &[
                "server-stateless",
                "tools-list",
                "dns-rebinding-protection",
                "server-sse-multiple-streams",
                "http-header-validation",
            ],
        ),
    ];
    let mut ran = 0;
    for url in [&remote.url, &local.url] {
        for (version, names) in scenarios {
            for scenario in names {
                let out = run_node(&[
                    suite.as_os_str(),
                    "server".as_ref(),
                    "--url".as_ref(),
                    url.as_ref(),
                    "--scenario".as_ref(),
                    scenario.as_ref(),
                    "--spec-version".as_ref(),
                    version.as_ref(),
                    "--expected-failures".as_ref(),
                    baseline.as_os_str(),
                ]);
                let (stdout, stderr) = text(&out);
                let what = format!("{scenario} at {version} against {url}");
                assert!(out.status.success(), "{what}:\n{stdout}\n{stderr}");
                assert!(stdout.contains("Passed:"), "{what} did not run:\n{stdout}");
                assert!(
                    !stdout.contains("SKIPPED:"),
                    "{what} was skipped:\n{stdout}"
                );
                ran += 1;
            }
        }
    }
    assert_eq!(ran, 22);
    drop((remote, local));
    let _ = std::fs::remove_dir_all(&dir);
}
