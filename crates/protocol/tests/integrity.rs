//! Signature primitives: request, bundle and result signatures verify exactly what they cover,
//! refuse any bit-flip, weak or malformed keys and signatures; the replay window refuses
//! replays and stale or pre-start timestamps within bounded memory; keys never print.

use cipherinfer_protocol::ErrorCode;
use cipherinfer_protocol::integrity::{
    BundleClaim, IdentityKey, PublicIdentity, REQUEST_SIGNATURE_FIELD, ReplayGuard, ResultClaim,
    SignedCall, now_ms, sign_call,
};
use serde_json::{Value, json};

fn take(tool: &str, v: &Value) -> Result<Option<SignedCall>, cipherinfer_protocol::ToolError> {
    let Value::Object(mut map) = v.clone() else {
        return Ok(None);
    };
    SignedCall::take(tool, &mut map)
}

#[test]
fn request_signatures_cover_every_argument_but_the_token() {
    let key = IdentityKey::generate().expect("key");
    let args = json!({"client_id": "a", "session_id": "s", "chunk_index": 3, "auth_token": "cit_x",
                      "nested": {"b": [1, 2.5, "é"], "a": null}});
    let mut signed = args.clone();
    sign_call(&key, "upload_ciphertext_chunk", &mut signed).expect("sign");
    let call = take("upload_ciphertext_chunk", &signed)
        .expect("form")
        .expect("signed");
    call.verify(&key.public()).expect("verifies");
    // Key order and the token do not matter; every other field and the tool name do.
    let mut reordered: serde_json::Map<String, Value> = serde_json::Map::new();
    for (k, v) in signed.as_object().expect("object").iter().rev() {
        reordered.insert(k.clone(), v.clone());
    }
    reordered.insert("auth_token".into(), json!("cit_other"));
    SignedCall::take("upload_ciphertext_chunk", &mut reordered)
        .expect("form")
        .expect("signed")
        .verify(&key.public())
        .expect("order and token are not signed");
    for (field, value) in [
        ("client_id", json!("b")),
        ("chunk_index", json!(4)),
        ("extra", json!(true)),
    ] {
        let mut t = signed.clone();
        t[field] = value;
        let e = take("upload_ciphertext_chunk", &t)
            .expect("form")
            .expect("signed")
            .verify(&key.public())
            .expect_err(field);
        assert_eq!(e.error_code, ErrorCode::BadSignature);
    }
    let mut t = signed.clone();
    t["nested"]["b"][1] = json!(2.25);
    assert!(
        take("upload_ciphertext_chunk", &t)
            .expect("form")
            .expect("signed")
            .verify(&key.public())
            .is_err()
    );
    assert!(
        take("delete_session", &signed)
            .expect("form")
            .expect("signed")
            .verify(&key.public())
            .is_err()
    );
    let other = IdentityKey::generate().expect("key");
    assert!(call.verify(&other.public()).is_err());
    // Every bit of the signature matters.
    let sig = signed[REQUEST_SIGNATURE_FIELD]["signature"]
        .as_str()
        .expect("sig")
        .to_string();
    let raw = base64_decode(&sig);
    for bit in (0..512).step_by(37) {
        let mut b = raw.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        let mut t = signed.clone();
        t[REQUEST_SIGNATURE_FIELD]["signature"] = json!(base64_encode(&b));
        let r = take("upload_ciphertext_chunk", &t).and_then(|c| match c {
            Some(c) => c.verify(&key.public()),
            None => Ok(()),
        });
        assert_eq!(
            r.expect_err("flipped").error_code,
            ErrorCode::BadSignature,
            "bit {bit}"
        );
    }
    // Malformed signature objects are refused before any verification.
    for bad in [
        json!("text"),
        json!({"nonce": "00", "timestamp_ms": 1, "signature": sig}),
        json!({"nonce": "0".repeat(32), "timestamp_ms": -1, "signature": sig}),
        json!({"nonce": "0".repeat(32), "timestamp_ms": 1, "signature": "AAAA"}),
        json!({"nonce": "0".repeat(32), "timestamp_ms": 1, "signature": sig, "x": 1}),
    ] {
        let mut t = args.clone();
        t[REQUEST_SIGNATURE_FIELD] = bad;
        assert_eq!(
            take("t", &t).expect_err("malformed").error_code,
            ErrorCode::BadSignature
        );
    }
    assert_eq!(take("t", &args).expect("unsigned"), None);
}

