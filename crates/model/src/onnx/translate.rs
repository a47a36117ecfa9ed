//! Translation of a decoded ONNX graph ([`OnnxModel`]) into the IR: the opset check, the table of
//! ONNX values (computed tensors, zero-padded tensors waiting for their convolution, and
//! constants), the attribute reader, and the translator's bookkeeping (fresh IR names, pending
//! layers, read counts, notes) with the dispatch on `op_type`. The operators' own translations are
//! in `operators`, the import-time evaluation of constant subgraphs in `fold`.

mod fold;
mod operators;

use std::collections::HashMap;

use super::decode::malformed;
use super::{
    AttributeValue, DATA_FLOAT, Imported, OnnxError, OnnxGraph, OnnxModel, OnnxNode, OnnxTensor,
    OnnxValueInfo, Result, TensorData,
};
use crate::ir::{Activation, IrError, Model, ModelBuilder, Node, Op, Padding, Pool2d, Shape};

/// Lowest and highest default-domain opset versions accepted.
pub const OPSET_RANGE: (i64, i64) = (9, 23);

/// A constant operand: dims and values.
#[derive(Debug, Clone)]
struct Const {
    dims: Vec<usize>,
    data: TensorData,
}

impl Const {
    fn len(&self) -> usize {
        self.dims.iter().product()
    }

    fn floats(&self) -> Option<&[f64]> {
        match &self.data {
            TensorData::Float(v) => Some(v),
            _ => None,
        }
    }

    fn ints(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::Int(v) => Some(v),
            _ => None,
        }
    }

    /// The single value of a scalar (any rank with one element), as f64.
    fn scalar(&self) -> Option<f64> {
        if self.len() != 1 {
            return None;
        }
        match &self.data {
            TensorData::Float(v) => v.first().copied(),
            TensorData::Int(v) => v.first().map(|&x| x as f64),
            TensorData::None => None,
        }
    }
}

/// What an ONNX value name stands for during translation.
#[derive(Debug, Clone)]
enum Value {
    /// A tensor computed from the input: the IR value holding it, its shape and its ONNX rank
    /// (4 for `[1, C, H, W]`, 2 for `[1, N]`).
    Tensor {
        ir: String,
        shape: Shape,
        rank: usize,
    },
    /// A computed tensor with zero padding still to add: the output of one or more `Pad` nodes,
    /// which only a convolution may read (the padding is added to its own).
    Padded {
        /// The IR value padded, its shape (before padding).
        ir: String,
        shape: Shape,
        /// The padding to add.
        pad: Padding,
        /// The (last) Pad node, for messages.
        node: String,
    },
    /// A constant.
    Const(Const),
}

fn const_of(t: &OnnxTensor, at: &str) -> Result<Const> {
    let dims = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| malformed(at, "negative dimension"))?;
    Ok(Const {
        dims,
        data: t.data.clone(),
    })
}

/// Translation state: ONNX values, the IR nodes made so far and their shapes.
struct Translator<'a> {
    graph: &'a OnnxGraph,
    values: HashMap<String, Value>,
    builder: ModelBuilder,
    /// How many times each ONNX value is read (nodes and graph outputs).
    uses: HashMap<&'a str, usize>,
    /// How many ONNX reads each IR value has (through every alias of it).
    ir_uses: HashMap<String, i64>,
    /// Nodes whose bias may still be changed by a following `Add` of a constant.
    pending: Vec<Node>,
    /// The default-domain opset version.
    opset: i64,
    /// What the translation changed that a user should know (e.g. a dropped Softmax).
    notes: Vec<String>,
    /// Values in all the constants folded so far (bounded: folding can make large tensors).
    folded: usize,
}

/// Translates a decoded ONNX model into the IR (BatchNorm not folded yet).
pub fn translate(onnx: &OnnxModel) -> Result<Model> {
    translate_with_notes(onnx).map(|i| i.model)
}

