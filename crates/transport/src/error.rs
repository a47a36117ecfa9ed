//! The JSON body of every HTTP-level refusal the transport itself makes.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

/// `{"error": {"code": "...", "message": "..."}}`: what the transport answers with any 4xx/5xx
/// it produces itself (JSON-RPC errors from tools travel inside MCP messages instead).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The refusal.
    pub error: ErrorDetail,
}

/// One refusal: a stable machine-readable code and a human explanation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Stable, snake_case: `host_not_allowed`, `origin_not_allowed`, `body_too_large`,
    /// `malformed_json`, `invalid_message`, `missing_session_id`, `unknown_session`,
    /// `session_queue_full`, `too_many_sessions`, `body_read_failed`, `invalid_query`.
    pub code: String,
    /// Why, for people.
    pub message: String,
}

pub(crate) fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.into(),
        },
    };
    (status, Json(body)).into_response()
}

/// 413 `body_too_large`, with `Connection: close`: the body was refused unread, so the
/// connection cannot carry another request and a client must not return it to its pool (a
/// client that did would write its next request into a socket the server is closing).
pub(crate) fn body_too_large(max_body_bytes: usize) -> Response {
    let mut response = json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body exceeds this server's limit of {max_body_bytes} bytes"),
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
