//! The operators ([`Op`]) and their parameter structs ([`Conv2d`], [`Pool2d`], [`Dense`],
//! [`BatchNorm`], [`Polynomial`], [`Activation`], [`Padding`]), each with the check of its weights
//! and attributes against its input shape, and the [`Node`] that applies an operator to named
//! values.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{MAX_POLY_DEGREE, Shape};

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
///
/// [`Model::fold_batchnorm`]: super::Model::fold_batchnorm
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

/// Element-wise polynomial, lowest degree first: `Σ coeffs[i] · x^i` (monomial basis), or
/// `Σ coeffs[i] · T_i(y)` with `y` mapping `interval` onto `[-1, 1]` (Chebyshev basis, which the
/// converter fits in: well conditioned at any degree, and what CKKS evaluates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Polynomial {
    /// Coefficients, lowest degree first; at least one.
    pub coeffs: Vec<f64>,
    /// The input interval the polynomial was fitted on, if known. Inputs outside it may be far off
    /// the approximated function; executors may use it to rescale or to re-expand the polynomial
    /// in the Chebyshev basis, which is better conditioned under CKKS. Required in the Chebyshev
    /// basis.
    #[serde(default)]
    pub interval: Option<[f64; 2]>,
    /// Whether `coeffs` are Chebyshev coefficients on `interval`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chebyshev: bool,
}

impl Polynomial {
    /// A polynomial from monomial coefficients, lowest degree first, with no known interval.
    pub fn new(coeffs: Vec<f64>) -> Self {
        Self {
            coeffs,
            interval: None,
            chebyshev: false,
        }
    }

    /// A polynomial from Chebyshev coefficients on `[a, b]`, lowest degree first.
    pub fn chebyshev(coeffs: Vec<f64>, interval: [f64; 2]) -> Self {
        Self {
            coeffs,
            interval: Some(interval),
            chebyshev: true,
        }
    }

    /// Degree (index of the highest non-zero coefficient; 0 for a constant).
    pub fn degree(&self) -> usize {
        self.coeffs.iter().rposition(|&c| c != 0.0).unwrap_or(0)
    }

    /// Value at `x` (Horner, or the Chebyshev recurrence).
    pub fn evaluate(&self, x: f64) -> f64 {
        match (self.chebyshev, self.interval) {
            (true, Some([a, b])) => {
                let y = (2.0 * x - a - b) / (b - a);
                // Clenshaw.
                let (mut b1, mut b2) = (0.0, 0.0);
                for &c in self.coeffs.iter().skip(1).rev() {
                    (b1, b2) = (2.0 * y * b1 - b2 + c, b1);
                }
                y * b1 - b2 + self.coeffs[0]
            }
            _ => self.coeffs.iter().rev().fold(0.0, |acc, &c| acc * x + c),
        }
    }

    /// Levels a CKKS evaluation consumes (the CKKS library's baby-step/giant-step split of these
    /// coefficients: at most `⌈log2 d⌉ + 1` for degree `d`, `⌈log2(d + 1)⌉` for `d = 2^k − 1` in
    /// the Chebyshev basis), 0 for a constant. The map of a Chebyshev interval onto `[-1, 1]` is
    /// folded into the layer before.
    pub fn depth(&self) -> u32 {
        if self.degree() == 0 {
            return 0;
        }
        let p = if self.chebyshev {
            cipherinfer_ckks::Polynomial::chebyshev(self.coeffs.clone(), -1.0, 1.0)
        } else {
            cipherinfer_ckks::Polynomial::monomial(self.coeffs.clone())
        };
        p.map_or(u32::MAX, |p| p.depth() as u32)
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
        if self.chebyshev && self.interval.is_none() {
            return Err("a Chebyshev polynomial needs its interval".into());
        }
        if let Some([a, b]) = self.interval
            && !(a.is_finite() && b.is_finite() && a < b)
        {
            return Err(format!("invalid interval [{a}, {b}]"));
        }
        Ok(())
    }
}

