//! ONNX import of the shipped models and of the hand-made fixtures, checked with the plaintext
//! executor against the manifest's accuracies and reference logits and against onnx.reference.

use std::path::PathBuf;

use cipherinfer_model::ir::{Model, Op, Shape};
use cipherinfer_model::onnx::{self, ImportOptions, OnnxError};
use cipherinfer_model::plain::{self, Tensor};
use cipherinfer_model::{IrError, Manifest};

const MODELS: [&str; 3] = ["mnist-cnn", "fashion-cnn", "mnist-relu"];

fn shipped() -> Manifest {
    Manifest::shipped().expect("shipped manifest")
}

fn import_shipped(m: &Manifest, name: &str) -> Model {
    let bytes = m.read_model(name).expect("model file").bytes;
    onnx::import(&bytes)
        .map_err(|e| format!("{name}: {e}"))
        .expect("the model imports")
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn kinds(model: &Model) -> Vec<&'static str> {
    model.nodes().iter().map(|n| n.op.kind()).collect()
}

#[test]
fn the_three_shipped_models_import_with_the_expected_layers() {
    let m = shipped();
    for name in MODELS {
        let model = import_shipped(&m, name);
        let entry = m.model(name).expect("entry");
        assert_eq!(model.input_name(), entry.input.name);
        assert_eq!(model.input_shape(), Shape::new(1, 28, 28), "{name}");
        assert_eq!(model.output_shape(), Shape::flat(10), "{name}");
        println!("{name}:\n{model}");
    }
    let cnn = import_shipped(&m, "mnist-cnn");
    assert_eq!(
        kinds(&cnn),
        [
            "Conv2d",
            "Square",
            "AvgPool2d",
            "Reshape",
            "Dense",
            "Square",
            "Dense"
        ]
    );
    assert_eq!(cnn.output(), "/fc2/Gemm");
    assert_eq!(
        cnn.shapes(),
        [
            Shape::new(8, 24, 24),
            Shape::new(8, 24, 24),
            Shape::new(8, 12, 12),
            Shape::flat(1152),
            Shape::flat(64),
            Shape::flat(64),
            Shape::flat(10),
        ]
    );
    let relu = import_shipped(&m, "mnist-relu");
    assert_eq!(
        kinds(&relu),
        [
            "Conv2d",
            "Relu",
            "MaxPool2d",
            "Conv2d",
            "Relu",
            "MaxPool2d",
            "Reshape",
            "Dense",
            "Relu",
            "Dense"
        ]
    );
}

#[test]
fn multiplicative_depth_agrees_with_the_manifest() {
    let m = shipped();
    for name in ["mnist-cnn", "fashion-cnn"] {
        let model = import_shipped(&m, name);
        let he = &m.model(name).expect("entry").he;
        assert!(model.is_he_friendly());
        assert_eq!(
            Some(model.multiplicative_depth().expect("depth")),
            he.multiplicative_depth
        );
        assert_eq!(
            Some(model.multiplicative_depth_merged().expect("depth")),
            he.multiplicative_depth_folded
        );
        let profile = model.depth_profile(false).expect("profile");
        let costs: Vec<u32> = profile.iter().map(|d| d.cost).collect();
        assert_eq!(costs, [1, 1, 1, 0, 1, 1, 1], "{name}");
    }
    let relu = import_shipped(&m, "mnist-relu");
    assert!(!relu.is_he_friendly());
    assert!(matches!(
        relu.multiplicative_depth(),
        Err(IrError::NotHeFriendly { ref node, op: "Relu" }) if node == "/act1/Relu"
    ));
}

#[test]
fn plaintext_accuracy_on_the_samples_matches_the_manifest() {
    let m = shipped();
    for name in MODELS {
        let entry = m.model(name).expect("entry");
        let model = import_shipped(&m, name);
        let set = m.load_samples(&entry.dataset).expect("samples");
        let samples = plain::sample_inputs(&set, &entry.input).expect("inputs");
        assert_eq!(samples.len(), 1000);
        let acc = plain::accuracy(&model, &samples).expect("runs");
        println!(
            "{name}: plaintext accuracy {:.1}% on {} samples (manifest {:.1}%)",
            100.0 * acc,
            samples.len(),
            100.0 * entry.accuracy.samples
        );
        assert!(
            (acc - entry.accuracy.samples).abs() < 0.0005,
            "{name}: {acc} vs manifest {}",
            entry.accuracy.samples
        );
    }
}

