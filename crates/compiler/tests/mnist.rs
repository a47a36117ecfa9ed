//! The shipped HE-friendly models, imported from ONNX, compiled and run encrypted at 128-bit
//! security (N = 2^13): the plan reproduces the imported network in cleartext, and the encrypted
//! argmax equals the cleartext argmax.

use std::sync::atomic::AtomicBool;

use cipherinfer_ckks::{
    Encoder, Evaluator, KeyGenerator, Preset, SymmetricEncryptor, secret_key_pair,
};
use cipherinfer_compiler::compile_model;
use cipherinfer_model::{Manifest, onnx, plain};

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
}

fn run(name: &str, encrypted_images: usize) {
    let manifest = Manifest::shipped().expect("manifest");
    let entry = manifest.model(name).expect("entry").clone();
    let bytes = manifest.read_model(name).expect("model").bytes;
    let ir = onnx::import(&bytes).expect("import");
    let samples = manifest.load_samples(&entry.dataset).expect("samples");
    let inputs: Vec<(Vec<f64>, u8)> = plain::sample_inputs(&samples, &entry.input)
        .expect("inputs")
        .into_iter()
        .map(|(t, l)| (t.into_data(), l))
        .collect();
    let calibration: Vec<Vec<f64>> = inputs.iter().take(200).map(|(x, _)| x.clone()).collect();
    let params = Preset::Pn13Depth5.build().expect("params");
    let (net, model) = compile_model(&ir, params.clone(), &calibration).expect("compile");
    let plan = model.plan();
    assert_eq!(plan.depth(), 5);

    // The compiled plan computes the imported network (cleartext, on 300 images).
    let mut reference = Vec::new();
    for (x, _) in inputs.iter().take(300) {
        let tensor = plain::Tensor::new(ir.input_shape(), x.clone()).expect("tensor");
        let want = plain::run(&ir, &tensor).expect("reference").into_data();
        let lowered = net.forward(x).expect("forward");
        let got = plan.execute_cleartext(x).expect("cleartext");
        let d1 = lowered
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let d2 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            d1 < 1e-9 && d2 < 1e-6,
            "{name}: lowering {d1:e}, plan {d2:e}"
        );
        reference.push(want);
    }

    // The client works from the serialized client view only.
    let json = serde_json::to_string(&model.client_spec()).expect("serialize spec");
    let spec: cipherinfer_compiler::ClientSpec = serde_json::from_str(&json).expect("parse spec");
    let client_params = spec.validate().expect("spec is valid");
    assert_eq!(client_params.id(), params.id());
    let mut kg = KeyGenerator::new(client_params.clone()).expect("kg");
    let sk = kg.secret_key();
    let keys = kg
        .evaluation_keys(&sk, spec.relinearization, &spec.rotation_steps, false)
        .expect("keys");
    let ev = Evaluator::new(keys);
    let encoder = Encoder::new(params.clone());
    let (mut sym, dec) = secret_key_pair(sk).expect("secret key");
    let mut agree = 0;
    let mut worst: f64 = 0.0;
    let mut largest: f64 = 0.0;
    for ((x, _), want) in inputs.iter().zip(&reference).take(encrypted_images) {
        let cts = spec.encrypt_input(&encoder, &mut sym, x).expect("encrypt");
        let (out, report) = model
            .evaluate(&ev, &cts, &AtomicBool::new(false), |_, _, _| {})
            .expect("evaluate");
        assert_eq!(report.output_level, 0);
        let got = spec.decrypt_output(&encoder, &dec, &out).expect("decrypt");
        worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(worst, f64::max);
        largest = want.iter().fold(largest, |m, v| m.max(v.abs()));
        agree += usize::from(argmax(&got) == argmax(want));
    }
    eprintln!(
        "{name} encrypted: {agree}/{encrypted_images} argmax agree, max |logit error| {worst:.3e} (largest |logit| {largest:.1}), {} rotation keys",
        plan.rotation_steps().len()
    );
    assert_eq!(
        agree, encrypted_images,
        "{name}: encrypted argmax differs from cleartext"
    );
    assert!(worst < 0.02 * largest, "{name}: logit error {worst}");
}

