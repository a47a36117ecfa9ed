//! Wire vocabulary of cipherinfer's ciphertext inference extension for MCP
//! (draft-li-pearg-ciphertext-inference-tool-mcp-00), shared by the remote server, the local
//! server and the client. Pure types and validation: no transport, no async runtime.
//!
//! - [`error`]: `ERROR_*` codes and the [`ToolError`] payload of failed tool calls.
//! - [`algorithm`]: Algorithm IDs (`CKKS-RNS-128-N8192-CIFR1`).
//! - [`params`]: the draft's 7.1 parameter block and 7.2 telemetry; conversion to CKKS.
//! - [`validate`]: untrusted-input checks (names, chunks, bounded Base64) and [`Limits`].
//! - [`auth`]: bearer tokens, their stored hash and constant-time verification.
//! - [`canonical`]: canonical bytes of a tool call for MACs and signatures.
//! - [`integrity`]: Ed25519 identities, signed key bundles, requests and results; replay window.
//! - [`remote`]: remote server tool arguments and results (Step 0, upload, inference, ...).
//! - [`local`]: local server tool arguments and results (keygen, encrypt, decrypt, classify).
//! - [`client_spec`]: the model's client specification (the compiler's [`ClientSpec`]), typed.
//!
//! `docs/protocol.md` is the normative description of the wire format.

pub mod algorithm;
pub mod auth;
pub mod canonical;
pub mod client_spec;
pub mod error;
pub mod integrity;
pub mod local;
pub mod output;
pub mod params;
pub mod remote;
pub mod validate;

pub use algorithm::{AlgorithmId, Scheme};
pub use auth::{AuthToken, TokenHash};
pub use canonical::{canonical_call_bytes, canonical_json};
pub use client_spec::ClientSpec;
pub use error::{ErrorCode, Result, ToolError, parse_arguments};
pub use params::{ExtendedParameters, InferenceTelemetry, SchemeContext};
pub use validate::Limits;
