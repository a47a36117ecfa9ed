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

    let mut kg = KeyGenerator::new(params.clone()).expect("kg");
    let sk = kg.secret_key();
    let keys = kg
        .evaluation_keys(
            &sk,
            plan.needs_relinearization(),
            &plan.rotation_steps(),
            false,
        )
        .expect("keys");
    let ev = Evaluator::new(keys);
    let encoder = Encoder::new(params.clone());
    let mut dec = Decryptor::new(sk).expect("dec");
    let mut agree = 0;
    let mut worst: f64 = 0.0;
    let mut largest: f64 = 0.0;
    for ((x, _), want) in inputs.iter().zip(&reference).take(encrypted_images) {
        let cts = model.encrypt_input(&encoder, &mut dec, x).expect("encrypt");
        let (out, report) = model
            .evaluate(&ev, &cts, &AtomicBool::new(false), |_, _, _| {})
            .expect("evaluate");
        assert_eq!(report.output_level, 0);
        let got = model.decrypt_output(&encoder, &dec, &out).expect("decrypt");
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
fn mnist_cnn_runs_encrypted_with_cleartext_argmax() {
    run("mnist-cnn", 24);
}

#[test]
fn fashion_cnn_runs_encrypted_with_cleartext_argmax() {
    run("fashion-cnn", 24);
}
