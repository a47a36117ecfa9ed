//! Checks of the shipped `models/` directory: manifest, model files, sample sets.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use cipherinfer_model::manifest::{MAX_MODEL_BYTES, sha256_hex};
use cipherinfer_model::{Manifest, ModelError};
use support::onnx::{self, FLOAT};

/// Shipped model files must stay small enough for the repository and for fast plaintext weights.
const MAX_SHIPPED_MODEL_BYTES: u64 = 5 << 20;

fn shipped() -> Manifest {
    Manifest::shipped().expect("models/manifest.json loads and validates")
}

/// A fresh directory under cargo's per-target temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("model-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Copies the manifest and the listed files into a temporary models directory.
fn copy_models(name: &str, files: &[&str]) -> PathBuf {
    let src = shipped();
    let dir = temp_dir(name);
    fs::copy(src.path_of("manifest.json"), dir.join("manifest.json")).expect("copy manifest");
    for f in files {
        let to = dir.join(f);
        fs::create_dir_all(to.parent().expect("has parent")).expect("mkdir");
        fs::copy(src.path_of(f), to).expect("copy file");
    }
    dir
}

fn flip_byte(path: &Path) {
    let mut bytes = fs::read(path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(path, bytes).expect("write");
}

#[test]
fn manifest_lists_the_three_models_and_two_datasets() {
    let m = shipped();
    let names: Vec<&str> = m.models.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["mnist-cnn", "fashion-cnn", "mnist-relu"]);
    assert_eq!(m.default_model().expect("default").name, "mnist-cnn");
    let datasets: Vec<&str> = m.datasets.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(datasets, ["fashion-mnist", "mnist"]);

    for (name, dataset, min_accuracy) in [
        ("mnist-cnn", "mnist", 0.99),
        ("fashion-cnn", "fashion-mnist", 0.89),
        ("mnist-relu", "mnist", 0.99),
    ] {
        let e = m.model(name).expect("listed");
        assert_eq!(e.dataset, dataset);
        assert!(
            e.accuracy.plaintext >= min_accuracy,
            "{name}: recorded accuracy {} below the target {min_accuracy}",
            e.accuracy.plaintext
        );
        assert!(
            e.accuracy.test_set.contains("10000"),
            "{name}: full test set"
        );
        assert_eq!(e.input.shape, [1, 1, 28, 28]);
        assert_eq!(e.output.shape, [1, 10]);
        assert!(!e.training.command.is_empty());
        assert!(!e.he.rotations.is_empty());
    }
    for name in ["mnist-cnn", "fashion-cnn"] {
        let he = &m.model(name).expect("listed").he;
        assert!(he.friendly, "{name} is HE-friendly");
        let depth = he.multiplicative_depth.expect("depth recorded");
        assert!(depth <= 8, "{name}: depth {depth}");
        assert_eq!(he.depth_breakdown.len(), depth as usize, "{name}");
        assert!(he.multiplicative_depth_folded.expect("folded depth") <= depth);
    }
    let relu = &m.model("mnist-relu").expect("listed").he;
    assert!(!relu.friendly && relu.multiplicative_depth.is_none());

    assert!(matches!(
        m.model("nope"),
        Err(ModelError::UnknownModel { ref known, .. }) if known.contains("mnist-cnn")
    ));
}

#[test]
fn every_model_file_exists_hashes_correctly_and_parses_as_onnx() {
    let m = shipped();
    for e in &m.models {
        let name = &e.name;
        let model = m
            .read_model(name)
            .expect("file present with the recorded sha256");
        let size = model.bytes.len() as u64;
        assert_eq!(size, e.size_bytes, "{name}");
        assert!(size < MAX_SHIPPED_MODEL_BYTES, "{name}: {size} bytes");
        assert_eq!(sha256_hex(&model.bytes), e.sha256);

        let p = onnx::parse_model(&model.bytes)
            .map_err(|err| format!("{name}: {err}"))
            .expect("a well-formed ONNX ModelProto");
        assert!(p.ir_version >= 8, "{name}: ir_version {}", p.ir_version);
        assert!(
            p.opsets.contains(&(String::new(), u64::from(e.onnx.opset))),
            "{name}: opsets {:?}",
            p.opsets
        );
        let ops: Vec<&str> = p.graph.nodes.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, e.onnx.ops, "{name}: op types");
        assert!(p.graph.nodes.iter().all(|n| n.domain.is_empty()), "{name}");

        // Inputs, outputs and initializers as the manifest describes them.
        let weights: Vec<&str> = p
            .graph
            .initializers
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        let inputs: Vec<_> = p
            .graph
            .inputs
            .iter()
            .filter(|v| !weights.contains(&v.name.as_str()))
            .collect();
        assert_eq!(inputs.len(), 1, "{name}: one data input");
        assert_eq!(inputs[0].name, e.input.name);
        assert_eq!(inputs[0].elem_type, FLOAT);
        let shape: Vec<Option<u64>> = e.input.shape.iter().map(|&d| Some(d as u64)).collect();
        assert_eq!(inputs[0].dims, shape, "{name}: input shape");
        assert_eq!(p.graph.outputs.len(), 1);
        assert_eq!(p.graph.outputs[0].name, e.output.name);
        let shape: Vec<Option<u64>> = e.output.shape.iter().map(|&d| Some(d as u64)).collect();
        assert_eq!(p.graph.outputs[0].dims, shape, "{name}: output shape");
        let mut values = 0u64;
        for t in &p.graph.initializers {
            let n: u64 = t.dims.iter().product();
            assert_eq!(t.data_type, FLOAT, "{name}: {} is float32", t.name);
            assert_eq!(
                t.data_bytes as u64,
                4 * n,
                "{name}: {} holds its data",
                t.name
            );
            values += n;
        }
        assert_eq!(values, e.parameters, "{name}: parameter count");

        // Every node reads only values defined before it, and the output is produced.
        let mut defined: Vec<&str> = p.graph.inputs.iter().map(|v| v.name.as_str()).collect();
        defined.extend(weights.iter().copied());
        for node in &p.graph.nodes {
            for i in node.inputs.iter().filter(|i| !i.is_empty()) {
                assert!(
                    defined.contains(&i.as_str()),
                    "{name}: {} reads undefined {i}",
                    node.op_type
                );
            }
            defined.extend(node.outputs.iter().map(String::as_str));
        }
        assert!(
            defined.contains(&e.output.name.as_str()),
            "{name}: output produced"
        );

        // The reference logits have one row per sample image and one value per class.
        assert_eq!(
            e.reference_logits.logits.len(),
            e.reference_logits.first_samples
        );
        assert!(
            e.reference_logits
                .logits
                .iter()
                .all(|r| r.len() == e.classes.len())
        );
    }
}

