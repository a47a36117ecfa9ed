//! The activations, Pad, Softmax, grouped convolutions and the constant folding of exporters'
//! shape computations, on small graphs built here as decoded ONNX messages: each imports, runs in
//! the plaintext executor as its own definition (written again here), converts to a polynomial
//! fitted to it, or is refused with an error naming the node.

#![allow(clippy::panic, reason = "tests fail loudly")]

use cipherinfer_model::convert::{self, ConvertOptions, FitMethod};
use cipherinfer_model::ir::{Activation, Model, Op, Padding, Shape};
use cipherinfer_model::onnx::{
    self, AttributeValue, Imported, OnnxAttribute, OnnxError, OnnxGraph, OnnxModel, OnnxNode,
    OnnxTensor, OnnxValueInfo, TensorData,
};
use cipherinfer_model::plain::{self, Tensor};

// ------------------------------------------------------------------------------ graph builder

/// A graph with input `x` of the given dims; the node writing `y` gives the output.
struct Graph {
    nodes: Vec<OnnxNode>,
    inits: Vec<OnnxTensor>,
    input: Vec<i64>,
    opset: i64,
}

impl Graph {
    fn new(input: &[i64]) -> Self {
        Self {
            nodes: Vec::new(),
            inits: Vec::new(),
            input: input.to_vec(),
            opset: 17,
        }
    }

    fn opset(mut self, v: i64) -> Self {
        self.opset = v;
        self
    }

    fn node(
        mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        output: &str,
        attributes: Vec<OnnxAttribute>,
    ) -> Self {
        self.nodes.push(OnnxNode {
            name: name.into(),
            op_type: op.into(),
            inputs: inputs.iter().map(|s| (*s).into()).collect(),
            outputs: vec![output.into()],
            attributes,
            ..Default::default()
        });
        self
    }

    fn init(mut self, name: &str, dims: &[i64], data: TensorData) -> Self {
        let data_type = if matches!(data, TensorData::Int(_)) {
            7
        } else {
            1
        };
        self.inits.push(OnnxTensor {
            name: name.into(),
            dims: dims.to_vec(),
            data_type,
            data,
        });
        self
    }

    fn floats(self, name: &str, dims: &[i64], v: Vec<f64>) -> Self {
        self.init(name, dims, TensorData::Float(v))
    }

    fn ints(self, name: &str, v: &[i64]) -> Self {
        self.init(name, &[v.len() as i64], TensorData::Int(v.to_vec()))
    }