#[test]
fn plaintext_logits_match_the_manifest_reference_logits() {
    let m = shipped();
    for name in MODELS {
        let entry = m.model(name).expect("entry");
        let model = import_shipped(&m, name);
        let set = m.load_samples(&entry.dataset).expect("samples");
        let samples = plain::sample_inputs(&set, &entry.input).expect("inputs");
        let reference = &entry.reference_logits;
        assert_eq!(reference.logits.len(), reference.first_samples);
        let (mut max_abs, mut max_rel) = (0.0f64, 0.0f64);
        for ((x, _), want) in samples.iter().zip(&reference.logits) {
            let got = plain::run(&model, x).expect("runs");
            assert_eq!(got.data().len(), want.len());
            for (&g, &w) in got.data().iter().zip(want) {
                let d = (g - f64::from(w)).abs();
                max_abs = max_abs.max(d);
                max_rel = max_rel.max(d / f64::from(w).abs().max(1.0));
            }
        }
        println!(
            "{name}: {} reference images, largest |logit difference| {max_abs:.2e} (relative {max_rel:.2e})",
            reference.first_samples
        );
        assert!(max_rel < 1e-4, "{name}: {max_abs} {max_rel}");
    }
}

#[test]
fn trace_exposes_every_node_output() {
    let m = shipped();
    let model = import_shipped(&m, "mnist-cnn");
    let entry = m.model("mnist-cnn").expect("entry");
    let set = m.load_samples(&entry.dataset).expect("samples");
    let (x, _) = plain::sample_inputs(&set, &entry.input)
        .expect("inputs")
        .swap_remove(0);
    let t = plain::trace(&model, &x).expect("runs");
    assert_eq!(t.iter().count(), model.nodes().len());
    for ((name, value), (node, shape)) in t.iter().zip(model.iter()) {
        assert_eq!(name, node.name);
        assert_eq!(value.shape(), shape);
    }
    let conv = t.get("/conv1/Conv").expect("conv output");
    let square = t.get("/act1/Mul").expect("square output");
    for (c, s) in conv.data().iter().zip(square.data()) {
        assert_eq!(c * c, *s);
    }
    assert_eq!(t.output(), Some(&plain::run(&model, &x).expect("runs")));
    let wrong = Tensor::zeros(Shape::new(1, 28, 27));
    assert!(matches!(
        plain::run(&model, &wrong),
        Err(IrError::InputShape { .. })
    ));
}

#[test]
fn the_ir_survives_a_json_round_trip() {
    let m = shipped();
    for name in MODELS {
        let model = import_shipped(&m, name);
        let json = serde_json::to_string(&model).expect("serializes");
        let back: Model = serde_json::from_str(&json).expect("deserializes");
        // Exact: weights must reach the compiled artifact's reader bit for bit.
        assert!(
            back == model,
            "{name}: the model changed in a JSON round trip"
        );
    }
}

fn ops_reference() -> (Vec<f64>, Vec<f64>) {
    let text = std::fs::read_to_string(data("ops.json")).expect("ops.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let list = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect()
    };
    (list("output"), list("bn_r"))
}

