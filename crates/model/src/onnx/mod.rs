//! ONNX import: a bounded protobuf decoder for the subset PyTorch exports, and the translation of
//! the decoded graph into the IR ([`crate::ir::Model`]).
//!
//! [`decode`] reads `ModelProto → GraphProto` (nodes with their attributes, initializers, graph
//! inputs and outputs) from untrusted bytes: every length is checked against the bytes that are
//! really there and against [`Limits`] before anything is allocated, and malformed, truncated or
//! hostile input gives an [`OnnxError`], never a panic. [`import`] then maps the operators to IR
//! nodes and folds BatchNorm into the neighbouring linear layers; [`import_with_notes`] also says
//! what the import changed without changing the prediction (a dropped final Softmax).
//!
//! Supported operators (default domain), in the forms `torch.onnx.export` writes with the
//! TorchScript exporter (`dynamo=False`) and the dynamo exporter (`dynamo=True`, opset 18, where
//! several attributes became inputs):
//!
//! - layers: Conv (any `group`: grouped and depthwise), Gemm, MatMul (+ Add of a constant as its
//!   bias), BatchNormalization (folded), AveragePool, GlobalAveragePool, ReduceMean over height
//!   and width (a global average pool), MaxPool;
//! - activations: Relu, LeakyRelu (`alpha`, default 0.01), Clip (ReLU6, clamp; bounds as constant
//!   inputs since opset 11 or attributes before, an omitted bound is none), Sigmoid, Tanh — all
//!   transitional ([`crate::ir::Activation`]), `Mul(x, x)` and `Pow(x, 2)` as a square;
//! - Pad with zeros (mode `constant`, value 0, on height and width; pads as attribute or constant
//!   input, with `axes` since opset 18), only right before a Conv: folded into its padding;
//! - Softmax and LogSoftmax over the classes, only as the last operator producing the graph
//!   output: dropped (the predicted class is the same), with a note in [`Imported::notes`];
//! - plumbing: Flatten, Reshape, Add (two branches: residual; a constant: the bias of the Conv,
//!   Gemm or MatMul before it), Identity and Dropout (no-ops), Cast of a computed value to FLOAT,
//!   Constant;
//! - static computations, evaluated at import time when every input is a constant (the shape and
//!   pads arithmetic exporters leave in graphs): Shape of a computed value (its shape is known),
//!   Gather, Concat, Cast, Unsqueeze, Squeeze, Slice, Transpose, Reshape, ConstantOfShape, Add,
//!   Sub, Mul, Div, Neg.
//!
//! An operator outside this list is [`OnnxError::UnsupportedOperator`], naming the operator and
//! the node; a listed one used in a way the importer does not translate (a reflect pad, a Softmax
//! inside the network, Clip bounds computed at run time, a shape computed from the image, ...) is
//! [`OnnxError::Unsupported`], naming the node and its operator and saying what to change.
//!
//! The batch dimension must be 1 (or symbolic): tensors are `[1, C, H, W]` or `[1, N]`, which the
//! IR holds as `C x H x W` and `N x 1 x 1`.
//!
//! The module is split by stage: `decode` (with its `wire` part) holds the bounded decoder and the
//! decoded message structs, `translate` (with its `operators` part) the translation of a decoded
//! graph into the IR (and its `fold` part the import-time evaluation of constant subgraphs); this
//! file holds the errors, the limits and options, and the entry points.

mod decode;
mod translate;

use thiserror::Error;

use crate::ir::{IrError, Model};

pub use decode::{
    AttributeValue, DATA_DOUBLE, DATA_FLOAT, DATA_INT32, DATA_INT64, OnnxAttribute, OnnxGraph,
    OnnxModel, OnnxNode, OnnxTensor, OnnxValueInfo, TensorData,
};
pub use translate::{OPSET_RANGE, translate, translate_with_notes};

use decode::Decoder;