    fn model(&self) -> OnnxModel {
        OnnxModel {
            ir_version: 8,
            opsets: vec![(String::new(), self.opset)],
            graph: OnnxGraph {
                nodes: self.nodes.clone(),
                initializers: self.inits.clone(),
                inputs: vec![OnnxValueInfo {
                    name: "x".into(),
                    elem_type: 1,
                    dims: self.input.iter().map(|&d| Some(d)).collect(),
                }],
                outputs: vec![OnnxValueInfo {
                    name: "y".into(),
                    elem_type: 1,
                    dims: vec![],
                }],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn import(&self) -> Result<Imported, OnnxError> {
        onnx::translate_with_notes(&self.model())
    }
}

fn attr(name: &str, value: AttributeValue) -> OnnxAttribute {
    OnnxAttribute {
        name: name.into(),
        value,
    }
}

fn int(name: &str, v: i64) -> OnnxAttribute {
    attr(name, AttributeValue::Int(v))
}

fn float(name: &str, v: f32) -> OnnxAttribute {
    attr(name, AttributeValue::Float(v))
}

fn ints(name: &str, v: &[i64]) -> OnnxAttribute {
    attr(name, AttributeValue::Ints(v.to_vec()))
}

fn string(name: &str, v: &str) -> OnnxAttribute {
    attr(name, AttributeValue::String(v.as_bytes().to_vec()))
}

fn scalar(name: &str, v: f64) -> OnnxAttribute {
    attr(
        "value",
        AttributeValue::Tensor(OnnxTensor {
            name: name.into(),
            dims: vec![],
            data_type: 1,
            data: TensorData::Float(vec![v]),
        }),
    )
}

fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// The Unsupported error's node and op_type, or a panic naming what came instead.
fn unsupported(r: Result<Imported, OnnxError>) -> (String, String, String) {
    match r {
        Err(OnnxError::Unsupported {
            node,
            op_type,
            reason,
        }) => (node, op_type, reason),
        Err(e) => panic!("expected OnnxError::Unsupported, got {e:?}"),
        Ok(i) => panic!("expected an error, imported {}", i.model),
    }
}

// ------------------------------------------------------------------------------ activations

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A test case: what it is, its graph, the function it must compute.
type Case = (&'static str, Graph, Box<dyn Fn(f64) -> f64>);

/// The activations and their definitions, each as the ONNX graph `x [1, N] -> y`.
fn activation_graphs(n: i64) -> Vec<Case> {
    let g = || Graph::new(&[1, n]);
    vec![
        (
            "Relu",
            g().node("act", "Relu", &["x"], "y", vec![]),
            Box::new(|x: f64| x.max(0.0)),
        ),
        (
            "LeakyRelu (default alpha 0.01)",
            g().node("act", "LeakyRelu", &["x"], "y", vec![]),
            Box::new(|x: f64| if x < 0.0 { 0.01f32 as f64 * x } else { x }),
        ),
        (
            "LeakyRelu alpha 0.2",
            g().node("act", "LeakyRelu", &["x"], "y", vec![float("alpha", 0.2)]),
            Box::new(|x: f64| if x < 0.0 { 0.2f32 as f64 * x } else { x }),
        ),
        (
            "Clip (ReLU6, bounds as inputs)",
            g().floats("lo", &[], vec![0.0])
                .floats("hi", &[], vec![6.0])
                .node("act", "Clip", &["x", "lo", "hi"], "y", vec![]),
            Box::new(|x: f64| x.clamp(0.0, 6.0)),
        ),
        (
            "Clip (min only, max omitted)",
            g().node("c", "Constant", &[], "lo", vec![scalar("lo", -1.5)])
                .node("act", "Clip", &["x", "lo", ""], "y", vec![]),
            Box::new(|x: f64| x.max(-1.5)),
        ),
        (
            "Clip (opset 9 attributes)",
            g().opset(9).node(
                "act",
                "Clip",
                &["x"],
                "y",
                vec![float("min", -1.0), float("max", 2.0)],
            ),
            Box::new(|x: f64| x.clamp(-1.0, 2.0)),
        ),
        (
            "Clip (opset 9, max left at the largest float)",
            g().opset(9).node(
                "act",
                "Clip",
                &["x"],
                "y",
                vec![float("min", 0.0), float("max", f32::MAX)],
            ),
            Box::new(|x: f64| x.max(0.0)),
        ),
        (
            "Sigmoid",
            g().node("act", "Sigmoid", &["x"], "y", vec![]),
            Box::new(sigmoid),
        ),
        (
            "Tanh",
            g().node("act", "Tanh", &["x"], "y", vec![]),
            Box::new(f64::tanh),
        ),
    ]
}

fn ramp(n: usize, lo: f64, hi: f64) -> Tensor {
    let data = (0..n)
        .map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64)
        .collect();
    Tensor::new(Shape::flat(n), data).expect("tensor")
}

#[test]
fn each_activation_imports_and_runs_as_its_definition() {
    let x = ramp(401, -20.0, 20.0);
    for (what, graph, f) in activation_graphs(401) {
        let model = graph.import().expect(what).model;
        let [node] = model.nodes() else {
            panic!("{what}: {model}");
        };
        assert!(matches!(node.op, Op::Activation(_)), "{what}");
        assert!(node.op.is_activation() && !node.op.is_he_friendly());
        assert_eq!(node.op.depth(), None);
        let y = plain::run(&model, &x).expect("runs");
        for (&xi, &yi) in x.data().iter().zip(y.data()) {
            assert!((yi - f(xi)).abs() < 1e-12, "{what} at {xi}: {yi}");
        }
        // The JSON form keeps the activation and its parameters.
        let json = serde_json::to_string(&model).expect("json");
        let back: Model = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back, model, "{json}");
    }
    // The kinds and parameters.
    let leaky = Graph::new(&[1, 4]).node("act", "LeakyRelu", &["x"], "y", vec![]);
    let op = leaky.import().expect("imports").model.nodes()[0].op.clone();
    assert_eq!(
        op,
        Op::Activation(Activation::LeakyRelu {
            alpha: f64::from(0.01f32)
        })
    );
    assert_eq!(op.kind(), "LeakyRelu");
    let relu6 = Graph::new(&[1, 4]).opset(9).node(
        "act",
        "Clip",
        &["x"],
        "y",
        vec![float("min", 0.0), float("max", 6.0)],
    );
    let op = relu6.import().expect("imports").model.nodes()[0].op.clone();
    assert_eq!(op.to_string(), "Clip [0, 6]");
    let json = serde_json::to_value(&op).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"kind": "activation", "function": "clip", "min": 0.0, "max": 6.0})
    );
}

