//! Arguments and results of the local crypto server's tools: key generation, evaluation-key
//! export, `fhe_encrypt` (draft 6.1, Step 2 response), `fhe_decrypt` (draft 6.5, Step 6
//! response) and the high-level `private_classify`.
//!
//! Paths here are local to the trusted host; the local server confines them to its configured
//! directories (`ERROR_PATH_NOT_ALLOWED`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::algorithm::AlgorithmId;
use crate::client_spec::ClientSpec;
use crate::error::{ErrorCode, Result, ToolError};
use crate::integrity::PublicIdentity;
use crate::params::ExtendedParameters;
use crate::validate::{validate_client_id, validate_file_name, validate_model_name};

/// Tool name of key generation.
pub const TOOL_GENERATE_KEYS: &str = "generate_keys";
/// Tool name of the evaluation-key export.
pub const TOOL_EXPORT_EVALUATION_KEYS: &str = "export_evaluation_keys";
/// Tool name of local encryption (draft 6.1).
pub const TOOL_FHE_ENCRYPT: &str = "fhe_encrypt";
/// Tool name of local decryption (draft 6.5).
pub const TOOL_FHE_DECRYPT: &str = "fhe_decrypt";
/// Tool name of the whole workflow in one call.
pub const TOOL_PRIVATE_CLASSIFY: &str = "private_classify";

/// Default `top_k`.
pub const DEFAULT_TOP_K: u32 = 3;
/// Largest `top_k`.
pub const MAX_TOP_K: u32 = 1000;
/// Longest local path accepted.
pub const MAX_PATH_LEN: usize = 4096;
/// Default largest total ciphertext size returned inline in `encrypted_payload_b64`.
pub const DEFAULT_INLINE_PAYLOAD_BYTES: u64 = 256 * 1024;
/// Most class labels a key set may carry.
pub const MAX_LABELS: usize = 100_000;
/// Longest class label, in bytes.
pub const MAX_LABEL_LEN: usize = 256;

/// Checks a local path argument's form: non-empty, absolute, at most 4096 bytes, no NUL, no
/// `..` component. Confinement to allowed directories is the local server's job.
pub fn validate_local_path(field: &str, path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(ToolError::new(
            ErrorCode::PathNotAllowed,
            format!("{field}: {why}"),
        ))
    };
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return bad("must be 1..=4096 bytes");
    }
    if path.contains('\0') {
        return bad("contains NUL");
    }
    let p = std::path::Path::new(path);
    if !p.is_absolute() {
        return bad("must be an absolute path");
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return bad("must not contain '..'");
    }
    Ok(())
}

fn check_top_k(top_k: Option<u32>) -> Result<()> {
    match top_k {
        Some(k) if k == 0 || k > MAX_TOP_K => Err(ToolError::new(
            ErrorCode::InvalidArgument,
            format!("top_k {k} outside 1..={MAX_TOP_K}"),
        )),
        _ => Ok(()),
    }
}

/// Arguments of `generate_keys`: a key set for a client and a served model's parameters,
/// taken from the remote `describe_capabilities` model entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateKeysArgs {
    /// Client identifier the key set is stored under.
    pub client_id: String,
    /// Model name the keys are for.
    pub model: String,
    /// The model's client specification, as `ModelInfo.client_spec` gives it: parameters,
    /// rotation steps, relinearization, packing. Untrusted: validated before any key is made.
    #[serde(deserialize_with = "crate::client_spec::deserialize")]
    pub client_spec: ClientSpec,
    /// Replace an existing key set of this client (default false: refuse).
    #[serde(default)]
    pub overwrite: bool,
    /// Class names by output index (ModelInfo.labels). When absent, the shipped manifest's
    /// classes of `model` if it is a shipped model, else `"0"`, `"1"`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Image preprocessing (ModelInfo.preprocessing: the manifest's input spec with per-channel
    /// `mean` and `std`). When absent, the shipped manifest's entry of `model` if there is one,
    /// else mean 0 and std 1 (pixels scaled to [0, 1]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub preprocessing: Option<serde_json::Value>,
}

