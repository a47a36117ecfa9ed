//! End-to-end integrity between the local domain and the remote server (draft Section 8):
//! Ed25519 client identities, signed Step 0 key bundles, signed `tools/call` requests with
//! nonce and timestamp, signed inference results, and the replay window that checks them.
//!
//! Why signatures and not MACs: a MAC key would have to be stored by the server, so anyone who
//! reads the server's store (the draft's honest-but-curious operator, or a breach) could forge
//! requests. With Ed25519 the server keeps only the client's public key; nothing it stores lets
//! it, or a thief of its disk, sign in the client's name. The same argument, reversed, gives
//! the server its own identity key for results. `docs/security.md` describes the scheme.
//!
//! Signed byte strings (all prefixes end in NUL; fields are separated by NUL; numbers are
//! decimal ASCII; the request's call digest is raw 32 bytes, the bundle's and the result's
//! SHA-256 fields are their 64-digit lower-case hex text):
//!
//! ```text
//! request = "cipherinfer-request-v1" 0 nonce 0 timestamp_ms 0 sha256(canonical_call_bytes(tool, arguments
//!           minus request_signature and auth_token))
//! bundle  = "cipherinfer-bundle-v1" 0 client_id 0 algorithm_id 0 parameter_id 0 bundle_sha256 0 bundle_bytes 0 timestamp
//! result  = "cipherinfer-result-v1" 0 client_id 0 session_id 0 model 0 algorithm_id 0 parameter_id 0
//!           encrypted_logit_sha256 0 encrypted_logit_bytes 0 request_nonce
//! ```

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::canonical::{CanonicalSink, write_canonical_call, write_canonical_object_call};
use crate::error::{ErrorCode, Result, ToolError};

/// Argument field that carries a request's signature; left out of the signed bytes.
pub const REQUEST_SIGNATURE_FIELD: &str = "request_signature";
/// Argument fields the request signature does not cover (the bearer token may travel in a
/// header instead, so it is not part of the call's meaning).
pub const UNSIGNED_FIELDS: [&str; 2] = [REQUEST_SIGNATURE_FIELD, "auth_token"];
/// How far a request's timestamp may lie from the server's clock, by default.
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
/// Length of a request nonce in hex digits (128 bits).
pub const NONCE_HEX_LEN: usize = 32;
/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_BYTES: usize = 64;

const REQUEST_PREFIX: &[u8] = b"cipherinfer-request-v1\0";
const BUNDLE_PREFIX: &[u8] = b"cipherinfer-bundle-v1\0";
const RESULT_PREFIX: &[u8] = b"cipherinfer-result-v1\0";

fn bad_signature(msg: impl Into<String>) -> ToolError {
    ToolError::new(ErrorCode::BadSignature, msg)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ----------------------------------------------------------------------------------------------
// Keys

/// An Ed25519 signing key (a client's identity or the server's). Zeroized on drop; `Debug`
/// shows only the public half.
pub struct IdentityKey(SigningKey);

impl IdentityKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| {
            ToolError::new(ErrorCode::Internal, format!("randomness unavailable: {e}"))
        })?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// The key from its 32-byte seed (as written by [`IdentityKey::seed_bytes`]).
    pub fn from_seed_bytes(bytes: &[u8]) -> Result<Self> {
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(bytes.try_into().map_err(|_| {
            ToolError::new(
                ErrorCode::MalformedKeys,
                format!("an identity key is 32 bytes, not {}", bytes.len()),
            )
        })?);
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// The 32-byte seed, to store (zeroized when dropped).
    pub fn seed_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity(self.0.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_BYTES] {
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey(<redacted>, public {})", self.public())
    }
}

/// A public Ed25519 identity: 64 lower-case hex digits on the wire. Parsing refuses
/// non-canonical encodings and small-order (weak) points.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicIdentity([u8; 32]);