/// Max |p − f| on a fine grid of the interval, computed here (not by the converter).
fn grid_error(
    p: &cipherinfer_model::ir::Polynomial,
    f: &dyn Fn(f64) -> f64,
    [a, b]: [f64; 2],
) -> f64 {
    (0..=10_000)
        .map(|k| a + (b - a) * f64::from(k) / 10_000.0)
        .map(|x| (p.evaluate(x) - f(x)).abs())
        .fold(0.0, f64::max)
}

#[test]
fn each_activation_converts_to_a_polynomial_fitted_to_it_with_its_error_reported() {
    use FitMethod::{Chebyshev, LeastSquares};
    // (activation, calibration values spread evenly over [-r, r] (no margin, so that is the
    // interval), degree, fit, bound on the max error over the interval). The bounds are the
    // measured errors (in the comments) rounded up: kinks (ReLU, LeakyReLU, Clip) converge
    // slowly, Sigmoid and Tanh fast once the interval is not far into their saturation.
    let cases: &[(&str, f64, usize, FitMethod, f64)] = &[
        ("Relu", 8.0, 8, Chebyshev, 0.28),                // 0.2679
        ("Relu", 8.0, 16, Chebyshev, 0.15),               // 0.1408
        ("Relu", 8.0, 8, LeastSquares, 0.28),             // 0.2699
        ("LeakyRelu alpha 0.2", 8.0, 8, Chebyshev, 0.22), // 0.2143
        ("Clip (ReLU6, bounds as inputs)", 8.0, 8, Chebyshev, 0.39), // 0.3785
        ("Clip (ReLU6, bounds as inputs)", 8.0, 16, Chebyshev, 0.19), // 0.1804
        ("Sigmoid", 8.0, 8, Chebyshev, 0.035),            // 0.0346
        ("Sigmoid", 8.0, 8, LeastSquares, 0.03),          // 0.0288
        ("Sigmoid", 8.0, 16, Chebyshev, 0.002),           // 0.0018
        ("Sigmoid", 4.0, 8, Chebyshev, 0.002),            // 0.0018
        ("Tanh", 8.0, 8, Chebyshev, 0.3),                 // 0.2966
        ("Tanh", 8.0, 16, Chebyshev, 0.08),               // 0.0776
        ("Tanh", 4.0, 8, Chebyshev, 0.07),                // 0.0692
        ("Tanh", 2.0, 8, Chebyshev, 0.004),               // 0.0037
    ];
    let graphs = activation_graphs(321);
    for &(what, r, degree, fit, bound) in cases {
        let x = ramp(321, -r, r);
        let (_, graph, f) = graphs
            .iter()
            .find(|(w, _, _)| *w == what)
            .expect("an activation graph");
        let model = graph.import().expect("imports").model;
        let options = ConvertOptions {
            degree,
            fit,
            margin: 0.0,
            ..Default::default()
        };
        let c = convert::convert(&model, std::slice::from_ref(&x), &options).expect("converts");
        let [a] = c.report.activations.as_slice() else {
            panic!("{:?}", c.report.activations);
        };
        let Op::Activation(act) = model.nodes()[0].op else {
            panic!("not an activation");
        };
        assert_eq!(a.original, act.name(), "{what}");
        assert_eq!(a.activation, Some(act), "{what}");
        assert_eq!(a.interval, Some([-r, r]), "{what}");
        assert_eq!(a.degree, degree, "{what}");
        let Op::Polynomial(p) = &c.model.nodes()[0].op else {
            panic!("{what}: not replaced by a polynomial");
        };
        assert_eq!(p.interval, Some([-r, r]));
        let reported = a.max_error.expect("reported");
        let measured = grid_error(p, f.as_ref(), [-r, r]);
        println!(
            "{what} degree {degree} {fit:?} on [-{r}, {r}]: max error {reported:.4} (fine grid \
             {measured:.4}), rms {:.4}",
            a.rms_error.expect("rms")
        );
        // The report measures against the true function: a fine grid agrees with it.
        assert!(
            (reported - measured).abs() < 0.01 * measured.max(1e-3),
            "{what}"
        );
        assert!(
            reported < bound,
            "{what} degree {degree} {fit:?} on [-{r}, {r}]: {reported}"
        );
        assert!(
            c.report.to_string().contains(&act.to_string()),
            "{}",
            c.report
        );
    }
}

