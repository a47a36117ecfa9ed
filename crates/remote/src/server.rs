//! Assembles the remote server: store, compiled models, service, garbage collection and the
//! HTTP transports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cipherinfer_protocol::integrity::IdentityKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::handler::RemoteHandler;
use crate::registry::{ModelSource, Registry};
use crate::service::{Service, ServiceConfig};
use crate::store::{S3Options, Store, StoreLocation};
use cipherinfer_transport::{ConnectionLimits, HttpConfig, router, serve, serve_tls};

/// File in the data directory holding the server's Ed25519 identity (its 32-byte seed, mode
/// 0600), made at first start. Clients pin its public half; keep it across restarts.
pub const SERVER_IDENTITY_FILE: &str = "server-identity.key";

/// Reads the server identity at `path`, or creates it (mode 0600, never overwriting).
pub fn load_or_create_identity(
    path: &std::path::Path,
) -> Result<IdentityKey, Box<dyn std::error::Error + Send + Sync>> {
    use std::io::{Read as _, Write as _};
    match std::fs::File::open(path) {
        Ok(f) => {
            let mut seed = zeroize::Zeroizing::new(Vec::with_capacity(32));
            // One byte more than a seed, so an oversized file is caught without reading it all.
            f.take(33).read_to_end(&mut seed)?;
            Ok(IdentityKey::from_seed_bytes(&seed).map_err(|e| {
                format!(
                    "{}: not a server identity key: {}",
                    path.display(),
                    e.message
                )
            })?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let key = IdentityKey::generate()?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(path)?;
            f.write_all(key.seed_bytes().as_ref())?;
            f.sync_all()?;
            tracing::info!(path = %path.display(), public = %key.public(), "created the server identity");
            Ok(key)
        }
        Err(e) => Err(e.into()),
    }
}

/// Everything `cipherinfer serve` configures.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to listen on (loopback by default).
    pub bind: SocketAddr,
    /// Root of the local object store, and where the server identity is kept unless
    /// `identity_file` says otherwise.
    pub data_dir: PathBuf,
    /// The object store, when not the local directory `data_dir`: an S3 bucket that several
    /// replicas share.
    pub store: Option<StoreLocation>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` on a listener of their own (keep it
    /// private: counts and timings only, but nobody outside needs them). `None`: no metrics.
    pub metrics_bind: Option<SocketAddr>,
    /// How to reach an S3 store (beyond the AWS environment variables).
    pub s3: S3Options,
    /// The server identity's seed file (created if missing). Replicas behind one address must
    /// share it, since clients pin one server key. `None`: `data_dir/server-identity.key`.
    pub identity_file: Option<PathBuf>,
    /// Served models: shipped names, model package directories or compiled model files
    /// (`ModelSource::parse`); the first is the default.
    pub models: Vec<String>,
    /// Budget (bytes) for the evaluation keys of the models compiled at start-up (shipped
    /// names and package directories; see `cipherinfer_compiler::keyset`). A compiled model
    /// keeps the budget it was compiled with.
    pub max_key_bytes: Option<u64>,
    /// Tool policy.
    pub service: ServiceConfig,
    /// HTTP policy (body limit, Host/Origin lists).
    pub http: HttpConfig,
    /// Bounds on open connections and on slow requests.
    pub connections: ConnectionLimits,
    /// Interval of the garbage collector.
    pub gc_interval: Duration,
    /// Serve HTTPS with this configuration (see [`cipherinfer_transport::load_tls_config`]);
    /// `None` serves plain HTTP, which [`check_bind`] allows on loopback only.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Plain HTTP on a non-loopback address is allowed because a TLS-terminating proxy is the
    /// only way in.
    pub behind_tls_proxy: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        let service = ServiceConfig::default();
        let chunk = usize::try_from(service.limits.max_chunk_bytes).unwrap_or(usize::MAX);
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8750)),
            data_dir: PathBuf::from("cipherinfer-data"),
            store: None,
            metrics_bind: None,
            s3: S3Options::default(),
            identity_file: None,
            models: vec!["mnist-cnn".into(), "fashion-cnn".into()],
            max_key_bytes: None,
            service,
            http: HttpConfig::default().with_chunk_bytes(chunk),
            connections: ConnectionLimits::default(),
            gc_interval: Duration::from_secs(60),
            tls: None,
            behind_tls_proxy: false,
        }
    }
}

/// Why [`check_bind`] refused an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to serve plain HTTP on {addr}, which is not a loopback address: bearer tokens would \
     cross the network in clear; serve HTTPS with --tls-cert FILE --tls-key FILE, or pass \
     --behind-tls-proxy if a TLS-terminating reverse proxy is the only way to reach this address"
)]
pub struct PlainHttpRefused {
    /// The address refused.
    pub addr: SocketAddr,
}

impl From<PlainHttpRefused> for std::io::Error {
    fn from(e: PlainHttpRefused) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// The bind policy: plain HTTP only on loopback (127.0.0.0/8, `::1`, or IPv4-mapped loopback)
/// unless `behind_tls_proxy`; with `tls` any address.
pub fn check_bind(
    addr: SocketAddr,
    tls: bool,
    behind_tls_proxy: bool,
) -> Result<(), PlainHttpRefused> {
    if tls || behind_tls_proxy || addr.ip().to_canonical().is_loopback() {
        Ok(())
    } else {
        Err(PlainHttpRefused { addr })
    }
}

/// Readiness probe: 200 when the store answers and models are loaded, else 503 with the
/// reason (`/healthz`, from the transport, only says the process is alive).
pub const READYZ_PATH: &str = "/readyz";

async fn readyz(
    axum::extract::State(service): axum::extract::State<Arc<Service>>,
) -> (http::StatusCode, axum::Json<serde_json::Value>) {
    match service.readiness().await {
        Ok(models) => (
            http::StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready", "store": "ok", "models": models})),
        ),
        Err(e) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "status": "unavailable",
                "error_code": e.error_code,
                "message": e.message,
            })),
        ),
    }
}

/// Serves `/metrics` on `addr` until `shutdown`.
async fn serve_metrics(
    addr: SocketAddr,
    service: Arc<Service>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "metrics at /metrics");
    eprintln!("metrics at http://{local}/metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let service = service.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    service.metrics_text(),
                )
            }
        }),
    );
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    }))
}

/// A built server, before it listens.
#[derive(Debug)]
pub struct Server {
    /// The tools' state.
    pub service: Arc<Service>,
    options: ServerOptions,
}

impl Server {
    /// Opens the store and compiles the models (a second or two per model).
    pub fn build(options: ServerOptions) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let sources: Vec<ModelSource> = options
            .models
            .iter()
            .map(|m| ModelSource::parse(m))
            .collect();
        let registry = Arc::new(Registry::load_with_key_budget(
            &sources,
            options.max_key_bytes,
        )?);
        Self::with_registry(options, registry)
    }

    /// Opens the store and serves models compiled before (`options.models` is not consulted),
    /// so several servers, or a restarted one, share one compilation.
    pub fn with_registry(
        options: ServerOptions,
        registry: Arc<Registry>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let location = options
            .store
            .clone()
            .unwrap_or_else(|| StoreLocation::Local(options.data_dir.clone()));
        let store = Store::open(&location, &options.s3)?;
        let mut config = options.service.clone();
        if config.server_identity.is_none() {
            let file = match &options.identity_file {
                Some(f) => f.clone(),
                None => {
                    std::fs::create_dir_all(&options.data_dir)?;
                    options.data_dir.join(SERVER_IDENTITY_FILE)
                }
            };
            config.server_identity = Some(Arc::new(load_or_create_identity(&file)?));
        }
        tracing::info!(store = %location, shared = store.is_shared(), "object store opened");
        let service = Arc::new(Service::new(store, registry, config)?);
        Ok(Self { service, options })
    }

    /// Serves on `listener` (HTTPS when `options.tls` is set) until `shutdown`; collects garbage
    /// in the background. Refuses, before serving anything, what [`check_bind`] refuses.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        self.check_bind(listener.local_addr()?)?;
        // Masks are encoded on first use; encode them now, off the request path.
        {
            let service = self.service.clone();
            tokio::task::spawn_blocking(move || service.registry().warm());
        }
        let gc = {
            let service = self.service.clone();
            let shutdown = shutdown.clone();
            let every = self.options.gc_interval;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(every) => {}
                    }
                    match service.collect_garbage().await {
                        Ok(done) if !done.is_empty() => {
                            tracing::info!(
                                sessions = done.sessions,
                                uploads = done.uploads,
                                tombstones = done.tombstones,
                                orphans = done.orphans,
                                nonce_windows = done.nonce_windows,
                                "expired state removed"
                            );
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
                    }
                }
            })
        };
        let metrics = match self.options.metrics_bind {
            Some(addr) => Some(serve_metrics(addr, self.service.clone(), shutdown.clone()).await?),
            None => None,
        };
        let handler = RemoteHandler::new(self.service.clone());
        let app = router(
            move || handler.clone(),
            self.options.http.clone(),
            shutdown.clone(),
        )
        .route(
            READYZ_PATH,
            axum::routing::get(readyz).with_state(self.service.clone()),
        );
        let result = match self.options.tls.clone() {
            Some(tls) => {
                serve_tls(
                    listener,
                    app,
                    tls,
                    self.options.connections.clone(),
                    shutdown,
                )
                .await
            }
            None => serve(listener, app, self.options.connections.clone(), shutdown).await,
        };
        gc.abort();
        if let Some(m) = metrics {
            m.abort();
        }
        result
    }

    /// Binds the configured address and serves; refuses, before binding, what [`check_bind`]
    /// refuses.
    pub async fn bind_and_run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        self.check_bind(self.options.bind)?;
        let listener = TcpListener::bind(self.options.bind).await?;
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(address = %listener.local_addr()?, scheme, "cipherinfer remote server listening (Streamable HTTP /mcp, legacy SSE /sse)");
        self.run(listener, shutdown).await
    }

    fn check_bind(&self, addr: SocketAddr) -> Result<(), PlainHttpRefused> {
        check_bind(
            addr,
            self.options.tls.is_some(),
            self.options.behind_tls_proxy,
        )
    }
}
