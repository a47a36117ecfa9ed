//! The protocol's security properties (docs/security.md) over real HTTP on loopback against the
//! real server: bit-flips in chunks, key bundles, requests and responses are detected and
//! refused with specific codes; replayed and stale requests are refused; another identity or
//! another client's token is refused; and none of it loses or corrupts what is already stored.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use cipherinfer_ckks::Ciphertext;
use cipherinfer_ckks::serialization::FromBytes;
use cipherinfer_protocol::ErrorCode;
use cipherinfer_protocol::integrity::{
    BundleClaim, IdentityKey, REQUEST_SIGNATURE_FIELD, ResultClaim, call_digest, encode_signature,
    now_ms, request_message, sign_call,
};
use cipherinfer_protocol::validate::{decode_base64_limited, encode_base64, sha256_hex};
use common::remote::{
    Peer, begin_args, call_unsigned, chunks, connect, enroll, fails, identity, material, ok,
    options, session_args, signed, start, start_with, temp_dir,
};
use serde_json::{Value, json};

/// `b64` with one bit of its decoded bytes flipped (re-encoded canonically).
fn flip_b64(b64: &str, bit: usize) -> String {
    let mut bytes = decode_base64_limited(b64, u64::MAX).unwrap();
    let i = (bit / 8) % bytes.len();
    bytes[i] ^= 1 << (bit % 8);
    encode_base64(&bytes)
}

/// One character of `s` changed (another valid hex digit or Base64 letter).
fn flip_char(s: &str, at: usize) -> String {
    let mut c: Vec<char> = s.chars().collect();
    let i = at % c.len();
    c[i] = if c[i] == 'a' { 'b' } else { 'a' };
    c.into_iter().collect()
}

fn upload_args(
    client: &str,
    token: &str,
    session: &str,
    index: usize,
    total: usize,
    b64: &str,
) -> Value {
    let m = material();
    json!({"client_id": client, "session_id": session, "file_name": m.input_name,
           "chunk_index": index, "total_chunks": total, "chunk_b64": b64, "auth_token": token})
}

/// Runs the inference of `session` and checks the result decrypts to the model's logits.
async fn infer_and_check(peer: &Peer, client: &str, token: &str, session: &str) -> Value {
    let m = material();
    let v = ok(
        peer,
        "remote_inference_cnn",
        json!({"client_id": client, "session_id": session, "auth_token": token,
               "input_sha256": {m.input_name.clone(): sha256_hex(&m.input)}}),
    )
    .await;
    let out = decode_base64_limited(v["encrypted_logit_b64"].as_str().unwrap(), 1 << 20).unwrap();
    let got = m
        .spec
        .decrypt_output(
            &m.encoder,
            &m.decryptor,
            &[Ciphertext::from_bytes(&m.params, &out, 1 << 20).unwrap()],
        )
        .unwrap();
    let err = got
        .iter()
        .zip(&m.want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err < 0.05, "logit error {err}");
    v
}

