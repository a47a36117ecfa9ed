//! The MCP face of [`Service`]: tool list with JSON Schemas for arguments and results, and the
//! dispatch of `tools/call`. Every failure a client can cause in a tool comes back as an
//! `isError` result whose text content is the error object's JSON, with its machine-readable
//! `error_code` (no `structuredContent`, which would have to match the tool's output schema); a
//! call of a tool that is not listed is the JSON-RPC error -32602. Tools carry titles and
//! annotations ([`cipherinfer_transport::tools`]).

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use cipherinfer_protocol::integrity::{REQUEST_SIGNATURE_FIELD, RequestSignature, SignedCall};
use cipherinfer_protocol::remote::{
    Capabilities, DeleteSessionResult, DescribeCapabilitiesArgs, FetchResultChunkArgs,
    FetchResultChunkResult, ProvisionKeysBeginArgs, ProvisionKeysBeginResult,
    ProvisionKeysChunkAck, ProvisionKeysChunkArgs, ProvisionKeysCommitArgs, ProvisionKeysResult,
    RemoteInferenceArgs, RemoteInferenceResult, RevokeKeysArgs, RevokeKeysResult, SessionArgs,
    SessionStatus, TOOL_DELETE_SESSION, TOOL_DESCRIBE_CAPABILITIES, TOOL_FETCH_RESULT_CHUNK,
    TOOL_GET_SESSION_STATUS, TOOL_PROVISION_KEYS_BEGIN, TOOL_PROVISION_KEYS_CHUNK,
    TOOL_PROVISION_KEYS_COMMIT, TOOL_REMOTE_INFERENCE_CNN, TOOL_REVOKE_KEYS,
    TOOL_UPLOAD_CIPHERTEXT_CHUNK, UploadChunkAck, UploadCiphertextChunkArgs,
};
use cipherinfer_protocol::{AuthToken, ErrorCode, ToolError, parse_arguments};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde_json::Value;

use cipherinfer_transport::tools::{Effect, annotate, respond, unknown_tool};

use crate::ratelimit::Caller;
use crate::service::Service;

/// The remote server's MCP handler (cheap to clone: one per transport session).
#[derive(Clone, Debug)]
pub struct RemoteHandler {
    service: Arc<Service>,
}

impl RemoteHandler {
    /// A handler over a shared service.
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }
}

/// Tool `name` with its schemas, its title, and what it does to the server's state.
fn tool<A: schemars::JsonSchema + 'static, R: schemars::JsonSchema + 'static>(
    name: &'static str,
    title: &str,
    effect: Effect,
    description: &'static str,
) -> Tool {
    let mut tool = Tool::new(name, description, serde_json::Map::new())
        .with_input_schema::<A>()
        .with_output_schema::<R>();
    if name != TOOL_DESCRIBE_CAPABILITIES {
        // Every call but the public one may (and by default must) carry a request signature,
        // which the handler takes out before the tool's own fields are parsed.
        let mut schema = (*tool.input_schema).clone();
        let sig = schemars::schema_for!(RequestSignature);
        if let Some(Value::Object(props)) = schema.get_mut("properties") {
            props.insert(
                REQUEST_SIGNATURE_FIELD.into(),
                serde_json::to_value(sig).unwrap_or(Value::Null),
            );
        }
        tool.input_schema = Arc::new(schema);
    }
    annotate(tool, title, effect, false)
}

/// The tools, with their schemas.
pub fn tools() -> Vec<Tool> {
    TOOLS.clone()
}

