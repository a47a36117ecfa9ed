//! Arguments and results of the remote inference server's tools: Step 0 key provisioning
//! (begin / chunk / commit, revoke), `upload_ciphertext_chunk`, `remote_inference_cnn`,
//! `fetch_result_chunk`, `describe_capabilities`, `get_session_status` and `delete_session`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::algorithm::AlgorithmId;
use crate::auth::AuthToken;
use crate::client_spec::ClientSpec;
use crate::error::{ErrorCode, Result, ToolError};
use crate::integrity::{BundleSignature, PublicIdentity, ResultSignature};
use crate::params::{ExtendedParameters, InferenceTelemetry, with_extended_parameters};
use crate::validate::{
    Limits, validate_client_id, validate_file_name, validate_model_name, validate_session_id,
    validate_sha256_hex,
};

/// Tool name of Step 0, phase 1.
pub const TOOL_PROVISION_KEYS_BEGIN: &str = "provision_keys_begin";
/// Tool name of Step 0, phase 2 (one call per key chunk).
pub const TOOL_PROVISION_KEYS_CHUNK: &str = "provision_keys_chunk";
/// Tool name of Step 0, phase 3.
pub const TOOL_PROVISION_KEYS_COMMIT: &str = "provision_keys_commit";
/// Tool name of key revocation.
pub const TOOL_REVOKE_KEYS: &str = "revoke_keys";
/// Tool name of the chunked ciphertext upload (draft 6.3).
pub const TOOL_UPLOAD_CIPHERTEXT_CHUNK: &str = "upload_ciphertext_chunk";
/// Tool name of the encrypted inference (draft 6.3/6.4).
pub const TOOL_REMOTE_INFERENCE_CNN: &str = "remote_inference_cnn";
/// Tool name of the by-reference result download.
pub const TOOL_FETCH_RESULT_CHUNK: &str = "fetch_result_chunk";
/// Tool name of the capabilities and model listing.
pub const TOOL_DESCRIBE_CAPABILITIES: &str = "describe_capabilities";
/// Tool name of the session status query.
pub const TOOL_GET_SESSION_STATUS: &str = "get_session_status";
/// Tool name of session deletion.
pub const TOOL_DELETE_SESSION: &str = "delete_session";

/// Version of this protocol profile, announced in the capabilities.
pub const PROTOCOL_PROFILE: &str = "cipherinfer/1";

/// Prefix of key references.
pub const KEY_REF_PREFIX: &str = "urn:cipherinfer:key:";
/// URI scheme of out-of-band key references resolved in the server's own key store.
pub const KEY_STORE_URI_SCHEME: &str = "keystore:";

fn bad(msg: impl Into<String>) -> ToolError {
    ToolError::new(ErrorCode::InvalidArgument, msg)
}

/// Formats the key reference of a client's key version:
/// `urn:cipherinfer:key:<client_id>:<version>`.
pub fn format_key_ref(client_id: &str, version: u32) -> String {
    format!("{KEY_REF_PREFIX}{client_id}:{version}")
}

/// Parses a key reference into `(client_id, version)`.
pub fn parse_key_ref(key_ref: &str) -> Result<(String, u32)> {
    let err = || bad("key_ref must be urn:cipherinfer:key:<client_id>:<version>");
    let rest = key_ref.strip_prefix(KEY_REF_PREFIX).ok_or_else(err)?;
    let (client, version) = rest.rsplit_once(':').ok_or_else(err)?;
    validate_client_id(client)?;
    if version.is_empty()
        || version.len() > 9
        || !version.bytes().all(|b| b.is_ascii_digit())
        || (version.len() > 1 && version.starts_with('0'))
    {
        return Err(err());
    }
    let v: u32 = version.parse().map_err(|_| err())?;
    if v == 0 {
        return Err(err());
    }
    Ok((client.to_string(), v))
}

