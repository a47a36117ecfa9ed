//! Compiles HE-friendly CNNs into CKKS plans and runs them.
//!
//! [`network`] holds the layer chain and its plaintext forward pass; [`linear`] turns linear
//! layers into composable affine operators; [`plan`] chooses slot layouts, fuses linear runs and
//! lowers them to diagonals (with a cleartext executor of the plan); [`exec`] binds a plan to
//! CKKS parameters and evaluates it on ciphertexts. [`import`] takes a network from the model
//! IR (converting ReLU-like activations and MaxPool) and [`select`] chooses its parameters at a
//! security level; [`keyset`] chooses the rotation keys against a size budget; [`artifact`] is the compiled-model file `serve` loads and [`report`] what
//! `compile` prints.

pub mod artifact;
pub mod client;
pub mod degree;
pub mod error;
pub mod exec;
pub mod import;
pub mod keyset;
pub mod linear;
pub mod network;
pub mod plan;
pub mod report;
pub mod select;

pub use artifact::{Artifact, ArtifactError};
pub use client::ClientSpec;
pub use degree::{DegreeSearch, compile_choosing_degree};
pub use error::{CompileError, Result};
pub use exec::{EvalReport, HeModel};
pub use import::{
    Compiled, ServingOptions, compile_converted, compile_for_serving, compile_model,
    compile_model_auto, compile_model_batch,
};
pub use network::{Layer, Network, Shape};
pub use plan::{
    CompileOptions, Plan, RotationUse, SlotMap, Step, compile, compile_with, output_divisor_for,
};
pub use report::CompileReport;
pub use select::{select_literal, select_parameters};
