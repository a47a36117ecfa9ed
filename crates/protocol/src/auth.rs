//! Bearer tokens: generation (256 bits from the OS), the stored SHA-256 hash, constant-time
//! verification, and a type whose `Debug` never shows the secret.
//!
//! Token format: `cit_` followed by 43 characters of unpadded URL-safe Base64 (32 random
//! bytes). The server keeps only `sha256(token)` and compares hashes in constant time.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ErrorCode, Result, ToolError};

/// Prefix of every token this project issues (makes leaked tokens easy to scan for).
pub const TOKEN_PREFIX: &str = "cit_";
/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;
/// Length of a token's text form.
pub const TOKEN_LEN: usize = 4 + 43;
/// Longest token text accepted before hashing (anything longer is refused unhashed).
pub const MAX_TOKEN_LEN: usize = 256;
/// Domain separation of the stored hash.
const HASH_DOMAIN: &[u8] = b"cipherinfer/auth-token/v1\0";

/// A bearer credential. Serialized as its plain text (it must reach the client once);
/// `Debug` and `Display` print `AuthToken(<redacted>)`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuthToken(String);

impl AuthToken {
    /// A fresh 256-bit token from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| {
            ToolError::new(ErrorCode::Internal, format!("randomness unavailable: {e}"))
        })?;
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        bytes.fill(0);
        Ok(Self(token))
    }

    /// Wraps a token received from a client (its form is checked by [`AuthToken::hash`]).
    pub fn from_string(token: String) -> Self {
        Self(token)
    }

    /// The token text, to send in `auth_token` or `Authorization: Bearer`.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the text has the issued form (`cit_` + 43 URL-safe Base64 characters).
    pub fn is_well_formed(&self) -> bool {
        self.0.len() == TOKEN_LEN
            && self.0.starts_with(TOKEN_PREFIX)
            && self.0[TOKEN_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    /// The hash the server stores. Refuses (as `ERROR_UNAUTHORIZED`) text that is not a
    /// well-formed token, without revealing which check failed.
    pub fn hash(&self) -> Result<TokenHash> {
        if !self.is_well_formed() {
            return Err(unauthorized());
        }
        Ok(TokenHash::of(&self.0))
    }

    /// Reads a token from an HTTP `Authorization` header value (`Bearer <token>`, the scheme
    /// name case-insensitive).
    pub fn from_authorization_header(value: &str) -> Option<Self> {
        let (scheme, token) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = token.trim();
        (!token.is_empty() && token.len() <= MAX_TOKEN_LEN).then(|| Self(token.to_string()))
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl fmt::Display for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl JsonSchema for AuthToken {
    fn schema_name() -> Cow<'static, str> {
        "AuthToken".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": MAX_TOKEN_LEN,
            "description": "Bearer token issued by key provisioning (cit_ + 43 URL-safe Base64 characters); send only over TLS",
        })
    }
}

fn unauthorized() -> ToolError {
    ToolError::new(
        ErrorCode::Unauthorized,
        "missing or invalid auth_token for this client_id",
    )
}

/// SHA-256 of a token, the only form a server stores. Serialized as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    fn of(token: &str) -> Self {
        let mut h = Sha256::new();
        h.update(HASH_DOMAIN);
        h.update(token.as_bytes());
        Self(h.finalize().into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Checks a presented token against this stored hash in constant time. Missing, malformed
    /// and wrong tokens all fail with the same `ERROR_UNAUTHORIZED`.
    pub fn verify(&self, presented: Option<&AuthToken>) -> Result<()> {
        let Some(token) = presented else {
            return Err(unauthorized());
        };
        // Hash even malformed input of bounded length so timing says little about why it failed.
        let candidate = if token.0.len() <= MAX_TOKEN_LEN {
            TokenHash::of(&token.0)
        } else {
            TokenHash([0u8; 32])
        };
        let equal: bool = candidate.0.ct_eq(&self.0).into();
        if equal && token.is_well_formed() {
            Ok(())
        } else {
            Err(unauthorized())
        }
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", hex::encode(&self.0[..4]))
    }
}

impl From<TokenHash> for String {
    fn from(h: TokenHash) -> String {
        hex::encode(h.0)
    }
}

impl TryFrom<String> for TokenHash {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out)
            .map_err(|_| "token hash must be 64 hex digits".to_string())?;
        Ok(Self(out))
    }
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}
