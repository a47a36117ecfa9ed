//! Model packages: a good package loads with its calibration and test images preprocessed as a
//! client would; every kind of bad package gets its machine-readable code; the card's JSON
//! Schema in `docs/` is the one the code derives.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use cipherinfer_model::package::{CARD_FILE, ONNX_FILE};
use cipherinfer_model::{Manifest, ModelCard, ModelPackage, PackageError};
use serde_json::{Value, json};

/// A directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cipherinfer-package-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn card() -> Value {
    json!({
        "format_version": 1,
        "name": "my-digits",
        "description": "a digit classifier brought by its owner",
        "labels": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
        "input": {"channels": 1, "height": 28, "width": 28, "mean": [0.1307], "std": [0.3081]}
    })
}

/// A package of the shipped `model` with the shipped MNIST sample PNGs as calibration images
/// and as labelled test images.
fn package(model: &str) -> Scratch {
    let s = Scratch::new();
    let manifest = Manifest::shipped().unwrap();
    fs::write(
        s.0.join(ONNX_FILE),
        manifest.read_model(model).unwrap().bytes,
    )
    .unwrap();
    fs::write(
        s.0.join(CARD_FILE),
        serde_json::to_vec_pretty(&card()).unwrap(),
    )
    .unwrap();
    let (cal, test) = (s.0.join("calibration"), s.0.join("test"));
    fs::create_dir_all(&cal).unwrap();
    fs::create_dir_all(&test).unwrap();
    let mut labels = String::from("# file label\n");
    for (i, img) in manifest.dataset("mnist").unwrap().images.iter().enumerate() {
        let name = Path::new(&img.file).file_name().unwrap().to_str().unwrap();
        fs::copy(manifest.path_of(&img.file), cal.join(name)).unwrap();
        fs::copy(manifest.path_of(&img.file), test.join(name)).unwrap();
        // Labels by index and by name both work.
        if i % 2 == 0 {
            labels.push_str(&format!("{name} {}\n", img.label));
        } else {
            let names = card()["labels"].clone();
            labels.push_str(&format!(
                "{name} {}\n",
                names[img.label as usize].as_str().unwrap()
            ));
        }
    }
    fs::write(test.join("labels.txt"), labels).unwrap();
    s
}

/// A change to the good card.
type CardEdit = Box<dyn FnOnce(&mut Value)>;

fn edit_card(dir: &Path, f: impl FnOnce(&mut Value)) {
    let mut c = card();
    f(&mut c);
    fs::write(dir.join(CARD_FILE), serde_json::to_vec(&c).unwrap()).unwrap();
}

fn code(r: Result<ModelPackage, PackageError>) -> &'static str {
    match r {
        Ok(_) => panic!("bad package accepted"),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e.code()
        }
    }
}

#[test]
fn a_package_loads_with_its_images_preprocessed_like_the_shipped_samples() {
    let p = package("mnist-cnn");
    let pkg = ModelPackage::load(&p.0).unwrap();
    assert_eq!(pkg.card.name, "my-digits");
    assert_eq!(pkg.calibration.len(), 10);
    assert_eq!(pkg.test.len(), 10);
    assert!(pkg.model.is_he_friendly());
    // The package's preprocessing equals the shipped model's on the same image.
    let manifest = Manifest::shipped().unwrap();
    let entry = manifest.model("mnist-cnn").unwrap();
    let samples = manifest.load_samples("mnist").unwrap();
    let dataset = manifest.dataset("mnist").unwrap();
    for t in &pkg.test {
        let img = dataset
            .images
            .iter()
            .find(|i| i.file.ends_with(&t.file))
            .unwrap();
        assert_eq!(t.label, img.label as usize);
        let index = img.test_index - dataset.samples.first_test_index;
        let want: Vec<f64> = entry
            .input
            .normalize(samples.image(index).unwrap())
            .into_iter()
            .map(f64::from)
            .collect();
        assert_eq!(t.input.data(), want.as_slice(), "{}", t.file);
    }
    let spec = pkg.input_spec();
    assert_eq!(spec.shape, vec![1, 1, 28, 28]);
    assert_eq!(
        (spec.mean.clone(), spec.std.clone()),
        (vec![0.1307], vec![0.3081])
    );
    assert_eq!(pkg.onnx_sha256, entry.sha256);
}

#[test]
fn a_relu_network_is_a_package_like_any_other() {
    let p = package("mnist-relu");
    let pkg = ModelPackage::load(&p.0).unwrap();
    assert!(!pkg.model.is_he_friendly());
    assert_eq!(pkg.calibration_inputs().len(), 10);
}

