//! The MCP handler driven in memory: an rmcp client on one end of a `tokio::io::duplex` pipe,
//! `serve_io` (the same code path as stdio) on the other. Nothing is spawned as a process.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;

use cipherinfer_local::server::{BoxFuture, serve_http, serve_http_listener, serve_io};
use cipherinfer_local::{ClassifyContext, LocalHandler, PrivateClassify};
use cipherinfer_protocol::local::{
    ClassifyTimings, FheDecryptArgs, PrivateClassifyArgs, PrivateClassifyResult,
};
use cipherinfer_protocol::{ErrorCode, Result, ToolError};
use common::*;
use rmcp::model::{CallToolRequestParams, ProgressNotificationParam};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Clone)]
struct Client {
    progress: mpsc::UnboundedSender<ProgressNotificationParam>,
}

impl ClientHandler for Client {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        let _ = self.progress.send(params);
    }
}

type Peer = RunningService<RoleClient, Client>;

async fn connect(
    handler: LocalHandler,
) -> (Peer, mpsc::UnboundedReceiver<ProgressNotificationParam>) {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let (read, write) = tokio::io::split(server_io);
    tokio::spawn(serve_io(handler, read, write));
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Client { progress: tx }
            .serve(client_io)
            .await
            .expect("connect"),
        rx,
    )
}

async fn call(peer: &Peer, name: &str, args: Value) -> (bool, Value) {
    let Value::Object(map) = args else {
        panic!("object")
    };
    let r = peer
        .call_tool(CallToolRequestParams::new(name.to_string()).with_arguments(map))
        .await
        .expect("tools/call");
    // The text content carries the object: the result, or the error (then alone, with no
    // structured content that the tool's output schema would not admit).
    let text = r
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap();
    let object: Value = serde_json::from_str(&text).unwrap();
    let is_error = r.is_error == Some(true);
    if is_error {
        assert_eq!(r.structured_content, None, "{object}");
        assert!(object["error_code"].is_string(), "{object}");
    } else {
        assert_eq!(r.structured_content.as_ref(), Some(&object));
    }
    (is_error, object)
}

async fn ok(peer: &Peer, name: &str, args: Value) -> Value {
    let (is_error, v) = call(peer, name, args).await;
    assert!(!is_error, "{name} failed: {v}");
    v
}