impl GenerateKeysArgs {
    /// Validates identifiers, labels and the form of the preprocessing. The client
    /// specification's contents are checked against its parameters by the local server
    /// (`ClientSpec::validate`).
    pub fn validate(&self) -> Result<()> {
        validate_client_id(&self.client_id)?;
        validate_model_name(&self.model)?;
        if let Some(labels) = &self.labels {
            if labels.is_empty() || labels.len() > MAX_LABELS {
                return Err(ToolError::new(
                    ErrorCode::InvalidArgument,
                    format!("labels: 1..={MAX_LABELS} names expected"),
                ));
            }
            if labels
                .iter()
                .any(|l| l.is_empty() || l.len() > MAX_LABEL_LEN || l.chars().any(char::is_control))
            {
                return Err(ToolError::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "labels: each must be 1..={MAX_LABEL_LEN} bytes without control characters"
                    ),
                ));
            }
        }
        if let Some(p) = &self.preprocessing
            && !p.is_object()
        {
            return Err(ToolError::new(
                ErrorCode::InvalidArgument,
                "preprocessing must be an object",
            ));
        }
        Ok(())
    }
}

/// Result of `generate_keys`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GenerateKeysResult {
    /// Always true.
    pub ok: bool,
    /// The client.
    pub client_id: String,
    /// Model the keys are for.
    pub model: String,
    /// Algorithm ID of the key set.
    pub algorithm_id: AlgorithmId,
    /// Parameter id of the key set.
    pub parameter_id: String,
    /// The parameter set as a draft 7.1 block.
    pub parameters: ExtendedParameters,
    /// Galois elements of the generated rotation keys, ascending.
    pub galois_elements: Vec<u64>,
    /// Whether a relinearization key was generated.
    pub relinearization: bool,
    /// Size of the serialized evaluation-key bundle in bytes.
    pub evaluation_key_bytes: u64,
    /// Seconds spent generating.
    pub keygen_s: f64,
    /// The client's Ed25519 identity (64 hex digits) that signs its remote calls and key
    /// bundles: made with the client's first key set and kept when keys are regenerated. An
    /// operator pre-registers it with `cipherinfer serve --identity CLIENT_ID=HEX`.
    pub identity: PublicIdentity,
}

/// Arguments of `export_evaluation_keys`: writes the public bundle for Step 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportEvaluationKeysArgs {
    /// Client whose public evaluation keys are exported.
    pub client_id: String,
    /// Absolute path of the file to write.
    pub output_path: String,
    /// Chunk size (decoded bytes) the upload will use, to report chunk_count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_bytes: Option<u64>,
}

impl ExportEvaluationKeysArgs {
    /// Validates identifiers and the path's form.
    pub fn validate(&self) -> Result<()> {
        validate_client_id(&self.client_id)?;
        validate_local_path("output_path", &self.output_path)?;
        check_chunk_bytes(self.chunk_bytes)
    }
}

fn check_chunk_bytes(chunk_bytes: Option<u64>) -> Result<()> {
    match chunk_bytes {
        Some(c) if c == 0 || c > crate::validate::DEFAULT_MAX_CHUNK_BYTES => Err(ToolError::new(
            ErrorCode::InvalidArgument,
            format!(
                "chunk_bytes {c} outside 1..={}",
                crate::validate::DEFAULT_MAX_CHUNK_BYTES
            ),
        )),
        _ => Ok(()),
    }
}