#[test]
fn parameters_are_chosen_automatically() {
    use cipherinfer_compiler::compile_model_auto;
    let manifest = Manifest::shipped().expect("manifest");
    let ir = onnx::import(&manifest.read_model("mnist-cnn").expect("model").bytes).expect("import");
    let (_, model) =
        compile_model_auto(&ir, &[], cipherinfer_ckks::SecurityLevel::Bits128).expect("compile");
    // The shipped CNNs land exactly on the hand-made depth-5 preset at N = 2^13.
    assert_eq!(
        model.parameters().id(),
        Preset::Pn13Depth5.build().expect("preset").id()
    );
}

#[test]
fn a_tampered_client_spec_is_refused() {
    let manifest = Manifest::shipped().expect("manifest");
    let ir = onnx::import(&manifest.read_model("mnist-cnn").expect("model").bytes).expect("import");
    let params = Preset::Pn13Depth5.build().expect("params");
    let (_, model) = compile_model(&ir, params, &[]).expect("compile");
    let good = model.client_spec();
    assert!(good.validate().is_ok());
    let mut weak = good.clone();
    weak.parameters.log_q.clear();
    weak.parameters.q.push(1_099_511_922_689); // one more prime: over the 128-bit bound
    assert!(weak.validate().is_err());
    let mut wrong_id = good.clone();
    wrong_id.parameter_id = "00".repeat(32);
    assert!(wrong_id.validate().is_err());
    let mut outside = good.clone();
    outside.input.positions[0][0].1 = 1 << 20;
    assert!(outside.validate().is_err());
    let mut bad_level = good.clone();
    bad_level.input_level = 99;
    assert!(bad_level.validate().is_err());
    let mut bad_steps = good;
    bad_steps.rotation_steps.push(1 << 40);
    assert!(bad_steps.validate().is_err());
}

#[test]
fn mnist_cnn_runs_encrypted_with_cleartext_argmax() {
    run("mnist-cnn", 24);
}

#[test]
fn fashion_cnn_runs_encrypted_with_cleartext_argmax() {
    run("fashion-cnn", 24);
}

fn mnist_inputs(count: usize) -> (cipherinfer_model::ir::Model, Vec<Vec<f64>>) {
    let manifest = Manifest::shipped().expect("manifest");
    let entry = manifest.model("mnist-cnn").expect("entry").clone();
    let ir = onnx::import(&manifest.read_model("mnist-cnn").expect("model").bytes).expect("import");
    let samples = manifest.load_samples(&entry.dataset).expect("samples");
    let inputs = plain::sample_inputs(&samples, &entry.input)
        .expect("inputs")
        .into_iter()
        .take(count)
        .map(|(t, _)| t.into_data())
        .collect();
    (ir, inputs)
}

#[test]
fn batch_mode_runs_four_images_in_one_ciphertext_set() {
    use cipherinfer_compiler::compile_model_batch;
    let (ir, inputs) = mnist_inputs(7);
    let params = Preset::Pn13Depth5.build().expect("params");
    let (_, model) = compile_model_batch(&ir, params.clone(), &inputs, 4).expect("compile");
    assert_eq!(model.batch_size(), 4);
    assert_eq!(model.plan().slots, params.slots() / 4);
    // The keys are the plan's steps times the batch size.
    let spec = model.client_spec();
    assert_eq!(spec.batch_size, 4);
    assert!(spec.rotation_steps.iter().all(|s| s % 4 == 0));
    let json = serde_json::to_string(&spec).expect("serialize");
    let spec: cipherinfer_compiler::ClientSpec = serde_json::from_str(&json).expect("parse");
    spec.validate().expect("valid");

    let mut kg = KeyGenerator::new(params.clone()).expect("kg");
    let sk = kg.secret_key();
    let keys = kg
        .evaluation_keys(&sk, spec.relinearization, &spec.rotation_steps, false)
        .expect("keys");
    let ev = Evaluator::new(keys);
    let encoder = Encoder::new(params.clone());
    let (mut sym, dec) = secret_key_pair(sk).expect("secret key");
    // A full batch of four, then a partial batch of three (the fourth image slot stays empty).
    for chunk in inputs.chunks(4) {
        let xs: Vec<&[f64]> = chunk.iter().map(Vec::as_slice).collect();
        let cts = spec
            .encrypt_batch(&encoder, &mut sym, &xs)
            .expect("encrypt");
        let (out, _) = model
            .evaluate(&ev, &cts, &AtomicBool::new(false), |_, _, _| {})
            .expect("evaluate");
        let got = spec.decrypt_batch(&encoder, &dec, &out).expect("decrypt");
        assert_eq!(got.len(), 4);
        for (x, got) in chunk.iter().zip(&got) {
            let want = model.plan().execute_cleartext(x).expect("cleartext");
            let largest = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert_eq!(argmax(got), argmax(&want));
            assert!(err < 0.02 * largest, "batch logit error {err}");
        }
    }
    // More images than the batch holds is an input error.
    let five: Vec<&[f64]> = std::iter::repeat_n(inputs[0].as_slice(), 5).collect();
    assert!(spec.encrypt_batch(&encoder, &mut sym, &five).is_err());
}

