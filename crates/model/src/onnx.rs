//! ONNX import: a bounded protobuf decoder for the subset PyTorch exports, and the translation of
//! the decoded graph into the IR ([`crate::ir::Model`]).
//!
//! [`decode`] reads `ModelProto → GraphProto` (nodes with their attributes, initializers, graph
//! inputs and outputs) from untrusted bytes: every length is checked against the bytes that are
//! really there and against [`Limits`] before anything is allocated, and malformed, truncated or
//! hostile input gives an [`OnnxError`], never a panic. [`import`] then maps the operators to IR
//! nodes and folds BatchNorm into the neighbouring linear layers.
//!
//! Supported operators (default domain): Conv, Gemm, MatMul (+ Add of a constant as its bias),
//! BatchNormalization, AveragePool, GlobalAveragePool, MaxPool, Relu, `Mul(x, x)` and `Pow(x, 2)`
//! as a square, Flatten, Reshape, Add (two branches: residual; a constant: the bias of the Conv,
//! Gemm or MatMul before it), Identity and Dropout (no-ops), Constant. Anything else is
//! [`OnnxError::UnsupportedOperator`], naming the operator and the node.
//!
//! The batch dimension must be 1 (or symbolic): tensors are `[1, C, H, W]` or `[1, N]`, which the
//! IR holds as `C x H x W` and `N x 1 x 1`.

use std::collections::HashMap;

use thiserror::Error;

use crate::ir::{
    BatchNorm, Conv2d, Dense, IrError, Model, ModelBuilder, Node, Op, Padding, Pool2d, Shape,
};

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

// --------------------------------------------------------------------------- decoded messages

/// The decoded part of an ONNX `ModelProto`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OnnxModel {
    /// `ir_version`.
    pub ir_version: i64,
    /// `producer_name`.
    pub producer_name: String,
    /// `opset_import`: (domain, version) pairs; the default domain is `""`.
    pub opsets: Vec<(String, i64)>,
    /// The main graph.
    pub graph: OnnxGraph,
}

/// The decoded part of an ONNX `GraphProto`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OnnxGraph {
    /// Graph name.
    pub name: String,
    /// Nodes, in the file's (topological) order.
    pub nodes: Vec<OnnxNode>,
    /// Constant tensors (weights).
    pub initializers: Vec<OnnxTensor>,
    /// Graph inputs (may also list initializers).
    pub inputs: Vec<OnnxValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<OnnxValueInfo>,
}

/// The decoded part of an ONNX `NodeProto`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OnnxNode {
    /// Node name (may be empty).
    pub name: String,
    /// Operator.
    pub op_type: String,
    /// Operator domain (`""` or `"ai.onnx"` for the default one).
    pub domain: String,
    /// Input value names (`""` = omitted optional input).
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// Attributes.
    pub attributes: Vec<OnnxAttribute>,
}

/// A decoded attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxAttribute {
    /// Attribute name.
    pub name: String,
    /// Its value.
    pub value: AttributeValue,
}

/// Value of an attribute, for the kinds the importer reads.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    /// `f`.
    Float(f32),
    /// `i`.
    Int(i64),
    /// `s`.
    String(Vec<u8>),
    /// `t`.
    Tensor(OnnxTensor),
    /// `floats`.
    Floats(Vec<f32>),
    /// `ints`.
    Ints(Vec<i64>),
    /// Another kind (graphs, strings, sparse tensors, types), not decoded.
    Other,
}

/// A decoded tensor (initializer or constant).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OnnxTensor {
    /// Name.
    pub name: String,
    /// Dimensions.
    pub dims: Vec<i64>,
    /// `TensorProto.DataType`.
    pub data_type: i32,
    /// Values.
    pub data: TensorData,
}

/// Values of a decoded tensor.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum TensorData {
    /// FLOAT or DOUBLE values, widened to f64.
    Float(Vec<f64>),
    /// INT64 or INT32 values.
    Int(Vec<i64>),
    /// No data, or a type the importer does not read.
    #[default]
    None,
}

/// A decoded `ValueInfoProto` (graph input or output).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OnnxValueInfo {
    /// Value name.
    pub name: String,
    /// Element type (1 = FLOAT), 0 if absent.
    pub elem_type: i32,
    /// Dimensions: `Some(n)` for a fixed size, `None` for a symbolic or absent one.
    pub dims: Vec<Option<i64>>,
}

