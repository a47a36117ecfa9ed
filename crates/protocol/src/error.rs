//! Machine-readable error codes and the structured error payload every tool returns with
//! `isError: true`.
//!
//! The strings are part of the wire contract: they never change once published (a test pins
//! them). The draft (Section 7.2) names `ERROR_DEPTH_EXCEEDED`, `ERROR_INVALID_GALOIS_KEY` and
//! `ERROR_NOISE_OVERFLOW`; every other code follows the same `ERROR_` + SCREAMING_SNAKE_CASE form.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a tool call failed. Serialized as its stable `ERROR_*` string.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[non_exhaustive]
pub enum ErrorCode {
    /// An argument is missing, has the wrong type, or breaks its syntax rule.
    #[serde(rename = "ERROR_INVALID_ARGUMENT")]
    InvalidArgument,
    /// The bearer token is missing, malformed, or does not belong to the `client_id`.
    #[serde(rename = "ERROR_UNAUTHORIZED")]
    Unauthorized,
    /// Too many requests or failed authentications; wait `retry_after_ms`.
    #[serde(rename = "ERROR_RATE_LIMITED")]
    RateLimited,
    /// No client with this `client_id` is known to the server.
    #[serde(rename = "ERROR_UNKNOWN_CLIENT")]
    UnknownClient,
    /// A first provisioning named a `client_id` that already has keys; rotate instead.
    #[serde(rename = "ERROR_CLIENT_EXISTS")]
    ClientExists,
    /// No session (or provisioning upload) with this id exists, or it was deleted.
    #[serde(rename = "ERROR_UNKNOWN_SESSION")]
    UnknownSession,
    /// The session exists but belongs to another client.
    #[serde(rename = "ERROR_SESSION_FORBIDDEN")]
    SessionForbidden,
    /// The session, provisioning upload or result reference has expired.
    #[serde(rename = "ERROR_EXPIRED")]
    Expired,
    /// `file_name` is not a plain object name (path separators, dots, bad characters, length).
    #[serde(rename = "ERROR_INVALID_FILE_NAME")]
    InvalidFileName,
    /// `chunk_index` is not below `total_chunks`, or `total_chunks` is out of range.
    #[serde(rename = "ERROR_INVALID_CHUNK_INDEX")]
    InvalidChunkIndex,
    /// `total_chunks` differs from the value given with earlier chunks of the same object.
    #[serde(rename = "ERROR_TOTAL_CHUNKS_MISMATCH")]
    TotalChunksMismatch,
    /// A chunk decodes to more bytes than the negotiated maximum.
    #[serde(rename = "ERROR_CHUNK_TOO_LARGE")]
    ChunkTooLarge,
    /// The object (ciphertext or key bundle) would exceed its total size limit.
    #[serde(rename = "ERROR_OBJECT_TOO_LARGE")]
    ObjectTooLarge,
    /// A Base64 field is not canonical padded standard Base64 (RFC 4648, Section 4).
    #[serde(rename = "ERROR_INVALID_BASE64")]
    InvalidBase64,
    /// A chunk was re-sent with the same index but different bytes.
    #[serde(rename = "ERROR_CHUNK_CONFLICT")]
    ChunkConflict,
    /// Some chunks or objects are missing; `details.missing` lists them.
    #[serde(rename = "ERROR_INCOMPLETE_UPLOAD")]
    IncompleteUpload,
    /// The assembled bytes do not match the declared SHA-256 or size.
    #[serde(rename = "ERROR_INTEGRITY_MISMATCH")]
    IntegrityMismatch,
    /// The model selector names no served model.
    #[serde(rename = "ERROR_UNKNOWN_MODEL")]
    UnknownModel,
    /// The Algorithm ID is malformed, unknown, or not implemented by this server.
    #[serde(rename = "ERROR_UNSUPPORTED_ALGORITHM")]
    UnsupportedAlgorithm,
    /// The cryptographic parameters are malformed or inconsistent.
    #[serde(rename = "ERROR_INVALID_PARAMETERS")]
    InvalidParameters,
    /// The parameters are below the declared (or the minimum 128-bit) security level.
    #[serde(rename = "ERROR_WEAK_PARAMETERS")]
    WeakParameters,
    /// The parameters or Algorithm ID differ from those of the provisioned keys or the model.
    #[serde(rename = "ERROR_PARAMETER_MISMATCH")]
    ParameterMismatch,
    /// The input packing, slot count or batch size is not what the model evaluates.
    #[serde(rename = "ERROR_UNSUPPORTED_PACKING")]
    UnsupportedPacking,
    /// The computation needs more multiplicative depth than allowed or available (draft 7.2).
    #[serde(rename = "ERROR_DEPTH_EXCEEDED")]
    DepthExceeded,
    /// A rotation (Galois) key is missing or does not match its step (draft 7.2).
    #[serde(rename = "ERROR_INVALID_GALOIS_KEY")]
    InvalidGaloisKey,
    /// Noise or scale growth would make the result undecryptable (draft 7.2).
    #[serde(rename = "ERROR_NOISE_OVERFLOW")]
    NoiseOverflow,
    /// A ciphertext object failed decoding or conformance checks.
    #[serde(rename = "ERROR_MALFORMED_CIPHERTEXT")]
    MalformedCiphertext,
    /// The evaluation-key bundle failed decoding or conformance checks; on the local server,
    /// a stored key-set file (secret key, key-set record, bundle) is corrupt or truncated.
    #[serde(rename = "ERROR_MALFORMED_KEYS")]
    MalformedKeys,
    /// The client is known but has no committed evaluation keys (provision them first).
    #[serde(rename = "ERROR_KEYS_NOT_PROVISIONED")]
    KeysNotProvisioned,
    /// The key set (or the key reference given) was revoked or rotated away.
    #[serde(rename = "ERROR_KEYS_REVOKED")]
    KeysRevoked,
    /// An out-of-band key reference URI could not be resolved in the server's key store.
    #[serde(rename = "ERROR_KEY_REFERENCE_UNRESOLVED")]
    KeyReferenceUnresolved,
    /// A per-client quota (bytes, sessions, objects) would be exceeded.
    #[serde(rename = "ERROR_QUOTA_EXCEEDED")]
    QuotaExceeded,
    /// The server is at its inference concurrency limit; retry later.
    #[serde(rename = "ERROR_BUSY")]
    Busy,
    /// The request was cancelled by the client.
    #[serde(rename = "ERROR_CANCELLED")]
    Cancelled,
    /// No result with this reference exists for the session.
    #[serde(rename = "ERROR_RESULT_NOT_FOUND")]
    ResultNotFound,
    /// A signed request was already seen (nonce or timestamp reuse).
    #[serde(rename = "ERROR_REPLAY")]
    Replay,
    /// A request MAC or signature does not verify.
    #[serde(rename = "ERROR_BAD_SIGNATURE")]
    BadSignature,
    /// A request's timestamp is outside the accepted clock-skew window, or older than the
    /// server's start.
    #[serde(rename = "ERROR_STALE_REQUEST")]
    StaleRequest,
    /// A request or key bundle is signed by another identity than the one pinned (or
    /// registered) for the client_id.
    #[serde(rename = "ERROR_IDENTITY_MISMATCH")]
    IdentityMismatch,
    /// A credential would cross a channel without TLS to a host that is not loopback.
    #[serde(rename = "ERROR_INSECURE_TRANSPORT")]
    InsecureTransport,
    /// A local path argument is outside the directories the local server may use.
    #[serde(rename = "ERROR_PATH_NOT_ALLOWED")]
    PathNotAllowed,
    /// A local file named by an argument does not exist.
    #[serde(rename = "ERROR_FILE_NOT_FOUND")]
    FileNotFound,
    /// The image could not be read or decoded.
    #[serde(rename = "ERROR_IMAGE_UNREADABLE")]
    ImageUnreadable,
    /// Decryption failed: the result was not made for this client's secret key, or is corrupt.
    #[serde(rename = "ERROR_DECRYPTION_FAILED")]
    DecryptionFailed,
    /// A dependency (the remote server, the store) is unreachable; retry later.
    #[serde(rename = "ERROR_UNAVAILABLE")]
    Unavailable,
    /// An unexpected server fault; no client input caused it.
    #[serde(rename = "ERROR_INTERNAL")]
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 46] = [
        Self::InvalidArgument,
        Self::Unauthorized,
        Self::RateLimited,
        Self::UnknownClient,
        Self::ClientExists,
        Self::UnknownSession,
        Self::SessionForbidden,
        Self::Expired,
        Self::InvalidFileName,
        Self::InvalidChunkIndex,
        Self::TotalChunksMismatch,
        Self::ChunkTooLarge,
        Self::ObjectTooLarge,
        Self::InvalidBase64,
        Self::ChunkConflict,
        Self::IncompleteUpload,
        Self::IntegrityMismatch,
        Self::UnknownModel,
        Self::UnsupportedAlgorithm,
        Self::InvalidParameters,
        Self::WeakParameters,
        Self::ParameterMismatch,
        Self::UnsupportedPacking,
        Self::DepthExceeded,
        Self::InvalidGaloisKey,
        Self::NoiseOverflow,
        Self::MalformedCiphertext,
        Self::MalformedKeys,
        Self::KeysNotProvisioned,
        Self::KeysRevoked,
        Self::KeyReferenceUnresolved,
        Self::QuotaExceeded,
        Self::Busy,
        Self::Cancelled,
        Self::ResultNotFound,
        Self::Replay,
        Self::BadSignature,
        Self::StaleRequest,
        Self::IdentityMismatch,
        Self::InsecureTransport,
        Self::PathNotAllowed,
        Self::FileNotFound,
        Self::ImageUnreadable,
        Self::DecryptionFailed,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The stable wire string, e.g. `ERROR_DEPTH_EXCEEDED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "ERROR_INVALID_ARGUMENT",
            Self::Unauthorized => "ERROR_UNAUTHORIZED",
            Self::RateLimited => "ERROR_RATE_LIMITED",
            Self::UnknownClient => "ERROR_UNKNOWN_CLIENT",
            Self::ClientExists => "ERROR_CLIENT_EXISTS",
            Self::UnknownSession => "ERROR_UNKNOWN_SESSION",
            Self::SessionForbidden => "ERROR_SESSION_FORBIDDEN",
            Self::Expired => "ERROR_EXPIRED",
            Self::InvalidFileName => "ERROR_INVALID_FILE_NAME",
            Self::InvalidChunkIndex => "ERROR_INVALID_CHUNK_INDEX",
            Self::TotalChunksMismatch => "ERROR_TOTAL_CHUNKS_MISMATCH",
            Self::ChunkTooLarge => "ERROR_CHUNK_TOO_LARGE",
            Self::ObjectTooLarge => "ERROR_OBJECT_TOO_LARGE",
            Self::InvalidBase64 => "ERROR_INVALID_BASE64",
            Self::ChunkConflict => "ERROR_CHUNK_CONFLICT",
            Self::IncompleteUpload => "ERROR_INCOMPLETE_UPLOAD",
            Self::IntegrityMismatch => "ERROR_INTEGRITY_MISMATCH",
            Self::UnknownModel => "ERROR_UNKNOWN_MODEL",
            Self::UnsupportedAlgorithm => "ERROR_UNSUPPORTED_ALGORITHM",
            Self::InvalidParameters => "ERROR_INVALID_PARAMETERS",
            Self::WeakParameters => "ERROR_WEAK_PARAMETERS",
            Self::ParameterMismatch => "ERROR_PARAMETER_MISMATCH",
            Self::UnsupportedPacking => "ERROR_UNSUPPORTED_PACKING",
            Self::DepthExceeded => "ERROR_DEPTH_EXCEEDED",
            Self::InvalidGaloisKey => "ERROR_INVALID_GALOIS_KEY",
            Self::NoiseOverflow => "ERROR_NOISE_OVERFLOW",
            Self::MalformedCiphertext => "ERROR_MALFORMED_CIPHERTEXT",
            Self::MalformedKeys => "ERROR_MALFORMED_KEYS",
            Self::KeysNotProvisioned => "ERROR_KEYS_NOT_PROVISIONED",
            Self::KeysRevoked => "ERROR_KEYS_REVOKED",
            Self::KeyReferenceUnresolved => "ERROR_KEY_REFERENCE_UNRESOLVED",
            Self::QuotaExceeded => "ERROR_QUOTA_EXCEEDED",
            Self::Busy => "ERROR_BUSY",
            Self::Cancelled => "ERROR_CANCELLED",
            Self::ResultNotFound => "ERROR_RESULT_NOT_FOUND",
            Self::Replay => "ERROR_REPLAY",
            Self::BadSignature => "ERROR_BAD_SIGNATURE",
            Self::StaleRequest => "ERROR_STALE_REQUEST",
            Self::IdentityMismatch => "ERROR_IDENTITY_MISMATCH",
            Self::InsecureTransport => "ERROR_INSECURE_TRANSPORT",
            Self::PathNotAllowed => "ERROR_PATH_NOT_ALLOWED",
            Self::FileNotFound => "ERROR_FILE_NOT_FOUND",
            Self::ImageUnreadable => "ERROR_IMAGE_UNREADABLE",
            Self::DecryptionFailed => "ERROR_DECRYPTION_FAILED",
            Self::Unavailable => "ERROR_UNAVAILABLE",
            Self::Internal => "ERROR_INTERNAL",
        }
    }

    /// The code of a wire string, if it is one of ours.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// Whether the identical request may succeed if simply sent again later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited
                | Self::QuotaExceeded
                | Self::Busy
                | Self::Cancelled
                | Self::Unavailable
                | Self::Internal
        )
    }

    /// One line saying what the code means.
    pub fn description(self) -> &'static str {
        match self {
            Self::InvalidArgument => {
                "an argument is missing, has the wrong type, or breaks its syntax rule"
            }
            Self::Unauthorized => {
                "the bearer token is missing, malformed, or does not belong to the client_id"
            }
            Self::RateLimited => "too many requests or failed authentications; wait and retry",
            Self::UnknownClient => "no client with this client_id is known",
            Self::ClientExists => "this client_id already has keys; rotate them instead",
            Self::UnknownSession => "no session or provisioning upload with this id exists",
            Self::SessionForbidden => "the session belongs to another client",
            Self::Expired => "the session, provisioning upload or result reference has expired",
            Self::InvalidFileName => "file_name is not a plain object name",
            Self::InvalidChunkIndex => "chunk_index or total_chunks is out of range",
            Self::TotalChunksMismatch => "total_chunks differs from earlier chunks of the object",
            Self::ChunkTooLarge => "the chunk decodes to more bytes than the negotiated maximum",
            Self::ObjectTooLarge => "the object would exceed its total size limit",
            Self::InvalidBase64 => "not canonical padded standard Base64",
            Self::ChunkConflict => "a chunk was re-sent with the same index but different bytes",
            Self::IncompleteUpload => "chunks or objects are missing (see details.missing)",
            Self::IntegrityMismatch => {
                "the assembled bytes do not match the declared digest or size"
            }
            Self::UnknownModel => "the model selector names no served model",
            Self::UnsupportedAlgorithm => {
                "the Algorithm ID is malformed, unknown or not implemented"
            }
            Self::InvalidParameters => "the cryptographic parameters are malformed or inconsistent",
            Self::WeakParameters => "the parameters are below the required security level",
            Self::ParameterMismatch => {
                "the parameters differ from those of the provisioned keys or the model"
            }
            Self::UnsupportedPacking => {
                "the packing, slot count or batch size does not fit the model"
            }
            Self::DepthExceeded => "the computation needs more multiplicative depth than allowed",
            Self::InvalidGaloisKey => {
                "a rotation (Galois) key is missing or does not match its step"
            }
            Self::NoiseOverflow => "noise or scale growth would make the result undecryptable",
            Self::MalformedCiphertext => {
                "a ciphertext object failed decoding or conformance checks"
            }
            Self::MalformedKeys => {
                "the evaluation-key bundle or a stored key file failed decoding or conformance checks"
            }
            Self::KeysNotProvisioned => "the client has no committed evaluation keys",
            Self::KeysRevoked => "the key set was revoked or rotated away",
            Self::KeyReferenceUnresolved => "the out-of-band key reference could not be resolved",
            Self::QuotaExceeded => "a per-client quota would be exceeded",
            Self::Busy => "the server is at its inference concurrency limit",
            Self::Cancelled => "the request was cancelled by the client",
            Self::ResultNotFound => "no result with this reference exists",
            Self::Replay => "the signed request was already seen",
            Self::BadSignature => "the request MAC or signature does not verify",
            Self::StaleRequest => {
                "the signed request's timestamp is outside the accepted window; re-sign and retry"
            }
            Self::IdentityMismatch => {
                "the signing identity is not the one pinned or registered for this client_id"
            }
            Self::InsecureTransport => {
                "a credential would be sent without TLS to a host that is not loopback"
            }
            Self::PathNotAllowed => "the local path is outside the allowed directories",
            Self::FileNotFound => "the local file does not exist",
            Self::ImageUnreadable => "the image could not be read or decoded",
            Self::DecryptionFailed => "decryption failed: wrong secret key or corrupt result",
            Self::Unavailable => "a dependency is unreachable; retry later",
            Self::Internal => "an unexpected server fault",
        }
    }

    /// Maps a CKKS library error to a code. `malformed` is the code for decoding failures of
    /// the object being read ([`ErrorCode::MalformedCiphertext`] or [`ErrorCode::MalformedKeys`]).
    pub fn from_ckks(err: &cipherinfer_ckks::Error, malformed: ErrorCode) -> Self {
        use cipherinfer_ckks::{DecodeErrorCode, Error};
        match err {
            Error::InvalidParameters(_) => Self::InvalidParameters,
            Error::Insecure { .. } => Self::WeakParameters,
            Error::ParameterMismatch { .. } => Self::ParameterMismatch,
            Error::InvalidLevel { .. } | Error::OutOfLevels => Self::DepthExceeded,
            Error::LevelMismatch { .. }
            | Error::ScaleMismatch { .. }
            | Error::InvalidScale { .. }
            | Error::CiphertextDegree { .. } => malformed,
            Error::MissingKey {
                galois_element: Some(_),
                ..
            } => Self::InvalidGaloisKey,
            Error::MissingKey { .. } => Self::MalformedKeys,
            Error::Encoding(_) => Self::InvalidArgument,
            Error::OutOfRange(_) => Self::NoiseOverflow,
            Error::Decode { code, .. } => match code {
                DecodeErrorCode::TooLarge => Self::ObjectTooLarge,
                DecodeErrorCode::WrongParameters => Self::ParameterMismatch,
                _ => malformed,
            },
            Error::Cancelled => Self::Cancelled,
            _ => Self::Internal,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of a failed tool call (`isError: true`): serialized as JSON in the text content
/// (not as `structuredContent`, which the tool's output schema would not admit).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{error_code}: {message}")]
pub struct ToolError {
    /// Always `false`: the call failed.
    pub ok: bool,
    /// Machine-readable reason.
    pub error_code: ErrorCode,
    /// Human-readable explanation; never contains secrets or plaintext.
    pub message: String,
    /// Whether the identical request may succeed later (see [`ErrorCode::is_retryable`]).
    pub retryable: bool,
    /// Suggested wait before retrying, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Code-specific structured data, e.g. `{"missing": [...]}` for `ERROR_INCOMPLETE_UPLOAD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ToolError {
    /// An error with a code and a message.
    pub fn new(error_code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error_code,
            message: message.into(),
            retryable: error_code.is_retryable(),
            retry_after_ms: None,
            details: None,
        }
    }

    /// Attaches structured details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Attaches a retry hint.
    pub fn with_retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    /// Maps a CKKS library error (its messages carry no secrets).
    pub fn from_ckks(err: &cipherinfer_ckks::Error, malformed: ErrorCode) -> Self {
        Self::new(ErrorCode::from_ckks(err, malformed), err.to_string())
    }

    /// The JSON form sent as the tool result's text content.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Result alias of the crate's validators.
pub type Result<T> = std::result::Result<T, ToolError>;

/// Deserializes tool arguments, mapping any schema violation to `ERROR_INVALID_ARGUMENT`
/// instead of a JSON-RPC error, so clients always get a machine-readable code.
pub fn parse_arguments<T: serde::de::DeserializeOwned>(arguments: Value) -> Result<T> {
    serde_json::from_value(arguments)
        .map_err(|e| ToolError::new(ErrorCode::InvalidArgument, format!("arguments: {e}")))
}
