//! What both servers' tools share on the wire: titles and annotations in the tool list, error
//! results every MCP client can read, and the JSON-RPC error for a tool that does not exist.

use rmcp::ErrorData;
use rmcp::model::{CallToolResult, ContentBlock, Tool, ToolAnnotations};
use serde_json::Value;

/// What a tool does to the state it touches (MCP tool annotations, which hosts use to decide
/// what to confirm with the user).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Reads only.
    ReadOnly,
    /// Adds state; calling it again with the same arguments adds it again (or is refused).
    Additive,
    /// Adds state; calling it again with the same arguments changes nothing more.
    AdditiveIdempotent,
    /// Replaces or deletes state; calling it again changes nothing more.
    Destructive,
    /// Replaces or deletes state, and a repeated call does it again.
    DestructiveRepeated,
}

/// `tool` with its human-readable `title` and the annotations of `effect`; `open_world` when the
/// tool reaches beyond its own server (another server, the network).
pub fn annotate(mut tool: Tool, title: &str, effect: Effect, open_world: bool) -> Tool {
    let (read_only, destructive, idempotent) = match effect {
        Effect::ReadOnly => (true, false, true),
        Effect::Additive => (false, false, false),
        Effect::AdditiveIdempotent => (false, false, true),
        Effect::Destructive => (false, true, true),
        Effect::DestructiveRepeated => (false, true, false),
    };
    tool.title = Some(title.to_string());
    tool.annotations = Some(
        ToolAnnotations::with_title(title)
            .read_only(read_only)
            .destructive(destructive)
            .idempotent(idempotent)
            .open_world(open_world),
    );
    tool
}

/// A failed call as every MCP client reads it: `isError: true` with the error object (its
/// `error_code`, `message` and details) as JSON text in `content`, and no `structuredContent`,
/// which would have to match the tool's output schema (a client that validates it, as the
/// TypeScript SDK does, would reject the whole result and hide the error).
pub fn error_result(error: &Value) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(error.to_string())])
}

/// The JSON-RPC error for a `tools/call` of a tool the server does not list (-32602, invalid
/// params, as MCP specifies).
pub fn unknown_tool(name: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!("unknown tool {name:?}"),
        Some(serde_json::json!({ "error_code": "ERROR_INVALID_ARGUMENT", "tool": name })),
    )
}
