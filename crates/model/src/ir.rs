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
//! - transitional, not evaluable under CKKS: [`Op::Relu`] and [`Op::MaxPool2d`]; they exist only
//!   between import and conversion (`crate::convert`).
//!
//! Tensors are CHW: a flat vector of `n` values has shape `[n, 1, 1]`. Values are laid out
//! channel-major then row-major, as in ONNX/PyTorch (NCHW with N = 1).
//!
//! The serde (JSON) form is `{"format_version", "input": {"name", "shape"}, "nodes": [...],
//! "output"}`, each node `{"name", "inputs", "op": {"kind": ..., fields}}`; deserializing runs the
//! same checks as building.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

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

/// Shape of a CHW tensor (batch 1). A flat vector of `n` values is `[n, 1, 1]`.
///
/// Serialized as `[channels, height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "[usize; 3]", into = "[usize; 3]")]
pub struct Shape {
    /// Channels (or features, for a flat vector).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl From<[usize; 3]> for Shape {
    fn from([channels, height, width]: [usize; 3]) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }
}

impl From<Shape> for [usize; 3] {
    fn from(s: Shape) -> Self {
        [s.channels, s.height, s.width]
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

impl Shape {
    /// `channels x height x width`.
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }

    /// A flat vector of `n` values: `[n, 1, 1]`.
    pub const fn flat(n: usize) -> Self {
        Self::new(n, 1, 1)
    }

    /// Number of values, or `None` on overflow.
    pub fn checked_len(&self) -> Option<usize> {
        self.channels
            .checked_mul(self.height)?
            .checked_mul(self.width)
    }

    /// Number of values (saturating; shapes inside a [`Model`] never overflow).
    pub fn len(&self) -> usize {
        self.checked_len().unwrap_or(usize::MAX)
    }

    /// Whether the shape holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is a flat vector (`height == width == 1`).
    pub fn is_flat(&self) -> bool {
        self.height == 1 && self.width == 1
    }

    /// Values per channel (`height * width`).
    pub fn plane(&self) -> usize {
        self.height.saturating_mul(self.width)
    }

    /// The same values as a flat vector.
    pub fn flattened(&self) -> Self {
        Self::flat(self.len())
    }

    fn check(&self) -> Result<(), String> {
        match self.checked_len() {
            Some(0) => Err(format!("empty shape {self}")),
            Some(n) if n <= MAX_TENSOR_ELEMENTS => Ok(()),
            _ => Err(format!(
                "shape {self} holds more than {MAX_TENSOR_ELEMENTS} values"
            )),
        }
    }
}

/// Zero padding around the spatial dimensions (ONNX `pads` order: top, left, bottom, right).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Padding {
    /// Rows added above.
    pub top: usize,
    /// Columns added on the left.
    pub left: usize,
    /// Rows added below.
    pub bottom: usize,
    /// Columns added on the right.
    pub right: usize,
}

impl Padding {
    /// The same padding on every side.
    pub const fn uniform(p: usize) -> Self {
        Self {
            top: p,
            left: p,
            bottom: p,
            right: p,
        }
    }

    /// Whether no padding is added.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// 2-D convolution (cross-correlation, as in ONNX/PyTorch) with plaintext weights.
///
/// `weights` are `[out_channels][in_channels / groups][kernel[0]][kernel[1]]`, row-major; output
/// channel `o` belongs to group `o / (out_channels / groups)` and reads the input channels of that
/// group. Dilation is always 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Zero padding.
    pub padding: Padding,
    /// Channel groups (1 = dense convolution; `in_channels` = depthwise).
    pub groups: usize,
    /// Weights, `out_channels * in_channels / groups * kernel[0] * kernel[1]` values.
    pub weights: Vec<f64>,
    /// One bias per output channel.
    pub bias: Vec<f64>,
}

impl Conv2d {
    /// Input channels each group (and so each output channel) reads.
    pub fn in_per_group(&self) -> usize {
        self.in_channels / self.groups.max(1)
    }

    /// Output channels per group.
    pub fn out_per_group(&self) -> usize {
        self.out_channels / self.groups.max(1)
    }

    /// Index in `weights` of output channel `o`, in-group input channel `i`, tap `(ky, kx)`.
    pub fn weight_index(&self, o: usize, i: usize, ky: usize, kx: usize) -> usize {
        ((o * self.in_per_group() + i) * self.kernel[0] + ky) * self.kernel[1] + kx
    }