/// `TensorProto.DataType.FLOAT`.
pub const DATA_FLOAT: i32 = 1;
/// `TensorProto.DataType.INT32`.
pub const DATA_INT32: i32 = 6;
/// `TensorProto.DataType.INT64`.
pub const DATA_INT64: i32 = 7;
/// `TensorProto.DataType.DOUBLE`.
pub const DATA_DOUBLE: i32 = 11;

// --------------------------------------------------------------------------- protobuf reader

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterates over the fields of one protobuf message held in a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        if i == 9 && b > 1 {
            return Err("varint overflows 64 bits".into());
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| format!("field of {n} bytes runs past the end of its message"))?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// The next field number and value, or `None` at the end of the message.
    fn next_field(&mut self) -> Result<Option<(u64, Wire<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = read_varint(self.buf, &mut self.pos)?;
        let number = key >> 3;
        if number == 0 || number > (1 << 29) {
            return Err(format!("invalid field number {number}"));
        }
        let value = match key & 7 {
            0 => Wire::Varint(read_varint(self.buf, &mut self.pos)?),
            1 => Wire::Fixed64(u64::from_le_bytes(self.array()?)),
            2 => {
                let len = read_varint(self.buf, &mut self.pos)?;
                let len = usize::try_from(len).map_err(|_| "length overflow")?;
                Wire::Bytes(self.take(len)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(self.array()?)),
            t => return Err(format!("unsupported wire type {t} (field {number})")),
        };
        Ok(Some((number, value)))
    }
}

/// Decoding context: the limits and the running totals they bound.
struct Decoder {
    limits: Limits,
    total_elements: u64,
}

fn malformed(at: &str, reason: impl Into<String>) -> OnnxError {
    OnnxError::Malformed {
        at: at.to_owned(),
        reason: reason.into(),
    }
}

/// Runs `f` on every field of the message `buf`, naming `at` in errors.
fn for_each_field<'a>(
    buf: &'a [u8],
    at: &str,
    mut f: impl FnMut(u64, Wire<'a>) -> Result<()>,
) -> Result<()> {
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.next_field().map_err(|e| malformed(at, e))? {
        f(n, v)?;
    }
    Ok(())
}

fn as_bytes<'a>(v: Wire<'a>, at: &str) -> Result<&'a [u8]> {
    match v {
        Wire::Bytes(b) => Ok(b),
        _ => Err(malformed(at, "expected a length-delimited field")),
    }
}

fn as_int(v: Wire<'_>, at: &str) -> Result<i64> {
    match v {
        // int64 fields are two's complement varints.
        Wire::Varint(x) => Ok(x as i64),
        _ => Err(malformed(at, "expected a varint")),
    }
}

fn as_i32(v: Wire<'_>, at: &str) -> Result<i32> {
    let x = as_int(v, at)?;
    i32::try_from(x).map_err(|_| malformed(at, format!("{x} does not fit an int32")))
}

impl Decoder {
    /// Adds `n` values to the running total and checks it.
    fn count_elements(&mut self, n: u64) -> Result<()> {
        self.total_elements = self.total_elements.saturating_add(n);
        if self.total_elements > self.limits.max_total_elements {
            return Err(OnnxError::TooLarge {
                what: "total tensor element count",
                size: self.total_elements,
                limit: self.limits.max_total_elements,
            });
        }
        Ok(())
    }

    fn string(&self, v: Wire<'_>, at: &str) -> Result<String> {
        let b = as_bytes(v, at)?;
        if b.len() > self.limits.max_string {
            return Err(OnnxError::TooLarge {
                what: "string length",
                size: b.len() as u64,
                limit: self.limits.max_string as u64,
            });
        }
        String::from_utf8(b.to_vec()).map_err(|_| malformed(at, "string is not UTF-8"))
    }

