//! The remote (untrusted) half of cipherinfer: an MCP server that computes on ciphertexts only.
//!
//! `cipherinfer_transport` serves any rmcp [`rmcp::ServerHandler`] over Streamable HTTP (`/mcp`) and over
//! the legacy HTTP+SSE transport of protocol 2024-11-05 (`GET /sse` + `POST /messages`).

pub mod handler;
mod layout;
pub mod metrics;
pub mod ratelimit;
pub mod registry;
pub mod service;
pub mod store;
mod threads;
mod usage;

pub use handler::RemoteHandler;
pub use ratelimit::Caller;
pub use registry::{ModelSource, Registry};
pub use service::{GarbageCollected, InferenceSlot, InferenceStats, Service, ServiceConfig};
pub use store::{S3Credentials, S3Options, Store, StoreLocation};
pub mod server;
pub use server::{Server, ServerOptions};