fn base64_decode(s: &str) -> Vec<u8> {
    cipherinfer_protocol::validate::decode_base64_limited(s, 1 << 10).expect("b64")
}

fn base64_encode(b: &[u8]) -> String {
    cipherinfer_protocol::validate::encode_base64(b)
}

#[test]
fn identity_keys_parse_strictly_and_never_print() {
    let key = IdentityKey::generate().expect("key");
    let text = key.public().to_string();
    assert_eq!(text.parse::<PublicIdentity>().expect("parse"), key.public());
    assert!(!format!("{key:?}").contains(&hex_seed(&key)));
    assert!(format!("{key:?}").contains("redacted"));
    // Small-order points, upper case, wrong lengths, junk.
    let identity_point = format!("01{}", "00".repeat(31));
    for bad in [
        identity_point.as_str(),
        &"0".repeat(64),
        &text.to_uppercase(),
        &text[..62],
        "zz",
    ] {
        assert!(bad.parse::<PublicIdentity>().is_err(), "{bad}");
    }
    let again = IdentityKey::from_seed_bytes(key.seed_bytes().as_ref()).expect("seed");
    assert_eq!(again.public(), key.public());
    assert_eq!(
        IdentityKey::from_seed_bytes(&[0u8; 31])
            .expect_err("short")
            .error_code,
        ErrorCode::MalformedKeys
    );
}