/// Every tool the server lists (and the only ones it calls).
static TOOLS: LazyLock<Vec<Tool>> = LazyLock::new(|| {
    vec![
        tool::<DescribeCapabilitiesArgs, Capabilities>(
            TOOL_DESCRIBE_CAPABILITIES,
            "Describe capabilities",
            Effect::ReadOnly,
            "Served models (input shape, labels, CKKS parameters, required rotation keys, input objects), Algorithm IDs and chunk limits. Public.",
        ),
        tool::<ProvisionKeysBeginArgs, ProvisionKeysBeginResult>(
            TOOL_PROVISION_KEYS_BEGIN,
            "Begin key provisioning",
            Effect::Additive,
            "Step 0: start uploading an evaluation-key bundle bound to client_id, Algorithm ID and parameter id (mode new or rotate).",
        ),
        tool::<ProvisionKeysChunkArgs, ProvisionKeysChunkAck>(
            TOOL_PROVISION_KEYS_CHUNK,
            "Upload a key chunk",
            Effect::AdditiveIdempotent,
            "Step 0: one Base64 chunk of the key bundle (any order, idempotent re-sends).",
        ),
        tool::<ProvisionKeysCommitArgs, ProvisionKeysResult>(
            TOOL_PROVISION_KEYS_COMMIT,
            "Commit provisioned keys",
            Effect::DestructiveRepeated,
            "Step 0: verify and store the key bundle; returns the key reference and a fresh auth_token (shown once).",
        ),
        tool::<RevokeKeysArgs, RevokeKeysResult>(
            TOOL_REVOKE_KEYS,
            "Revoke keys",
            Effect::Destructive,
            "Revoke a client's keys and delete its sessions.",
        ),
        tool::<UploadCiphertextChunkArgs, UploadChunkAck>(
            TOOL_UPLOAD_CIPHERTEXT_CHUNK,
            "Upload a ciphertext chunk",
            Effect::AdditiveIdempotent,
            "Stage one Base64 chunk of a ciphertext object in a session (draft 6.3).",
        ),
        tool::<RemoteInferenceArgs, RemoteInferenceResult>(
            TOOL_REMOTE_INFERENCE_CNN,
            "Encrypted CNN inference",
            Effect::Additive,
            "Evaluate a CNN on the session's ciphertexts with the client's cached evaluation keys; returns the encrypted logits (draft 6.3/6.4, 7.1/7.2). Sends progress notifications; honours cancellation.",
        ),
        tool::<FetchResultChunkArgs, FetchResultChunkResult>(
            TOOL_FETCH_RESULT_CHUNK,
            "Fetch a result chunk",
            Effect::ReadOnly,
            "One chunk of an output offered by reference (result_ref).",
        ),
        tool::<SessionArgs, SessionStatus>(
            TOOL_GET_SESSION_STATUS,
            "Session status",
            Effect::ReadOnly,
            "The objects, chunks and results a session holds (to resume an upload).",
        ),
        tool::<SessionArgs, DeleteSessionResult>(
            TOOL_DELETE_SESSION,
            "Delete a session",
            Effect::Destructive,
            "Delete a session's staged objects and results.",
        ),
    ]
});

/// The peer address, from the connection info both transports put into the request's HTTP
/// parts (when the server was started with [`cipherinfer_transport::serve`]).
fn caller(ctx: &RequestContext<RoleServer>) -> Caller {
    ctx.extensions
        .get::<http::request::Parts>()
        .and_then(|parts| {
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
        })
        .map_or_else(Caller::unknown, |info| Caller::from_ip(info.0.ip()))
}

fn bearer(ctx: &RequestContext<RoleServer>) -> Option<AuthToken> {
    let parts = ctx.extensions.get::<http::request::Parts>()?;
    let value = parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    AuthToken::from_authorization_header(value)
}

/// Parses arguments, merging an `Authorization: Bearer` token into `auth_token` (both present
/// and different is refused).
fn arguments<T: DeserializeOwned>(
    request: &CallToolRequestParams,
    header: Option<&AuthToken>,
) -> Result<T, ToolError> {
    let mut args = Value::Object(request.arguments.clone().unwrap_or_default());
    if let (Some(h), Value::Object(map)) = (header, &mut args) {
        match map.get("auth_token") {
            None | Some(Value::Null) => {
                map.insert("auth_token".into(), Value::String(h.expose().to_string()));
            }
            Some(Value::String(s)) if s == h.expose() => {}
            Some(_) => {
                return Err(ToolError::new(
                    ErrorCode::Unauthorized,
                    "auth_token and the Authorization header differ",
                ));
            }
        }
    }
    parse_arguments(args)
}

