//! Validation of untrusted arguments: identifiers, object names, chunk coordinates, Base64
//! payloads with a size limit enforced before decoding, hex digests, and the transfer limits.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, Result, ToolError};

const MIB: u64 = 1024 * 1024;

/// Default largest decoded chunk (draft 6.3: "e.g., 32 MiB").
pub const DEFAULT_MAX_CHUNK_BYTES: u64 = 32 * MIB;
/// Chunk size clients use by default: 4 MiB decoded, about 5.6 MB of Base64 per call.
pub const DEFAULT_CHUNK_BYTES: u64 = 4 * MIB;
/// Default largest ciphertext object (all chunks of one `file_name`).
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 32 * MIB;
/// Default largest evaluation-key bundle.
pub const DEFAULT_MAX_KEY_BUNDLE_BYTES: u64 = 1024 * MIB;
/// Smallest chunk size the `total_chunks` bound assumes (64 KiB).
pub const MIN_CHUNK_BYTES: u64 = 64 * 1024;
/// Default most ciphertext objects per session.
pub const DEFAULT_MAX_OBJECTS_PER_SESSION: u32 = 64;
/// Default largest result returned inline as Base64 (decoded bytes): below the 1 MiB SSE event
/// cap of common clients once Base64 and JSON framing are added.
pub const DEFAULT_MAX_INLINE_RESULT_BYTES: u64 = 512 * 1024;
/// Default chunk size of `fetch_result_chunk` (decoded bytes), also under a 1 MiB event.
pub const DEFAULT_RESULT_CHUNK_BYTES: u64 = 512 * 1024;

/// Longest `client_id`.
pub const MAX_CLIENT_ID_LEN: usize = 64;
/// Longest `session_id`.
pub const MAX_SESSION_ID_LEN: usize = 128;
/// Longest `file_name`.
pub const MAX_FILE_NAME_LEN: usize = 128;
/// Longest model name.
pub const MAX_MODEL_NAME_LEN: usize = 64;

/// Transfer limits a server enforces and announces in its capabilities.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest decoded size of one chunk, in bytes.
    pub max_chunk_bytes: u64,
    /// Largest decoded size of one ciphertext object (sum of its chunks), in bytes.
    pub max_object_bytes: u64,
    /// Largest decoded size of an evaluation-key bundle, in bytes.
    pub max_key_bundle_bytes: u64,
    /// Most ciphertext objects (distinct `file_name`s) in one session.
    pub max_objects_per_session: u32,
    /// Largest output returned inline in `encrypted_logit_b64`; larger ones by `result_ref`.
    pub max_inline_result_bytes: u64,
    /// Decoded size of each chunk served by `fetch_result_chunk` (the last may be shorter).
    pub result_chunk_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_chunk_bytes: DEFAULT_MAX_CHUNK_BYTES,
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
            max_key_bundle_bytes: DEFAULT_MAX_KEY_BUNDLE_BYTES,
            max_objects_per_session: DEFAULT_MAX_OBJECTS_PER_SESSION,
            max_inline_result_bytes: DEFAULT_MAX_INLINE_RESULT_BYTES,
            result_chunk_bytes: DEFAULT_RESULT_CHUNK_BYTES,
        }
    }
}

impl Limits {
    /// Largest `total_chunks` for an object of at most `max_bytes`: one chunk per
    /// [`MIN_CHUNK_BYTES`], at least one.
    pub fn max_total_chunks_for(max_bytes: u64) -> u32 {
        u32::try_from(max_bytes.div_ceil(MIN_CHUNK_BYTES).max(1)).unwrap_or(u32::MAX)
    }

    /// Largest `total_chunks` of a ciphertext object.
    pub fn max_total_chunks(&self) -> u32 {
        Self::max_total_chunks_for(self.max_object_bytes)
    }

    /// Largest `total_chunks` of a key bundle.
    pub fn max_key_total_chunks(&self) -> u32 {
        Self::max_total_chunks_for(self.max_key_bundle_bytes)
    }

    /// Longest Base64 text of a chunk (padded standard Base64 of `max_chunk_bytes`).
    pub fn max_chunk_b64_len(&self) -> u64 {
        max_encoded_len(self.max_chunk_bytes)
    }

    /// Checks a chunk's coordinates: `1 <= total_chunks <= max_total` and
    /// `chunk_index < total_chunks`.
    pub fn check_chunk_coordinates(
        chunk_index: u32,
        total_chunks: u32,
        max_total: u32,
    ) -> Result<()> {
        if total_chunks == 0 || total_chunks > max_total {
            return Err(ToolError::new(
                ErrorCode::InvalidChunkIndex,
                format!("total_chunks {total_chunks} outside 1..={max_total}"),
            )
            .with_details(serde_json::json!({ "max_total_chunks": max_total })));
        }
        if chunk_index >= total_chunks {
            return Err(ToolError::new(
                ErrorCode::InvalidChunkIndex,
                format!("chunk_index {chunk_index} is not below total_chunks {total_chunks}"),
            ));
        }
        Ok(())
    }

    /// Checks that an object of `bytes_so_far` (already staged) plus `incoming` stays within
    /// `max_bytes`.
    pub fn check_object_size(bytes_so_far: u64, incoming: u64, max_bytes: u64) -> Result<()> {
        match bytes_so_far.checked_add(incoming) {
            Some(total) if total <= max_bytes => Ok(()),
            _ => Err(ToolError::new(
                ErrorCode::ObjectTooLarge,
                format!("object would exceed {max_bytes} bytes"),
            )
            .with_details(serde_json::json!({ "max_bytes": max_bytes }))),
        }
    }
}