    fn output_shape(&self, input: Shape) -> Result<Shape, String> {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        if self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return Err(format!(
                "{} groups do not divide {} input and {} output channels",
                self.groups, self.in_channels, self.out_channels
            ));
        }
        if input.channels != self.in_channels {
            return Err(format!(
                "input has {} channels, the convolution expects {}",
                input.channels, self.in_channels
            ));
        }
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 || self.out_channels == 0 {
            return Err("kernel, stride and output channels must be positive".into());
        }
        let expected = self
            .out_channels
            .checked_mul(self.in_per_group())
            .and_then(|n| n.checked_mul(kh))
            .and_then(|n| n.checked_mul(kw))
            .ok_or("weight count overflows")?;
        check_len("weights", self.weights.len(), expected)?;
        check_len("bias", self.bias.len(), self.out_channels)?;
        check_finite("weights", &self.weights)?;
        check_finite("bias", &self.bias)?;
        let p = self.padding;
        let out_dim = |n: usize, before: usize, after: usize, k: usize, s: usize| {
            let padded = n.checked_add(before)?.checked_add(after)?;
            (padded >= k).then(|| (padded - k) / s + 1)
        };
        match (
            out_dim(input.height, p.top, p.bottom, kh, sh),
            out_dim(input.width, p.left, p.right, kw, sw),
        ) {
            (Some(h), Some(w)) => Ok(Shape::new(self.out_channels, h, w)),
            _ => Err(format!(
                "kernel {kh}x{kw} is larger than the padded input {input} (padding {p:?})"
            )),
        }
    }
}

/// 2-D pooling window without padding (average pooling, or max pooling before conversion).
///
/// The output has `(H - kernel) / stride + 1` rows (floor, as ONNX with `ceil_mode = 0`). Global
/// average pooling is `kernel = stride = [H, W]` ([`Pool2d::global`]), giving `[C, 1, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool2d {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
}

impl Pool2d {
    /// A square window with the stride equal to the window (non-overlapping), e.g. 2x2 / 2.
    pub const fn square(k: usize) -> Self {
        Self {
            kernel: [k, k],
            stride: [k, k],
        }
    }

    /// Global pooling over an input of shape `input`: one value per channel.
    pub const fn global(input: Shape) -> Self {
        Self {
            kernel: [input.height, input.width],
            stride: [input.height, input.width],
        }
    }

    /// Whether this window covers the whole of an input of shape `input` (global pooling).
    pub fn is_global(&self, input: Shape) -> bool {
        self.kernel == [input.height, input.width]
    }

    /// Number of values in one window.
    pub fn window(&self) -> usize {
        self.kernel[0].saturating_mul(self.kernel[1])
    }

    fn output_shape(&self, input: Shape) -> Result<Shape, String> {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
            return Err("kernel and stride must be positive".into());
        }
        if kh > input.height || kw > input.width {
            return Err(format!("window {kh}x{kw} is larger than the input {input}"));
        }
        Ok(Shape::new(
            input.channels,
            (input.height - kh) / sh + 1,
            (input.width - kw) / sw + 1,
        ))
    }
}

/// Fully connected layer `y = W x + b` on a flat input (Gemm, MatMul+Add).
///
/// `weights` are `[out_features][in_features]`, row-major (PyTorch `Linear.weight`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dense {
    /// Input length.
    pub in_features: usize,
    /// Output length.
    pub out_features: usize,
    /// Weights, `out_features * in_features` values.
    pub weights: Vec<f64>,
    /// One bias per output.
    pub bias: Vec<f64>,
}

impl Dense {
    /// Row `o` of the weight matrix.
    pub fn row(&self, o: usize) -> &[f64] {
        let n = self.in_features;
        self.weights.get(o * n..(o + 1) * n).unwrap_or(&[])
    }

    fn output_shape(&self, input: Shape) -> Result<Shape, String> {
        if !input.is_flat() {
            return Err(format!(
                "input {input} is not flat; a Reshape (Flatten) must come first"
            ));
        }
        if input.channels != self.in_features {
            return Err(format!(
                "input has {} features, the layer expects {}",
                input.channels, self.in_features
            ));
        }
        if self.out_features == 0 {
            return Err("no output feature".into());
        }
        let expected = self
            .out_features
            .checked_mul(self.in_features)
            .ok_or("weight count overflows")?;
        check_len("weights", self.weights.len(), expected)?;
        check_len("bias", self.bias.len(), self.out_features)?;
        check_finite("weights", &self.weights)?;
        check_finite("bias", &self.bias)?;
        Ok(Shape::flat(self.out_features))
    }
}

/// Inference-mode batch normalization as a per-channel affine map `y = scale[c] * x + shift[c]`.
///
/// It only exists between import and [`Model::fold_batchnorm`], which merges it into the
/// neighbouring linear layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    /// Multiplier per channel.
    pub scale: Vec<f64>,
    /// Offset per channel.
    pub shift: Vec<f64>,
}

