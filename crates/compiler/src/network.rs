//! The network as the compiler sees it: a chain of HE-friendly layers on a CHW tensor (batch 1),
//! with a plaintext f64 forward pass that is the ground truth for every test.
//!
//! Residual connections are written into the chain with registers: [`Layer::Save`] keeps the
//! current tensor, and a later [`Layer::AddSaved`] adds a kept tensor (through a branch of linear
//! layers, such as a strided 1x1 shortcut convolution) to the current one. Both are linear, so an
//! `AddSaved` fuses with the linear layers around it into one homomorphic step.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{CompileError, Result};

/// One layer of an HE-friendly network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Layer {
    /// 2-D convolution; `weight` is `[out_c][in_c / groups][kh][kw]` flattened.
    Conv2d {
        /// Input channels.
        in_c: usize,
        /// Output channels.
        out_c: usize,
        /// Kernel height and width.
        kernel: (usize, usize),
        /// Stride (rows, columns).
        stride: (usize, usize),
        /// Zero padding (top, left, bottom, right).
        padding: (usize, usize, usize, usize),
        /// Channel groups.
        groups: usize,
        /// Weights.
        weight: Vec<f64>,
        /// Bias per output channel.
        bias: Vec<f64>,
    },
    /// Average pooling (no padding).
    AvgPool2d {
        /// Window (rows, columns).
        kernel: (usize, usize),
        /// Stride (rows, columns).
        stride: (usize, usize),
    },
    /// Fully connected layer on the flattened input; `weight` is `[out][in]` flattened.
    Dense {
        /// Input features.
        in_f: usize,
        /// Output features.
        out_f: usize,
        /// Weights.
        weight: Vec<f64>,
        /// Bias.
        bias: Vec<f64>,
    },
    /// Element-wise polynomial `Σ c_i x^i` (monomial basis).
    Poly {
        /// Coefficients, lowest degree first.
        coeffs: Vec<f64>,
    },
    /// Element-wise polynomial fitted on the interval `[a, b]` where its inputs lie (e.g. a ReLU
    /// approximation): `Σ c_i x^i`, or `Σ c_i T_i(y)` with `y` mapping `[a, b]` onto `[-1, 1]`
    /// when `chebyshev`. Compiled in the Chebyshev basis on that interval, with the map to
    /// `[-1, 1]` folded into the preceding linear layer.
    IntervalPoly {
        /// Coefficients, lowest degree first.
        coeffs: Vec<f64>,
        /// The fitting interval `(a, b)`, `a < b`.
        interval: (f64, f64),
        /// Whether the coefficients are Chebyshev coefficients on the interval.
        #[serde(default)]
        chebyshev: bool,
    },
    /// Reshape to a vector (CHW order), data unchanged.
    Flatten,
    /// Keeps the current tensor in the next free register (registers are numbered in the order
    /// of their `Save`s); the tensor itself passes unchanged.
    Save,
    /// Adds the tensor kept in `register`, passed through the linear layers of `branch` (none
    /// for an identity shortcut), to the current tensor; the shapes must agree.
    AddSaved {
        /// The register (index of the `Save`).
        register: usize,
        /// Linear layers applied to the kept tensor before the sum.
        branch: Vec<Layer>,
    },
}

/// A sequential network with its input shape (C, H, W).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Input shape (channels, height, width).
    pub input: (usize, usize, usize),
    /// Layers in order.
    pub layers: Vec<Layer>,
}

/// Shape of a tensor between layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Shape {
    /// Channels, height, width.
    Chw(usize, usize, usize),
    /// Flat vector.
    Vector(usize),
}

impl Shape {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match *self {
            Shape::Chw(c, h, w) => c * h * w,
            Shape::Vector(n) => n,
        }
    }
    /// Whether the tensor is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn out_dim(input: usize, k: usize, s: usize, before: usize, after: usize) -> Option<usize> {
    (input + before + after).checked_sub(k).map(|d| d / s + 1)
}