// ------------------------------------------------------------------------------ convolutions

/// Direct convolution of a CHW input, zero padding `[top, left, bottom, right]` made explicit.
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &Tensor,
    w: &[f64],
    b: &[f64],
    out_c: usize,
    k: usize,
    groups: usize,
    stride: usize,
    [pt, pl, pb, pr]: [usize; 4],
) -> Vec<f64> {
    let s = x.shape();
    let (h, wd) = (s.height + pt + pb, s.width + pl + pr);
    let padded = |c: usize, y: usize, xx: usize| -> f64 {
        if y < pt || xx < pl || y - pt >= s.height || xx - pl >= s.width {
            0.0
        } else {
            x.at(c, y - pt, xx - pl)
        }
    };
    let (ipg, opg) = (s.channels / groups, out_c / groups);
    let (oh, ow) = ((h - k) / stride + 1, (wd - k) / stride + 1);
    let mut out = Vec::new();
    for (o, &bias) in b.iter().enumerate().take(out_c) {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = bias;
                for i in 0..ipg {
                    let c = (o / opg) * ipg + i;
                    for ky in 0..k {
                        for kx in 0..k {
                            let wi = ((o * ipg + i) * k + ky) * k + kx;
                            acc += w[wi] * padded(c, oy * stride + ky, ox * stride + kx);
                        }
                    }
                }
                out.push(acc);
            }
        }
    }
    out
}

fn close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-12, "[{i}]: {g} vs {w}");
    }
}