impl BatchNorm {
    /// From the trained statistics: `scale = gamma / sqrt(var + eps)`, `shift = beta - mean * scale`.
    pub fn from_stats(gamma: &[f64], beta: &[f64], mean: &[f64], var: &[f64], eps: f64) -> Self {
        let scale: Vec<f64> = gamma
            .iter()
            .zip(var)
            .map(|(&g, &v)| g / (v + eps).sqrt())
            .collect();
        let shift = beta
            .iter()
            .zip(mean)
            .zip(&scale)
            .map(|((&b, &m), &s)| b - m * s)
            .collect();
        Self { scale, shift }
    }

    fn output_shape(&self, input: Shape) -> Result<Shape, String> {
        check_len("scale", self.scale.len(), input.channels)?;
        check_len("shift", self.shift.len(), input.channels)?;
        check_finite("scale", &self.scale)?;
        check_finite("shift", &self.shift)?;
        Ok(input)
    }
}

/// Element-wise polynomial `Σ coeffs[i] · x^i` (monomial basis, lowest degree first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Polynomial {
    /// Coefficients, lowest degree first; at least one.
    pub coeffs: Vec<f64>,
    /// The input interval the polynomial was fitted on, if known. Inputs outside it may be far off
    /// the approximated function; executors may use it to rescale or to re-expand the polynomial
    /// in the Chebyshev basis, which is better conditioned under CKKS.
    #[serde(default)]
    pub interval: Option<[f64; 2]>,
}

impl Polynomial {
    /// A polynomial from monomial coefficients, lowest degree first, with no known interval.
    pub fn new(coeffs: Vec<f64>) -> Self {
        Self {
            coeffs,
            interval: None,
        }
    }

    /// Degree (index of the highest non-zero coefficient; 0 for a constant).
    pub fn degree(&self) -> usize {
        self.coeffs.iter().rposition(|&c| c != 0.0).unwrap_or(0)
    }

    /// Value at `x` (Horner).
    pub fn evaluate(&self, x: f64) -> f64 {
        self.coeffs.iter().rev().fold(0.0, |acc, &c| acc * x + c)
    }

    /// Levels a CKKS evaluation consumes: `⌈log2 d⌉ + 1` for degree `d ≥ 1` (the powers by a
    /// product tree, then one scalar multiplication by the coefficients), 0 for a constant.
    pub fn depth(&self) -> u32 {
        match self.degree() {
            0 => 0,
            d => ceil_log2(d) + 1,
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.coeffs.is_empty() {
            return Err("no coefficient".into());
        }
        if self.coeffs.len() > MAX_POLY_DEGREE + 1 {
            return Err(format!(
                "{} coefficients, the limit is degree {MAX_POLY_DEGREE}",
                self.coeffs.len()
            ));
        }
        check_finite("coefficients", &self.coeffs)?;
        if let Some([a, b]) = self.interval
            && !(a.is_finite() && b.is_finite() && a < b)
        {
            return Err(format!("invalid interval [{a}, {b}]"));
        }
        Ok(())
    }
}

/// `⌈log2 d⌉` (0 for `d ≤ 1`).
pub fn ceil_log2(d: usize) -> u32 {
    if d <= 1 {
        0
    } else {
        usize::BITS - (d - 1).leading_zeros()
    }
}

/// The operator of a node. See the module documentation for the families.
///
/// Deliberately exhaustive: a new operator must break every `match` of a compiler or executor
/// until it handles it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    /// Convolution with plaintext weights. One input.
    Conv2d(Conv2d),
    /// Average pooling (global average pooling as a case). One input.
    AvgPool2d(Pool2d),
    /// Fully connected layer on a flat input. One input.
    Dense(Dense),
    /// Per-channel affine map; removed by [`Model::fold_batchnorm`]. One input.
    BatchNorm(BatchNorm),
    /// `x²`, element-wise: one ciphertext multiplication. One input.
    Square,
    /// Element-wise polynomial. One input.
    Polynomial(Polynomial),
    /// Same values in a new shape (same count, same CHW order). One input.
    Reshape {
        /// The new shape.
        shape: Shape,
    },
    /// Element-wise sum of two inputs of equal shape (residual connection).
    Add,
    /// `max(x, 0)`: transitional, replaced by a [`Polynomial`] by the converter. One input.
    Relu,
    /// Max pooling: transitional, replaced by average pooling by the converter. One input.
    MaxPool2d(Pool2d),
}