/// Result of `export_evaluation_keys`: everything `provision_keys_begin` needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExportEvaluationKeysResult {
    /// Always true.
    pub ok: bool,
    /// The client.
    pub client_id: String,
    /// Path written.
    pub path: String,
    /// Bundle size in bytes (provision_keys_begin.bundle_bytes).
    pub bytes: u64,
    /// SHA-256 of the bundle (provision_keys_begin.bundle_sha256).
    pub sha256: String,
    /// Chunks at the requested chunk size (provision_keys_begin.total_chunks).
    pub chunk_count: u32,
    /// Chunk size used for chunk_count.
    pub chunk_bytes: u64,
    /// Algorithm ID of the keys.
    pub algorithm_id: AlgorithmId,
    /// Parameter id of the keys.
    pub parameter_id: String,
    /// Galois elements of the rotation keys, ascending.
    pub galois_elements: Vec<u64>,
    /// Whether the bundle holds a relinearization key.
    pub relinearization: bool,
}

/// Arguments of `fhe_encrypt` (draft 6.1: `client_id`, `image_path`, `session_dir`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FheEncryptArgs {
    /// Client whose key set (and thus scheme and parameters) is used.
    pub client_id: String,
    /// Absolute path of the PNG or JPEG image on the trusted host.
    pub image_path: String,
    /// Absolute path of the directory the ciphertext objects are written to.
    pub session_dir: String,
    /// Model whose preprocessing and packing apply; the key set's model when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Upload chunk size (decoded bytes) to report chunk counts for; default 4 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_bytes: Option<u64>,
    /// Return the ciphertext inline when its total size is at most this (default 256 KiB,
    /// 0 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_max_bytes: Option<u64>,
}

impl FheEncryptArgs {
    /// Validates identifiers and path forms.
    pub fn validate(&self) -> Result<()> {
        validate_client_id(&self.client_id)?;
        validate_local_path("image_path", &self.image_path)?;
        validate_local_path("session_dir", &self.session_dir)?;
        if let Some(m) = &self.model {
            validate_model_name(m)?;
        }
        check_chunk_bytes(self.chunk_bytes)
    }
}

/// One ciphertext object written by `fhe_encrypt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CiphertextObject {
    /// Object name, used as upload_ciphertext_chunk.file_name.
    pub file_name: String,
    /// Absolute path of the file inside session_dir.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file (64 hex digits).
    pub sha256: String,
    /// Chunks at the reported chunk size (upload_ciphertext_chunk.total_chunks).
    pub chunk_count: u32,
}

impl CiphertextObject {
    /// Validates the object name.
    pub fn validate(&self) -> Result<()> {
        validate_file_name(&self.file_name)
    }
}

/// Step 2 (draft TODO, defined here): the response of `fhe_encrypt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FheEncryptResult {
    /// Always true.
    pub ok: bool,
    /// The client.
    pub client_id: String,
    /// Model whose packing was used.
    pub model: String,
    /// Directory the objects were written to.
    pub session_dir: String,
    /// Algorithm ID of the ciphertexts.
    pub algorithm_id: AlgorithmId,
    /// Parameter id of the ciphertexts.
    pub parameter_id: String,
    /// The ciphertext objects, in the model's input order.
    pub objects: Vec<CiphertextObject>,
    /// Chunk size the chunk counts assume.
    pub chunk_bytes: u64,
    /// Sum of the object sizes.
    pub total_bytes: u64,
    /// The single ciphertext object in padded standard Base64, only when there is exactly one
    /// object and it is at most inline_max_bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_payload_b64: Option<String>,
    /// Seconds spent preprocessing, encoding and encrypting.
    pub encrypt_s: f64,
    /// How the image was fitted to the model's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageFit>,
}

/// How an image was fitted to the model's input: its size and colour mode as decoded, and
/// whether it was converted or resized (bilinear, to exactly the model's height × width, no
/// cropping).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageFit {
    /// Width of the image file.
    pub original_width: u32,
    /// Height of the image file.
    pub original_height: u32,
    /// Colour mode of the file: `grey`, `grey+alpha`, `rgb` or `rgba` (palette images decode
    /// to `rgb` or `rgba`).
    pub original_mode: String,
    /// Colour mode the model takes: `grey` or `rgb` (alpha is dropped).
    pub mode: String,
    /// Width given to the model.
    pub width: u32,
    /// Height given to the model.
    pub height: u32,
    /// The centred region `[x, y, width, height]` of the file kept to match the model's aspect
    /// ratio (nothing is stretched); absent when the ratios agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cropped: Option<[u32; 4]>,
    /// Whether the image (after any crop) was resized.
    pub resized: bool,
}

