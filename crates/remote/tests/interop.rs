//! Interoperability with a client nobody on this team wrote: the official MCP Python SDK
//! (`mcp==2.3.0`) runs `tests/interop/client.py` against a real server on loopback, over
//! Streamable HTTP and over legacy SSE.
//!
//! Without the SDK the test prints a skip notice and passes, unless `CIPHERINFER_REQUIRE_INTEROP=1`
//! (CI), where a missing SDK fails it. `CIPHERINFER_PYTHON` picks the interpreter (default
//! `python3`).
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::{path::Path, process::Stdio, time::Duration};

use cipherinfer_transport::HttpConfig;
use common::TestServer;

fn python() -> String {
    std::env::var("CIPHERINFER_PYTHON").unwrap_or_else(|_| "python3".into())
}

async fn sdk_available(python: &str) -> bool {
    tokio::process::Command::new(python)
        .args(["-c", "import mcp.client.sse, mcp.client.streamable_http"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Runs `tests/interop/<script> <base>` and checks it reports three passing transports.
async fn run_script(python: &str, script: &str, base: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(script);
    let child = tokio::process::Command::new(python)
        .arg(&script)
        .arg(base)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("the Python client did not finish within 120 s")
        .expect("could not run the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    assert!(
        output.status.success(),
        "Python SDK interop failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert_eq!(stdout.matches("ok: ").count(), 3, "{stdout}");
}

/// Whether the SDK is importable; if not, fails under `CIPHERINFER_REQUIRE_INTEROP=1`.
async fn sdk_or_skip(python: &str, test: &str) -> bool {
    if sdk_available(python).await {
        return true;
    }
    let required = std::env::var("CIPHERINFER_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "CIPHERINFER_REQUIRE_INTEROP=1 but `{python} -c 'import mcp'` fails: pip install mcp==2.3.0"
    );
    eprintln!(
        "SKIPPED {test}: the MCP Python SDK is not importable by `{python}` \
         (pip install mcp==2.3.0, or set CIPHERINFER_PYTHON); set CIPHERINFER_REQUIRE_INTEROP=1 \
         to make this a failure"
    );
    false
}

/// The real remote server (the shipped mnist-cnn) under the Python SDK on both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_against_the_remote_server() {
    let python = python();
    if !sdk_or_skip(&python, "python_sdk_against_the_remote_server").await {
        return;
    }
    let dir = std::env::temp_dir().join(format!("cipherinfer-interop-{}", std::process::id()));
    let server = cipherinfer_remote::Server::build(cipherinfer_remote::ServerOptions {
        data_dir: dir.clone(),
        models: vec!["mnist-cnn".into()],
        ..Default::default()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(listener, shutdown.clone()));
    run_script(&python, "remote_client.py", &base).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_interop() {
    let python = python();
    if !sdk_or_skip(&python, "python_sdk_interop").await {
        return;
    }

    let server = TestServer::start(HttpConfig::default()).await;
    run_script(&python, "client.py", &server.url("")).await;
    server.stop().await;
}
