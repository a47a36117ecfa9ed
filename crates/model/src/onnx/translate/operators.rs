//! The translation of each supported ONNX operator that needs more than a line: Constant, Conv
//! (with the zero padding of the Pads before it), Gemm, MatMul, Add (residual or bias),
//! BatchNormalization, the poolings and ReduceMean, Reshape, Clip, Pad, a final Softmax and Shape.

use super::{Attrs, Const, Translator, Value, const_of, node_label};
use crate::ir::{Activation, BatchNorm, Conv2d, Dense, Node, Op, Padding, Pool2d, Shape};
use crate::onnx::{AttributeValue, OnnxNode, Result, TensorData};

/// Largest padding accepted on one side (as by [`Attrs::padding`]).
const MAX_PAD: i64 = 1 << 16;

/// `axis` (negative counts from the end) as an index below `rank`.
fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = i64::try_from(rank).ok()?;
    let a = if axis < 0 { axis + r } else { axis };
    usize::try_from(a).ok().filter(|&a| a < rank)
}

/// ONNX dims of a computed value of IR shape `shape` and ONNX rank `rank`.
fn onnx_dims(shape: Shape, rank: usize) -> Vec<usize> {
    match rank {
        4 => vec![1, shape.channels, shape.height, shape.width],
        _ => vec![1, shape.len()],
    }
}

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
        // The zero padding of Pad nodes just before is added to the convolution's own.
        let (x, shape, rank, extra) = match self.value(n, 0)? {
            Some(Value::Padded { ir, shape, pad, .. }) => (ir.clone(), *shape, 4, *pad),
            _ => {
                let (x, shape, rank) = self.tensor(n, 0)?;
                (x, shape, rank, Padding::default())
            }
        };
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
        let own = a.padding()?;
        let padding = Padding {
            top: own.top + extra.top,
            left: own.left + extra.left,
            bottom: own.bottom + extra.bottom,
            right: own.right + extra.right,
        };
        let conv = Conv2d {
            in_channels: in_per_group.saturating_mul(groups),
            out_channels: out_c,
            kernel: [kh, kw],
            stride: a.pair("strides", Some([1, 1]))?,
            padding,
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
            (Some(Value::Padded { node, .. }), _) | (_, Some(Value::Padded { node, .. })) => {
                Err(self.pad_not_folded(n, &node))
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

impl Translator<'_> {
    /// `Clip(x, min, max)`: bounds as inputs (opset 11+, each optional) or attributes (before).
    pub(super) fn clip(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
        let (x, _, rank) = self.tensor(n, 0)?;
        let bound = |i: usize, name: &str| -> Result<Option<f64>> {
            let v = if a.get(name).is_some() {
                Some(f64::from(a.float(name, 0.0)?))
            } else {
                match self.value(n, i)? {
                    None => None,
                    Some(Value::Const(c)) => Some(c.scalar().ok_or_else(|| {
                        self.unsupported(
                            n,
                            format!("{name} of dims {:?} is not a single number", c.dims),
                        )
                    })?),
                    Some(_) => {
                        return Err(self.unsupported(
                            n,
                            format!(
                                "the {name} bound (input {i}) is computed at run time; only \
                                 constant bounds are supported (clamp with numbers, as ReLU6 or \
                                 torch.clamp(x, 0, 6) do)"
                            ),
                        ));
                    }
                }
            };
            // Older exporters write "no bound" as the largest float.
            Ok(v.filter(|b| b.abs() < f64::from(f32::MAX)))
        };
        let (min, max) = (bound(1, "min")?, bound(2, "max")?);
        for b in [min, max].into_iter().flatten() {
            if !b.is_finite() {
                return Err(self.unsupported(n, format!("bound {b} is not a number")));
            }
        }
        if let (Some(lo), Some(hi)) = (min, max)
            && lo > hi
        {
            return Err(self.unsupported(n, format!("min {lo} is above max {hi}")));
        }
        self.emit(
            n,
            Op::Activation(Activation::Clip { min, max }),
            &[&x],
            rank,
        )
    }

    /// A Softmax or LogSoftmax over the classes producing the graph output: dropped, with a note
    /// (the argmax of the logits is the argmax of their softmax).
    pub(super) fn softmax(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
        let out = self.output_name(n)?.to_owned();
        let is_output = self.graph.outputs.iter().any(|o| o.name == out);
        if !is_output || self.reads(&out) != 1 {
            return Err(self.unsupported(
                n,
                format!(
                    "{} is only supported as the last operator, producing the graph output, where \
                     it is dropped (it does not change the predicted class); inside the network \
                     it has no encrypted evaluation: remove it or move it after the output",
                    n.op_type
                ),
            ));
        }
        let (x, shape, rank) = self.tensor(n, 0)?;
        let dims = onnx_dims(shape, rank);
        let axis = a.int("axis", if self.opset >= 13 { -1 } else { 1 })?;
        let covers_all = match norm_axis(axis, rank) {
            // Since opset 13 the axis is one dimension; before, everything from it on.
            Some(k) if self.opset >= 13 => dims[k] == shape.len(),
            Some(k) => k <= 1,
            None => false,
        };
        if !covers_all {
            return Err(self.unsupported(
                n,
                format!(
                    "axis {axis} of a {dims:?} output: only a {} over all the classes can be \
                     dropped",
                    n.op_type
                ),
            ));
        }
        self.notes.push(format!(
            "node {:?} ({}) was dropped: the model outputs the values before it (logits), whose \
             largest entry is the same class",
            node_label(n),
            n.op_type
        ));
        self.alias(n, Value::Tensor { ir: x, shape, rank })
    }

    /// `Pad` with zeros on height and width: kept as a [`Value::Padded`] for the Conv after it.
    pub(super) fn pad(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
        let (x, shape, prior) = match self.value(n, 0)? {
            Some(Value::Padded { ir, shape, pad, .. }) => (ir.clone(), *shape, *pad),
            _ => {
                let (x, shape, rank) = self.tensor(n, 0)?;
                if rank != 4 {
                    return Err(self.unsupported(
                        n,
                        "only [1, C, H, W] tensors can be padded (height and width)",
                    ));
                }
                (x, shape, Padding::default())
            }
        };
        let mode = a.string("mode")?.unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(self.unsupported(
                n,
                format!(
                    "mode {mode:?}: only zero padding (mode \"constant\", value 0) is supported, \
                     folded into the next convolution; use zero padding (Conv2d's default \
                     padding_mode='zeros', or nn.ZeroPad2d)"
                ),
            ));
        }
        // Attributes before opset 11, inputs since.
        let pads = match a.ints("pads")? {
            Some(p) => p,
            None => self
                .constant(n, 1)?
                .and_then(|c| c.ints().map(<[i64]>::to_vec))
                .ok_or_else(|| self.unsupported(n, "pads must be a constant int64 tensor"))?,
        };
        let value = if a.get("value").is_some() {
            f64::from(a.float("value", 0.0)?)
        } else {
            match self.constant(n, 2)? {
                None => 0.0,
                Some(c) => c
                    .scalar()
                    .ok_or_else(|| self.unsupported(n, "constant_value is not a single number"))?,
            }
        };
        if value != 0.0 {
            return Err(self.unsupported(
                n,
                format!(
                    "constant value {value}: only padding with 0 can be folded into a \
                     convolution's zero padding; pad with zeros"
                ),
            ));
        }
        let axes: Vec<usize> = match self.constant(n, 3)? {
            None => (0..4).collect(),
            Some(c) => c
                .ints()
                .and_then(|v| v.iter().map(|&x| norm_axis(x, 4)).collect())
                .ok_or_else(|| self.unsupported(n, "axes must be int64 axes of [1, C, H, W]"))?,
        };
        if pads.len() != 2 * axes.len() {
            return Err(self.unsupported(
                n,
                format!("pads {pads:?}: expected 2 values per axis of {axes:?}"),
            ));
        }
        let (mut begin, mut end) = ([0i64; 4], [0i64; 4]);
        for (k, &axis) in axes.iter().enumerate() {
            begin[axis] += pads[k];
            end[axis] += pads[k + axes.len()];
        }
        if begin.iter().chain(&end).any(|&p| p < 0) {
            return Err(self.unsupported(
                n,
                format!("pads {pads:?}: negative pads (cropping) are not supported"),
            ));
        }
        if begin[..2].iter().chain(&end[..2]).any(|&p| p != 0) {
            return Err(self.unsupported(
                n,
                format!(
                    "pads {pads:?} pad the batch or channel axis; only height and width can be \
                     padded"
                ),
            ));
        }
        if begin.iter().chain(&end).any(|&p| p > MAX_PAD) {
            return Err(self.unsupported(n, format!("pads {pads:?}: more than {MAX_PAD}")));
        }
        // In range: checked just above.
        let add = |a: usize, b: i64| a + b as usize;
        let pad = Padding {
            top: add(prior.top, begin[2]),
            left: add(prior.left, begin[3]),
            bottom: add(prior.bottom, end[2]),
            right: add(prior.right, end[3]),
        };
        let node = node_label(n);
        self.alias(
            n,
            Value::Padded {
                ir: x,
                shape,
                pad,
                node,
            },
        )
    }

    /// `ReduceMean` over height and width (how the dynamo exporter writes a global average
    /// pooling): a global [`Pool2d`]. Axes as an attribute (before opset 18) or an input.
    pub(super) fn reduce_mean(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
        let (x, shape, rank) = self.tensor(n, 0)?;
        let axes = match a.ints("axes")? {
            Some(v) => Some(v),
            None => self
                .constant(n, 1)?
                .map(|c| {
                    c.ints()
                        .map(<[i64]>::to_vec)
                        .ok_or_else(|| self.unsupported(n, "axes is not an int64 tensor"))
                })
                .transpose()?,
        };
        let mut axes: Vec<usize> = match axes {
            Some(v) if !v.is_empty() => v
                .iter()
                .map(|&x| norm_axis(x, rank))
                .collect::<Option<_>>()
                .ok_or_else(|| self.unsupported(n, format!("axes {v:?} out of range")))?,
            _ => (0..rank).collect(),
        };
        axes.sort_unstable();
        if rank != 4 || axes != [2, 3] {
            return Err(self.unsupported(
                n,
                "only the mean over height and width of [1, C, H, W] (global average pooling) \
                 is supported",
            ));
        }
        let out_rank = if a.int("keepdims", 1)? != 0 { 4 } else { 2 };
        self.emit(n, Op::AvgPool2d(Pool2d::global(shape)), &[&x], out_rank)
    }

    /// `Shape` of a value whose shape is known: a constant (batch 1).
    pub(super) fn shape(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
        let dims: Vec<usize> = match self.value(n, 0)? {
            Some(Value::Tensor { shape, rank, .. }) => onnx_dims(*shape, *rank),
            Some(Value::Padded { shape, pad, .. }) => vec![
                1,
                shape.channels,
                shape.height + pad.top + pad.bottom,
                shape.width + pad.left + pad.right,
            ],
            Some(Value::Const(c)) => c.dims.clone(),
            None => return Err(self.unsupported(n, "input 0 is missing")),
        };
        let r = dims.len() as i64;
        let clamp = |x: i64| (if x < 0 { x + r } else { x }).clamp(0, r) as usize;
        let (start, end) = (clamp(a.int("start", 0)?), clamp(a.int("end", r)?));
        let picked: Vec<i64> = dims
            .get(start..end.max(start))
            .unwrap_or(&[])
            .iter()
            .map(|&d| d as i64)
            .collect();
        let c = Const {
            dims: vec![picked.len()],
            data: TensorData::Int(picked),
        };
        self.alias(n, Value::Const(c))
    }
}
