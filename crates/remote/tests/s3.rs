//! The remote server on a real S3-compatible store (`moto_server`): the store's guarantees
//! (create-if-absent, compare-and-swap, prefixes), two replicas sharing one bucket with any call
//! reaching either (Step 0, upload, inference, results, replay protection, quotas, the garbage
//! collector's lease), a restart of every replica, and a store that is down and comes back.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cipherinfer_ckks::Ciphertext;
use cipherinfer_ckks::serialization::FromBytes;
use cipherinfer_protocol::ErrorCode;
use cipherinfer_protocol::validate::{decode_base64_limited, sha256_hex};
use cipherinfer_remote::ServerOptions;
use cipherinfer_remote::store::{ChunkWrite, path};
use common::moto::{Moto, free_port, location, options_for};
use common::remote::{
    Peer, begin_args, call, call_unsigned, chunks, connect, enroll, fails, material, ok, options,
    provision, session_args, signed, start_with, temp_dir, upload_input,
};
use serde_json::{Value, json};

/// Options of one replica: its own local directory, the shared bucket and identity.
fn replica(dir: &Path, endpoint: &str, bucket: &str, identity: &Path) -> ServerOptions {
    let mut o = options(dir);
    o.store = Some(location(bucket, "cipherinfer"));
    o.s3 = options_for(endpoint);
    o.identity_file = Some(identity.to_path_buf());
    o
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
}

