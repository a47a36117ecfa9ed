//! What an operator and a load balancer rely on: `/healthz` and `/readyz`, and draining before a
//! stop — running inferences finish, new ones get a retryable refusal, the replica reports not
//! ready, other calls are still served — and the metrics of what it did.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::remote::{
    call, connect, enroll, fails, material, ok, session_args, start, temp_dir, upload_input,
};
use serde_json::{Value, json};

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::Client::new().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_finishes_running_inferences_and_refuses_new_ones() {
    let dir = temp_dir("drain");
    let server = start(&dir).await;
    let (status, alive) = get(&format!("{}/healthz", server.base)).await;
    assert_eq!((status, &alive["status"]), (200, &json!("ok")));
    let (status, ready) = get(&format!("{}/readyz", server.base)).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["models"], json!(["mnist-cnn"]), "{ready}");

    let (peer, _) = connect(&server.url).await;
    let token = enroll(&peer, "alice").await;
    upload_input(&peer, "alice", &token, "s1", 2).await;

    // The metrics count calls by tool and outcome and the bytes received, and name no client.
    let text = server.service.metrics_text();
    for want in [
        r#"cipherinfer_tool_calls_total{tool="upload_ciphertext_chunk",outcome="ok"} 2"#,
        r#"cipherinfer_tool_calls_total{tool="provision_keys_commit",outcome="ok"} 1"#,
        "cipherinfer_inferences_running 0",
        "cipherinfer_inferences_queued 0",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
    let m = material();
    // Step 0 of the helper sends one chunk (not the last) twice; duplicates count as received.
    let received = format!(
        "cipherinfer_received_bytes_total {}",
        m.bundle.len() + m.bundle.len().div_ceil(4) + m.input.len()
    );
    assert!(text.contains(&received), "{received}\n{text}");
    assert!(!text.contains("alice") && !text.contains(&token), "{text}");

    // An inference in flight (the operator's slot stands for it) while the server drains.
    let slot = server.service.hold_inference_slot().await.unwrap();
    let drain = {
        let service = server.service.clone();
        tokio::spawn(async move { service.drain(Duration::from_secs(30)).await })
    };
    while !server.service.is_draining() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, ready) = get(&format!("{}/readyz", server.base)).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["error_code"], "ERROR_UNAVAILABLE", "{ready}");
    let e = fails(
        &peer,
        "remote_inference_cnn",
        session_args("alice", "s1", &token, json!({})),
        "ERROR_UNAVAILABLE",
    )
    .await;
    assert_eq!(e["retryable"], true, "{e}");
    assert!(e["retry_after_ms"].as_u64().is_some(), "{e}");
    let text = server.service.metrics_text();
    for want in [
        r#"cipherinfer_tool_calls_total{tool="remote_inference_cnn",outcome="ERROR_UNAVAILABLE"} 1"#,
        "cipherinfer_inferences_running 1",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
    // Everything but inference is still served while the running one finishes.
    ok(
        &peer,
        "get_session_status",
        session_args("alice", "s1", &token, json!({})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !drain.is_finished(),
        "the drain waits for the running inference"
    );
    drop(slot);
    assert!(drain.await.unwrap(), "finished within the deadline");
    server.stop().await;

    // A real inference, queued behind the operator's slot, gets the slot when it is released
    // and the drain that starts right then waits for its answer, which arrives intact.
    let server = start(&temp_dir("drain-real")).await;
    let (peer, _) = connect(&server.url).await;
    let token = enroll(&peer, "alice").await;
    upload_input(&peer, "alice", &token, "s1", 2).await;
    let slot = server.service.hold_inference_slot().await.unwrap();
    let call = {
        let token = token.clone();
        tokio::spawn(async move {
            call(
                &peer,
                "remote_inference_cnn",
                session_args("alice", "s1", &token, json!({})),
            )
            .await
        })
    };
    while !server
        .service
        .metrics_text()
        .contains("cipherinfer_inferences_queued 1")
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(slot);
    assert!(server.service.drain(Duration::from_secs(30)).await);
    let (failed, v) = call.await.unwrap();
    assert!(!failed, "{v}");
    assert_eq!(v["requires_decryption"], true, "{v}");
    server.stop().await;

    // A running inference that outlives the deadline is reported.
    let server = start(&temp_dir("drain-late")).await;
    let _slot = server.service.hold_inference_slot().await.unwrap();
    assert!(!server.service.drain(Duration::from_millis(100)).await);
    server.stop().await;
}
