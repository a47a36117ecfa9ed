//! What both servers' tools share on the wire: titles and annotations in the tool list, error
//! results every MCP client can read, and the JSON-RPC error for a tool that does not exist.

use cipherinfer_protocol::error::{ErrorCode, ToolError};
use rmcp::ErrorData;
use rmcp::model::{CallToolResult, ContentBlock, Tool, ToolAnnotations};
use serde::Serialize;
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
/// tool reaches beyond its own server (another server, the network); its schemas made
/// [`portable`].
pub fn annotate(mut tool: Tool, title: &str, effect: Effect, open_world: bool) -> Tool {
    let mut input = (*tool.input_schema).clone();
    portable(&mut input);
    tool.input_schema = std::sync::Arc::new(input);
    if let Some(output) = &tool.output_schema {
        let mut output = (**output).clone();
        portable(&mut output);
        tool.output_schema = Some(std::sync::Arc::new(output));
    }
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

/// Rewrites a tool schema into the spelling every client's schema dialect reads: a nullable
/// `"type": [T, "null"]` (how schemars writes an `Option<T>` field) becomes `"type": T`. Every such
/// field is optional and never sent as `null` (absent instead); `null` is still accepted on input,
/// so the schema only stops advertising it. Clients that map schemas onto a single-`type` dialect
/// (the OpenAPI subset some model providers use) would otherwise reject the tool.
pub fn portable(schema: &mut serde_json::Map<String, Value>) {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(types)) = m.get("type")
                    && types.len() == 2
                    && types.iter().any(|t| t == "null")
                    && let Some(t) = types.iter().find(|t| *t != "null").cloned()
                {
                    m.insert("type".into(), t);
                }
                m.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    schema.values_mut().for_each(walk);
}

/// A failed call as every MCP client reads it: `isError: true` with the error object (its
/// `error_code`, `message` and details) as JSON text in `content`, and no `structuredContent`,
/// which would have to match the tool's output schema (a client that validates it, as the
/// TypeScript SDK does, would reject the whole result and hide the error).
pub fn error_result(error: &Value) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(error.to_string())])
}

/// A tool's outcome as a call result: the value as `structuredContent` (and its JSON text), or
/// the error as [`error_result`].
pub fn respond<R: Serialize>(result: Result<R, ToolError>) -> CallToolResult {
    match result.and_then(|r| {
        serde_json::to_value(r).map_err(|e| ToolError::new(ErrorCode::Internal, e.to_string()))
    }) {
        Ok(v) => CallToolResult::structured(v),
        Err(e) => error_result(&e.to_json()),
    }
}

/// The JSON-RPC error for a `tools/call` of a tool the server does not list (-32602, invalid
/// params, as MCP specifies).
pub fn unknown_tool(name: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!("unknown tool {name:?}"),
        Some(serde_json::json!({ "error_code": "ERROR_INVALID_ARGUMENT", "tool": name })),
    )
}