#[test]
fn grouped_and_depthwise_convolutions_import_and_run() {
    let x = Tensor::new(Shape::new(4, 6, 6), values(144, 1)).expect("input");
    for (groups, out_c, stride) in [(1, 6, 1), (2, 6, 1), (4, 4, 2), (4, 8, 1)] {
        let ipg = 4 / groups;
        let w = values(out_c * ipg * 9, 2);
        let b = values(out_c, 3);
        let g = Graph::new(&[1, 4, 6, 6])
            .floats("w", &[out_c as i64, ipg as i64, 3, 3], w.clone())
            .floats("b", &[out_c as i64], b.clone())
            .node(
                "conv",
                "Conv",
                &["x", "w", "b"],
                "y",
                vec![
                    int("group", groups as i64),
                    ints("pads", &[1, 0, 0, 1]),
                    ints("strides", &[stride as i64; 2]),
                ],
            );
        let model = g.import().expect("imports").model;
        let Op::Conv2d(c) = &model.nodes()[0].op else {
            panic!("{model}");
        };
        assert_eq!(
            (c.groups, c.in_channels, c.out_channels),
            (groups, 4, out_c)
        );
        let got = plain::run(&model, &x).expect("runs");
        close(
            got.data(),
            &naive_conv(&x, &w, &b, out_c, 3, groups, stride, [1, 0, 0, 1]),
        );
    }
    // A group count that does not divide the channels is refused, naming the node.
    let g = Graph::new(&[1, 4, 6, 6])
        .floats("w", &[3, 4, 3, 3], values(108, 4))
        .node("bad_conv", "Conv", &["x", "w"], "y", vec![int("group", 3)]);
    let (node, op, _) = unsupported(g.import());
    assert_eq!((node.as_str(), op.as_str()), ("bad_conv", "Conv"));
}

// ------------------------------------------------------------------------------ Pad

fn pad_then_conv(pad: Graph, own_pads: &[i64]) -> Graph {
    pad.floats("w", &[3, 2, 3, 3], values(54, 5))
        .floats("b", &[3], values(3, 6))
        .node(
            "conv",
            "Conv",
            &["p", "w", "b"],
            "y",
            vec![ints("pads", own_pads)],
        )
}

#[test]
fn zero_pads_fold_into_the_next_convolution() {
    let x = Tensor::new(Shape::new(2, 5, 5), values(50, 7)).expect("input");
    let w = values(54, 5);
    let b = values(3, 6);
    // ONNX pads are [x1_begin, x2_begin, ..., x1_end, x2_end, ...]: here top 1, left 2,
    // bottom 2, right 0; the convolution's own pads (top, left, bottom, right) are 0, 1, 1, 0.
    let pads = [0, 0, 1, 2, 0, 0, 2, 0];
    let want_padding = Padding {
        top: 1,
        left: 3,
        bottom: 3,
        right: 0,
    };
    let graphs = [
        (
            "opset 13, pads and value as inputs",
            pad_then_conv(
                Graph::new(&[1, 2, 5, 5])
                    .opset(13)
                    .ints("pads", &pads)
                    .floats("zero", &[], vec![0.0])
                    .node("pad", "Pad", &["x", "pads", "zero"], "p", vec![]),
                &[0, 1, 1, 0],
            ),
        ),
        (
            "opset 9, attributes",
            pad_then_conv(
                Graph::new(&[1, 2, 5, 5]).opset(9).node(
                    "pad",
                    "Pad",
                    &["x"],
                    "p",
                    vec![
                        ints("pads", &pads),
                        float("value", 0.0),
                        string("mode", "constant"),
                    ],
                ),
                &[0, 1, 1, 0],
            ),
        ),
        (
            "opset 18, axes input, two Pads in a row",
            pad_then_conv(
                Graph::new(&[1, 2, 5, 5])
                    .opset(18)
                    .ints("p1", &[1, 0, 0, 0])
                    .ints("a1", &[2, 3])
                    .ints("p2", &[0, 0, 2, 2])
                    .ints("a2", &[-1, -2])
                    .node("pad1", "Pad", &["x", "p1", "", "a1"], "q", vec![])
                    .node("pad2", "Pad", &["q", "p2", "", "a2"], "p", vec![]),
                &[0, 0, 0, 0],
            ),
        ),
    ];
    for (what, g) in graphs {
        let model = g.import().expect(what).model;
        let [node] = model.nodes() else {
            panic!("{what}: {model}");
        };
        let Op::Conv2d(c) = &node.op else {
            panic!("{what}: {model}");
        };
        let want = if what.starts_with("opset 18") {
            // pad1: top 1; pad2: right 2 (axis 3 = -1), bottom 2 (axis 2 = -2).
            Padding {
                top: 1,
                left: 0,
                bottom: 2,
                right: 2,
            }
        } else {
            want_padding
        };
        assert_eq!(c.padding, want, "{what}");
        let p = want;
        let got = plain::run(&model, &x).expect("runs");
        close(
            got.data(),
            &naive_conv(&x, &w, &b, 3, 3, 1, 1, [p.top, p.left, p.bottom, p.right]),
        );
    }
}

