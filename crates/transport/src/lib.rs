//! MCP over HTTP for both servers, the untrusted remote one and the trusted local one (which
//! binds loopback only): Streamable HTTP at `/mcp` (rmcp), the legacy HTTP+SSE transport at
//! `GET /sse` + `POST /messages` (ours, protocol 2024-11-05) and `GET /healthz`.
//!
//! Both transports drive the same [`ServerHandler`] through rmcp's own service loop, so tool
//! handlers, progress notifications, cancellation and protocol negotiation are shared.
//!
//! ```no_run
//! # async fn demo<H: rmcp::ServerHandler + Clone>(handler: H) -> std::io::Result<()> {
//! use cipherinfer_transport::{HttpConfig, router, serve};
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let app = router(move || handler.clone(), HttpConfig::default(), shutdown.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve(listener, app, Default::default(), shutdown).await
//! # }
//! ```
//!
//! [`serve_tls`] serves the same app over HTTPS, with a configuration from [`load_tls_config`].

mod connections;
mod error;
mod guard;
mod legacy_sse;
mod streamable;
mod tls;
pub mod tools;

use std::{sync::Arc, time::Duration};

use axum::{Json, Router, middleware, routing::get};
use rmcp::{
    ServerHandler,
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::sync::CancellationToken;

pub use connections::{BodyTimedOut, ConnectionLimits, peer_key};
pub use error::{ErrorBody, ErrorDetail};
pub use guard::HostPolicy;
pub use legacy_sse::StreamClosed;
pub use tls::{TLS_HANDSHAKE_TIMEOUT, TlsConfigError, load_tls_config};

/// Path of the Streamable HTTP endpoint.
pub const MCP_PATH: &str = "/mcp";
/// Path of the legacy SSE stream (protocol 2024-11-05).
pub const SSE_PATH: &str = "/sse";
/// Path the legacy transport's clients POST their messages to.
pub const MESSAGES_PATH: &str = "/messages";
/// Connections accepted (and, over TLS, handshaken) but not yet picked up by the HTTP loop.
const READY_QUEUE: usize = 64;

/// Path of the liveness probe.
pub const HEALTHZ_PATH: &str = "/healthz";

/// The default decoded chunk size of `upload_ciphertext_chunk` (draft 6.3: 32 MiB).
pub const DEFAULT_CHUNK_BYTES: usize = 32 * 1024 * 1024;

/// Room for the JSON-RPC envelope and the other tool arguments around one Base64 chunk.
pub const JSON_FRAMING_BYTES: usize = 1024 * 1024;

/// The request body size that carries one chunk of `chunk_bytes` decoded bytes: its Base64 length
/// plus [`JSON_FRAMING_BYTES`]. 32 MiB chunks give about 43.7 MiB.
pub const fn body_limit_for_chunk(chunk_bytes: usize) -> usize {
    chunk_bytes
        .div_ceil(3)
        .saturating_mul(4)
        .saturating_add(JSON_FRAMING_BYTES)
}

/// Everything the HTTP layer needs to know; tools know nothing of it.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body accepted on `/mcp` and `/messages`, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// `Host` values accepted (`name` or `name:port`); empty accepts any host, which only
    /// deployments behind a proxy that checks the host should choose.
    pub allowed_hosts: Vec<String>,
    /// `Origin` values accepted when a request carries one (`scheme://host`, `scheme://host:port`,
    /// `scheme://host:*`, or `null`); requests without `Origin` (non-browser clients) pass.
    pub allowed_origins: Vec<String>,
    /// Interval of SSE keep-alive comments on both transports.
    pub sse_keep_alive: Duration,
    /// Capacity of each legacy SSE session's inbound and outbound message queues.
    pub legacy_queue_capacity: usize,
    /// How long a `POST /messages` waits for room in a full session queue before a 503.
    pub legacy_enqueue_timeout: Duration,
    /// Most legacy SSE sessions open at once (503 above it).
    pub max_legacy_sessions: usize,
    /// A Streamable HTTP session idle this long is closed.
    pub session_idle_timeout: Duration,
}

impl Default for HttpConfig {
    /// Loopback-only, with a body limit sized for [`DEFAULT_CHUNK_BYTES`] chunks.
    fn default() -> Self {
        Self {
            max_body_bytes: body_limit_for_chunk(DEFAULT_CHUNK_BYTES),
            allowed_hosts: HostPolicy::LOOPBACK_HOSTS
                .iter()
                .map(|h| h.to_string())
                .collect(),
            allowed_origins: HostPolicy::LOOPBACK_ORIGINS
                .iter()
                .map(|o| o.to_string())
                .collect(),
            sse_keep_alive: Duration::from_secs(15),
            legacy_queue_capacity: 64,
            legacy_enqueue_timeout: Duration::from_secs(10),
            max_legacy_sessions: 1024,
            session_idle_timeout: Duration::from_secs(300),
        }
    }
}

impl HttpConfig {
    /// Sets the body limit to carry chunks of `chunk_bytes` decoded bytes.
    pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> Self {
        self.max_body_bytes = body_limit_for_chunk(chunk_bytes);
        self
    }

    fn streamable_config(&self, shutdown: &CancellationToken) -> StreamableHttpServerConfig {
        let mut config = StreamableHttpServerConfig::default()
            .with_max_request_body_bytes(self.max_body_bytes)
            .with_sse_keep_alive(Some(self.sse_keep_alive))
            .with_legacy_session_mode(true)
            .with_cancellation_token(shutdown.child_token())
            .with_allowed_hosts(self.allowed_hosts.iter().cloned());
        // Our own middleware checks first and answers in JSON; rmcp's check stays as a second
        // line with the same lists.
        config = if self.allowed_origins.is_empty() {
            config.disable_allowed_origins()
        } else {
            config.with_allowed_origins(self.allowed_origins.iter().cloned())
        };
        config
    }
}

/// Builds the axum app serving one MCP server, made by `factory` per session (and per request
/// for stateless protocol versions). `shutdown` ends every open stream and session.
pub fn router<H, F>(factory: F, config: HttpConfig, shutdown: CancellationToken) -> Router
where
    H: ServerHandler + Send + 'static,
    F: Fn() -> H + Send + Sync + 'static,
{
    let factory = Arc::new(factory);
    let policy = Arc::new(HostPolicy::new(
        &config.allowed_hosts,
        &config.allowed_origins,
    ));

    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(config.session_idle_timeout);
    let sessions = Arc::new(sessions);
    let streamable = StreamableHttpService::new(
        {
            let factory = Arc::clone(&factory);
            move || Ok(factory())
        },
        Arc::clone(&sessions),
        config.streamable_config(&shutdown),
    );

    let legacy = legacy_sse::routes(
        {
            let factory = Arc::clone(&factory);
            move || factory()
        },
        &config,
        shutdown,
    );

    let guarded = Router::new()
        .nest_service(MCP_PATH, streamable)
        .layer(middleware::from_fn_with_state(
            sessions,
            streamable::streamable_edges,
        ))
        .merge(legacy)
        .layer(middleware::from_fn_with_state(
            config.max_body_bytes,
            guard::check_declared_length,
        ))
        .layer(middleware::from_fn_with_state(
            policy,
            guard::check_host_origin,
        ));

    Router::new()
        .route(HEALTHZ_PATH, get(healthz))
        .merge(guarded)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// How long [`serve`] and [`serve_tls`] let open connections finish after `shutdown` before
/// they return anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` is cancelled, then stops accepting, lets
/// in-flight requests finish for at most [`SHUTDOWN_GRACE`] and returns. `limits` bound the
/// connections and how slowly a peer may send.
///
/// Every request carries the peer's address as `axum::extract::ConnectInfo<SocketAddr>`; both
/// transports hand it to tool handlers inside the request's `http::request::Parts`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (ready, incoming) = mpsc::channel(READY_QUEUE);
    let accept_limits = limits.clone();
    tokio::spawn(async move {
        let plain = |tcp, _peer| std::future::ready(Some(tcp));
        connections::accept_loop(listener, &accept_limits, plain, ready).await;
    });
    connections::serve_connections(incoming, app, &limits, shutdown).await;
    Ok(())
}

/// [`serve`] over HTTPS: TLS with `tls` on every admitted connection (the handshake bounded by
/// [`TLS_HANDSHAKE_TIMEOUT`] and run apart from the accept loop), then HTTP/1.1. Same limits,
/// shutdown and `ConnectInfo<SocketAddr>` on every request.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (ready, incoming) = mpsc::channel(READY_QUEUE);
    let accept_limits = limits.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        let handshake = |tcp, peer| tls::handshake(acceptor.clone(), tcp, peer);
        connections::accept_loop(listener, &accept_limits, handshake, ready).await;
    });
    connections::serve_connections(incoming, app, &limits, shutdown).await;
    Ok(())
}
