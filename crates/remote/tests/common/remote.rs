//! Helpers for driving the real remote server over HTTP on loopback: one model compilation and
//! one key set per test binary, servers on `127.0.0.1:0` over a fresh data directory, an rmcp
//! client, and tool calls that assert their outcome.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cipherinfer_ckks::serialization::ToBytes;
use cipherinfer_ckks::{Decryptor, Encoder, KeyGenerator, Parameters, secret_key_pair};
use cipherinfer_compiler::ClientSpec;
use cipherinfer_model::{Manifest, plain};
use cipherinfer_protocol::integrity::{
    BundleClaim, IdentityKey, REQUEST_SIGNATURE_FIELD, sign_call,
};
use cipherinfer_protocol::validate::{encode_base64, sha256_hex};
use cipherinfer_remote::{Registry, Server, ServerOptions, Service};
use rmcp::model::{CallToolRequestParams, ProgressNotificationParam};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The model every test serves: it evaluates in well under a second.
pub const MODEL: &str = "mnist-cnn";

/// An rmcp client that forwards the progress notifications it receives.
#[derive(Clone)]
pub struct Client {
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

/// A connected client.
pub type Peer = RunningService<RoleClient, Client>;

/// The served models, compiled once per test binary.
pub fn registry() -> Arc<Registry> {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| Arc::new(Registry::shipped(&[MODEL.to_string()]).expect("model compiles")))
        .clone()
}

/// What a client holds: the model's description, its key bundle and one encrypted image.
pub struct Material {
    /// `ModelInfo` as `describe_capabilities` shows it.
    pub info: Value,
    /// The client specification, validated.
    pub spec: ClientSpec,
    /// Its CKKS parameters.
    pub params: Arc<Parameters>,
    /// The evaluation-key bundle for Step 0.
    pub bundle: Vec<u8>,
    /// The first shipped test image, encrypted.
    pub input: Vec<u8>,
    /// The name the session must give the input.
    pub input_name: String,
    /// The plaintext model's logits for that image.
    pub want: Vec<f64>,
    /// Encoder and decryptor to read results.
    pub encoder: Encoder,
    /// The secret side.
    pub decryptor: Decryptor,
}

/// Keys and an encrypted input, made once per test binary.
pub fn material() -> &'static Material {
    static MATERIAL: OnceLock<Material> = OnceLock::new();
    MATERIAL.get_or_init(|| {
        let registry = registry();
        let served = registry.get(MODEL).expect("served");
        let info = serde_json::to_value(&served.info).expect("info");
        let spec: ClientSpec =
            serde_json::from_value(info["client_spec"].clone()).expect("client spec");
        let params = spec.validate().expect("valid spec");
        let mut kg = KeyGenerator::new(params.clone()).expect("key generator");
        let sk = kg.secret_key();
        let bundle = kg
            .evaluation_keys(&sk, spec.relinearization, &spec.rotation_steps, false)
            .expect("keys")
            .to_bytes();
        let manifest = Manifest::shipped().expect("manifest");
        let entry = manifest.model(MODEL).expect("entry").clone();
        let ir = cipherinfer_model::onnx::import(&manifest.read_model(MODEL).expect("model").bytes)
            .expect("import");
        let samples = manifest.load_samples(&entry.dataset).expect("samples");
        let (x, _) = plain::sample_inputs(&samples, &entry.input)
            .expect("inputs")
            .swap_remove(0);
        let want = plain::run(&ir, &x).expect("reference").into_data();
        let encoder = Encoder::new(params.clone());
        let (mut encryptor, decryptor) = secret_key_pair(sk).expect("secret key");
        let cts = spec
            .encrypt_input(&encoder, &mut encryptor, x.data())
            .expect("encrypt");
        assert_eq!(cts.len(), 1, "the test model takes one input ciphertext");
        Material {
            input_name: info["input_objects"][0]
                .as_str()
                .expect("object")
                .to_string(),
            info,
            spec,
            params,
            bundle,
            input: cts[0].to_bytes(),
            want,
            encoder,
            decryptor,
        }
    })
}

/// A fresh data directory under the system's temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "cipherinfer-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ))
}

/// The options the tests start from: the test model over `dir`, 4 MiB chunks at most.
pub fn options(dir: &Path) -> ServerOptions {
    let mut o = ServerOptions {
        data_dir: dir.to_path_buf(),
        models: vec![MODEL.into()],
        ..ServerOptions::default()
    };
    // Chunks above 4 MiB are refused by the tool (the HTTP limit stays at the 32 MiB default).
    o.service.limits.max_chunk_bytes = 4 * 1024 * 1024;
    o
}