impl RemoteHandler {
    async fn call(
        &self,
        mut request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let info = CallInfo {
            tool: request.name.to_string(),
            request_id: self.service.next_request_id(),
            jsonrpc_id: ctx.id.to_string(),
            started: std::time::Instant::now(),
        };
        let header = bearer(&ctx);
        let h = header.as_ref();
        // The signature leaves the arguments here, digested over exactly what was received;
        // the tool's own fields are then parsed as usual.
        let signed = match request.arguments.as_mut() {
            Some(args) => match SignedCall::take(&request.name, args) {
                Ok(s) => s,
                Err(e) => return self.finish::<()>(&info, Err(e)),
            },
            None => None,
        };
        let who = caller(&ctx).with_signature(signed);
        let c = &who;
        let s = &self.service;
        match request.name.as_ref() {
            TOOL_DESCRIBE_CAPABILITIES => self.finish(
                &info,
                arguments(&request, None).and_then(|a| s.describe_capabilities(&a)),
            ),
            TOOL_PROVISION_KEYS_BEGIN => self.finish(
                &info,
                match arguments::<ProvisionKeysBeginArgs>(&request, h) {
                    Ok(a) => s.provision_begin(&a, c).await,
                    Err(e) => Err(e),
                },
            ),
            TOOL_PROVISION_KEYS_CHUNK => self.finish(
                &info,
                match arguments::<ProvisionKeysChunkArgs>(&request, None) {
                    Ok(a) => s.provision_chunk(&a, c).await.inspect(|r| {
                        s.metrics().received(r.chunk_bytes);
                    }),
                    Err(e) => Err(e),
                },
            ),
            TOOL_PROVISION_KEYS_COMMIT => self.finish(
                &info,
                match arguments::<ProvisionKeysCommitArgs>(&request, None) {
                    Ok(a) => s.provision_commit(&a, c).await,
                    Err(e) => Err(e),
                },
            ),
            TOOL_REVOKE_KEYS => self.finish(
                &info,
                match arguments::<RevokeKeysArgs>(&request, h) {
                    Ok(a) => s.revoke(&a, c).await,
                    Err(e) => Err(e),
                },
            ),
            TOOL_UPLOAD_CIPHERTEXT_CHUNK => self.finish(
                &info,
                match arguments::<UploadCiphertextChunkArgs>(&request, h) {
                    Ok(a) => s.upload_chunk(&a, c).await.inspect(|r| {
                        s.metrics().received(r.chunk_bytes);
                    }),
                    Err(e) => Err(e),
                },
            ),
            TOOL_REMOTE_INFERENCE_CNN => {
                // Held until the response is made: a drain waits for it.
                let _in_flight = s.inference_request();
                let args = match arguments::<RemoteInferenceArgs>(&request, h) {
                    Ok(a) => a,
                    Err(e) => return self.finish::<()>(&info, Err(e)),
                };
                // Progress goes from the blocking evaluation to the peer through a channel.
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, usize, String)>();
                let forwarder = ctx.meta.get_progress_token().map(|token| {
                    let peer = ctx.peer.clone();
                    tokio::spawn(async move {
                        while let Some((i, n, what)) = rx.recv().await {
                            let p = ProgressNotificationParam::new(token.clone(), i as f64)
                                .with_total(n as f64)
                                .with_message(what);
                            // A client that went away is not the evaluation's problem.
                            let _ = peer.notify_progress(p).await;
                        }
                    })
                });
                let progress = Box::new(move |i: usize, n: usize, what: &str| {
                    let _ = tx.send((i, n, what.to_string()));
                });
                // rmcp cancels the request's token on `notifications/cancelled` (and when the
                // session ends): the service stops waiting or evaluating and keeps no result.
                let result = s.infer(&args, c, ctx.ct.clone(), progress).await;
                if let Ok(r) = &result {
                    s.metrics().inference(info.started.elapsed().as_secs_f64());
                    if r.encrypted_logit_b64.is_some() {
                        s.metrics().sent(r.encrypted_logit_bytes);
                    }
                }
                if let Some(f) = forwarder {
                    // The sender is gone with the evaluation: the forwarder drains and ends.
                    let _ = f.await;
                }
                self.finish(&info, result)
            }
            TOOL_FETCH_RESULT_CHUNK => self.finish(
                &info,
                match arguments::<FetchResultChunkArgs>(&request, h) {
                    Ok(a) => s.fetch_result_chunk(&a, c).await.inspect(|r| {
                        s.metrics().sent(r.chunk_bytes);
                    }),
                    Err(e) => Err(e),
                },
            ),
            TOOL_GET_SESSION_STATUS => self.finish(
                &info,
                match arguments::<SessionArgs>(&request, h) {
                    Ok(a) => s.session_status(&a, c).await,
                    Err(e) => Err(e),
                },
            ),
            TOOL_DELETE_SESSION => self.finish(
                &info,
                match arguments::<SessionArgs>(&request, h) {
                    Ok(a) => s.delete_session(&a, c).await,
                    Err(e) => Err(e),
                },
            ),
            other => self.finish::<()>(
                &info,
                Err(ToolError::new(
                    ErrorCode::InvalidArgument,
                    format!("unknown tool {other:?}"),
                )),
            ),
        }
    }

    /// Counts and logs a finished call (tool, outcome, time; never its arguments), then makes
    /// its MCP result.
    fn finish<R: serde::Serialize>(
        &self,
        info: &CallInfo,
        result: Result<R, ToolError>,
    ) -> CallToolResult {
        let outcome = result.as_ref().err().map(|e| e.error_code.as_str());
        self.service.metrics().call(&info.tool, outcome);
        tracing::info!(
            request_id = %info.request_id,
            jsonrpc_id = %info.jsonrpc_id,
            tool = %info.tool,
            outcome = outcome.unwrap_or("ok"),
            ms = info.started.elapsed().as_secs_f64() * 1e3,
            "tool call"
        );
        respond(result)
    }
}

/// What the log and the metrics say of a call.
struct CallInfo {
    tool: String,
    /// Unique among this replica's calls: replica name and sequence number.
    request_id: String,
    /// The client's JSON-RPC request id (unique within its connection only).
    jsonrpc_id: String,
    started: std::time::Instant,
}

impl ServerHandler for RemoteHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "cipherinfer-remote",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Encrypted CNN inference (CKKS). Step 0: provision_keys_begin/chunk/commit. \
                 Then upload_ciphertext_chunk and remote_inference_cnn. See describe_capabilities.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !TOOLS.iter().any(|t| t.name == request.name) {
            return Err(unknown_tool(&request.name));
        }
        Ok(self.call(request, ctx).await.into())
    }
}