#[test]
fn lazily_encoded_masks_give_the_same_result() {
    use cipherinfer_compiler::HeModel;
    let (ir, inputs) = mnist_inputs(1);
    let params = Preset::Pn13Depth5.build().expect("params");
    let (_, eager) = compile_model(&ir, params.clone(), &inputs).expect("compile");
    assert!(!eager.lazy_masks());
    // Binding encodes no mask; `warm` encodes every kept one (a server calls it after loading).
    let (done, kept) = eager.cached_masks();
    assert!(kept > 0 && done == 0, "{done}/{kept} encoded before warm");
    eager.warm().expect("warm");
    assert_eq!(eager.cached_masks(), (kept, kept));
    let lazy = HeModel::with_mask_budget(eager.plan().clone(), params.clone(), 0).expect("lazy");
    assert!(lazy.lazy_masks());
    assert_eq!(lazy.cached_masks(), (0, 0), "lazy masks are never kept");
    let mut kg = KeyGenerator::new(params.clone()).expect("kg");
    let sk = kg.secret_key();
    let keys = kg
        .evaluation_keys(&sk, true, &eager.rotation_steps(), false)
        .expect("keys");
    let ev = Evaluator::new(keys);
    let encoder = Encoder::new(params.clone());
    let (mut sym, dec) = secret_key_pair(sk).expect("secret key");
    let cts = eager
        .client_spec()
        .encrypt_input(&encoder, &mut sym, &inputs[0])
        .expect("encrypt");
    let never = AtomicBool::new(false);
    let (a, _) = eager
        .evaluate(&ev, &cts, &never, |_, _, _| {})
        .expect("eager");
    let (b, _) = lazy
        .evaluate(&ev, &cts, &never, |_, _, _| {})
        .expect("lazy");
    let a = eager
        .client_spec()
        .decrypt_output(&encoder, &dec, &a)
        .expect("decrypt");
    let b = lazy
        .client_spec()
        .decrypt_output(&encoder, &dec, &b)
        .expect("decrypt");
    // Same masks, same keys, same input: the results differ only by rounding noise.
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(d < 1e-3, "eager and lazy differ by {d}");
}

