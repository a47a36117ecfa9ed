//! Affine operators on flattened (CHW) tensors: conv, pooling and dense layers as sparse rows,
//! composable so consecutive linear layers fuse into one homomorphic step (one level).

use crate::error::Result;
use crate::network::{Layer, Shape};

/// `y = W·x + b` with `W` stored as sparse rows.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearOp {
    /// Input length.
    pub in_dim: usize,
    /// Shape of the output.
    pub out_shape: Shape,
    /// For each output, its non-zero (input index, weight) pairs.
    pub rows: Vec<Vec<(usize, f64)>>,
    /// Bias per output.
    pub bias: Vec<f64>,
}

impl LinearOp {
    /// The operator of a linear layer for a given input shape (`Flatten` is the identity).
    pub fn from_layer(layer: &Layer, input: Shape) -> Result<Self> {
        let out_shape = layer.output_shape(input, 0)?;
        let in_dim = input.len();
        let mut rows: Vec<Vec<(usize, f64)>> = vec![Vec::new(); out_shape.len()];
        let mut bias = vec![0.0; out_shape.len()];
        match (layer, input, out_shape) {
            (
                Layer::Conv2d {
                    in_c,
                    out_c,
                    kernel,
                    stride,
                    padding,
                    groups,
                    weight,
                    bias: b,
                },
                Shape::Chw(_, h, w),
                Shape::Chw(_, oh, ow),
            ) => {
                let icg = in_c / groups;
                let ocg = out_c / groups;
                for oc in 0..*out_c {
                    let g = oc / ocg;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let o = (oc * oh + oy) * ow + ox;
                            bias[o] = b[oc];
                            for ic in 0..icg {
                                let c = g * icg + ic;
                                for ky in 0..kernel.0 {
                                    for kx in 0..kernel.1 {
                                        let y = (oy * stride.0 + ky) as isize - padding.0 as isize;
                                        let x = (ox * stride.1 + kx) as isize - padding.1 as isize;
                                        if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                                            continue;
                                        }
                                        let wv = weight
                                            [((oc * icg + ic) * kernel.0 + ky) * kernel.1 + kx];
                                        if wv != 0.0 {
                                            rows[o]
                                                .push(((c * h + y as usize) * w + x as usize, wv));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (Layer::AvgPool2d { kernel, stride }, Shape::Chw(c, h, w), Shape::Chw(_, oh, ow)) => {
                let inv = 1.0 / (kernel.0 * kernel.1) as f64;
                for ch in 0..c {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let o = (ch * oh + oy) * ow + ox;
                            for ky in 0..kernel.0 {
                                for kx in 0..kernel.1 {
                                    let y = oy * stride.0 + ky;
                                    let x = ox * stride.1 + kx;
                                    rows[o].push(((ch * h + y) * w + x, inv));
                                }
                            }
                        }
                    }
                }
            }
            (
                Layer::Dense {
                    in_f,
                    weight,
                    bias: b,
                    ..
                },
                _,
                _,
            ) => {
                for (o, row) in rows.iter_mut().enumerate() {
                    bias[o] = b[o];
                    for i in 0..*in_f {
                        let wv = weight[o * in_f + i];
                        if wv != 0.0 {
                            row.push((i, wv));
                        }
                    }
                }
            }
            (Layer::Flatten, _, _) => {
                for (o, row) in rows.iter_mut().enumerate() {
                    row.push((o, 1.0));
                }
            }
            (l, s, _) => {
                return Err(crate::error::CompileError::Shape {
                    layer: 0,
                    detail: format!("{} is not linear or does not take {s:?}", l.name()),
                });
            }
        }
        Ok(Self {
            in_dim,
            out_shape,
            rows,
            bias,
        })
    }

    /// The identity on a tensor of shape `shape`.
    pub fn identity(shape: Shape) -> Self {
        Self {
            in_dim: shape.len(),
            out_shape: shape,
            rows: (0..shape.len()).map(|o| vec![(o, 1.0)]).collect(),
            bias: vec![0.0; shape.len()],
        }
    }

    /// `self + branch(kept)`: the sum with a kept tensor of shape `kept` passed through the
    /// linear `branch`, whose features are input `offset..` of the result. The result's input
    /// is this operator's, extended to cover the kept tensor.
    pub fn plus_branch(&self, branch: &[Layer], kept: Shape, offset: usize) -> Result<Self> {
        let mut b = LinearOp::identity(kept);
        for layer in branch {
            b = LinearOp::from_layer(layer, b.out_shape)?.after(&b);
        }
        if b.out_shape.len() != self.out_shape.len() {
            return Err(crate::error::CompileError::Shape {
                layer: 0,
                detail: format!(
                    "cannot add a {:?} shortcut to a {:?} tensor",
                    b.out_shape, self.out_shape
                ),
            });
        }
        let in_dim = self.in_dim.max(offset + kept.len());
        let rows = self
            .rows
            .iter()
            .zip(&b.rows)
            .map(|(row, extra)| {
                let mut row = row.clone();
                row.extend(extra.iter().map(|&(i, w)| (offset + i, w)));
                row
            })
            .collect();
        let bias = self.bias.iter().zip(&b.bias).map(|(x, y)| x + y).collect();
        Ok(Self {
            in_dim,
            out_shape: self.out_shape,
            rows,
            bias,
        })
    }

    /// `self ∘ first`: apply `first`, then `self`.
    pub fn after(&self, first: &LinearOp) -> LinearOp {
        let mut acc = vec![0.0f64; first.in_dim];
        let mut touched: Vec<usize> = Vec::new();
        let rows = self
            .rows
            .iter()
            .map(|row| {
                for &(j, w) in row {
                    for &(i, v) in &first.rows[j] {
                        if acc[i] == 0.0 {
                            touched.push(i);
                        }
                        acc[i] += w * v;
                    }
                }
                touched.sort_unstable();
                touched.dedup();
                let out: Vec<(usize, f64)> = touched
                    .iter()
                    .map(|&i| (i, acc[i]))
                    .filter(|&(_, w)| w != 0.0)
                    .collect();
                for &i in &touched {
                    acc[i] = 0.0;
                }
                touched.clear();
                out
            })
            .collect();
        let bias = self
            .rows
            .iter()
            .zip(&self.bias)
            .map(|(row, b)| b + row.iter().map(|&(j, w)| w * first.bias[j]).sum::<f64>())
            .collect();
        LinearOp {
            in_dim: first.in_dim,
            out_shape: self.out_shape,
            rows,
            bias,
        }
    }

    /// `W·x + b`.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        self.rows
            .iter()
            .zip(&self.bias)
            .map(|(row, b)| b + row.iter().map(|&(i, w)| w * x[i]).sum::<f64>())
            .collect()
    }

    /// Number of non-zero weights.
    pub fn nnz(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }
}
