//! The compiled plan computes the network: exactly in cleartext, and under encryption (INSECURE
//! small rings, for speed) up to CKKS noise, with exactly the rotation keys the plan reports.
#![allow(clippy::panic, reason = "tests fail loudly")]

use std::sync::atomic::AtomicBool;

use cipherinfer_ckks::{Encoder, Evaluator, KeyGenerator, ParametersLiteral, secret_key_pair};
use cipherinfer_compiler::{HeModel, Layer, Network, compile};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

fn rand_vec(rng: &mut ChaCha20Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|_| (rng.next_u64() as f64 / u64::MAX as f64 * 2.0 - 1.0) * scale)
        .collect()
}

/// conv 1->4 3x3 (+ padding variant), square, avgpool 2, flatten, dense 36->10, square, dense 10->5.
fn small_net(seed: u64, padding: usize) -> Network {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let side = 8 - 2 + 2 * padding; // conv output side
    let pooled = side / 2;
    let feats = 4 * pooled * pooled;
    Network {
        input: (1, 8, 8),
        layers: vec![
            Layer::Conv2d {
                in_c: 1,
                out_c: 4,
                kernel: (3, 3),
                stride: (1, 1),
                padding: (padding, padding, padding, padding),
                groups: 1,
                weight: rand_vec(&mut rng, 36, 0.5),
                bias: rand_vec(&mut rng, 4, 0.1),
            },
            Layer::Poly {
                coeffs: vec![0.0, 0.0, 1.0],
            },
            Layer::AvgPool2d {
                kernel: (2, 2),
                stride: (2, 2),
            },
            Layer::Flatten,
            Layer::Dense {
                in_f: feats,
                out_f: 10,
                weight: rand_vec(&mut rng, feats * 10, 0.3),
                bias: rand_vec(&mut rng, 10, 0.1),
            },
            Layer::Poly {
                coeffs: vec![0.0, 0.0, 1.0],
            },
            Layer::Dense {
                in_f: 10,
                out_f: 5,
                weight: rand_vec(&mut rng, 50, 0.5),
                bias: rand_vec(&mut rng, 5, 0.1),
            },
        ],
    }
}

fn conv(rng: &mut ChaCha20Rng, in_c: usize, out_c: usize, stride: usize) -> Layer {
    Layer::Conv2d {
        in_c,
        out_c,
        kernel: (3, 3),
        stride: (stride, stride),
        padding: (1, 1, 1, 1),
        groups: 1,
        weight: rand_vec(rng, out_c * in_c * 9, 0.5),
        bias: rand_vec(rng, out_c, 0.1),
    }
}

/// conv 1->4, square, avgpool 2, conv 4->8, square, conv 8->8 stride 2, square, dense 32->5:
/// a pooling before a convolution and strided outputs that share blocks.
fn pooled_net(seed: u64) -> Network {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let square = Layer::Poly {
        coeffs: vec![0.0, 0.0, 1.0],
    };
    Network {
        input: (1, 8, 8),
        layers: vec![
            conv(&mut rng, 1, 4, 1),
            square.clone(),
            Layer::AvgPool2d {
                kernel: (2, 2),
                stride: (2, 2),
            },
            conv(&mut rng, 4, 8, 1),
            square.clone(),
            conv(&mut rng, 8, 8, 2),
            square,
            Layer::Flatten,
            Layer::Dense {
                in_f: 32,
                out_f: 5,
                weight: rand_vec(&mut rng, 160, 0.3),
                bias: rand_vec(&mut rng, 5, 0.1),
            },
        ],
    }
}

fn image(seed: u64) -> Vec<f64> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rand_vec(&mut rng, 64, 1.0)
        .into_iter()
        .map(|x| x.abs())
        .collect()
}