#[test]
fn missing_keys_and_depth_bounds_are_refused_before_any_work() {
    use cipherinfer_compiler::CompileError;
    let (ir, inputs) = mnist_inputs(1);
    let params = Preset::Pn13Depth5.build().expect("params");
    let (_, model) = compile_model(&ir, params.clone(), &inputs).expect("compile");
    let steps = model.rotation_steps();
    // A step the other keys cannot make (a step whose power-of-two parts all have keys is
    // composed of them instead).
    let slots = params.slots();
    let dropped = steps
        .iter()
        .copied()
        .find(|&s| {
            cipherinfer_ckks::power_of_two_parts(s, slots)
                .iter()
                .any(|p| *p == s || !steps.contains(p))
        })
        .expect("a step not composable of the others");
    let partial: Vec<i64> = steps.iter().copied().filter(|&s| s != dropped).collect();
    let mut kg = KeyGenerator::new(params.clone()).expect("kg");
    let sk = kg.secret_key();
    let ev = Evaluator::new(
        kg.evaluation_keys(&sk, true, &partial, false)
            .expect("keys"),
    );
    let no_relin = Evaluator::new(kg.evaluation_keys(&sk, false, &steps, false).expect("keys"));
    let encoder = Encoder::new(params.clone());
    let mut sym = SymmetricEncryptor::new(sk).expect("secret key");
    let cts = model
        .client_spec()
        .encrypt_input(&encoder, &mut sym, &inputs[0])
        .expect("encrypt");
    let mut progressed = false;
    let err = model
        .evaluate(&ev, &cts, &AtomicBool::new(false), |_, _, _| {
            progressed = true
        })
        .expect_err("a rotation key is missing");
    assert!(
        matches!(&err, CompileError::MissingRotationKeys { steps } if steps == &vec![dropped]),
        "{err}"
    );
    assert_eq!(err.code(), "invalid_galois_key");
    assert!(!progressed, "no step may run without its keys");
    assert!(matches!(
        model.check_keys(&no_relin),
        Err(CompileError::MissingRelinearizationKey)
    ));
    let mut kg4 = KeyGenerator::new(Preset::Pn13Depth4.build().expect("params")).expect("kg");
    let sk4 = kg4.secret_key();
    let other = Evaluator::new(kg4.evaluation_keys(&sk4, true, &[], false).expect("keys"));
    assert_eq!(
        model
            .check_keys(&other)
            .expect_err("other parameters")
            .code(),
        "parameter_mismatch"
    );
    assert!(model.check_depth_bound(5).is_ok());
    let err = model.check_depth_bound(4).expect_err("bound below depth");
    assert!(matches!(
        err,
        CompileError::DepthExceeded {
            needed: 5,
            bound: 4
        }
    ));
    assert_eq!(err.code(), "depth_exceeded");
}

/// The shipped conventional network (ReLU, MaxPool) and its labelled sample images.
fn mnist_relu() -> (
    cipherinfer_model::ir::Model,
    Vec<(cipherinfer_model::plain::Tensor, u8)>,
) {
    let manifest = Manifest::shipped().expect("manifest");
    let entry = manifest.model("mnist-relu").expect("entry").clone();
    let ir =
        onnx::import(&manifest.read_model("mnist-relu").expect("model").bytes).expect("import");
    let samples = manifest.load_samples(&entry.dataset).expect("samples");
    let labelled = plain::sample_inputs(&samples, &entry.input).expect("inputs");
    (ir, labelled)
}

#[test]
fn mnist_relu_converted_runs_encrypted_at_128_bits() {
    use cipherinfer_compiler::compile_model_auto;
    use cipherinfer_model::convert::{ConvertOptions, convert};
    // Degree-4 ReLU polynomials keep the depth at 13, which fits N = 2^14 (the degree search
    // below finds 7 / 15 / 3 at the same depth).
    let (ir, labelled) = mnist_relu();
    let calibration: Vec<_> = labelled.iter().take(200).map(|(t, _)| t.clone()).collect();
    let options = ConvertOptions {
        degree: 4,
        ..ConvertOptions::default()
    };
    let converted = convert(&ir, &calibration, &options).expect("convert").model;
    let flat: Vec<Vec<f64>> = calibration.iter().map(|t| t.data().to_vec()).collect();
    let (_, model) =
        compile_model_auto(&converted, &flat, cipherinfer_ckks::SecurityLevel::Bits128)
            .expect("compile");
    let params = model.parameters().clone();
    assert_eq!(params.log_n(), 14);
    assert_eq!(model.depth(), 13);
    // The first pooling is summed by rotations before the second convolution, whose 32
    // channels then share one ciphertext four to a block (multiplexed): its masks fit the
    // default budget.
    assert!(
        model
            .plan()
            .steps
            .iter()
            .any(|s| matches!(s, cipherinfer_compiler::Step::RotateSum { .. }))
    );
    let conv2 = model
        .plan()
        .steps
        .iter()
        .filter_map(|s| match s {
            cipherinfer_compiler::Step::Linear(l) => Some(l),
            _ => None,
        })
        .nth(1)
        .expect("second linear step");
    assert_eq!((conv2.in_cts, conv2.out_cts), (2, 1));
    assert!(!model.lazy_masks(), "the masks fit the default budget");
    // Masks encoded as each step runs give the same results.
    let on_use =
        cipherinfer_compiler::HeModel::with_mask_budget(model.plan().clone(), params.clone(), 0)
            .expect("bind");
    assert!(on_use.lazy_masks());
    let mut kg = KeyGenerator::new(params.clone()).expect("kg");
    let sk = kg.secret_key();
    let keys = kg
        .evaluation_keys(&sk, true, &model.rotation_steps(), false)
        .expect("keys");
    let ev = Evaluator::new(keys);
    let encoder = Encoder::new(params);
    let (mut sym, dec) = secret_key_pair(sk).expect("secret key");
    for ((x, _), model) in labelled.iter().zip([&model, &on_use]) {
        let want = plain::run(&converted, x).expect("reference").into_data();
        let cts = model
            .client_spec()
            .encrypt_input(&encoder, &mut sym, x.data())
            .expect("encrypt");
        let (out, report) = model
            .evaluate(&ev, &cts, &AtomicBool::new(false), |_, _, _| {})
            .expect("evaluate");
        assert_eq!(report.depth_used, 13);
        let got = model
            .client_spec()
            .decrypt_output(&encoder, &dec, &out)
            .expect("decrypt");
        let largest = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert_eq!(argmax(&got), argmax(&want));
        assert!(err < 0.02 * largest, "logit error {err} of {largest}");
    }
}