impl Op {
    /// Short name of the operator, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d(_) => "Conv2d",
            Op::AvgPool2d(_) => "AvgPool2d",
            Op::Dense(_) => "Dense",
            Op::BatchNorm(_) => "BatchNorm",
            Op::Square => "Square",
            Op::Polynomial(_) => "Polynomial",
            Op::Reshape { .. } => "Reshape",
            Op::Add => "Add",
            Op::Relu => "Relu",
            Op::MaxPool2d(_) => "MaxPool2d",
        }
    }

    /// Number of inputs the operator reads.
    pub fn arity(&self) -> usize {
        match self {
            Op::Add => 2,
            _ => 1,
        }
    }

    /// Whether the operator is a linear map with plaintext weights (plus a constant): these are
    /// the layers that adjacent ones can be merged with.
    pub fn is_linear(&self) -> bool {
        matches!(
            self,
            Op::Conv2d(_) | Op::AvgPool2d(_) | Op::Dense(_) | Op::BatchNorm(_)
        )
    }

    /// Whether the operator is an activation (a non-linear element-wise map).
    pub fn is_activation(&self) -> bool {
        matches!(self, Op::Square | Op::Polynomial(_) | Op::Relu)
    }

    /// Whether CKKS can evaluate the operator (everything but `Relu` and `MaxPool2d`).
    pub fn is_he_friendly(&self) -> bool {
        !matches!(self, Op::Relu | Op::MaxPool2d(_))
    }

    /// Levels the operator consumes on its own under CKKS, or `None` if it cannot be evaluated:
    /// 1 per plaintext-weight linear layer and per square, `⌈log2 d⌉ + 1` for a degree-`d`
    /// polynomial, 0 for reshapes and additions.
    pub fn depth(&self) -> Option<u32> {
        match self {
            Op::Conv2d(_) | Op::AvgPool2d(_) | Op::Dense(_) | Op::BatchNorm(_) | Op::Square => {
                Some(1)
            }
            Op::Polynomial(p) => Some(p.depth()),
            Op::Reshape { .. } | Op::Add => Some(0),
            Op::Relu | Op::MaxPool2d(_) => None,
        }
    }

    /// Output shape for inputs of the given shapes, or why the operator does not fit them.
    pub fn output_shape(&self, inputs: &[Shape]) -> Result<Shape, String> {
        if inputs.len() != self.arity() {
            return Err(format!(
                "{} inputs, the operator takes {}",
                inputs.len(),
                self.arity()
            ));
        }
        let first = inputs.first().copied().ok_or("no input")?;
        let out = match self {
            Op::Conv2d(c) => c.output_shape(first)?,
            Op::AvgPool2d(p) | Op::MaxPool2d(p) => p.output_shape(first)?,
            Op::Dense(d) => d.output_shape(first)?,
            Op::BatchNorm(b) => b.output_shape(first)?,
            Op::Square | Op::Relu => first,
            Op::Polynomial(p) => {
                p.check()?;
                first
            }
            Op::Reshape { shape } => {
                if shape.checked_len() != Some(first.len()) {
                    return Err(format!(
                        "cannot reshape {first} ({} values) to {shape}",
                        first.len()
                    ));
                }
                *shape
            }
            Op::Add => {
                let second = inputs.get(1).copied().ok_or("no second input")?;
                if first != second {
                    return Err(format!("adds shapes {first} and {second}"));
                }
                first
            }
        };
        out.check()?;
        Ok(out)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Conv2d(c) => {
                write!(
                    f,
                    "Conv2d {}x{} {}->{} stride {}x{}",
                    c.kernel[0],
                    c.kernel[1],
                    c.in_channels,
                    c.out_channels,
                    c.stride[0],
                    c.stride[1]
                )?;
                if !c.padding.is_zero() {
                    let p = c.padding;
                    write!(f, " pad {},{},{},{}", p.top, p.left, p.bottom, p.right)?;
                }
                if c.groups != 1 {
                    write!(f, " groups {}", c.groups)?;
                }
                Ok(())
            }
            Op::AvgPool2d(p) | Op::MaxPool2d(p) => write!(
                f,
                "{} {}x{} stride {}x{}",
                self.kind(),
                p.kernel[0],
                p.kernel[1],
                p.stride[0],
                p.stride[1]
            ),
            Op::Dense(d) => write!(f, "Dense {}->{}", d.in_features, d.out_features),
            Op::Polynomial(p) => {
                write!(f, "Polynomial degree {}", p.degree())?;
                if let Some([a, b]) = p.interval {
                    write!(f, " on [{a:.3}, {b:.3}]")?;
                }
                Ok(())
            }
            Op::Reshape { shape } => write!(f, "Reshape to {shape}"),
            _ => f.write_str(self.kind()),
        }
    }
}