fn max_err(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn cleartext_plan_equals_the_network() {
    for (slots, padding) in [(512usize, 0usize), (128, 0), (512, 1), (128, 1)] {
        let net = small_net(1, padding);
        let plan = compile(&net, slots).expect("compile");
        assert_eq!(
            plan.depth(),
            5,
            "conv, square, pool+dense fused, square, dense"
        );
        for s in 0..3 {
            let x = image(10 + s);
            let want = net.forward(&x).expect("forward");
            let got = plan.execute_cleartext(&x).expect("cleartext");
            assert_eq!(got.len(), 5);
            assert!(
                max_err(&got, &want) < 1e-9,
                "slots {slots} pad {padding}: {got:?} vs {want:?}"
            );
        }
        // Two ciphertexts when the channels do not fit one.
        assert_eq!(plan.input.num_cts, 1);
    }
}

#[test]
fn a_pooling_before_a_convolution_is_a_window_sum_and_strided_outputs_share_blocks() {
    for slots in [128usize, 512] {
        let net = pooled_net(3);
        let plan = compile(&net, slots).expect("compile");
        assert_eq!(plan.depth(), 7, "four linear steps and three squares");
        let sums: Vec<_> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                cipherinfer_compiler::Step::RotateSum { stages } => Some(stages.clone()),
                _ => None,
            })
            .collect();
        // The 2x2 window: one column and one row neighbour on the 8x8 input grid.
        assert_eq!(sums, vec![vec![vec![1], vec![8]]]);
        let linear: Vec<_> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                cipherinfer_compiler::Step::Linear(l) => Some(l),
                _ => None,
            })
            .collect();
        // The second convolution keeps its 9 taps per block pair (no taps × window offsets),
        // and writes its 8 channels four to a block in the gaps of the pooled grid.
        let blocks = slots / 64;
        let keys = linear[1].keys().len();
        assert!(keys <= 9 * blocks * 4, "{keys} diagonal indices");
        assert_eq!(linear[1].out_cts, 8usize.div_ceil(4 * blocks));
        for s in 0..3 {
            let x = image(20 + s);
            let want = net.forward(&x).expect("forward");
            let got = plan.execute_cleartext(&x).expect("cleartext");
            assert!(
                max_err(&got, &want) < 1e-9,
                "slots {slots}: {got:?} vs {want:?}"
            );
        }
    }
}

fn insecure_params(log_n: u32) -> std::sync::Arc<cipherinfer_ckks::Parameters> {
    let lit: ParametersLiteral = serde_json::from_str(&format!(
        r#"{{"log_n":{log_n},"log_q":[50,36,36,36,36,36,36,36],"log_p":[55,55],"log_scale":36,"dnum":4}}"#
    ))
    .expect("literal");
    lit.build_insecure_for_tests()
        .expect("INSECURE test parameters")
}

/// Packs an image as the plan's input and encrypts each block at the model's input level.
fn encrypt_image(
    model: &HeModel,
    encoder: &Encoder,
    sym: &mut cipherinfer_ckks::SymmetricEncryptor,
    x: &[f64],
) -> Vec<cipherinfer_ckks::Ciphertext> {
    model
        .plan()
        .input
        .pack(x, encoder.slots())
        .expect("pack")
        .iter()
        .map(|v| {
            let pt = encoder
                .encode(v, model.input_level(), model.input_scale())
                .expect("encode");
            sym.encrypt(&pt).expect("encrypt")
        })
        .collect()
}

/// Decrypts the output blocks and unpacks the plan's output.
fn decrypt_output(
    plan: &cipherinfer_compiler::Plan,
    encoder: &Encoder,
    dec: &cipherinfer_ckks::Decryptor,
    out: &[cipherinfer_ckks::Ciphertext],
) -> Vec<f64> {
    let slots: Vec<Vec<f64>> = out
        .iter()
        .map(|c| {
            encoder
                .decode(&dec.decrypt(c).expect("decrypt"))
                .expect("decode")
        })
        .collect();
    plan.finish_output(&plan.output.unpack(&slots))
}

#[test]
fn encrypted_execution_matches_cleartext_with_the_derived_keys() {
    for (log_n, net) in [
        (10u32, small_net(2, 1)),
        (8, small_net(2, 1)),
        (8, pooled_net(4)),
    ] {
        let params = insecure_params(log_n);
        let plan = compile(&net, params.slots()).expect("compile");
        let steps = plan.rotation_steps();
        let model = HeModel::new(plan.clone(), params.clone()).expect("bind");
        let mut kg = KeyGenerator::new(params.clone()).expect("kg");
        let sk = kg.secret_key();
        let keys = kg
            .evaluation_keys(&sk, plan.needs_relinearization(), &steps, false)
            .expect("keys");
        let ev = Evaluator::new(keys);
        let encoder = Encoder::new(params.clone());
        let (mut sym, dec) = secret_key_pair(sk).expect("secret key");
        let x = image(77);
        let cts = encrypt_image(&model, &encoder, &mut sym, &x);
        let mut calls = 0;
        let (out, report) = model
            .evaluate(&ev, &cts, &AtomicBool::new(false), |_, _, _| calls += 1)
            .expect("evaluate");
        assert_eq!(report.depth_used, plan.depth());
        assert_eq!(calls, plan.steps.len() + 1);
        let got = decrypt_output(&plan, &encoder, &dec, &out);
        let want = plan.execute_cleartext(&x).expect("cleartext");
        let err = max_err(&got, &want);
        eprintln!(
            "N=2^{log_n}: {} input cts, {} rotation keys, max error {err:.2e}",
            cts.len(),
            steps.len()
        );
        assert!(err < 1e-4, "error {err}");
        // Cancellation is honoured.
        let cancelled = model.evaluate(&ev, &cts, &AtomicBool::new(true), |_, _, _| {});
        assert!(matches!(
            cancelled,
            Err(cipherinfer_compiler::CompileError::Cancelled)
        ));
    }
}

