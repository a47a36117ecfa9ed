//! The MCP face of [`LocalCrypto`]: tool list with JSON Schemas for arguments and results,
//! `tools/call` dispatch with CPU work on blocking threads, and the transports: stdio (the
//! normal one; stdout carries only protocol) and Streamable HTTP bound to loopback only.
//!
//! Every failure a caller can cause in a tool comes back as an `isError` result whose text
//! content is the error object's JSON, with its machine-readable `error_code` (no
//! `structuredContent`, which would have to match the tool's output schema); a call of a tool
//! that is not listed is the JSON-RPC error -32602. Tools carry titles and annotations.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use cipherinfer_protocol::error::{ErrorCode, Result, ToolError, parse_arguments};
use cipherinfer_protocol::local::{
    ExportEvaluationKeysArgs, ExportEvaluationKeysResult, FheDecryptArgs, FheDecryptResult,
    FheEncryptArgs, FheEncryptResult, GenerateKeysArgs, GenerateKeysResult, PrivateClassifyArgs,
    PrivateClassifyResult, TOOL_EXPORT_EVALUATION_KEYS, TOOL_FHE_DECRYPT, TOOL_FHE_ENCRYPT,
    TOOL_GENERATE_KEYS, TOOL_PRIVATE_CLASSIFY,
};
use cipherinfer_transport::tools::{Effect, annotate, respond, unknown_tool};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::crypto::LocalCrypto;

/// Longest JSON-RPC line accepted on stdio. Requests to the local server are small (paths and
/// identifiers); 16 MiB leaves room for a `client_spec` of a large model.
pub const MAX_STDIO_LINE_BYTES: usize = 16 * 1024 * 1024;

/// A boxed, sendable future (the extension point is object-safe without `async_trait`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Progress reports of a long tool call, forwarded to the caller as
/// `notifications/progress` when its request carried a `progressToken` (a no-op otherwise).
#[derive(Clone, Debug, Default)]
pub struct Progress {
    tx: Option<tokio::sync::mpsc::UnboundedSender<(f64, Option<f64>, String)>>,
}

impl Progress {
    /// Progress that goes nowhere.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reports `progress` (of `total`, when known) with a short message. Never blocks.
    pub fn report(&self, progress: f64, total: Option<f64>, message: &str) {
        if let Some(tx) = &self.tx {
            // A caller that went away is not the tool's problem.
            let _ = tx.send((progress, total, message.to_string()));
        }
    }
}

/// What a `private_classify` implementation gets with each call.
#[derive(Clone, Debug)]
pub struct ClassifyContext {
    /// The local crypto core (key store, encryption, decryption); its methods block, so run
    /// them with `tokio::task::spawn_blocking`.
    pub crypto: Arc<LocalCrypto>,
    /// Progress towards the caller.
    pub progress: Progress,
    /// Cancelled when the caller cancels the request (`notifications/cancelled`).
    pub cancel: CancellationToken,
}

/// The `private_classify` tool (Steps 0-6 against a remote server), implemented outside this
/// crate. When a [`LocalHandler`] has none, the tool is not listed.
pub trait PrivateClassify: Send + Sync + 'static {
    /// Runs the whole workflow for `args`; failures carry their protocol error code.
    fn private_classify(
        &self,
        args: PrivateClassifyArgs,
        ctx: ClassifyContext,
    ) -> BoxFuture<'_, Result<PrivateClassifyResult>>;
}

/// The local server's MCP handler (cheap to clone).
#[derive(Clone)]
pub struct LocalHandler {
    crypto: Arc<LocalCrypto>,
    classify: Option<Arc<dyn PrivateClassify>>,
}

impl std::fmt::Debug for LocalHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHandler")
            .field("crypto", &self.crypto)
            .field("private_classify", &self.classify.is_some())
            .finish()
    }
}

/// Tool `name` with its schemas, its title, what it does to the key store and files, and whether
/// it reaches another server.
fn tool<A: schemars::JsonSchema + 'static, R: schemars::JsonSchema + 'static>(
    name: &'static str,
    title: &str,
    effect: Effect,
    open_world: bool,
    description: &'static str,
) -> Tool {
    let tool = Tool::new(name, description, serde_json::Map::new())
        .with_input_schema::<A>()
        .with_output_schema::<R>();
    annotate(tool, title, effect, open_world)
}