/// Longest padded Base64 text whose decoding can be at most `max_decoded` bytes.
pub fn max_encoded_len(max_decoded: u64) -> u64 {
    max_decoded.div_ceil(3).saturating_mul(4)
}

/// Decodes canonical padded standard Base64 (RFC 4648, Section 4: no whitespace, no URL-safe
/// alphabet). The encoded length is checked against `max_decoded` BEFORE any decoding or
/// allocation (`ERROR_CHUNK_TOO_LARGE`), then the exact decoded size. Empty input is refused.
pub fn decode_base64_limited(b64: &str, max_decoded: u64) -> Result<Vec<u8>> {
    let len = b64.len() as u64;
    if len > max_encoded_len(max_decoded) {
        return Err(ToolError::new(
            ErrorCode::ChunkTooLarge,
            format!("{len} Base64 characters decode to more than the {max_decoded}-byte limit"),
        )
        .with_details(serde_json::json!({ "max_chunk_bytes": max_decoded })));
    }
    if b64.is_empty() {
        return Err(ToolError::new(
            ErrorCode::InvalidBase64,
            "empty Base64 payload",
        ));
    }
    if !len.is_multiple_of(4) {
        return Err(ToolError::new(
            ErrorCode::InvalidBase64,
            "Base64 length is not a multiple of 4 (padding is required)",
        ));
    }
    let bytes = STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| ToolError::new(ErrorCode::InvalidBase64, format!("invalid Base64: {e}")))?;
    if bytes.len() as u64 > max_decoded {
        return Err(ToolError::new(
            ErrorCode::ChunkTooLarge,
            format!(
                "chunk decodes to {} bytes; the limit is {max_decoded}",
                bytes.len()
            ),
        )
        .with_details(serde_json::json!({ "max_chunk_bytes": max_decoded })));
    }
    Ok(bytes)
}

/// Encodes bytes as padded standard Base64 (the form every `*_b64` field carries).
pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn shown(s: &str) -> String {
    s.chars()
        .take(40)
        .flat_map(char::escape_default)
        .collect::<String>()
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Checks a `client_id`: 1..=64 characters of `[A-Za-z0-9_-]` (e.g. `agent_fe8354f2851b`).
pub fn validate_client_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_CLIENT_ID_LEN || !id.bytes().all(is_id_byte) {
        return Err(ToolError::new(
            ErrorCode::InvalidArgument,
            format!(
                "client_id {:?} must be 1..={MAX_CLIENT_ID_LEN} characters of [A-Za-z0-9_-]",
                shown(id)
            ),
        ));
    }
    Ok(())
}

/// Checks a `session_id`: 1..=128 characters of `[A-Za-z0-9_-]`
/// (e.g. `session_20260617_8f3a9b`).
pub fn validate_session_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_SESSION_ID_LEN || !id.bytes().all(is_id_byte) {
        return Err(ToolError::new(
            ErrorCode::InvalidArgument,
            format!(
                "session_id {:?} must be 1..={MAX_SESSION_ID_LEN} characters of [A-Za-z0-9_-]",
                shown(id)
            ),
        ));
    }
    Ok(())
}

/// Checks a model name: 1..=64 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn validate_model_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_MODEL_NAME_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| is_id_byte(b) || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ToolError::new(
            ErrorCode::UnknownModel,
            format!(
                "model {:?} is not a valid model name ([A-Za-z0-9][A-Za-z0-9._-]{{0,63}})",
                shown(name)
            ),
        ))
    }
}

/// Device names Windows reserves in every directory, with or without an extension.
const RESERVED_STEMS: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Checks a `file_name`, which names an object inside a session and is data, never a path:
/// 1..=128 characters of `[A-Za-z0-9._-]`; the first character is a letter or digit (so no
/// `.`, `..`, hidden names or option-like `-x`); it does not end with `.`; it is not a reserved
/// device name (`CON`, `NUL.bin`, `com1`, ...). Anything else is `ERROR_INVALID_FILE_NAME`.
pub fn validate_file_name(name: &str) -> Result<()> {
    let fail = |why: &str| {
        Err(ToolError::new(
            ErrorCode::InvalidFileName,
            format!("file_name {:?}: {why}", shown(name)),
        ))
    };
    if name.is_empty() {
        return fail("empty");
    }
    if name.len() > MAX_FILE_NAME_LEN {
        return fail("longer than 128 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return fail("only the characters [A-Za-z0-9._-] are allowed");
    }
    if !name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
    {
        return fail("must start with a letter or digit");
    }
    if name.ends_with('.') {
        return fail("must not end with '.'");
    }
    let stem = name.split('.').next().unwrap_or(name);
    if RESERVED_STEMS.iter().any(|r| r.eq_ignore_ascii_case(stem)) {
        return fail("reserved device name");
    }
    Ok(())
}

/// Checks a lower-case hex SHA-256 digest (64 characters of `[0-9a-f]`), e.g. a parameter id.
pub fn validate_sha256_hex(field: &str, value: &str) -> Result<()> {
    if value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(ToolError::new(
            ErrorCode::InvalidArgument,
            format!("{field} must be 64 lower-case hex digits (SHA-256)"),
        ))
    }
}

/// Lower-case hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Which chunk indices of `0..total_chunks` are absent from `received` (sorted, deduplicated
/// output), for `details.missing` of `ERROR_INCOMPLETE_UPLOAD`.
pub fn missing_chunks(total_chunks: u32, received: &[u32]) -> Vec<u32> {
    let mut have = vec![false; total_chunks as usize];
    for &i in received {
        if let Some(slot) = have.get_mut(i as usize) {
            *slot = true;
        }
    }
    have.iter()
        .enumerate()
        .filter(|(_, h)| !**h)
        .map(|(i, _)| i as u32)
        .collect()
}