    fn model(&mut self, bytes: &[u8]) -> Result<OnnxModel> {
        let mut m = OnnxModel::default();
        let mut graphs = 0usize;
        for_each_field(bytes, "model", |n, v| {
            match n {
                1 => m.ir_version = as_int(v, "model.ir_version")?,
                2 => m.producer_name = self.string(v, "model.producer_name")?,
                7 => {
                    graphs += 1;
                    if graphs > 1 {
                        return Err(malformed("model.graph", "more than one graph"));
                    }
                    m.graph = self.graph(as_bytes(v, "model.graph")?)?;
                }
                8 => {
                    let at = "model.opset_import";
                    let (mut domain, mut version) = (String::new(), 0);
                    for_each_field(as_bytes(v, at)?, at, |n, v| {
                        match n {
                            1 => domain = self.string(v, at)?,
                            2 => version = as_int(v, at)?,
                            _ => {}
                        }
                        Ok(())
                    })?;
                    if m.opsets.len() >= 64 {
                        return Err(malformed(at, "more than 64 opset imports"));
                    }
                    m.opsets.push((domain, version));
                }
                _ => {}
            }
            Ok(())
        })?;
        if graphs == 0 {
            return Err(malformed("model", "no graph"));
        }
        Ok(m)
    }

    fn graph(&mut self, buf: &[u8]) -> Result<OnnxGraph> {
        let mut g = OnnxGraph::default();
        for_each_field(buf, "graph", |n, v| {
            match n {
                1 => {
                    if g.nodes.len() >= self.limits.max_nodes {
                        return Err(OnnxError::TooLarge {
                            what: "node count",
                            size: g.nodes.len() as u64 + 1,
                            limit: self.limits.max_nodes as u64,
                        });
                    }
                    let at = format!("graph.node[{}]", g.nodes.len());
                    g.nodes.push(self.node(as_bytes(v, &at)?, &at)?);
                }
                2 => g.name = self.string(v, "graph.name")?,
                5 => {
                    if g.initializers.len() >= self.limits.max_initializers {
                        return Err(OnnxError::TooLarge {
                            what: "initializer count",
                            size: g.initializers.len() as u64 + 1,
                            limit: self.limits.max_initializers as u64,
                        });
                    }
                    let at = format!("graph.initializer[{}]", g.initializers.len());
                    g.initializers.push(self.tensor(as_bytes(v, &at)?, &at)?);
                }
                11 | 12 => {
                    let list = if n == 11 {
                        &mut g.inputs
                    } else {
                        &mut g.outputs
                    };
                    if list.len() >= self.limits.max_initializers {
                        return Err(OnnxError::TooLarge {
                            what: "graph input/output count",
                            size: list.len() as u64 + 1,
                            limit: self.limits.max_initializers as u64,
                        });
                    }
                    let at = format!(
                        "graph.{}[{}]",
                        if n == 11 { "input" } else { "output" },
                        list.len()
                    );
                    let vi = self.value_info(as_bytes(v, &at)?, &at)?;
                    list.push(vi);
                }
                15 => {
                    return Err(malformed(
                        "graph.sparse_initializer",
                        "sparse initializers are not supported",
                    ));
                }
                _ => {}
            }
            Ok(())
        })?;
        Ok(g)
    }

    fn node(&mut self, buf: &[u8], at: &str) -> Result<OnnxNode> {
        let mut node = OnnxNode::default();
        for_each_field(buf, at, |n, v| {
            match n {
                1 | 2 => {
                    let list = if n == 1 {
                        &mut node.inputs
                    } else {
                        &mut node.outputs
                    };
                    if list.len() >= 64 {
                        return Err(malformed(at, "more than 64 inputs or outputs"));
                    }
                    list.push(self.string(v, at)?);
                }
                3 => node.name = self.string(v, at)?,
                4 => node.op_type = self.string(v, at)?,
                5 => {
                    if node.attributes.len() >= self.limits.max_attributes {
                        return Err(OnnxError::TooLarge {
                            what: "attribute count",
                            size: node.attributes.len() as u64 + 1,
                            limit: self.limits.max_attributes as u64,
                        });
                    }
                    let at = format!("{at}.attribute[{}]", node.attributes.len());
                    node.attributes
                        .push(self.attribute(as_bytes(v, &at)?, &at)?);
                }
                7 => node.domain = self.string(v, at)?,
                _ => {}
            }
            Ok(())
        })?;
        if node.op_type.is_empty() {
            return Err(malformed(at, "node without op_type"));
        }
        Ok(node)
    }

