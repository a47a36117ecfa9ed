#![no_main]
//! Decodes the arguments of every remote tool from arbitrary JSON, as the server's dispatch does
//! (`parse_arguments`), and validates them: never a panic; accepted arguments round-trip through
//! JSON (as a value and as text) to an equal value with the same verdict; validation agrees with
//! an independent statement of the rules; canonical call bytes are what `docs/protocol.md` says;
//! `Debug` never shows a bearer token. Before parsing, `request_signature` is taken out and the
//! rest digested as the dispatch does (`SignedCall::take`): a signature nobody made never
//! verifies, and the bearer token is outside the digest. Also `parse_key_ref` and
//! `parse_key_store_uri`.
//!
//! Input: one selector byte (tool = byte % 11; with the high bit, three little-endian `u32`
//! limits follow: max_chunk_bytes, max_object_bytes, max_key_bundle_bytes), then JSON text (or,
//! for the two URI parsers, the text itself).

use std::fmt::Debug;
use std::sync::OnceLock;

use cipherinfer_ckks_fuzz::{Input, reference as r};
use cipherinfer_protocol::canonical::{CANONICAL_PREFIX, MAX_DEPTH};
use cipherinfer_protocol::integrity::{
    IdentityKey, PublicIdentity, REQUEST_SIGNATURE_FIELD, SignedCall, call_digest,
};
use cipherinfer_protocol::remote::{
    DescribeCapabilitiesArgs, FetchResultChunkArgs, ProvisionKeysBeginArgs, ProvisionKeysChunkArgs,
    ProvisionKeysCommitArgs, ProvisionMode, RemoteInferenceArgs, RevokeKeysArgs, SessionArgs,
    TOOL_DESCRIBE_CAPABILITIES, TOOL_FETCH_RESULT_CHUNK, TOOL_GET_SESSION_STATUS,
    TOOL_PROVISION_KEYS_BEGIN, TOOL_PROVISION_KEYS_CHUNK, TOOL_PROVISION_KEYS_COMMIT,
    TOOL_REMOTE_INFERENCE_CNN, TOOL_REVOKE_KEYS, TOOL_UPLOAD_CIPHERTEXT_CHUNK,
    UploadCiphertextChunkArgs, format_key_ref, parse_key_ref, parse_key_store_uri,
};
use cipherinfer_protocol::validate::{MIN_CHUNK_BYTES, validate_model_name};
use cipherinfer_protocol::{
    AlgorithmId, AuthToken, ErrorCode, Limits, ToolError, canonical_call_bytes, canonical_json,
    parse_arguments,
};
use cipherinfer_remote::store::path;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Longest input considered (the server's HTTP body limit is far larger; this keeps runs fast).
const MAX_INPUT: usize = 64 * 1024;

type Verdict = Result<(), ErrorCode>;

/// One remote tool's argument type.
trait Tool: Serialize + DeserializeOwned + PartialEq + Debug + Clone {
    /// The tool's name, for the canonical call bytes.
    const NAME: &'static str;

    /// Runs the type's own validation and, independently, the rules it enforces; asserts they
    /// agree and returns the verdict.
    fn check(&self, limits: &Limits) -> Verdict;

    /// The bearer-token field, if the type has one.
    fn token(&mut self) -> Option<&mut Option<AuthToken>> {
        None
    }
}

fn code<T>(r: Result<T, ToolError>) -> Result<T, ErrorCode> {
    r.map_err(|e| e.error_code)
}

/// The first failing rule's code, or success.
fn first_failure(rules: &[(bool, ErrorCode)]) -> Verdict {
    match rules.iter().find(|(ok, _)| !ok) {
        Some(&(_, c)) => Err(c),
        None => Ok(()),
    }
}

/// `max(1, ceil(bytes / 64 KiB))`, saturated to `u32`.
fn max_total(bytes: u64) -> u32 {
    let n = u128::from(bytes)
        .div_ceil(u128::from(MIN_CHUNK_BYTES))
        .max(1);
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn coordinates_ok(index: u32, total: u32, max: u32) -> bool {
    total >= 1 && total <= max && index < total
}

const BAD: ErrorCode = ErrorCode::InvalidArgument;

impl Tool for ProvisionKeysBeginArgs {
    const NAME: &'static str = TOOL_PROVISION_KEYS_BEGIN;

    fn check(&self, limits: &Limits) -> Verdict {
        let got = code(self.validate(limits));
        let alg = self
            .algorithm_id
            .parse::<AlgorithmId>()
            .ok()
            .filter(AlgorithmId::is_implemented);
        let chunks_ok = match &self.key_uri {
            Some(uri) => r::key_store_uri(uri).is_some() && self.total_chunks == 0,
            None => {
                self.total_chunks >= 1
                    && self.total_chunks <= max_total(limits.max_key_bundle_bytes)
                    && u128::from(self.total_chunks) * u128::from(limits.max_chunk_bytes)
                        >= u128::from(self.bundle_bytes)
            }
        };
        let want_ok = r::client_id_ok(&self.client_id)
            && alg.is_some()
            && r::sha256_hex_ok(&self.parameter_id)
            && r::sha256_hex_ok(&self.bundle_sha256)
            && self.model.as_deref().is_none_or(r::model_name_ok)
            && self.bundle_bytes > 0
            && self.bundle_bytes <= limits.max_key_bundle_bytes
            && chunks_ok
            && (self.mode != ProvisionMode::Rotate || self.auth_token.is_some());
        assert_eq!(got.is_ok(), want_ok, "{self:?}: {got:?}");
        if let Ok(a) = got {
            assert_eq!(Some(a), alg);
            assert_eq!(
                a.to_string(),
                self.algorithm_id,
                "Algorithm IDs are canonical"
            );
        }
        got.map(|_| ())
    }

    fn token(&mut self) -> Option<&mut Option<AuthToken>> {
        Some(&mut self.auth_token)
    }
}

impl Tool for ProvisionKeysChunkArgs {
    const NAME: &'static str = TOOL_PROVISION_KEYS_CHUNK;

    fn check(&self, limits: &Limits) -> Verdict {
        let got = code(self.validate(limits));
        let want = first_failure(&[
            (r::client_id_ok(&self.client_id), BAD),
            (
                r::provisioning_id_ok(&self.provisioning_id),
                ErrorCode::UnknownSession,
            ),
            (
                self.chunk_sha256.as_deref().is_none_or(r::sha256_hex_ok),
                BAD,
            ),
            (
                coordinates_ok(
                    self.chunk_index,
                    self.total_chunks,
                    max_total(limits.max_key_bundle_bytes),
                ),
                ErrorCode::InvalidChunkIndex,
            ),
        ]);
        assert_eq!(got, want, "{self:?}");
        got
    }
}

impl Tool for ProvisionKeysCommitArgs {
    const NAME: &'static str = TOOL_PROVISION_KEYS_COMMIT;

    fn check(&self, _: &Limits) -> Verdict {
        let got = code(self.validate());
        let want = first_failure(&[
            (r::client_id_ok(&self.client_id), BAD),
            (
                r::provisioning_id_ok(&self.provisioning_id),
                ErrorCode::UnknownSession,
            ),
        ]);
        assert_eq!(got, want, "{self:?}");
        got
    }
}

impl Tool for RevokeKeysArgs {
    const NAME: &'static str = TOOL_REVOKE_KEYS;

    fn check(&self, _: &Limits) -> Verdict {
        let got = code(self.validate());
        assert_eq!(
            got,
            first_failure(&[(r::client_id_ok(&self.client_id), BAD)])
        );
        got
    }

    fn token(&mut self) -> Option<&mut Option<AuthToken>> {
        Some(&mut self.auth_token)
    }
}

impl Tool for UploadCiphertextChunkArgs {
    const NAME: &'static str = TOOL_UPLOAD_CIPHERTEXT_CHUNK;

    fn check(&self, limits: &Limits) -> Verdict {
        let got = code(self.validate(limits));
        let want = first_failure(&[
            (r::client_id_ok(&self.client_id), BAD),
            (r::session_id_ok(&self.session_id), BAD),
            (r::file_name_ok(&self.file_name), ErrorCode::InvalidFileName),
            (
                self.chunk_sha256.as_deref().is_none_or(r::sha256_hex_ok),
                BAD,
            ),
            (
                coordinates_ok(
                    self.chunk_index,
                    self.total_chunks,
                    max_total(limits.max_object_bytes),
                ),
                ErrorCode::InvalidChunkIndex,
            ),
        ]);
        assert_eq!(got, want, "{self:?}");
        if got.is_ok() {
            // Validated names become exactly one store path segment each, unescaped.
            let segments: [&str; 5] = [
                "sessions",
                &self.client_id,
                &self.session_id,
                "objects",
                &self.file_name,
            ];
            let p = path(&segments);
            let parts: Vec<String> = p.parts().map(|s| s.as_ref().to_string()).collect();
            assert_eq!(parts, segments);
            assert_eq!(p.as_ref(), segments.join("/"));
        }
        got
    }

    fn token(&mut self) -> Option<&mut Option<AuthToken>> {
        Some(&mut self.auth_token)
    }
}

impl Tool for RemoteInferenceArgs {
    const NAME: &'static str = TOOL_REMOTE_INFERENCE_CNN;

    fn check(&self, _: &Limits) -> Verdict {
        let got = code(self.validate());
        let key_ref = self.key_ref.as_deref().map(r::key_ref);
        let ids_ok = r::client_id_ok(&self.client_id)
            && r::session_id_ok(&self.session_id)
            && self.model.as_deref().is_none_or(r::model_name_ok)
            && key_ref
                .as_ref()
                .is_none_or(|k| k.as_ref().is_some_and(|(c, _)| *c == self.client_id))
            && self.input_sha256.as_ref().is_none_or(|inputs| {
                inputs.len() <= 64
                    && inputs
                        .iter()
                        .all(|(name, d)| r::file_name_ok(name) && r::sha256_hex_ok(d))
            });
        if !ids_ok {
            assert!(got.is_err(), "{self:?}");
        }
        if let Ok(alg) = got {
            assert_eq!(alg.is_some(), self.algorithm_id.is_some());
            if let Some(a) = alg {
                assert_eq!(Some(a.to_string()), self.algorithm_id);
            }
            // The 7.1 block survives the conversion both ways.
            let p = self.extended_parameters();
            let back = RemoteInferenceArgs::default().with_extended_parameters(p.clone());
            assert_eq!(back.extended_parameters(), p);
        }
        got.map(|_| ())
    }

    fn token(&mut self) -> Option<&mut Option<AuthToken>> {
        Some(&mut self.auth_token)
    }
}

impl Tool for FetchResultChunkArgs {
    const NAME: &'static str = TOOL_FETCH_RESULT_CHUNK;

    fn check(&self, _: &Limits) -> Verdict {
        let got = code(self.validate());
        let want = first_failure(&[
            (r::client_id_ok(&self.client_id), BAD),
            (r::session_id_ok(&self.session_id), BAD),
            (r::result_id_ok(&self.result_id), ErrorCode::ResultNotFound),
        ]);
        assert_eq!(got, want, "{self:?}");
        got
    }

    fn token(&mut self) -> Option<&mut Option<AuthToken>> {
        Some(&mut self.auth_token)
    }
}

impl Tool for SessionArgs {
    const NAME: &'static str = TOOL_GET_SESSION_STATUS;

    fn check(&self, _: &Limits) -> Verdict {
        let got = code(self.validate());
        let want = first_failure(&[
            (r::client_id_ok(&self.client_id), BAD),
            (r::session_id_ok(&self.session_id), BAD),
        ]);
        assert_eq!(got, want, "{self:?}");
        got
    }

    fn token(&mut self) -> Option<&mut Option<AuthToken>> {
        Some(&mut self.auth_token)
    }
}

impl Tool for DescribeCapabilitiesArgs {
    const NAME: &'static str = TOOL_DESCRIBE_CAPABILITIES;

    fn check(&self, _: &Limits) -> Verdict {
        // No validation of its own: the service looks the model up by name.
        match &self.model {
            Some(m) => {
                let got = code(validate_model_name(m));
                let ok = r::model_name_ok(m);
                assert_eq!(got.is_ok(), ok, "{m:?}");
                got
            }
            None => Ok(()),
        }
    }
}

/// Canonical call bytes: the prefix, the tool name, and canonical JSON of the arguments without
/// the top-level `auth_token` (the MAC-excluded field used here); an error exactly when the
/// arguments nest too deep.
fn check_canonical_call(tool: &str, value: &Value) {
    let got = canonical_call_bytes(tool, value, &["auth_token"]);
    let mut filtered = value.clone();
    if let Value::Object(m) = &mut filtered {
        m.remove("auth_token");
    }
    let body = canonical_json(&filtered);
    assert_eq!(
        body.as_ref().ok(),
        r::canonical(&filtered, MAX_DEPTH)
            .map(String::into_bytes)
            .as_ref()
    );
    match (got, body) {
        (Ok(bytes), Ok(body)) => {
            let head = [CANONICAL_PREFIX, b"\0", tool.as_bytes(), b"\0"].concat();
            assert_eq!(&bytes[..head.len()], &head[..]);
            assert_eq!(&bytes[head.len()..], &body[..]);
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("canonical_call_bytes {a:?} but canonical_json {b:?}"),
    }
}

/// An identity no fuzz input holds a signature of.
fn identity() -> &'static PublicIdentity {
    static ID: OnceLock<PublicIdentity> = OnceLock::new();
    ID.get_or_init(|| {
        IdentityKey::from_seed_bytes(&[7; 32])
            .expect("seed")
            .public()
    })
}

/// What the dispatch does first: takes `request_signature` out of the arguments and digests the
/// rest. `None` when the call is refused there.
fn take_signature(tool: &str, value: &Value) -> Option<Value> {
    let Value::Object(map) = value else {
        return Some(value.clone());
    };
    let mut map = map.clone();
    let signed = SignedCall::take(tool, &mut map).ok()?;
    assert!(!map.contains_key(REQUEST_SIGNATURE_FIELD));
    let rest = Value::Object(map.clone());
    if let Some(signed) = signed {
        assert!(signed.signature.validate().is_ok());
        assert_eq!(signed.digest, call_digest(tool, &rest).expect("digest"));
        assert!(
            signed.verify(identity()).is_err(),
            "a signature nobody made verifies"
        );
        // The bearer token is outside what a signature covers.
        map.insert("auth_token".into(), Value::from("cit_other"));
        assert_eq!(
            call_digest(tool, &Value::Object(map)).expect("digest"),
            signed.digest
        );
    }
    Some(rest)
}

fn drive<T: Tool>(value: &Value, limits: &Limits) {
    check_canonical_call(T::NAME, value);
    let Some(value) = take_signature(T::NAME, value) else {
        return;
    };
    let Ok(args) = parse_arguments::<T>(value) else {
        return;
    };
    let verdict = args.check(limits);

    // Accepted arguments round-trip as a JSON value and as JSON text, with the same verdict.
    let v = serde_json::to_value(&args).expect("serialize");
    let again: T = parse_arguments(v.clone()).expect("re-parse the serialized arguments");
    assert_eq!(again, args);
    let text = serde_json::to_string(&args).expect("serialize as text");
    let from_text: T = serde_json::from_str(&text).expect("re-parse the text");
    assert_eq!(from_text, args, "{text}");
    assert_eq!(again.check(limits), verdict);
    let canonical = canonical_json(&v).expect("arguments are shallow");
    let reparsed: Value = serde_json::from_slice(&canonical).expect("canonical JSON parses");
    let from_canonical: T = parse_arguments(reparsed).expect("canonical JSON re-parses");
    assert_eq!(from_canonical, args);

    // A bearer token is never shown by Debug, and is accepted only in its issued form.
    let mut stripped = args.clone();
    if let Some(Some(token)) = stripped.token().map(Option::take) {
        let secret = token.expose();
        // The token adds only the fixed redacted text to the arguments' Debug form.
        let redacted = |t: &T| format!("{t:?}").replace("Some(AuthToken(<redacted>))", "None");
        assert_eq!(
            redacted(&args),
            redacted(&stripped),
            "Debug shows more than a redacted token"
        );
        assert_eq!(token.is_well_formed(), r::token_ok(secret));
        assert_eq!(token.hash().is_ok(), r::token_ok(secret));
        if let Some(h) = AuthToken::from_authorization_header(&format!("Bearer {secret}")) {
            assert_eq!(h.expose(), secret.trim());
        }
    }
}

fn key_ref(text: &str) {
    let got = parse_key_ref(text).ok();
    assert_eq!(got, r::key_ref(text), "{text:?}");
    if let Some((client, version)) = got {
        assert_eq!(format_key_ref(&client, version), text);
    }
}

fn key_store_uri(text: &str) {
    let got = parse_key_store_uri(text).ok();
    assert_eq!(got, r::key_store_uri(text), "{text:?}");
    if let Some(segments) = got {
        assert_eq!(format!("keystore:{}", segments.join("/")), text);
        let mut all = vec!["keystore"];
        all.extend(segments.iter().map(String::as_str));
        let p = path(&all);
        assert_eq!(p.parts().count(), all.len(), "{text:?}");
        assert_eq!(p.as_ref(), all.join("/"));
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let mut input = Input::new(data);
    let selector = input.u8();
    let mut limits = Limits::default();
    if selector & 0x80 != 0 {
        limits.max_chunk_bytes = u64::from(input.u32().max(1));
        limits.max_object_bytes = u64::from(input.u32().max(1));
        limits.max_key_bundle_bytes = u64::from(input.u32().max(1));
    }
    let rest = input.rest();
    match selector % 11 {
        9 => return key_ref(&String::from_utf8_lossy(rest)),
        10 => return key_store_uri(&String::from_utf8_lossy(rest)),
        _ => {}
    }
    let Ok(value) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    match selector % 11 {
        0 => drive::<ProvisionKeysBeginArgs>(&value, &limits),
        1 => drive::<ProvisionKeysChunkArgs>(&value, &limits),
        2 => drive::<ProvisionKeysCommitArgs>(&value, &limits),
        3 => drive::<RevokeKeysArgs>(&value, &limits),
        4 => drive::<UploadCiphertextChunkArgs>(&value, &limits),
        5 => drive::<RemoteInferenceArgs>(&value, &limits),
        6 => drive::<FetchResultChunkArgs>(&value, &limits),
        7 => drive::<SessionArgs>(&value, &limits),
        _ => drive::<DescribeCapabilitiesArgs>(&value, &limits),
    }
});
