//! The legacy HTTP+SSE transport of MCP protocol 2024-11-05, which rmcp does not ship.
//!
//! `GET /sse` opens a session: its event stream starts with `event: endpoint` whose data is the
//! URL to POST to (`/messages?sessionId=<id>`); every server message (responses, progress and
//! other notifications, server requests) then goes out as `event: message`. `POST
//! /messages?sessionId=<id>` takes one JSON-RPC message (or a batch) and answers `202 Accepted`.
//!
//! Each session runs rmcp's own server loop ([`rmcp::serve_server`]) over a pair of bounded
//! queues, so the handler, the `initialize` negotiation, progress and cancellation are the same
//! as on Streamable HTTP, and each message carries the HTTP parts of the POST that brought it (as
//! rmcp does on Streamable HTTP). The session ends, and its handler with it, when the stream
//! closes.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{
    Router,
    extract::{OriginalUri, Query, State, rejection::QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures::{
    Stream, StreamExt,
    future::{BoxFuture, Either, ready},
    stream,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use rmcp::{
    RoleServer, ServerHandler,
    model::{ClientJsonRpcMessage, GetExtensions, ServerJsonRpcMessage},
    transport::Transport,
};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{
    HttpConfig, MESSAGES_PATH, SSE_PATH,
    error::{body_too_large, json_error},
};

/// The error a legacy session's transport reports once its SSE stream has gone.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the SSE stream of this MCP session is closed")]
pub struct StreamClosed;

/// rmcp's view of one legacy session: messages POSTed by the client in, messages for the SSE
/// stream out. Both queues are bounded, so a client that does not read its stream slows its own
/// session down instead of growing the server's memory.
struct SessionTransport {
    inbound: mpsc::Receiver<ClientJsonRpcMessage>,
    outbound: mpsc::Sender<ServerJsonRpcMessage>,
}

impl Transport<RoleServer> for SessionTransport {
    type Error = StreamClosed;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), StreamClosed>> + Send + 'static {
        // rmcp polls send futures from separate tasks; enqueueing here, while the call order is
        // still known, keeps the stream in the order rmcp produced it unless the queue is full.
        let pending = match self.outbound.try_send(item) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Either::Left(ready(Err(StreamClosed)));
            }
            Err(mpsc::error::TrySendError::Full(item)) => Some(item),
        };
        let outbound = self.outbound.clone();
        Either::Right(async move {
            match pending {
                Some(item) => outbound.send(item).await.map_err(|_| StreamClosed),
                None => Ok(()),
            }
        })
    }

    async fn receive(&mut self) -> Option<ClientJsonRpcMessage> {
        self.inbound.recv().await
    }

    async fn close(&mut self) -> Result<(), StreamClosed> {
        self.inbound.close();
        Ok(())
    }
}

type RunSession =
    dyn Fn(SessionTransport, CancellationToken) -> BoxFuture<'static, ()> + Send + Sync;

/// State shared by the two legacy routes; not generic over the handler.
struct Legacy {
    run_session: Box<RunSession>,
    sessions: Mutex<HashMap<String, mpsc::Sender<ClientJsonRpcMessage>>>,
    max_body_bytes: usize,
    keep_alive: Duration,
    queue_capacity: usize,
    enqueue_timeout: Duration,
    max_sessions: usize,
    shutdown: CancellationToken,
}

impl Legacy {
    fn sessions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<ClientJsonRpcMessage>>> {
        // The map holds no invariant a panicking holder could break.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `GET /sse` and `POST /messages` routes for handlers made by `factory`.
pub(crate) fn routes<H, F>(factory: F, config: &HttpConfig, shutdown: CancellationToken) -> Router
where
    H: ServerHandler + Send + 'static,
    F: Fn() -> H + Send + Sync + 'static,
{
    let run_session = move |transport: SessionTransport, ct: CancellationToken| {
        let handler = factory();
        let fut: BoxFuture<'static, ()> = Box::pin(async move {
            match rmcp::service::serve_server_with_ct(handler, transport, ct).await {
                Ok(running) => {
                    if let Err(error) = running.waiting().await {
                        tracing::debug!(%error, "legacy SSE session ended with an error");
                    }
                }
                Err(error) => tracing::debug!(%error, "legacy SSE session failed to initialize"),
            }
        });
        fut
    };
    let state = Arc::new(Legacy {
        run_session: Box::new(run_session),
        sessions: Mutex::new(HashMap::new()),
        max_body_bytes: config.max_body_bytes,
        keep_alive: config.sse_keep_alive,
        queue_capacity: config.legacy_queue_capacity.max(1),
        enqueue_timeout: config.legacy_enqueue_timeout,
        max_sessions: config.max_legacy_sessions,
        shutdown,
    });
    Router::new()
        .route(SSE_PATH, get(open_stream))
        .route(MESSAGES_PATH, post(post_message))
        .with_state(state)
}

/// Removes its session from the table and stops its handler when the SSE stream is dropped.
struct SessionGuard {
    id: String,
    legacy: Arc<Legacy>,
    ct: CancellationToken,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.legacy.sessions().remove(&self.id);
        self.ct.cancel();
        tracing::debug!(session = %self.id, "legacy SSE session closed");
    }
}

/// Where this router is mounted, read off the path the client asked for, so the endpoint event
/// stays right when the app is nested under a prefix.
fn messages_url(original_path: &str, session_id: &str) -> String {
    let prefix = original_path.strip_suffix(SSE_PATH).unwrap_or_default();
    format!("{prefix}{MESSAGES_PATH}?sessionId={session_id}")
}

