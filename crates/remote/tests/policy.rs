//! The remote server's policies, driven over real HTTP on loopback with real keys: cancellation,
//! quotas and the inference slot limit, garbage collection with tombstones, the bearer header on
//! both transports, per-address rate limiting, `omp_threads`, and chunk accounting across
//! restarts and concurrent chunks.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use cipherinfer_protocol::validate::{encode_base64, sha256_hex};
use common::legacy::LegacyClient;
use common::remote::{
    call, call_unsigned, chunks, connect, connect_from, connect_with_bearer, enroll, error_object,
    fails, material, ok, options, provision, session_args, start, start_with, temp_dir,
    upload_input,
};
use futures::future::join_all;
use rmcp::model::{CallToolRequestParams, ClientRequest, Request};
use rmcp::service::PeerRequestOptions;
use serde_json::{Value, json};

fn infer_call(args: Value) -> ClientRequest {
    ClientRequest::CallToolRequest(Request::new(
        CallToolRequestParams::new("remote_inference_cnn").with_arguments(
            common::remote::arguments(common::remote::signed("remote_inference_cnn", args)),
        ),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_inference_stops_it_and_frees_its_slot() {
    let dir = temp_dir("cancel");
    let mut o = options(&dir);
    o.service.max_concurrent_inferences = 1;
    o.service.queue_timeout = Duration::from_secs(30);
    let server = start_with(o).await;
    let (peer, mut progress) = connect(&server.url).await;
    let token = enroll(&peer, "alice").await;
    upload_input(&peer, "alice", &token, "s1", 2).await;
    let by_ref = json!({"client_id": "alice", "session_id": "s1", "max_inline_bytes": 0});

    // Cancelled while it waits for the slot an operator holds. On the legacy transport the
    // server takes the POSTed messages in the order it accepted them, so the cancellation
    // certainly follows the request; the answered ping shows rmcp has handled both.
    let mut legacy = LegacyClient::open(&server.base).await.with_bearer(&token);
    legacy.initialize().await;
    let slot = server.service.hold_inference_slot().await.unwrap();
    legacy
        .send(
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": "remote_inference_cnn",
            "arguments": common::remote::signed("remote_inference_cnn", by_ref),
            "_meta": {"progressToken": "queued"}}}),
        )
        .await;
    legacy
        .send(
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 7, "reason": "changed my mind"}}),
        )
        .await;
    legacy
        .send(json!({"jsonrpc": "2.0", "id": 8, "method": "ping"}))
        .await;
    let (_, before) = legacy.response(8).await;
    // The cancelled request leaves the queue without waiting for the slot.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.service.inference_stats().cancelled_waiting == 0 {
        assert!(
            Instant::now() < deadline,
            "the cancelled request kept waiting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(slot);
    // The next request gets the slot; the cancelled one never evaluated nor answered.
    legacy
        .send(
            json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
            "name": "remote_inference_cnn",
            "arguments": common::remote::signed(
                "remote_inference_cnn",
                json!({"client_id": "alice", "session_id": "s1"}),
            )}}),
        )
        .await;
    let (next, during) = legacy.response(9).await;
    assert_eq!(next["result"]["isError"], false, "{next}");
    for m in before.iter().chain(&during) {
        assert_ne!(m["id"], 7, "a cancelled call is not answered: {m}");
    }
    let stats = server.service.inference_stats();
    assert_eq!(
        (
            stats.cancelled_waiting,
            stats.evaluated,
            stats.cancelled_evaluating
        ),
        (1, 1, 0),
        "{stats:?}"
    );

    // Cancelled mid-evaluation, through the rmcp request handle on Streamable HTTP, as soon as
    // its first step is reported. Steps take tens of milliseconds and a cancellation crosses
    // loopback in a few, so the first attempt stops early; a loaded machine gets two more.
    let mut stopped_early = false;
    for _ in 0..3 {
        let before = server.service.inference_stats();
        let handle = peer
            .send_cancellable_request(
                infer_call(session_args(
                    "alice",
                    "s1",
                    &token,
                    json!({"max_inline_bytes": 0}),
                )),
                PeerRequestOptions::no_options(),
            )
            .await
            .unwrap();
        let mine = handle.progress_token.clone();
        loop {
            let p = tokio::time::timeout(Duration::from_secs(10), progress.recv())
                .await
                .expect("a progress notification")
                .unwrap();
            if p.progress_token == mine {
                break;
            }
        }
        handle
            .cancel(Some("no longer needed".into()))
            .await
            .unwrap();
        // The evaluation ends and gives its slot back (after counting itself).
        let slot = tokio::time::timeout(
            Duration::from_secs(10),
            server.service.hold_inference_slot(),
        )
        .await
        .expect("the cancelled evaluation released its slot")
        .unwrap();
        drop(slot);
        let after = server.service.inference_stats();
        if after.cancelled_evaluating == before.cancelled_evaluating + 1 {
            assert_eq!(after.evaluated, before.evaluated, "{after:?}");
            stopped_early = true;
            break;
        }
        // Lost the race: the evaluation had finished; its output must not be kept either.
        assert_eq!(after.evaluated, before.evaluated + 1, "{after:?}");
    }
    assert!(
        stopped_early,
        "the evaluation ran to its end each time despite the cancellation"
    );

    // No cancelled call stored a result; the following one does.
    let status = ok(
        &peer,
        "get_session_status",
        session_args("alice", "s1", &token, json!({})),
    )
    .await;
    assert_eq!(status["results"], json!([]), "{status}");
    let v = ok(
        &peer,
        "remote_inference_cnn",
        session_args("alice", "s1", &token, json!({"max_inline_bytes": 0})),
    )
    .await;
    let status = ok(
        &peer,
        "get_session_status",
        session_args("alice", "s1", &token, json!({})),
    )
    .await;
    assert_eq!(status["results"], json!([v["result_ref"]["result_id"]]));
    drop(peer);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_the_slot_limit_refuse_without_losing_anything() {
    let dir = temp_dir("quota");
    let input = material().input.len() as u64;
    let mut o = options(&dir);
    o.service.max_sessions_per_client = 3;
    // Two inputs fit, a third does not.
    o.service.max_bytes_per_client = input * 5 / 2;
    o.service.max_concurrent_inferences = 1;
    o.service.queue_timeout = Duration::from_millis(200);
    let server = start_with(o).await;
    let (peer, _progress) = connect(&server.url).await;
    let token = enroll(&peer, "alice").await;
    upload_input(&peer, "alice", &token, "s1", 2).await;
    upload_input(&peer, "alice", &token, "s2", 2).await;
    let chunk = |session: &str, file: &str, bytes: &[u8]| {
        json!({"client_id": "alice", "session_id": session, "file_name": file, "chunk_index": 0,
               "total_chunks": 1, "chunk_b64": encode_base64(bytes), "auth_token": token})
    };

    // A third input runs over the byte quota, and leaves nothing behind (not even its session).
    let big = vec![2u8; usize::try_from(input / 2 + 1).unwrap()];
    let e = fails(
        &peer,
        "upload_ciphertext_chunk",
        chunk("s3", "input-0.ct", &big),
        "ERROR_QUOTA_EXCEEDED",
    )
    .await;
    assert_eq!(e["retryable"], true);
    assert_eq!(e["details"]["staged_bytes"], 2 * input);
    fails(
        &peer,
        "get_session_status",
        session_args("alice", "s3", &token, json!({})),
        "ERROR_UNKNOWN_SESSION",
    )
    .await;
    // A fourth session is over the session quota, and leaves nothing behind.
    ok(
        &peer,
        "upload_ciphertext_chunk",
        chunk("s3", "input-0.ct", &[1; 64]),
    )
    .await;
    let e = fails(
        &peer,
        "upload_ciphertext_chunk",
        chunk("s4", "input-0.ct", &[1; 64]),
        "ERROR_QUOTA_EXCEEDED",
    )
    .await;
    assert_eq!(e["retryable"], true);
    assert_eq!(e["details"]["max_sessions_per_client"], 3);
    fails(
        &peer,
        "get_session_status",
        session_args("alice", "s4", &token, json!({})),
        "ERROR_UNKNOWN_SESSION",
    )
    .await;
    // Nothing stored was lost: both sessions are complete and evaluate.
    for s in ["s1", "s2"] {
        let st = ok(
            &peer,
            "get_session_status",
            session_args("alice", s, &token, json!({})),
        )
        .await;
        assert_eq!(st["objects"].as_array().map(Vec::len), Some(1), "{st}");
        assert_eq!(st["objects"][0]["missing_chunks"], json!([]));
        assert_eq!(st["objects"][0]["bytes"], input);
        ok(
            &peer,
            "remote_inference_cnn",
            session_args("alice", s, &token, json!({})),
        )
        .await;
    }
    // Deleting sessions gives their room back.
    for s in ["s2", "s3"] {
        ok(
            &peer,
            "delete_session",
            session_args("alice", s, &token, json!({})),
        )
        .await;
    }
    ok(
        &peer,
        "upload_ciphertext_chunk",
        chunk("s4", "input-0.ct", &big),
    )
    .await;

    // All inference slots taken: ERROR_BUSY after the queue timeout, retryable with a hint.
    let slot = server.service.hold_inference_slot().await.unwrap();
    let e = fails(
        &peer,
        "remote_inference_cnn",
        session_args("alice", "s1", &token, json!({})),
        "ERROR_BUSY",
    )
    .await;
    assert_eq!(e["retryable"], true);
    let wait = e["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((100..=60_000).contains(&wait), "{e}");
    drop(slot);
    ok(
        &peer,
        "remote_inference_cnn",
        session_args("alice", "s1", &token, json!({})),
    )
    .await;
    drop(peer);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_expires_sessions_results_and_uploads() {
    let dir = temp_dir("gc");
    // Set-up under the default lifetimes: keys, a session with a result kept by reference,
    // and a second session.
    let server = start(&dir).await;
    let (peer, _progress) = connect(&server.url).await;
    let token = enroll(&peer, "alice").await;
    upload_input(&peer, "alice", &token, "old", 2).await;
    let v = ok(
        &peer,
        "remote_inference_cnn",
        session_args("alice", "old", &token, json!({"max_inline_bytes": 0})),
    )
    .await;
    let result_id = v["result_ref"]["result_id"].clone();
    upload_input(&peer, "alice", &token, "lazy", 1).await;
    drop(peer);
    server.stop().await;

    // The same store under lifetimes of one second, the collector left to the test.
    let mut o = options(&dir);
    o.service.session_ttl = Duration::from_secs(1);
    o.service.provisioning_ttl = Duration::from_secs(1);
    o.gc_interval = Duration::from_secs(3600);
    let server = start_with(o).await;
    let (peer, _progress) = connect(&server.url).await;
    // A Step 0 upload abandoned after its first chunk.
    let m = material();
    let keys = chunks(&m.bundle, 4);
    let begin = ok(
        &peer,
        "provision_keys_begin",
        json!({"client_id": "carol", "algorithm_id": m.info["algorithm_id"],
               "parameter_id": m.info["parameter_id"], "bundle_bytes": m.bundle.len(),
               "bundle_sha256": sha256_hex(&m.bundle), "total_chunks": 4}),
    )
    .await;
    let abandoned = json!({"client_id": "carol", "provisioning_id": begin["provisioning_id"]});
    ok(
        &peer,
        "provision_keys_chunk",
        json!({"client_id": "carol", "provisioning_id": begin["provisioning_id"],
               "chunk_index": 0, "total_chunks": 4, "chunk_b64": keys[0]}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    upload_input(&peer, "alice", &token, "live", 1).await;
    // Used after its lifetime, a session is removed on the spot.
    fails(
        &peer,
        "get_session_status",
        session_args("alice", "lazy", &token, json!({})),
        "ERROR_EXPIRED",
    )
    .await;
    let done = server.service.collect_garbage().await.unwrap();
    assert_eq!((done.sessions, done.uploads), (1, 1), "{done:?}");
    // The live session and the keys are untouched: the session still evaluates.
    ok(
        &peer,
        "remote_inference_cnn",
        session_args("alice", "live", &token, json!({})),
    )
    .await;
    assert!(dir.join("clients/alice/keys/v1.bin").is_file());
    assert!(!dir.join("sessions/alice/old").exists());
    assert!(!dir.join("owners/old").exists());
    assert!(
        !dir.join("provisioning")
            .join(abandoned["provisioning_id"].as_str().unwrap())
            .exists()
    );

    // Everything that was removed answers ERROR_EXPIRED, not ERROR_UNKNOWN_SESSION.
    for (tool, args) in [
        (
            "get_session_status",
            session_args("alice", "old", &token, json!({})),
        ),
        (
            "remote_inference_cnn",
            session_args("alice", "old", &token, json!({})),
        ),
        (
            "fetch_result_chunk",
            session_args(
                "alice",
                "old",
                &token,
                json!({"result_id": result_id, "chunk_index": 0}),
            ),
        ),
        (
            "upload_ciphertext_chunk",
            session_args(
                "alice",
                "old",
                &token,
                json!({"file_name": "input-0.ct",
                "chunk_index": 0, "total_chunks": 1, "chunk_b64": "AAAA"}),
            ),
        ),
        (
            "provision_keys_chunk",
            json!({"client_id": "carol", "provisioning_id": abandoned["provisioning_id"],
                   "chunk_index": 0, "total_chunks": 4, "chunk_b64": "AAAA"}),
        ),
        ("provision_keys_commit", abandoned.clone()),
    ] {
        let e = fails(&peer, tool, args, "ERROR_EXPIRED").await;
        assert!(e["details"]["expired_at"].as_u64().is_some(), "{tool}: {e}");
    }
    // Another client learns nothing from the tombstone.
    let bob = enroll(&peer, "bob").await;
    fails(
        &peer,
        "get_session_status",
        session_args("bob", "old", &bob, json!({})),
        "ERROR_UNKNOWN_SESSION",
    )
    .await;
    // Deleting the expired session drops its tombstone: the id can be used again.
    let del = ok(
        &peer,
        "delete_session",
        session_args("alice", "old", &token, json!({})),
    )
    .await;
    assert_eq!(del["deleted"], false);
    fails(
        &peer,
        "get_session_status",
        session_args("alice", "old", &token, json!({})),
        "ERROR_UNKNOWN_SESSION",
    )
    .await;
    drop(peer);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_header_authenticates_on_both_transports() {
    let dir = temp_dir("bearer");
    let server = start(&dir).await;
    let (plain, _progress) = connect(&server.url).await;
    let token = enroll(&plain, "alice").await;
    let no_token = |session: &str| json!({"client_id": "alice", "session_id": session});

    // Streamable HTTP: the header alone is enough, a wrong one is refused.
    let (peer, _progress) = connect_with_bearer(&server.url, &token).await;
    let m = material();
    for (i, c) in chunks(&m.input, 2).iter().enumerate() {
        ok(
            &peer,
            "upload_ciphertext_chunk",
            json!({"client_id": "alice", "session_id": "s1", "file_name": m.input_name,
                   "chunk_index": i, "total_chunks": 2, "chunk_b64": c}),
        )
        .await;
    }
    ok(&peer, "remote_inference_cnn", no_token("s1")).await;
    // The header and a different auth_token argument contradict each other.
    fails(
        &peer,
        "get_session_status",
        session_args("alice", "s1", "cit_other", json!({})),
        "ERROR_UNAUTHORIZED",
    )
    .await;
    let (wrong, _progress) = connect_with_bearer(&server.url, "cit_wrong").await;
    fails(
        &wrong,
        "get_session_status",
        no_token("s1"),
        "ERROR_UNAUTHORIZED",
    )
    .await;

    // Legacy SSE: the same, through the POST /messages request's header.
    let mut legacy = LegacyClient::open(&server.base).await.with_bearer(&token);
    legacy.initialize().await;
    let status = legacy
        .call_tool(2, "get_session_status", no_token("s1"))
        .await;
    assert_eq!(status["isError"], false, "{status}");
    assert_eq!(
        status["structuredContent"]["objects"][0]["missing_chunks"],
        json!([])
    );
    let result = legacy
        .call_tool(3, "remote_inference_cnn", no_token("s1"))
        .await;
    assert_eq!(result["isError"], false, "{result}");
    let mut legacy = LegacyClient::open(&server.base)
        .await
        .with_bearer("cit_wrong");
    legacy.initialize().await;
    let refused = legacy
        .call_tool(2, "get_session_status", no_token("s1"))
        .await;
    assert_eq!(error_object(&refused)["error_code"], "ERROR_UNAUTHORIZED");
    drop((plain, peer, wrong));
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_rate_limited_per_peer_address() {
    let dir = temp_dir("peer-limit");
    let mut o = options(&dir);
    o.service.auth_failures_per_minute_per_peer = 5;
    let server = start_with(o).await;
    let (peer, _progress) = connect(&server.url).await;
    let token = enroll(&peer, "alice").await;
    upload_input(&peer, "alice", &token, "s1", 1).await;
    let guess = |i: usize| json!({"client_id": format!("guess-{i}"), "session_id": "s", "auth_token": "cit_guess"});

    // Five guessed client ids (unknown: ERROR_UNKNOWN_CLIENT, which counts as a failure so
    // that enumeration is throttled), from one address over both transports: each client id is
    // far below its own limit, the address reaches its.
    for i in 0..3 {
        fails(
            &peer,
            "get_session_status",
            guess(i),
            "ERROR_UNKNOWN_CLIENT",
        )
        .await;
    }
    let mut legacy = LegacyClient::open(&server.base).await;
    legacy.initialize().await;
    for i in 3..5 {
        let r = legacy
            .call_tool(10 + i as u64, "get_session_status", guess(i))
            .await;
        assert_eq!(
            error_object(&r)["error_code"],
            "ERROR_UNKNOWN_CLIENT",
            "{r}"
        );
    }
    let r = legacy.call_tool(20, "get_session_status", guess(5)).await;
    assert_eq!(error_object(&r)["error_code"], "ERROR_RATE_LIMITED", "{r}");
    let e = fails(&peer, "get_session_status", guess(6), "ERROR_RATE_LIMITED").await;
    assert_eq!(e["retryable"], true);
    let wait = e["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=60_000).contains(&wait), "{e}");
    // The address is throttled as a whole until the window ends, right tokens included.
    fails(
        &peer,
        "get_session_status",
        session_args("alice", "s1", &token, json!({})),
        "ERROR_RATE_LIMITED",
    )
    .await;
    drop(peer);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Someone who knows a `client_id` but not its token cannot lock the client out: failures count
/// per client id *and address*, so the forger's address is limited and the owner's is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_failures_from_another_address_do_not_lock_a_client_out() {
    let dir = temp_dir("lockout");
    let server = start_with(options(&dir)).await;
    let (owner, _progress) = connect(&server.url).await;
    let token = enroll(&owner, "alice").await;
    upload_input(&owner, "alice", &token, "s1", 1).await;
    let from: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let (forger, _p) = connect_from(&server.url, from).await;
    let forged = session_args("alice", "s1", "cit_forged", json!({}));
    let limit = options(&dir).service.auth_failures_per_minute;
    for _ in 0..limit {
        let (is_error, e) = call_unsigned(&forger, "get_session_status", forged.clone()).await;
        assert!(is_error);
        assert_eq!(e["error_code"], "ERROR_UNAUTHORIZED", "{e}");
    }
    let (_, e) = call_unsigned(&forger, "get_session_status", forged.clone()).await;
    assert_eq!(e["error_code"], "ERROR_RATE_LIMITED", "{e}");
    // The owner, from its own address, is served as before.
    let status = ok(
        &owner,
        "get_session_status",
        session_args("alice", "s1", &token, json!({})),
    )
    .await;
    assert_eq!(
        status["objects"][0]["missing_chunks"],
        json!([]),
        "{status}"
    );
    drop((owner, forger));
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omp_threads_bounds_the_evaluation_pool() {
    let dir = temp_dir("threads");
    let mut o = options(&dir);
    o.service.max_eval_threads = 2;
    let server = start_with(o).await;
    let (peer, _progress) = connect(&server.url).await;
    let token = enroll(&peer, "alice").await;
    upload_input(&peer, "alice", &token, "s1", 1).await;
    for (hint, threads) in [
        (json!(1), 1),
        (json!(2), 2),
        (json!(1000), 2),
        (Value::Null, 2),
    ] {
        let extra = if hint.is_null() {
            json!({})
        } else {
            json!({ "omp_threads": hint })
        };
        let v = ok(
            &peer,
            "remote_inference_cnn",
            session_args("alice", "s1", &token, extra),
        )
        .await;
        assert_eq!(v["profile"]["threads"], threads, "omp_threads {hint}: {v}");
    }
    fails(
        &peer,
        "remote_inference_cnn",
        session_args("alice", "s1", &token, json!({"omp_threads": 0})),
        "ERROR_INVALID_ARGUMENT",
    )
    .await;
    drop(peer);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_counts_hold_across_concurrent_chunks_and_restarts() {
    let dir = temp_dir("chunks");
    let server = start(&dir).await;
    let (peer, _progress) = connect(&server.url).await;
    let token = enroll(&peer, "alice").await;
    let m = material();
    let upload = |session: &str, i: usize, total: usize, b64: &str| {
        json!({"client_id": "alice", "session_id": session, "file_name": m.input_name,
               "chunk_index": i, "total_chunks": total, "chunk_b64": b64, "auth_token": token})
    };

    // Eight chunks at once, two of them twice: each index is counted once.
    let parts = chunks(&m.input, 8);
    let sends: Vec<Value> = (0..8)
        .chain([3, 5])
        .map(|i| upload("s1", i, 8, &parts[i]))
        .collect();
    let acks = join_all(
        sends
            .into_iter()
            .map(|a| call(&peer, "upload_ciphertext_chunk", a)),
    )
    .await;
    for (is_error, ack) in &acks {
        assert!(!is_error, "{ack}");
    }
    let fresh = acks.iter().filter(|(_, a)| a["duplicate"] == false).count();
    assert_eq!(fresh, 8, "{acks:?}");
    let most = acks
        .iter()
        .filter_map(|(_, a)| a["received_chunks"].as_u64())
        .max();
    assert_eq!(most, Some(8));
    assert!(acks.iter().any(|(_, a)| a["object_complete"] == true));

    // Half an object and half a key bundle, then a restart: counting goes on from the store.
    let half = chunks(&m.input, 4);
    for i in [0, 1] {
        ok(
            &peer,
            "upload_ciphertext_chunk",
            upload("s2", i, 4, &half[i]),
        )
        .await;
    }
    let keys = chunks(&m.bundle, 4);
    let begin = ok(
        &peer,
        "provision_keys_begin",
        json!({"client_id": "carol", "algorithm_id": m.info["algorithm_id"],
               "parameter_id": m.info["parameter_id"], "bundle_bytes": m.bundle.len(),
               "bundle_sha256": sha256_hex(&m.bundle),
               "total_chunks": 4}),
    )
    .await;
    let pid = begin["provisioning_id"].clone();
    let key_chunk = |i: usize| {
        json!({"client_id": "carol", "provisioning_id": pid, "chunk_index": i,
               "total_chunks": 4, "chunk_b64": keys[i]})
    };
    for i in [0, 1] {
        ok(&peer, "provision_keys_chunk", key_chunk(i)).await;
    }
    drop(peer);
    server.stop().await;

    let server = start(&dir).await;
    let (peer, _progress) = connect(&server.url).await;
    let ack = ok(
        &peer,
        "upload_ciphertext_chunk",
        upload("s1", 3, 8, &parts[3]),
    )
    .await;
    assert_eq!(
        (
            &ack["duplicate"],
            &ack["received_chunks"],
            &ack["object_complete"]
        ),
        (&json!(true), &json!(8), &json!(true))
    );
    let ack = ok(
        &peer,
        "upload_ciphertext_chunk",
        upload("s2", 2, 4, &half[2]),
    )
    .await;
    assert_eq!(
        (&ack["received_chunks"], &ack["object_complete"]),
        (&json!(3), &json!(false))
    );
    let ack = ok(
        &peer,
        "upload_ciphertext_chunk",
        upload("s2", 3, 4, &half[3]),
    )
    .await;
    assert_eq!(
        (&ack["received_chunks"], &ack["object_complete"]),
        (&json!(4), &json!(true))
    );
    let ack = ok(&peer, "provision_keys_chunk", key_chunk(2)).await;
    assert_eq!(ack["received_chunks"], 3);
    let ack = ok(&peer, "provision_keys_chunk", key_chunk(3)).await;
    assert_eq!(ack["received_chunks"], 4);
    ok(
        &peer,
        "provision_keys_commit",
        json!({"client_id": "carol", "provisioning_id": pid}),
    )
    .await;
    for s in ["s1", "s2"] {
        ok(
            &peer,
            "remote_inference_cnn",
            session_args("alice", s, &token, json!({})),
        )
        .await;
    }

    // An object no model of these keys takes is refused at upload, naming the ones it takes,
    // and nothing is staged: not even its session.
    let e = fails(
        &peer,
        "upload_ciphertext_chunk",
        json!({"client_id": "alice", "session_id": "s3", "file_name": "notes.bin",
               "chunk_index": 0, "total_chunks": 1, "chunk_b64": encode_base64(b"x"),
               "auth_token": token}),
        "ERROR_INVALID_FILE_NAME",
    )
    .await;
    assert_eq!(e["details"]["input_objects"], json!([m.input_name]), "{e}");
    fails(
        &peer,
        "get_session_status",
        session_args("alice", "s3", &token, json!({})),
        "ERROR_UNKNOWN_SESSION",
    )
    .await;
    drop(peer);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// An operator's key-bundle limit below what a served model's keys take would make the model
/// unusable: the server raises it to the largest key set it serves, announces the raised limit,
/// and Step 0 of that model goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_bundle_limit_admits_every_served_model() {
    let dir = temp_dir("bundle-limit");
    let mut o = options(&dir);
    o.service.limits.max_key_bundle_bytes = 1024 * 1024;
    let server = start_with(o).await;
    let needed = server.service.registry().max_key_bundle_bytes();
    let bundle = material().bundle.len() as u64;
    assert_eq!(
        needed, bundle,
        "the formula gives the encoded bundle's size"
    );
    assert!(needed > 1024 * 1024);
    let (peer, _p) = connect(&server.url).await;
    let caps = ok(&peer, "describe_capabilities", json!({})).await;
    let announced = caps["limits"]["max_key_bundle_bytes"].as_u64().unwrap();
    assert!(announced >= needed, "{announced} < {needed}");
    enroll(&peer, "alice").await;
    server.stop().await;

    // With a generous operator limit, an upload is still bounded by its own parameter set's
    // key set: a client cannot park a bundle sized for the limit.
    let mut o = options(&temp_dir("bundle-limit-2"));
    o.service.limits.max_key_bundle_bytes = 64 * 1024 * 1024;
    let server = start_with(o).await;
    let (peer, _p) = connect(&server.url).await;
    let m = material();
    let mut args = common::remote::begin_args("bob", &m.info, &m.bundle, 40);
    args["bundle_bytes"] = json!(needed + 2 * 1024 * 1024);
    let v = fails(
        &peer,
        "provision_keys_begin",
        args,
        "ERROR_OBJECT_TOO_LARGE",
    )
    .await;
    assert!(
        v.to_string().contains("every key of this parameter set"),
        "{v}"
    );
    server.stop().await;
}

/// Level-aware keys: a bundle whose rotation keys serve only the levels the model uses them at
/// (as `client_spec.rotation_key_levels` asks) is smaller and accepted; one with a key below the
/// level its rotations run at is refused at Step 0, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keys_need_serve_only_the_levels_they_are_used_at() {
    use cipherinfer_ckks::KeyGenerator;
    use cipherinfer_ckks::serialization::ToBytes;
    let dir = temp_dir("key-levels");
    let server = start(&dir).await;
    let (peer, _p) = connect(&server.url).await;
    let m = material();
    assert_eq!(
        m.spec.rotation_key_levels.len(),
        m.spec.rotation_steps.len()
    );
    let mut kg = KeyGenerator::new(m.params.clone()).unwrap();
    let sk = kg.secret_key();
    let fitted = m.spec.evaluation_keys(&mut kg, &sk).unwrap().to_bytes();
    assert!(
        fitted.len() < m.bundle.len(),
        "{} >= {}",
        fitted.len(),
        m.bundle.len()
    );
    assert_eq!(fitted.len(), m.spec.evaluation_keys_bytes(&m.params));
    let commit = provision(&peer, "fitted", &m.info, &fitted).await;
    let v = ok(&peer, "provision_keys_commit", commit).await;
    assert!(v["auth_token"].is_string(), "{v}");

    // The step used highest in the circuit, its key made for level 0 only.
    let (at, _) = m
        .spec
        .rotation_key_levels
        .iter()
        .enumerate()
        .max_by_key(|(_, l)| **l)
        .unwrap();
    assert!(m.spec.rotation_key_levels[at] > 1);
    let steps: Vec<(i64, usize)> = m
        .spec
        .rotation_steps
        .iter()
        .zip(&m.spec.rotation_key_levels)
        .enumerate()
        .map(|(i, (&s, &l))| (s, if i == at { 0 } else { l }))
        .collect();
    let low = kg
        .evaluation_keys_to_levels(&sk, m.spec.relinearization, &steps, false)
        .unwrap()
        .to_bytes();
    let commit = provision(&peer, "too-low", &m.info, &low).await;
    let v = fails(
        &peer,
        "provision_keys_commit",
        commit,
        "ERROR_INVALID_GALOIS_KEY",
    )
    .await;
    assert!(v.to_string().contains("serve fewer levels"), "{v}");
    let g = m.params.galois_element(m.spec.rotation_steps[at]);
    assert!(v.to_string().contains(&g.to_string()), "{v}");
    server.stop().await;
}

/// With a memory budget the server plans its memory at start: it lowers the key sets it keeps
/// decoded to what fits, and refuses more concurrent inferences than the budget holds, with an
/// error that says how many fit and why.
#[test]
fn the_memory_budget_bounds_concurrent_inferences_and_the_key_cache() {
    use cipherinfer_remote::registry::MemoryNeeds;
    use cipherinfer_remote::service::fit_memory_budget;
    const MIB: u64 = 1 << 20;
    let needs = MemoryNeeds {
        masks: 100 * MIB,
        keys_per_client: 200 * MIB,
        working_per_inference: 50 * MIB,
    };
    let mut config = cipherinfer_remote::ServiceConfig {
        max_concurrent_inferences: 2,
        key_cache_entries: 8,
        ..Default::default()
    };
    // 100 + 2 x 250 = 600 MiB for two inferences; 400 MiB left hold two more key sets.
    fit_memory_budget(&needs, 1000 * MIB, &mut config).unwrap();
    assert_eq!(config.key_cache_entries, 4);
    // A generous budget leaves the cache as configured.
    let mut roomy = config.clone();
    roomy.key_cache_entries = 8;
    fit_memory_budget(&needs, 100_000 * MIB, &mut roomy).unwrap();
    assert_eq!(roomy.key_cache_entries, 8);
    // Four inferences need 1,100 MiB: refused, saying three fit.
    config.max_concurrent_inferences = 4;
    let e = fit_memory_budget(&needs, 1000 * MIB, &mut config).unwrap_err();
    assert_eq!(
        e.error_code,
        cipherinfer_protocol::ErrorCode::InvalidArgument
    );
    assert!(
        e.message.contains("holds 3 concurrent inferences"),
        "{}",
        e.message
    );

    // The served test model's own needs are measured from its plan and keys, and a server with
    // a budget below them does not start.
    let registry = common::remote::registry();
    let real = registry.memory_needs();
    assert!(real.keys_per_client > 0 && real.working_per_inference > 0);
    // The figure is what the keys the client makes actually allocate.
    let m = material();
    let mut kg = cipherinfer_ckks::KeyGenerator::new(m.params.clone()).unwrap();
    let sk = kg.secret_key();
    let keys = m.spec.evaluation_keys(&mut kg, &sk).unwrap();
    assert_eq!(real.keys_per_client, keys.memory_bytes() as u64);
    let mut o = options(&temp_dir("memory-budget"));
    o.service.memory_budget_bytes = Some(real.keys_per_client / 2);
    let Err(refused) = cipherinfer_remote::Server::with_registry(o, registry.clone()) else {
        panic!("a budget below one client's keys is refused");
    };
    assert!(refused.to_string().contains("memory budget"), "{refused}");
}

/// `serve --max-key-mib`: a model compiled at start-up asks clients for keys within the budget
/// (rotations composed of power-of-two keys), and a budget below the smallest key set stops the
/// start with its code.
#[test]
fn a_key_budget_bounds_the_keys_a_served_model_asks_for() {
    use cipherinfer_remote::registry::{ModelSource, Registry};
    let sources = [ModelSource::Shipped("mnist-cnn".into())];
    let free = Registry::load(&sources).unwrap();
    let m = free.get("mnist-cnn").unwrap();
    let full = m.info.client_spec.evaluation_keys_bytes(m.params()) as u64;
    let budget = full * 3 / 4;
    let bounded = Registry::load_with_key_budget(&sources, Some(budget)).unwrap();
    let m = bounded.get("mnist-cnn").unwrap();
    let spec = &m.info.client_spec;
    assert!(spec.evaluation_keys_bytes(m.params()) as u64 <= budget);
    let Err(e) = Registry::load_with_key_budget(&sources, Some(1 << 20)) else {
        panic!("a 1 MiB budget is below the smallest key set");
    };
    assert!(e.to_string().contains("key_budget_exceeded"), "{e}");
}
