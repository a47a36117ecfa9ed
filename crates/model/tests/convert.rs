//! Conversion of the shipped models to HE-friendly form, measured on the labelled samples.

use cipherinfer_model::convert::{self, ConvertOptions, FitMethod};
use cipherinfer_model::ir::{Model, Op};
use cipherinfer_model::onnx;
use cipherinfer_model::plain::{self, Tensor};
use cipherinfer_model::{ConvertError, Manifest};

fn load(name: &str) -> (Manifest, Model, Vec<(Tensor, u8)>) {
    let m = Manifest::shipped().expect("manifest");
    let entry = m.model(name).expect("entry").clone();
    let model = onnx::import(&m.read_model(name).expect("file").bytes).expect("imports");
    let set = m.load_samples(&entry.dataset).expect("samples");
    let samples = plain::sample_inputs(&set, &entry.input).expect("inputs");
    (m, model, samples)
}

#[test]
fn mnist_relu_converts_to_an_he_friendly_model_that_keeps_its_accuracy() {
    let (m, model, samples) = load("mnist-relu");
    let options = ConvertOptions::default();
    let conversion = convert::convert_and_evaluate(&model, &samples, &options).expect("converts");
    let (converted, report) = (&conversion.model, &conversion.report);
    println!("{report}\n{converted}");
    println!(
        "report as JSON: {}",
        serde_json::to_string(report).expect("json")
    );

    assert!(converted.is_he_friendly());
    assert_eq!(converted.nodes().len(), model.nodes().len());
    assert_eq!(report.calibration_images, 200);
    assert_eq!(report.evaluated_images, 1000);
    let before = report.accuracy_before.expect("measured");
    let after = report.accuracy_after.expect("measured");
    let manifest = m.model("mnist-relu").expect("entry").accuracy.samples;
    assert!((before - manifest).abs() < 0.0005, "{before} vs {manifest}");
    assert!(after >= 0.98, "accuracy after conversion {after}");

    // Three ReLUs became degree-8 polynomials fitted on intervals around what they saw.
    assert_eq!(report.activations.len(), 3);
    for a in &report.activations {
        assert_eq!((a.original.as_str(), a.degree, a.depth), ("Relu", 8, 4));
        let [lo, hi] = a.interval.expect("fitted");
        assert!(lo < a.observed[0] && a.observed[1] < hi, "{a:?}");
        let node = converted.node(&a.node).expect("node");
        assert!(matches!(&node.op, Op::Polynomial(p) if p.interval == a.interval));
    }
    // Two max-pools became average pools, with a warning each.
    assert_eq!(report.pools.len(), 2);
    assert_eq!(
        report
            .warnings
            .iter()
            .filter(|w| w.contains("MaxPool2d"))
            .count(),
        2
    );
    for p in &report.pools {
        assert!(p.gain.is_some(), "{p:?}");
        assert!(matches!(
            converted.node(&p.node).expect("node").op,
            Op::AvgPool2d(_)
        ));
    }
    // conv 1 + poly 4 + pool 1, twice, dense 1 + poly 4 + dense 1.
    assert_eq!(report.depth, 18);
    assert_eq!(converted.multiplicative_depth().expect("depth"), 18);
    assert!(report.depth_merged < report.depth);
}

#[test]
fn chebyshev_fits_and_other_degrees_also_convert() {
    let (_, model, samples) = load("mnist-relu");
    let samples = &samples[..300];
    for (fit, degree) in [
        (FitMethod::Chebyshev, 16),
        (FitMethod::LeastSquares, 4),
        (FitMethod::LeastSquares, 12),
    ] {
        let options = ConvertOptions {
            degree,
            fit,
            calibration_images: 100,
            ..Default::default()
        };
        let c = convert::convert_and_evaluate(&model, samples, &options).expect("converts");
        println!(
            "{fit:?} degree {degree}: accuracy {:?} -> {:?}, depth {}",
            c.report.accuracy_before, c.report.accuracy_after, c.report.depth
        );
        assert!(c.model.is_he_friendly());
        assert!(c.report.activations.iter().all(|a| a.degree == degree));
        assert!(c.report.accuracy_after.expect("measured") > 0.8);
    }
}

#[test]
fn an_he_friendly_model_is_left_as_it_is_and_its_squares_are_reported() {
    let (m, model, samples) = load("mnist-cnn");
    let c = convert::convert_and_evaluate(&model, &samples, &ConvertOptions::default())
        .expect("converts");
    assert!(c.model == model);
    assert!(c.report.warnings.is_empty() && c.report.pools.is_empty());
    assert_eq!(c.report.accuracy_before, c.report.accuracy_after);
    assert_eq!(c.report.depth, 6);
    assert_eq!(c.report.depth_merged, 5);
    // The squares' inputs on 200 calibration images stay within the bounds the training script
    // recorded on the whole test set.
    let bounds = &m.model("mnist-cnn").expect("entry").activation_input_bounds;
    assert_eq!(c.report.activations.len(), bounds.len());
    for (a, b) in c.report.activations.iter().zip(bounds) {
        assert_eq!((a.original.as_str(), a.degree, a.depth), ("Square", 2, 1));
        let max_abs = a.observed[0].abs().max(a.observed[1].abs());
        assert!(
            max_abs <= b.max_abs_input + 1e-3,
            "{}: {max_abs} > {}",
            a.node,
            b.max_abs_input
        );
        assert!(max_abs > 0.5 * b.max_abs_input, "{}: {max_abs}", a.node);
    }
}

#[test]
fn bad_options_and_missing_calibration_are_errors() {
    let (_, model, _) = load("mnist-relu");
    assert_eq!(
        convert::convert(&model, &[], &ConvertOptions::default()).map(|_| ()),
        Err(ConvertError::NoCalibrationData)
    );
    let x = Tensor::zeros(model.input_shape());
    for options in [
        ConvertOptions {
            degree: 0,
            ..Default::default()
        },
        ConvertOptions {
            degree: convert::MAX_FIT_DEGREE + 1,
            ..Default::default()
        },
        ConvertOptions {
            margin: f64::NAN,
            ..Default::default()
        },
    ] {
        assert!(matches!(
            convert::convert(&model, std::slice::from_ref(&x), &options),
            Err(ConvertError::InvalidOption(_))
        ));
    }
    // One blank image is enough to run (the intervals are then degenerate and widened).
    let c = convert::convert(&model, &[x], &ConvertOptions::default()).expect("converts");
    assert!(c.model.is_he_friendly());
    assert!(
        c.report
            .warnings
            .iter()
            .any(|w| w.contains("calibration images"))
    );
}
