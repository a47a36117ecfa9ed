//! Drives a real server over real HTTP on loopback, on both MCP transports.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use cipherinfer_transport::{ErrorBody, HttpConfig};
use common::{TestServer, legacy::LegacyClient};
use rmcp::{
    ClientHandler, RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, ClientConfig, ClientRequest, ProgressNotificationParam,
        ProtocolVersion, Request, ServerResult,
    },
    service::{
        ClientLifecycleMode, ClientServiceExt, NotificationContext, PeerRequestOptions,
        RunningService,
    },
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// An rmcp client that forwards the progress notifications it receives.
#[derive(Clone)]
struct ProgressClient {
    progress: mpsc::UnboundedSender<ProgressNotificationParam>,
    info: ClientConfig,
}

impl ClientHandler for ProgressClient {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        let _ = self.progress.send(params);
    }

    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
}

type Client = RunningService<RoleClient, ProgressClient>;

fn transport(server: &TestServer) -> StreamableHttpClientTransport<reqwest::Client> {
    StreamableHttpClientTransport::with_client(
        reqwest::Client::new(),
        StreamableHttpClientTransportConfig::with_uri(server.url("/mcp"))
            .max_sse_event_size(64 * 1024 * 1024),
    )
}

/// Connects with the `initialize` handshake at `version`.
async fn connect(
    server: &TestServer,
    version: ProtocolVersion,
) -> (Client, mpsc::UnboundedReceiver<ProgressNotificationParam>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let info = ClientConfig::default().with_protocol_version(version);
    let client = ProgressClient { progress: tx, info }
        .serve(transport(server))
        .await
        .unwrap();
    (client, rx)
}

fn call(name: &'static str, args: Value) -> CallToolRequestParams {
    let Value::Object(map) = args else {
        panic!("arguments must be an object")
    };
    CallToolRequestParams::new(name).with_arguments(map)
}

fn small_config() -> HttpConfig {
    HttpConfig {
        max_body_bytes: 2 * 1024 * 1024,
        ..HttpConfig::default()
    }
}

