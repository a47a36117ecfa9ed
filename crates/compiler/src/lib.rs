//! Compiles HE-friendly CNNs into CKKS plans and runs them.
//!
//! [`network`] holds the layer chain and its plaintext forward pass; [`linear`] turns linear
//! layers into composable affine operators; [`plan`] chooses slot layouts, fuses linear runs and
//! lowers them to diagonals (with a cleartext executor of the plan); [`exec`] binds a plan to
//! CKKS parameters and evaluates it on ciphertexts.

pub mod client;
pub mod error;
pub mod exec;
pub mod import;
pub mod linear;
pub mod network;
pub mod plan;
pub mod select;

pub use client::ClientSpec;
pub use error::{CompileError, Result};
pub use exec::{EvalReport, HeModel};
pub use import::{
    Compiled, compile_for_serving, compile_model, compile_model_auto, compile_model_batch,
};
pub use network::{Layer, Network, Shape};
pub use plan::{CompileOptions, Plan, SlotMap, Step, compile, compile_with, output_divisor_for};
pub use select::{select_literal, select_parameters};
