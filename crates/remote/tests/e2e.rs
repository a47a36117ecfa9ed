//! The remote server end to end over real HTTP on loopback, with real keys and a real encrypted
//! image: Step 0 → upload → inference → decryption in the test, then the error paths a client can
//! cause, and a restart between upload and inference.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use cipherinfer_ckks::serialization::{FromBytes, ToBytes};
use cipherinfer_ckks::{Ciphertext, Encoder, KeyGenerator, secret_key_pair};
use cipherinfer_compiler::ClientSpec;
use cipherinfer_model::{Manifest, onnx, plain};
use cipherinfer_protocol::validate::{encode_base64, sha256_hex};
use common::remote::{call, chunks, connect, fails, ok, provision, start, temp_dir};
use rmcp::model::{CallToolRequestParams, ClientRequest, Request, ServerResult};
use rmcp::service::PeerRequestOptions;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step0_upload_inference_and_errors_over_http() {
    let dir = temp_dir("e2e");
    let server = start(&dir).await;
    let (peer, mut progress) = connect(&server.url).await;

    // Capabilities, and the client's view of the model, validated like any untrusted input.
    let tools = peer.list_all_tools().await.expect("tools");
    let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    // Every tool has a title and annotations; reading ones say so, deleting ones too.
    for t in &tools {
        let a = t.annotations.as_ref().expect("annotations");
        assert!(t.title.is_some() && a.title == t.title, "{}", t.name);
        assert_eq!(a.open_world_hint, Some(false), "{}", t.name);
        let read_only = matches!(
            t.name.as_ref(),
            "describe_capabilities" | "fetch_result_chunk" | "get_session_status"
        );
        assert_eq!(a.read_only_hint, Some(read_only), "{}", t.name);
        let destructive = matches!(
            t.name.as_ref(),
            "revoke_keys" | "delete_session" | "provision_keys_commit"
        );
        assert_eq!(a.destructive_hint, Some(destructive), "{}", t.name);
    }
    // The capabilities' output schema describes ModelInfo.client_spec field by field.
    let describe = tools
        .iter()
        .find(|t| t.name == "describe_capabilities")
        .expect("describe_capabilities");
    let output = Value::Object((*describe.output_schema.clone().expect("output schema")).clone());
    assert_eq!(
        output["$defs"]["ModelInfo"]["properties"]["client_spec"]["$ref"],
        json!("#/$defs/ClientSpec")
    );
    for f in [
        "parameters",
        "rotation_steps",
        "input",
        "output",
        "output_shape",
    ] {
        assert!(
            output["$defs"]["ClientSpec"]["properties"].get(f).is_some(),
            "{f}: {output}"
        );
    }
    for t in [
        "provision_keys_begin",
        "upload_ciphertext_chunk",
        "remote_inference_cnn",
        "describe_capabilities",
        "delete_session",
        "fetch_result_chunk",
    ] {
        assert!(names.iter().any(|n| n == t), "{t} missing from {names:?}");
    }
    let caps = ok(&peer, "describe_capabilities", json!({})).await;
    let info = caps["models"][0].clone();
    assert_eq!(info["name"], "mnist-cnn");
    let spec: ClientSpec = serde_json::from_value(info["client_spec"].clone()).expect("spec");
    let params = spec.validate().expect("valid spec");
    fails(
        &peer,
        "describe_capabilities",
        json!({"model": "nope"}),
        "ERROR_UNKNOWN_MODEL",
    )
    .await;
    // A client can ask for a security level: the models at or above it, or the refusal the
    // draft's parameters promise, listing what is served; never an unknown-field error.
    let at_128 = ok(
        &peer,
        "describe_capabilities",
        json!({"security_level": 128}),
    )
    .await;
    assert_eq!(at_128["models"], caps["models"]);
    let e = fails(
        &peer,
        "describe_capabilities",
        json!({"security_level": 192}),
        "ERROR_WEAK_PARAMETERS",
    )
    .await;
    assert_eq!(e["details"]["served"], json!([128]), "{e}");
    fails(
        &peer,
        "describe_capabilities",
        json!({"security_level": 100}),
        "ERROR_WEAK_PARAMETERS",
    )
    .await;
    fails(
        &peer,
        "describe_capabilities",
        json!({"security_level": 160}),
        "ERROR_INVALID_PARAMETERS",
    )
    .await;
    // A tool that is not listed: the JSON-RPC error MCP specifies (invalid params).
    let err = peer
        .call_tool(CallToolRequestParams::new(
            "remote_inference_rnn".to_string(),
        ))
        .await
        .expect_err("unknown tool");
    let rmcp::ServiceError::McpError(e) = err else {
        panic!("unknown tool: {err:?}")
    };
    assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS);
    assert!(e.message.contains("remote_inference_rnn"), "{}", e.message);

    // Keys: the full set, and one lacking a rotation key.
    let mut kg = KeyGenerator::new(params.clone()).expect("kg");
    let sk = kg.secret_key();
    let bundle = kg
        .evaluation_keys(&sk, spec.relinearization, &spec.rotation_steps, false)
        .expect("keys")
        .to_bytes();
    let partial = kg
        .evaluation_keys(&sk, spec.relinearization, &spec.rotation_steps[1..], false)
        .expect("keys")
        .to_bytes();

    let commit = provision(&peer, "alice", &info, &bundle).await;
    let done = ok(&peer, "provision_keys_commit", commit).await;
    let token = done["auth_token"].as_str().expect("token").to_string();
    assert_eq!(done["key_version"], 1);
    assert_eq!(done["models"], json!(["mnist-cnn"]));
    // The same client id cannot be claimed twice.
    fails(
        &peer,
        "provision_keys_begin",
        json!({"client_id": "alice", "algorithm_id": info["algorithm_id"],
               "parameter_id": info["parameter_id"], "bundle_bytes": bundle.len(),
               "bundle_sha256": sha256_hex(&bundle), "total_chunks": 4}),
        "ERROR_CLIENT_EXISTS",
    )
    .await;
    // Step 0 for an Algorithm ID this server does not serve.
    let bfv = info["algorithm_id"]
        .as_str()
        .unwrap()
        .replace("CKKS-RNS", "BFV-RNS");
    fails(
        &peer,
        "provision_keys_begin",
        json!({"client_id": "trudy", "algorithm_id": bfv,
               "parameter_id": info["parameter_id"], "bundle_bytes": bundle.len(),
               "bundle_sha256": sha256_hex(&bundle), "total_chunks": 4}),
        "ERROR_UNSUPPORTED_ALGORITHM",
    )
    .await;
    // A bundle without a rotation key the model needs is refused at commit.
    let commit = provision(&peer, "mallory", &info, &partial).await;
    let e = fails(
        &peer,
        "provision_keys_commit",
        commit,
        "ERROR_INVALID_GALOIS_KEY",
    )
    .await;
    assert_eq!(
        e["details"]["missing_galois_elements"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // A tampered bundle does not match its announced hash.
    let mut flipped = bundle.clone();
    flipped[bundle.len() / 2] ^= 1;
    let begin = ok(&peer, "provision_keys_begin", json!({
        "client_id": "trudy", "algorithm_id": info["algorithm_id"], "parameter_id": info["parameter_id"],
        "bundle_bytes": bundle.len(), "bundle_sha256": sha256_hex(&bundle), "total_chunks": 4})).await;
    let pid = begin["provisioning_id"].clone();
    for (i, c) in chunks(&flipped, 4).iter().enumerate() {
        ok(
            &peer,
            "provision_keys_chunk",
            json!({"client_id": "trudy", "provisioning_id": pid,
            "chunk_index": i, "total_chunks": 4, "chunk_b64": c}),
        )
        .await;
    }
    fails(
        &peer,
        "provision_keys_commit",
        json!({"client_id": "trudy", "provisioning_id": pid}),
        "ERROR_INTEGRITY_MISMATCH",
    )
    .await;

    // Encrypt one shipped test image and upload it in three chunks, out of order.
    let manifest = Manifest::shipped().expect("manifest");
    let entry = manifest.model("mnist-cnn").expect("entry").clone();
    let ir = onnx::import(&manifest.read_model("mnist-cnn").expect("model").bytes).expect("import");
    let samples = manifest.load_samples(&entry.dataset).expect("samples");
    let (x, _) = plain::sample_inputs(&samples, &entry.input)
        .expect("inputs")
        .swap_remove(0);
    let want = plain::run(&ir, &x).expect("reference").into_data();
    let encoder = Encoder::new(params.clone());
    let (mut sym, dec) = secret_key_pair(sk).expect("secret key");
    let cts = spec
        .encrypt_input(&encoder, &mut sym, x.data())
        .expect("encrypt");
    let ct_bytes = cts[0].to_bytes();
    let parts = chunks(&ct_bytes, 3);
    let upload = |i: usize, b64: &str, name: &str, tok: &str| {
        json!({"client_id": "alice", "session_id": "s1", "file_name": name, "chunk_index": i,
               "total_chunks": 3, "chunk_b64": b64, "auth_token": tok})
    };
    let name = info["input_objects"][0]
        .as_str()
        .expect("object")
        .to_string();
    fails(
        &peer,
        "upload_ciphertext_chunk",
        upload(0, &parts[0], &name, "cit_wrong"),
        "ERROR_UNAUTHORIZED",
    )
    .await;
    fails(
        &peer,
        "upload_ciphertext_chunk",
        upload(0, &parts[0], "../../etc/passwd", &token),
        "ERROR_INVALID_FILE_NAME",
    )
    .await;
    fails(
        &peer,
        "upload_ciphertext_chunk",
        upload(0, "not base64!", &name, &token),
        "ERROR_INVALID_BASE64",
    )
    .await;
    let big = encode_base64(&vec![7u8; 4 * 1024 * 1024 + 1]);
    fails(
        &peer,
        "upload_ciphertext_chunk",
        upload(0, &big, &name, &token),
        "ERROR_CHUNK_TOO_LARGE",
    )
    .await;
    fails(
        &peer,
        "upload_ciphertext_chunk",
        upload(3, &parts[0], &name, &token),
        "ERROR_INVALID_CHUNK_INDEX",
    )
    .await;
    let ack = ok(
        &peer,
        "upload_ciphertext_chunk",
        upload(2, &parts[2], &name, &token),
    )
    .await;
    assert_eq!(
        (
            ack["received_chunks"].clone(),
            ack["object_complete"].clone()
        ),
        (json!(1), json!(false))
    );
    let ack = ok(
        &peer,
        "upload_ciphertext_chunk",
        upload(2, &parts[2], &name, &token),
    )
    .await;
    assert_eq!(ack["duplicate"], true);
    fails(
        &peer,
        "upload_ciphertext_chunk",
        upload(2, &parts[0], &name, &token),
        "ERROR_CHUNK_CONFLICT",
    )
    .await;
    ok(
        &peer,
        "upload_ciphertext_chunk",
        upload(0, &parts[0], &name, &token),
    )
    .await;

    // Inference before the upload completes.
    let infer = |extra: Value| {
        let mut a = json!({"client_id": "alice", "session_id": "s1", "auth_token": token});
        if let (Value::Object(m), Value::Object(e)) = (&mut a, extra) {
            m.extend(e);
        }
        a
    };
    let e = fails(
        &peer,
        "remote_inference_cnn",
        infer(json!({})),
        "ERROR_INCOMPLETE_UPLOAD",
    )
    .await;
    assert_eq!(e["details"]["missing"][0]["missing_chunks"], json!([1]));
    let ack = ok(
        &peer,
        "upload_ciphertext_chunk",
        upload(1, &parts[1], &name, &token),
    )
    .await;
    assert_eq!(ack["object_complete"], true);

    // Parameter checks come before any evaluation. A failure carries the draft 7.2 telemetry.
    let e = fails(
        &peer,
        "remote_inference_cnn",
        infer(json!({"max_multiplication_depth": 3})),
        "ERROR_DEPTH_EXCEEDED",
    )
    .await;
    let t = &e["details"]["telemetry"];
    assert_eq!(t["error_code"], "ERROR_DEPTH_EXCEEDED", "{e}");
    assert_eq!(t["requires_decryption"], false, "{e}");
    assert_eq!(t["output_shape"], json!([10]), "{e}");
    assert_eq!(t["computation_depth_used"], 0, "{e}");
    assert_eq!(info["parameters"]["input_packing_format"], "chw_blocks");
    fails(
        &peer,
        "remote_inference_cnn",
        infer(json!({"input_packing_format": "row_major"})),
        "ERROR_UNSUPPORTED_PACKING",
    )
    .await;
    fails(
        &peer,
        "remote_inference_cnn",
        infer(json!({"security_level": 80})),
        "ERROR_WEAK_PARAMETERS",
    )
    .await;
    // More security than the served set gives: refused, never silently served at 128 bits.
    for level in [192, 256] {
        let e = fails(
            &peer,
            "remote_inference_cnn",
            infer(json!({"security_level": level})),
            "ERROR_WEAK_PARAMETERS",
        )
        .await;
        assert_eq!(e["details"]["requested"], level, "{e}");
        assert_eq!(e["details"]["served"], 128, "{e}");
    }
    // More images than one ciphertext set of the model holds (batch 1): refused, not ignored.
    let e = fails(
        &peer,
        "remote_inference_cnn",
        infer(json!({"batch_size": 2})),
        "ERROR_UNSUPPORTED_PACKING",
    )
    .await;
    assert_eq!(e["details"]["served"], 1, "{e}");
    // A scheme or Algorithm ID this server does not evaluate.
    let bfv = info["algorithm_id"]
        .as_str()
        .unwrap()
        .replace("CKKS-RNS", "BFV-RNS");
    let e = fails(
        &peer,
        "remote_inference_cnn",
        infer(json!({"algorithm_id": bfv})),
        "ERROR_UNSUPPORTED_ALGORITHM",
    )
    .await;
    assert_eq!(e["details"]["supported"][0], info["algorithm_id"], "{e}");
    fails(
        &peer,
        "remote_inference_cnn",
        infer(json!({"scheme_context": "BFV"})),
        "ERROR_UNSUPPORTED_ALGORITHM",
    )
    .await;
    fails(
        &peer,
        "remote_inference_cnn",
        infer(json!({"model": "resnet-9000"})),
        "ERROR_UNKNOWN_MODEL",
    )
    .await;
    fails(
        &peer,
        "remote_inference_cnn",
        infer(json!({"poly_modulus_degree": 16384})),
        "ERROR_PARAMETER_MISMATCH",
    )
    .await;

    // Another client (provisioned with its own keys) cannot touch alice's session.
    let commit = provision(&peer, "bob", &info, &bundle).await;
    let bob = ok(&peer, "provision_keys_commit", commit).await["auth_token"].clone();
    fails(
        &peer,
        "remote_inference_cnn",
        json!({"client_id": "bob", "session_id": "s1", "auth_token": bob}),
        "ERROR_SESSION_FORBIDDEN",
    )
    .await;
    fails(
        &peer,
        "remote_inference_cnn",
        json!({"client_id": "bob", "session_id": "s1", "auth_token": token}),
        "ERROR_UNAUTHORIZED",
    )
    .await;

    // The real thing, with progress notifications; the result decrypts to the model's logits.
    let Value::Object(args) = common::remote::signed(
        "remote_inference_cnn",
        infer(json!({"max_multiplication_depth": 5, "security_level": 128, "batch_size": 1})),
    ) else {
        panic!()
    };
    let handle = peer
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(
                CallToolRequestParams::new("remote_inference_cnn").with_arguments(args),
            )),
            PeerRequestOptions::no_options(),
        )
        .await
        .expect("send");
    let ServerResult::CallToolResult(r) = handle.await_response().await.expect("response") else {
        panic!("expected a tool result")
    };
    assert_eq!(r.is_error, Some(false), "{:?}", r.structured_content);
    let v = r.structured_content.expect("structured");
    assert_eq!(v["requires_decryption"], true);
    assert_eq!(v["computation_depth_used"], 5);
    assert_eq!(v["remaining_level"], 0);
    assert_eq!(v["output_shape"], json!([10]));
    assert!(v["profile"]["infer_s"].as_f64().expect("infer_s") > 0.0);
    let out = cipherinfer_protocol::validate::decode_base64_limited(
        v["encrypted_logit_b64"].as_str().expect("inline"),
        1 << 20,
    )
    .expect("b64");
    assert_eq!(v["encrypted_logit_bytes"], out.len());
    let got = spec
        .decrypt_output(
            &encoder,
            &dec,
            &[Ciphertext::from_bytes(&params, &out, 1 << 20).expect("ct")],
        )
        .expect("decrypt");
    let argmax = |v: &[f64]| {
        v.iter()
            .enumerate()
            .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
    };
    assert_eq!(argmax(&got), argmax(&want));
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err < 0.05, "logit error {err}");
    let mut steps = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), progress.recv()).await
    {
        steps += 1;
    }
    assert!(steps >= 5, "{steps} progress notifications");

    // Restart: everything acknowledged survives; the output is offered by reference this time.
    drop(peer);
    server.stop().await;
    let server = start(&dir).await;
    let (peer, _progress) = connect(&server.url).await;
    let v = ok(
        &peer,
        "remote_inference_cnn",
        infer(json!({"max_inline_bytes": 0})),
    )
    .await;
    let rr = v["result_ref"].clone();
    assert!(v.get("encrypted_logit_b64").is_none());
    let mut fetched = Vec::new();
    for i in 0..rr["total_chunks"].as_u64().expect("chunks") {
        let c = ok(
            &peer,
            "fetch_result_chunk",
            json!({"client_id": "alice", "session_id": "s1",
            "result_id": rr["result_id"], "chunk_index": i, "auth_token": token}),
        )
        .await;
        fetched.extend(
            cipherinfer_protocol::validate::decode_base64_limited(
                c["chunk_b64"].as_str().expect("b64"),
                1 << 20,
            )
            .expect("b64"),
        );
    }
    assert_eq!(sha256_hex(&fetched), rr["sha256"].as_str().expect("sha"));
    let again = spec
        .decrypt_output(
            &encoder,
            &dec,
            &[Ciphertext::from_bytes(&params, &fetched, 1 << 20).expect("ct")],
        )
        .expect("decrypt");
    assert_eq!(argmax(&again), argmax(&want));
    fails(
        &peer,
        "fetch_result_chunk",
        json!({"client_id": "alice", "session_id": "s1",
        "result_id": "nope", "chunk_index": 0, "auth_token": token}),
        "ERROR_RESULT_NOT_FOUND",
    )
    .await;

    // Session status, deletion, and revocation.
    let st = ok(
        &peer,
        "get_session_status",
        json!({"client_id": "alice", "session_id": "s1", "auth_token": token}),
    )
    .await;
    assert_eq!(st["objects"][0]["missing_chunks"], json!([]));
    let del = ok(
        &peer,
        "delete_session",
        json!({"client_id": "alice", "session_id": "s1", "auth_token": token}),
    )
    .await;
    assert_eq!(del["deleted"], true);
    fails(
        &peer,
        "remote_inference_cnn",
        infer(json!({})),
        "ERROR_UNKNOWN_SESSION",
    )
    .await;
    ok(
        &peer,
        "revoke_keys",
        json!({"client_id": "alice", "auth_token": token}),
    )
    .await;
    fails(
        &peer,
        "upload_ciphertext_chunk",
        upload(0, &parts[0], &name, &token),
        "ERROR_KEYS_REVOKED",
    )
    .await;
    // Repeated wrong tokens are rate-limited.
    let mut limited = false;
    for _ in 0..12 {
        let (_, v) = call(
            &peer,
            "get_session_status",
            json!({"client_id": "bob", "session_id": "x", "auth_token": "cit_guess"}),
        )
        .await;
        limited |= v["error_code"] == "ERROR_RATE_LIMITED";
    }
    assert!(limited, "failed authentications must be rate-limited");
    drop(peer);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