/// Fetches a by-reference result and checks it decrypts to the model's answer.
async fn fetch_and_check(peer: &Peer, token: &str, session: &str, result_ref: &Value) {
    let m = material();
    let mut fetched = Vec::new();
    for i in 0..result_ref["total_chunks"].as_u64().unwrap() {
        let c = ok(
            peer,
            "fetch_result_chunk",
            session_args(
                "alice",
                session,
                token,
                json!({"result_id": result_ref["result_id"], "chunk_index": i}),
            ),
        )
        .await;
        fetched.extend(decode_base64_limited(c["chunk_b64"].as_str().unwrap(), 1 << 20).unwrap());
    }
    assert_eq!(sha256_hex(&fetched), result_ref["sha256"].as_str().unwrap());
    let got = m
        .spec
        .decrypt_output(
            &m.encoder,
            &m.decryptor,
            &[Ciphertext::from_bytes(&m.params, &fetched, 1 << 20).unwrap()],
        )
        .unwrap();
    assert_eq!(argmax(&got), argmax(&m.want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_store_keeps_what_it_acknowledged_and_swaps_atomically() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("guarantees");
    let store = moto.store("guarantees", "a/b");
    assert!(store.is_shared());

    // Create-if-absent: an acknowledged chunk is never overwritten.
    let chunk = path(&["x", "00001"]);
    assert_eq!(
        store.put_once(&chunk, b"one".to_vec()).await.unwrap(),
        ChunkWrite::Stored
    );
    assert_eq!(
        store.put_once(&chunk, b"one".to_vec()).await.unwrap(),
        ChunkWrite::Duplicate
    );
    let e = store.put_once(&chunk, b"two".to_vec()).await.unwrap_err();
    assert_eq!(e.error_code, ErrorCode::ChunkConflict);
    assert_eq!(store.get(&chunk).await.unwrap().unwrap(), b"one");

    // Compare-and-swap: of two writers holding one version, one wins.
    let lease = path(&["lease"]);
    assert!(
        store
            .put_if_version(&lease, b"a".to_vec(), None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_if_version(&lease, b"b".to_vec(), None)
            .await
            .unwrap()
    );
    let (bytes, version) = store.get_versioned(&lease).await.unwrap().unwrap();
    assert_eq!(bytes, b"a");
    assert!(
        store
            .put_if_version(&lease, b"c".to_vec(), Some(&version))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_if_version(&lease, b"d".to_vec(), Some(&version))
            .await
            .unwrap(),
        "a stale version must lose"
    );
    assert_eq!(store.get(&lease).await.unwrap().unwrap(), b"c");

    // Prefixes isolate stores in one bucket; listings and prefix deletion.
    let other = moto.store("guarantees", "a/other");
    assert!(other.get(&chunk).await.unwrap().is_none());
    store
        .put(&path(&["x", "y", "z"]), b"zz".to_vec())
        .await
        .unwrap();
    assert_eq!(store.children(&path(&["x"])).await.unwrap(), vec!["y"]);
    assert_eq!(store.list(&path(&["x"])).await.unwrap().len(), 2);
    assert_eq!(store.delete_prefix(&path(&["x"])).await.unwrap(), 5);
    assert!(store.list(&path(&["x"])).await.unwrap().is_empty());
    assert!(store.get(&chunk).await.unwrap().is_none());
    assert_eq!(store.get(&lease).await.unwrap().unwrap(), b"c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_bucket_serve_any_call_and_survive_a_full_restart() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("replicas");
    let dir = temp_dir("s3-replicas");
    std::fs::create_dir_all(&dir).unwrap();
    let identity = dir.join("server-identity.key");
    let a = start_with(replica(
        &dir.join("a"),
        &moto.endpoint,
        "replicas",
        &identity,
    ))
    .await;
    let b = start_with(replica(
        &dir.join("b"),
        &moto.endpoint,
        "replicas",
        &identity,
    ))
    .await;
    assert_eq!(
        a.service.server_identity(),
        b.service.server_identity(),
        "replicas behind one address sign with one identity"
    );
    let (pa, _) = connect(&a.url).await;
    let (pb, _) = connect(&b.url).await;
    let m = material();

    // Step 0 begun and uploaded on A, committed on B.
    let commit = provision(&pa, "alice", &m.info, &m.bundle).await;
    let token = ok(&pb, "provision_keys_commit", commit).await["auth_token"]
        .as_str()
        .unwrap()
        .to_string();

    // The input's chunks alternate between the replicas; either sees the whole object.
    let pieces = chunks(&m.input, 4);
    for (i, c) in pieces.iter().enumerate() {
        let peer = if i % 2 == 0 { &pa } else { &pb };
        ok(
            peer,
            "upload_ciphertext_chunk",
            session_args(
                "alice",
                "s1",
                &token,
                json!({"file_name": m.input_name, "chunk_index": i,
                       "total_chunks": pieces.len(), "chunk_b64": c}),
            ),
        )
        .await;
    }
    let status = ok(
        &pa,
        "get_session_status",
        session_args("alice", "s1", &token, json!({})),
    )
    .await;
    assert_eq!(status["objects"][0]["received_chunks"], 4, "{status}");
    assert_eq!(status["objects"][0]["bytes"], m.input.len(), "{status}");

    // Inference on B, the result fetched from A.
    let v = ok(
        &pb,
        "remote_inference_cnn",
        session_args("alice", "s1", &token, json!({"max_inline_bytes": 0})),
    )
    .await;
    let result_ref = v["result_ref"].clone();
    fetch_and_check(&pa, &token, "s1", &result_ref).await;

    // One signed call is accepted once, whichever replica gets it first.
    let once = signed(
        "get_session_status",
        session_args("alice", "s1", &token, json!({})),
    );
    let (failed, _) = call_unsigned(&pa, "get_session_status", once.clone()).await;
    assert!(!failed);
    let (failed, e) = call_unsigned(&pb, "get_session_status", once.clone()).await;
    assert!(failed);
    assert_eq!(e["error_code"], "ERROR_REPLAY", "{e}");
    let (failed, e) = call_unsigned(&pa, "get_session_status", once.clone()).await;
    assert!(failed);
    assert_eq!(e["error_code"], "ERROR_REPLAY", "{e}");

    // One replica at a time collects garbage: the lease holder renews, the other skips.
    let first = a.service.collect_garbage().await.unwrap();
    assert!(!first.skipped, "{first:?}");
    assert!(b.service.collect_garbage().await.unwrap().skipped);
    assert!(!a.service.collect_garbage().await.unwrap().skipped);

    // Every replica stops; a new one finds everything acknowledged, and the replayed call is
    // still refused (the nonce is in the store, not in a stopped process).
    drop((pa, pb));
    a.stop().await;
    b.stop().await;
    let c = start_with(replica(
        &dir.join("c"),
        &moto.endpoint,
        "replicas",
        &identity,
    ))
    .await;
    let (pc, _) = connect(&c.url).await;
    fetch_and_check(&pc, &token, "s1", &result_ref).await;
    let (failed, e) = call_unsigned(&pc, "get_session_status", once).await;
    assert!(failed);
    assert_eq!(e["error_code"], "ERROR_REPLAY", "{e}");
    let v = ok(
        &pc,
        "remote_inference_cnn",
        session_args("alice", "s1", &token, json!({"max_inline_bytes": 0})),
    )
    .await;
    fetch_and_check(&pc, &token, "s1", &v["result_ref"]).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_cannot_multiply_a_clients_quota() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("quota");
    let dir = temp_dir("s3-quota");
    std::fs::create_dir_all(&dir).unwrap();
    let identity = dir.join("server-identity.key");
    let m = material();
    let pieces = chunks(&m.input, 4);
    let piece = m.input.len().div_ceil(4) as u64;
    let start = |name: &str| {
        let mut o = replica(&dir.join(name), &moto.endpoint, "quota", &identity);
        // Three of the four chunks fit.
        o.service.max_bytes_per_client = 3 * piece + piece / 2;
        start_with(o)
    };
    let a = start("a").await;
    let b = start("b").await;
    let (pa, _) = connect(&a.url).await;
    let (pb, _) = connect(&b.url).await;
    let token = enroll(&pa, "alice").await;
    let upload = |i: usize| {
        session_args(
            "alice",
            "s1",
            &token,
            json!({"file_name": m.input_name, "chunk_index": i,
                   "total_chunks": pieces.len(), "chunk_b64": pieces[i]}),
        )
    };
    ok(&pa, "upload_ciphertext_chunk", upload(0)).await;
    ok(&pb, "upload_ciphertext_chunk", upload(1)).await;
    ok(&pb, "upload_ciphertext_chunk", upload(2)).await;
    // A counted one chunk when it last listed; once its count is older than the refresh
    // interval it lists again and sees the three the client has staged through both.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let e = fails(
        &pa,
        "upload_ciphertext_chunk",
        upload(3),
        "ERROR_QUOTA_EXCEEDED",
    )
    .await;
    assert_eq!(e["details"]["staged_bytes"], 3 * piece, "{e}");
    // Nothing was lost or half-written: the three chunks are intact, the fourth absent.
    let status = ok(
        &pb,
        "get_session_status",
        session_args("alice", "s1", &token, json!({})),
    )
    .await;
    assert_eq!(
        status["objects"][0]["missing_chunks"],
        json!([3]),
        "{status}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_gets_a_retryable_error_and_the_server_recovers_with_it() {
    if !Moto::available() {
        return;
    }
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = temp_dir("s3-down");
    std::fs::create_dir_all(&dir).unwrap();
    let server = start_with(replica(
        &dir.join("a"),
        &endpoint,
        "later",
        &dir.join("server-identity.key"),
    ))
    .await;
    let (peer, _) = connect(&server.url).await;
    let m = material();

    // Nothing answers at the store's address: a bounded wait, then ERROR_UNAVAILABLE, which a
    // client may retry.
    let t0 = Instant::now();
    let (failed, e) = call(
        &peer,
        "provision_keys_begin",
        begin_args("alice", &m.info, &m.bundle, 4),
    )
    .await;
    assert!(failed);
    assert_eq!(e["error_code"], "ERROR_UNAVAILABLE", "{e}");
    assert_eq!(e["retryable"], true, "{e}");
    assert!(e["retry_after_ms"].as_u64().is_some(), "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "waited {:?}",
        t0.elapsed()
    );

    // The store comes up: the same server process works, without a restart.
    let moto = Moto::start_on(port).unwrap();
    moto.create_bucket("later");
    let token = enroll(&peer, "alice").await;
    upload_input(&peer, "alice", &token, "s9", 2).await;
    let status = ok(
        &peer,
        "get_session_status",
        session_args("alice", "s9", &token, json!({})),
    )
    .await;
    assert_eq!(
        status["objects"][0]["missing_chunks"],
        json!([]),
        "{status}"
    );
    server.stop().await;
}
