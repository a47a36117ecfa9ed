//! Test vectors of docs/protocol.md §9.1: a fixed identity, a fixed call, its canonical bytes,
//! digest, signed message and signature, and a token's stored hash. An implementation in
//! another language checks itself against these values; this test pins them, and checks that
//! the server's own verification accepts the signed call and refuses it altered.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use cipherinfer_protocol::AuthToken;
use cipherinfer_protocol::canonical_call_bytes;
use cipherinfer_protocol::integrity::{
    IdentityKey, REQUEST_SIGNATURE_FIELD, SignedCall, UNSIGNED_FIELDS, call_digest,
    encode_signature, request_message,
};
use serde_json::{Value, json};

/// Identity seed: the bytes 0x01, 0x02, …, 0x20.
fn identity() -> IdentityKey {
    let seed: Vec<u8> = (1..=32).collect();
    IdentityKey::from_seed_bytes(&seed).unwrap()
}

const PUBLIC: &str = "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664";
const TOOL: &str = "get_session_status";
const NONCE: &str = "000102030405060708090a0b0c0d0e0f";
const TIMESTAMP_MS: u64 = 1_767_225_600_000;
const CANONICAL: &[u8] = b"cipherinfer-call-v1\0get_session_status\0\
{\"client_id\":\"alice\",\"n\":1.5,\"note\":\"\xc3\xa9\\n\\\"q\\\"\",\"session_id\":\"s1\"}";
const DIGEST: &str = "11b4e6b1ce1c8eca44f45280498974fc5c8f8151b90da0956f9354ca6332b529";
const MESSAGE: &str = "636970686572696e6665722d726571756573742d763100\
303030313032303330343035303630373038303930613062306330643065306600\
3137363732323536303030303000\
11b4e6b1ce1c8eca44f45280498974fc5c8f8151b90da0956f9354ca6332b529";
const SIGNATURE: &str =
    "VDWWv7CmHHy8qeyvjGOzBoBjLxpE2AOkItIvn+sRb/9BZswIl0E/fcFCFz7YW3dcSsrmB32yF3F/EnaBxfX8BQ==";

/// The call as sent: `auth_token` is left out of what is signed, and keys in any order.
fn arguments() -> Value {
    json!({"session_id": "s1", "note": "é\n\"q\"", "auth_token": "cit_example",
           "client_id": "alice", "n": 1.5})
}

#[test]
fn the_request_signature_vector_holds() {
    let key = identity();
    assert_eq!(key.public().to_string(), PUBLIC);
    let canonical = canonical_call_bytes(TOOL, &arguments(), &UNSIGNED_FIELDS).unwrap();
    assert_eq!(canonical, CANONICAL);
    let digest = call_digest(TOOL, &arguments()).unwrap();
    assert_eq!(hex::encode(digest), DIGEST);
    let message = request_message(NONCE, TIMESTAMP_MS, &digest);
    assert_eq!(hex::encode(&message), MESSAGE);
    // Ed25519 is deterministic: the same key and message give this signature everywhere.
    assert_eq!(encode_signature(&key.sign(&message)), SIGNATURE);

    // The server's own check accepts the call with this signature…
    let signed = |args: Value| {
        let mut args = args;
        args[REQUEST_SIGNATURE_FIELD] =
            json!({"nonce": NONCE, "timestamp_ms": TIMESTAMP_MS, "signature": SIGNATURE});
        let Value::Object(mut map) = args else {
            panic!()
        };
        SignedCall::take(TOOL, &mut map).unwrap().unwrap()
    };
    signed(arguments()).verify(&key.public()).unwrap();
    // …whatever the token (not signed), and refuses any signed field changed.
    let mut other_token = arguments();
    other_token["auth_token"] = json!("cit_other");
    signed(other_token).verify(&key.public()).unwrap();
    let mut altered = arguments();
    altered["session_id"] = json!("s2");
    assert!(signed(altered).verify(&key.public()).is_err());
}

/// What the server stores of a token: SHA-256("cipherinfer/auth-token/v1" 0x00 token).
#[test]
fn the_token_hash_vector_holds() {
    let token = AuthToken::from_string("cit_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into());
    let hash = token.hash().unwrap();
    let mut input = b"cipherinfer/auth-token/v1\0".to_vec();
    input.extend_from_slice(token.expose().as_bytes());
    use sha2::Digest;
    let want: [u8; 32] = sha2::Sha256::digest(&input).into();
    assert_eq!(hash.as_bytes(), &want);
    assert_eq!(
        hex::encode(hash.as_bytes()),
        "7cae4d33c59fa191f2e7161113ed78c81f59f8dce047272979c59d9ff5bd7065"
    );
}