#[test]
fn a_corrupted_model_file_is_rejected_naming_the_file() {
    let dir = copy_models("corrupt", &["mnist-cnn.onnx"]);
    let m = Manifest::load(&dir).expect("manifest copy loads");
    m.read_model("mnist-cnn").expect("intact copy verifies");

    let file = dir.join("mnist-cnn.onnx");
    flip_byte(&file);
    let err = m.read_model("mnist-cnn").expect_err("corruption detected");
    assert!(
        matches!(&err, ModelError::HashMismatch { path, .. } if path == &file),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("mnist-cnn.onnx") && msg.contains("corrupted"),
        "{msg}"
    );

    // A file that is not there is reported as missing, by name.
    let err = m.read_model("fashion-cnn").expect_err("not copied");
    assert!(
        matches!(&err, ModelError::Missing { path } if path == &dir.join("fashion-cnn.onnx")),
        "{err:?}"
    );
    assert!(err.to_string().contains("fashion-cnn.onnx"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupted_sample_file_or_manifest_is_rejected() {
    let m = shipped();
    let file = m.dataset("mnist").expect("listed").samples.file.clone();
    let dir = copy_models("corrupt-samples", &[file.as_str()]);
    let copy = Manifest::load(&dir).expect("manifest copy loads");
    copy.load_samples("mnist").expect("intact copy loads");
    flip_byte(&dir.join(&file));
    let err = copy.load_samples("mnist").expect_err("corruption detected");
    assert!(matches!(err, ModelError::HashMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&file), "{err}");

    fs::write(dir.join("manifest.json"), b"{\"format_version\": 1,").expect("write");
    let err = Manifest::load(&dir).expect_err("truncated manifest");
    assert!(matches!(err, ModelError::ManifestJson { .. }), "{err:?}");
    assert!(err.to_string().contains("manifest.json"), "{err}");

    fs::remove_file(dir.join("manifest.json")).expect("remove");
    let err = Manifest::load(&dir).expect_err("no manifest");
    assert!(matches!(err, ModelError::Missing { .. }), "{err:?}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn samples_load_with_the_right_counts_and_labels() {
    let m = shipped();
    for d in &m.datasets {
        let set = m.load_samples(&d.name).expect("sample set loads");
        assert!(set.len() >= 1000, "{}: {} images", d.name, set.len());
        assert_eq!(set.len(), d.samples.count);
        assert_eq!(set.num_classes(), d.classes.len());
        assert_eq!(
            (set.shape().height, set.shape().width, set.shape().channels),
            (28, 28, 1)
        );
        assert!(
            set.labels()
                .iter()
                .all(|&l| usize::from(l) < d.classes.len())
        );
        assert!(
            d.samples.label_counts.iter().all(|&c| c > 0),
            "{}: every class",
            d.name
        );
        for (image, _) in set.iter() {
            assert_eq!(image.len(), 28 * 28);
            assert!(image.iter().any(|&p| p > 0), "{}: blank image", d.name);
        }

        // The PNGs: one per class, intact, 28x28 8-bit grey, labelled like the sample set.
        assert_eq!(d.images.len(), d.classes.len(), "{}", d.name);
        for img in &d.images {
            let png = m
                .read_verified(&img.file, &img.sha256, MAX_MODEL_BYTES)
                .expect("png present with the recorded sha256");
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{}", img.file);
            assert_eq!(&png[12..16], b"IHDR");
            let be = |i: usize| u32::from_be_bytes([png[i], png[i + 1], png[i + 2], png[i + 3]]);
            assert_eq!((be(16), be(20)), (28, 28), "{}", img.file);
            assert_eq!((png[24], png[25]), (8, 0), "{}: 8-bit greyscale", img.file);
            if img.test_index < set.len() {
                assert_eq!(set.label(img.test_index), Some(img.label), "{}", img.file);
            }
        }
    }
}
