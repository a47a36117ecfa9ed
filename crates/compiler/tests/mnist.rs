//! The shipped mnist-cnn, imported from ONNX, compiled and run encrypted at 128-bit security
//! (N = 2^13): the plan reproduces the imported network exactly in cleartext, and the encrypted
//! argmax equals the cleartext argmax.

use std::sync::atomic::AtomicBool;

use cipherinfer_ckks::{Decryptor, Encoder, Evaluator, KeyGenerator, Preset};
use cipherinfer_compiler::{CompileOptions, HeModel, Network, compile_with, output_divisor_for};
use cipherinfer_model::{Manifest, onnx, plain};

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
}

#[test]
fn mnist_cnn_runs_encrypted_with_cleartext_argmax() {
    let manifest = Manifest::shipped().expect("manifest");
    let entry = manifest.model("mnist-cnn").expect("entry").clone();
    let bytes = manifest.read_model("mnist-cnn").expect("model").bytes;
    let ir = onnx::import(&bytes).expect("import");
    let net = Network::from_ir(&ir).expect("lower");
    let samples = manifest.load_samples(&entry.dataset).expect("samples");
    let inputs = plain::sample_inputs(&samples, &entry.input).expect("inputs");

    // The adapter preserves the network: same logits as the IR's reference executor.
    let mut max_abs: f64 = 0.0;
    let mut reference = Vec::new();
    for (x, _) in inputs.iter().take(200) {
        let want = plain::run(&ir, x).expect("reference").into_data();
        let got = net.forward(x.data()).expect("forward");
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-9, "adapter changed the network: {diff}");
        max_abs = want.iter().fold(max_abs, |m, v| m.max(v.abs()));
        reference.push(want);
    }

    let params = Preset::Pn13Depth5.build().expect("params");
    let divisor = output_divisor_for(max_abs, &params);
    let plan = compile_with(
        &net,
        params.slots(),
        CompileOptions {
            output_divisor: divisor,
        },
    )
    .expect("compile");
    assert_eq!(plan.depth(), 5);
    for ((x, _), want) in inputs.iter().zip(&reference).take(200) {
        let got = plan.execute_cleartext(x.data()).expect("cleartext");
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-6, "plan differs from the network: {diff}");
    }

    let steps = plan.rotation_steps();
    let model = HeModel::new(plan.clone(), params.clone()).expect("bind");
    let mut kg = KeyGenerator::new(params.clone()).expect("kg");
    let sk = kg.secret_key();
    let keys = kg.evaluation_keys(&sk, true, &steps, false).expect("keys");
    let ev = Evaluator::new(keys);
    let encoder = Encoder::new(params.clone());
    let mut dec = Decryptor::new(sk).expect("dec");
    let n = 12;
    let mut agree = 0;
    let mut worst: f64 = 0.0;
    for ((x, _label), want) in inputs.iter().zip(&reference).take(n) {
        let cts: Vec<_> = plan
            .input
            .pack(x.data(), params.slots())
            .expect("pack")
            .iter()
            .map(|v| {
                let pt = encoder
                    .encode(v, model.input_level(), model.input_scale())
                    .expect("encode");
                dec.encrypt_symmetric(&pt).expect("encrypt")
            })
            .collect();
        let (out, report) = model
            .evaluate(&ev, &cts, &AtomicBool::new(false), |_, _, _| {})
            .expect("evaluate");
        assert_eq!(report.output_level, 0);
        let slots: Vec<Vec<f64>> = out
            .iter()
            .map(|c| {
                encoder
                    .decode(&dec.decrypt(c).expect("decrypt"))
                    .expect("decode")
            })
            .collect();
        let got = plan.finish_output(&plan.output.unpack(&slots));
        worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(worst, f64::max);
        agree += usize::from(argmax(&got) == argmax(want));
    }
    eprintln!(
        "mnist-cnn encrypted: {agree}/{n} argmax agree, max |logit error| {worst:.3e}, max |logit| {max_abs:.1}, divisor {divisor}, {} rotation keys",
        steps.len()
    );
    assert_eq!(agree, n);
    assert!(worst < 0.05 * max_abs, "logit error {worst}");
}