impl ImageFit {
    /// Whether anything was done beyond reading the pixels (a crop, a resize or a colour
    /// conversion).
    pub fn changed(&self) -> bool {
        self.cropped.is_some() || self.resized || self.original_mode != self.mode
    }

    /// One line for people, e.g. `resized from 640x480 rgba to 32x32 rgb`.
    pub fn describe(&self) -> String {
        let from = format!(
            "{}x{} {}",
            self.original_width, self.original_height, self.original_mode
        );
        let to = format!("{}x{} {}", self.width, self.height, self.mode);
        let done = match (self.resized, self.original_mode != self.mode) {
            (true, _) => format!("resized from {from} to {to}"),
            (false, true) => format!("converted from {from} to {to}"),
            (false, false) => format!("{to}, as given"),
        };
        match self.cropped {
            Some([x, y, w, h]) => format!("centre {w}x{h} at ({x}, {y}) kept, {done}"),
            None => done,
        }
    }
}

/// Arguments of `fhe_decrypt` (draft 6.5: `client_id`, `encrypted_logit_path`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FheDecryptArgs {
    /// Client whose secret key decrypts.
    pub client_id: String,
    /// Absolute path of the encrypted result saved from remote_inference_cnn.
    pub encrypted_logit_path: String,
    /// Model whose output map and labels apply; the key set's model when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Number of top classes to report (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// The remote server's signature over the result: when given, the file is decrypted only
    /// if it is signed by the server identity pinned for `remote_url` and matches the signed
    /// size and SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_attestation: Option<ResultAttestation>,
}

/// What `fhe_decrypt` needs to check a result's origin before it decrypts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultAttestation {
    /// The remote endpoint whose pinned identity must have signed the result.
    pub remote_url: String,
    /// What the signature covers (as returned with remote_inference_cnn).
    pub claim: crate::integrity::ResultClaim,
    /// The signature (result_signature of remote_inference_cnn).
    pub signature: crate::integrity::ResultSignature,
}

impl FheDecryptArgs {
    /// Validates identifiers and the path form.
    pub fn validate(&self) -> Result<()> {
        validate_client_id(&self.client_id)?;
        validate_local_path("encrypted_logit_path", &self.encrypted_logit_path)?;
        if let Some(a) = &self.result_attestation {
            validate_remote_url(&a.remote_url)?;
            crate::integrity::validate_nonce(&a.signature.request_nonce)?;
            if a.claim.client_id != self.client_id {
                return Err(ToolError::new(
                    ErrorCode::BadSignature,
                    "the result attestation is for another client_id",
                ));
            }
        }
        if let Some(m) = &self.model {
            validate_model_name(m)?;
        }
        check_top_k(self.top_k)
    }
}

/// One of the top-k classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClassScore {
    /// Class index.
    pub class_index: u32,
    /// Class name.
    pub label: String,
    /// Softmax probability.
    pub probability: f64,
    /// Decrypted logit.
    pub logit: f64,
}

/// The plaintext classification of Step 6.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Classification {
    /// Predicted class name.
    pub label: String,
    /// Predicted class index (argmax of the logits).
    pub class_index: u32,
    /// Softmax of the logits, by class index.
    pub probabilities: Vec<f64>,
    /// The top classes, most probable first.
    pub top_k: Vec<ClassScore>,
    /// Decrypted logits, by class index.
    pub logits: Vec<f64>,
    /// Shape of the decrypted tensor, e.g. [10].
    pub output_shape: Vec<u32>,
    /// Estimated precision of the decrypted values in bits (-log2 of the estimated absolute
    /// error): the worse of the output scale's rescale-noise floor and the noise measured in
    /// the imaginary parts of the decoded slots (docs/protocol.md §7.4).
    pub precision_bits: f64,
}

