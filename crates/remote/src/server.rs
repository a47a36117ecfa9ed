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
use crate::store::Store;
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
    /// Root of the local object store.
    pub data_dir: PathBuf,
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
        let store = Store::local(&options.data_dir)?;
        let mut config = options.service.clone();
        if config.server_identity.is_none() {
            config.server_identity = Some(Arc::new(load_or_create_identity(
                &options.data_dir.join(SERVER_IDENTITY_FILE),
            )?));
        }
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
                                "expired state removed"
                            );
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
                    }
                }
            })
        };
        let handler = RemoteHandler::new(self.service.clone());
        let app = router(
            move || handler.clone(),
            self.options.http.clone(),
            shutdown.clone(),
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