    fn attribute(&mut self, buf: &[u8], at: &str) -> Result<OnnxAttribute> {
        let mut name = String::new();
        let mut value = AttributeValue::Other;
        let mut floats: Vec<f32> = Vec::new();
        let mut ints: Vec<i64> = Vec::new();
        let (mut has_floats, mut has_ints) = (false, false);
        for_each_field(buf, at, |n, v| {
            match n {
                1 => name = self.string(v, at)?,
                2 => match v {
                    Wire::Fixed32(x) => value = AttributeValue::Float(f32::from_bits(x)),
                    _ => return Err(malformed(at, "attribute f is not a fixed32")),
                },
                3 => value = AttributeValue::Int(as_int(v, at)?),
                4 => {
                    let b = as_bytes(v, at)?;
                    if b.len() > self.limits.max_string {
                        return Err(OnnxError::TooLarge {
                            what: "string attribute length",
                            size: b.len() as u64,
                            limit: self.limits.max_string as u64,
                        });
                    }
                    value = AttributeValue::String(b.to_vec());
                }
                5 => value = AttributeValue::Tensor(self.tensor(as_bytes(v, at)?, at)?),
                7 => {
                    has_floats = true;
                    push_f32(v, &mut floats, self.limits.max_attribute_values, at)?;
                }
                8 => {
                    has_ints = true;
                    push_i64(v, &mut ints, self.limits.max_attribute_values, at)?;
                }
                _ => {}
            }
            Ok(())
        })?;
        self.count_elements((floats.len() + ints.len()) as u64)?;
        if has_floats {
            value = AttributeValue::Floats(floats);
        } else if has_ints {
            value = AttributeValue::Ints(ints);
        }
        Ok(OnnxAttribute { name, value })
    }

    fn tensor(&mut self, buf: &[u8], at: &str) -> Result<OnnxTensor> {
        let mut t = OnnxTensor::default();
        let mut raw: Option<&[u8]> = None;
        let mut floats: Vec<f32> = Vec::new();
        let mut doubles: Vec<f64> = Vec::new();
        let mut ints: Vec<i64> = Vec::new();
        let cap = self.limits.max_tensor_elements;
        for_each_field(buf, at, |n, v| {
            match n {
                1 => {
                    push_i64(v, &mut t.dims, self.limits.max_rank as u64, at)?;
                }
                2 => t.data_type = as_i32(v, at)?,
                4 => push_f32(v, &mut floats, cap, at)?,
                5 | 7 => push_i64(v, &mut ints, cap, at)?,
                8 => t.name = self.string(v, at)?,
                9 => raw = Some(as_bytes(v, at)?),
                10 => push_f64(v, &mut doubles, cap, at)?,
                13 | 14 => {
                    return Err(malformed(
                        at,
                        "tensor data stored outside the file is not supported",
                    ));
                }
                _ => {}
            }
            Ok(())
        })?;
        if t.dims.len() > self.limits.max_rank {
            return Err(OnnxError::TooLarge {
                what: "tensor rank",
                size: t.dims.len() as u64,
                limit: self.limits.max_rank as u64,
            });
        }
        let mut count: u64 = 1;
        for &d in &t.dims {
            let d = u64::try_from(d)
                .map_err(|_| malformed(at, format!("negative dimension {d} in {:?}", t.dims)))?;
            count = count.saturating_mul(d);
        }
        if count > self.limits.max_tensor_elements {
            return Err(OnnxError::TooLarge {
                what: "tensor element count",
                size: count,
                limit: self.limits.max_tensor_elements,
            });
        }
        self.count_elements(count)?;
        let count = count as usize;
        let wrong_count = |found: usize| {
            malformed(
                at,
                format!(
                    "tensor {:?} of dims {:?} holds {found} values, expected {count}",
                    t.name, t.dims
                ),
            )
        };
        t.data = match (t.data_type, raw) {
            (DATA_FLOAT, Some(raw)) => {
                if raw.len() != count * 4 {
                    return Err(wrong_count(raw.len() / 4));
                }
                TensorData::Float(
                    raw.chunks_exact(4)
                        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                        .collect(),
                )
            }
            (DATA_DOUBLE, Some(raw)) => {
                if raw.len() != count * 8 {
                    return Err(wrong_count(raw.len() / 8));
                }
                TensorData::Float(
                    raw.chunks_exact(8)
                        .map(|c| {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(c);
                            f64::from_le_bytes(a)
                        })
                        .collect(),
                )
            }
            (DATA_INT64, Some(raw)) => {
                if raw.len() != count * 8 {
                    return Err(wrong_count(raw.len() / 8));
                }
                TensorData::Int(
                    raw.chunks_exact(8)
                        .map(|c| {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(c);
                            i64::from_le_bytes(a)
                        })
                        .collect(),
                )
            }
            (DATA_INT32, Some(raw)) => {
                if raw.len() != count * 4 {
                    return Err(wrong_count(raw.len() / 4));
                }
                TensorData::Int(
                    raw.chunks_exact(4)
                        .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                        .collect(),
                )
            }
            (DATA_FLOAT, None) => {
                if floats.len() != count {
                    return Err(wrong_count(floats.len()));
                }
                TensorData::Float(floats.into_iter().map(f64::from).collect())
            }
            (DATA_DOUBLE, None) => {
                if doubles.len() != count {
                    return Err(wrong_count(doubles.len()));
                }
                TensorData::Float(doubles)
            }
            (DATA_INT64 | DATA_INT32, None) => {
                if ints.len() != count {
                    return Err(wrong_count(ints.len()));
                }
                if t.data_type == DATA_INT32 {
                    ints = ints.into_iter().map(|x| i64::from(x as i32)).collect();
                }
                TensorData::Int(ints)
            }
            _ => TensorData::None,
        };
        Ok(t)
    }