/// A server listening on loopback.
pub struct Running {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// `{base}/mcp`.
    pub url: String,
    /// The tools' state, for what only an operator can do.
    pub service: Arc<Service>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Starts a server with `options`.
pub async fn start_with(options: ServerOptions) -> Running {
    let server = Server::with_registry(options, registry()).expect("server builds");
    let service = server.service.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(listener, shutdown.clone()));
    Running {
        url: format!("{base}/mcp"),
        base,
        service,
        shutdown,
        task,
    }
}

/// Starts a server with the default test options over `dir`.
pub async fn start(dir: &Path) -> Running {
    start_with(options(dir)).await
}

impl Running {
    /// Shuts down and waits for the server to stop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

/// Connects over Streamable HTTP; returns the client and its progress notifications.
pub async fn connect(url: &str) -> (Peer, mpsc::UnboundedReceiver<ProgressNotificationParam>) {
    connect_config(StreamableHttpClientTransportConfig::with_uri(
        url.to_string(),
    ))
    .await
}

/// Connects over Streamable HTTP sending `Authorization: Bearer <token>` with every request.
pub async fn connect_with_bearer(
    url: &str,
    token: &str,
) -> (Peer, mpsc::UnboundedReceiver<ProgressNotificationParam>) {
    connect_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_string()).auth_header(token),
    )
    .await
}

/// Connects over Streamable HTTP from the local address `from` (another loopback address, as
/// another host would be).
pub async fn connect_from(
    url: &str,
    from: std::net::IpAddr,
) -> (Peer, mpsc::UnboundedReceiver<ProgressNotificationParam>) {
    let http = reqwest::Client::builder()
        .local_address(from)
        .build()
        .expect("client");
    connect_config_with(
        http,
        StreamableHttpClientTransportConfig::with_uri(url.to_string()),
    )
    .await
}

async fn connect_config(
    config: StreamableHttpClientTransportConfig,
) -> (Peer, mpsc::UnboundedReceiver<ProgressNotificationParam>) {
    connect_config_with(reqwest::Client::new(), config).await
}

async fn connect_config_with(
    http: reqwest::Client,
    config: StreamableHttpClientTransportConfig,
) -> (Peer, mpsc::UnboundedReceiver<ProgressNotificationParam>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let transport =
        StreamableHttpClientTransport::with_client(http, config.max_sse_event_size(64 << 20));
    (
        Client { progress: tx }
            .serve(transport)
            .await
            .expect("connect"),
        rx,
    )
}

/// The arguments map of a JSON object.
pub fn arguments(args: Value) -> serde_json::Map<String, Value> {
    let Value::Object(map) = args else {
        panic!("arguments must be an object")
    };
    map
}

/// The test identity of `client_id`: derived from the id, so every helper signs alike.
pub fn identity(client_id: &str) -> IdentityKey {
    let digest = sha256_hex(format!("cipherinfer-test-identity:{client_id}").as_bytes());
    let seed = hex::decode(digest).expect("hex");
    IdentityKey::from_seed_bytes(&seed).expect("seed")
}

/// `args` as a well-behaved client sends them: `provision_keys_begin` gets a bundle signature
/// (unless it has one), and every call but `describe_capabilities` a request signature, both
/// by the test identity of the `client_id` in the arguments.
pub fn signed(name: &str, mut args: Value) -> Value {
    let Some(client) = args["client_id"].as_str().map(str::to_string) else {
        return args;
    };
    if name == "describe_capabilities" || args.get(REQUEST_SIGNATURE_FIELD).is_some() {
        return args;
    }
    let key = identity(&client);
    if name == "provision_keys_begin" && args.get("bundle_signature").is_none() {
        let sig = BundleClaim {
            client_id: &client,
            algorithm_id: args["algorithm_id"].as_str().unwrap_or(""),
            parameter_id: args["parameter_id"].as_str().unwrap_or(""),
            bundle_sha256: args["bundle_sha256"].as_str().unwrap_or(""),
            bundle_bytes: args["bundle_bytes"].as_u64().unwrap_or(0),
        }
        .sign(&key)
        .expect("bundle signature");
        args["bundle_signature"] = serde_json::to_value(sig).expect("json");
    }
    sign_call(&key, name, &mut args).expect("request signature");
    args
}

/// Calls a tool, signed as [`signed`] does; returns (is_error, the result or the error object).
pub async fn call(peer: &Peer, name: &str, args: Value) -> (bool, Value) {
    call_unsigned(peer, name, signed(name, args)).await
}