impl Layer {
    /// Output shape for an input shape, checking every dimension.
    pub fn output_shape(&self, input: Shape, index: usize) -> Result<Shape> {
        let bad = |msg: String| CompileError::Shape {
            layer: index,
            detail: msg,
        };
        match (self, input) {
            (
                Layer::Conv2d {
                    in_c,
                    out_c,
                    kernel,
                    stride,
                    padding,
                    groups,
                    weight,
                    bias,
                },
                Shape::Chw(c, h, w),
            ) => {
                if *in_c != c || *groups == 0 || in_c % groups != 0 || out_c % groups != 0 {
                    return Err(bad(format!(
                        "conv expects {in_c} channels in {groups} groups, got {c}"
                    )));
                }
                if weight.len() != out_c * (in_c / groups) * kernel.0 * kernel.1
                    || bias.len() != *out_c
                {
                    return Err(bad("conv weight or bias has the wrong length".into()));
                }
                if stride.0 == 0 || stride.1 == 0 {
                    return Err(bad("zero stride".into()));
                }
                let oh = out_dim(h, kernel.0, stride.0, padding.0, padding.2)
                    .ok_or_else(|| bad("kernel taller than input".into()))?;
                let ow = out_dim(w, kernel.1, stride.1, padding.1, padding.3)
                    .ok_or_else(|| bad("kernel wider than input".into()))?;
                Ok(Shape::Chw(*out_c, oh, ow))
            }
            (Layer::AvgPool2d { kernel, stride }, Shape::Chw(c, h, w)) => {
                if stride.0 == 0 || stride.1 == 0 || kernel.0 == 0 || kernel.1 == 0 {
                    return Err(bad("zero pooling window or stride".into()));
                }
                let oh = out_dim(h, kernel.0, stride.0, 0, 0)
                    .ok_or_else(|| bad("window taller than input".into()))?;
                let ow = out_dim(w, kernel.1, stride.1, 0, 0)
                    .ok_or_else(|| bad("window wider than input".into()))?;
                Ok(Shape::Chw(c, oh, ow))
            }
            (
                Layer::Dense {
                    in_f,
                    out_f,
                    weight,
                    bias,
                },
                s,
            ) => {
                if s.len() != *in_f {
                    return Err(bad(format!("dense expects {in_f} inputs, got {}", s.len())));
                }
                if weight.len() != in_f * out_f || bias.len() != *out_f {
                    return Err(bad("dense weight or bias has the wrong length".into()));
                }
                Ok(Shape::Vector(*out_f))
            }
            (Layer::Poly { coeffs }, s) => {
                if coeffs.is_empty() || coeffs.iter().any(|c| !c.is_finite()) {
                    return Err(bad("polynomial needs finite coefficients".into()));
                }
                Ok(s)
            }
            (
                Layer::IntervalPoly {
                    coeffs,
                    interval: (a, b),
                    ..
                },
                s,
            ) => {
                if coeffs.is_empty() || coeffs.iter().any(|c| !c.is_finite()) {
                    return Err(bad("polynomial needs finite coefficients".into()));
                }
                if !(a.is_finite() && b.is_finite() && a < b) {
                    return Err(bad(format!("invalid interval [{a}, {b}]")));
                }
                Ok(s)
            }
            (Layer::Flatten, s) => Ok(Shape::Vector(s.len())),
            // The shape of the kept tensor is checked by `Network::shapes`.
            (Layer::Save | Layer::AddSaved { .. }, s) => Ok(s),
            (l, s) => Err(bad(format!("{} cannot take a {s:?} input", l.name()))),
        }
    }