async fn fails(peer: &Peer, name: &str, args: Value, code: &str) -> Value {
    let (is_error, v) = call(peer, name, args).await;
    assert!(is_error, "{name} should fail with {code}: {v}");
    assert_eq!(v["error_code"], code, "{name}: {v}");
    assert_eq!(v["ok"], false);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_over_an_in_memory_transport() {
    let scratch = Scratch::new("mcp");
    let crypto = Arc::new(crypto(&scratch));
    let (peer, _) = connect(LocalHandler::new(crypto.clone())).await;

    let tools = peer.list_all_tools().await.unwrap();
    let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(
        names,
        [
            "generate_keys",
            "export_evaluation_keys",
            "fhe_encrypt",
            "fhe_decrypt"
        ]
    );
    for t in &tools {
        assert!(t.output_schema.is_some(), "{} has no output schema", t.name);
        assert_eq!(t.input_schema.get("type"), Some(&json!("object")));
        // A title and the annotations a host needs to decide what to confirm.
        let a = t.annotations.as_ref().expect("annotations");
        assert!(t.title.is_some() && a.title == t.title, "{}", t.name);
        assert!(a.read_only_hint.is_some() && a.open_world_hint == Some(false));
    }
    let hint = |name: &str| {
        let t = tools.iter().find(|t| t.name == name).unwrap();
        let a = t.annotations.clone().unwrap();
        (a.read_only_hint, a.destructive_hint)
    };
    assert_eq!(hint("fhe_decrypt"), (Some(true), Some(false)));
    // generate_keys may replace a key set (overwrite).
    assert_eq!(hint("generate_keys"), (Some(false), Some(true)));
    // generate_keys describes client_spec field by field (the compiler's ClientSpec).
    let keygen = tools.iter().find(|t| t.name == "generate_keys").unwrap();
    let schema = Value::Object((*keygen.input_schema).clone());
    assert_eq!(
        schema["properties"]["client_spec"]["$ref"],
        json!("#/$defs/ClientSpec")
    );
    let spec_schema = &schema["$defs"]["ClientSpec"];
    for f in [
        "parameters",
        "rotation_steps",
        "input",
        "input_level",
        "output_shape",
    ] {
        assert!(
            spec_schema["properties"].get(f).is_some(),
            "{f}: {spec_schema}"
        );
    }
    assert!(
        schema["$defs"]["ParametersLiteral"]["properties"]
            .get("log_n")
            .is_some()
    );

    let info = &served().info;
    // A client_spec of the wrong form is ERROR_INVALID_ARGUMENT naming the field.
    let mut bad_spec = serde_json::to_value(&info.client_spec).unwrap();
    bad_spec["input_level"] = json!("x");
    for spec in [bad_spec, json!({"foo": 1}), json!([1])] {
        let v = fails(
            &peer,
            "generate_keys",
            json!({"client_id": "mallory", "model": info.name, "client_spec": spec}),
            "ERROR_INVALID_ARGUMENT",
        )
        .await;
        assert!(
            v["message"].as_str().unwrap().contains("client_spec"),
            "{v}"
        );
    }
    let keys = ok(
        &peer,
        "generate_keys",
        json!({"client_id": "mallory", "model": info.name, "client_spec": info.client_spec,
               "labels": info.labels, "preprocessing": info.preprocessing}),
    )
    .await;
    assert_eq!(keys["parameter_id"], json!(info.parameter_id));
    assert_eq!(keys["galois_elements"], json!(info.galois_elements));
    fails(
        &peer,
        "generate_keys",
        json!({"client_id": "mallory", "model": info.name, "client_spec": info.client_spec}),
        "ERROR_CLIENT_EXISTS",
    )
    .await;
    let export = ok(
        &peer,
        "export_evaluation_keys",
        json!({"client_id": "mallory", "output_path": scratch.str("work/keys.bin")}),
    )
    .await;
    let bundle = std::fs::read(export["path"].as_str().unwrap()).unwrap();
    assert_eq!(export["bytes"], json!(bundle.len()));

    let image = copy_in(&scratch, &mnist_sample(0), "seven.png");
    let enc = ok(
        &peer,
        "fhe_encrypt",
        json!({"client_id": "mallory", "image_path": image, "session_dir": scratch.str("work/s1")}),
    )
    .await;
    assert_eq!(enc["objects"][0]["file_name"], "input-0.ct");
    assert!(enc["encrypted_payload_b64"].is_string());
    let input = std::fs::read(enc["objects"][0]["path"].as_str().unwrap()).unwrap();
    let out = evaluate_remote(&bundle, &[input]);
    let result = scratch.join("work/result.ct");
    std::fs::write(&result, cipherinfer_local::output::encode_output(&out)).unwrap();

    let d = ok(
        &peer,
        "fhe_decrypt",
        json!({"client_id": "mallory", "encrypted_logit_path": result, "top_k": 5}),
    )
    .await;
    assert_eq!(d["label"], "7");
    assert_eq!(d["class_index"], 7);
    assert_eq!(d["top_k"].as_array().unwrap().len(), 5);
    assert_eq!(d["output_shape"], json!([10]));
    assert!(d["precision_bits"].as_f64().unwrap() > 4.0);

    // Error paths: unknown client, wrong argument type, unknown field, bad path, unknown tool.
    fails(
        &peer,
        "fhe_decrypt",
        json!({"client_id": "nobody", "encrypted_logit_path": result}),
        "ERROR_UNKNOWN_CLIENT",
    )
    .await;
    fails(
        &peer,
        "fhe_decrypt",
        json!({"client_id": 7}),
        "ERROR_INVALID_ARGUMENT",
    )
    .await;
    fails(
        &peer,
        "fhe_decrypt",
        json!({"client_id": "mallory", "encrypted_logit_path": result, "extra": true}),
        "ERROR_INVALID_ARGUMENT",
    )
    .await;
    fails(
        &peer,
        "fhe_encrypt",
        json!({"client_id": "mallory", "image_path": "/etc/passwd", "session_dir": scratch.str("work/s2")}),
        "ERROR_PATH_NOT_ALLOWED",
    )
    .await;
    // A tool that is not listed (private_classify without a remote, or none at all) is the
    // JSON-RPC error MCP specifies, invalid params.
    for name in ["private_classify", "rm_rf"] {
        let err = peer
            .call_tool(
                CallToolRequestParams::new(name.to_string())
                    .with_arguments(json!({"image_path": image}).as_object().unwrap().clone()),
            )
            .await
            .expect_err("unknown tool");
        let rmcp::ServiceError::McpError(e) = err else {
            panic!("{name}: {err:?}")
        };
        assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS, "{name}");
        assert!(e.message.contains(name), "{}", e.message);
    }
    peer.cancel().await.unwrap();
}

