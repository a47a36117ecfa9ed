//! Compiler and executor errors.

use thiserror::Error;

/// Everything the compiler and the executors can report.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CompileError {
    /// A layer does not fit its input shape.
    #[error("layer {layer}: {detail}")]
    Shape {
        /// Index of the layer.
        layer: usize,
        /// What is wrong.
        detail: String,
    },
    /// The input tensor is unusable.
    #[error("input: {0}")]
    Input(String),
    /// The network needs more than the parameters offer.
    #[error("does not fit: {0}")]
    DoesNotFit(String),
    /// An error from the CKKS library.
    #[error(transparent)]
    Ckks(#[from] cipherinfer_ckks::Error),
    /// The evaluation was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The model needs more levels than a caller's bound allows.
    #[error("the model needs multiplicative depth {needed}, the bound is {bound}")]
    DepthExceeded {
        /// Depth of the plan.
        needed: usize,
        /// The caller's bound.
        bound: usize,
    },
    /// The evaluation keys lack rotation keys the plan uses.
    #[error("missing rotation keys for steps {steps:?}")]
    MissingRotationKeys {
        /// The rotation steps without a key.
        steps: Vec<i64>,
    },
    /// The plan multiplies ciphertexts and no relinearization key was given.
    #[error("missing the relinearization key")]
    MissingRelinearizationKey,
    /// Even the smallest rotation-key set (powers of two) exceeds the key budget.
    #[error(
        "the evaluation keys need at least {smallest} bytes (rotations composed of powers of two), above the budget of {budget} bytes"
    )]
    KeyBudget {
        /// The budget, bytes.
        budget: u64,
        /// The smallest bundle, bytes.
        smallest: u64,
    },
    /// Replacing ReLU-like activations or MaxPool by polynomials failed.
    #[error("conversion: {0}")]
    Conversion(#[from] cipherinfer_model::ConvertError),
    /// A network that is not HE-friendly came without calibration inputs.
    #[error(
        "the network uses {0}, which is approximated by polynomials over the input ranges seen on calibration images; give some (a calibration/ or test/ directory in the model package)"
    )]
    NeedsCalibration(String),
}

impl CompileError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            CompileError::Shape { .. } => "invalid_model",
            CompileError::Input(_) => "invalid_input",
            CompileError::DoesNotFit(_) => "depth_exceeded",
            CompileError::Ckks(e) => e.code(),
            CompileError::Cancelled => "cancelled",
            CompileError::DepthExceeded { .. } => "depth_exceeded",
            CompileError::MissingRotationKeys { .. } => "invalid_galois_key",
            CompileError::MissingRelinearizationKey => "missing_relinearization_key",
            CompileError::KeyBudget { .. } => "key_budget_exceeded",
            CompileError::Conversion(_) => "conversion_failed",
            CompileError::NeedsCalibration(_) => "needs_calibration",
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, CompileError>;