impl PublicIdentity {
    /// Parses and checks raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self> {
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| bad_signature("the identity key is not a valid Ed25519 point"))?;
        if key.is_weak() {
            return Err(bad_signature(
                "the identity key is a small-order (weak) point",
            ));
        }
        Ok(Self(bytes))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Verifies `signature_b64` (padded standard Base64 of 64 bytes) over `message` with the
    /// strict rules (no malleable or non-canonical signatures).
    pub fn verify(&self, message: &[u8], signature_b64: &str) -> Result<()> {
        let sig = decode_signature(signature_b64)?;
        let key = VerifyingKey::from_bytes(&self.0)
            .map_err(|_| bad_signature("the identity key is not a valid Ed25519 point"))?;
        key.verify_strict(message, &Signature::from_bytes(&sig))
            .map_err(|_| bad_signature("the signature does not verify"))
    }
}

impl fmt::Display for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicIdentity({self})")
    }
}

impl std::str::FromStr for PublicIdentity {
    type Err = ToolError;

    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad_signature(
                "an identity key is 64 lower-case hex digits (32 bytes)",
            ));
        }
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| bad_signature("an identity key is 64 lower-case hex digits (32 bytes)"))?;
        Self::from_bytes(out)
    }
}

impl From<PublicIdentity> for String {
    fn from(p: PublicIdentity) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for PublicIdentity {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse().map_err(|e: ToolError| e.message)
    }
}

impl JsonSchema for PublicIdentity {
    fn schema_name() -> Cow<'static, str> {
        "PublicIdentity".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "Ed25519 public key, 64 lower-case hex digits",
        })
    }
}

fn decode_signature(b64: &str) -> Result<[u8; SIGNATURE_BYTES]> {
    // 64 bytes are 88 Base64 characters; anything longer is refused before decoding.
    if b64.len() != 88 {
        return Err(bad_signature(
            "a signature is 64 bytes in padded standard Base64 (88 characters)",
        ));
    }
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| bad_signature("the signature is not valid Base64"))?;
    bytes
        .try_into()
        .map_err(|_| bad_signature("a signature is 64 bytes"))
}

/// Padded standard Base64 of a signature.
pub fn encode_signature(sig: &[u8; SIGNATURE_BYTES]) -> String {
    STANDARD.encode(sig)
}

/// Something that signs in a client's name: the key store on the trusted host.
pub trait RequestSigner: Send + Sync + fmt::Debug {
    /// The public identity whose signatures these are.
    fn public_identity(&self) -> PublicIdentity;
    /// Signs `message`.
    fn sign(&self, message: &[u8]) -> Result<[u8; SIGNATURE_BYTES]>;
}

impl RequestSigner for IdentityKey {
    fn public_identity(&self) -> PublicIdentity {
        self.public()
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; SIGNATURE_BYTES]> {
        Ok(IdentityKey::sign(self, message))
    }
}

// ----------------------------------------------------------------------------------------------
// Requests

/// The signature of one `tools/call`, carried in the arguments as `request_signature`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSignature {
    /// 128 random bits, 32 lower-case hex digits; never reused.
    pub nonce: String,
    /// When the request was signed, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Ed25519 signature (padded standard Base64) over the request bytes (docs/security.md).
    pub signature: String,
}

impl RequestSignature {
    /// Checks the form of the nonce and the signature's length.
    pub fn validate(&self) -> Result<()> {
        validate_nonce(&self.nonce)?;
        decode_signature(&self.signature).map(|_| ())
    }
}

/// Checks a nonce: exactly 32 lower-case hex digits.
pub fn validate_nonce(nonce: &str) -> Result<()> {
    if nonce.len() == NONCE_HEX_LEN
        && nonce
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(bad_signature("a nonce is 32 lower-case hex digits"))
    }
}

fn random_nonce() -> Result<String> {
    let mut bytes = [0u8; NONCE_HEX_LEN / 2];
    getrandom::fill(&mut bytes)
        .map_err(|e| ToolError::new(ErrorCode::Internal, format!("randomness unavailable: {e}")))?;
    Ok(hex::encode(bytes))
}

