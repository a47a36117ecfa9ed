//! The model IR: a small DAG of typed layers on CHW tensors (batch 1), shapes checked at build time.
//!
//! A [`Model`] has one input (a name and a [`Shape`]), an ordered list of [`Node`]s in topological
//! order, and one output (the name of a node). Every node names its output value by its own name
//! and reads the values it lists in `inputs` (the model input or earlier nodes). A `Model` can only
//! be made through [`ModelBuilder`] or [`Model::from_nodes`], which check names, arities, shapes,
//! weight counts, finiteness and size limits, so a `Model` in hand is always well formed; every
//! pass that rewrites one goes back through the same checks.
//!
//! Operators ([`Op`]):
//! - linear with plaintext weights: [`Conv2d`], [`Pool2d`] as average pooling (global average
//!   pooling is the case `kernel = stride = input size`), [`Dense`], [`BatchNorm`] (only before
//!   [`Model::fold_batchnorm`], which the ONNX importer runs);
//! - activations: [`Op::Square`] (one ciphertext multiplication) and [`Polynomial`] (monomial
//!   coefficients, any degree);
//! - free relabelling and plumbing: [`Op::Reshape`] (Flatten is a reshape to `[n, 1, 1]`) and
//!   [`Op::Add`] (element-wise sum of two branches: residual connections);
//! - transitional, not evaluable under CKKS: [`Op::Activation`] (an [`Activation`]: ReLU,
//!   LeakyReLU, Clip (ReLU6), Sigmoid, Tanh, with [`Activation::apply`] its exact value) and
//!   [`Op::MaxPool2d`]; they exist only between import and conversion (`crate::convert`), which
//!   replaces each activation by a polynomial fitted to it and each max pool by an average pool.
//!
//! Tensors are CHW: a flat vector of `n` values has shape `[n, 1, 1]`. Values are laid out
//! channel-major then row-major, as in ONNX/PyTorch (NCHW with N = 1).
//!
//! The serde (JSON) form is `{"format_version", "input": {"name", "shape"}, "nodes": [...],
//! "output"}`, each node `{"name", "inputs", "op": {"kind": ..., fields}}`; deserializing runs the
//! same checks as building.
//!
//! Files: `shape` holds [`Shape`], `ops` the operators and their parameter structs with the checks
//! of each against its input shapes (and [`Node`]), `model` the [`Model`] itself with
//! [`ModelBuilder`], the accessors, the passes (depth accounting, pruning, BatchNorm folding) and
//! the JSON form; this file holds the limits and [`IrError`].

mod model;
mod ops;
mod shape;

use thiserror::Error;

pub(crate) use model::absorb_input_affine;
pub use model::{Model, ModelBuilder, NodeDepth};
pub use ops::{
    Activation, BatchNorm, Conv2d, Dense, Node, Op, Padding, Polynomial, Pool2d, ceil_log2,
};
pub use shape::Shape;

/// Version of the serialized model layout.
pub const IR_FORMAT: u32 = 1;
/// Most nodes a model may have.
pub const MAX_NODES: usize = 4096;
/// Most values one tensor (any node output or the input) may hold.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 24;
/// Highest polynomial degree accepted.
pub const MAX_POLY_DEGREE: usize = 1024;

/// Why a model (or a node of it) is not well formed, or cannot be used as asked.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum IrError {
    /// The model input is unusable (empty name, empty or too large shape).
    #[error("model input {name:?}: {reason}")]
    InvalidInput {
        /// The input's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A node name is empty, repeated, or equal to the input's name.
    #[error("node name {name:?} is empty or already used")]
    DuplicateName {
        /// The offending name.
        name: String,
    },
    /// A node reads a value that is neither the model input nor an earlier node.
    #[error(
        "node {node:?} ({op}) reads {input:?}, which is neither the model input nor an earlier node"
    )]
    UnknownInput {
        /// The reading node.
        node: String,
        /// Its operator.
        op: &'static str,
        /// The unknown value name.
        input: String,
    },
    /// A node's operator does not fit its inputs (arity, shapes, weight counts, attributes).
    #[error("node {node:?} ({op}): {reason}")]
    Invalid {
        /// The node.
        node: String,
        /// Its operator.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The model output does not name a node.
    #[error("the model output {name:?} is not a node of the model")]
    UnknownOutput {
        /// The name given as output.
        name: String,
    },
    /// Too many nodes.
    #[error("{count} nodes, the limit is {limit}")]
    TooManyNodes {
        /// Nodes given.
        count: usize,
        /// [`MAX_NODES`].
        limit: usize,
    },
    /// The model still holds an operator that has no CKKS evaluation (run the converter first).
    #[error("node {node:?} ({op}) cannot be evaluated under CKKS; convert the model first")]
    NotHeFriendly {
        /// The node.
        node: String,
        /// Its operator.
        op: &'static str,
    },
    /// An input tensor of the wrong shape was given to an executor.
    #[error("input of shape {found}, the model expects {expected}")]
    InputShape {
        /// The model's input shape.
        expected: Shape,
        /// The shape given.
        found: Shape,
    },
    /// A tensor's data length does not match its shape.
    #[error("tensor of shape {shape} needs {expected} values, {found} given")]
    TensorLength {
        /// The shape.
        shape: Shape,
        /// Values it needs.
        expected: usize,
        /// Values given.
        found: usize,
    },
    /// A serialized model of another layout version.
    #[error("model format_version {found}, this build reads {expected}")]
    Format {
        /// Version found.
        found: u32,
        /// [`IR_FORMAT`].
        expected: u32,
    },
}

/// Result type of the IR.
pub type Result<T, E = IrError> = std::result::Result<T, E>;
