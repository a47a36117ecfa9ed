//! A small hand-written protobuf walk over an ONNX `ModelProto`.
//!
//! It checks the structure the loader's tests care about (ir_version, opset imports, graph nodes
//! and their op types, inputs, outputs, initializers) without pulling an ONNX runtime into the
//! test build. Field numbers are those of `onnx.proto` (ONNX 1.x).

/// What the walk found in a model.
#[derive(Debug, Default)]
pub struct OnnxSummary {
    pub ir_version: u64,
    pub producer_name: String,
    /// (domain, version) pairs; the default domain is "".
    pub opsets: Vec<(String, u64)>,
    pub graph: GraphSummary,
}

#[derive(Debug, Default)]
pub struct GraphSummary {
    pub name: String,
    pub nodes: Vec<NodeSummary>,
    pub inputs: Vec<ValueSummary>,
    pub outputs: Vec<ValueSummary>,
    pub initializers: Vec<TensorSummary>,
}

#[derive(Debug, Default)]
pub struct NodeSummary {
    pub op_type: String,
    pub domain: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

#[derive(Debug, Default)]
pub struct ValueSummary {
    pub name: String,
    pub elem_type: u64,
    /// Fixed dimensions; a symbolic one is recorded as `None`.
    pub dims: Vec<Option<u64>>,
}

#[derive(Debug, Default)]
pub struct TensorSummary {
    pub name: String,
    pub dims: Vec<u64>,
    pub data_type: u64,
    /// Bytes of `raw_data`, or 4 * the number of `float_data` values.
    pub data_bytes: usize,
}

/// ONNX `TensorProto.DataType.FLOAT`.
pub const FLOAT: u64 = 1;

enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32,
}

/// Iterates over the fields of one protobuf message.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        Some(self.field())
    }
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self.buf.get(self.pos..end).ok_or("truncated field")?;
        self.pos = end;
        Ok(s)
    }

    fn field(&mut self) -> Result<(u64, Value<'a>), String> {
        let key = varint(self.buf, &mut self.pos)?;
        let number = key >> 3;
        if number == 0 {
            return Err("field number 0".into());
        }
        let value = match key & 7 {
            0 => Value::Varint(varint(self.buf, &mut self.pos)?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = varint(self.buf, &mut self.pos)?;
                Value::Bytes(self.take(usize::try_from(len).map_err(|_| "length overflow")?)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed32
            }
            t => return Err(format!("unsupported wire type {t} (field {number})")),
        };
        Ok((number, value))
    }
}

fn string(v: &Value<'_>) -> Result<String, String> {
    match v {
        Value::Bytes(b) => String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8".into()),
        _ => Err("expected a string".into()),
    }
}

fn bytes<'a>(v: &Value<'a>) -> Result<&'a [u8], String> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err("expected a length-delimited field".into()),
    }
}

fn int(v: &Value<'_>) -> Result<u64, String> {
    match v {
        Value::Varint(x) => Ok(*x),
        _ => Err("expected a varint".into()),
    }
}

/// Repeated int64: either one varint per field or a packed run.
fn push_ints(v: &Value<'_>, out: &mut Vec<u64>) -> Result<(), String> {
    match v {
        Value::Varint(x) => out.push(*x),
        Value::Bytes(b) => {
            let mut pos = 0;
            while pos < b.len() {
                out.push(varint(b, &mut pos)?);
            }
        }
        _ => return Err("expected int64 values".into()),
    }
    Ok(())
}

/// Walks `bytes` as an ONNX ModelProto.
pub fn parse_model(model: &[u8]) -> Result<OnnxSummary, String> {
    let mut m = OnnxSummary::default();
    let mut graphs = 0;
    for f in Fields::new(model) {
        let (n, v) = f?;
        match n {
            1 => m.ir_version = int(&v)?,
            2 => m.producer_name = string(&v)?,
            7 => {
                m.graph = parse_graph(bytes(&v)?)?;
                graphs += 1;
            }
            8 => {
                let (mut domain, mut version) = (String::new(), 0);
                for f in Fields::new(bytes(&v)?) {
                    match f? {
                        (1, v) => domain = string(&v)?,
                        (2, v) => version = int(&v)?,
                        _ => {}
                    }
                }
                m.opsets.push((domain, version));
            }
            _ => {}
        }
    }
    if graphs != 1 {
        return Err(format!("{graphs} graphs in the model, expected 1"));
    }
    Ok(m)
}

fn parse_graph(buf: &[u8]) -> Result<GraphSummary, String> {
    let mut g = GraphSummary::default();
    for f in Fields::new(buf) {
        let (n, v) = f?;
        match n {
            1 => g.nodes.push(parse_node(bytes(&v)?)?),
            2 => g.name = string(&v)?,
            5 => g.initializers.push(parse_tensor(bytes(&v)?)?),
            11 => g.inputs.push(parse_value_info(bytes(&v)?)?),
            12 => g.outputs.push(parse_value_info(bytes(&v)?)?),
            _ => {}
        }
    }
    Ok(g)
}

fn parse_node(buf: &[u8]) -> Result<NodeSummary, String> {
    let mut node = NodeSummary::default();
    for f in Fields::new(buf) {
        let (n, v) = f?;
        match n {
            1 => node.inputs.push(string(&v)?),
            2 => node.outputs.push(string(&v)?),
            4 => node.op_type = string(&v)?,
            7 => node.domain = string(&v)?,
            _ => {}
        }
    }
    if node.op_type.is_empty() {
        return Err("node without op_type".into());
    }
    Ok(node)
}

fn parse_value_info(buf: &[u8]) -> Result<ValueSummary, String> {
    let mut vi = ValueSummary::default();
    for f in Fields::new(buf) {
        let (n, v) = f?;
        match n {
            1 => vi.name = string(&v)?,
            // TypeProto.tensor_type (1) -> elem_type (1), shape (2) -> dim (1) -> value (1) | param (2)
            2 => {
                for f in Fields::new(bytes(&v)?) {
                    let (n, v) = f?;
                    if n != 1 {
                        continue;
                    }
                    for f in Fields::new(bytes(&v)?) {
                        match f? {
                            (1, v) => vi.elem_type = int(&v)?,
                            (2, v) => {
                                for f in Fields::new(bytes(&v)?) {
                                    let (n, v) = f?;
                                    if n != 1 {
                                        continue;
                                    }
                                    let mut dim = None;
                                    for f in Fields::new(bytes(&v)?) {
                                        if let (1, v) = f? {
                                            dim = Some(int(&v)?);
                                        }
                                    }
                                    vi.dims.push(dim);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(vi)
}

fn parse_tensor(buf: &[u8]) -> Result<TensorSummary, String> {
    let mut t = TensorSummary::default();
    for f in Fields::new(buf) {
        let (n, v) = f?;
        match n {
            1 => push_ints(&v, &mut t.dims)?,
            2 => t.data_type = int(&v)?,
            4 => match v {
                Value::Bytes(b) => t.data_bytes += b.len(),
                Value::Fixed32 => t.data_bytes += 4,
                _ => return Err("float_data of the wrong wire type".into()),
            },
            8 => t.name = string(&v)?,
            9 => t.data_bytes += bytes(&v)?.len(),
            _ => {}
        }
    }
    Ok(t)
}