/// SHA-256 of the canonical bytes of a call, leaving out [`UNSIGNED_FIELDS`].
pub fn call_digest(tool: &str, arguments: &Value) -> Result<[u8; 32]> {
    let mut hash = HashSink(Sha256::new());
    write_canonical_call(tool, arguments, &UNSIGNED_FIELDS, &mut hash)?;
    Ok(hash.0.finalize().into())
}

/// Canonical bytes go straight into the hash, uncopied.
struct HashSink(Sha256);

impl CanonicalSink for HashSink {
    fn put(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The bytes a request signature covers.
pub fn request_message(nonce: &str, timestamp_ms: u64, digest: &[u8; 32]) -> Vec<u8> {
    framed(
        REQUEST_PREFIX,
        &[
            nonce.as_bytes(),
            timestamp_ms.to_string().as_bytes(),
            digest,
        ],
    )
}

/// `prefix` then `parts` separated by NUL (the prefix ends in NUL itself).
fn framed(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = prefix.to_vec();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            m.push(0);
        }
        m.extend_from_slice(part);
    }
    m
}

/// Signs a call: adds `request_signature` (fresh nonce, current time) to `arguments`, which
/// must be a JSON object. Returns the signature.
pub fn sign_call(
    signer: &dyn RequestSigner,
    tool: &str,
    arguments: &mut Value,
) -> Result<RequestSignature> {
    let Value::Object(map) = arguments else {
        return Err(ToolError::new(
            ErrorCode::InvalidArgument,
            "tool arguments must be a JSON object",
        ));
    };
    map.remove(REQUEST_SIGNATURE_FIELD);
    let digest = call_digest(tool, arguments)?;
    let nonce = random_nonce()?;
    let timestamp_ms = now_ms();
    let sig = signer.sign(&request_message(&nonce, timestamp_ms, &digest))?;
    let signature = RequestSignature {
        nonce,
        timestamp_ms,
        signature: encode_signature(&sig),
    };
    if let Value::Object(map) = arguments {
        map.insert(
            REQUEST_SIGNATURE_FIELD.into(),
            serde_json::to_value(&signature)
                .map_err(|e| ToolError::new(ErrorCode::Internal, e.to_string()))?,
        );
    }
    Ok(signature)
}

/// A received call's signature with the digest of what it claims to cover; verified by the
/// server against the identity pinned for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCall {
    /// The signature as received (its form checked).
    pub signature: RequestSignature,
    /// Digest of the call's canonical bytes as received.
    pub digest: [u8; 32],
}

impl SignedCall {
    /// Takes `request_signature` out of received arguments (so typed parsing sees only the
    /// tool's own fields) and digests the rest. `Ok(None)` when the call is unsigned.
    pub fn take(tool: &str, arguments: &mut Map<String, Value>) -> Result<Option<Self>> {
        let Some(raw) = arguments.remove(REQUEST_SIGNATURE_FIELD) else {
            return Ok(None);
        };
        let signature: RequestSignature = serde_json::from_value(raw)
            .map_err(|e| bad_signature(format!("request_signature is malformed: {e}")))?;
        signature.validate()?;
        let mut hash = HashSink(Sha256::new());
        write_canonical_object_call(tool, arguments, &UNSIGNED_FIELDS, &mut hash)?;
        Ok(Some(Self {
            signature,
            digest: hash.0.finalize().into(),
        }))
    }

    /// Checks the signature against `identity`.
    pub fn verify(&self, identity: &PublicIdentity) -> Result<()> {
        identity.verify(
            &request_message(
                &self.signature.nonce,
                self.signature.timestamp_ms,
                &self.digest,
            ),
            &self.signature.signature,
        )
    }
}

/// Remembers the nonces of verified requests for as long as their timestamps are acceptable,
/// so each signed request is evaluated at most once.
///
/// A request is accepted only if its timestamp lies within `max_skew_ms` of the server's clock
/// and is not older than the guard's creation (a restarted server, which forgot its nonces,
/// cannot be fed requests signed before it started). Memory is bounded: at most `max_entries`
/// nonces are held; when full, new requests get `ERROR_BUSY` until old nonces age out.
#[derive(Debug)]
pub struct ReplayGuard {
    max_skew_ms: u64,
    started_ms: u64,
    max_entries: usize,
    seen: HashMap<(String, String), u64>,
    order: VecDeque<(u64, String, String)>,
}

