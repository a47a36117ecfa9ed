//! PyTorch exports (tests/fixtures, made by make_fixtures.py): each imports, runs in the plaintext
//! executor with torch's outputs, and converts to an HE-friendly model.
//!
//! The dynamo exporter (`torch.onnx.export(..., dynamo=True)`) needs onnxscript, which was not
//! installed when the fixtures were made; its constructs are covered by the `*_dynamo_style.onnx`
//! graphs the script writes by hand (and checks against torch), and `*_dynamo.onnx` files are
//! tested too when present.

#![allow(clippy::panic, reason = "tests fail loudly")]

use std::path::PathBuf;

use cipherinfer_model::convert::{self, ConvertOptions, FitMethod};
use cipherinfer_model::ir::{Activation, Model, Op, Padding, Shape};
use cipherinfer_model::onnx::{self, ImportOptions, Imported};
use cipherinfer_model::plain::{self, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Expected {
    inputs: Vec<Tensor>,
    a_logits: Vec<Vec<f64>>,
    b_logits: Vec<Vec<f64>>,
    b_probabilities: Vec<Vec<f64>>,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(fixture("expected.json")).expect("expected.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let rows = |v: &serde_json::Value| -> Vec<Vec<f64>> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|r| {
                r.as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64().expect("number"))
                    .collect()
            })
            .collect()
    };
    let inputs = rows(&v["inputs"])
        .into_iter()
        .map(|d| Tensor::new(Shape::new(3, 12, 12), d).expect("input"))
        .collect();
    Expected {
        inputs,
        a_logits: rows(&v["cnn_a"]["logits"]),
        b_logits: rows(&v["cnn_b"]["logits"]),
        b_probabilities: rows(&v["cnn_b"]["probabilities"]),
    }
}

fn import(name: &str, fold_batchnorm: bool) -> Imported {
    let bytes = std::fs::read(fixture(name)).expect("fixture");
    let options = ImportOptions {
        fold_batchnorm,
        ..Default::default()
    };
    onnx::import_with_notes(&bytes, &options)
        .map_err(|e| format!("{name}: {e}"))
        .expect("imports")
}

fn kinds(model: &Model) -> Vec<&'static str> {
    model.nodes().iter().map(|n| n.op.kind()).collect()
}

/// Largest |got − want| / max(1, |want|) over the inputs.
fn max_rel_error(model: &Model, inputs: &[Tensor], want: &[Vec<f64>]) -> f64 {
    let mut worst = 0.0f64;
    for (x, w) in inputs.iter().zip(want) {
        let got = plain::run(model, x).expect("runs");
        assert_eq!(got.data().len(), w.len());
        for (g, w) in got.data().iter().zip(w) {
            worst = worst.max((g - w).abs() / w.abs().max(1.0));
        }
    }
    worst
}

fn cnn_a_files() -> Vec<&'static str> {
    let mut files = vec![
        "cnn_a_opset13.onnx",
        "cnn_a_opset17.onnx",
        "cnn_a_dynamo_style.onnx",
    ];
    if fixture("cnn_a_dynamo.onnx").exists() {
        files.push("cnn_a_dynamo.onnx");
    }
    files
}

fn cnn_b_files() -> Vec<&'static str> {
    let mut files = vec![
        "cnn_b_opset13.onnx",
        "cnn_b_opset17.onnx",
        "cnn_b_dynamo_style.onnx",
    ];
    if fixture("cnn_b_dynamo.onnx").exists() {
        files.push("cnn_b_dynamo.onnx");
    }
    files
}

#[test]
fn conv_bn_relu_maxpool_leaky_relu_avgpool_linear_matches_torch() {
    let e = expected();
    for name in cnn_a_files() {
        let Imported { model, notes } = import(name, true);
        println!("{name}:\n{model}");
        assert!(notes.is_empty(), "{name}: {notes:?}");
        // TorchScript folds the BatchNorms itself, the importer folds dynamo's; the Flatten (or
        // Reshape through Shape/Gather/Concat, or MatMul + Add) ends up the same.
        assert_eq!(
            kinds(&model),
            [
                "Conv2d",
                "Relu",
                "MaxPool2d",
                "Conv2d",
                "LeakyRelu",
                "AvgPool2d",
                "Reshape",
                "Dense"
            ],
            "{name}"
        );
        let leaky = model.nodes().iter().find_map(|n| match n.op {
            Op::Activation(a @ Activation::LeakyRelu { .. }) => Some(a),
            _ => None,
        });
        assert!(
            matches!(leaky, Some(Activation::LeakyRelu { alpha }) if (alpha - 0.1).abs() < 1e-7),
            "{leaky:?}"
        );
        let err = max_rel_error(&model, &e.inputs, &e.a_logits);
        println!("{name}: largest relative difference to torch {err:.2e}");
        assert!(err < 1e-4, "{name}: {err}");
    }
}

#[test]
fn dynamo_style_batchnorm_is_imported_unfolded_and_folded() {
    let e = expected();
    let unfolded = import("cnn_a_dynamo_style.onnx", false).model;
    assert_eq!(
        kinds(&unfolded)
            .iter()
            .filter(|k| **k == "BatchNorm")
            .count(),
        2
    );
    assert!(
        matches!(
            unfolded.node("node_BatchNormalization_8").map(|n| &n.op),
            Some(Op::BatchNorm(_))
        ),
        "{unfolded}"
    );
    let err = max_rel_error(&unfolded, &e.inputs, &e.a_logits);
    assert!(err < 1e-4, "{err}");
}

