//! The client side of cipherinfer: a typed MCP client ([`mcp::McpClient`]) for both servers,
//! typed calls to the remote inference server ([`remote::RemoteClient`]), and the draft's
//! Steps 0–6 as one operation ([`workflow::Workflow`]).

pub mod local;
pub mod mcp;
pub mod remote;
pub mod workflow;

pub use local::McpLocal;
pub use mcp::{McpClient, Progress};
pub use remote::{RemoteClient, Transfer};
pub use workflow::{
    ClassifyRequest, Credentials, Event, LocalOps, RemoteCredential, Workflow, WorkflowOptions,
};