/// Parses an out-of-band key URI `keystore:<name>` (name as a `file_name`, optionally in
/// `/`-separated segments each obeying the `file_name` rules, at most 8 segments). Returns the
/// segments. The server resolves it only in its own key store, never over the network.
pub fn parse_key_store_uri(uri: &str) -> Result<Vec<String>> {
    let rest = uri
        .strip_prefix(KEY_STORE_URI_SCHEME)
        .ok_or_else(|| bad("key_uri must start with keystore:"))?;
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.len() > 8 {
        return Err(bad("key_uri has more than 8 segments"));
    }
    for s in &segments {
        validate_file_name(s).map_err(|e| bad(format!("key_uri segment: {}", e.message)))?;
    }
    Ok(segments.into_iter().map(str::to_string).collect())
}

// ----------------------------------------------------------------------------------------------
// Step 0: key provisioning
// ----------------------------------------------------------------------------------------------

/// Whether a provisioning creates a client or replaces its key set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionMode {
    /// First provisioning of a `client_id` the server does not know.
    #[default]
    New,
    /// Replace the key set of a known client (needs its current `auth_token`); the old key
    /// reference and token stop working at commit.
    Rotate,
}

/// Arguments of `provision_keys_begin`: announces an evaluation-key bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionKeysBeginArgs {
    /// Client identifier the keys are bound to, 1..=64 of [A-Za-z0-9_-]; choose it randomly.
    pub client_id: String,
    /// Algorithm ID of the keys, e.g. CKKS-RNS-128-N8192-CIFR1.
    pub algorithm_id: String,
    /// Parameter id (64 hex digits, SHA-256 of the canonical parameter set).
    pub parameter_id: String,
    /// Served model the keys are meant for: the server checks the bundle holds every
    /// rotation key the model needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// new (first time) or rotate (replace the current key set).
    #[serde(default)]
    pub mode: ProvisionMode,
    /// Decoded size of the bundle in bytes.
    pub bundle_bytes: u64,
    /// SHA-256 (64 lower-case hex digits) of the whole bundle; checked at commit.
    pub bundle_sha256: String,
    /// Number of chunks the bundle is sent in (0 when key_uri is given).
    pub total_chunks: u32,
    /// Out-of-band reference to a bundle already in the server's key store
    /// (keystore:<name>); then no chunks are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_uri: Option<String>,
    /// Current bearer token; required for mode rotate (or an Authorization: Bearer header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<AuthToken>,
    /// Operator-issued enrollment token, required for mode new when the server restricts
    /// enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_token: Option<AuthToken>,
    /// The client's Ed25519 signature over the bundle's digest, Algorithm ID, parameter id,
    /// client_id and a timestamp; its identity key is pinned at first provisioning. Required
    /// unless the server accepts unsigned clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_signature: Option<BundleSignature>,
}

impl ProvisionKeysBeginArgs {
    /// Validates syntax and limits; returns the parsed Algorithm ID.
    pub fn validate(&self, limits: &Limits) -> Result<AlgorithmId> {
        validate_client_id(&self.client_id)?;
        let alg: AlgorithmId = self.algorithm_id.parse()?;
        alg.ensure_implemented()?;
        validate_sha256_hex("parameter_id", &self.parameter_id)?;
        validate_sha256_hex("bundle_sha256", &self.bundle_sha256)?;
        if let Some(m) = &self.model {
            validate_model_name(m)?;
        }
        if self.bundle_bytes == 0 {
            return Err(bad("bundle_bytes must be positive"));
        }
        Limits::check_object_size(0, self.bundle_bytes, limits.max_key_bundle_bytes)?;
        match &self.key_uri {
            Some(uri) => {
                parse_key_store_uri(uri)?;
                if self.total_chunks != 0 {
                    return Err(ToolError::new(
                        ErrorCode::InvalidChunkIndex,
                        "total_chunks must be 0 with key_uri",
                    ));
                }
            }
            None => {
                let max = limits.max_key_total_chunks();
                if self.total_chunks == 0 || self.total_chunks > max {
                    return Err(ToolError::new(
                        ErrorCode::InvalidChunkIndex,
                        format!("total_chunks {} outside 1..={max}", self.total_chunks),
                    ));
                }
                // A zero limit (a misconfigured server) must not divide by zero.
                let min_chunks = self.bundle_bytes.div_ceil(limits.max_chunk_bytes.max(1));
                if u64::from(self.total_chunks) < min_chunks {
                    return Err(ToolError::new(
                        ErrorCode::ChunkTooLarge,
                        format!(
                            "{} bytes need at least {min_chunks} chunks of at most {} bytes",
                            self.bundle_bytes, limits.max_chunk_bytes
                        ),
                    ));
                }
            }
        }
        if self.mode == ProvisionMode::Rotate && self.auth_token.is_none() {
            return Err(ToolError::new(
                ErrorCode::Unauthorized,
                "mode rotate needs the current auth_token",
            ));
        }
        Ok(alg)
    }
}