fn hex_seed(key: &IdentityKey) -> String {
    key.seed_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn bundle_and_result_signatures_bind_their_fields() {
    let key = IdentityKey::generate().expect("key");
    let sha = "ab".repeat(32);
    let claim = BundleClaim {
        client_id: "c",
        algorithm_id: "CKKS-RNS-128-N8192-CIFR1",
        parameter_id: &sha,
        bundle_sha256: &sha,
        bundle_bytes: 10,
    };
    let sig = claim.sign(&key).expect("sign");
    let now = now_ms();
    claim.verify(&sig, now, 300_000).expect("verifies");
    let changed = BundleClaim {
        bundle_bytes: 11,
        ..claim
    };
    assert_eq!(
        changed
            .verify(&sig, now, 300_000)
            .expect_err("size")
            .error_code,
        ErrorCode::BadSignature
    );
    let changed = BundleClaim {
        client_id: "d",
        ..claim
    };
    assert!(changed.verify(&sig, now, 300_000).is_err());
    assert_eq!(
        claim
            .verify(&sig, now + 3_600_000, 300_000)
            .expect_err("old")
            .error_code,
        ErrorCode::StaleRequest
    );

    let server = IdentityKey::generate().expect("key");
    let bytes = b"ciphertext".to_vec();
    let result = ResultClaim {
        client_id: "c".into(),
        session_id: "s".into(),
        model: "m".into(),
        algorithm_id: "A".into(),
        parameter_id: sha.clone(),
        encrypted_logit_sha256: cipherinfer_protocol::validate::sha256_hex(&bytes),
        encrypted_logit_bytes: bytes.len() as u64,
    };
    let nonce = "0".repeat(32);
    let rs = result.sign(&server, &nonce);
    result
        .verify(&rs, &server.public(), &nonce, &bytes)
        .expect("verifies");
    assert_eq!(
        result
            .verify(&rs, &key.public(), &nonce, &bytes)
            .expect_err("pin")
            .error_code,
        ErrorCode::IdentityMismatch
    );
    assert_eq!(
        result
            .verify(&rs, &server.public(), &"1".repeat(32), &bytes)
            .expect_err("nonce")
            .error_code,
        ErrorCode::BadSignature
    );
    assert_eq!(
        result
            .verify(&rs, &server.public(), &nonce, b"ciphertexT")
            .expect_err("bytes")
            .error_code,
        ErrorCode::IntegrityMismatch
    );
}

#[test]
fn the_replay_window_refuses_replays_and_stale_requests_in_bounded_memory() {
    let start = 1_000_000_000;
    let mut g = ReplayGuard::new(1000, start, 3);
    let n = |i: u32| format!("{i:032x}");
    g.check("a", &n(1), start + 10, start + 10).expect("fresh");
    assert_eq!(
        g.check("a", &n(1), start + 10, start + 20)
            .expect_err("replay")
            .error_code,
        ErrorCode::Replay
    );
    // Nonces are per client.
    g.check("b", &n(1), start + 10, start + 20)
        .expect("other client");
    assert_eq!(
        g.check("a", &n(2), start + 5000, start + 10)
            .expect_err("future")
            .error_code,
        ErrorCode::StaleRequest
    );
    assert_eq!(
        g.check("a", &n(2), start - 1, start + 10)
            .expect_err("pre-start")
            .error_code,
        ErrorCode::StaleRequest
    );
    g.check("a", &n(3), start + 30, start + 30).expect("third");
    assert_eq!(
        g.check("a", &n(4), start + 30, start + 30)
            .expect_err("full")
            .error_code,
        ErrorCode::Busy
    );
    // Once the old timestamps can no longer be accepted, their nonces are forgotten.
    g.check("a", &n(4), start + 2500, start + 2500)
        .expect("after eviction");
    assert_eq!(g.len(), 1);
    assert_eq!(
        g.check("a", &n(1), start + 10, start + 2500)
            .expect_err("stale")
            .error_code,
        ErrorCode::StaleRequest
    );
}

#[test]
fn the_signed_digest_is_the_sha256_of_the_canonical_bytes() {
    use cipherinfer_protocol::{canonical_call_bytes, canonical_json, integrity::call_digest};
    use sha2::{Digest, Sha256};
    let args = json!({
        "z": "quote \" back \\ nl \n cr \r tab \t bs \u{8} ff \u{c} ctl \u{1}\u{1f} del \u{7f} é 日本 🎉",
        "a": [1, -2, 0.5, null, true, {"y": "\u{0}", "b": false}],
        "auth_token": "cit_left_out",
        "chunk_b64": "QUJD".repeat(50_000),
    });
    let canonical = canonical_call_bytes("tool", &args, &["request_signature", "auth_token"])
        .expect("well-formed");
    let expected: [u8; 32] = Sha256::digest(&canonical).into();
    assert_eq!(call_digest("tool", &args).expect("well-formed"), expected);

    // The server's digest of the signed call is the same one.
    let key = IdentityKey::generate().expect("well-formed");
    let mut signed = args.clone();
    sign_call(&key, "tool", &mut signed).expect("well-formed");
    let call = take("tool", &signed).expect("take").expect("signed");
    assert_eq!(call.digest, expected);
    call.verify(&key.public()).expect("well-formed");

    // Strings escape as serde_json writes them, wherever the escape falls (inside or right
    // after a long unescaped run).
    for escape in ["\"", "\\", "\n", "\u{0}", "\u{1f}", "é", "🎉"] {
        for at in [0, 1, 62, 63, 64, 65, 127, 128, 129, 200] {
            let text = format!("{}{escape}{}", "A".repeat(at), "B".repeat(at % 70));
            assert_eq!(
                canonical_json(&json!(text)).expect("well-formed"),
                serde_json::to_vec(&text).expect("well-formed"),
                "{text:?}"
            );
        }
    }

    // Escapes are minimal and fixed; everything else passes verbatim.
    assert_eq!(
        canonical_json(&json!("a\"b\\c\nd\u{1}e\u{7f}é🎉")).expect("well-formed"),
        "\"a\\\"b\\\\c\\nd\\u0001e\u{7f}é🎉\"".as_bytes()
    );
}
