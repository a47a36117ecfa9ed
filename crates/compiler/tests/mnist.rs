//! The shipped HE-friendly models, imported from ONNX, compiled and run encrypted at 128-bit
//! security (N = 2^13): the plan reproduces the imported network in cleartext, and the encrypted
//! argmax equals the cleartext argmax.

use std::sync::atomic::AtomicBool;

use cipherinfer_ckks::{Decryptor, Encoder, Evaluator, KeyGenerator, Preset};
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
    let mut dec = Decryptor::new(sk).expect("dec");
    let mut agree = 0;
    let mut worst: f64 = 0.0;
    let mut largest: f64 = 0.0;
    for ((x, _), want) in inputs.iter().zip(&reference).take(encrypted_images) {
        let cts = spec.encrypt_input(&encoder, &mut dec, x).expect("encrypt");
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
    let (_, model) = compile_model_auto(&ir, &[]).expect("compile");
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