/// Step 6 (draft TODO, defined here): the response of `fhe_decrypt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FheDecryptResult {
    /// Always true.
    pub ok: bool,
    /// The client.
    pub client_id: String,
    /// Model whose labels were used.
    pub model: String,
    /// The classification.
    #[serde(flatten)]
    pub classification: Classification,
    /// Seconds spent decrypting and decoding.
    pub decrypt_s: f64,
}

/// Arguments of `private_classify`: Steps 0-6 in one call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrivateClassifyArgs {
    /// Absolute path of the PNG or JPEG image.
    pub image_path: String,
    /// Remote server MCP endpoint (https://host/mcp); the configured default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_url: Option<String>,
    /// Model to use; the remote default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Client identity to use; the local server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Number of top classes to report (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
}

impl PrivateClassifyArgs {
    /// Validates the form of every argument.
    pub fn validate(&self) -> Result<()> {
        validate_local_path("image_path", &self.image_path)?;
        if let Some(url) = &self.remote_url {
            validate_remote_url(url)?;
        }
        if let Some(m) = &self.model {
            validate_model_name(m)?;
        }
        if let Some(c) = &self.client_id {
            validate_client_id(c)?;
        }
        check_top_k(self.top_k)
    }
}

/// Checks a remote endpoint URL's form: `https://` (or `http://` for loopback hosts only),
/// at most 2048 bytes, no whitespace, no credentials in the authority.
pub fn validate_remote_url(url: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(ToolError::new(
            ErrorCode::InvalidArgument,
            format!("remote_url: {why}"),
        ))
    };
    if url.is_empty()
        || url.len() > 2048
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return bad("must be 1..=2048 characters without whitespace");
    }
    let (secure, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return bad("must start with https:// (or http:// for loopback)");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return bad("needs a host and no user information");
    }
    if !secure {
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            authority.rsplit_once(':').map_or(authority, |(h, _)| h)
        };
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            // The bearer token and signed requests would cross the network in the clear.
            return Err(ToolError::new(
                ErrorCode::InsecureTransport,
                "remote_url: plain http is allowed only for loopback hosts; use https",
            ));
        }
    }
    Ok(())
}

/// Timings of `private_classify`, in seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClassifyTimings {
    /// Key generation (absent when cached keys were used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keygen_s: Option<f64>,
    /// Step 0 provisioning (absent when the remote already had the keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision_s: Option<f64>,
    /// Steps 1-2.
    pub encrypt_s: f64,
    /// Chunked upload.
    pub upload_s: f64,
    /// Remote evaluation as reported in profile.infer_s.
    pub infer_s: f64,
    /// Whole remote inference call including transfer of the result.
    pub remote_s: f64,
    /// Steps 5-6.
    pub decrypt_s: f64,
    /// Everything.
    pub total_s: f64,
}

/// Result of `private_classify`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PrivateClassifyResult {
    /// Always true.
    pub ok: bool,
    /// Model used.
    pub model: String,
    /// Client identity used.
    pub client_id: String,
    /// Remote endpoint used.
    pub remote_url: String,
    /// Remote session that was used (deleted afterwards).
    pub session_id: String,
    /// The classification.
    #[serde(flatten)]
    pub classification: Classification,
    /// Whether Step 0 ran during this call.
    pub provisioned: bool,
    /// Ciphertext bytes uploaded (Step 3).
    pub bytes_uploaded: u64,
    /// Evaluation-key bundle size in bytes.
    pub evaluation_key_bytes: u64,
    /// Timings.
    pub timings: ClassifyTimings,
    /// How the image was fitted to the model's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageFit>,
}