/// Result of `provision_keys_begin`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProvisionKeysBeginResult {
    /// Always true.
    pub ok: bool,
    /// Identifier of this provisioning upload (random, 128 bits or more, hex).
    pub provisioning_id: String,
    /// Echo of the client_id.
    pub client_id: String,
    /// Chunks expected (0 for key_uri).
    pub total_chunks: u32,
    /// Largest decoded chunk the server accepts, in bytes.
    pub max_chunk_bytes: u64,
    /// Unix time (seconds) after which an uncommitted upload is discarded.
    pub expires_at: u64,
}

/// Arguments of `provision_keys_chunk`: one Base64 slice of the bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionKeysChunkArgs {
    /// Client identifier given at begin.
    pub client_id: String,
    /// Identifier returned by provision_keys_begin.
    pub provisioning_id: String,
    /// Zero-based index of this chunk.
    pub chunk_index: u32,
    /// Total chunks, as announced at begin.
    pub total_chunks: u32,
    /// The chunk, padded standard Base64; decoded size at most max_chunk_bytes.
    pub chunk_b64: String,
    /// SHA-256 (64 lower-case hex digits) of the decoded chunk; a chunk that does not match
    /// is refused with ERROR_INTEGRITY_MISMATCH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_sha256: Option<String>,
}

impl ProvisionKeysChunkArgs {
    /// Validates identifiers and chunk coordinates (the payload is decoded with
    /// [`crate::validate::decode_base64_limited`]).
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        validate_client_id(&self.client_id)?;
        validate_provisioning_id(&self.provisioning_id)?;
        if let Some(d) = &self.chunk_sha256 {
            validate_sha256_hex("chunk_sha256", d)?;
        }
        Limits::check_chunk_coordinates(
            self.chunk_index,
            self.total_chunks,
            limits.max_key_total_chunks(),
        )
    }
}

/// Checks a provisioning id: 32..=64 lower-case hex digits.
pub fn validate_provisioning_id(id: &str) -> Result<()> {
    if (32..=64).contains(&id.len()) && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ToolError::new(
            ErrorCode::UnknownSession,
            "provisioning_id must be 32..=64 lower-case hex digits",
        ))
    }
}

/// Per-chunk acknowledgement of `provision_keys_chunk`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProvisionKeysChunkAck {
    /// Always true.
    pub ok: bool,
    /// Echo of the provisioning id.
    pub provisioning_id: String,
    /// Echo of the chunk index.
    pub chunk_index: u32,
    /// Decoded bytes of this chunk.
    pub chunk_bytes: u64,
    /// Distinct chunks received so far.
    pub received_chunks: u32,
    /// Total chunks expected.
    pub total_chunks: u32,
    /// True if this exact chunk had already been received (idempotent re-send).
    pub duplicate: bool,
}

/// Arguments of `provision_keys_commit`: validate and activate the uploaded bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionKeysCommitArgs {
    /// Client identifier given at begin.
    pub client_id: String,
    /// Identifier returned by provision_keys_begin.
    pub provisioning_id: String,
}

