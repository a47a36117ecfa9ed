//! The local (trusted) half of cipherinfer: the crypto server that holds every secret key.
//!
//! - [`store`]: the on-disk key store (secret key, key-set record, public evaluation-key
//!   bundle, remote credentials), private file modes and atomic writes.
//! - [`image`]: PNG/JPEG decoding with limits, resizing and per-channel normalization.
//! - [`crypto`]: [`LocalCrypto`], one synchronous method per tool (`generate_keys`,
//!   `export_evaluation_keys`, `fhe_encrypt`, `fhe_decrypt`).
//! - [`output`]: the file format of encrypted results and the precision estimate.
//! - [`classify`]: `private_classify` (Steps 0–6 through the client crate's workflow), the
//!   in-process [`InProcess`] tools and the key store as credential store.
//! - [`server`]: the MCP face ([`LocalHandler`]) over stdio, and over Streamable HTTP bound to
//!   loopback only.
//!
//! Secret keys never leave this crate's memory except into `secret.key` (mode 0600); they never
//! appear in `Debug` output, logs, errors or tool results.

pub mod classify;
pub mod crypto;
pub mod fsutil;
pub mod image;
pub mod output;
pub mod server;
pub mod store;

pub use classify::{
    Classifier, ClassifierOptions, InProcess, LocalServerOptions, default_client_id, local_handler,
    serve_local_stdio,
};
pub use crypto::{LocalConfig, LocalCrypto};
pub use server::{ClassifyContext, LocalHandler, PrivateClassify, Progress, serve_stdio};
pub use store::{ClientRecord, KeyStore, LoadedClient, RemoteCredentials};