#[test]
fn pads_that_cannot_be_folded_are_refused_naming_the_pad() {
    let base = || {
        Graph::new(&[1, 2, 5, 5])
            .opset(13)
            .ints("pads", &[0, 0, 1, 1, 0, 0, 1, 1])
    };
    let cases: Vec<(&str, Graph, &str)> = vec![
        (
            "reflect mode",
            pad_then_conv(
                base().node(
                    "my_pad",
                    "Pad",
                    &["x", "pads"],
                    "p",
                    vec![string("mode", "reflect")],
                ),
                &[0, 0, 0, 0],
            ),
            "mode \"reflect\"",
        ),
        (
            "edge mode",
            pad_then_conv(
                base().node(
                    "my_pad",
                    "Pad",
                    &["x", "pads"],
                    "p",
                    vec![string("mode", "edge")],
                ),
                &[0, 0, 0, 0],
            ),
            "mode \"edge\"",
        ),
        (
            "a non-zero value",
            pad_then_conv(
                base().floats("v", &[], vec![0.5]).node(
                    "my_pad",
                    "Pad",
                    &["x", "pads", "v"],
                    "p",
                    vec![],
                ),
                &[0, 0, 0, 0],
            ),
            "constant value 0.5",
        ),
        (
            "a channel pad",
            pad_then_conv(
                Graph::new(&[1, 2, 5, 5])
                    .ints("pads", &[0, 1, 0, 0, 0, 0, 0, 0])
                    .node("my_pad", "Pad", &["x", "pads"], "p", vec![]),
                &[0, 0, 0, 0],
            ),
            "batch or channel",
        ),
        (
            "negative pads",
            pad_then_conv(
                Graph::new(&[1, 2, 5, 5])
                    .ints("pads", &[0, 0, -1, 0, 0, 0, 0, 0])
                    .node("my_pad", "Pad", &["x", "pads"], "p", vec![]),
                &[0, 0, 0, 0],
            ),
            "negative",
        ),
        (
            "a pool after it",
            base()
                .node("my_pad", "Pad", &["x", "pads"], "p", vec![])
                .node(
                    "pool",
                    "AveragePool",
                    &["p"],
                    "y",
                    vec![ints("kernel_shape", &[2, 2])],
                ),
            "padded pooling",
        ),
        (
            "a max pool after it",
            base()
                .node("my_pad", "Pad", &["x", "pads"], "p", vec![])
                .node(
                    "pool",
                    "MaxPool",
                    &["p"],
                    "y",
                    vec![ints("kernel_shape", &[2, 2])],
                ),
            "padded pooling",
        ),
        (
            "an activation after it",
            base()
                .node("my_pad", "Pad", &["x", "pads"], "p", vec![])
                .node("relu", "Relu", &["p"], "y", vec![]),
            "right before a Conv",
        ),
        (
            "no reader: the graph output",
            base().node("my_pad", "Pad", &["x", "pads"], "y", vec![]),
            "graph output",
        ),
    ];
    for (what, g, needle) in cases {
        let (node, op, reason) = unsupported(g.import());
        println!("{what}: {reason}");
        assert_eq!((node.as_str(), op.as_str()), ("my_pad", "Pad"), "{what}");
        assert!(reason.contains(needle), "{what}: {reason}");
    }
}

// ------------------------------------------------------------------------------ Softmax