/// One node: an operator, the values it reads, and its name (which also names its output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Name of the node and of its output value; unique in the model.
    pub name: String,
    /// Names of the values read: the model input or earlier nodes, `op.arity()` of them.
    pub inputs: Vec<String>,
    /// The operator.
    pub op: Op,
}

impl Node {
    /// A node reading `inputs`.
    pub fn new(name: impl Into<String>, op: Op, inputs: &[&str]) -> Self {
        Self {
            name: name.into(),
            inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
            op,
        }
    }

    /// The first (for most operators the only) input.
    pub fn input(&self) -> &str {
        self.inputs.first().map_or("", String::as_str)
    }
}

/// A well-formed model: input, nodes in topological order with their output shapes, output.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    input_name: String,
    input_shape: Shape,
    nodes: Vec<Node>,
    shapes: Vec<Shape>,
    output: usize,
}

/// Builds a [`Model`] node by node, checking each node as it is added.
#[derive(Debug, Clone)]
pub struct ModelBuilder {
    input_name: String,
    input_shape: Shape,
    nodes: Vec<Node>,
    shapes: Vec<Shape>,
    index: HashMap<String, usize>,
}

impl ModelBuilder {
    /// Starts a model whose input is called `name` and has shape `shape`.
    pub fn new(name: impl Into<String>, shape: Shape) -> Result<Self> {
        let name = name.into();
        let invalid = |reason: String| IrError::InvalidInput {
            name: name.clone(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("empty name".into()));
        }
        shape.check().map_err(invalid)?;
        Ok(Self {
            input_name: name,
            input_shape: shape,
            nodes: Vec::new(),
            shapes: Vec::new(),
            index: HashMap::new(),
        })
    }

    /// Shape of a value defined so far (the input or a node), if any.
    pub fn shape_of(&self, value: &str) -> Option<Shape> {
        if value == self.input_name {
            return Some(self.input_shape);
        }
        self.index.get(value).map(|&i| self.shapes[i])
    }

    /// Adds a node and returns its output shape.
    pub fn push(&mut self, node: Node) -> Result<Shape> {
        if self.nodes.len() >= MAX_NODES {
            return Err(IrError::TooManyNodes {
                count: self.nodes.len() + 1,
                limit: MAX_NODES,
            });
        }
        if node.name.is_empty()
            || node.name == self.input_name
            || self.index.contains_key(&node.name)
        {
            return Err(IrError::DuplicateName { name: node.name });
        }
        let op = node.op.kind();
        let mut shapes = Vec::with_capacity(node.inputs.len());
        for input in &node.inputs {
            let shape = self.shape_of(input).ok_or_else(|| IrError::UnknownInput {
                node: node.name.clone(),
                op,
                input: input.clone(),
            })?;
            shapes.push(shape);
        }
        let shape = node
            .op
            .output_shape(&shapes)
            .map_err(|reason| IrError::Invalid {
                node: node.name.clone(),
                op,
                reason,
            })?;
        self.index.insert(node.name.clone(), self.nodes.len());
        self.nodes.push(node);
        self.shapes.push(shape);
        Ok(shape)
    }

    /// Adds a node made of its parts and returns its output shape.
    pub fn add(&mut self, name: &str, op: Op, inputs: &[&str]) -> Result<Shape> {
        self.push(Node::new(name, op, inputs))
    }

    /// Finishes the model; `output` names the node whose value is the model's output.
    pub fn build(self, output: &str) -> Result<Model> {
        let output = *self
            .index
            .get(output)
            .ok_or_else(|| IrError::UnknownOutput {
                name: output.to_owned(),
            })?;
        Ok(Model {
            input_name: self.input_name,
            input_shape: self.input_shape,
            nodes: self.nodes,
            shapes: self.shapes,
            output,
        })
    }
}

/// Levels a node consumes and the levels consumed once its output is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDepth {
    /// Levels this node consumes (0 for a linear layer merged into the one before it).
    pub cost: u32,
    /// Levels consumed from the model input to this node's output (the longest path).
    pub depth: u32,
}

impl Model {
    /// Checks a complete node list and makes a model of it.
    pub fn from_nodes(
        input_name: impl Into<String>,
        input_shape: Shape,
        nodes: Vec<Node>,
        output: &str,
    ) -> Result<Self> {
        if nodes.len() > MAX_NODES {
            return Err(IrError::TooManyNodes {
                count: nodes.len(),
                limit: MAX_NODES,
            });
        }
        let mut b = ModelBuilder::new(input_name, input_shape)?;
        for node in nodes {
            b.push(node)?;
        }
        b.build(output)
    }

    /// Name of the input value.
    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    /// Shape of the input.
    pub fn input_shape(&self) -> Shape {
        self.input_shape
    }

