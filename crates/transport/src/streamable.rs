//! What the Streamable HTTP endpoint answers where the MCP library would answer otherwise than
//! the specification asks: a body that is not a JSON-RPC message is HTTP 400 with a JSON-RPC
//! error (`-32700` parse error, `-32600` invalid request), not 415 with a text body; a `DELETE`
//! naming a session that does not exist is 404, as a `POST` naming it is.

use std::sync::Arc;

use axum::{
    Json,
    body::to_bytes,
    extract::{Request, State},
    http::{Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use rmcp::transport::streamable_http_server::session::{
    SessionId, SessionManager, local::LocalSessionManager,
};

use super::error::json_error;

/// The session header of Streamable HTTP.
const SESSION_HEADER: &str = "mcp-session-id";

/// Most bytes of a refusal's text read back to classify it.
const REFUSAL_TEXT_BYTES: usize = 64 * 1024;

/// The middleware of `/mcp` (see the module).
pub(crate) async fn streamable_edges(
    State(sessions): State<Arc<LocalSessionManager>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == Method::DELETE
        && let Some(id) = request
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
    {
        let id: SessionId = Arc::from(id);
        if !sessions.has_session(&id).await.unwrap_or(true) {
            return json_error(
                StatusCode::NOT_FOUND,
                "unknown_session",
                "no session with this Mcp-Session-Id (never issued, or ended)",
            );
        }
    }
    let json_post = request.method() == Method::POST
        && request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/json"))
            });
    let response = next.run(request).await;
    if !(json_post && response.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE) {
        return response;
    }
    // A JSON content type was accepted, so the 415 is the library's refusal of a body it could
    // not deserialize: say so in JSON-RPC.
    let text = to_bytes(response.into_body(), REFUSAL_TEXT_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let (code, what) = if is_data_error(&text) {
        (-32600, "Invalid Request: not a JSON-RPC message")
    } else {
        (-32700, "Parse error: the body is not JSON")
    };
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": format!("{what} ({})", detail(&text))},
    });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// Whether a deserialization error is about the message's shape (valid JSON, wrong fields)
/// rather than its syntax: serde's data errors name what did not match, and the MCP library's
/// message type says it did not recognize the message.
fn is_data_error(text: &str) -> bool {
    [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
        "unknown field",
        "missing field",
        "duplicate field",
        "did not match any variant",
        "unrecognized JSON-RPC message",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// The library's message without its prefix, shortened.
fn detail(text: &str) -> String {
    let t = text
        .strip_prefix("fail to deserialize request body ")
        .unwrap_or(text);
    t.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_are_told_from_syntax_errors() {
        let syntax = serde_json::from_str::<serde_json::Value>("{not json").expect_err("not json");
        assert!(!is_data_error(&syntax.to_string()));
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code, reason = "only deserialized")]
        struct Message {
            jsonrpc: String,
        }
        let data = serde_json::from_str::<Message>("{\"id\": 1}").expect_err("no jsonrpc");
        assert!(is_data_error(&data.to_string()), "{data}");
        let wrong = serde_json::from_str::<Message>("{\"jsonrpc\": 2}").expect_err("a number");
        assert!(is_data_error(&wrong.to_string()), "{wrong}");
    }
}
