//! Connection admission, per-connection timeouts and the HTTP/1.1 serving loop shared by
//! [`super::serve`] and [`super::serve_tls`].
//!
//! What an attacker could otherwise hold forever, and what bounds it:
//! - open connections: at most [`ConnectionLimits::max_connections`] in all (further clients
//!   wait in the kernel's accept queue) and [`ConnectionLimits::max_connections_per_address`]
//!   per peer address (further connections from it are closed at once);
//! - a request head sent slowly, or an idle keep-alive connection:
//!   [`ConnectionLimits::header_read_timeout`] (hyper closes the connection);
//! - a request body sent slowly: [`ConnectionLimits::body_read_timeout`] for the whole body,
//!   counted from the request head (the body read fails and the connection is closed).

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use axum::{BoxError, Router, body::Body, extract::ConnectInfo};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Sleep,
};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::SHUTDOWN_GRACE;

/// The address a peer counts as for per-address limits: IPv4 as is (also when mapped into
/// IPv6), IPv6 reduced to its /64 (one host usually holds a whole /64).
pub fn peer_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Bounds on connections and on how slowly a peer may send a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; further clients wait until one closes.
    pub max_connections: usize,
    /// Connections open at once from one peer address (an IPv6 /64 counts as one address);
    /// further ones are closed at once. `None` (or 0) sets no such bound: the choice behind a reverse proxy, where every connection
    /// comes from the proxy's address.
    pub max_connections_per_address: Option<usize>,
    /// Time to receive a request head; also how long an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Time to receive a whole request body, counted from the request head.
    pub body_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// 1024 connections, 64 per address, 30 s for a request head and 300 s for a body (a
    /// 32 MiB chunk, Base64-encoded, at a little over 1 Mbit/s).
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_address: Some(64),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(300),
        }
    }
}

/// Longest timeout honoured; longer ones are cut to it (hyper adds them to the clock).
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Counts open connections, in all and per address.
#[derive(Debug)]
struct Gate {
    slots: Arc<Semaphore>,
    per_address: Option<usize>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection's place; given back when dropped.
#[derive(Debug)]
pub(super) struct Admission {
    gate: Arc<Gate>,
    address: IpAddr,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self
            .gate
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.address);
            }
        }
    }
}

impl Gate {
    fn new(limits: &ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(
                limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            // A bound of 0 would refuse everyone: it means no bound, as on the command line.
            per_address: limits.max_connections_per_address.filter(|&n| n > 0),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for a free connection slot.
    async fn slot(&self) -> OwnedSemaphorePermit {
        match self.slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            // The semaphore is never closed.
            Err(_) => std::future::pending().await,
        }
    }

    /// Admits a connection from `address` into `slot`, unless the address is at its bound.
    fn admit(self: &Arc<Self>, slot: OwnedSemaphorePermit, address: IpAddr) -> Option<Admission> {
        let address = peer_key(address);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(address).or_insert(0);
        if self.per_address.is_some_and(|max| *n >= max) {
            return None;
        }
        *n += 1;
        Some(Admission {
            gate: self.clone(),
            address,
            _slot: slot,
        })
    }
}

/// An accepted connection, ready for HTTP, with its place in the [`Gate`].
pub(super) struct Admitted<Io> {
    pub(super) io: Io,
    pub(super) peer: SocketAddr,
    pub(super) admission: Admission,
}

/// Accepts TCP connections within the [`Gate`] and hands each to `ready` once `prepare` (the
/// TLS handshake, or nothing) has turned it into an `Io`. `prepare` runs in its own task per
/// connection, so a slow one delays nobody. Stops when `ready`'s receiver is dropped; the
/// preparations still running are then abandoned.
pub(super) async fn accept_loop<Io, P, F>(
    listener: TcpListener,
    limits: &ConnectionLimits,
    prepare: P,
    ready: mpsc::Sender<Admitted<Io>>,
) where
    Io: Send + 'static,
    P: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = Option<Io>> + Send + 'static,
{
    let gate = Gate::new(limits);
    let mut preparing = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            () = ready.closed() => break,
            slot = gate.slot() => slot,
        };
        let (tcp, peer) = loop {
            tokio::select! {
                () = ready.closed() => return,
                Some(_) = preparing.join_next(), if !preparing.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok(connection) => break connection,
                    Err(e) => accept_failed(e).await,
                },
            }
        };
        let Some(admission) = gate.admit(slot, peer.ip()) else {
            tracing::debug!(%peer, "too many connections from this address; closed");
            continue;
        };
        // Small JSON-RPC messages, and a TLS handshake, must not wait for delayed ACKs
        // (Nagle's algorithm adds ~40 ms per round otherwise).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let prepared = prepare(tcp, peer);
        let ready = ready.clone();
        preparing.spawn(async move {
            if let Some(io) = prepared.await {
                // A send error means the server is shutting down: the connection is dropped.
                let _ = ready
                    .send(Admitted {
                        io,
                        peer,
                        admission,
                    })
                    .await;
            }
        });
    }
}