#[test]
fn sigmoid_tanh_relu6_pad_depthwise_softmax_matches_torch() {
    let e = expected();
    for name in cnn_b_files() {
        let Imported { model, notes } = import(name, true);
        println!("{name}:\n{model}\nnotes: {notes:?}");
        assert_eq!(
            kinds(&model),
            [
                "Conv2d",
                "Sigmoid",
                "Conv2d",
                "Clip",
                "Conv2d",
                "Tanh",
                "AvgPool2d",
                "Dense"
            ],
            "{name}"
        );
        // The Pads became the padding of the convolutions after them.
        let convs: Vec<_> = model
            .nodes()
            .iter()
            .filter_map(|n| match &n.op {
                Op::Conv2d(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(convs[0].padding, Padding::uniform(1), "{name}");
        assert_eq!(
            (convs[1].padding, convs[1].groups),
            (Padding::uniform(1), 6)
        );
        assert_eq!((convs[2].padding, convs[2].groups), (Padding::default(), 2));
        assert!(model.nodes().iter().any(|n| n.op
            == Op::Activation(Activation::Clip {
                min: Some(0.0),
                max: Some(6.0)
            })));
        // The final Softmax is dropped, with a note; the output is torch's logits.
        assert_eq!(notes.len(), 1, "{name}: {notes:?}");
        assert!(notes[0].contains("Softmax"), "{notes:?}");
        let err = max_rel_error(&model, &e.inputs, &e.b_logits);
        println!("{name}: largest relative difference to torch's logits {err:.2e}");
        assert!(err < 1e-4, "{name}: {err}");
        for (x, p) in e.inputs.iter().zip(&e.b_probabilities) {
            let got = plain::run(&model, x).expect("runs");
            assert_eq!(got.argmax(), plain::argmax(p), "{name}");
        }
    }
}

/// Deterministic pseudo-random images like the fixture's inputs (standard normal-ish values).
fn calibration_images(count: usize) -> Vec<Tensor> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..count)
        .map(|_| {
            let data = (0..3 * 12 * 12)
                .map(|_| (0..4).map(|_| uniform()).sum::<f64>() * 1.7 - 3.4)
                .collect();
            Tensor::new(Shape::new(3, 12, 12), data).expect("tensor")
        })
        .collect()
}

#[test]
fn the_torch_networks_convert_with_each_activation_fitted_to_itself() {
    let e = expected();
    let images = calibration_images(64);
    for (name, activations) in [
        ("cnn_a_opset17.onnx", vec!["Relu", "LeakyRelu"]),
        ("cnn_b_opset17.onnx", vec!["Sigmoid", "Clip", "Tanh"]),
    ] {
        let model = import(name, true).model;
        for (fit, degree) in [(FitMethod::LeastSquares, 8), (FitMethod::Chebyshev, 16)] {
            let options = ConvertOptions {
                degree,
                fit,
                ..Default::default()
            };
            let c = convert::convert(&model, &images, &options).expect("converts");
            println!("{name} {fit:?} {degree}:\n{}", c.report);
            assert!(c.model.is_he_friendly());
            let replaced: Vec<&str> = c
                .report
                .activations
                .iter()
                .map(|a| a.original.as_str())
                .collect();
            assert_eq!(replaced, activations, "{name}");
            for a in &c.report.activations {
                let act = a.activation.expect("a replaced activation");
                assert_eq!(act.name(), a.original);
                let interval = a.interval.expect("fitted");
                let Op::Polynomial(p) = &c.model.node(&a.node).expect("node").op else {
                    panic!("{} was not replaced by a polynomial", a.node);
                };
                // The reported error is the error against the function itself.
                let own = convert::max_error(p, |x| act.apply(x), interval);
                assert_eq!(a.max_error, Some(own));
                assert!(a.rms_error.expect("reported") <= own);
                // Measured: at most 0.171 of the interval's half-width at degree 8 (least
                // squares, the ReLU of cnn_a), 0.017 at degree 16 (Chebyshev, the Clip of cnn_b).
                let half_width = (interval[1] - interval[0]) / 2.0;
                let bound = if degree == 8 { 0.2 } else { 0.025 };
                assert!(own < bound * half_width, "{name} {}: {own}", a.node);
            }
            // The converted network still mostly predicts torch's classes on the fixture inputs
            // and on the calibration images.
            let mut agree = 0;
            for x in images.iter().chain(&e.inputs) {
                let before = plain::run(&model, x).expect("runs").argmax();
                let after = plain::run(&c.model, x).expect("runs").argmax();
                agree += usize::from(before == after);
            }
            let total = images.len() + e.inputs.len();
            println!("{name} {fit:?} {degree}: {agree}/{total} predictions kept");
            // Measured: 61/68 for cnn_a (its max-pool becomes an average pool), 68/68 for cnn_b.
            assert!(agree * 100 >= total * 85, "{name}: {agree}/{total}");
        }
    }
}