fn dense_then(g: Graph) -> Graph {
    g.floats("w", &[4, 3], values(12, 8))
        .floats("b", &[3], values(3, 9))
        .node("fc", "Gemm", &["x", "w", "b"], "logits", vec![])
}

#[test]
fn a_final_softmax_is_dropped_with_a_note() {
    let x = Tensor::new(Shape::flat(4), values(4, 10)).expect("input");
    for (op, opset, attrs) in [
        ("Softmax", 13, vec![]),
        ("Softmax", 11, vec![]),
        ("LogSoftmax", 17, vec![int("axis", 1)]),
    ] {
        let g =
            dense_then(Graph::new(&[1, 4]).opset(opset)).node("probs", op, &["logits"], "y", attrs);
        let Imported { model, notes } = g.import().expect(op);
        assert_eq!(model.output(), "fc", "{op}");
        assert_eq!(model.nodes().len(), 1);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("\"probs\"") && notes[0].contains(op),
            "{notes:?}"
        );
        let logits = plain::run(&model, &x).expect("runs");
        let soft: Vec<f64> = logits.data().iter().map(|v| v.exp()).collect();
        assert_eq!(logits.argmax(), plain::argmax(&soft));
    }
}

#[test]
fn a_softmax_that_is_not_the_last_operator_is_refused() {
    // In the middle: Softmax, then a Gemm.
    let g = Graph::new(&[1, 4])
        .node("mid_softmax", "Softmax", &["x"], "s", vec![])
        .floats("w", &[4, 3], values(12, 8))
        .node("fc", "Gemm", &["s", "w"], "y", vec![]);
    let (node, op, reason) = unsupported(g.import());
    assert_eq!((node.as_str(), op.as_str()), ("mid_softmax", "Softmax"));
    assert!(reason.contains("last operator"), "{reason}");
    // The graph output, but also read by another node.
    let g = dense_then(Graph::new(&[1, 4]))
        .node("sm", "Softmax", &["logits"], "y", vec![])
        .node("other", "Relu", &["y"], "z", vec![]);
    assert_eq!(unsupported(g.import()).0, "sm");
    // Over the batch axis.
    let g = dense_then(Graph::new(&[1, 4])).node(
        "sm",
        "Softmax",
        &["logits"],
        "y",
        vec![int("axis", 0)],
    );
    let (node, _, reason) = unsupported(g.import());
    assert_eq!(node, "sm");
    assert!(reason.contains("axis 0"), "{reason}");
}

// ------------------------------------------------------------------------------ Clip errors

#[test]
fn clip_bounds_must_be_constant_numbers() {
    // The bound is computed from the image.
    let g = Graph::new(&[1, 4])
        .node("r", "Relu", &["x"], "m", vec![])
        .node("my_clip", "Clip", &["x", "m"], "y", vec![]);
    let (node, op, reason) = unsupported(g.import());
    assert_eq!((node.as_str(), op.as_str()), ("my_clip", "Clip"));
    assert!(reason.contains("computed at run time"), "{reason}");
    // Not a single number.
    let g = Graph::new(&[1, 4]).floats("lo", &[2], vec![0.0, 1.0]).node(
        "my_clip",
        "Clip",
        &["x", "lo"],
        "y",
        vec![],
    );
    assert_eq!(unsupported(g.import()).0, "my_clip");
    // min above max.
    let g = Graph::new(&[1, 4])
        .floats("lo", &[], vec![2.0])
        .floats("hi", &[], vec![1.0])
        .node("my_clip", "Clip", &["x", "lo", "hi"], "y", vec![]);
    assert!(unsupported(g.import()).2.contains("above max"));
}

// ------------------------------------------------------------------------------ dynamo forms

