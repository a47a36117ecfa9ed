//! [`Model`] and [`ModelBuilder`]: building and checking a model, its accessors, the passes that
//! read or rewrite it (multiplicative-depth accounting, pruning, BatchNorm folding) and its
//! Display and serde (JSON) forms.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Conv2d, IR_FORMAT, IrError, MAX_NODES, Node, Op, Padding, Result, Shape};

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

    /// Whether every node can be evaluated under CKKS (no `Activation`, no `MaxPool2d`).
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
    ///
    /// [`BatchNorm`]: super::BatchNorm
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