/// Why an ONNX file could not be imported.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// The bytes are not a well-formed protobuf of the expected messages.
    #[error("malformed ONNX at {at}: {reason}")]
    Malformed {
        /// Where in the message tree (e.g. `graph.node[3].attribute[1]`).
        at: String,
        /// What is wrong.
        reason: String,
    },
    /// A size limit was exceeded.
    #[error("ONNX {what}: {size} exceeds the limit of {limit}")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// The size found (or at least found).
        size: u64,
        /// The limit ([`Limits`]).
        limit: u64,
    },
    /// An operator this importer does not translate.
    #[error("unsupported ONNX operator {op_type:?} (domain {domain:?}) in node {node:?}")]
    UnsupportedOperator {
        /// The node's `op_type`.
        op_type: String,
        /// The node's domain (empty for the default domain).
        domain: String,
        /// The node's name (or its first output when unnamed).
        node: String,
    },
    /// A supported operator used in a way the importer does not translate (attribute values,
    /// constant operands, ranks, ...).
    #[error("node {node:?} ({op_type}): {reason}")]
    Unsupported {
        /// The node.
        node: String,
        /// Its `op_type`.
        op_type: String,
        /// What is not supported.
        reason: String,
    },
    /// The graph is inconsistent (undefined values, wrong operand counts, bad tensors).
    #[error("invalid ONNX graph: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// The translated model failed the IR's checks.
    #[error("the imported model is not valid: {0}")]
    Ir(#[from] IrError),
}

/// Result type of the importer.
pub type Result<T, E = OnnxError> = std::result::Result<T, E>;

/// Size limits applied while decoding untrusted bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file accepted, in bytes.
    pub max_bytes: usize,
    /// Most nodes in the graph.
    pub max_nodes: usize,
    /// Most initializers.
    pub max_initializers: usize,
    /// Most attributes on one node.
    pub max_attributes: usize,
    /// Most dimensions of one tensor.
    pub max_rank: usize,
    /// Most values in one tensor.
    pub max_tensor_elements: u64,
    /// Most values in all tensors and attribute lists together.
    pub max_total_elements: u64,
    /// Most values in one attribute list (`ints`, `floats`).
    pub max_attribute_values: u64,
    /// Longest name or string attribute, in bytes.
    pub max_string: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: crate::manifest::MAX_MODEL_BYTES as usize,
            max_nodes: 4096,
            max_initializers: 4096,
            max_attributes: 64,
            max_rank: 8,
            max_tensor_elements: 1 << 24,
            max_total_elements: 1 << 25,
            max_attribute_values: 1 << 12,
            max_string: 4096,
        }
    }
}

/// How [`import_with`] imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// Decoding limits.
    pub limits: Limits,
    /// Run [`Model::fold_batchnorm`] after translation (the default); off keeps BatchNorm nodes.
    pub fold_batchnorm: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            fold_batchnorm: true,
        }
    }
}

/// An imported model with what the importer changed in it that a user should know.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The IR model.
    pub model: Model,
    /// One sentence per change that is not an exact translation but keeps the predicted class
    /// (e.g. a final Softmax dropped), in graph order; empty for most models.
    pub notes: Vec<String>,
}

/// Decodes ONNX bytes into the message subset the importer reads, within the default [`Limits`].
pub fn decode(bytes: &[u8]) -> Result<OnnxModel> {
    decode_with(bytes, &Limits::default())
}

/// Decodes ONNX bytes within the given limits.
pub fn decode_with(bytes: &[u8], limits: &Limits) -> Result<OnnxModel> {
    if bytes.len() > limits.max_bytes {
        return Err(OnnxError::TooLarge {
            what: "file size in bytes",
            size: bytes.len() as u64,
            limit: limits.max_bytes as u64,
        });
    }
    Decoder::new(*limits).model(bytes)
}

/// Imports ONNX bytes into an IR model, folding BatchNorm (default options).
pub fn import(bytes: &[u8]) -> Result<Model> {
    import_with(bytes, &ImportOptions::default())
}

/// Imports ONNX bytes with the given options.
pub fn import_with(bytes: &[u8], options: &ImportOptions) -> Result<Model> {
    import_with_notes(bytes, options).map(|i| i.model)
}

/// Imports ONNX bytes with the given options, keeping the importer's notes ([`Imported`]).
pub fn import_with_notes(bytes: &[u8], options: &ImportOptions) -> Result<Imported> {
    let onnx = decode_with(bytes, &options.limits)?;
    let mut imported = translate_with_notes(&onnx)?;
    if options.fold_batchnorm {
        imported.model = imported.model.fold_batchnorm()?;
    }
    Ok(imported)
}
