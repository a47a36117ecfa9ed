//! HTTPS served by the server itself: real TLS on loopback with a certificate made by the test,
//! clients that trust it and clients that do not, plain HTTP on the TLS port, slow handshakes,
//! the bind policy and the loading of certificates and keys.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{extract::ConnectInfo, routing::get};
use cipherinfer_remote::{
    Server,
    server::{PlainHttpRefused, check_bind},
};
use cipherinfer_transport::{
    HttpConfig, TLS_HANDSHAKE_TIMEOUT, TlsConfigError, load_tls_config, router, serve_tls,
};
use common::fixture::Fixture;
use rmcp::{
    ServiceExt,
    model::CallToolRequestParams,
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files.
struct Identity {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
}

impl Identity {
    fn new(tag: &str) -> Self {
        let dir = common::remote::temp_dir(&format!("tls-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let cert_pem = made.cert.pem();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        Self {
            dir,
            cert,
            key,
            cert_pem,
        }
    }

    fn config(&self) -> Arc<rustls::ServerConfig> {
        Arc::new(load_tls_config(&self.cert, &self.key).unwrap())
    }

    /// A client that trusts this certificate only.
    fn client(&self) -> reqwest::Client {
        trusting(&self.cert_pem)
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn trusting(cert_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The transport fixture over HTTPS on `127.0.0.1:0`, plus `GET /peer`, which answers with the
/// `ConnectInfo<SocketAddr>` its request carries.
struct TlsServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TlsServer {
    async fn start(tls: Arc<rustls::ServerConfig>) -> Self {
        let fixture = Fixture::default();
        let shutdown = CancellationToken::new();
        let app = router(
            move || fixture.clone(),
            HttpConfig::default(),
            shutdown.clone(),
        )
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_tls(
            listener,
            app,
            tls,
            Default::default(),
            shutdown.clone(),
        ));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// Asserts that a client trusting `id` gets 200 from `/healthz`.
    async fn assert_healthy(&self, id: &Identity) {
        let ok = id.client().get(self.url("/healthz")).send().await.unwrap();
        assert_eq!(ok.status(), 200);
    }

    /// Shuts down and checks the server stopped cleanly and promptly.
    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server did not stop within 5 s of shutdown");
        result.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_trusting_client_speaks_mcp_over_https() {
    let id = Identity::new("mcp");
    let server = TlsServer::start(id.config()).await;
    // By name, so the certificate's DNS name and SNI are what is checked.
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(id.cert_pem.as_bytes()).unwrap()])
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", server.addr.port());

    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.version(), reqwest::Version::HTTP_11);
    assert_eq!(health.text().await.unwrap(), r#"{"status":"ok"}"#);

    let initialize = client
        .post(format!("{base}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            serde_json::json!({
                "jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "tls-test", "version": "0"}
                }
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(initialize.status(), 200);
    let body = initialize.text().await.unwrap();
    assert!(body.contains("cipherinfer-transport-fixture"), "{body}");

    // A whole rmcp session over the same HTTPS client: handshake, tool list, a tool call.
    let peer = ()
        .serve(StreamableHttpClientTransport::with_client(
            client,
            StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp")),
        ))
        .await
        .unwrap();
    let tools = peer.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "echo_size"));
    let args = serde_json::json!({"data": "over tls"});
    let result = peer
        .call_tool(
            CallToolRequestParams::new("echo_size")
                .with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    assert_eq!(
        result.structured_content,
        Some(serde_json::json!({"bytes": 8}))
    );
    peer.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn requests_over_tls_carry_the_peer_address() {
    let id = Identity::new("peer");
    let server = TlsServer::start(id.config()).await;
    let response = id.client().get(server.url("/peer")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let peer: SocketAddr = response.text().await.unwrap().parse().unwrap();
    assert!(peer.ip().is_loopback(), "{peer}");
    assert_ne!(peer.port(), server.addr.port());
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_fails_the_handshake() {
    let id = Identity::new("trusted");
    let stranger = Identity::new("stranger");
    let server = TlsServer::start(id.config()).await;

    let err = stranger
        .client()
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap_err();
    // The client refuses the server's certificate: no HTTP exchange happens at all.
    assert!(err.status().is_none(), "{err:?}");
    let chain = format!("{err:?}");
    assert!(chain.contains("InvalidCertificate"), "{chain}");

    // The failed handshake costs the server nothing.
    server.assert_healthy(&id).await;
    server.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_http_response() {
    let id = Identity::new("plain");
    let server = TlsServer::start(id.config()).await;

    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection");
    // At most a TLS alert, then the connection closes (or is reset).
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{read:?}: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // A plain-HTTP client gets an error, not a response.
    let url = format!("http://127.0.0.1:{}/healthz", server.addr.port());
    assert!(reqwest::get(url).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_handshake_blocks_nobody_and_is_dropped_after_the_timeout() {
    let id = Identity::new("stall");
    let server = TlsServer::start(id.config()).await;
    let started = Instant::now();
    // Connects and never says a word.
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();

    server.assert_healthy(&id).await;
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        TLS_HANDSHAKE_TIMEOUT + Duration::from_secs(5),
        stalled.read(&mut byte),
    )
    .await
    .expect("the server drops a stalled handshake");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= TLS_HANDSHAKE_TIMEOUT - Duration::from_secs(1));

    // A handshake still in progress at shutdown neither delays it nor survives it.
    let mut pending = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop().await;
    let read = tokio::time::timeout(Duration::from_secs(2), pending.read(&mut byte))
        .await
        .expect("shutdown closes handshakes in progress");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[test]
fn the_configuration_offers_http1_only() {
    let id = Identity::new("alpn");
    let config = id.config();
    assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
}

#[test]
fn plain_http_is_refused_off_loopback_unless_tls_or_a_proxy() {
    let public: SocketAddr = "0.0.0.0:8750".parse().unwrap();
    let lan: SocketAddr = "192.0.2.7:8750".parse().unwrap();
    let any6: SocketAddr = "[::]:8750".parse().unwrap();
    for addr in [public, lan, any6] {
        let refused = check_bind(addr, false, false).unwrap_err();
        assert_eq!(refused, PlainHttpRefused { addr });
        let message = refused.to_string();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("--tls-cert"), "{message}");
        assert!(message.contains("--tls-key"), "{message}");
        assert!(message.contains("--behind-tls-proxy"), "{message}");
        check_bind(addr, true, false).unwrap();
        check_bind(addr, false, true).unwrap();
        check_bind(addr, true, true).unwrap();
    }
    for loopback in [
        "127.0.0.1:8750",
        "127.0.0.2:0",
        "[::1]:8750",
        "[::ffff:127.0.0.1]:1",
    ] {
        check_bind(loopback.parse().unwrap(), false, false).unwrap();
    }
}

fn expect_err(cert: &Path, key: &Path) -> TlsConfigError {
    match load_tls_config(cert, key) {
        Ok(_) => panic!("{} with {} loaded", cert.display(), key.display()),
        Err(e) => e,
    }
}

#[test]
fn bad_certificate_and_key_files_are_explained() {
    let id = Identity::new("errors");
    let other = Identity::new("errors-other");
    let missing = id.dir.join("missing.pem");
    let empty = id.dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();

    let e = expect_err(&missing, &id.key);
    assert!(
        matches!(&e, TlsConfigError::Read { what: "certificate", path, .. } if *path == missing),
        "{e:?}"
    );
    assert!(e.to_string().contains("missing.pem"), "{e}");

    let e = expect_err(&id.cert, &missing);
    assert!(
        matches!(&e, TlsConfigError::Read { what: "private key", path, .. } if *path == missing),
        "{e:?}"
    );

    let e = expect_err(&empty, &id.key);
    assert!(
        matches!(&e, TlsConfigError::NoCertificate { path } if *path == empty),
        "{e:?}"
    );
    assert!(e.to_string().contains("no PEM certificate"), "{e}");

    // A key where the certificate should be, and the other way round.
    let e = expect_err(&id.key, &id.key);
    assert!(matches!(e, TlsConfigError::NoCertificate { .. }), "{e:?}");
    let e = expect_err(&id.cert, &id.cert);
    assert!(
        matches!(&e, TlsConfigError::NoKey { path } if *path == id.cert),
        "{e:?}"
    );
    assert!(e.to_string().contains("no PEM private key"), "{e}");

    let e = expect_err(&id.cert, &other.key);
    assert!(matches!(e, TlsConfigError::KeyMismatch { .. }), "{e:?}");
    let message = e.to_string();
    assert!(message.contains("does not match"), "{message}");
    assert!(
        message.contains(&other.key.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&id.cert.display().to_string()),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_https_when_configured_and_refuses_plain_http_off_loopback() {
    let id = Identity::new("server");
    let dir = common::remote::temp_dir("tls-server");
    let registry = common::remote::registry();

    // Plain HTTP on every interface is refused before anything is bound.
    let mut options = common::remote::options(&dir);
    options.bind = "0.0.0.0:0".parse().unwrap();
    let server = Server::with_registry(options, registry.clone()).unwrap();
    let e = server
        .bind_and_run(CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("--behind-tls-proxy"), "{e}");

    // With TLS the real tools answer over HTTPS.
    let mut options = common::remote::options(&dir);
    options.tls = Some(id.config());
    let server = Server::with_registry(options, registry).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(listener, shutdown.clone()));

    let base = format!("https://127.0.0.1:{port}");
    let peer = ()
        .serve(StreamableHttpClientTransport::with_client(
            id.client(),
            StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp")),
        ))
        .await
        .unwrap();
    let result = peer
        .call_tool(
            CallToolRequestParams::new("describe_capabilities")
                .with_arguments(serde_json::Map::new()),
        )
        .await
        .unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    peer.cancel().await.unwrap();

    // Plain HTTP on the HTTPS port gets nowhere.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_err()
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