impl ProvisionKeysCommitArgs {
    /// Validates identifiers.
    pub fn validate(&self) -> Result<()> {
        validate_client_id(&self.client_id)?;
        validate_provisioning_id(&self.provisioning_id)
    }
}

/// Result of `provision_keys_commit`: the key reference and a fresh bearer token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProvisionKeysResult {
    /// Always true.
    pub ok: bool,
    /// The client the keys are bound to.
    pub client_id: String,
    /// Key reference of the active key set: urn:cipherinfer:key:<client_id>:<version>.
    pub key_ref: String,
    /// Version of the key set, 1 for the first provisioning, +1 per rotation.
    pub key_version: u32,
    /// Algorithm ID of the key set.
    pub algorithm_id: AlgorithmId,
    /// Parameter id of the key set.
    pub parameter_id: String,
    /// Fresh 256-bit bearer token, shown only in this response; the server keeps its hash.
    pub auth_token: AuthToken,
    /// Decoded size of the stored bundle in bytes.
    pub bundle_bytes: u64,
    /// SHA-256 of the stored bundle.
    pub bundle_sha256: String,
    /// Whether the bundle holds a relinearization key.
    pub relinearization: bool,
    /// Galois elements of the rotation keys in the bundle, ascending.
    pub galois_elements: Vec<u64>,
    /// Served models whose every required key is in the bundle.
    pub models: Vec<String>,
    /// The client identity the server pinned for this client_id (absent for unsigned
    /// clients of a server that accepts them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_key: Option<PublicIdentity>,
}

/// Arguments of `revoke_keys`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeysArgs {
    /// Client whose key set is revoked.
    pub client_id: String,
    /// Current bearer token (or an Authorization: Bearer header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<AuthToken>,
}

impl RevokeKeysArgs {
    /// Validates identifiers.
    pub fn validate(&self) -> Result<()> {
        validate_client_id(&self.client_id)
    }
}

/// Result of `revoke_keys`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RevokeKeysResult {
    /// Always true.
    pub ok: bool,
    /// The client.
    pub client_id: String,
    /// Key reference that no longer works.
    pub revoked_key_ref: String,
    /// Sessions and results of the client that were deleted with it.
    pub sessions_deleted: u32,
}

// ----------------------------------------------------------------------------------------------
// Step 3: ciphertext upload
// ----------------------------------------------------------------------------------------------

/// Arguments of `upload_ciphertext_chunk`, exactly the draft's Section 6.3 fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadCiphertextChunkArgs {
    /// Client identifier (the key reference of draft 6.3).
    pub client_id: String,
    /// Session grouping the chunks and the inference, 1..=128 of [A-Za-z0-9_-]; created by
    /// its first chunk.
    pub session_id: String,
    /// Ciphertext object the chunk belongs to: 1..=128 of [A-Za-z0-9._-], starting with a
    /// letter or digit; a name, never a path.
    pub file_name: String,
    /// Zero-based chunk index, below total_chunks.
    pub chunk_index: u32,
    /// Number of chunks of this object; the same in every chunk of it.
    pub total_chunks: u32,
    /// The chunk, padded standard Base64; decoded size at most max_chunk_bytes.
    pub chunk_b64: String,
    /// Bearer token from Step 0 (or an Authorization: Bearer header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<AuthToken>,
    /// SHA-256 (64 lower-case hex digits) of the decoded chunk; a chunk that does not match
    /// is refused with ERROR_INTEGRITY_MISMATCH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_sha256: Option<String>,
}

impl UploadCiphertextChunkArgs {
    /// Validates identifiers, the file name and chunk coordinates.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        validate_client_id(&self.client_id)?;
        validate_session_id(&self.session_id)?;
        validate_file_name(&self.file_name)?;
        if let Some(d) = &self.chunk_sha256 {
            validate_sha256_hex("chunk_sha256", d)?;
        }
        Limits::check_chunk_coordinates(
            self.chunk_index,
            self.total_chunks,
            limits.max_total_chunks(),
        )
    }
}

