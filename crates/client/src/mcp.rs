//! A typed MCP client: one connection to a server (Streamable HTTP or a child process over
//! stdio), tool calls with serde arguments and results, progress routed to the call that asked
//! for it, and every failure turned into a [`ToolError`] with a machine-readable code.

use std::time::Duration;

use cipherinfer_protocol::{ErrorCode, ToolError};
use futures::StreamExt;
use rmcp::handler::client::progress::ProgressDispatcher;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ClientRequest, Implementation,
    ProgressNotificationParam, Request, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Largest server-sent event accepted on Streamable HTTP: a 32 MiB chunk in Base64 plus JSON.
const MAX_SSE_EVENT_BYTES: usize = 48 << 20;

/// One progress report of a running call.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Work done so far.
    pub progress: f64,
    /// Total work, when the server knows it.
    pub total: Option<f64>,
    /// What the server is doing.
    pub message: Option<String>,
}

/// The client side of the connection: routes progress notifications to their calls.
#[derive(Clone, Debug, Default)]
pub struct Handler {
    progress: ProgressDispatcher,
}

impl ClientHandler for Handler {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.progress.handle_notification(params).await;
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("cipherinfer-client", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// A connected MCP server.
#[derive(Debug)]
pub struct McpClient {
    service: RunningService<RoleClient, Handler>,
    handler: Handler,
    endpoint: String,
}

fn unavailable(endpoint: &str, what: impl std::fmt::Display) -> ToolError {
    ToolError::new(ErrorCode::Unavailable, format!("{endpoint}: {what}"))
}

impl McpClient {
    /// Connects to a Streamable HTTP endpoint (`http(s)://host:port/mcp`).
    pub async fn connect_http(url: &str) -> Result<Self, ToolError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Below the server's idle-connection timeout (30 s by default), so a pooled
            // connection is not reused just as the server closes it.
            .pool_idle_timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| unavailable(url, e))?;
        let transport = StreamableHttpClientTransport::with_client(
            http,
            StreamableHttpClientTransportConfig::with_uri(url.to_string())
                .max_sse_event_size(MAX_SSE_EVENT_BYTES),
        );
        let handler = Handler::default();
        let service = handler
            .clone()
            .serve(transport)
            .await
            .map_err(|e| unavailable(url, format!("cannot connect: {e}")))?;
        Ok(Self {
            service,
            handler,
            endpoint: url.to_string(),
        })
    }

    /// Spawns `command` and speaks MCP over its stdin and stdout.
    pub async fn spawn_stdio(command: tokio::process::Command) -> Result<Self, ToolError> {
        let name = format!("{:?}", command.as_std().get_program());
        let transport = TokioChildProcess::new(command)
            .map_err(|e| unavailable(&name, format!("cannot start: {e}")))?;
        let handler = Handler::default();
        let service = handler
            .clone()
            .serve(transport)
            .await
            .map_err(|e| unavailable(&name, format!("cannot initialize: {e}")))?;
        Ok(Self {
            service,
            handler,
            endpoint: name,
        })
    }

    /// The URL or program this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Names of the server's tools.
    pub async fn tool_names(&self) -> Result<Vec<String>, ToolError> {
        let tools = self
            .service
            .list_all_tools()
            .await
            .map_err(|e| unavailable(&self.endpoint, e))?;
        Ok(tools.into_iter().map(|t| t.name.to_string()).collect())
    }

    /// Calls `tool` with `args`.
    pub async fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        tool: &str,
        args: &A,
    ) -> Result<R, ToolError> {
        self.call_with_progress(tool, args, |_| {}).await
    }

    /// Calls `tool` with `args`, handing each progress notification to `on_progress`.
    pub async fn call_with_progress<A: Serialize, R: DeserializeOwned>(
        &self,
        tool: &str,
        args: &A,
        mut on_progress: impl FnMut(Progress),
    ) -> Result<R, ToolError> {
        let Value::Object(arguments) = serde_json::to_value(args)
            .map_err(|e| ToolError::new(ErrorCode::Internal, e.to_string()))?
        else {
            return Err(ToolError::new(
                ErrorCode::Internal,
                "tool arguments must serialize to an object",
            ));
        };
        let request = ClientRequest::CallToolRequest(Request::new(
            CallToolRequestParams::new(tool.to_string()).with_arguments(arguments),
        ));
        let handle = self
            .service
            .send_cancellable_request(request, PeerRequestOptions::no_options())
            .await
            .map_err(|e| unavailable(&self.endpoint, e))?;
        let mut progress = self
            .handler
            .progress
            .subscribe(handle.progress_token.clone())
            .await;
        let response = handle.await_response();
        tokio::pin!(response);
        let response = loop {
            tokio::select! {
                r = &mut response => break r,
                Some(p) = progress.next() => on_progress(Progress {
                    progress: p.progress,
                    total: p.total,
                    message: p.message,
                }),
            }
        };
        let ServerResult::CallToolResult(result) =
            response.map_err(|e| unavailable(&self.endpoint, e))?
        else {
            return Err(ToolError::new(
                ErrorCode::Internal,
                format!("{}: {tool} answered with something else", self.endpoint),
            ));
        };
        if result.is_error == Some(true) {
            // The error object: structured content when a server sends one, else the JSON text
            // of the first text block (what ours send, so that every client can read it).
            let error = result.structured_content.clone().unwrap_or_else(|| {
                result
                    .content
                    .iter()
                    .find_map(|c| c.as_text().and_then(|t| serde_json::from_str(&t.text).ok()))
                    .unwrap_or(Value::Null)
            });
            return Err(tool_error(tool, error));
        }
        let content = result.structured_content.unwrap_or(Value::Null);
        serde_json::from_value(content).map_err(|e| {
            ToolError::new(
                ErrorCode::Internal,
                format!(
                    "{}: {tool} returned an unexpected result: {e}",
                    self.endpoint
                ),
            )
        })
    }

    /// Closes the connection (and ends a child process's input, so it exits).
    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

/// The error a server reported, keeping its code (an unknown code becomes `ERROR_INTERNAL`
/// with the original in the message).
fn tool_error(tool: &str, content: Value) -> ToolError {
    if let Ok(mut e) = serde_json::from_value::<ToolError>(content.clone()) {
        e.message = format!("{tool}: {}", e.message);
        return e;
    }
    let code = content
        .get("error_code")
        .and_then(Value::as_str)
        .unwrap_or("none");
    let message = content
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no message");
    ToolError::new(
        ErrorCode::Internal,
        format!("{tool} failed with error code {code}: {message}"),
    )
}