    /// The nodes, in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Output shape of every node, in node order.
    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }

    /// Nodes with their output shapes, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Node, Shape)> + '_ {
        self.nodes.iter().zip(self.shapes.iter().copied())
    }

    /// Output shape of node `i`.
    pub fn node_shape(&self, i: usize) -> Option<Shape> {
        self.shapes.get(i).copied()
    }

    /// Index of the node of that name.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The node of that name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Shape of a value: the input or a node's output.
    pub fn value_shape(&self, name: &str) -> Option<Shape> {
        if name == self.input_name {
            return Some(self.input_shape);
        }
        self.node_index(name).map(|i| self.shapes[i])
    }

    /// Shapes of node `i`'s inputs, in order.
    pub fn input_shapes(&self, i: usize) -> Vec<Shape> {
        self.nodes.get(i).map_or_else(Vec::new, |n| {
            n.inputs
                .iter()
                .filter_map(|v| self.value_shape(v))
                .collect()
        })
    }

    /// Index of the output node.
    pub fn output_index(&self) -> usize {
        self.output
    }

    /// Name of the output node.
    pub fn output(&self) -> &str {
        &self.nodes[self.output].name
    }

    /// Shape of the output.
    pub fn output_shape(&self) -> Shape {
        self.shapes[self.output]
    }

    /// Indices of the nodes reading `value`.
    pub fn consumers(&self, value: &str) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.inputs.iter().any(|i| i == value))
            .map(|(i, _)| i)
            .collect()
    }

    /// Whether every node can be evaluated under CKKS (no `Relu`, no `MaxPool2d`).
    pub fn is_he_friendly(&self) -> bool {
        self.nodes.iter().all(|n| n.op.is_he_friendly())
    }

    /// The first node CKKS cannot evaluate, as an error.
    pub fn check_he_friendly(&self) -> Result<()> {
        match self.nodes.iter().find(|n| !n.op.is_he_friendly()) {
            Some(n) => Err(IrError::NotHeFriendly {
                node: n.name.clone(),
                op: n.op.kind(),
            }),
            None => Ok(()),
        }
    }

    /// Multiplicative depth as the HE executor counts it without merging: each plaintext-weight
    /// linear layer (Conv2d, Dense, AvgPool2d, BatchNorm) and each square costs 1, a degree-`d`
    /// polynomial `⌈log2 d⌉ + 1`, reshapes and additions 0; branches take the longest path.
    pub fn multiplicative_depth(&self) -> Result<u32> {
        Ok(self.output_depth(&self.depth_profile(false)?))
    }

    /// Multiplicative depth when chains of adjacent linear layers are merged into one linear map
    /// (e.g. AvgPool2d → Reshape → Dense costs 1, not 2). A linear layer is merged into the one
    /// feeding it (through reshapes) when that value has no other reader and is not the output.
    pub fn multiplicative_depth_merged(&self) -> Result<u32> {
        Ok(self.output_depth(&self.depth_profile(true)?))
    }

    fn output_depth(&self, profile: &[NodeDepth]) -> u32 {
        profile.get(self.output).map_or(0, |d| d.depth)
    }

    /// Cost and cumulative depth of every node, in node order; `merge_linear` as in
    /// [`Model::multiplicative_depth_merged`]. Fails on a node CKKS cannot evaluate.
    pub fn depth_profile(&self, merge_linear: bool) -> Result<Vec<NodeDepth>> {
        let mut out: Vec<NodeDepth> = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let mut cost = node.op.depth().ok_or_else(|| IrError::NotHeFriendly {
                node: node.name.clone(),
                op: node.op.kind(),
            })?;
            if merge_linear && node.op.is_linear() && self.linear_source(i).is_some() {
                cost = 0;
            }
            let inputs = node
                .inputs
                .iter()
                .filter_map(|v| self.node_index(v))
                .filter_map(|j| out.get(j))
                .map(|d| d.depth)
                .max()
                .unwrap_or(0);
            out.push(NodeDepth {
                cost,
                depth: inputs + cost,
            });
        }
        Ok(out)
    }

    /// The linear node that node `i` reads directly or through reshapes, when every value on the
    /// way is read only by the next node on it and is not the model output.
    fn linear_source(&self, i: usize) -> Option<usize> {
        let mut value = self.nodes.get(i)?.input();
        loop {
            let j = self.node_index(value)?;
            if j == self.output || self.consumers(value).len() != 1 {
                return None;
            }
            let node = &self.nodes[j];
            match node.op {
                Op::Reshape { .. } => value = node.input(),
                ref op if op.is_linear() => return Some(j),
                _ => return None,
            }
        }
    }

    /// Consumes the model and returns its parts: input name and shape, nodes, output name.
    pub fn into_parts(self) -> (String, Shape, Vec<Node>, String) {
        let output = self.nodes[self.output].name.clone();
        (self.input_name, self.input_shape, self.nodes, output)
    }

    /// A model with the same input and a new node list and output (re-checking everything).
    pub(crate) fn with_nodes(&self, nodes: Vec<Node>, output: &str) -> Result<Self> {
        Self::from_nodes(self.input_name.clone(), self.input_shape, nodes, output)
    }

    /// Removes nodes whose values never reach the output.
    pub fn prune(&self) -> Result<Self> {
        let mut live = vec![false; self.nodes.len()];
        live[self.output] = true;
        for i in (0..self.nodes.len()).rev() {
            if !live[i] {
                continue;
            }
            for v in &self.nodes[i].inputs {
                if let Some(j) = self.node_index(v) {
                    live[j] = true;
                }
            }
        }
        let nodes = self
            .nodes
            .iter()
            .zip(&live)
            .filter(|(_, l)| **l)
            .map(|(n, _)| n.clone())
            .collect();
        self.with_nodes(nodes, self.output())
    }

    /// Removes every [`BatchNorm`] node by merging it into a neighbouring linear layer:
    ///
    /// 1. into the Conv2d or Dense before it, when the BatchNorm is that layer's only reader
    ///    (scales the layer's output channels and adjusts its bias: exact);
    /// 2. else into the one Dense after it (through reshapes), or the one Conv2d after it when that
    ///    convolution has no padding (scales the layer's input channels and moves the offset into
    ///    its bias: exact; with zero padding the offset would wrongly reach the padded border);
    /// 3. else it becomes a depthwise 1x1 Conv2d (one plaintext multiplication, like any linear
    ///    layer), so the compiler never sees a BatchNorm.
    pub fn fold_batchnorm(&self) -> Result<Self> {
        let mut model = self.clone();
        while let Some(b) = model
            .nodes
            .iter()
            .position(|n| matches!(n.op, Op::BatchNorm(_)))
        {
            model = model.fold_one_batchnorm(b)?;
        }
        Ok(model)
    }

    fn fold_one_batchnorm(&self, b: usize) -> Result<Self> {
        let bn_node = &self.nodes[b];
        let Op::BatchNorm(bn) = &bn_node.op else {
            return Ok(self.clone());
        };
        let mut nodes = self.nodes.clone();
        let mut output = self.output().to_owned();
        let source = bn_node.input();

        // 1. Into the layer before it.
        if let Some(p) = self.node_index(source)
            && p != self.output
            && self.consumers(source).len() == 1
            && scale_output_channels(&mut nodes[p].op, &bn.scale, &bn.shift)
        {
            let name = bn_node.name.clone();
            nodes.remove(b);
            rename_input(&mut nodes, &name, source);
            if output == name {
                output = source.to_owned();
            }
            return self.with_nodes(nodes, &output);
        }

        // 2. Into the layer after it.
        let in_shape = self.shapes.get(b).copied().unwrap_or(self.input_shape);
        if b != self.output
            && let Some(q) = self.single_reader_through_reshapes(&bn_node.name)
            && absorb_input_affine(
                &mut nodes[q].op,
                in_shape,
                &bn.scale,
                &bn.shift,
                self.nodes[q].input() == bn_node.name,
            )
        {
            let name = bn_node.name.clone();
            nodes.remove(b);
            rename_input(&mut nodes, &name, source);
            return self.with_nodes(nodes, &output);
        }

        // 3. As a depthwise 1x1 convolution.
        let c = in_shape.channels;
        nodes[b].op = Op::Conv2d(Conv2d {
            in_channels: c,
            out_channels: c,
            kernel: [1, 1],
            stride: [1, 1],
            padding: Padding::default(),
            groups: c,
            weights: bn.scale.clone(),
            bias: bn.shift.clone(),
        });
        self.with_nodes(nodes, &output)
    }

    /// The single node that reads `value`, following reshapes that have a single reader, when no
    /// value on the way is the model output.
    pub(crate) fn single_reader_through_reshapes(&self, value: &str) -> Option<usize> {
        let mut value = value.to_owned();
        loop {
            let readers = self.consumers(&value);
            let [q] = readers.as_slice() else {
                return None;
            };
            let node = &self.nodes[*q];
            if node.inputs.len() != 1 {
                return None;
            }
            match node.op {
                Op::Reshape { .. } if *q != self.output => value = node.name.clone(),
                Op::Reshape { .. } => return None,
                _ => return Some(*q),
            }
        }
    }
}