/// Calls a tool with exactly `args`; returns (is_error, the result or the error object).
pub async fn call_unsigned(peer: &Peer, name: &str, args: Value) -> (bool, Value) {
    let r = peer
        .call_tool(CallToolRequestParams::new(name.to_string()).with_arguments(arguments(args)))
        .await
        .expect("tools/call");
    let is_error = r.is_error == Some(true);
    if !is_error {
        return (false, r.structured_content.unwrap_or(Value::Null));
    }
    // An error is the JSON text of its object, with no structured content (which the tool's
    // output schema would not admit).
    assert_eq!(r.structured_content, None, "{name}: {r:?}");
    let text = r
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default();
    let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert!(error["error_code"].is_string(), "{name}: {text}");
    (true, error)
}

/// The error object of a failed `tools/call` result in its JSON-RPC form: the JSON text of its
/// content, with no `structuredContent` beside it.
pub fn error_object(result: &Value) -> Value {
    assert_eq!(result["isError"], true, "{result}");
    assert!(result.get("structuredContent").is_none(), "{result}");
    serde_json::from_str(result["content"][0]["text"].as_str().unwrap_or_default())
        .unwrap_or(Value::Null)
}

/// Calls a tool that must succeed; returns its result.
pub async fn ok(peer: &Peer, name: &str, args: Value) -> Value {
    let (is_error, v) = call(peer, name, args).await;
    assert!(!is_error, "{name} failed: {v}");
    v
}

/// Calls a tool that must fail with `code`; returns the error payload.
pub async fn fails(peer: &Peer, name: &str, args: Value, code: &str) -> Value {
    let (is_error, v) = call(peer, name, args).await;
    assert!(is_error, "{name} should fail with {code}: {v}");
    assert_eq!(v["error_code"], code, "{name}: {v}");
    v
}

/// `bytes` in `n` Base64 chunks.
pub fn chunks(bytes: &[u8], n: usize) -> Vec<String> {
    bytes
        .chunks(bytes.len().div_ceil(n))
        .map(encode_base64)
        .collect()
}

/// `provision_keys_begin` arguments (mode new, unsigned) announcing `bundle` for the model
/// `info` in `total_chunks` chunks.
pub fn begin_args(client_id: &str, info: &Value, bundle: &[u8], total_chunks: usize) -> Value {
    json!({
        "client_id": client_id,
        "algorithm_id": info["algorithm_id"],
        "parameter_id": info["parameter_id"],
        "model": info["name"],
        "bundle_bytes": bundle.len(),
        "bundle_sha256": sha256_hex(bundle),
        "total_chunks": total_chunks,
    })
}

/// Step 0 up to the commit for `client_id` with `bundle` (four chunks, out of order, one
/// re-sent); returns the commit arguments.
pub async fn provision(peer: &Peer, client_id: &str, info: &Value, bundle: &[u8]) -> Value {
    let parts = chunks(bundle, 4);
    let begin = ok(
        peer,
        "provision_keys_begin",
        begin_args(client_id, info, bundle, parts.len()),
    )
    .await;
    let pid = begin["provisioning_id"].as_str().expect("id").to_string();
    for i in [2usize, 0, 3, 1, 2] {
        let ack = ok(
            peer,
            "provision_keys_chunk",
            json!({"client_id": client_id, "provisioning_id": pid, "chunk_index": i,
                   "total_chunks": parts.len(), "chunk_b64": parts[i]}),
        )
        .await;
        assert_eq!(ack["chunk_index"], i);
    }
    json!({"client_id": client_id, "provisioning_id": pid})
}

/// Step 0 for `client_id` with the shared key set; returns its token.
pub async fn enroll(peer: &Peer, client_id: &str) -> String {
    let m = material();
    let commit = provision(peer, client_id, &m.info, &m.bundle).await;
    ok(peer, "provision_keys_commit", commit).await["auth_token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// Uploads the shared encrypted input into `session_id` in `parts` chunks.
pub async fn upload_input(
    peer: &Peer,
    client_id: &str,
    token: &str,
    session_id: &str,
    parts: usize,
) {
    let m = material();
    let pieces = chunks(&m.input, parts);
    for (i, c) in pieces.iter().enumerate() {
        ok(
            peer,
            "upload_ciphertext_chunk",
            json!({"client_id": client_id, "session_id": session_id, "file_name": m.input_name,
                   "chunk_index": i, "total_chunks": pieces.len(), "chunk_b64": c,
                   "auth_token": token}),
        )
        .await;
    }
}

/// `{client_id, session_id, auth_token}` plus `extra`.
pub fn session_args(client_id: &str, session_id: &str, token: &str, extra: Value) -> Value {
    let mut a = json!({"client_id": client_id, "session_id": session_id, "auth_token": token});
    if let (Value::Object(m), Value::Object(e)) = (&mut a, extra) {
        m.extend(e);
    }
    a
}
