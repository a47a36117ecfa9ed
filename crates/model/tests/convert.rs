//! Conversion of the shipped models to HE-friendly form, measured on the labelled samples.
#![allow(clippy::panic, reason = "tests fail loudly")]

use cipherinfer_model::convert::{self, ConvertOptions, FitMethod, PoolMode};
use cipherinfer_model::ir::{
    Activation, Conv2d, Dense, Model, ModelBuilder, Op, Padding, Pool2d, Shape,
};
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

/// Uniform values in [-1, 1] from a fixed seed (splitmix64).
fn uniform(seed: u64, n: usize) -> Vec<f64> {
    let mut z = seed;
    (0..n)
        .map(|_| {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^= x >> 31;
            (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// input → MaxPool2d(window) → flatten → dense, on `shape`.
fn pool_model(shape: Shape, pool: Pool2d) -> Model {
    with_pool_and_dense(ModelBuilder::new("x", shape).expect("builder"), "x", pool)
}

/// Adds `pool` (a MaxPool2d named "pool") on `input`, then flatten and a dense layer of 3
/// outputs, and builds the model.
fn with_pool_and_dense(mut b: ModelBuilder, input: &str, pool: Pool2d) -> Model {
    let pooled = b.add("pool", Op::MaxPool2d(pool), &[input]).expect("pool");
    b.add(
        "flat",
        Op::Reshape {
            shape: pooled.flattened(),
        },
        &["pool"],
    )
    .expect("flat");
    let n = pooled.len();
    let dense = Dense {
        in_features: n,
        out_features: 3,
        weights: uniform(9, 3 * n),
        bias: vec![0.0; 3],
    };
    b.add("fc", Op::Dense(dense), &["flat"]).expect("fc");
    b.build("fc").expect("model")
}

/// Largest and mean |a − b| between the pool node's outputs of two models.
fn pool_error(exact: &Model, approx: &Model, images: &[Tensor]) -> (f64, f64) {
    let (mut worst, mut sum, mut n) = (0.0f64, 0.0, 0usize);
    for x in images {
        let want = plain::trace(exact, x).expect("trace");
        let got = plain::trace(approx, x).expect("trace");
        let (want, got) = (
            want.get("pool").expect("pool"),
            got.get("pool").expect("pool"),
        );
        assert_eq!(want.shape(), got.shape());
        for (a, b) in want.data().iter().zip(got.data()) {
            worst = worst.max((a - b).abs());
            sum += (a - b).abs();
            n += 1;
        }
    }
    (worst, sum / n as f64)
}

#[test]
fn an_exact_max_pool_is_the_maximum_up_to_its_polynomial() {
    // A 2x2 window (two rounds) and a 3x3 window at stride 2 (nine values: four rounds, odd
    // counts carried), on inputs in [-1, 1].
    for (shape, pool, rounds) in [
        (Shape::new(2, 6, 6), Pool2d::square(2), 2),
        (
            Shape::new(2, 7, 7),
            Pool2d {
                kernel: [3, 3],
                stride: [2, 2],
            },
            4,
        ),
    ] {
        let model = pool_model(shape, pool);
        let images: Vec<Tensor> = (0..32)
            .map(|k| Tensor::new(shape, uniform(100 + k, shape.len())).expect("image"))
            .collect();
        let exact = ConvertOptions {
            max_pool: PoolMode::Max,
            pool_degree: Some(30),
            ..Default::default()
        };
        let c = convert::convert(&model, &images, &exact).expect("converts");
        assert!(c.model.is_he_friendly());
        let [p] = c.report.pools.as_slice() else {
            panic!("{:?}", c.report.pools)
        };
        assert_eq!(
            (p.mode, p.rounds.len(), p.gain),
            (PoolMode::Max, rounds, None)
        );
        for r in &p.rounds {
            // Even polynomials on symmetric intervals around the differences seen.
            assert_eq!(r.degree, 30, "{r:?}");
            assert!(r.interval[0] == -r.interval[1] && r.interval[1] > r.observed[1].abs());
            assert!(r.rms_error < 0.01 && r.max_error < 0.1, "{r:?}");
        }
        let (worst, mean) = pool_error(&model, &c.model, &images);
        // The average pool with its gain, for comparison.
        let avg = convert::convert(&model, &images, &ConvertOptions::default()).expect("avg");
        let (avg_worst, avg_mean) = pool_error(&model, &avg.model, &images);
        println!(
            "{pool:?}: exact max-pool error {worst:.4} (mean {mean:.4}); average pool {avg_worst:.4} (mean {avg_mean:.4})"
        );
        assert!(mean < 0.02 && worst < 0.2, "{mean} {worst}");
        assert!(mean * 10.0 < avg_mean, "{mean} vs {avg_mean}");
        // Higher degrees come closer: degree 6 is coarser.
        let coarse = ConvertOptions {
            pool_degree: Some(6),
            ..exact
        };
        let c6 = convert::convert(&model, &images, &coarse).expect("converts");
        let (_, mean6) = pool_error(&model, &c6.model, &images);
        assert!(mean < mean6, "{mean} vs {mean6}");
    }
}

#[test]
fn a_max_pool_after_a_monotone_activation_is_taken_first() {
    // conv → ReLU → MaxPool: maxpool(relu(x)) = relu(maxpool(x)), so the exact pool compares the
    // convolution's outputs and the ReLU runs on the pooled tensor.
    let shape = Shape::new(1, 6, 6);
    let mut b = ModelBuilder::new("x", shape).expect("builder");
    let conv = Conv2d {
        in_channels: 1,
        out_channels: 2,
        kernel: [3, 3],
        stride: [1, 1],
        padding: Padding::uniform(1),
        groups: 1,
        weights: uniform(5, 18),
        bias: vec![0.1, -0.1],
    };
    b.add("conv", Op::Conv2d(conv), &["x"]).expect("conv");
    b.add("relu", Op::Activation(Activation::Relu), &["conv"])
        .expect("relu");
    let model = with_pool_and_dense(b, "relu", Pool2d::square(2));
    let images: Vec<Tensor> = (0..32)
        .map(|k| Tensor::new(shape, uniform(200 + k, shape.len())).expect("image"))
        .collect();
    let options = ConvertOptions {
        degree: 31,
        max_pool: PoolMode::Max,
        pool_degree: Some(30),
        ..Default::default()
    };
    let c = convert::convert(&model, &images, &options).expect("converts");
    // The pool's name now carries the ReLU polynomial, which reads the pooled tensor.
    let node = c.model.node("pool").expect("pool");
    assert!(matches!(node.op, Op::Polynomial(_)), "{node:?}");
    let [a] = c.report.activations.as_slice() else {
        panic!("{:?}", c.report.activations)
    };
    assert_eq!(a.node, "pool");
    assert_eq!(c.report.pools[0].rounds.len(), 2);
    let (worst, mean) = pool_error(&model, &c.model, &images);
    println!("relu then max-pool, exact: error {worst:.4} (mean {mean:.4})");
    assert!(mean < 0.03 && worst < 0.2, "{mean} {worst}");
}

#[test]
fn a_pool_degree_out_of_range_is_refused() {
    let model = pool_model(Shape::new(1, 4, 4), Pool2d::square(2));
    let x = Tensor::new(Shape::new(1, 4, 4), uniform(1, 16)).expect("image");
    for d in [0, convert::MAX_FIT_DEGREE + 1] {
        let options = ConvertOptions {
            max_pool: PoolMode::Max,
            pool_degree: Some(d),
            ..Default::default()
        };
        assert!(matches!(
            convert::convert(&model, std::slice::from_ref(&x), &options),
            Err(ConvertError::InvalidOption(_))
        ));
    }
}