async fn status(peer: &Peer, client: &str, token: &str, session: &str) -> Value {
    ok(
        peer,
        "get_session_status",
        session_args(client, session, token, json!({})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_chunks_are_refused_and_nothing_is_lost() {
    let dir = temp_dir("sec-chunks");
    let server = start(&dir).await;
    let (peer, _p) = connect(&server.url).await;
    let token = enroll(&peer, "alice").await;
    let m = material();
    let parts = chunks(&m.input, 2);
    ok(
        &peer,
        "upload_ciphertext_chunk",
        upload_args("alice", &token, "s1", 0, 2, &parts[0]),
    )
    .await;

    // A bit flipped on the wire after the client signed: the signature no longer covers it.
    for bit in [0, 7, 4099, 80_000] {
        let mut a = signed(
            "upload_ciphertext_chunk",
            upload_args("alice", &token, "s1", 1, 2, &parts[1]),
        );
        a["chunk_b64"] = json!(flip_b64(&parts[1], bit));
        let (is_error, v) = call_unsigned(&peer, "upload_ciphertext_chunk", a).await;
        assert!(is_error);
        assert_eq!(v["error_code"], "ERROR_BAD_SIGNATURE", "bit {bit}: {v}");
    }
    // Bytes corrupted before signing but after hashing: the chunk digest catches it.
    let mut a = upload_args("alice", &token, "s1", 1, 2, &flip_b64(&parts[1], 12));
    a["chunk_sha256"] = json!(sha256_hex(
        &decode_base64_limited(&parts[1], u64::MAX).unwrap()
    ));
    fails(
        &peer,
        "upload_ciphertext_chunk",
        a,
        "ERROR_INTEGRITY_MISMATCH",
    )
    .await;

    // Nothing of the refused chunks was stored; chunk 0 is intact.
    let st = status(&peer, "alice", &token, "s1").await;
    assert_eq!(st["objects"][0]["missing_chunks"], json!([1]), "{st}");

    // A chunk staged with wrong bytes (the client's own digest omitted) cannot be evaluated
    // against the digests the client signs in the inference request.
    ok(
        &peer,
        "upload_ciphertext_chunk",
        upload_args("alice", &token, "s2", 0, 2, &parts[0]),
    )
    .await;
    ok(
        &peer,
        "upload_ciphertext_chunk",
        upload_args("alice", &token, "s2", 1, 2, &flip_b64(&parts[1], 3)),
    )
    .await;
    fails(
        &peer,
        "remote_inference_cnn",
        json!({"client_id": "alice", "session_id": "s2", "auth_token": token,
               "input_sha256": {m.input_name.clone(): sha256_hex(&m.input)}}),
        "ERROR_INTEGRITY_MISMATCH",
    )
    .await;

    // The correct chunk completes the first session, which evaluates to the right logits.
    let mut good = upload_args("alice", &token, "s1", 1, 2, &parts[1]);
    good["chunk_sha256"] = json!(sha256_hex(
        &decode_base64_limited(&parts[1], u64::MAX).unwrap()
    ));
    ok(&peer, "upload_ciphertext_chunk", good).await;
    infer_and_check(&peer, "alice", &token, "s1").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_key_bundles_are_refused() {
    let dir = temp_dir("sec-bundle");
    let server = start(&dir).await;
    let (peer, _p) = connect(&server.url).await;
    let m = material();
    let begin = |client: &str, parts: usize| begin_args(client, &m.info, &m.bundle, parts);

    // The bundle signature with one bit flipped, the request re-signed around it.
    let mut a = signed("provision_keys_begin", begin("mallory", 4));
    a.as_object_mut().unwrap().remove(REQUEST_SIGNATURE_FIELD);
    let sig = a["bundle_signature"]["signature"]
        .as_str()
        .unwrap()
        .to_string();
    a["bundle_signature"]["signature"] = json!(flip_b64(&sig, 100));
    fails(&peer, "provision_keys_begin", a, "ERROR_BAD_SIGNATURE").await;

    // The announced digest altered after the client signed the bundle.
    let mut a = signed("provision_keys_begin", begin("mallory", 4));
    a.as_object_mut().unwrap().remove(REQUEST_SIGNATURE_FIELD);
    a["bundle_sha256"] = json!(flip_char(&sha256_hex(&m.bundle), 10));
    fails(&peer, "provision_keys_begin", a, "ERROR_BAD_SIGNATURE").await;

    // No bundle signature at all: this server requires one.
    let mut a = begin("mallory", 4);
    sign_call(&identity("mallory"), "provision_keys_begin", &mut a).unwrap();
    fails(&peer, "provision_keys_begin", a, "ERROR_BAD_SIGNATURE").await;

    // A chunk flipped in transit (after signing), one with a wrong digest, and a bundle whose
    // chunk was corrupted before the client hashed it: all refused, none installed.
    let parts = chunks(&m.bundle, 4);
    let b = ok(&peer, "provision_keys_begin", begin("mallory", 4)).await;
    let pid = b["provisioning_id"].as_str().unwrap().to_string();
    let chunk = |i: usize, b64: &str| {
        json!({"client_id": "mallory", "provisioning_id": pid, "chunk_index": i,
               "total_chunks": 4, "chunk_b64": b64})
    };
    let mut a = signed("provision_keys_chunk", chunk(0, &parts[0]));
    a["chunk_b64"] = json!(flip_b64(&parts[0], 33));
    let (_, v) = call_unsigned(&peer, "provision_keys_chunk", a).await;
    assert_eq!(v["error_code"], "ERROR_BAD_SIGNATURE", "{v}");
    let mut a = chunk(0, &flip_b64(&parts[0], 33));
    a["chunk_sha256"] = json!(sha256_hex(
        &decode_base64_limited(&parts[0], u64::MAX).unwrap()
    ));
    fails(&peer, "provision_keys_chunk", a, "ERROR_INTEGRITY_MISMATCH").await;
    ok(
        &peer,
        "provision_keys_chunk",
        chunk(0, &flip_b64(&parts[0], 33)),
    )
    .await;
    for (i, p) in parts.iter().enumerate().skip(1) {
        ok(&peer, "provision_keys_chunk", chunk(i, p)).await;
    }
    fails(
        &peer,
        "provision_keys_commit",
        json!({"client_id": "mallory", "provisioning_id": pid}),
        "ERROR_INTEGRITY_MISMATCH",
    )
    .await;
    // The commit request's signature altered in transit, or made by another identity than
    // the one that signed the bundle.
    let mut a = signed(
        "provision_keys_commit",
        json!({"client_id": "mallory", "provisioning_id": pid}),
    );
    let sig = a[REQUEST_SIGNATURE_FIELD]["signature"]
        .as_str()
        .unwrap()
        .to_string();
    a[REQUEST_SIGNATURE_FIELD]["signature"] = json!(flip_b64(&sig, 200));
    fails(&peer, "provision_keys_commit", a, "ERROR_BAD_SIGNATURE").await;
    let mut a = json!({"client_id": "mallory", "provisioning_id": pid});
    sign_call(
        &IdentityKey::generate().unwrap(),
        "provision_keys_commit",
        &mut a,
    )
    .unwrap();
    fails(&peer, "provision_keys_commit", a, "ERROR_BAD_SIGNATURE").await;

    // Nothing was installed (the client id is still unknown); an intact provisioning still
    // works end to end.
    fails(
        &peer,
        "get_session_status",
        session_args(
            "mallory",
            "s1",
            "cit_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            json!({}),
        ),
        "ERROR_UNKNOWN_CLIENT",
    )
    .await;
    let token = enroll(&peer, "mallory").await;
    common::remote::upload_input(&peer, "mallory", &token, "s1", 2).await;
    infer_and_check(&peer, "mallory", &token, "s1").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_requests_are_refused() {
    let dir = temp_dir("sec-requests");
    let mut o = options(&dir);
    // Every refused signature counts as a failed authentication; this test makes many.
    o.service.auth_failures_per_minute = 100;
    let server = start_with(o).await;
    let (peer, _p) = connect(&server.url).await;
    let token = enroll(&peer, "alice").await;
    common::remote::upload_input(&peer, "alice", &token, "s1", 1).await;
    let m = material();
    let infer = json!({"client_id": "alice", "session_id": "s1", "auth_token": token,
                       "model": m.info["name"], "max_multiplication_depth": 5,
                       "input_sha256": {m.input_name.clone(): sha256_hex(&m.input)}});
    let base = signed("remote_inference_cnn", infer.clone());
    for (field, value) in [
        ("session_id", json!("s2")),
        ("max_multiplication_depth", json!(6)),
        ("max_inline_bytes", json!(0)),
        ("omp_threads", json!(1)),
        (
            "input_sha256",
            json!({m.input_name.clone(): sha256_hex(b"other")}),
        ),
    ] {
        let mut a = base.clone();
        a[field] = value;
        let (_, v) = call_unsigned(&peer, "remote_inference_cnn", a).await;
        assert_eq!(v["error_code"], "ERROR_BAD_SIGNATURE", "{field}: {v}");
    }
    // The signature itself, its nonce or its timestamp altered; a signature moved to
    // another tool; a malformed and a missing signature.
    for (what, mutate) in [
        ("signature", 0usize),
        ("nonce", 1),
        ("timestamp", 2),
        ("malformed", 3),
        ("missing", 4),
    ] {
        let mut a = base.clone();
        let s = &mut a[REQUEST_SIGNATURE_FIELD];
        match mutate {
            0 => s["signature"] = json!(flip_b64(s["signature"].as_str().unwrap(), 9)),
            1 => s["nonce"] = json!(flip_char(s["nonce"].as_str().unwrap(), 5)),
            2 => s["timestamp_ms"] = json!(s["timestamp_ms"].as_u64().unwrap() + 1),
            3 => s["nonce"] = json!("xyz"),
            _ => {
                a.as_object_mut().unwrap().remove(REQUEST_SIGNATURE_FIELD);
            }
        }
        let (_, v) = call_unsigned(&peer, "remote_inference_cnn", a).await;
        assert_eq!(v["error_code"], "ERROR_BAD_SIGNATURE", "{what}: {v}");
    }
    let mut moved = session_args("alice", "s1", &token, json!({}));
    moved[REQUEST_SIGNATURE_FIELD] = signed(
        "delete_session",
        session_args("alice", "s1", &token, json!({})),
    )[REQUEST_SIGNATURE_FIELD]
        .clone();
    let (_, v) = call_unsigned(&peer, "get_session_status", moved).await;
    assert_eq!(v["error_code"], "ERROR_BAD_SIGNATURE", "{v}");
    // Nothing of that deleted or changed the session: the intact request evaluates correctly.
    infer_and_check(&peer, "alice", &token, "s1").await;
    server.stop().await;
}

/// A request signed by `key` with an explicit timestamp.
fn signed_at(key: &IdentityKey, tool: &str, mut args: Value, timestamp_ms: u64) -> Value {
    let digest = call_digest(tool, &args).unwrap();
    let nonce = format!("{:032x}", timestamp_ms);
    let sig = key.sign(&request_message(&nonce, timestamp_ms, &digest));
    args[REQUEST_SIGNATURE_FIELD] = json!({"nonce": nonce, "timestamp_ms": timestamp_ms,
                                           "signature": encode_signature(&sig)});
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_stale_requests_are_refused() {
    let dir = temp_dir("sec-replay");
    let server = start(&dir).await;
    let (peer, _p) = connect(&server.url).await;
    let token = enroll(&peer, "alice").await;
    let m = material();
    let parts = chunks(&m.input, 1);
    let upload = signed(
        "upload_ciphertext_chunk",
        upload_args("alice", &token, "s1", 0, 1, &parts[0]),
    );
    let (is_error, v) = call_unsigned(&peer, "upload_ciphertext_chunk", upload.clone()).await;
    assert!(!is_error, "{v}");
    let (_, v) = call_unsigned(&peer, "upload_ciphertext_chunk", upload).await;
    assert_eq!(v["error_code"], "ERROR_REPLAY", "{v}");

    let infer = signed(
        "remote_inference_cnn",
        json!({"client_id": "alice", "session_id": "s1", "auth_token": token}),
    );
    let (is_error, v) = call_unsigned(&peer, "remote_inference_cnn", infer.clone()).await;
    assert!(!is_error, "{v}");
    let (_, v) = call_unsigned(&peer, "remote_inference_cnn", infer).await;
    assert_eq!(v["error_code"], "ERROR_REPLAY", "{v}");
    // A replayed deletion deletes nothing.
    let delete = signed(
        "delete_session",
        session_args("alice", "s9", &token, json!({})),
    );
    ok(&peer, "delete_session", delete.clone()).await;
    let (_, v) = call_unsigned(&peer, "delete_session", delete).await;
    assert_eq!(v["error_code"], "ERROR_REPLAY", "{v}");

    // Signed ten minutes ago, ten minutes ahead, or before the server started.
    let key = identity("alice");
    let args = session_args("alice", "s1", &token, json!({}));
    for ts in [now_ms() - 600_000, now_ms() + 600_000] {
        let (_, v) = call_unsigned(
            &peer,
            "get_session_status",
            signed_at(&key, "get_session_status", args.clone(), ts),
        )
        .await;
        assert_eq!(v["error_code"], "ERROR_STALE_REQUEST", "{v}");
    }
    let before_restart = signed_at(&key, "get_session_status", args.clone(), now_ms());
    server.stop().await;
    // The restarted server's clock must be past the signature's millisecond.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let server = start(&dir).await;
    let (peer, _p) = connect(&server.url).await;
    let (_, v) = call_unsigned(&peer, "get_session_status", before_restart).await;
    assert_eq!(v["error_code"], "ERROR_STALE_REQUEST", "{v}");
    // The session survived all of it.
    let st = status(&peer, "alice", &token, "s1").await;
    assert_eq!(st["objects"][0]["missing_chunks"], json!([]), "{st}");
    infer_and_check(&peer, "alice", &token, "s1").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_identity_is_refused() {
    let dir = temp_dir("sec-identity");
    let server = start(&dir).await;
    let (peer, _p) = connect(&server.url).await;
    let token = enroll(&peer, "alice").await;
    let m = material();
    let eve = IdentityKey::generate().unwrap();

    // Alice's token, but calls signed by another identity.
    let mut a = session_args("alice", "s1", &token, json!({}));
    sign_call(&eve, "get_session_status", &mut a).unwrap();
    fails(&peer, "get_session_status", a, "ERROR_BAD_SIGNATURE").await;

    // A key rotation whose bundle is signed by another identity (the request by alice's).
    let mut begin = begin_args("alice", &m.info, &m.bundle, 4);
    begin["mode"] = json!("rotate");
    begin["auth_token"] = json!(token);
    let claim = BundleClaim {
        client_id: "alice",
        algorithm_id: m.info["algorithm_id"].as_str().unwrap(),
        parameter_id: m.info["parameter_id"].as_str().unwrap(),
        bundle_sha256: &sha256_hex(&m.bundle),
        bundle_bytes: m.bundle.len() as u64,
    };
    begin["bundle_signature"] = serde_json::to_value(claim.sign(&eve).unwrap()).unwrap();
    fails(
        &peer,
        "provision_keys_begin",
        begin,
        "ERROR_IDENTITY_MISMATCH",
    )
    .await;
    server.stop().await;

    // Pre-registered identities: carol's is registered, dave has none and the server
    // requires one.
    let carol = identity("carol");
    let mut o = options(&dir);
    o.service
        .registered_identities
        .insert("carol".into(), carol.public());
    o.service
        .registered_identities
        .insert("erin".into(), eve.public());
    o.service.require_registered_identity = true;
    let server = start_with(o).await;
    let (peer, _p) = connect(&server.url).await;
    let caps = ok(&peer, "describe_capabilities", json!({})).await;
    assert_eq!(caps["identity_registration_required"], true);
    let begin = |client: &str| begin_args(client, &m.info, &m.bundle, 4);
    fails(
        &peer,
        "provision_keys_begin",
        begin("dave"),
        "ERROR_IDENTITY_MISMATCH",
    )
    .await;
    // erin's registered key is eve's; the test identity of erin is another one.
    fails(
        &peer,
        "provision_keys_begin",
        begin("erin"),
        "ERROR_IDENTITY_MISMATCH",
    )
    .await;
    let carol_token = enroll(&peer, "carol").await;
    common::remote::upload_input(&peer, "carol", &carol_token, "s1", 1).await;
    infer_and_check(&peer, "carol", &carol_token, "s1").await;
    // Alice's keys, provisioned before, still work after the restart.
    common::remote::upload_input(&peer, "alice", &token, "s7", 1).await;
    infer_and_check(&peer, "alice", &token, "s7").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_scoped_to_their_client() {
    let dir = temp_dir("sec-tokens");
    let server = start(&dir).await;
    let (peer, _p) = connect(&server.url).await;
    let alice = enroll(&peer, "alice").await;
    let bob = enroll(&peer, "bob").await;
    common::remote::upload_input(&peer, "alice", &alice, "s1", 1).await;
    // Bob's valid token for alice's client id, signed by alice's identity or by bob's.
    fails(
        &peer,
        "get_session_status",
        session_args("alice", "s1", &bob, json!({})),
        "ERROR_UNAUTHORIZED",
    )
    .await;
    let mut a = session_args("alice", "s1", &bob, json!({}));
    sign_call(&identity("bob"), "delete_session", &mut a).unwrap();
    fails(&peer, "delete_session", a, "ERROR_UNAUTHORIZED").await;
    // Bob with his own token cannot reach alice's session either.
    fails(
        &peer,
        "get_session_status",
        session_args("bob", "s1", &bob, json!({})),
        "ERROR_SESSION_FORBIDDEN",
    )
    .await;
    infer_and_check(&peer, "alice", &alice, "s1").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_results_are_refused_before_decryption() {
    let dir = temp_dir("sec-results");
    let server = start(&dir).await;
    let (peer, _p) = connect(&server.url).await;
    let token = enroll(&peer, "alice").await;
    common::remote::upload_input(&peer, "alice", &token, "s1", 1).await;
    let caps = ok(&peer, "describe_capabilities", json!({})).await;
    let pinned: cipherinfer_protocol::integrity::PublicIdentity =
        serde_json::from_value(caps["server_identity"].clone()).unwrap();
    assert_eq!(pinned, server.service.server_identity());

    let request = signed(
        "remote_inference_cnn",
        json!({"client_id": "alice", "session_id": "s1", "auth_token": token}),
    );
    let nonce = request[REQUEST_SIGNATURE_FIELD]["nonce"]
        .as_str()
        .unwrap()
        .to_string();
    let (is_error, v) = call_unsigned(&peer, "remote_inference_cnn", request).await;
    assert!(!is_error, "{v}");
    let result: cipherinfer_protocol::remote::RemoteInferenceResult =
        serde_json::from_value(v.clone()).unwrap();
    let bytes =
        decode_base64_limited(result.encrypted_logit_b64.as_deref().unwrap(), 1 << 20).unwrap();
    let sig = result.result_signature.clone().expect("signed result");
    let claim = |r: &cipherinfer_protocol::remote::RemoteInferenceResult| ResultClaim {
        client_id: "alice".into(),
        session_id: r.session_id.clone(),
        model: r.model.clone(),
        algorithm_id: r.algorithm_id.to_string(),
        parameter_id: r.parameter_id.clone(),
        encrypted_logit_sha256: r.encrypted_logit_sha256.clone(),
        encrypted_logit_bytes: r.encrypted_logit_bytes,
    };
    claim(&result)
        .verify(&sig, &pinned, &nonce, &bytes)
        .unwrap();

    // The output bit-flipped (in transit or on disk), with or without its digest adjusted.
    for bit in [0, 1000, 8 * bytes.len() - 1] {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let e = claim(&result)
            .verify(&sig, &pinned, &nonce, &flipped)
            .unwrap_err();
        assert_eq!(e.error_code, ErrorCode::IntegrityMismatch);
        let mut forged = result.clone();
        forged.encrypted_logit_sha256 = sha256_hex(&flipped);
        let e = claim(&forged)
            .verify(&sig, &pinned, &nonce, &flipped)
            .unwrap_err();
        assert_eq!(e.error_code, ErrorCode::BadSignature);
    }
    // Any signed field altered, the signature flipped, another request's nonce, another key.
    let mut other = result.clone();
    other.session_id = "s2".into();
    assert_eq!(
        claim(&other)
            .verify(&sig, &pinned, &nonce, &bytes)
            .unwrap_err()
            .error_code,
        ErrorCode::BadSignature
    );
    let mut bad = sig.clone();
    bad.signature = flip_b64(&sig.signature, 17);
    assert_eq!(
        claim(&result)
            .verify(&bad, &pinned, &nonce, &bytes)
            .unwrap_err()
            .error_code,
        ErrorCode::BadSignature
    );
    let other_nonce = flip_char(&nonce, 0);
    assert_eq!(
        claim(&result)
            .verify(&sig, &pinned, &other_nonce, &bytes)
            .unwrap_err()
            .error_code,
        ErrorCode::BadSignature
    );
    let impostor = IdentityKey::generate().unwrap();
    let forged_sig = claim(&result).sign(&impostor, &nonce);
    assert_eq!(
        claim(&result)
            .verify(&forged_sig, &pinned, &nonce, &bytes)
            .unwrap_err()
            .error_code,
        ErrorCode::IdentityMismatch
    );
    // A restarted server keeps its identity (clients' pins stay valid).
    server.stop().await;
    let server = start(&dir).await;
    assert_eq!(server.service.server_identity(), pinned);
    server.stop().await;
}