/// Points every input named `from` at `to`.
pub(crate) fn rename_input(nodes: &mut [Node], from: &str, to: &str) {
    for n in nodes {
        for i in &mut n.inputs {
            if i == from {
                *i = to.to_owned();
            }
        }
    }
}

/// Turns a Conv2d or Dense `y` into `scale ⊙ y + shift` per output channel; false for other ops.
fn scale_output_channels(op: &mut Op, scale: &[f64], shift: &[f64]) -> bool {
    let (weights, bias, per_out) = match op {
        Op::Conv2d(c) => {
            let per = c.in_per_group() * c.kernel[0] * c.kernel[1];
            (&mut c.weights, &mut c.bias, per)
        }
        Op::Dense(d) => (&mut d.weights, &mut d.bias, d.in_features),
        _ => return false,
    };
    if bias.len() != scale.len() || shift.len() != scale.len() {
        return false;
    }
    for (o, (w_row, b)) in weights.chunks_mut(per_out.max(1)).zip(bias).enumerate() {
        for w in w_row.iter_mut() {
            *w *= scale[o];
        }
        *b = *b * scale[o] + shift[o];
    }
    true
}

/// Makes a Conv2d or Dense whose input is `scale[c] * x + shift[c]` (per channel `c` of a value of
/// shape `shape`) read `x` instead. A Dense may read the value through reshapes (its features
/// follow CHW order); a Conv2d must read it directly (`direct`) and, when the shift is not zero,
/// have no padding. Returns false (and changes nothing) when not possible.
pub(crate) fn absorb_input_affine(
    op: &mut Op,
    shape: Shape,
    scale: &[f64],
    shift: &[f64],
    direct: bool,
) -> bool {
    if scale.len() != shape.channels || shift.len() != shape.channels {
        return false;
    }
    let plane = shape.plane().max(1);
    match op {
        Op::Dense(d) if d.in_features == shape.len() => {
            let n = d.in_features;
            for (row, b) in d.weights.chunks_mut(n.max(1)).zip(&mut d.bias) {
                for (j, w) in row.iter_mut().enumerate() {
                    let c = j / plane;
                    *b += *w * shift[c];
                    *w *= scale[c];
                }
            }
            true
        }
        Op::Conv2d(c) if direct && c.in_channels == shape.channels => {
            if !c.padding.is_zero() && shift.iter().any(|&t| t != 0.0) {
                return false;
            }
            let (ipg, opg) = (c.in_per_group(), c.out_per_group().max(1));
            let taps = c.kernel[0] * c.kernel[1];
            for o in 0..c.out_channels {
                let group = o / opg;
                for i in 0..ipg {
                    let ch = group * ipg + i;
                    let start = c.weight_index(o, i, 0, 0);
                    for t in 0..taps {
                        let w = &mut c.weights[start + t];
                        c.bias[o] += *w * shift[ch];
                        *w *= scale[ch];
                    }
                }
            }
            true
        }
        _ => false,
    }
}

