//! Connection limits and timeouts under attack, over real TCP on loopback: slow request heads,
//! slow bodies, idle connections and connection floods are cut off or held back, while honest
//! requests, including tool calls that run longer than every timeout, are served.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use cipherinfer_transport::{ConnectionLimits, HttpConfig};
use common::TestServer;
use rmcp::{
    ServiceExt,
    model::CallToolRequestParams,
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

fn limits() -> ConnectionLimits {
    ConnectionLimits {
        max_connections: 64,
        max_connections_per_address: None,
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
    }
}

/// Reads until the server closes the connection or `within` passes; returns what it wrote and
/// whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&seen).into_owned(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buffer[..n]),
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), false),
        }
    }
}

/// Sends a request on a new connection and reads the response head's status line.
async fn status_of(server: &TestServer, request: &str) -> String {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("no response within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_connections_are_closed() {
    let server = TestServer::start_with(HttpConfig::default(), limits()).await;

    // A request head that never ends.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "a never-ending request head must be cut off");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A connection that says nothing at all.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let (written, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(
        closed && written.is_empty(),
        "a silent connection must be closed"
    );

    // A keep-alive connection is served, then closed once idle.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(HEALTHZ.as_bytes()).await.unwrap();
    let (written, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(written.starts_with("HTTP/1.1 200"), "{written}");
    assert!(closed, "an idle keep-alive connection must be closed");

    // Honest clients are unaffected.
    assert_eq!(status_of(&server, HEALTHZ).await, "HTTP/1.1 200 OK");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_cut_off() {
    let server = TestServer::start_with(HttpConfig::default(), limits()).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Accept: application/json, text/event-stream\r\nContent-Length: 1000\r\n\r\n{\"jsonrpc\":",
    )
    .await
    .unwrap();
    let started = Instant::now();
    // Trickle one byte every 300 ms: each read makes progress, but the whole body is late.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let closed = tokio::select! {
        () = trickle => true,
        () = tokio::time::sleep(Duration::from_secs(6)) => false,
    };
    assert!(
        closed,
        "a body still arriving after its deadline must be cut off"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(status_of(&server, HEALTHZ).await, "HTTP/1.1 200 OK");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_may_run_longer_than_the_timeouts() {
    let server = TestServer::start_with(HttpConfig::default(), limits()).await;
    let transport = StreamableHttpClientTransport::with_client(
        reqwest::Client::new(),
        StreamableHttpClientTransportConfig::with_uri(server.url("/mcp")),
    );
    let client = ().serve(transport).await.unwrap();
    let args = json!({"steps": 5, "delay_ms": 500});
    let serde_json::Value::Object(args) = args else {
        unreachable!()
    };
    let started = Instant::now();
    let result = client
        .call_tool(CallToolRequestParams::new("slow_count").with_arguments(args))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2));
    let counted = result.structured_content.as_ref().map(|c| &c["counted"]);
    assert_eq!(counted, Some(&json!(5)), "{result:?}");
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_bounded() {
    let server = TestServer::start_with(
        HttpConfig::default(),
        ConnectionLimits {
            max_connections_per_address: Some(2),
            header_read_timeout: Duration::from_secs(30),
            ..limits()
        },
    )
    .await;
    let held: Vec<TcpStream> = held_connections(&server, 2).await;
    // The third connection from the same address is closed without a response.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    let _ = third.write_all(HEALTHZ.as_bytes()).await;
    let (written, closed) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(closed && written.is_empty(), "{written}");

    // Once one closes, its place is free again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let _ = stream.write_all(HEALTHZ.as_bytes()).await;
        let (written, _) = read_until_closed(&mut stream, Duration::from_millis(500)).await;
        if written.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "closed connections must give their place back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_total_wait_for_a_free_place() {
    let server = TestServer::start_with(
        HttpConfig::default(),
        ConnectionLimits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(30),
            ..limits()
        },
    )
    .await;
    let mut held = held_connections(&server, 2).await;
    // The third is accepted by the kernel but not served while both places are taken ...
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(HEALTHZ.as_bytes()).await.unwrap();
    let mut buffer = [0u8; 256];
    assert!(
        tokio::time::timeout(Duration::from_millis(700), third.read(&mut buffer))
            .await
            .is_err(),
        "a connection beyond max_connections must wait"
    );
    // ... and is served as soon as one closes.
    held.pop();
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buffer))
        .await
        .expect("the waiting connection must be served once a place is free")
        .unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    drop(held);
    server.stop().await;
}

/// Opens `n` connections, each served once (so each is known to be admitted) and kept open.
async fn held_connections(server: &TestServer, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(HEALTHZ.as_bytes()).await.unwrap();
        let mut buffer = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    held
}