/// Per-chunk acknowledgement (draft 6.3: `ok`, `file_name`, `chunk_index`, `chunk_bytes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UploadChunkAck {
    /// Always true.
    pub ok: bool,
    /// Echo of the object name.
    pub file_name: String,
    /// Echo of the chunk index.
    pub chunk_index: u32,
    /// Decoded bytes of this chunk.
    pub chunk_bytes: u64,
    /// Total chunks of the object.
    pub total_chunks: u32,
    /// Distinct chunks of the object received so far.
    pub received_chunks: u32,
    /// True once every chunk of the object is staged.
    pub object_complete: bool,
    /// True if this exact chunk had already been received (idempotent re-send).
    pub duplicate: bool,
}

// ----------------------------------------------------------------------------------------------
// Steps 3-4: inference
// ----------------------------------------------------------------------------------------------

with_extended_parameters! {
    /// Arguments of `remote_inference_cnn` (draft 6.3 Figure 4 plus the 7.1 block at top level).
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct RemoteInferenceArgs {
        /// Client identifier; resolves to the client's provisioned evaluation keys.
        pub client_id: String,
        /// Session whose staged ciphertext objects are evaluated.
        pub session_id: String,
        /// Bearer token from Step 0 (or an Authorization: Bearer header).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub auth_token: Option<AuthToken>,
        /// Served model to run; the server's default model when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub model: Option<String>,
        /// Pins the key set: fails with ERROR_KEYS_REVOKED if it is no longer the active one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub key_ref: Option<String>,
        /// If given, must equal the key set's Algorithm ID (else ERROR_PARAMETER_MISMATCH).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub algorithm_id: Option<String>,
        /// Largest output (decoded bytes) to return inline; larger outputs come by result_ref.
        /// 0 forces by-reference. Capped by the server's max_inline_result_bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub max_inline_bytes: Option<u64>,
        /// SHA-256 (64 lower-case hex digits) of every staged input object, by file name: the
        /// server evaluates only if the staged objects are exactly these (else
        /// ERROR_INTEGRITY_MISMATCH). Covered by the request signature.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub input_sha256: Option<BTreeMap<String, String>>,
    }
}

impl RemoteInferenceArgs {
    /// Validates identifiers, selectors and the 7.1 block (model-independent checks);
    /// returns the parsed Algorithm ID if one was given.
    pub fn validate(&self) -> Result<Option<AlgorithmId>> {
        validate_client_id(&self.client_id)?;
        validate_session_id(&self.session_id)?;
        if let Some(m) = &self.model {
            validate_model_name(m)?;
        }
        if let Some(k) = &self.key_ref {
            let (client, _) = parse_key_ref(k)?;
            if client != self.client_id {
                return Err(ToolError::new(
                    ErrorCode::Unauthorized,
                    "key_ref belongs to another client_id",
                ));
            }
        }
        if let Some(inputs) = &self.input_sha256 {
            if inputs.len() > 64 {
                return Err(bad("input_sha256 names more than 64 objects"));
            }
            for (name, digest) in inputs {
                validate_file_name(name)?;
                validate_sha256_hex("input_sha256", digest)?;
            }
        }
        self.extended_parameters().validate()?;
        self.algorithm_id.as_deref().map(str::parse).transpose()
    }
}

/// Evaluation metadata of draft 6.4 `profile` (all times in seconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Profile {
    /// Homomorphic evaluation time.
    pub infer_s: f64,
    /// Time to load and check the key set and the staged ciphertexts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_s: Option<f64>,
    /// Time spent waiting for an evaluation slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_s: Option<f64>,
    /// Time to serialize the output ciphertext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serialize_s: Option<f64>,
    /// Whole tool call, server side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_s: Option<f64>,
    /// Threads the evaluation used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// Decoded bytes of the input ciphertext objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_bytes: Option<u64>,
    /// Seconds per evaluation step, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_s: Vec<f64>,
}