/// A stand-in for the orchestrator: decrypts a result prepared beforehand and reports progress.
#[derive(Debug)]
struct FakeClassify {
    result: String,
}

impl PrivateClassify for FakeClassify {
    fn private_classify(
        &self,
        args: PrivateClassifyArgs,
        ctx: ClassifyContext,
    ) -> BoxFuture<'_, Result<PrivateClassifyResult>> {
        Box::pin(async move {
            ctx.progress.report(0.0, Some(2.0), "decrypting");
            if args.model.as_deref() == Some("fail") {
                return Err(ToolError::new(ErrorCode::Unavailable, "remote unreachable"));
            }
            let crypto = ctx.crypto.clone();
            let a = FheDecryptArgs {
                client_id: args.client_id.clone().unwrap_or_else(|| "mallory".into()),
                encrypted_logit_path: self.result.clone(),
                model: None,
                top_k: args.top_k,
                result_attestation: None,
            };
            let d = tokio::task::spawn_blocking(move || crypto.fhe_decrypt(&a))
                .await
                .map_err(|e| ToolError::new(ErrorCode::Internal, e.to_string()))??;
            ctx.progress.report(2.0, Some(2.0), "done");
            Ok(PrivateClassifyResult {
                ok: true,
                model: d.model,
                client_id: d.client_id,
                remote_url: "https://remote.example/mcp".into(),
                session_id: "s".into(),
                classification: d.classification,
                provisioned: false,
                bytes_uploaded: 0,
                evaluation_key_bytes: 0,
                timings: ClassifyTimings::default(),
                image: None,
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_classify_is_an_extension_point() {
    let scratch = Scratch::new("classify");
    let crypto = Arc::new(crypto(&scratch));
    crypto.generate_keys(&keygen_args("mallory")).unwrap();
    let (_, bundle) = crypto.store().evaluation_keys("mallory").unwrap();
    let image = copy_in(&scratch, &mnist_sample(0), "seven.png");
    let enc = crypto
        .fhe_encrypt(&cipherinfer_protocol::local::FheEncryptArgs {
            client_id: "mallory".into(),
            image_path: image.clone(),
            session_dir: scratch.str("work/s"),
            model: None,
            chunk_bytes: None,
            inline_max_bytes: None,
        })
        .unwrap();
    let out = evaluate_remote(&bundle, &[std::fs::read(&enc.objects[0].path).unwrap()]);
    let result = scratch.str("work/result.ct");
    std::fs::write(&result, cipherinfer_local::output::encode_output(&out)).unwrap();

    let handler =
        LocalHandler::new(crypto.clone()).with_private_classify(Arc::new(FakeClassify { result }));
    let (peer, mut progress) = connect(handler).await;
    let names: Vec<String> = peer
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(names.contains(&"private_classify".to_string()), "{names:?}");
    let v = ok(&peer, "private_classify", json!({"image_path": image})).await;
    assert_eq!(v["label"], "7");
    assert_eq!(v["provisioned"], false);
    let mut seen = Vec::new();
    while let Ok(Some(p)) =
        tokio::time::timeout(std::time::Duration::from_millis(500), progress.recv()).await
    {
        seen.push(p.message.unwrap_or_default());
    }
    assert_eq!(seen, ["decrypting", "done"]);
    fails(
        &peer,
        "private_classify",
        json!({"image_path": image, "model": "fail"}),
        "ERROR_UNAVAILABLE",
    )
    .await;
    fails(
        &peer,
        "private_classify",
        json!({"image_path": "relative.png"}),
        "ERROR_PATH_NOT_ALLOWED",
    )
    .await;
    peer.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_transport_is_loopback_only() {
    let scratch = Scratch::new("http");
    let handler = LocalHandler::new(Arc::new(crypto(&scratch)));
    let shutdown = tokio_util::sync::CancellationToken::new();
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:8080"] {
        let e = serve_http(handler.clone(), addr.parse().unwrap(), shutdown.clone())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{addr}");
    }
    let wildcard = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    assert!(
        serve_http_listener(handler.clone(), wildcard, shutdown.clone())
            .await
            .is_err()
    );

    // On loopback it serves: the liveness probe answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve_http_listener(handler, listener, shutdown.clone()));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
