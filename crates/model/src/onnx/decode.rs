//! The bounded protobuf decoder of ONNX import: the decoded message structs ([`OnnxModel`] and the
//! messages it holds) and the decoder that fills them from untrusted bytes, checking every length
//! against the bytes really there and against [`Limits`] before allocating. The protobuf wire
//! format itself (field reader, packed repeated values) is in `wire`.

mod wire;

use super::{Limits, OnnxError, Result};
use wire::{Wire, as_bytes, as_i32, as_int, for_each_field, push_f32, push_f64, push_i64};

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

// --------------------------------------------------------------------------- decoder

/// Decoding context: the limits and the running totals they bound.
pub(super) struct Decoder {
    limits: Limits,
    total_elements: u64,
}

/// An [`OnnxError::Malformed`] at `at`.
pub(super) fn malformed(at: &str, reason: impl Into<String>) -> OnnxError {
    OnnxError::Malformed {
        at: at.to_owned(),
        reason: reason.into(),
    }
}

impl Decoder {
    /// A decoder within `limits`, nothing counted yet.
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            limits,
            total_elements: 0,
        }
    }

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

    /// Decodes a `ModelProto`.
    pub(super) fn model(&mut self, bytes: &[u8]) -> Result<OnnxModel> {
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