impl ReplayGuard {
    /// A guard accepting timestamps within `max_skew_ms` of now and not before `started_ms`.
    pub fn new(max_skew_ms: u64, started_ms: u64, max_entries: usize) -> Self {
        Self {
            max_skew_ms,
            started_ms,
            max_entries: max_entries.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Nonces currently held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no nonce is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn evict(&mut self, now_ms: u64) {
        while let Some((expiry, _, _)) = self.order.front() {
            if *expiry >= now_ms {
                break;
            }
            if let Some((_, scope, nonce)) = self.order.pop_front() {
                self.seen.remove(&(scope, nonce));
            }
        }
    }

    /// Checks freshness and uniqueness of a verified request of `scope` (the client id) at
    /// `now_ms`, and records its nonce.
    pub fn check(
        &mut self,
        scope: &str,
        nonce: &str,
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<()> {
        if timestamp_ms.abs_diff(now_ms) > self.max_skew_ms {
            return Err(ToolError::new(
                ErrorCode::StaleRequest,
                format!(
                    "the request was signed {} ms from the server's clock; at most {} ms are accepted",
                    timestamp_ms.abs_diff(now_ms),
                    self.max_skew_ms
                ),
            ));
        }
        if timestamp_ms < self.started_ms {
            return Err(ToolError::new(
                ErrorCode::StaleRequest,
                "the request was signed before the server started; sign it again",
            ));
        }
        self.evict(now_ms);
        let key = (scope.to_string(), nonce.to_string());
        if self.seen.contains_key(&key) {
            return Err(ToolError::new(
                ErrorCode::Replay,
                "this signed request was already received",
            ));
        }
        if self.seen.len() >= self.max_entries {
            return Err(ToolError::new(
                ErrorCode::Busy,
                "too many signed requests in the replay window; retry shortly",
            )
            .with_retry_after_ms(1000));
        }
        // Kept until its timestamp can no longer be accepted.
        let expiry = timestamp_ms.saturating_add(self.max_skew_ms);
        self.seen.insert(key.clone(), expiry);
        let at = self.order.partition_point(|(e, _, _)| *e <= expiry);
        self.order.insert(at, (expiry, key.0, key.1));
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------------
// Step 0 bundles

/// The client's signature over a Step 0 key bundle, sent with `provision_keys_begin`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleSignature {
    /// The client's Ed25519 identity; pinned by the server at first provisioning.
    pub identity_key: PublicIdentity,
    /// When the bundle was signed, Unix seconds.
    pub timestamp: u64,
    /// Ed25519 signature (padded standard Base64) over the bundle bytes (module docs).
    pub signature: String,
}

/// What a bundle signature covers.
#[derive(Clone, Copy, Debug)]
pub struct BundleClaim<'a> {
    /// Client the keys are bound to.
    pub client_id: &'a str,
    /// Algorithm ID of the keys.
    pub algorithm_id: &'a str,
    /// Parameter id of the keys.
    pub parameter_id: &'a str,
    /// SHA-256 (hex) of the bundle.
    pub bundle_sha256: &'a str,
    /// Size of the bundle in bytes.
    pub bundle_bytes: u64,
}

impl BundleClaim<'_> {
    /// The signed bytes at `timestamp`.
    pub fn message(&self, timestamp: u64) -> Vec<u8> {
        framed(
            BUNDLE_PREFIX,
            &[
                self.client_id.as_bytes(),
                self.algorithm_id.as_bytes(),
                self.parameter_id.as_bytes(),
                self.bundle_sha256.as_bytes(),
                self.bundle_bytes.to_string().as_bytes(),
                timestamp.to_string().as_bytes(),
            ],
        )
    }

    /// Signs the claim now.
    pub fn sign(&self, signer: &dyn RequestSigner) -> Result<BundleSignature> {
        let timestamp = now_ms() / 1000;
        let sig = signer.sign(&self.message(timestamp))?;
        Ok(BundleSignature {
            identity_key: signer.public_identity(),
            timestamp,
            signature: encode_signature(&sig),
        })
    }

    /// Verifies `sig` over this claim and that its timestamp lies within `max_skew_ms` of
    /// `now_ms`.
    pub fn verify(&self, sig: &BundleSignature, now_ms: u64, max_skew_ms: u64) -> Result<()> {
        sig.identity_key
            .verify(&self.message(sig.timestamp), &sig.signature)?;
        let signed_ms = sig.timestamp.saturating_mul(1000);
        if signed_ms.abs_diff(now_ms) > max_skew_ms.saturating_add(1000) {
            return Err(ToolError::new(
                ErrorCode::StaleRequest,
                "the bundle signature's timestamp is outside the accepted window",
            ));
        }
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------------
// Results

/// The server's signature over an inference result, returned with `remote_inference_cnn`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultSignature {
    /// The server's Ed25519 identity (pinned by the client at first contact).
    pub server_key: PublicIdentity,
    /// Nonce of the signed request this answers (binds the result to that request).
    pub request_nonce: String,
    /// Ed25519 signature (padded standard Base64) over the result bytes (module docs).
    pub signature: String,
}

/// What a result signature covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultClaim {
    /// Client the result is for.
    pub client_id: String,
    /// Session it was computed in.
    pub session_id: String,
    /// Model that was evaluated.
    pub model: String,
    /// Algorithm ID of the output ciphertext.
    pub algorithm_id: String,
    /// Parameter id of the output ciphertext.
    pub parameter_id: String,
    /// SHA-256 (hex) of the output ciphertext.
    pub encrypted_logit_sha256: String,
    /// Size of the output ciphertext in bytes.
    pub encrypted_logit_bytes: u64,
}

impl ResultClaim {
    /// The signed bytes for a response to the request with `request_nonce`.
    pub fn message(&self, request_nonce: &str) -> Vec<u8> {
        framed(
            RESULT_PREFIX,
            &[
                self.client_id.as_bytes(),
                self.session_id.as_bytes(),
                self.model.as_bytes(),
                self.algorithm_id.as_bytes(),
                self.parameter_id.as_bytes(),
                self.encrypted_logit_sha256.as_bytes(),
                self.encrypted_logit_bytes.to_string().as_bytes(),
                request_nonce.as_bytes(),
            ],
        )
    }

    /// The server signs the claim for the request with `request_nonce`.
    pub fn sign(&self, server: &IdentityKey, request_nonce: &str) -> ResultSignature {
        ResultSignature {
            server_key: server.public(),
            request_nonce: request_nonce.to_string(),
            signature: encode_signature(&server.sign(&self.message(request_nonce))),
        }
    }

    /// Verifies a result signature: made by `pinned` (the server key the client trusts), for
    /// the request with `request_nonce`, over this claim; and `bytes` hash to the claimed
    /// digest and size. Everything a client must check before it decrypts.
    pub fn verify(
        &self,
        sig: &ResultSignature,
        pinned: &PublicIdentity,
        request_nonce: &str,
        bytes: &[u8],
    ) -> Result<()> {
        if sig.server_key != *pinned {
            return Err(ToolError::new(
                ErrorCode::IdentityMismatch,
                format!(
                    "the result is signed by server key {}, not the pinned {pinned}",
                    sig.server_key
                ),
            ));
        }
        if sig.request_nonce != request_nonce {
            return Err(bad_signature(
                "the result signature answers another request",
            ));
        }
        pinned.verify(&self.message(request_nonce), &sig.signature)?;
        if bytes.len() as u64 != self.encrypted_logit_bytes
            || crate::validate::sha256_hex(bytes) != self.encrypted_logit_sha256
        {
            return Err(ToolError::new(
                ErrorCode::IntegrityMismatch,
                "the encrypted result does not match its signed size and SHA-256",
            ));
        }
        Ok(())
    }
}