/// Under a key budget the client's bundle fits it, the rotations left without a key are
/// composed of power-of-two keys, the result is unchanged, and a budget below the powers of
/// two alone is refused with its own code.
#[test]
fn a_key_budget_composes_rotations_of_powers_of_two_and_keeps_the_result() {
    let params = insecure_params(8);
    let net = pooled_net(4);
    let plan = compile(&net, params.slots()).expect("compile");
    let direct = HeModel::new(plan.clone(), params.clone()).expect("bind");
    let full_bytes = direct.client_spec().evaluation_keys_bytes(&params) as u64;
    let direct_steps = direct.rotation_steps();
    assert!(
        direct_steps.iter().any(|&s| s.count_ones() > 1),
        "the test needs steps that are not powers of two: {direct_steps:?}"
    );
    // No budget, or a roomy one: one key per step.
    let roomy = HeModel::new(plan.clone(), params.clone())
        .expect("bind")
        .with_key_budget(Some(full_bytes))
        .expect("roomy budget");
    assert_eq!(roomy.rotation_steps(), direct_steps);

    // The smallest set: every step composed.
    let Err(e) = HeModel::new(plan.clone(), params.clone())
        .expect("bind")
        .with_key_budget(Some(1))
    else {
        panic!("a one-byte budget is refused");
    };
    assert_eq!(e.code(), "key_budget_exceeded");
    let cipherinfer_compiler::CompileError::KeyBudget { smallest, .. } = e else {
        panic!("{e}");
    };
    assert!(smallest < full_bytes);
    let budget = (smallest + full_bytes) / 2;
    let model = HeModel::new(plan.clone(), params.clone())
        .expect("bind")
        .with_key_budget(Some(budget))
        .expect("budget between the smallest and the full set");
    let spec = model.client_spec();
    let bytes = spec.evaluation_keys_bytes(&params) as u64;
    assert!(bytes <= budget, "{bytes} > {budget}");
    assert_ne!(model.rotation_steps(), direct_steps);
    assert_eq!(model.key_budget(), Some(budget));

    // Keys made from the client specification, as a client makes them; the result matches.
    let mut kg = KeyGenerator::new(params.clone()).expect("kg");
    let sk = kg.secret_key();
    let keys = spec.evaluation_keys(&mut kg, &sk).expect("keys");
    assert_eq!(
        cipherinfer_ckks::serialization::ToBytes::to_bytes(&keys).len() as u64,
        bytes
    );
    let ev = Evaluator::new(keys);
    model
        .check_keys(&ev)
        .expect("the budgeted keys serve the model");
    let encoder = Encoder::new(params.clone());
    let (mut sym, dec) = secret_key_pair(sk).expect("secret key");
    let x = image(78);
    let cts = encrypt_image(&model, &encoder, &mut sym, &x);
    let (out, _) = model
        .evaluate(&ev, &cts, &AtomicBool::new(false), |_, _, _| {})
        .expect("evaluate with composed rotations");
    let got = decrypt_output(&plan, &encoder, &dec, &out);
    let want = plan.execute_cleartext(&x).expect("cleartext");
    let err = max_err(&got, &want);
    assert!(err < 1e-4, "error {err}");
    // A bundle without one of the power-of-two keys fails the key check before any work.
    let mut kg = KeyGenerator::new(params.clone()).expect("kg");
    let sk = kg.secret_key();
    let steps = model.rotation_steps();
    let dropped = steps
        .iter()
        .copied()
        .find(|s| s.count_ones() == 1)
        .expect("a power-of-two key");
    let some: Vec<i64> = steps.into_iter().filter(|&s| s != dropped).collect();
    let partial = Evaluator::new(kg.evaluation_keys(&sk, true, &some, false).expect("keys"));
    assert!(model.check_keys(&partial).is_err());
}
