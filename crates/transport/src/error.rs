//! The JSON body of every HTTP-level refusal the transport itself makes.

use axum::{
    Json,
    http::StatusCode,
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