    fn value_info(&mut self, buf: &[u8], at: &str) -> Result<OnnxValueInfo> {
        let mut vi = OnnxValueInfo::default();
        let max_rank = self.limits.max_rank;
        for_each_field(buf, at, |n, v| {
            match n {
                1 => vi.name = self.string(v, at)?,
                // TypeProto.tensor_type (1) → elem_type (1), shape (2) → dim (1) → dim_value (1).
                2 => for_each_field(as_bytes(v, at)?, at, |n, v| {
                    if n != 1 {
                        return Ok(());
                    }
                    for_each_field(as_bytes(v, at)?, at, |n, v| {
                        match n {
                            1 => vi.elem_type = as_i32(v, at)?,
                            2 => for_each_field(as_bytes(v, at)?, at, |n, v| {
                                if n != 1 {
                                    return Ok(());
                                }
                                if vi.dims.len() >= max_rank {
                                    return Err(OnnxError::TooLarge {
                                        what: "value rank",
                                        size: vi.dims.len() as u64 + 1,
                                        limit: max_rank as u64,
                                    });
                                }
                                let mut dim = None;
                                for_each_field(as_bytes(v, at)?, at, |n, v| {
                                    if n == 1 {
                                        dim = Some(as_int(v, at)?);
                                    }
                                    Ok(())
                                })?;
                                vi.dims.push(dim);
                                Ok(())
                            })?,
                            _ => {}
                        }
                        Ok(())
                    })
                })?,
                _ => {}
            }
            Ok(())
        })?;
        Ok(vi)
    }
}

fn too_many(limit: u64) -> OnnxError {
    OnnxError::TooLarge {
        what: "repeated field values",
        size: limit + 1,
        limit,
    }
}

/// Repeated int64: one varint per field or a packed run.
fn push_i64(v: Wire<'_>, out: &mut Vec<i64>, limit: u64, at: &str) -> Result<()> {
    match v {
        Wire::Varint(x) => out.push(x as i64),
        Wire::Bytes(b) => {
            let mut pos = 0;
            while pos < b.len() {
                out.push(read_varint(b, &mut pos).map_err(|e| malformed(at, e))? as i64);
                if out.len() as u64 > limit {
                    return Err(too_many(limit));
                }
            }
        }
        _ => return Err(malformed(at, "expected integer values")),
    }
    if out.len() as u64 > limit {
        return Err(too_many(limit));
    }
    Ok(())
}