fn ops_input() -> Tensor {
    let data = (0..72)
        .map(|i| f64::from((0.37f32 * i as f32 + 0.1).sin()))
        .collect();
    Tensor::new(Shape::new(2, 6, 6), data).expect("tensor")
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn every_supported_operator_matches_the_onnx_reference() {
    let bytes = std::fs::read(data("ops.onnx")).expect("fixture");
    let unfolded = onnx::import_with(
        &bytes,
        &ImportOptions {
            fold_batchnorm: false,
            ..Default::default()
        },
    )
    .expect("imports");
    let folded = onnx::import(&bytes).expect("imports");
    println!("unfolded:\n{unfolded}\nfolded:\n{folded}");
    assert_eq!(
        kinds(&unfolded),
        [
            "Conv2d",
            "BatchNorm",
            "Relu",
            "MaxPool2d",
            "Conv2d",
            "Square",
            "Conv2d",
            "Add",
            "BatchNorm",
            "AvgPool2d",
            "Square",
            "AvgPool2d",
            "Dense",
            "BatchNorm",
            "Dense"
        ]
    );
    // bn_a went into conv_a, bn_d into gemm; bn_r (after an Add, before a pool) became a
    // depthwise 1x1 convolution.
    assert_eq!(
        kinds(&folded),
        [
            "Conv2d",
            "Relu",
            "MaxPool2d",
            "Conv2d",
            "Square",
            "Conv2d",
            "Add",
            "Conv2d",
            "AvgPool2d",
            "Square",
            "AvgPool2d",
            "Dense",
            "Dense"
        ]
    );
    let bn_r = &folded.node("bn_r").expect("bn_r").op;
    assert!(
        matches!(bn_r, Op::Conv2d(c) if c.groups == 4 && c.kernel == [1, 1]),
        "bn_r became {bn_r:?}"
    );
    // The bias Add after conv_b and after the MatMul were folded into those layers; the Reshape
    // of the 4x1x1 pooled value to [1, 4] and the Flatten of [1, 3] are no-ops in CHW.
    assert!(folded.node("conv_b_bias").is_none() && folded.node("mm_bias").is_none());
    let gap = folded.node("gap").expect("global pool");
    assert!(matches!(gap.op, Op::AvgPool2d(p) if p.kernel == [2, 2]));

    let (want, want_bn_r) = ops_reference();
    let x = ops_input();
    for model in [&unfolded, &folded] {
        let got = plain::run(model, &x).expect("runs");
        assert_close(got.data(), &want, 1e-5, "output");
        let t = plain::trace(model, &x).expect("runs");
        assert_close(
            t.get("bn_r").expect("bn_r").data(),
            &want_bn_r,
            1e-5,
            "bn_r",
        );
    }
    // Relu and MaxPool are still there: no CKKS depth until conversion.
    assert!(folded.multiplicative_depth().is_err());
}

#[test]
fn an_unsupported_operator_is_named_with_its_node() {
    let bytes = std::fs::read(data("unsupported.onnx")).expect("fixture");
    let err = onnx::import(&bytes).expect_err("HardSwish is not supported");
    assert_eq!(
        err,
        OnnxError::UnsupportedOperator {
            op_type: "HardSwish".into(),
            domain: String::new(),
            node: "head/hardswish".into(),
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("\"HardSwish\"") && msg.contains("\"head/hardswish\""),
        "{msg}"
    );

    // The same on a shipped model whose first Relu is turned into a Selu (op_type bytes edited).
    let mut relu = shipped().read_model("mnist-relu").expect("model").bytes;
    let pattern = b"\x22\x04Relu";
    let at = relu
        .windows(pattern.len())
        .position(|w| w == pattern)
        .expect("an op_type Relu field");
    relu[at + 2] = b'S';
    relu[at + 3] = b'e';
    let err = onnx::import(&relu).expect_err("Selu is not supported");
    assert!(
        matches!(&err, OnnxError::UnsupportedOperator { op_type, node, .. } if op_type == "Selu" && node == "/act1/Relu"),
        "{err:?}"
    );
}

#[test]
fn unsupported_uses_of_supported_operators_are_explained() {
    // Small graphs built as decoded messages: x of shape [1, 4], one node, output y.
    use cipherinfer_model::onnx::{
        AttributeValue, OnnxAttribute, OnnxGraph, OnnxModel, OnnxNode, OnnxTensor, OnnxValueInfo,
        TensorData,
    };
    let input = OnnxValueInfo {
        name: "x".into(),
        elem_type: 1,
        dims: vec![Some(1), Some(4)],
    };
    let output = OnnxValueInfo {
        name: "y".into(),
        elem_type: 1,
        dims: vec![Some(1), Some(4)],
    };
    let node = |op: &str, inputs: &[&str]| OnnxNode {
        name: format!("my_{op}"),
        op_type: op.into(),
        inputs: inputs.iter().map(|s| (*s).into()).collect(),
        outputs: vec!["y".into()],
        ..Default::default()
    };
    let three = OnnxTensor {
        name: "three".into(),
        dims: vec![],
        data_type: 1,
        data: TensorData::Float(vec![3.0]),
    };
    let model = |n: OnnxNode| OnnxModel {
        ir_version: 8,
        opsets: vec![(String::new(), 17)],
        graph: OnnxGraph {
            nodes: vec![n],
            initializers: vec![three.clone()],
            inputs: vec![input.clone()],
            outputs: vec![output.clone()],
            ..Default::default()
        },
        ..Default::default()
    };
    let err = onnx::translate(&model(node("Pow", &["x", "three"]))).expect_err("x^3");
    assert!(
        matches!(&err, OnnxError::Unsupported { node, op_type, .. } if node == "my_Pow" && op_type == "Pow"),
        "{err}"
    );
    let err = onnx::translate(&model(node("Mul", &["x", "three"]))).expect_err("x*3");
    assert!(err.to_string().contains("Mul(x, x)"), "{err}");
    let mut ceil = node("MaxPool", &["x"]);
    ceil.attributes.push(OnnxAttribute {
        name: "kernel_shape".into(),
        value: AttributeValue::Ints(vec![2, 2]),
    });
    let err = onnx::translate(&model(ceil)).expect_err("MaxPool on [1, N]");
    assert!(err.to_string().contains("[1, C, H, W]"), "{err}");
    let mut custom = node("Relu", &["x"]);
    custom.domain = "com.example".into();
    assert!(matches!(
        onnx::translate(&model(custom)),
        Err(OnnxError::UnsupportedOperator { ref domain, .. }) if domain == "com.example"
    ));
    let mut old = model(node("Relu", &["x"]));
    old.opsets = vec![(String::new(), 5)];
    assert!(matches!(
        onnx::translate(&old),
        Err(OnnxError::Invalid { .. })
    ));
    assert!(onnx::translate(&model(node("Relu", &["x"]))).is_ok());
}
