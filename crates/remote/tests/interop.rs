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

use cipherinfer_remote::transport::HttpConfig;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_interop() {
    let python = python();
    if !sdk_available(&python).await {
        let required = std::env::var("CIPHERINFER_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "CIPHERINFER_REQUIRE_INTEROP=1 but `{python} -c 'import mcp'` fails: pip install mcp==2.3.0"
        );
        eprintln!(
            "SKIPPED python_sdk_interop: the MCP Python SDK is not importable by `{python}` \
             (pip install mcp==2.3.0, or set CIPHERINFER_PYTHON); set CIPHERINFER_REQUIRE_INTEROP=1 \
             to make this a failure"
        );
        return;
    }

    let server = TestServer::start(HttpConfig::default()).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/client.py");
    let child = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(server.url(""))
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
    server.stop().await;
}