#[test]
fn static_shape_computations_are_folded_and_dynamic_ones_refused() {
    let x = Tensor::new(Shape::new(2, 3, 3), values(18, 11)).expect("input");
    // x.view(x.size(0), -1) as TorchScript writes it, on a symbolic batch; then a Transpose'd
    // weight through MatMul (dynamo's Linear), and a Cast to float of a computed value.
    let g = Graph::new(&[1, 2, 3, 3])
        .node("shape", "Shape", &["x"], "s", vec![])
        .node(
            "c0",
            "Constant",
            &[],
            "zero",
            vec![attr(
                "value",
                AttributeValue::Tensor(OnnxTensor {
                    name: "zero".into(),
                    dims: vec![],
                    data_type: 7,
                    data: TensorData::Int(vec![0]),
                }),
            )],
        )
        .node(
            "gather",
            "Gather",
            &["s", "zero"],
            "n",
            vec![int("axis", 0)],
        )
        .ints("axes0", &[0])
        .node("unsq", "Unsqueeze", &["n", "axes0"], "n1", vec![])
        .ints("minus1", &[-1])
        .node(
            "cat",
            "Concat",
            &["n1", "minus1"],
            "target",
            vec![int("axis", 0)],
        )
        .node("cast", "Cast", &["target"], "target64", vec![int("to", 7)])
        .node("view", "Reshape", &["x", "target64"], "flat", vec![])
        .floats("w", &[2, 18], values(36, 12))
        .node("t", "Transpose", &["w"], "wt", vec![ints("perm", &[1, 0])])
        .node("mm", "MatMul", &["flat", "wt"], "mmo", vec![])
        .node("tofloat", "Cast", &["mmo"], "y", vec![int("to", 1)]);
    let model = g.import().expect("imports").model;
    assert_eq!(
        model
            .nodes()
            .iter()
            .map(|n| n.op.kind())
            .collect::<Vec<_>>(),
        ["Reshape", "Dense"]
    );
    let w = values(36, 12);
    let got = plain::run(&model, &x).expect("runs");
    let want: Vec<f64> = (0..2)
        .map(|o| (0..18).map(|i| w[o * 18 + i] * x.data()[i]).sum())
        .collect();
    close(got.data(), &want);

    // Gathering values of the image itself is not a static computation.
    let g = Graph::new(&[1, 4]).ints("idx", &[0]).node(
        "pick",
        "Gather",
        &["x", "idx"],
        "y",
        vec![int("axis", 1)],
    );
    let (node, op, reason) = unsupported(g.import());
    assert_eq!((node.as_str(), op.as_str()), ("pick", "Gather"));
    assert!(reason.contains("import time"), "{reason}");
}

#[test]
fn reduce_mean_over_height_and_width_is_a_global_average_pool() {
    let x = Tensor::new(Shape::new(3, 4, 4), values(48, 13)).expect("input");
    let want: Vec<f64> = x
        .data()
        .chunks(16)
        .map(|c| c.iter().sum::<f64>() / 16.0)
        .collect();
    for (opset, keepdims) in [(18, 1), (18, 0), (13, 1)] {
        let mut g = Graph::new(&[1, 3, 4, 4]).opset(opset);
        g = if opset >= 18 {
            g.ints("axes", &[-1, -2]).node(
                "mean",
                "ReduceMean",
                &["x", "axes"],
                "y",
                vec![int("keepdims", keepdims)],
            )
        } else {
            g.node(
                "mean",
                "ReduceMean",
                &["x"],
                "y",
                vec![ints("axes", &[2, 3]), int("keepdims", keepdims)],
            )
        };
        let model = g.import().expect("imports").model;
        assert!(matches!(model.nodes()[0].op, Op::AvgPool2d(p) if p.kernel == [4, 4]));
        close(plain::run(&model, &x).expect("runs").data(), &want);
    }
    let g = Graph::new(&[1, 3, 4, 4]).node(
        "chan_mean",
        "ReduceMean",
        &["x"],
        "y",
        vec![ints("axes", &[1])],
    );
    let (node, op, _) = unsupported(g.opset(13).import());
    assert_eq!((node.as_str(), op.as_str()), ("chan_mean", "ReduceMean"));
}