fn check_len(what: &str, found: usize, expected: usize) -> Result<(), String> {
    if found == expected {
        Ok(())
    } else {
        Err(format!("{found} {what}, expected {expected}"))
    }
}

fn check_finite(what: &str, values: &[f64]) -> Result<(), String> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(format!("{what}[{i}] is not finite")),
        None => Ok(()),
    }
}

impl fmt::Display for Model {
    /// One line per node: name, operator, inputs, output shape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "input {:?}: {}", self.input_name, self.input_shape)?;
        for (node, shape) in self.iter() {
            writeln!(
                f,
                "{:?} = {}({}) -> {}",
                node.name,
                node.op,
                node.inputs.join(", "),
                shape
            )?;
        }
        write!(f, "output {:?}: {}", self.output(), self.output_shape())
    }
}

/// Serialized form of a [`Model`].
#[derive(Serialize, Deserialize)]
struct ModelRepr<N> {
    format_version: u32,
    input: InputRepr,
    nodes: N,
    output: String,
}

#[derive(Serialize, Deserialize)]
struct InputRepr {
    name: String,
    shape: Shape,
}

impl Serialize for Model {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        ModelRepr {
            format_version: IR_FORMAT,
            input: InputRepr {
                name: self.input_name.clone(),
                shape: self.input_shape,
            },
            nodes: &self.nodes,
            output: self.output().to_owned(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Model {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let repr = ModelRepr::<Vec<Node>>::deserialize(d)?;
        if repr.format_version != IR_FORMAT {
            return Err(serde::de::Error::custom(IrError::Format {
                found: repr.format_version,
                expected: IR_FORMAT,
            }));
        }
        Model::from_nodes(repr.input.name, repr.input.shape, repr.nodes, &repr.output)
            .map_err(serde::de::Error::custom)
    }
}