/// Every tool a local server can list; `private_classify` only when it has a remote.
static TOOLS: LazyLock<Vec<Tool>> = LazyLock::new(|| {
    vec![
        tool::<GenerateKeysArgs, GenerateKeysResult>(
            TOOL_GENERATE_KEYS,
            "Generate keys",
            Effect::DestructiveRepeated,
            false,
            "Step 0 (local): generate and store a CKKS key set for a client and a remote model's client_spec (secret key stays here).",
        ),
        tool::<ExportEvaluationKeysArgs, ExportEvaluationKeysResult>(
            TOOL_EXPORT_EVALUATION_KEYS,
            "Export evaluation keys",
            Effect::AdditiveIdempotent,
            false,
            "Step 0 (local): write the public evaluation-key bundle to a file; returns size, SHA-256 and chunk count for provision_keys_begin.",
        ),
        tool::<FheEncryptArgs, FheEncryptResult>(
            TOOL_FHE_ENCRYPT,
            "Encrypt an image",
            Effect::Additive,
            false,
            "Steps 1-2 (draft 6.1): preprocess a PNG/JPEG image and encrypt it into ciphertext objects in session_dir.",
        ),
        tool::<FheDecryptArgs, FheDecryptResult>(
            TOOL_FHE_DECRYPT,
            "Decrypt a result",
            Effect::ReadOnly,
            false,
            "Steps 5-6 (draft 6.5): decrypt the remote's encrypted logits; returns label, probabilities, top-k, logits and precision.",
        ),
        tool::<PrivateClassifyArgs, PrivateClassifyResult>(
            TOOL_PRIVATE_CLASSIFY,
            "Classify privately",
            Effect::Additive,
            true,
            "Classify an image privately: keys, encryption, remote encrypted inference and decryption in one call (no Base64 through the host).",
        ),
    ]
});

fn arguments<T: DeserializeOwned>(request: &CallToolRequestParams) -> Result<T> {
    parse_arguments(Value::Object(request.arguments.clone().unwrap_or_default()))
}

impl LocalHandler {
    /// A handler without `private_classify`.
    pub fn new(crypto: Arc<LocalCrypto>) -> Self {
        Self {
            crypto,
            classify: None,
        }
    }

    /// Adds the `private_classify` tool.
    pub fn with_private_classify(mut self, classify: Arc<dyn PrivateClassify>) -> Self {
        self.classify = Some(classify);
        self
    }

    /// The crypto core.
    pub fn crypto(&self) -> &Arc<LocalCrypto> {
        &self.crypto
    }

    /// The tools this handler lists, with their schemas.
    pub fn tools(&self) -> Vec<Tool> {
        TOOLS
            .iter()
            .filter(|t| self.lists(&t.name))
            .cloned()
            .collect()
    }

    /// Whether the handler lists (and so calls) tool `name`.
    fn lists(&self, name: &str) -> bool {
        (name != TOOL_PRIVATE_CLASSIFY || self.classify.is_some())
            && TOOLS.iter().any(|t| t.name == name)
    }

    async fn blocking<A, R>(
        &self,
        request: &CallToolRequestParams,
        f: fn(&LocalCrypto, &A) -> Result<R>,
    ) -> CallToolResult
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
    {
        let args: A = match arguments(request) {
            Ok(a) => a,
            Err(e) => return respond::<()>(Err(e)),
        };
        let crypto = self.crypto.clone();
        respond(
            tokio::task::spawn_blocking(move || f(&crypto, &args))
                .await
                .unwrap_or_else(|e| Err(ToolError::new(ErrorCode::Internal, e.to_string()))),
        )
    }

    async fn classify(
        &self,
        classify: &Arc<dyn PrivateClassify>,
        request: &CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let args: PrivateClassifyArgs =
            match arguments(request).and_then(|a: PrivateClassifyArgs| {
                a.validate()?;
                Ok(a)
            }) {
                Ok(a) => a,
                Err(e) => return respond::<()>(Err(e)),
            };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(f64, Option<f64>, String)>();
        let forwarder = ctx.meta.get_progress_token().map(|token| {
            let peer = ctx.peer.clone();
            tokio::spawn(async move {
                while let Some((p, total, message)) = rx.recv().await {
                    let mut n =
                        ProgressNotificationParam::new(token.clone(), p).with_message(message);
                    if let Some(t) = total {
                        n = n.with_total(t);
                    }
                    let _ = peer.notify_progress(n).await;
                }
            })
        });
        let progress = Progress {
            tx: forwarder.is_some().then_some(tx),
        };
        let context = ClassifyContext {
            crypto: self.crypto.clone(),
            progress,
            cancel: ctx.ct.clone(),
        };
        let result = classify.private_classify(args, context).await;
        if let Some(f) = forwarder {
            // Every sender is gone with the context: the forwarder drains and ends.
            let _ = f.await;
        }
        respond(result)
    }