/// Reference to an output too large to return inline; fetch it with `fetch_result_chunk`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResultRef {
    /// Identifier of the result within the session.
    pub result_id: String,
    /// Decoded size of the whole output in bytes.
    pub total_bytes: u64,
    /// Number of chunks to fetch, indices 0..total_chunks.
    pub total_chunks: u32,
    /// Decoded size of every chunk but the last.
    pub chunk_bytes: u64,
    /// SHA-256 of the whole output (64 hex digits).
    pub sha256: String,
    /// Unix time (seconds) after which the result is deleted.
    pub expires_at: u64,
}

/// Result of `remote_inference_cnn` (draft 6.4 Figure 5 plus 7.2 telemetry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RemoteInferenceResult {
    /// Always true.
    pub ok: bool,
    /// Echo of the session.
    pub session_id: String,
    /// Model that was evaluated.
    pub model: String,
    /// Algorithm ID of the output ciphertext.
    pub algorithm_id: AlgorithmId,
    /// Parameter id of the output ciphertext.
    pub parameter_id: String,
    /// The encrypted output (padded standard Base64), present when it fits inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_logit_b64: Option<String>,
    /// Decoded size of the output ciphertext in bytes.
    pub encrypted_logit_bytes: u64,
    /// SHA-256 of the decoded output (64 hex digits).
    pub encrypted_logit_sha256: String,
    /// Present when the output is offered by reference instead of inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ref: Option<ResultRef>,
    /// Evaluation metadata.
    pub profile: Profile,
    /// The server's signature over the output's digest and the request it answers (present
    /// when the request was signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_signature: Option<ResultSignature>,
    /// Draft 7.2 telemetry.
    #[serde(flatten)]
    pub telemetry: InferenceTelemetry,
}

/// Arguments of `fetch_result_chunk`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchResultChunkArgs {
    /// Client identifier.
    pub client_id: String,
    /// Session the result belongs to.
    pub session_id: String,
    /// result_ref.result_id from the inference result.
    pub result_id: String,
    /// Zero-based chunk index, below result_ref.total_chunks.
    pub chunk_index: u32,
    /// Bearer token (or an Authorization: Bearer header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<AuthToken>,
}

impl FetchResultChunkArgs {
    /// Validates identifiers.
    pub fn validate(&self) -> Result<()> {
        validate_client_id(&self.client_id)?;
        validate_session_id(&self.session_id)?;
        validate_result_id(&self.result_id)
    }
}

/// Checks a result id: 1..=64 characters of [A-Za-z0-9_-].
pub fn validate_result_id(id: &str) -> Result<()> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(ToolError::new(
            ErrorCode::ResultNotFound,
            "result_id must be 1..=64 characters of [A-Za-z0-9_-]",
        ))
    }
}

/// Result of `fetch_result_chunk`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FetchResultChunkResult {
    /// Always true.
    pub ok: bool,
    /// Echo of the result id.
    pub result_id: String,
    /// Echo of the chunk index.
    pub chunk_index: u32,
    /// Total chunks of the result.
    pub total_chunks: u32,
    /// The chunk, padded standard Base64.
    pub chunk_b64: String,
    /// Decoded bytes of this chunk.
    pub chunk_bytes: u64,
}

// ----------------------------------------------------------------------------------------------
// Capabilities, sessions
// ----------------------------------------------------------------------------------------------

/// Arguments of `describe_capabilities` (public; no token needed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DescribeCapabilitiesArgs {
    /// Only describe this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Only describe models whose parameter set gives at least this security (128, 192 or 256
    /// bits): none → ERROR_WEAK_PARAMETERS, listing the levels served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_level: Option<u32>,
}