async fn open_stream(State(legacy): State<Arc<Legacy>>, OriginalUri(uri): OriginalUri) -> Response {
    let (in_tx, in_rx) = mpsc::channel(legacy.queue_capacity);
    let (out_tx, out_rx) = mpsc::channel(legacy.queue_capacity);
    let id = uuid::Uuid::new_v4().simple().to_string();
    {
        let mut sessions = legacy.sessions();
        if sessions.len() >= legacy.max_sessions {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_sessions",
                "the server has too many open SSE sessions; retry later",
            );
        }
        sessions.insert(id.clone(), in_tx);
    }
    let ct = legacy.shutdown.child_token();
    tokio::spawn((legacy.run_session)(
        SessionTransport {
            inbound: in_rx,
            outbound: out_tx,
        },
        ct.clone(),
    ));
    tracing::debug!(session = %id, "legacy SSE session opened");

    let endpoint = Event::default()
        .event("endpoint")
        .data(messages_url(uri.path(), &id));
    let guard = SessionGuard {
        id,
        legacy: Arc::clone(&legacy),
        ct: ct.clone(),
    };
    let messages = ReceiverStream::new(out_rx).filter_map(move |message| {
        // The guard lives as long as the stream does.
        let _alive = &guard;
        let event = match serde_json::to_string(&message) {
            Ok(json) => Some(Ok(Event::default().event("message").data(json))),
            Err(error) => {
                tracing::error!(%error, "could not serialize a server message; dropped");
                None
            }
        };
        futures::future::ready(event)
    });
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> = Box::pin(
        stream::once(futures::future::ready(Ok(endpoint)))
            .chain(messages)
            .take_until(ct.cancelled_owned()),
    );
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(legacy.keep_alive))
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[derive(Debug, Deserialize)]
struct SessionQuery {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

async fn post_message(
    State(legacy): State<Arc<Legacy>>,
    query: Result<Query<SessionQuery>, QueryRejection>,
    request: axum::extract::Request,
) -> Response {
    let session_id = match query {
        Ok(Query(SessionQuery {
            session_id: Some(id),
        })) => id,
        Ok(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "missing_session_id",
                "the sessionId query parameter is required",
            );
        }
        Err(rejection) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                rejection.body_text(),
            );
        }
    };
    let Some(sender) = legacy.sessions().get(&session_id).cloned() else {
        return json_error(
            StatusCode::NOT_FOUND,
            "unknown_session",
            "no open SSE session has this sessionId",
        );
    };

    let too_large = || body_too_large(legacy.max_body_bytes);
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > legacy.max_body_bytes as u64) {
        return too_large();
    }
    let bytes = match Limited::new(body, legacy.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => return too_large(),
        Err(error) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "body_read_failed",
                format!("could not read the request body: {error}"),
            );
        }
    };

    let mut messages = match parse_messages(&bytes) {
        Ok(messages) => messages,
        Err(response) => return response,
    };
    // Like rmcp's Streamable HTTP service: the POST's HTTP parts (headers such as
    // `Authorization`, and the peer address among the extensions) ride along with each message,
    // so handlers see the same request context on both transports.
    for message in &mut messages {
        match message {
            ClientJsonRpcMessage::Request(r) => {
                r.request.extensions_mut().insert(parts.clone());
            }
            ClientJsonRpcMessage::Notification(n) => {
                n.notification.extensions_mut().insert(parts.clone());
            }
            _ => {}
        }
    }
    for message in messages {
        match tokio::time::timeout(legacy.enqueue_timeout, sender.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return json_error(
                    StatusCode::NOT_FOUND,
                    "unknown_session",
                    "this SSE session has ended",
                );
            }
            Err(_) => {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session_queue_full",
                    "the session's message queue stayed full; read the SSE stream and retry",
                );
            }
        }
    }
    (StatusCode::ACCEPTED, "Accepted").into_response()
}

/// One JSON-RPC message, or a non-empty batch of them (2024-11-05 allows batches; each reply
/// goes out as its own event).
#[allow(clippy::result_large_err)]
fn parse_messages(bytes: &[u8]) -> Result<Vec<ClientJsonRpcMessage>, Response> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|error| {
        json_error(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not JSON: {error}"),
        )
    })?;
    let invalid = |error: serde_json::Error| {
        json_error(
            StatusCode::BAD_REQUEST,
            "invalid_message",
            format!("the body is not a JSON-RPC message MCP clients send: {error}"),
        )
    };
    match value {
        serde_json::Value::Array(items) if items.is_empty() => Err(json_error(
            StatusCode::BAD_REQUEST,
            "invalid_message",
            "an empty JSON-RPC batch",
        )),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|item| serde_json::from_value(item).map_err(invalid))
            .collect(),
        single => Ok(vec![serde_json::from_value(single).map_err(invalid)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_follows_the_mount_point() {
        assert_eq!(messages_url("/sse", "ab"), "/messages?sessionId=ab");
        assert_eq!(
            messages_url("/remote/sse", "ab"),
            "/remote/messages?sessionId=ab"
        );
    }

    #[test]
    fn messages_parse() {
        let one = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        assert_eq!(parse_messages(one).map(|m| m.len()).ok(), Some(1));
        let two = br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#;
        assert_eq!(parse_messages(two).map(|m| m.len()).ok(), Some(2));
        for bad in [&b"{"[..], b"[]", b"42", b"{\"jsonrpc\":\"2.0\"}"] {
            assert!(parse_messages(bad).is_err());
        }
    }
}
