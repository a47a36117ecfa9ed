//! Replicas as processes: two `cipherinfer serve --store s3://...` sharing a bucket on a real
//! S3-compatible server (`moto_server`) and one server identity; each is killed with SIGKILL in
//! the middle of a client's work — Step 0, an upload, an inference — and the client finishes on
//! the other, with nothing it was acknowledged lost and nothing half-written served: the chunks'
//! digests are checked at upload, the input's at inference (`input_sha256`), the result's by the
//! server's signature, and the decrypted answer against the network in cleartext.
#![cfg(all(feature = "server", feature = "client"))]
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;
#[path = "../../remote/tests/common/moto.rs"]
#[allow(dead_code, reason = "the remote tests use the rest")]
mod moto;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cipherinfer_ckks::serialization::{FromBytes, ToBytes};
use cipherinfer_ckks::{Ciphertext, Encoder, KeyGenerator, secret_key_pair};
use cipherinfer_client::RemoteClient;
use cipherinfer_compiler::ClientSpec;
use cipherinfer_model::{Manifest, onnx, plain};
use cipherinfer_protocol::integrity::{BundleClaim, IdentityKey};
use cipherinfer_protocol::remote::{
    ModelInfo, ProvisionKeysBeginArgs, ProvisionKeysBeginResult, ProvisionKeysChunkAck,
    ProvisionKeysChunkArgs, ProvisionKeysCommitArgs, ProvisionKeysResult, ProvisionMode,
    RemoteInferenceArgs, SessionArgs, SessionStatus, UploadChunkAck, UploadCiphertextChunkArgs,
};
use cipherinfer_protocol::validate::{encode_base64, sha256_hex};
use cipherinfer_protocol::{AuthToken, ErrorCode, ToolError};
use common::{BIN, Remote, temp};
use moto::Moto;

const MODEL: &str = "mnist-cnn";