/// [`translate`], with the notes on what the translation changed (e.g. a final Softmax dropped).
pub fn translate_with_notes(onnx: &OnnxModel) -> Result<Imported> {
    let opset = onnx
        .opsets
        .iter()
        .find(|(d, _)| d.is_empty() || d == "ai.onnx")
        .map(|&(_, v)| v);
    let opset = match opset {
        Some(v) if (OPSET_RANGE.0..=OPSET_RANGE.1).contains(&v) => v,
        Some(v) => {
            return Err(OnnxError::Invalid {
                reason: format!(
                    "default-domain opset {v}; this importer reads {} to {}",
                    OPSET_RANGE.0, OPSET_RANGE.1
                ),
            });
        }
        None => {
            return Err(OnnxError::Invalid {
                reason: "no default-domain opset import".into(),
            });
        }
    };
    let g = &onnx.graph;
    let mut values: HashMap<String, Value> = HashMap::new();
    for (i, t) in g.initializers.iter().enumerate() {
        values.insert(
            t.name.clone(),
            Value::Const(const_of(t, &format!("graph.initializer[{i}]"))?),
        );
    }
    let data_inputs: Vec<&OnnxValueInfo> = g
        .inputs
        .iter()
        .filter(|v| !values.contains_key(&v.name))
        .collect();
    let [input] = data_inputs.as_slice() else {
        return Err(OnnxError::Invalid {
            reason: format!(
                "{} graph inputs that are not initializers; exactly one (the image) is supported",
                data_inputs.len()
            ),
        });
    };
    if input.elem_type != DATA_FLOAT {
        return Err(OnnxError::Invalid {
            reason: format!(
                "input {:?} has element type {}, expected FLOAT",
                input.name, input.elem_type
            ),
        });
    }
    let (shape, rank) = input_shape(input)?;
    let builder = ModelBuilder::new(input.name.clone(), shape)?;
    values.insert(
        input.name.clone(),
        Value::Tensor {
            ir: input.name.clone(),
            shape,
            rank,
        },
    );
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &g.nodes {
        for i in n.inputs.iter().filter(|i| !i.is_empty()) {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    for o in &g.outputs {
        *uses.entry(o.name.as_str()).or_default() += 1;
    }
    let mut t = Translator {
        graph: g,
        values,
        builder,
        uses,
        ir_uses: HashMap::new(),
        pending: Vec::new(),
        opset,
        notes: Vec::new(),
        folded: 0,
    };
    for node in &g.nodes {
        t.node(node)?;
    }
    t.finish()
}

fn input_shape(input: &OnnxValueInfo) -> Result<(Shape, usize)> {
    let bad = |why: &str| OnnxError::Invalid {
        reason: format!("input {:?} of dims {:?}: {why}", input.name, input.dims),
    };
    let fixed = |d: Option<i64>| -> Result<usize> {
        d.and_then(|d| usize::try_from(d).ok())
            .filter(|&d| d > 0)
            .ok_or_else(|| bad("every dimension but the batch must be a positive number"))
    };
    let batch_ok = |d: Option<i64>| matches!(d, None | Some(1) | Some(0) | Some(-1));
    match input.dims.as_slice() {
        [n, c, h, w] if batch_ok(*n) => Ok((Shape::new(fixed(*c)?, fixed(*h)?, fixed(*w)?), 4)),
        [n, f] if batch_ok(*n) => Ok((Shape::flat(fixed(*f)?), 2)),
        _ => Err(bad("expected [1, C, H, W] or [1, N] with batch 1")),
    }
}

/// Reads an attribute of a node.
struct Attrs<'a>(&'a OnnxNode);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&AttributeValue> {
        self.0
            .attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.value)
    }

    fn int(&self, name: &str, default: i64) -> Result<i64> {
        match self.get(name) {
            None => Ok(default),
            Some(AttributeValue::Int(i)) => Ok(*i),
            Some(_) => Err(self.unsupported(format!("attribute {name} is not an int"))),
        }
    }

    fn float(&self, name: &str, default: f32) -> Result<f32> {
        match self.get(name) {
            None => Ok(default),
            Some(AttributeValue::Float(f)) => Ok(*f),
            Some(_) => Err(self.unsupported(format!("attribute {name} is not a float"))),
        }
    }

    fn ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        match self.get(name) {
            None => Ok(None),
            Some(AttributeValue::Ints(v)) => Ok(Some(v.clone())),
            Some(_) => Err(self.unsupported(format!("attribute {name} is not a list of ints"))),
        }
    }

    fn string(&self, name: &str) -> Result<Option<String>> {
        match self.get(name) {
            None => Ok(None),
            Some(AttributeValue::String(s)) => Ok(Some(String::from_utf8_lossy(s).into_owned())),
            Some(_) => Err(self.unsupported(format!("attribute {name} is not a string"))),
        }
    }

    /// A 2-element list of positive sizes (kernel, strides), `default` when absent.
    fn pair(&self, name: &str, default: Option<[usize; 2]>) -> Result<[usize; 2]> {
        match (self.ints(name)?, default) {
            (Some(v), _) => match v.as_slice() {
                &[a, b] if a > 0 && b > 0 => Ok([a as usize, b as usize]),
                _ => Err(self.unsupported(format!(
                    "{name} {v:?}: only two positive values (2-D) are supported"
                ))),
            },
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.unsupported(format!("attribute {name} is required"))),
        }
    }

    /// `pads` as [`Padding`] (ONNX order: top, left, bottom, right), zero when absent; only
    /// `auto_pad = NOTSET` or `VALID`.
    fn padding(&self) -> Result<Padding> {
        match self.string("auto_pad")?.as_deref() {
            None | Some("NOTSET") | Some("VALID") | Some("") => {}
            Some(other) => {
                return Err(self.unsupported(format!(
                    "auto_pad {other}: give explicit pads (export with padding as numbers)"
                )));
            }
        }
        match self.ints("pads")? {
            None => Ok(Padding::default()),
            Some(v) => match v.as_slice() {
                &[t, l, b, r] if [t, l, b, r].iter().all(|&p| (0..=1 << 16).contains(&p)) => {
                    Ok(Padding {
                        top: t as usize,
                        left: l as usize,
                        bottom: b as usize,
                        right: r as usize,
                    })
                }
                _ => Err(self.unsupported(format!("pads {v:?}: expected 4 non-negative values"))),
            },
        }
    }

    fn no_dilation(&self) -> Result<()> {
        match self.ints("dilations")? {
            Some(d) if d.iter().any(|&x| x != 1) => {
                Err(self.unsupported(format!("dilations {d:?}: only 1 is supported")))
            }
            _ => Ok(()),
        }
    }

    fn unsupported(&self, reason: String) -> OnnxError {
        OnnxError::Unsupported {
            node: node_label(self.0),
            op_type: self.0.op_type.clone(),
            reason,
        }
    }
}

