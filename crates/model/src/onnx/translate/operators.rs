//! The translation of each supported ONNX operator that needs more than a line: Constant, Conv,
//! Gemm, MatMul, Add (residual or bias), BatchNormalization, the poolings and Reshape.

use super::{Attrs, Const, Translator, Value, const_of, node_label};
use crate::ir::{BatchNorm, Conv2d, Dense, Node, Op, Pool2d, Shape};
use crate::onnx::{AttributeValue, OnnxNode, Result, TensorData};

impl Translator<'_> {
    pub(super) fn constant_attr(&self, n: &OnnxNode, a: &Attrs<'_>) -> Result<Const> {
        let c = match n.attributes.first().map(|x| (x.name.as_str(), &x.value)) {
            Some(("value", AttributeValue::Tensor(t))) => const_of(t, &node_label(n))?,
            Some(("value_float", AttributeValue::Float(f))) => Const {
                dims: vec![],
                data: TensorData::Float(vec![f64::from(*f)]),
            },
            Some(("value_int", AttributeValue::Int(i))) => Const {
                dims: vec![],
                data: TensorData::Int(vec![*i]),
            },
            Some(("value_floats", AttributeValue::Floats(v))) => Const {
                dims: vec![v.len()],
                data: TensorData::Float(v.iter().map(|&f| f64::from(f)).collect()),
            },
            Some(("value_ints", AttributeValue::Ints(v))) => Const {
                dims: vec![v.len()],
                data: TensorData::Int(v.clone()),
            },
            _ => {
                return Err(a.unsupported(
                    "only value, value_float(s) and value_int(s) constants are supported".into(),
                ));
            }
        };
        if c.data == TensorData::None {
            return Err(a.unsupported("constant of an unsupported element type".into()));
        }
        Ok(c)
    }

    pub(super) fn conv(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
        let (x, shape, rank) = self.tensor(n, 0)?;
        if rank != 4 {
            return Err(self.unsupported(n, "input is not [1, C, H, W]"));
        }
        let (dims, weights) = self
            .float_const(n, 1, "weight")?
            .ok_or_else(|| self.unsupported(n, "no weight"))?;
        let &[out_c, in_per_group, kh, kw] = dims.as_slice() else {
            return Err(self.unsupported(n, format!("weight dims {dims:?}: only 2-D convolutions")));
        };
        a.no_dilation()?;
        let kernel = a.pair("kernel_shape", Some([kh, kw]))?;
        if kernel != [kh, kw] {
            return Err(self.unsupported(
                n,
                format!("kernel_shape {kernel:?} differs from the weight's"),
            ));
        }
        let groups = usize::try_from(a.int("group", 1)?)
            .ok()
            .filter(|&g| g > 0)
            .ok_or_else(|| self.unsupported(n, "group must be positive"))?;
        let bias = match self.float_const(n, 2, "bias")? {
            Some((_, b)) => b,
            None => vec![0.0; out_c],
        };
        let conv = Conv2d {
            in_channels: in_per_group.saturating_mul(groups),
            out_channels: out_c,
            kernel: [kh, kw],
            stride: a.pair("strides", Some([1, 1]))?,
            padding: a.padding()?,
            groups,
            weights,
            bias,
        };
        if conv.in_channels != shape.channels {
            return Err(self.unsupported(
                n,
                format!(
                    "weight reads {} channels ({} groups), the input has {}",
                    conv.in_channels, groups, shape.channels
                ),
            ));
        }
        self.emit(n, Op::Conv2d(conv), &[&x], 4)
    }

    fn flat_input(&self, n: &OnnxNode) -> Result<(String, Shape)> {
        let (x, shape, rank) = self.tensor(n, 0)?;
        if rank != 2 {
            return Err(self.unsupported(n, "input is not [1, N]: flatten it first"));
        }
        Ok((x, shape))
    }

    pub(super) fn gemm(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
        let (x, shape) = self.flat_input(n)?;
        if a.int("transA", 0)? != 0 {
            return Err(self.unsupported(n, "transA = 1"));
        }
        let (dims, b) = self
            .float_const(n, 1, "B")?
            .ok_or_else(|| self.unsupported(n, "no B"))?;
        let &[r, c] = dims.as_slice() else {
            return Err(self.unsupported(n, format!("B of dims {dims:?} is not a matrix")));
        };
        let alpha = f64::from(a.float("alpha", 1.0)?);
        let beta = f64::from(a.float("beta", 1.0)?);
        let trans_b = a.int("transB", 0)? != 0;
        let (inp, out) = if trans_b { (c, r) } else { (r, c) };
        if inp != shape.channels {
            return Err(self.unsupported(
                n,
                format!("B has {inp} inputs, the value has {}", shape.channels),
            ));
        }
        let mut weights = if trans_b { b } else { transpose(&b, r, c) };
        weights.iter_mut().for_each(|w| *w *= alpha);
        let bias = match self.float_const(n, 2, "C")? {
            None => vec![0.0; out],
            Some((_, c)) if c.len() == out => c.iter().map(|v| v * beta).collect(),
            Some((_, c)) if c.len() == 1 => vec![c[0] * beta; out],
            Some((d, _)) => {
                return Err(
                    self.unsupported(n, format!("C of dims {d:?} does not broadcast to {out}"))
                );
            }
        };
        let dense = Dense {
            in_features: inp,
            out_features: out,
            weights,
            bias,
        };
        self.emit(n, Op::Dense(dense), &[&x], 2)
    }

    pub(super) fn matmul(&mut self, n: &OnnxNode) -> Result<()> {
        let (x, shape) = self.flat_input(n)?;
        let (dims, b) = self
            .float_const(n, 1, "B")?
            .ok_or_else(|| self.unsupported(n, "the second operand must be a constant matrix"))?;
        let &[r, c] = dims.as_slice() else {
            return Err(self.unsupported(n, format!("B of dims {dims:?} is not a matrix")));
        };
        if r != shape.channels {
            return Err(self.unsupported(
                n,
                format!("B has {r} rows, the value has {} features", shape.channels),
            ));
        }
        let dense = Dense {
            in_features: r,
            out_features: c,
            weights: transpose(&b, r, c),
            bias: vec![0.0; c],
        };
        self.emit(n, Op::Dense(dense), &[&x], 2)
    }

    pub(super) fn add(&mut self, n: &OnnxNode) -> Result<()> {
        let (va, vb) = (self.value(n, 0)?.cloned(), self.value(n, 1)?.cloned());
        match (va, vb) {
            (
                Some(Value::Tensor {
                    ir: xa,
                    shape: sa,
                    rank: ra,
                }),
                Some(Value::Tensor {
                    ir: xb,
                    shape: sb,
                    rank: rb,
                }),
            ) => {
                if sa != sb || ra != rb {
                    return Err(self.unsupported(
                        n,
                        format!("adds shapes {sa} and {sb}: broadcasting is not supported"),
                    ));
                }
                self.emit(n, Op::Add, &[&xa, &xb], ra)
            }
            (Some(Value::Tensor { ir, shape, rank }), Some(Value::Const(c)))
            | (Some(Value::Const(c)), Some(Value::Tensor { ir, shape, rank })) => {
                self.add_bias(n, &ir, shape, rank, &c)
            }
            _ => Err(self.unsupported(n, "needs two operands, at least one computed")),
        }
    }

    /// `x + c` with a constant `c`: becomes the bias of the pending Conv/Dense producing `x`.
    fn add_bias(
        &mut self,
        n: &OnnxNode,
        x: &str,
        shape: Shape,
        rank: usize,
        c: &Const,
    ) -> Result<()> {
        // Broadcast `c` against [1, C, H, W] or [1, N]: only a per-channel (or scalar) constant.
        let mut dims = c.dims.clone();
        let per_channel = if dims.len() > rank {
            None
        } else {
            while dims.len() < rank {
                dims.insert(0, 1);
            }
            let ok = dims
                .iter()
                .enumerate()
                .all(|(i, &d)| d == 1 || (i == 1 && d == shape.channels));
            match c.floats() {
                Some(v) if ok && v.len() == shape.channels => Some(v.to_vec()),
                Some(v) if ok && v.len() == 1 => Some(vec![v[0]; shape.channels]),
                _ => None,
            }
        };
        let Some(add) = per_channel else {
            return Err(self.unsupported(
                n,
                format!(
                    "constant of dims {:?} is not a per-channel bias of {shape}",
                    c.dims
                ),
            ));
        };
        let single_reader = self.ir_uses.get(x).copied() == Some(1);
        let pending = self.pending.iter_mut().rev().find(|p| p.name == x);
        match pending {
            Some(Node {
                op: Op::Conv2d(Conv2d { bias, .. }) | Op::Dense(Dense { bias, .. }),
                ..
            }) if single_reader => {
                bias.iter_mut().zip(&add).for_each(|(b, a)| *b += a);
                let value = Value::Tensor {
                    ir: x.to_owned(),
                    shape,
                    rank,
                };
                self.alias(n, value)
            }
            _ => Err(self.unsupported(
                n,
                "adding a constant is only supported as the bias of the Conv, Gemm or MatMul \
                 just before, when nothing else reads that layer's output",
            )),
        }
    }

    pub(super) fn batchnorm(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
        let (x, shape, rank) = self.tensor(n, 0)?;
        if a.int("training_mode", 0)? != 0 {
            return Err(self.unsupported(n, "training_mode = 1"));
        }
        if n.outputs
            .iter()
            .skip(1)
            .any(|o| self.uses.contains_key(o.as_str()))
        {
            return Err(self.unsupported(n, "the running statistics outputs are used"));
        }
        let mut params = Vec::with_capacity(4);
        for (i, what) in [(1, "scale"), (2, "B"), (3, "mean"), (4, "var")] {
            let (_, v) = self
                .float_const(n, i, what)?
                .ok_or_else(|| self.unsupported(n, format!("no {what}")))?;
            if v.len() != shape.channels {
                return Err(self.unsupported(
                    n,
                    format!(
                        "{what} has {} values for {} channels",
                        v.len(),
                        shape.channels
                    ),
                ));
            }
            params.push(v);
        }
        let eps = f64::from(a.float("epsilon", 1e-5)?);
        let bn = BatchNorm::from_stats(&params[0], &params[1], &params[2], &params[3], eps);
        self.emit(n, Op::BatchNorm(bn), &[&x], rank)
    }

    pub(super) fn pool(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
        let (x, _, rank) = self.tensor(n, 0)?;
        if rank != 4 {
            return Err(self.unsupported(n, "input is not [1, C, H, W]"));
        }
        if a.int("ceil_mode", 0)? != 0 {
            return Err(self.unsupported(n, "ceil_mode = 1"));
        }
        a.no_dilation()?;
        if !a.padding()?.is_zero() {
            return Err(self.unsupported(n, "padded pooling is not supported"));
        }
        if n.op_type == "MaxPool" {
            if a.int("storage_order", 0)? != 0 {
                return Err(self.unsupported(n, "storage_order = 1"));
            }
            if n.outputs
                .get(1)
                .is_some_and(|o| self.uses.contains_key(o.as_str()))
            {
                return Err(self.unsupported(n, "the Indices output is used"));
            }
        }
        let p = Pool2d {
            kernel: a.pair("kernel_shape", None)?,
            stride: a.pair("strides", Some([1, 1]))?,
        };
        let op = if n.op_type == "MaxPool" {
            Op::MaxPool2d(p)
        } else {
            Op::AvgPool2d(p)
        };
        self.emit(n, op, &[&x], 4)
    }

    pub(super) fn reshape(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
        let (x, shape, rank) = self.tensor(n, 0)?;
        let target = self
            .constant(n, 1)?
            .and_then(|c| c.ints().map(<[i64]>::to_vec))
            .ok_or_else(|| self.unsupported(n, "the shape must be a constant int64 tensor"))?;
        let allow_zero = a.int("allowzero", 0)? != 0;
        let onnx_in: Vec<usize> = match rank {
            4 => vec![1, shape.channels, shape.height, shape.width],
            _ => vec![1, shape.channels],
        };
        let total = shape.len();
        let mut dims: Vec<Option<usize>> = Vec::with_capacity(target.len());
        for (i, &d) in target.iter().enumerate() {
            dims.push(match d {
                0 if !allow_zero => Some(onnx_in.get(i).copied().ok_or_else(|| {
                    self.unsupported(n, format!("shape {target:?}: 0 beyond the input rank"))
                })?),
                -1 => None,
                d if d > 0 => Some(d as usize),
                _ => return Err(self.unsupported(n, format!("shape {target:?}"))),
            });
        }
        if dims.iter().filter(|d| d.is_none()).count() > 1 {
            return Err(self.unsupported(n, format!("shape {target:?} has more than one -1")));
        }
        let known: usize = dims
            .iter()
            .flatten()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(0);
        let dims: Vec<usize> = dims
            .iter()
            .map(|d| d.unwrap_or(total.checked_div(known).unwrap_or(0)))
            .collect();
        if dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) != Some(total) {
            return Err(self.unsupported(n, format!("cannot reshape {total} values to {target:?}")));
        }
        let (new_shape, new_rank) = match dims.as_slice() {
            &[1, f] | &[f] => (Shape::flat(f), 2),
            &[1, c, h, w] => (Shape::new(c, h, w), 4),
            _ => {
                return Err(self.unsupported(
                    n,
                    format!("reshape to {dims:?}: only [1, N] and [1, C, H, W] are supported"),
                ));
            }
        };
        self.reshape_to(n, &x, shape, new_shape, new_rank)
    }

    pub(super) fn reshape_to(
        &mut self,
        n: &OnnxNode,
        x: &str,
        from: Shape,
        to: Shape,
        rank: usize,
    ) -> Result<()> {
        if from == to {
            let v = Value::Tensor {
                ir: x.to_owned(),
                shape: to,
                rank,
            };
            return self.alias(n, v);
        }
        self.emit(n, Op::Reshape { shape: to }, &[x], rank)
    }
}

fn transpose(b: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; b.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = b[r * cols + c];
        }
    }
    t
}
