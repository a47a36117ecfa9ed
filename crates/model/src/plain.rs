//! Plaintext f64 reference executor of the IR.
//!
//! It runs a [`Model`] node by node exactly as the graph says, before any packing or encryption,
//! including the transitional activations (exactly, by [`Activation::apply`]), `MaxPool2d` and an
//! unfolded `BatchNorm`: run on the imported ONNX graph it is the independent reference of the
//! original model; run on a converted model it says what conversion costs. [`trace`] keeps every
//! node's output for debugging.
//!
//! [`Activation::apply`]: crate::ir::Activation::apply

use crate::ir::{Conv2d, Dense, IrError, Model, Op, Pool2d, Result, Shape};
use crate::manifest::{InputSpec, SampleSet};

/// A CHW tensor of f64 values (batch 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Shape,
    data: Vec<f64>,
}

impl Tensor {
    /// A tensor of shape `shape` holding `data` (channel-major, then row-major).
    pub fn new(shape: Shape, data: Vec<f64>) -> Result<Self> {
        if shape.checked_len() != Some(data.len()) {
            return Err(IrError::TensorLength {
                shape,
                expected: shape.len(),
                found: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Shape) -> Self {
        Self {
            shape,
            data: vec![0.0; shape.len()],
        }
    }

    /// Its shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Its values, channel-major then row-major.
    pub fn data(&self) -> &[f64] {
        &self.data
    }

    /// Consumes the tensor and returns its values.
    pub fn into_data(self) -> Vec<f64> {
        self.data
    }

    /// Value at channel `c`, row `y`, column `x`.
    pub fn at(&self, c: usize, y: usize, x: usize) -> f64 {
        let s = self.shape;
        self.data[(c * s.height + y) * s.width + x]
    }

    /// Index of the largest value (NaN never wins), or `None` if every value is NaN.
    pub fn argmax(&self) -> Option<usize> {
        argmax(&self.data)
    }
}

/// Index of the largest value of `values` (NaN never wins), or `None` if there is none.
pub fn argmax(values: &[f64]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .fold(None, |best: Option<(usize, f64)>, (i, &v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

/// Every node's output for one input, in node order.
#[derive(Debug, Clone)]
pub struct Trace {
    names: Vec<String>,
    values: Vec<Tensor>,
    output: usize,
}

impl Trace {
    /// Output of the node of that name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(|i| self.values.get(i))
    }

    /// Output of node `i`.
    pub fn node(&self, i: usize) -> Option<&Tensor> {
        self.values.get(i)
    }

    /// Node names with their outputs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> + '_ {
        self.names.iter().map(String::as_str).zip(&self.values)
    }

    /// The model's output (`None` for a trace stopped before it).
    pub fn output(&self) -> Option<&Tensor> {
        self.values.get(self.output)
    }
}

/// Runs the model on one input and returns its output.
pub fn run(model: &Model, input: &Tensor) -> Result<Tensor> {
    let mut t = trace_until(model, input, model.output_index() + 1)?;
    let out = model.output_index();
    Ok(t.values.swap_remove(out))
}

/// Runs the model on one input and keeps every node's output.
pub fn trace(model: &Model, input: &Tensor) -> Result<Trace> {
    trace_until(model, input, model.nodes().len())
}

/// Runs the first `count` nodes only (all of them if `count` is larger).
pub fn trace_until(model: &Model, input: &Tensor, count: usize) -> Result<Trace> {
    let empty = Trace {
        names: Vec::new(),
        values: Vec::new(),
        output: 0,
    };
    resume(model, input, empty, count)
}

/// Continues `trace`, taken on the same input with a model whose first nodes are this model's
/// (a model grown by appending nodes), up to the first `count` nodes: only the nodes the trace
/// lacks are run. The part of the trace that no longer matches this model's nodes is run again.
pub fn resume(model: &Model, input: &Tensor, trace: Trace, count: usize) -> Result<Trace> {
    if input.shape != model.input_shape() {
        return Err(IrError::InputShape {
            expected: model.input_shape(),
            found: input.shape,
        });
    }
    let nodes = &model.nodes()[..count.min(model.nodes().len())];
    let Trace {
        mut names,
        mut values,
        ..
    } = trace;
    let kept = names
        .iter()
        .zip(nodes)
        .take_while(|(name, node)| **name == node.name)
        .count();
    names.truncate(kept);
    values.truncate(kept);
    for (i, node) in nodes.iter().enumerate().skip(kept) {
        let lookup = |name: &str| -> &Tensor {
            if name == model.input_name() {
                return input;
            }
            // Inputs are the model input or earlier nodes: the model was checked when built.
            let j = names.iter().position(|n| n == name).unwrap_or(0);
            &values[j]
        };
        let x = lookup(node.input());
        let shape = model.shapes()[i];
        let out = match &node.op {
            Op::Conv2d(c) => conv2d(c, x, shape),
            Op::AvgPool2d(p) => pool(p, x, shape, false),
            Op::MaxPool2d(p) => pool(p, x, shape, true),
            Op::Dense(d) => dense(d, x),
            Op::BatchNorm(b) => per_channel(x, |c, v| b.scale[c] * v + b.shift[c]),
            Op::Square => map(x, |v| v * v),
            Op::Polynomial(p) => map(x, |v| p.evaluate(v)),
            Op::Activation(a) => map(x, |v| a.apply(v)),
            Op::Reshape { shape } => Tensor {
                shape: *shape,
                data: x.data.clone(),
            },
            Op::Add => {
                let y = lookup(node.inputs.get(1).map_or("", String::as_str));
                Tensor {
                    shape: x.shape,
                    data: x.data.iter().zip(&y.data).map(|(a, b)| a + b).collect(),
                }
            }
        };
        names.push(node.name.clone());
        values.push(out);
    }
    Ok(Trace {
        names,
        values,
        output: model.output_index(),
    })
}

fn map(x: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    Tensor {
        shape: x.shape,
        data: x.data.iter().map(|&v| f(v)).collect(),
    }
}

fn per_channel(x: &Tensor, f: impl Fn(usize, f64) -> f64) -> Tensor {
    let plane = x.shape.plane().max(1);
    Tensor {
        shape: x.shape,
        data: x
            .data
            .iter()
            .enumerate()
            .map(|(i, &v)| f(i / plane, v))
            .collect(),
    }
}

fn conv2d(c: &Conv2d, x: &Tensor, out_shape: Shape) -> Tensor {
    let (ih, iw) = (x.shape.height as isize, x.shape.width as isize);
    let [kh, kw] = c.kernel;
    let [sh, sw] = c.stride;
    let (ipg, opg) = (c.in_per_group(), c.out_per_group().max(1));
    let (oh, ow) = (out_shape.height, out_shape.width);
    let mut out = Tensor::zeros(out_shape);
    for o in 0..c.out_channels {
        let group = o / opg;
        let plane = &mut out.data[o * oh * ow..(o + 1) * oh * ow];
        plane.fill(c.bias[o]);
        for i in 0..ipg {
            let ch = group * ipg + i;
            let input = &x.data[ch * x.shape.plane()..(ch + 1) * x.shape.plane()];
            for ky in 0..kh {
                for kx in 0..kw {
                    let w = c.weights[c.weight_index(o, i, ky, kx)];
                    if w == 0.0 {
                        continue;
                    }
                    for oy in 0..oh {
                        let iy = (oy * sh + ky) as isize - c.padding.top as isize;
                        if iy < 0 || iy >= ih {
                            continue;
                        }
                        let row = &input[iy as usize * iw as usize..][..iw as usize];
                        let out_row = &mut plane[oy * ow..(oy + 1) * ow];
                        for (ox, acc) in out_row.iter_mut().enumerate() {
                            let ix = (ox * sw + kx) as isize - c.padding.left as isize;
                            if ix >= 0 && ix < iw {
                                *acc += w * row[ix as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn pool(p: &Pool2d, x: &Tensor, out_shape: Shape, max: bool) -> Tensor {
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let inv = 1.0 / p.window() as f64;
    let mut out = Tensor::zeros(out_shape);
    let mut k = 0;
    for c in 0..out_shape.channels {
        for oy in 0..out_shape.height {
            for ox in 0..out_shape.width {
                let window = (0..kh)
                    .flat_map(|dy| (0..kw).map(move |dx| (oy * sh + dy, ox * sw + dx)))
                    .map(|(y, xx)| x.at(c, y, xx));
                out.data[k] = if max {
                    window.fold(f64::NEG_INFINITY, f64::max)
                } else {
                    window.sum::<f64>() * inv
                };
                k += 1;
            }
        }
    }
    out
}

fn dense(d: &Dense, x: &Tensor) -> Tensor {
    let data = (0..d.out_features)
        .map(|o| {
            d.row(o)
                .iter()
                .zip(&x.data)
                .map(|(w, v)| w * v)
                .sum::<f64>()
                + d.bias[o]
        })
        .collect();
    Tensor {
        shape: Shape::flat(d.out_features),
        data,
    }
}

/// Model inputs made from a sample set with the model's preprocessing (`InputSpec::normalize`,
/// in f32 like the training scripts), with their labels.
pub fn sample_inputs(set: &SampleSet, spec: &InputSpec) -> Result<Vec<(Tensor, u8)>> {
    let s = set.shape();
    let shape = Shape::new(s.channels as usize, s.height as usize, s.width as usize);
    set.iter()
        .map(|(pixels, label)| {
            let data = spec.normalize(pixels).into_iter().map(f64::from).collect();
            Ok((Tensor::new(shape, data)?, label))
        })
        .collect()
}

/// Predicted class (argmax of the output) of each input.
pub fn predict(model: &Model, inputs: &[Tensor]) -> Result<Vec<Option<usize>>> {
    inputs.iter().map(|x| Ok(run(model, x)?.argmax())).collect()
}

/// Fraction of labelled inputs whose argmax is the label (0 for no input).
pub fn accuracy(model: &Model, labelled: &[(Tensor, u8)]) -> Result<f64> {
    let mut correct = 0usize;
    for (x, label) in labelled {
        if run(model, x)?.argmax() == Some(usize::from(*label)) {
            correct += 1;
        }
    }
    Ok(correct as f64 / labelled.len().max(1) as f64)
}