async fn exercise_tools(
    client: &Client,
    progress: &mut mpsc::UnboundedReceiver<ProgressNotificationParam>,
) {
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["echo_size", "make_blob", "slow_count"]);

    // A call with a progress token: the notifications arrive before the result.
    let handle = client
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(call(
                "slow_count",
                json!({"steps": 4, "delay_ms": 10}),
            ))),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let token = handle.progress_token.clone();
    let ServerResult::CallToolResult(result) = handle.await_response().await.unwrap() else {
        panic!("expected a tool result")
    };
    assert_eq!(result.is_error, Some(false));
    assert_eq!(
        result.structured_content,
        Some(json!({"counted": 4, "progress_reported": true}))
    );
    let mut seen = Vec::new();
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(2), progress.recv()).await {
        assert_eq!(p.progress_token, token);
        seen.push(p.progress);
        if seen.len() == 4 {
            break;
        }
    }
    // rmcp's client runs each notification handler in its own task, so arrival order is not kept.
    seen.sort_by(f64::total_cmp);
    assert_eq!(seen, [1.0, 2.0, 3.0, 4.0]);

    // A tool-level error is a result with isError, not a JSON-RPC error.
    let result = client
        .call_tool(call("echo_size", json!({"data": ""})))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    assert_eq!(
        result
            .structured_content
            .as_ref()
            .and_then(|v| v.get("error_code")),
        Some(&json!("ERROR_EMPTY"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_2025_11_25_tools_progress() {
    let server = TestServer::start(HttpConfig::default()).await;
    let (client, mut progress) = connect(&server, ProtocolVersion::V_2025_11_25).await;
    let negotiated = client.peer_info().map(|i| i.protocol_version.clone());
    assert_eq!(negotiated, Some(ProtocolVersion::V_2025_11_25));
    exercise_tools(&client, &mut progress).await;
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_2026_07_28_tools_progress() {
    let server = TestServer::start(HttpConfig::default()).await;
    let (tx, mut progress) = mpsc::unbounded_channel();
    let client = ProgressClient {
        progress: tx,
        info: ClientConfig::default(),
    }
    .serve_with_lifecycle(
        transport(&server),
        ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        },
    )
    .await
    .unwrap();
    let negotiated = client.peer_info().map(|i| i.protocol_version.clone());
    assert_eq!(negotiated, Some(ProtocolVersion::V_2026_07_28));
    exercise_tools(&client, &mut progress).await;
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_cancellation_stops_the_tool() {
    let server = TestServer::start(HttpConfig::default()).await;
    let (client, mut progress) = connect(&server, ProtocolVersion::V_2025_11_25).await;
    let handle = client
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(call(
                "slow_count",
                json!({"steps": 1000, "delay_ms": 20}),
            ))),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    // Wait until the tool is demonstrably running, then cancel.
    tokio::time::timeout(Duration::from_secs(5), progress.recv())
        .await
        .unwrap()
        .unwrap();
    handle.cancel(Some("test".into())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats.cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the tool never saw the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let steps = server.stats.steps.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server.stats.steps.load(Ordering::SeqCst),
        steps,
        "steps after cancellation"
    );
    assert!(steps < 1000);
    // The session is still usable.
    let result = client
        .call_tool(call("echo_size", json!({"data": "abc"})))
        .await
        .unwrap();
    assert_eq!(result.structured_content, Some(json!({"bytes": 3})));
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_body_limit() {
    let config = small_config();
    let limit = config.max_body_bytes;
    let server = TestServer::start(config).await;
    let (client, _progress) = connect(&server, ProtocolVersion::V_2025_11_25).await;

    // Just under the limit once framed: works.
    let under = "a".repeat(limit - 4096);
    let result = client
        .call_tool(call("echo_size", json!({"data": under})))
        .await
        .unwrap();
    assert_eq!(
        result.structured_content,
        Some(json!({"bytes": limit - 4096}))
    );

    // Over the limit: refused, and the session survives.
    let over = "a".repeat(limit + 1);
    assert!(
        client
            .call_tool(call("echo_size", json!({"data": over})))
            .await
            .is_err()
    );
    let result = client
        .call_tool(call("echo_size", json!({"data": "x"})))
        .await
        .unwrap();
    assert_eq!(result.structured_content, Some(json!({"bytes": 1})));

    // On the wire: a declared length over the limit is a 413 with a JSON error, read from the
    // header alone.
    let raw = raw_http(
        &server,
        &format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
            limit + 1
        ),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains(r#""code":"body_too_large""#), "{raw}");
    // The body was refused unread, so the connection is not reusable: the client is told so
    // (without it, a pooled client writes its next request into a closing socket).
    assert!(
        raw.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{raw}"
    );
    client.cancel().await.unwrap();
    server.stop().await;
}

async fn assert_forbidden(response: reqwest::Response, code: &str) {
    assert_eq!(response.status(), 403);
    let body: ErrorBody = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body.error.code, code);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_origin_validation() {
    let server = TestServer::start(HttpConfig::default()).await;
    let http = reqwest::Client::new();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"}}});
    for path in ["/mcp", "/messages?sessionId=x"] {
        let post = || {
            http.post(server.url(path))
                .header("accept", "application/json, text/event-stream")
                .json(&init)
        };
        assert_forbidden(
            post().header("host", "evil.example").send().await.unwrap(),
            "host_not_allowed",
        )
        .await;
        assert_forbidden(
            post()
                .header("origin", "https://evil.example")
                .send()
                .await
                .unwrap(),
            "origin_not_allowed",
        )
        .await;
    }
    let sse = http
        .get(server.url("/sse"))
        .header("host", "attacker.test:80")
        .send()
        .await
        .unwrap();
    assert_forbidden(sse, "host_not_allowed").await;

    // A loopback origin is fine; the health probe needs no check.
    let ok = http
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("origin", "http://localhost:5173")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let health = http
        .get(server.url("/healthz"))
        .header("host", "lb.internal")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // A configured public host is accepted.
    drop(ok);
    server.stop().await;
    let server = TestServer::start(HttpConfig {
        allowed_hosts: vec!["infer.example".into()],
        ..HttpConfig::default()
    })
    .await;
    let ok = http
        .post(server.url("/mcp"))
        .header("host", "infer.example")
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    drop(ok);
    server.stop().await;
}

/// Sends raw request bytes and returns what the server wrote back before closing or pausing.
async fn raw_http(server: &TestServer, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = vec![0u8; 16 * 1024];
    let mut read = 0;
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer[read..])).await
    {
        if n == 0 {
            break;
        }
        read += n;
        if String::from_utf8_lossy(&buffer[..read]).contains("}}") {
            break;
        }
    }
    String::from_utf8_lossy(&buffer[..read]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_session() {
    let server = TestServer::start(small_config()).await;
    let mut client = LegacyClient::open(&server.url("")).await;
    client.initialize().await;

    client
        .send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .await;
    let (list, _) = client.response(2).await;
    let mut names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["echo_size", "make_blob", "slow_count"]);

    client
        .send(
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "slow_count", "arguments": {"steps": 3, "delay_ms": 5},
            "_meta": {"progressToken": "p-3"}}}),
        )
        .await;
    let (result, notifications) = client.response(3).await;
    assert_eq!(
        result["result"]["structuredContent"],
        json!({"counted": 3, "progress_reported": true})
    );
    assert_eq!(result["result"]["isError"], json!(false));
    let progress: Vec<f64> = notifications
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .inspect(|n| assert_eq!(n["params"]["progressToken"], "p-3"))
        .map(|n| n["params"]["progress"].as_f64().unwrap())
        .collect();
    assert_eq!(progress, [1.0, 2.0, 3.0]);

    // A batch of two requests.
    client
        .send(json!([
            {"jsonrpc": "2.0", "id": 4, "method": "ping"},
            {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
                "name": "echo_size", "arguments": {"data": "hello"}}}
        ]))
        .await;
    let (echo, _) = client.response(5).await;
    assert_eq!(echo["result"]["structuredContent"], json!({"bytes": 5}));

    // Body limit: just under works, over is a 413 with a JSON error, and the session lives on.
    let limit = 2 * 1024 * 1024;
    let under = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {
        "name": "echo_size", "arguments": {"data": "b".repeat(limit - 4096)}}});
    client.send(under).await;
    let (echo, _) = client.response(6).await;
    assert_eq!(
        echo["result"]["structuredContent"],
        json!({"bytes": limit - 4096})
    );
    let over = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "echo_size", "arguments": {"data": "b".repeat(limit)}}});
    let response = client.try_post(over.to_string()).await;
    // The server answers before reading the rest; a client still writing may see the connection
    // close first. Either way nothing over the limit is read.
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
        let body: ErrorBody = response.json().await.unwrap();
        assert_eq!(body.error.code, "body_too_large");
    }
    // The same without a Content-Length (chunked body).
    let chunks =
        futures::stream::iter((0..3).map(move |_| Ok::<_, std::io::Error>(vec![b' '; limit / 2])));
    if let Ok(response) = client.try_post(reqwest::Body::wrap_stream(chunks)).await {
        assert_eq!(response.status(), 413);
    }
    // Deterministically: a Content-Length over the limit is refused from the header alone,
    // before any body byte is sent, with a JSON error.
    let path = client.endpoint.trim_start_matches(&server.url(""));
    let raw = raw_http(
        &server,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            limit + 1
        ),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains(r#""code":"body_too_large""#), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{raw}"
    );

    // Malformed JSON and non-MCP JSON: 400 with a JSON error.
    let response = client.post("{not json").await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<ErrorBody>().await.unwrap().error.code,
        "malformed_json"
    );
    let response = client.post(r#"{"hello": "world"}"#).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<ErrorBody>().await.unwrap().error.code,
        "invalid_message"
    );

    client
        .send(json!({"jsonrpc": "2.0", "id": 8, "method": "ping"}))
        .await;
    let (pong, _) = client.response(8).await;
    assert_eq!(pong["result"], json!({}));

    // Unknown or missing session: 404 / 400.
    let http = reqwest::Client::new();
    let response = http
        .post(server.url("/messages?sessionId=00000000000000000000000000000000"))
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<ErrorBody>().await.unwrap().error.code,
        "unknown_session"
    );
    let response = http
        .post(server.url("/messages"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Closing the stream ends the session: its endpoint then answers 404.
    let endpoint = client.endpoint.clone();
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = http
            .post(&endpoint)
            .body(r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#)
            .send()
            .await
            .unwrap()
            .status();
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "session outlived its stream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_cancellation_stops_the_tool() {
    let server = TestServer::start(HttpConfig::default()).await;
    let mut client = LegacyClient::open(&server.url("")).await;
    client.initialize().await;
    client
        .send(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "slow_count", "arguments": {"steps": 1000, "delay_ms": 20},
            "_meta": {"progressToken": 7}}}),
        )
        .await;
    let first = client.next_message().await;
    assert_eq!(first["method"], "notifications/progress");
    client
        .send(
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 2, "reason": "test"}}),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats.cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the tool never saw the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(server.stats.steps.load(Ordering::SeqCst) < 1000);
    // No response for the cancelled request; the session answers the next one.
    client
        .send(json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}))
        .await;
    let (pong, _) = client.response(3).await;
    assert_eq!(pong["result"], json!({}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_open_streams() {
    let server = TestServer::start(HttpConfig::default()).await;
    let mut legacy = LegacyClient::open(&server.url("")).await;
    legacy.initialize().await;
    let (client, _progress) = connect(&server, ProtocolVersion::V_2025_11_25).await;
    let started = Instant::now();
    server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(client);
    drop(legacy);
}

/// Streamable HTTP refusals a client can act on: a body that is not JSON is HTTP 400 with the
/// JSON-RPC parse error, valid JSON that is not a JSON-RPC message is 400 with invalid request,
/// and a `DELETE` naming a session that was never issued is 404, as a `POST` naming it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_protocol_errors_are_json_rpc_and_unknown_sessions_404() {
    let server = TestServer::start(small_config()).await;
    let http = reqwest::Client::new();
    let post = |body: &'static str| {
        http.post(server.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body)
    };
    for (body, code) in [("{not json", -32700), ("{\"hello\": 1}", -32600)] {
        let r = post(body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["jsonrpc"], "2.0", "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    // A wrong content type is still 415.
    let r = http
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // A session that was issued can be deleted; one that never was is 404 on DELETE and POST.
    let r = initialize(&http, &server, "2025-11-25").await;
    assert_eq!(r.status(), 200);
    let issued = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    drop(r);
    for id in ["never-issued", issued.as_str()] {
        let r = http
            .delete(server.url("/mcp"))
            .header("mcp-session-id", id)
            .send()
            .await
            .unwrap();
        if id == issued {
            assert!(r.status().is_success(), "{}", r.status());
        } else {
            assert_eq!(r.status(), 404);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "unknown_session", "{v}");
        }
    }
    let r = http
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", "never-issued")
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await;
}

/// POSTs an `initialize` asking for `version` to `/mcp`.
async fn initialize(
    http: &reqwest::Client,
    server: &TestServer,
    version: &str,
) -> reqwest::Response {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"}}});
    http.post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap()
}

/// The protocol versions docs/protocol.md §1 lists are the ones `initialize` negotiates: the
/// client's own for each version with an `initialize` handshake, the newest of those for a
/// version the server does not know (2026-07-28 has no handshake: its requests are stateless).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_negotiates_the_documented_protocol_versions() {
    let server = TestServer::start(small_config()).await;
    let http = reqwest::Client::new();
    for (asked, answered) in [
        ("2024-11-05", "2024-11-05"),
        ("2025-03-26", "2025-03-26"),
        ("2025-06-18", "2025-06-18"),
        ("2025-11-25", "2025-11-25"),
        ("2026-07-28", "2025-11-25"),
        ("2023-01-01", "2025-11-25"),
    ] {
        let r = initialize(&http, &server, asked).await;
        assert_eq!(r.status(), 200, "{asked}");
        let body = r.text().await.unwrap();
        let want = format!("\"protocolVersion\":\"{answered}\"");
        assert!(body.contains(&want), "{asked}: {body}");
    }
    server.stop().await;
}