/// The node's name, or its first output when unnamed.
fn node_label(n: &OnnxNode) -> String {
    if n.name.is_empty() {
        n.outputs.first().cloned().unwrap_or_default()
    } else {
        n.name.clone()
    }
}

impl Translator<'_> {
    fn unsupported(&self, n: &OnnxNode, reason: impl Into<String>) -> OnnxError {
        OnnxError::Unsupported {
            node: node_label(n),
            op_type: n.op_type.clone(),
            reason: reason.into(),
        }
    }

    fn value(&self, n: &OnnxNode, i: usize) -> Result<Option<&Value>> {
        match n.inputs.get(i).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(name) => self
                .values
                .get(name)
                .map(Some)
                .ok_or_else(|| OnnxError::Invalid {
                    reason: format!(
                        "node {:?} reads {name:?}, which is not defined before it",
                        node_label(n)
                    ),
                }),
        }
    }

    /// Input `i` as a computed tensor.
    fn tensor(&self, n: &OnnxNode, i: usize) -> Result<(String, Shape, usize)> {
        match self.value(n, i)? {
            Some(Value::Tensor { ir, shape, rank }) => Ok((ir.clone(), *shape, *rank)),
            Some(Value::Padded { node, .. }) => Err(self.pad_not_folded(n, node)),
            Some(Value::Const(_)) => Err(self.unsupported(
                n,
                format!("input {i} is a constant; a computed tensor is expected"),
            )),
            None => Err(self.unsupported(n, format!("input {i} is missing"))),
        }
    }

    /// The error for a node other than a Conv reading the output of Pad node `pad`.
    fn pad_not_folded(&self, reader: &OnnxNode, pad: &str) -> OnnxError {
        let pool = matches!(reader.op_type.as_str(), "AveragePool" | "MaxPool");
        OnnxError::Unsupported {
            node: pad.to_owned(),
            op_type: "Pad".into(),
            reason: format!(
                "its output is read by {} node {:?}: a Pad is only supported right before a Conv, \
                 whose zero padding it becomes{}",
                reader.op_type,
                node_label(reader),
                if pool {
                    "; a padded pooling would average (or compare) the added zeros, which the IR's \
                     pools cannot do: remove the Pad or move it before a convolution"
                } else {
                    "; remove the Pad or give the padding to the convolution after it"
                }
            ),
        }
    }

    /// Input `i` as a constant (`None` when the optional input is omitted).
    fn constant(&self, n: &OnnxNode, i: usize) -> Result<Option<Const>> {
        match self.value(n, i)? {
            Some(Value::Const(c)) => Ok(Some(c.clone())),
            Some(Value::Tensor { .. } | Value::Padded { .. }) => Err(self.unsupported(
                n,
                format!("input {i} is computed at run time; only constant weights are supported"),
            )),
            None => Ok(None),
        }
    }

    fn float_const(
        &self,
        n: &OnnxNode,
        i: usize,
        what: &str,
    ) -> Result<Option<(Vec<usize>, Vec<f64>)>> {
        match self.constant(n, i)? {
            None => Ok(None),
            Some(c) => match c.floats() {
                Some(v) => Ok(Some((c.dims.clone(), v.to_vec()))),
                None => Err(self.unsupported(n, format!("{what} is not a float tensor"))),
            },
        }
    }

    fn output_name<'n>(&self, n: &'n OnnxNode) -> Result<&'n str> {
        n.outputs
            .first()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| OnnxError::Invalid {
                reason: format!("node {:?} ({}) has no output", node_label(n), n.op_type),
            })
    }

    /// A fresh IR node name for the ONNX node.
    fn ir_name(&self, n: &OnnxNode) -> String {
        let base = node_label(n);
        let base = if base.is_empty() {
            n.op_type.clone()
        } else {
            base
        };
        let taken = |s: &str| {
            self.builder.shape_of(s).is_some() || self.pending.iter().any(|p| p.name == s)
        };
        if !taken(&base) {
            return base;
        }
        (1..)
            .map(|k| format!("{base}#{k}"))
            .find(|s| !taken(s))
            .unwrap_or(base)
    }

    /// Moves pending nodes into the builder (checking them).
    fn flush(&mut self) -> Result<()> {
        for node in self.pending.drain(..) {
            self.builder.push(node)?;
        }
        Ok(())
    }

    /// Adds an IR node for ONNX node `n` and binds its first output.
    fn emit(&mut self, n: &OnnxNode, op: Op, inputs: &[&str], rank: usize) -> Result<()> {
        let out = self.output_name(n)?.to_owned();
        let name = self.ir_name(n);
        let node = Node::new(name.clone(), op, inputs);
        // Conv and Dense stay pending one step, so that an Add of a constant can become their bias.
        self.flush()?;
        let shapes: Vec<Shape> = inputs
            .iter()
            .filter_map(|i| self.builder.shape_of(i))
            .collect();
        let shape = node
            .op
            .output_shape(&shapes)
            .map_err(|reason| IrError::Invalid {
                node: name.clone(),
                op: node.op.kind(),
                reason,
            })?;
        if matches!(node.op, Op::Conv2d(_) | Op::Dense(_)) {
            self.pending.push(node);
        } else {
            self.builder.push(node)?;
        }
        let reads = self.reads(&out);
        self.ir_uses.insert(name.clone(), reads);
        self.values.insert(
            out,
            Value::Tensor {
                ir: name,
                shape,
                rank,
            },
        );
        Ok(())
    }

    /// ONNX reads of a value (by nodes and as a graph output).
    fn reads(&self, onnx_value: &str) -> i64 {
        self.uses.get(onnx_value).map_or(0, |&u| u as i64)
    }

    /// Binds the node's first output to an existing value (no IR node).
    fn alias(&mut self, n: &OnnxNode, value: Value) -> Result<()> {
        let out = self.output_name(n)?.to_owned();
        if let Value::Tensor { ir, .. } | Value::Padded { ir, .. } = &value {
            // The aliasing node's own read of its source is passed on to the alias's readers.
            let reads = self.reads(&out) - 1;
            *self.ir_uses.entry(ir.clone()).or_default() += reads;
        }
        self.values.insert(out, value);
        Ok(())
    }

    fn node(&mut self, n: &OnnxNode) -> Result<()> {
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(OnnxError::UnsupportedOperator {
                op_type: n.op_type.clone(),
                domain: n.domain.clone(),
                node: node_label(n),
            });
        }
        let a = Attrs(n);
        let op = n.op_type.as_str();
        if fold::FOLDABLE.contains(&op) && self.all_constant(n)? {
            let inputs = (0..n.inputs.len())
                .map(|i| self.constant(n, i))
                .collect::<Result<Vec<_>>>()?;
            let c = fold::fold(op, &a, &inputs)?;
            self.folded = self.folded.saturating_add(c.len());
            if self.folded > fold::MAX_FOLDED_TOTAL {
                return Err(OnnxError::TooLarge {
                    what: "values in constants computed at import time",
                    size: self.folded as u64,
                    limit: fold::MAX_FOLDED_TOTAL as u64,
                });
            }
            return self.alias(n, Value::Const(c));
        }
        match op {
            "Conv" => self.conv(n, &a),
            "Gemm" => self.gemm(n, &a),
            "MatMul" => self.matmul(n),
            "Add" => self.add(n),
            "BatchNormalization" => self.batchnorm(n, &a),
            "AveragePool" | "MaxPool" => self.pool(n, &a),
            "GlobalAveragePool" => {
                let (x, shape, rank) = self.tensor(n, 0)?;
                if rank != 4 {
                    return Err(self.unsupported(n, "input is not [1, C, H, W]"));
                }
                self.emit(n, Op::AvgPool2d(Pool2d::global(shape)), &[&x], 4)
            }
            "Relu" => self.activation(n, Activation::Relu),
            "LeakyRelu" => {
                let alpha = f64::from(a.float("alpha", 0.01)?);
                self.activation(n, Activation::LeakyRelu { alpha })
            }
            "Sigmoid" => self.activation(n, Activation::Sigmoid),
            "Tanh" => self.activation(n, Activation::Tanh),
            "Clip" => self.clip(n, &a),
            "Softmax" | "LogSoftmax" => self.softmax(n, &a),
            "Pad" => self.pad(n, &a),
            "ReduceMean" => self.reduce_mean(n, &a),
            "Shape" => self.shape(n, &a),
            "Cast" => {
                // A cast of a computed tensor is only accepted to a float type (a no-op here).
                let (x, shape, rank) = self.tensor(n, 0)?;
                let to = a.int("to", 0)?;
                if !matches!(to, 1 | 11) {
                    return Err(self.unsupported(
                        n,
                        format!(
                            "cast of a computed tensor to element type {to}: only FLOAT is \
                             supported"
                        ),
                    ));
                }
                self.alias(n, Value::Tensor { ir: x, shape, rank })
            }
            "Mul" => {
                let (x, _, rank) = self.tensor(n, 0)?;
                if n.inputs.len() != 2 || n.inputs.first() != n.inputs.get(1) {
                    return Err(self.unsupported(
                        n,
                        "only Mul(x, x) (a square) is supported, not a product of two values",
                    ));
                }
                self.emit(n, Op::Square, &[&x], rank)
            }
            "Pow" => {
                let (x, _, rank) = self.tensor(n, 0)?;
                let e = self.constant(n, 1)?.and_then(|c| c.scalar());
                if e != Some(2.0) {
                    return Err(
                        self.unsupported(n, format!("only Pow(x, 2) is supported, exponent {e:?}"))
                    );
                }
                self.emit(n, Op::Square, &[&x], rank)
            }
            "Flatten" => {
                let (x, shape, rank) = self.tensor(n, 0)?;
                let axis = a.int("axis", 1)?;
                let axis = if axis < 0 { axis + rank as i64 } else { axis };
                if !(axis == 0 || axis == 1) {
                    return Err(self.unsupported(
                        n,
                        format!(
                            "axis {axis}: only flattening after the batch (axis 1) is supported"
                        ),
                    ));
                }
                self.reshape_to(n, &x, shape, Shape::flat(shape.len()), 2)
            }
            "Reshape" => self.reshape(n, &a),
            "Identity" | "Dropout" => {
                if n.op_type == "Dropout"
                    && n.outputs
                        .get(1)
                        .is_some_and(|m| self.uses.contains_key(m.as_str()))
                {
                    return Err(self.unsupported(n, "the dropout mask output is used"));
                }
                let v = match self.value(n, 0)? {
                    Some(v) => v.clone(),
                    None => return Err(self.unsupported(n, "input 0 is missing")),
                };
                self.alias(n, v)
            }
            "Constant" => {
                let c = self.constant_attr(n, &a)?;
                self.alias(n, Value::Const(c))
            }
            other if fold::FOLDABLE.contains(&other) => Err(self.unsupported(
                n,
                format!(
                    "{other} of a tensor computed from the image is not supported: it is only \
                     evaluated at import time on constants (static shape computations); export \
                     with fixed input sizes (no dynamic_axes) and constant folding, or remove \
                     the operation from the network"
                ),
            )),
            other => Err(OnnxError::UnsupportedOperator {
                op_type: other.to_owned(),
                domain: n.domain.clone(),
                node: node_label(n),
            }),
        }
    }

    /// Whether every input given to `n` is a constant (and it has at least one).
    fn all_constant(&self, n: &OnnxNode) -> Result<bool> {
        let mut any = false;
        for i in 0..n.inputs.len() {
            match self.value(n, i)? {
                Some(Value::Const(_)) => any = true,
                Some(_) => return Ok(false),
                None => {}
            }
        }
        Ok(any)
    }

    /// An element-wise activation of input 0.
    fn activation(&mut self, n: &OnnxNode, act: Activation) -> Result<()> {
        let (x, _, rank) = self.tensor(n, 0)?;
        self.emit(n, Op::Activation(act), &[&x], rank)
    }

    fn finish(mut self) -> Result<Imported> {
        self.flush()?;
        let [out] = self.graph.outputs.as_slice() else {
            return Err(OnnxError::Invalid {
                reason: format!(
                    "{} graph outputs; exactly one (the logits) is supported",
                    self.graph.outputs.len()
                ),
            });
        };
        let (ir, shape) = match self.values.get(&out.name) {
            Some(Value::Tensor { ir, shape, .. }) => (ir.clone(), *shape),
            Some(Value::Padded { node, .. }) => {
                return Err(OnnxError::Unsupported {
                    node: node.clone(),
                    op_type: "Pad".into(),
                    reason: "its output is the graph output; a Pad is only supported right \
                             before a Conv, whose zero padding it becomes: remove it"
                        .into(),
                });
            }
            _ => {
                return Err(OnnxError::Invalid {
                    reason: format!("the output {:?} is not computed by the graph", out.name),
                });
            }
        };
        let declared: Option<usize> = out
            .dims
            .iter()
            .map(|d| d.and_then(|d| usize::try_from(d).ok()))
            .try_fold(1usize, |acc, d| d.and_then(|d| acc.checked_mul(d)));
        if let Some(declared) = declared
            && !out.dims.is_empty()
            && declared != shape.len()
        {
            return Err(OnnxError::Invalid {
                reason: format!(
                    "the output {:?} is declared with dims {:?}, the graph computes {shape}",
                    out.name, out.dims
                ),
            });
        }
        let model = self.builder.build(&ir)?.prune()?;
        Ok(Imported {
            model,
            notes: self.notes,
        })
    }
}