    /// Short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Layer::Conv2d { .. } => "Conv2d",
            Layer::AvgPool2d { .. } => "AvgPool2d",
            Layer::Dense { .. } => "Dense",
            Layer::Poly { .. } => "Poly",
            Layer::IntervalPoly { .. } => "IntervalPoly",
            Layer::Flatten => "Flatten",
            Layer::Save => "Save",
            Layer::AddSaved { .. } => "AddSaved",
        }
    }

    /// Whether the layer is linear (affine) in its inputs and fuses with its linear neighbours.
    /// A `Save` is not: the kept tensor must exist as ciphertexts, so it ends a fused run.
    pub fn is_linear(&self) -> bool {
        !matches!(
            self,
            Layer::Poly { .. } | Layer::IntervalPoly { .. } | Layer::Save
        )
    }
}

impl Network {
    /// Shapes after each layer (index 0 is the input shape), validating the whole chain,
    /// including every register's use.
    pub fn shapes(&self) -> Result<Vec<Shape>> {
        Ok(self.shapes_and_registers()?.0)
    }

    /// [`Network::shapes`], and the shape of each register.
    pub fn shapes_and_registers(&self) -> Result<(Vec<Shape>, Vec<Shape>)> {
        let (c, h, w) = self.input;
        let mut shapes = vec![Shape::Chw(c, h, w)];
        let mut registers = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let s = l.output_shape(shapes[i], i)?;
            match l {
                Layer::Save => registers.push(s),
                Layer::AddSaved { register, branch } => {
                    let kept = *registers
                        .get(*register)
                        .ok_or_else(|| CompileError::Shape {
                            layer: i,
                            detail: format!("register {register} is used before it is saved"),
                        })?;
                    let mut b = kept;
                    for layer in branch {
                        if !layer.is_linear() || matches!(layer, Layer::AddSaved { .. }) {
                            return Err(CompileError::Shape {
                                layer: i,
                                detail: format!("a shortcut branch cannot hold {}", layer.name()),
                            });
                        }
                        b = layer.output_shape(b, i)?;
                    }
                    if b != s {
                        return Err(CompileError::Shape {
                            layer: i,
                            detail: format!("cannot add a {b:?} shortcut to a {s:?} tensor"),
                        });
                    }
                }
                _ => {}
            }
            shapes.push(s);
        }
        Ok((shapes, registers))
    }

    /// Plaintext forward pass in f64.
    pub fn forward(&self, input: &[f64]) -> Result<Vec<f64>> {
        let shapes = self.shapes()?;
        if input.len() != shapes[0].len() {
            return Err(CompileError::Input(format!(
                "input has {} values, the network takes {}",
                input.len(),
                shapes[0].len()
            )));
        }
        let mut x = input.to_vec();
        let mut registers: Vec<(Vec<f64>, Shape)> = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            x = match l {
                Layer::Save => {
                    registers.push((x.clone(), shapes[i]));
                    x
                }
                Layer::AddSaved { register, branch } => {
                    let (kept, mut shape) = registers[*register].clone();
                    let mut y = kept;
                    for layer in branch {
                        let op = crate::linear::LinearOp::from_layer(layer, shape)?;
                        y = op.apply(&y);
                        shape = op.out_shape;
                    }
                    x.iter().zip(&y).map(|(a, b)| a + b).collect()
                }
                Layer::IntervalPoly {
                    coeffs,
                    interval: (a, b),
                    chebyshev: true,
                } => {
                    let p = cipherinfer_ckks::Polynomial::chebyshev(coeffs.clone(), *a, *b)?;
                    x.iter().map(|&v| p.evaluate(v)).collect()
                }
                Layer::Poly { coeffs } | Layer::IntervalPoly { coeffs, .. } => x
                    .iter()
                    .map(|&v| coeffs.iter().rev().fold(0.0, |a, &c| a * v + c))
                    .collect(),
                Layer::Flatten => x,
                _ => {
                    let op = crate::linear::LinearOp::from_layer(l, shapes[i])?;
                    op.apply(&x)
                }
            };
        }
        Ok(x)
    }
}
