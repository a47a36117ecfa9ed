//! What request integrity costs per call: the client signing a call (canonical bytes, SHA-256,
//! Ed25519) and the server taking the signature out, digesting the rest and verifying it, for a
//! small call, for upload calls carrying a chunk and for strings full of escapes; plus one
//! replay-window check.
//! `cargo bench -p cipherinfer-protocol --bench integrity`.

use std::hint::black_box;

use base64::Engine as _;
use cipherinfer_protocol::integrity::{IdentityKey, ReplayGuard, SignedCall, sign_call};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

fn upload_call(chunk_bytes: usize) -> Value {
    let chunk: Vec<u8> = (0..chunk_bytes).map(|i| (i * 131 % 251) as u8).collect();
    json!({
        "client_id": "alice",
        "session_id": "0123456789abcdef0123456789abcdef",
        "file_name": "input.ct",
        "chunk_index": 0,
        "total_chunks": 1,
        "chunk_b64": base64::engine::general_purpose::STANDARD.encode(&chunk),
        "chunk_sha256": "00".repeat(32),
        "auth_token": "cit_0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab",
    })
}

fn escapes(bytes: usize, every: usize) -> Value {
    let text: String = (0..bytes)
        .map(|i| if i % every == every - 1 { '\n' } else { 'A' })
        .collect();
    json!({ "client_id": "alice", "text": text })
}

fn small_call() -> Value {
    json!({
        "client_id": "alice",
        "session_id": "0123456789abcdef0123456789abcdef",
        "auth_token": "cit_0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab",
    })
}

fn bench_signing(c: &mut Criterion) {
    let key = IdentityKey::generate().expect("identity");
    let public = key.public();
    let cases = [
        ("get_session_status", "small", small_call()),
        (
            "upload_ciphertext_chunk",
            "chunk=1MiB",
            upload_call(1 << 20),
        ),
        (
            "upload_ciphertext_chunk",
            "chunk=8MiB",
            upload_call(8 << 20),
        ),
        // Worst cases for the escaping scan: an escape in every 64-byte block, and every byte.
        ("any_tool", "escape_every_64B_1MiB", escapes(1 << 20, 64)),
        ("any_tool", "escape_every_byte_1MiB", escapes(1 << 20, 1)),
    ];
    for (tool, label, call) in cases {
        let mut group = c.benchmark_group(format!("request_signature/{label}"));
        let bytes = serde_json::to_vec(&call).expect("json").len() as u64;
        group.throughput(Throughput::Bytes(bytes));
        if bytes > 1 << 20 {
            group.sample_size(20);
        }
        group.bench_function("sign", |b| {
            b.iter_batched(
                || call.clone(),
                |mut args| sign_call(&key, tool, black_box(&mut args)).expect("sign"),
                BatchSize::LargeInput,
            );
        });
        let mut signed = call.clone();
        sign_call(&key, tool, &mut signed).expect("sign");
        let Value::Object(signed) = signed else {
            unreachable!("a JSON object")
        };
        group.bench_function("take_and_verify", |b| {
            b.iter_batched(
                || signed.clone(),
                |mut args| {
                    let call = SignedCall::take(tool, black_box(&mut args))
                        .expect("take")
                        .expect("signed");
                    call.verify(&public).expect("verify");
                },
                BatchSize::LargeInput,
            );
        });
        group.finish();
    }

    // 1000 requests per simulated millisecond and a 100 ms window: about 100,000 nonces held.
    c.bench_function("replay_guard/check_100k_held", |b| {
        let mut guard = ReplayGuard::new(100, 0, 1_000_000);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let now = i / 1000;
            let nonce = format!("{i:032x}");
            guard
                .check("alice", black_box(&nonce), now, now)
                .expect("fresh");
        });
    });
}

criterion_group!(benches, bench_signing);
criterion_main!(benches);