#[test]
fn the_server_view_round_trips_through_serialization() {
    use cipherinfer_compiler::{HeModel, Plan};
    let (ir, inputs) = mnist_inputs(3);
    let params = Preset::Pn13Depth5.build().expect("params");
    let (_, model) = compile_model(&ir, params.clone(), &inputs).expect("compile");
    let bytes = serde_json::to_vec(model.plan()).expect("serialize");
    let plan: Plan = serde_json::from_slice(&bytes).expect("parse");
    assert_eq!(&plan, model.plan());
    let rebuilt = HeModel::new(plan, params).expect("bind");
    assert_eq!(rebuilt.client_spec(), model.client_spec());
    for x in &inputs {
        assert_eq!(
            rebuilt.plan().execute_cleartext(x).expect("cleartext"),
            model.plan().execute_cleartext(x).expect("cleartext")
        );
    }
}

#[test]
fn the_degree_search_moves_levels_to_where_the_network_is_sensitive() {
    use cipherinfer_compiler::degree::{DEFAULT_TARGET_AGREEMENT, SHIPPED_SEARCH_IMAGES};
    use cipherinfer_compiler::{ServingOptions, compile_choosing_degree};
    // mnist-relu (three ReLUs): degree 7 everywhere fits N = 2^14 (depth 13) but agrees with the
    // network as given on fewer than 99% of the search images, and degree 15 everywhere needs
    // N = 2^15. The same depth spent as 15 / 7 / 3 on the right activations reaches 99%.
    let (ir, labelled) = mnist_relu();
    let images: Vec<_> = labelled
        .iter()
        .take(SHIPPED_SEARCH_IMAGES)
        .map(|(t, _)| t.clone())
        .collect();
    let calibration = &images[..200];
    let (compiled, search) = compile_choosing_degree(
        &ir,
        calibration,
        &images,
        &ServingOptions::default(),
        DEFAULT_TARGET_AGREEMENT,
    )
    .expect("compile");
    let search = search.expect("a search");
    let chosen = search.chosen_trial().expect("chosen");
    assert!(
        chosen.top1_agreement >= DEFAULT_TARGET_AGREEMENT,
        "{search:?}"
    );
    let mut degrees = chosen.degrees.clone();
    degrees.sort_unstable();
    assert_eq!(degrees, vec![3, 7, 15], "{search:?}");
    assert_eq!(chosen.depth, Some(13));
    assert_eq!(compiled.he.parameters().log_n(), 14);
    // The conversion report shows the degrees the activations got.
    let report = compiled.conversion.expect("converted");
    let mut got: Vec<usize> = report.activations.iter().map(|a| a.degree).collect();
    got.sort_unstable();
    assert_eq!(got, vec![3, 7, 15]);
    // Uniform degree 7 missed the target before levels were moved.
    assert!(
        search
            .trials
            .iter()
            .any(|t| t.degree == 7 && t.degrees.is_empty() && t.top1_agreement < 0.99)
    );
}