#[test]
fn bad_cards_are_refused_with_their_codes() {
    let p = package("mnist-cnn");
    let d = &p.0;
    let cases: Vec<(&str, CardEdit)> = vec![
        ("card_invalid", Box::new(|c| c["format_version"] = json!(2))),
        ("card_invalid", Box::new(|c| c["name"] = json!("../etc"))),
        ("card_invalid", Box::new(|c| c["name"] = json!("Upper"))),
        ("card_invalid", Box::new(|c| c["labels"] = json!([]))),
        ("card_invalid", Box::new(|c| c["labels"][1] = json!("zero"))),
        (
            "card_invalid",
            Box::new(|c| c["labels"][1] = json!("a\u{7}b")),
        ),
        (
            "card_invalid",
            Box::new(|c| c["input"]["channels"] = json!(2)),
        ),
        (
            "card_invalid",
            Box::new(|c| c["input"]["height"] = json!(0)),
        ),
        (
            "card_invalid",
            Box::new(|c| c["input"]["mean"] = json!([0.1, 0.2])),
        ),
        (
            "card_invalid",
            Box::new(|c| c["input"]["std"] = json!([0.0])),
        ),
        (
            "card_invalid",
            Box::new(|c| c["calibration"] = json!("../elsewhere")),
        ),
        ("card_invalid", Box::new(|c| c["test"] = json!(".hidden"))),
        ("card_malformed", Box::new(|c| c["labels"] = json!("ten"))),
        ("card_malformed", Box::new(|c| c["surprise"] = json!(1))),
        (
            "card_malformed",
            Box::new(|c| c["input"]["height"] = json!(-3)),
        ),
        (
            "card_malformed",
            Box::new(|c| {
                c.as_object_mut()
                    .unwrap()
                    .remove("input")
                    .map(|_| ())
                    .unwrap()
            }),
        ),
        // Disagreements with the graph.
        (
            "card_input_mismatch",
            Box::new(|c| c["input"]["channels"] = json!(3)),
        ),
        (
            "card_input_mismatch",
            Box::new(|c| c["input"]["width"] = json!(32)),
        ),
        (
            "card_label_mismatch",
            Box::new(|c| {
                c["labels"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "package_not_found",
            Box::new(|c| c["calibration"] = json!("missing")),
        ),
    ];
    for (want, edit) in cases {
        edit_card(d, edit);
        let r = ModelPackage::load(d);
        let shown = format!("{r:?}");
        assert_eq!(code(r), want, "{shown}");
    }
    fs::write(d.join(CARD_FILE), b"{ not json").unwrap();
    assert_eq!(code(ModelPackage::load(d)), "card_malformed");
    fs::write(d.join(CARD_FILE), vec![b' '; (1 << 20) + 1]).unwrap();
    assert_eq!(code(ModelPackage::load(d)), "package_file_too_large");
    fs::remove_file(d.join(CARD_FILE)).unwrap();
    assert_eq!(code(ModelPackage::load(d)), "package_not_found");
    assert_eq!(
        code(ModelPackage::load(d.join("nowhere"))),
        "package_not_found"
    );
}

#[test]
fn bad_networks_images_and_labels_are_refused_with_their_codes() {
    let p = package("mnist-cnn");
    let d = &p.0;
    let onnx = fs::read(d.join(ONNX_FILE)).unwrap();
    fs::write(d.join(ONNX_FILE), &onnx[..onnx.len() / 2]).unwrap();
    assert_eq!(code(ModelPackage::load(d)), "onnx_invalid");
    fs::write(d.join(ONNX_FILE), b"not a network").unwrap();
    assert_eq!(code(ModelPackage::load(d)), "onnx_invalid");
    fs::remove_file(d.join(ONNX_FILE)).unwrap();
    assert_eq!(code(ModelPackage::load(d)), "package_not_found");
    fs::write(d.join(ONNX_FILE), &onnx).unwrap();
    ModelPackage::load(d).unwrap();

    // A corrupt calibration image.
    fs::write(
        d.join("calibration/zz-broken.png"),
        b"\x89PNG\r\n\x1a\nrubbish",
    )
    .unwrap();
    assert_eq!(code(ModelPackage::load(d)), "package_image_invalid");
    fs::remove_file(d.join("calibration/zz-broken.png")).unwrap();
    // Files that are not images are ignored.
    fs::write(d.join("calibration/README.txt"), b"notes").unwrap();
    assert_eq!(ModelPackage::load(d).unwrap().calibration.len(), 10);

    let labels = d.join("test/labels.txt");
    let good = fs::read_to_string(&labels).unwrap();
    let first = good
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    for (bad, why) in [
        (
            "../model.onnx 1\n".to_string(),
            "path outside the directory",
        ),
        (format!("{first} 10\n"), "label out of range"),
        (format!("{first} giraffe\n"), "unknown class name"),
        (format!("{first}\n"), "no label"),
        ("missing.png 1\n".to_string(), "missing image"),
    ] {
        fs::write(&labels, &bad).unwrap();
        let r = ModelPackage::load(d);
        let c = code(r);
        assert!(
            c == "test_labels_invalid" || c == "package_not_found",
            "{why}: {c}"
        );
    }
    fs::write(&labels, [0xff, 0xfe, 0x00]).unwrap();
    assert_eq!(code(ModelPackage::load(d)), "test_labels_invalid");
    fs::write(&labels, good).unwrap();
    ModelPackage::load(d).unwrap();
}

#[test]
fn the_card_schema_in_docs_is_the_one_the_code_reads() {
    let schema = schemars::schema_for!(ModelCard);
    let want = serde_json::to_string_pretty(&schema).unwrap() + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/model-card.schema.json");
    if std::env::var_os("CIPHERINFER_WRITE_SCHEMA").is_some() {
        fs::write(&path, &want).unwrap();
    }
    let got = fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        got, want,
        "docs/model-card.schema.json is stale: rerun with CIPHERINFER_WRITE_SCHEMA=1"
    );
    // The schema requires the fields a card cannot do without.
    let required = schema.as_value()["required"].clone();
    for field in ["format_version", "name", "labels", "input"] {
        assert!(
            required.as_array().unwrap().iter().any(|f| f == field),
            "{field}"
        );
    }
}
