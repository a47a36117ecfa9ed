//! The local crypto server's tools over MCP (a `cipherinfer local` child process over stdio, or
//! any server that implements `docs/protocol.md` §7).

use cipherinfer_protocol::ToolError;
use cipherinfer_protocol::local::{
    ExportEvaluationKeysArgs, ExportEvaluationKeysResult, FheDecryptArgs, FheDecryptResult,
    FheEncryptArgs, FheEncryptResult, GenerateKeysArgs, GenerateKeysResult,
    TOOL_EXPORT_EVALUATION_KEYS, TOOL_FHE_DECRYPT, TOOL_FHE_ENCRYPT, TOOL_GENERATE_KEYS,
};

use crate::mcp::McpClient;
use crate::workflow::LocalOps;

/// A local crypto server reached over MCP.
#[derive(Debug)]
pub struct McpLocal {
    mcp: McpClient,
}

impl McpLocal {
    /// Wraps a connection to a local crypto server.
    pub fn new(mcp: McpClient) -> Self {
        Self { mcp }
    }

    /// Spawns `program args...` (e.g. `cipherinfer local`) and talks to it over stdio.
    pub async fn spawn(command: tokio::process::Command) -> Result<Self, ToolError> {
        Ok(Self::new(McpClient::spawn_stdio(command).await?))
    }

    /// The underlying connection.
    pub fn mcp(&self) -> &McpClient {
        &self.mcp
    }

    /// Closes the connection; a child process sees its input end and exits.
    pub async fn close(self) {
        self.mcp.close().await;
    }
}

impl LocalOps for McpLocal {
    async fn generate_keys(&self, args: GenerateKeysArgs) -> Result<GenerateKeysResult, ToolError> {
        self.mcp.call(TOOL_GENERATE_KEYS, &args).await
    }

    async fn export_evaluation_keys(
        &self,
        args: ExportEvaluationKeysArgs,
    ) -> Result<ExportEvaluationKeysResult, ToolError> {
        self.mcp.call(TOOL_EXPORT_EVALUATION_KEYS, &args).await
    }

    async fn fhe_encrypt(&self, args: FheEncryptArgs) -> Result<FheEncryptResult, ToolError> {
        self.mcp.call(TOOL_FHE_ENCRYPT, &args).await
    }

    async fn fhe_decrypt(&self, args: FheDecryptArgs) -> Result<FheDecryptResult, ToolError> {
        self.mcp.call(TOOL_FHE_DECRYPT, &args).await
    }
}
