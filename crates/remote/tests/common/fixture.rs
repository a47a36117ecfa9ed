//! A transport test fixture: two tools that exercise progress, cancellation and big arguments.
//! The real tools live elsewhere; this only proves the transports carry what tools need.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use rmcp::{
    ErrorData, Json, RoleServer, ServerHandler,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{
        CallToolResult, Implementation, ProgressNotificationParam, ServerCapabilities, ServerConfig,
    },
    service::RequestContext,
    tool, tool_handler, tool_router,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the fixture's tools did, for tests to assert on.
#[derive(Debug, Default)]
pub struct Stats {
    /// Steps `slow_count` completed, over all calls.
    pub steps: AtomicU64,
    /// `slow_count` calls that saw their request cancelled.
    pub cancelled: AtomicU64,
}

/// Arguments of `slow_count`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SlowCountArgs {
    /// How many steps to count (one progress notification each).
    pub steps: u32,
    /// Pause between steps, in milliseconds.
    pub delay_ms: u64,
}

/// Result of `slow_count`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SlowCountResult {
    /// Steps counted.
    pub counted: u32,
    /// Whether the request carried a progress token.
    pub progress_reported: bool,
}

/// Arguments of `echo_size`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct EchoSizeArgs {
    /// Any string; only its length comes back.
    pub data: String,
}

/// Result of `echo_size`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct EchoSizeResult {
    /// Length of `data` in bytes.
    pub bytes: usize,
}

/// Arguments of `make_blob`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct MakeBlobArgs {
    /// Length of the string to return, in bytes (at most 64 MiB).
    pub bytes: usize,
}

/// Result of `make_blob`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct MakeBlobResult {
    /// `bytes` copies of `z`.
    pub data: String,
}

/// The fixture server.
#[derive(Debug, Clone)]
pub struct Fixture {
    #[allow(
        dead_code,
        reason = "read through the tool_handler macro in some builds only"
    )]
    tool_router: ToolRouter<Self>,
    /// Shared by every clone, so a test sees what all sessions did.
    pub stats: Arc<Stats>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self {
            tool_router: Self::tool_router(),
            stats: Arc::default(),
        }
    }
}

#[tool_router]
impl Fixture {
    /// Counts slowly, reporting progress, and stops when the request is cancelled.
    #[tool]
    async fn slow_count(
        &self,
        Parameters(args): Parameters<SlowCountArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SlowCountResult>, ErrorData> {
        let token = ctx.meta.get_progress_token();
        for step in 1..=args.steps {
            tokio::select! {
                () = ctx.ct.cancelled() => {
                    self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
                    return Err(ErrorData::internal_error("cancelled", None));
                }
                () = tokio::time::sleep(Duration::from_millis(args.delay_ms)) => {}
            }
            self.stats.steps.fetch_add(1, Ordering::SeqCst);
            if let Some(token) = &token {
                let progress = ProgressNotificationParam::new(token.clone(), f64::from(step))
                    .with_total(f64::from(args.steps))
                    .with_message(format!("step {step} of {}", args.steps));
                // A client that went away is not the tool's problem.
                let _ = ctx.peer.notify_progress(progress).await;
            }
        }
        Ok(Json(SlowCountResult {
            counted: args.steps,
            progress_reported: token.is_some(),
        }))
    }

    /// Returns the byte length of a (possibly huge) string argument; an empty one is a tool error.
    #[tool]
    async fn echo_size(&self, Parameters(args): Parameters<EchoSizeArgs>) -> CallToolResult {
        if args.data.is_empty() {
            return CallToolResult::structured_error(serde_json::json!({
                "error_code": "ERROR_EMPTY",
                "message": "data must not be empty",
            }));
        }
        match serde_json::to_value(EchoSizeResult {
            bytes: args.data.len(),
        }) {
            Ok(value) => CallToolResult::structured(value),
            Err(e) => {
                CallToolResult::structured_error(serde_json::json!({ "message": e.to_string() }))
            }
        }
    }

    /// Returns a large result, to check that big responses cross the transports.
    #[tool]
    async fn make_blob(
        &self,
        Parameters(args): Parameters<MakeBlobArgs>,
    ) -> Result<Json<MakeBlobResult>, ErrorData> {
        if args.bytes > 64 << 20 {
            return Err(ErrorData::invalid_params("at most 64 MiB", None));
        }
        Ok(Json(MakeBlobResult {
            data: "z".repeat(args.bytes),
        }))
    }
}

#[tool_handler]
impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("cipherinfer-transport-fixture", "0.1.0"),
        )
    }
}
