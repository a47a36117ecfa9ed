//! Shared by the transport tests: the fixture handler and a real server on loopback.
#![allow(dead_code)]

pub mod fixture;
pub mod legacy;
pub mod moto;
pub mod remote;

use std::{net::SocketAddr, sync::Arc};

use cipherinfer_transport::{ConnectionLimits, HttpConfig, router, serve};
use tokio_util::sync::CancellationToken;

use fixture::{Fixture, Stats};

/// A fixture server bound to `127.0.0.1:0`.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start(config: HttpConfig) -> Self {
        Self::start_with(config, ConnectionLimits::default()).await
    }

    /// [`TestServer::start`] with connection limits.
    pub async fn start_with(config: HttpConfig, limits: ConnectionLimits) -> Self {
        let fixture = Fixture::default();
        let stats = Arc::clone(&fixture.stats);
        let shutdown = CancellationToken::new();
        let app = router(move || fixture.clone(), config, shutdown.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, app, limits, shutdown.clone()));
        Self {
            addr,
            shutdown,
            stats,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Shuts down and checks the server stopped cleanly and promptly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), self.task)
            .await
            .expect("server did not stop within 5 s of shutdown");
        result.unwrap().unwrap();
    }
}
