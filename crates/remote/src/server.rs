//! Assembles the remote server: store, compiled models, service, garbage collection and the
//! HTTP transports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::handler::RemoteHandler;
use crate::registry::Registry;
use crate::service::{Service, ServiceConfig};
use crate::store::Store;
use crate::transport::{HttpConfig, router, serve};

/// Everything `cipherinfer serve` configures.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to listen on (loopback by default).
    pub bind: SocketAddr,
    /// Root of the local object store.
    pub data_dir: PathBuf,
    /// Served models (shipped names); the first is the default.
    pub models: Vec<String>,
    /// Tool policy.
    pub service: ServiceConfig,
    /// HTTP policy (body limit, Host/Origin lists).
    pub http: HttpConfig,
    /// Interval of the garbage collector.
    pub gc_interval: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        let service = ServiceConfig::default();
        let chunk = usize::try_from(service.limits.max_chunk_bytes).unwrap_or(usize::MAX);
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8750)),
            data_dir: PathBuf::from("cipherinfer-data"),
            models: vec!["mnist-cnn".into(), "fashion-cnn".into()],
            service,
            http: HttpConfig::default().with_chunk_bytes(chunk),
            gc_interval: Duration::from_secs(60),
        }
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
        let registry = Arc::new(Registry::shipped(&options.models)?);
        Self::with_registry(options, registry)
    }

    /// Opens the store and serves models compiled before (`options.models` is not consulted),
    /// so several servers, or a restarted one, share one compilation.
    pub fn with_registry(
        options: ServerOptions,
        registry: Arc<Registry>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let store = Store::local(&options.data_dir)?;
        let service = Arc::new(Service::new(store, registry, options.service.clone()));
        Ok(Self { service, options })
    }

    /// Serves on `listener` until `shutdown`; collects garbage in the background.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
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
        let result = serve(listener, app, shutdown).await;
        gc.abort();
        result
    }

    /// Binds the configured address and serves.
    pub async fn bind_and_run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.options.bind).await?;
        tracing::info!(address = %listener.local_addr()?, "cipherinfer remote server listening (Streamable HTTP /mcp, legacy SSE /sse)");
        self.run(listener, shutdown).await
    }
}