/// Per-connection errors are the client's; anything else (out of file descriptors, say) is
/// logged and retried after a pause so the loop does not spin.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Serves HTTP/1.1 on every connection from `incoming` until `shutdown` is cancelled, then
/// stops accepting, lets in-flight requests finish for at most [`SHUTDOWN_GRACE`] and returns.
/// Every request carries the peer's address as `ConnectInfo<SocketAddr>`.
pub(super) async fn serve_connections<Io>(
    mut incoming: mpsc::Receiver<Admitted<Io>>,
    app: Router,
    limits: &ConnectionLimits,
    shutdown: CancellationToken,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.min(MAX_TIMEOUT));
    let body_timeout = limits.body_read_timeout.min(MAX_TIMEOUT);
    let graceful = GracefulShutdown::new();
    loop {
        let connection = tokio::select! {
            () = shutdown.cancelled() => break,
            next = incoming.recv() => match next {
                Some(connection) => connection,
                None => {
                    tracing::error!("the accept loop stopped; no new connections");
                    shutdown.cancelled().await;
                    break;
                }
            },
        };
        let Admitted {
            io,
            peer,
            admission,
        } = connection;
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let mut request = request.map(|body| Body::new(DeadlineBody::new(body, body_timeout)));
            request.extensions_mut().insert(ConnectInfo(peer));
            // A Router is always ready.
            app.clone().call(request)
        });
        let served = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(admission);
        });
    }
    // Stop accepting first, then give the open connections their grace period.
    drop(incoming);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("connections still open after the shutdown grace period; closing");
        }
    }
}

/// A request body that fails once its deadline passes before its end.
struct DeadlineBody {
    body: Incoming,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    fn new(body: Incoming, timeout: Duration) -> Self {
        Self {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

/// The body of a request did not arrive within [`ConnectionLimits::body_read_timeout`].
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs())]
pub struct BodyTimedOut(Duration);

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut(this.timeout).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_counts_per_address_and_gives_places_back() {
        let gate = Gate::new(&ConnectionLimits {
            max_connections: 3,
            max_connections_per_address: Some(2),
            ..ConnectionLimits::default()
        });
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        let a_too: IpAddr = "2001:db8::2".parse().expect("ip");
        let first = gate.admit(gate.slot().await, a).expect("first");
        let second = gate.admit(gate.slot().await, a_too).expect("second");
        assert!(
            gate.admit(gate.slot().await, a).is_none(),
            "third from the /64"
        );
        drop(first);
        let third = gate
            .admit(gate.slot().await, a)
            .expect("a place was given back");
        drop((second, third));
        assert!(gate.open.lock().expect("lock").is_empty());
        assert_eq!(gate.slots.available_permits(), 3);

        // 0 per address is no bound, not "refuse everyone".
        let open = Gate::new(&ConnectionLimits {
            max_connections_per_address: Some(0),
            ..ConnectionLimits::default()
        });
        assert!(open.admit(open.slot().await, a).is_some());
    }
}