/// An element-wise activation of the source network, evaluated exactly by the plaintext executor:
/// transitional (CKKS has no evaluation of it), replaced by a fitted [`Polynomial`] by the
/// converter (`crate::convert`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "function", rename_all = "snake_case")]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x ≥ 0`, `alpha · x` below (ONNX `LeakyRelu`, PyTorch default `alpha` 0.01).
    LeakyRelu {
        /// Slope below 0.
        alpha: f64,
    },
    /// `min(max(x, min), max)`; an absent bound does not clip (ReLU6 is `min 0, max 6`).
    Clip {
        /// Lower bound, if any.
        min: Option<f64>,
        /// Upper bound, if any.
        max: Option<f64>,
    },
    /// `1 / (1 + e^−x)`.
    Sigmoid,
    /// `tanh x`.
    Tanh,
}

impl Activation {
    /// The function's value at `x`.
    pub fn apply(&self, x: f64) -> f64 {
        match *self {
            Activation::Relu => x.max(0.0),
            Activation::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }
            Activation::Clip { min, max } => {
                let x = min.map_or(x, |lo| x.max(lo));
                max.map_or(x, |hi| x.min(hi))
            }
            // Written so that neither branch overflows.
            Activation::Sigmoid if x >= 0.0 => 1.0 / (1.0 + (-x).exp()),
            Activation::Sigmoid => {
                let e = x.exp();
                e / (1.0 + e)
            }
            Activation::Tanh => x.tanh(),
        }
    }

    /// Short name, as the ONNX operator (`Relu`, `LeakyRelu`, `Clip`, `Sigmoid`, `Tanh`).
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "Relu",
            Activation::LeakyRelu { .. } => "LeakyRelu",
            Activation::Clip { .. } => "Clip",
            Activation::Sigmoid => "Sigmoid",
            Activation::Tanh => "Tanh",
        }
    }

    fn check(&self) -> Result<(), String> {
        match *self {
            Activation::LeakyRelu { alpha } if !alpha.is_finite() => {
                Err(format!("alpha {alpha} is not finite"))
            }
            Activation::Clip { min, max } => {
                if let Some(b) = min.into_iter().chain(max).find(|b| !b.is_finite()) {
                    return Err(format!("bound {b} is not finite (leave it out instead)"));
                }
                match (min, max) {
                    (Some(lo), Some(hi)) if lo > hi => Err(format!("min {lo} > max {hi}")),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// `x` as its shortest f32 text when it is an f32 value (parameters read from ONNX are: `0.1`, not
/// `0.10000000149011612`), else as f64.
fn short(x: f64) -> String {
    let single = x as f32;
    if f64::from(single) == x {
        single.to_string()
    } else {
        x.to_string()
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match *self {
            Activation::LeakyRelu { alpha } => write!(f, " alpha {}", short(alpha)),
            Activation::Clip { min, max } => {
                let bound = |b: Option<f64>, inf: &str| b.map_or(inf.to_owned(), short);
                write!(f, " [{}, {}]", bound(min, "-inf"), bound(max, "inf"))
            }
            _ => Ok(()),
        }
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
    ///
    /// [`Model::fold_batchnorm`]: super::Model::fold_batchnorm
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
    /// A non-polynomial activation (ReLU, LeakyReLU, Clip, Sigmoid, Tanh): transitional,
    /// replaced by a [`Polynomial`] by the converter. One input.
    Activation(Activation),
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
            Op::Activation(a) => a.name(),
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
        matches!(self, Op::Square | Op::Polynomial(_) | Op::Activation(_))
    }

    /// Whether CKKS can evaluate the operator (everything but `Activation` and `MaxPool2d`).
    pub fn is_he_friendly(&self) -> bool {
        !matches!(self, Op::Activation(_) | Op::MaxPool2d(_))
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
            Op::Activation(_) | Op::MaxPool2d(_) => None,
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
            Op::Square => first,
            Op::Activation(a) => {
                a.check()?;
                first
            }
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
            Op::Activation(a) => write!(f, "{a}"),
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