    async fn call(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        match request.name.as_ref() {
            TOOL_GENERATE_KEYS => self.blocking(&request, LocalCrypto::generate_keys).await,
            TOOL_EXPORT_EVALUATION_KEYS => {
                self.blocking(&request, LocalCrypto::export_evaluation_keys)
                    .await
            }
            TOOL_FHE_ENCRYPT => self.blocking(&request, LocalCrypto::fhe_encrypt).await,
            TOOL_FHE_DECRYPT => self.blocking(&request, LocalCrypto::fhe_decrypt).await,
            TOOL_PRIVATE_CLASSIFY if self.classify.is_some() => match &self.classify {
                Some(c) => self.classify(c, &request, ctx).await,
                None => respond::<()>(Err(ToolError::new(ErrorCode::Internal, "unreachable"))),
            },
            other => respond::<()>(Err(ToolError::new(
                ErrorCode::InvalidArgument,
                format!("unknown tool {other:?}"),
            ))),
        }
    }
}

impl ServerHandler for LocalHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "cipherinfer-local",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Trusted local CKKS crypto server: generate_keys, export_evaluation_keys, \
                 fhe_encrypt, fhe_decrypt. Secret keys never leave it. Paths are absolute \
                 paths on this host.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> std::result::Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> std::result::Result<CallToolResponse, ErrorData> {
        if !self.lists(&request.name) {
            return Err(unknown_tool(&request.name));
        }
        Ok(self.call(request, ctx).await.into())
    }
}

/// Serves `handler` over a byte stream pair (newline-delimited JSON-RPC, lines up to
/// [`MAX_STDIO_LINE_BYTES`]) until the peer closes it.
pub async fn serve_io<R, W>(handler: LocalHandler, read: R, write: W) -> std::io::Result<()>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let transport =
        AsyncRwTransport::new_server(read, write).with_max_line_length(MAX_STDIO_LINE_BYTES);
    let running = handler
        .serve(transport)
        .await
        .map_err(std::io::Error::other)?;
    running.waiting().await.map_err(std::io::Error::other)?;
    Ok(())
}

/// Serves `handler` on stdin/stdout until stdin closes. Stdout carries only protocol: log with
/// [`init_stderr_logging`] (or any subscriber writing to stderr).
pub async fn serve_stdio(handler: LocalHandler) -> std::io::Result<()> {
    let (stdin, stdout) = rmcp::transport::stdio();
    serve_io(handler, stdin, stdout).await
}

/// Installs a `tracing` subscriber that writes to stderr (filter from `RUST_LOG`, default
/// `info`). Does nothing when a subscriber is already installed.
pub fn init_stderr_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn refuse_non_loopback(addr: &SocketAddr) -> std::io::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the local crypto server holds secret keys and listens on loopback addresses \
                 only, not {addr}"
            ),
        ))
    }
}

/// Serves `handler` over Streamable HTTP (`/mcp`) on `listener`, which must be bound to a
/// loopback address, until `shutdown`. Host and Origin are checked against loopback names.
pub async fn serve_http_listener(
    handler: LocalHandler,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    refuse_non_loopback(&listener.local_addr()?)?;
    let app = cipherinfer_transport::router(
        move || handler.clone(),
        cipherinfer_transport::HttpConfig::default(),
        shutdown.clone(),
    );
    cipherinfer_transport::serve(listener, app, Default::default(), shutdown).await
}

/// Binds `addr` for [`serve_http_listener`], refusing any non-loopback address before binding.
pub async fn bind_loopback(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    refuse_non_loopback(&addr)?;
    tokio::net::TcpListener::bind(addr).await
}

/// Binds `addr` (refusing any non-loopback address before binding) and serves `handler` over
/// Streamable HTTP until `shutdown`.
pub async fn serve_http(
    handler: LocalHandler,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = bind_loopback(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "cipherinfer local server listening (Streamable HTTP /mcp, loopback only)");
    serve_http_listener(handler, listener, shutdown).await
}