/// Repeated float: one fixed32 per field or a packed run.
fn push_f32(v: Wire<'_>, out: &mut Vec<f32>, limit: u64, at: &str) -> Result<()> {
    match v {
        Wire::Fixed32(x) => out.push(f32::from_bits(x)),
        Wire::Bytes(b) => {
            if b.len() % 4 != 0 {
                return Err(malformed(at, "packed floats not a multiple of 4 bytes"));
            }
            if (out.len() + b.len() / 4) as u64 > limit {
                return Err(too_many(limit));
            }
            out.extend(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        _ => return Err(malformed(at, "expected float values")),
    }
    if out.len() as u64 > limit {
        return Err(too_many(limit));
    }
    Ok(())
}

/// Repeated double: one fixed64 per field or a packed run.
fn push_f64(v: Wire<'_>, out: &mut Vec<f64>, limit: u64, at: &str) -> Result<()> {
    match v {
        Wire::Fixed64(x) => out.push(f64::from_bits(x)),
        Wire::Bytes(b) => {
            if b.len() % 8 != 0 {
                return Err(malformed(at, "packed doubles not a multiple of 8 bytes"));
            }
            if (out.len() + b.len() / 8) as u64 > limit {
                return Err(too_many(limit));
            }
            out.extend(b.chunks_exact(8).map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a)
            }));
        }
        _ => return Err(malformed(at, "expected double values")),
    }
    if out.len() as u64 > limit {
        return Err(too_many(limit));
    }
    Ok(())
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
    Decoder {
        limits: *limits,
        total_elements: 0,
    }
    .model(bytes)
}

// --------------------------------------------------------------------------- translation

/// Imports ONNX bytes into an IR model, folding BatchNorm (default options).
pub fn import(bytes: &[u8]) -> Result<Model> {
    import_with(bytes, &ImportOptions::default())
}

/// Imports ONNX bytes with the given options.
pub fn import_with(bytes: &[u8], options: &ImportOptions) -> Result<Model> {
    let onnx = decode_with(bytes, &options.limits)?;
    let model = translate(&onnx)?;
    if options.fold_batchnorm {
        Ok(model.fold_batchnorm()?)
    } else {
        Ok(model)
    }
}

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
}

/// Translates a decoded ONNX model into the IR (BatchNorm not folded yet).
pub fn translate(onnx: &OnnxModel) -> Result<Model> {
    let opset = onnx
        .opsets
        .iter()
        .find(|(d, _)| d.is_empty() || d == "ai.onnx")
        .map(|&(_, v)| v);
    match opset {
        Some(v) if (OPSET_RANGE.0..=OPSET_RANGE.1).contains(&v) => {}
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
    }
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
            Some(Value::Const(_)) => Err(self.unsupported(
                n,
                format!("input {i} is a constant; a computed tensor is expected"),
            )),
            None => Err(self.unsupported(n, format!("input {i} is missing"))),
        }
    }

    /// Input `i` as a constant (`None` when the optional input is omitted).
    fn constant(&self, n: &OnnxNode, i: usize) -> Result<Option<Const>> {
        match self.value(n, i)? {
            Some(Value::Const(c)) => Ok(Some(c.clone())),
            Some(Value::Tensor { .. }) => Err(self.unsupported(
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
        if let Value::Tensor { ir, .. } = &value {
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
        match n.op_type.as_str() {
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
            "Relu" => {
                let (x, _, rank) = self.tensor(n, 0)?;
                self.emit(n, Op::Relu, &[&x], rank)
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
            other => Err(OnnxError::UnsupportedOperator {
                op_type: other.to_owned(),
                domain: n.domain.clone(),
                node: node_label(n),
            }),
        }
    }

    fn constant_attr(&self, n: &OnnxNode, a: &Attrs<'_>) -> Result<Const> {
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

    fn conv(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
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

    fn gemm(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
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

    fn matmul(&mut self, n: &OnnxNode) -> Result<()> {
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

    fn add(&mut self, n: &OnnxNode) -> Result<()> {
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

    fn batchnorm(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
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

    fn pool(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
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

    fn reshape(&mut self, n: &OnnxNode, a: &Attrs<'_>) -> Result<()> {
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

    fn reshape_to(
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

    fn finish(mut self) -> Result<Model> {
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
        let model = self.builder.build(&ir)?;
        Ok(model.prune()?)
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