/// One served model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelInfo {
    /// Model name, the value of the model selector.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// Input tensor shape (channels, height, width).
    pub input_shape: Vec<u32>,
    /// Output tensor shape, e.g. [10].
    pub output_shape: Vec<u32>,
    /// Class names indexed by output position.
    pub labels: Vec<String>,
    /// Algorithm ID of the model's parameter set.
    pub algorithm_id: AlgorithmId,
    /// Parameter id of the model's parameter set.
    pub parameter_id: String,
    /// The complete parameter set as a draft 7.1 block (with the model's packing).
    pub parameters: ExtendedParameters,
    /// Multiplicative depth the model consumes.
    pub multiplicative_depth: u32,
    /// Rotation steps the keys must cover.
    pub rotation_steps: Vec<i64>,
    /// Galois elements of those rotation keys, ascending.
    pub galois_elements: Vec<u64>,
    /// Whether a relinearization key is required.
    pub relinearization: bool,
    /// Names of the input ciphertext objects the session must hold, in order.
    pub input_objects: Vec<String>,
    /// What the client needs to encode, encrypt and decode for this model (the compiler's
    /// client specification: parameters, slot maps, input level and scale, output map).
    /// Untrusted: clients validate it (`ClientSpec::validate`) before use.
    #[serde(deserialize_with = "crate::client_spec::deserialize")]
    pub client_spec: ClientSpec,
    /// Image preprocessing the local server applies (resize, channels, normalization).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub preprocessing: Option<serde_json::Value>,
}

/// Result of `describe_capabilities`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Capabilities {
    /// Always true.
    pub ok: bool,
    /// Protocol profile, "cipherinfer/1".
    pub protocol: String,
    /// Server implementation name and version.
    pub server: String,
    /// Algorithm IDs the server evaluates.
    pub algorithm_ids: Vec<AlgorithmId>,
    /// Transfer limits.
    pub limits: Limits,
    /// Session lifetime after its last use, in seconds.
    pub session_ttl_s: u64,
    /// Lifetime of a result offered by reference, in seconds.
    pub result_ttl_s: u64,
    /// Whether first provisioning needs an enrollment_token.
    pub enrollment_required: bool,
    /// The server's Ed25519 identity, which signs inference results; clients pin it at first
    /// contact.
    pub server_identity: PublicIdentity,
    /// Whether every call but this one must carry a request_signature.
    pub signatures_required: bool,
    /// Whether a client_id must have an identity registered by the operator before Step 0.
    pub identity_registration_required: bool,
    /// Largest accepted distance between a request's timestamp and the server's clock, ms.
    pub max_clock_skew_ms: u64,
    /// Name of the model used when no selector is given.
    pub default_model: String,
    /// Served models.
    pub models: Vec<ModelInfo>,
}

/// Arguments of `get_session_status` and `delete_session`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    /// Client identifier.
    pub client_id: String,
    /// Session to query or delete.
    pub session_id: String,
    /// Bearer token (or an Authorization: Bearer header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<AuthToken>,
}

impl SessionArgs {
    /// Validates identifiers.
    pub fn validate(&self) -> Result<()> {
        validate_client_id(&self.client_id)?;
        validate_session_id(&self.session_id)
    }
}

/// Upload state of one ciphertext object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ObjectStatus {
    /// Object name.
    pub file_name: String,
    /// Chunks announced.
    pub total_chunks: u32,
    /// Chunks received.
    pub received_chunks: u32,
    /// Indices still missing, ascending.
    pub missing_chunks: Vec<u32>,
    /// Decoded bytes staged.
    pub bytes: u64,
}

/// Result of `get_session_status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionStatus {
    /// Always true.
    pub ok: bool,
    /// Echo of the session.
    pub session_id: String,
    /// Staged objects, by name.
    pub objects: Vec<ObjectStatus>,
    /// Results held for the session (result ids).
    pub results: Vec<String>,
    /// Unix time (seconds) the session expires unless used again.
    pub expires_at: u64,
}

/// Result of `delete_session`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeleteSessionResult {
    /// Always true.
    pub ok: bool,
    /// Echo of the session.
    pub session_id: String,
    /// Whether anything was deleted (false if the session had already gone).
    pub deleted: bool,
    /// Bytes freed.
    pub bytes_freed: u64,
}
