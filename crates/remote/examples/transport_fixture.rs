//! Serves the transport test fixture (tools `slow_count`, `echo_size`, `make_blob`) on both MCP
//! transports, for trying clients by hand:
//!
//! ```text
//! cargo run --release -p cipherinfer-remote --example transport_fixture -- 127.0.0.1:8080
//! python3 crates/remote/tests/interop/client.py http://127.0.0.1:8080
//! ```
//! Stops on Ctrl-C.

#[path = "../tests/common/fixture.rs"]
mod fixture;

use cipherinfer_transport::{HttpConfig, router, serve};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "transport fixture on http://{}  (/mcp, /sse, /messages, /healthz)",
        listener.local_addr()?
    );
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        }
    });
    let fixture = fixture::Fixture::default();
    let app = router(
        move || fixture.clone(),
        HttpConfig::default(),
        shutdown.clone(),
    );
    serve(listener, app, Default::default(), shutdown).await
}