/// A replica: `serve` on a free loopback port over `s3://bucket/svc`, logging JSON lines to
/// `dir/serve.log` and serving metrics on another free port.
fn replica(moto: &Moto, bucket: &str, dir: &Path, identity: &Path) -> Remote {
    std::fs::create_dir_all(dir).unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--model", MODEL])
        .arg("--store")
        .arg(format!("s3://{bucket}/svc"))
        .args(["--s3-endpoint", &moto.endpoint, "--s3-path-style"])
        .args(["--store-timeout-s", "5"])
        .arg("--data-dir")
        .arg(dir)
        .arg("--server-identity")
        .arg(identity)
        .args(["--log-format", "json", "--metrics-bind", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1");
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    Remote::spawn_logging(command, "cipherinfer remote server listening on ", log)
}

/// A replica's log: every line a JSON object.
fn log_of(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("serve.log"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `GET path` on `addr` over plain HTTP/1.1: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Keys, an encrypted image and its cleartext logits for the served model.
struct Material {
    info: ModelInfo,
    spec: ClientSpec,
    bundle: Vec<u8>,
    input: Vec<u8>,
    want: Vec<f64>,
    encoder: Encoder,
    decryptor: cipherinfer_ckks::Decryptor,
    params: std::sync::Arc<cipherinfer_ckks::Parameters>,
}

fn material(info: ModelInfo) -> Material {
    let spec: ClientSpec =
        serde_json::from_value(serde_json::to_value(&info.client_spec).unwrap()).unwrap();
    let params = spec.validate().unwrap();
    let mut kg = KeyGenerator::new(params.clone()).unwrap();
    let sk = kg.secret_key();
    let bundle = kg
        .evaluation_keys(&sk, spec.relinearization, &spec.rotation_steps, false)
        .unwrap()
        .to_bytes();
    let manifest = Manifest::shipped().unwrap();
    let entry = manifest.model(MODEL).unwrap().clone();
    let ir = onnx::import(&manifest.read_model(MODEL).unwrap().bytes).unwrap();
    let samples = manifest.load_samples(&entry.dataset).unwrap();
    let (x, _) = plain::sample_inputs(&samples, &entry.input)
        .unwrap()
        .swap_remove(0);
    let want = plain::run(&ir, &x).unwrap().into_data();
    let encoder = Encoder::new(params.clone());
    let (mut encryptor, decryptor) = secret_key_pair(sk).unwrap();
    let cts = spec
        .encrypt_input(&encoder, &mut encryptor, x.data())
        .unwrap();
    Material {
        info,
        spec,
        bundle,
        input: cts[0].to_bytes(),
        want,
        encoder,
        decryptor,
        params,
    }
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
}

/// A call to a replica that was killed fails with a transport error, never with an answer.
fn assert_gone<T: std::fmt::Debug>(r: Result<T, ToolError>) {
    let e = r.expect_err("a killed replica cannot answer");
    assert_ne!(e.error_code, ErrorCode::InvalidArgument, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_work_loses_nothing_and_the_client_finishes_on_another() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("killed");
    let dir = temp("replicas");
    let identity = dir.join("server-identity.key");
    let mut a = replica(&moto, "killed", &dir.join("a"), &identity);
    let b = replica(&moto, "killed", &dir.join("b"), &identity);
    let ca = RemoteClient::connect(&a.url).await.unwrap();
    let cb = RemoteClient::connect(&b.url).await.unwrap();
    let caps = ca.capabilities().await.unwrap();
    let info = caps.models.into_iter().find(|m| m.name == MODEL).unwrap();
    let server_key = caps.server_identity;
    assert_eq!(
        cb.capabilities().await.unwrap().server_identity,
        server_key,
        "replicas share one identity"
    );
    let m = material(info);
    let me = std::sync::Arc::new(IdentityKey::generate().unwrap());

    // Step 0: begun and half uploaded on A, which is killed; finished and committed on B.
    let parts: Vec<&[u8]> = m.bundle.chunks(m.bundle.len().div_ceil(4)).collect();
    let bundle_sha256 = sha256_hex(&m.bundle);
    let algorithm_id = m.info.algorithm_id.to_string();
    let begin: ProvisionKeysBeginResult = ca
        .call_signed(
            "provision_keys_begin",
            &ProvisionKeysBeginArgs {
                client_id: "alice".into(),
                algorithm_id: algorithm_id.clone(),
                parameter_id: m.info.parameter_id.clone(),
                model: Some(MODEL.into()),
                mode: ProvisionMode::New,
                bundle_bytes: m.bundle.len() as u64,
                bundle_sha256: bundle_sha256.clone(),
                total_chunks: parts.len() as u32,
                key_uri: None,
                auth_token: None,
                enrollment_token: None,
                bundle_signature: Some(
                    BundleClaim {
                        client_id: "alice",
                        algorithm_id: &algorithm_id,
                        parameter_id: &m.info.parameter_id,
                        bundle_sha256: &bundle_sha256,
                        bundle_bytes: m.bundle.len() as u64,
                    }
                    .sign(me.as_ref())
                    .unwrap(),
                ),
            },
            me.as_ref(),
        )
        .await
        .unwrap();
    let key_chunk = |i: usize| ProvisionKeysChunkArgs {
        client_id: "alice".into(),
        provisioning_id: begin.provisioning_id.clone(),
        chunk_index: i as u32,
        total_chunks: parts.len() as u32,
        chunk_b64: encode_base64(parts[i]),
        chunk_sha256: Some(sha256_hex(parts[i])),
    };
    for i in 0..2 {
        let _: ProvisionKeysChunkAck = ca
            .call_signed("provision_keys_chunk", &key_chunk(i), me.as_ref())
            .await
            .unwrap();
    }
    a.kill();
    assert_gone(
        ca.call_signed::<ProvisionKeysChunkAck>("provision_keys_chunk", &key_chunk(2), me.as_ref())
            .await,
    );
    // B has the acknowledged chunks: a re-send is a duplicate, not a conflict.
    for i in 1..parts.len() {
        let _: ProvisionKeysChunkAck = cb
            .call_signed("provision_keys_chunk", &key_chunk(i), me.as_ref())
            .await
            .unwrap();
    }
    let committed: ProvisionKeysResult = cb
        .call_signed(
            "provision_keys_commit",
            &ProvisionKeysCommitArgs {
                client_id: "alice".into(),
                provisioning_id: begin.provisioning_id.clone(),
            },
            me.as_ref(),
        )
        .await
        .unwrap();
    let token: AuthToken = committed.auth_token.clone();

    // Upload: half to B, which is killed; a restarted A takes the rest.
    let a2 = replica(&moto, "killed", &dir.join("a2"), &identity);
    let ca2 = RemoteClient::connect(&a2.url).await.unwrap();
    let pieces: Vec<&[u8]> = m.input.chunks(m.input.len().div_ceil(4)).collect();
    let name = m.info.input_objects[0].clone();
    let upload = |i: usize| UploadCiphertextChunkArgs {
        client_id: "alice".into(),
        session_id: "s1".into(),
        file_name: name.clone(),
        chunk_index: i as u32,
        total_chunks: pieces.len() as u32,
        chunk_b64: encode_base64(pieces[i]),
        auth_token: Some(token.clone()),
        chunk_sha256: Some(sha256_hex(pieces[i])),
    };
    for i in 0..2 {
        let _: UploadChunkAck = cb
            .call_signed("upload_ciphertext_chunk", &upload(i), me.as_ref())
            .await
            .unwrap();
    }
    let mut b = b;
    b.kill();
    assert_gone(
        cb.call_signed::<UploadChunkAck>("upload_ciphertext_chunk", &upload(2), me.as_ref())
            .await,
    );
    for i in 2..pieces.len() {
        let _: UploadChunkAck = ca2
            .call_signed("upload_ciphertext_chunk", &upload(i), me.as_ref())
            .await
            .unwrap();
    }
    let status: SessionStatus = ca2
        .call_signed(
            "get_session_status",
            &SessionArgs {
                client_id: "alice".into(),
                session_id: "s1".into(),
                auth_token: Some(token.clone()),
            },
            me.as_ref(),
        )
        .await
        .unwrap();
    assert_eq!(status.objects[0].missing_chunks, Vec::<u32>::new());
    assert_eq!(status.objects[0].bytes, m.input.len() as u64);

    // Inference: A2 is killed while it evaluates (or just after); the client asks B2, which
    // evaluates exactly the uploaded bytes and signs a result that decrypts to the answer.
    let b2 = replica(&moto, "killed", &dir.join("b2"), &identity);
    let cb2 = RemoteClient::connect(&b2.url).await.unwrap();
    let args = RemoteInferenceArgs {
        client_id: "alice".into(),
        session_id: "s1".into(),
        auth_token: Some(token.clone()),
        model: Some(MODEL.into()),
        input_sha256: Some(BTreeMap::from([(name.clone(), sha256_hex(&m.input))])),
        ..RemoteInferenceArgs::default()
    };
    let mut a2 = a2;
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let pending = {
        let args = args.clone();
        let me = me.clone();
        tokio::spawn(async move {
            ca2.infer(&args, me.as_ref(), &server_key, |p| {
                let _ = progress_tx.send(p);
            })
            .await
            .map(|_| ())
        })
    };
    // Killed once the evaluation reported its first step.
    let first = tokio::time::timeout(Duration::from_secs(30), progress_rx.recv()).await;
    assert!(matches!(first, Ok(Some(_))), "no progress from A2");
    a2.kill();
    // Its answer, if the last steps beat the kill, is not needed: the client asks B2.
    let _ = tokio::time::timeout(Duration::from_secs(30), pending).await;
    let (_, output) = cb2
        .infer(&args, me.as_ref(), &server_key, |_| {})
        .await
        .unwrap();
    let got = m
        .spec
        .decrypt_output(
            &m.encoder,
            &m.decryptor,
            &[Ciphertext::from_bytes(&m.params, &output, 1 << 20).unwrap()],
        )
        .unwrap();
    assert_eq!(argmax(&got), argmax(&m.want));
    let err = got
        .iter()
        .zip(&m.want)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(err < 0.05, "logit error {err}");

    // The logs: no token, key or ciphertext in any replica's (unpadded Base64 prefixes of what
    // each received); B2's has a line per tool call with a request id, and its metrics count
    // the inference.
    for (name, received) in [
        ("a", parts[0]),
        ("b", pieces[0]),
        ("a2", pieces[2]),
        ("b2", &m.input[..]),
    ] {
        let raw = std::fs::read_to_string(dir.join(name).join("serve.log")).unwrap();
        assert!(raw.contains("tool call"), "{name}: no call logged");
        assert!(
            !raw.contains(token.expose()),
            "{name}: the token leaked into the log"
        );
        let prefix = encode_base64(&received[..60]);
        assert!(
            !raw.contains(&prefix),
            "{name}: ciphertext or keys in the log"
        );
    }
    let log = log_of(&dir.join("b2"));
    let call = log
        .iter()
        .find(|l| l["message"] == "tool call" && l["tool"] == "remote_inference_cnn")
        .unwrap_or_else(|| panic!("no tool-call line in {log:?}"));
    assert_eq!(call["outcome"], "ok", "{call}");
    assert!(
        call["request_id"].as_str().is_some_and(|r| r.len() > 8),
        "{call}"
    );
    let metrics_at = log
        .iter()
        .find_map(|l| {
            l["message"]
                .as_str()
                .filter(|m| *m == "metrics at /metrics")
                .map(|_| l["address"].as_str().unwrap().to_string())
        })
        .unwrap();
    let (status, text) = http_get(&metrics_at, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(
        text.contains(
            r#"cipherinfer_tool_calls_total{tool="remote_inference_cnn",outcome="ok"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("cipherinfer_inference_seconds_count 1"),
        "{text}"
    );
    assert!(!text.contains("alice"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
