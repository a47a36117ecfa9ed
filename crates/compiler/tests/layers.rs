//! Each supported layer type, compiled and run encrypted (INSECURE small ring, for speed) against
//! the cleartext plan and the network's own forward pass.

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

fn conv(
    rng: &mut ChaCha20Rng,
    in_c: usize,
    out_c: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
) -> Layer {
    Layer::Conv2d {
        in_c,
        out_c,
        kernel: (k, k),
        stride: (stride, stride),
        padding: (pad, pad, pad, pad),
        groups,
        weight: rand_vec(rng, out_c * (in_c / groups) * k * k, 0.4),
        bias: rand_vec(rng, out_c, 0.1),
    }
}

fn check(name: &str, net: Network, depth_levels: usize) {
    let lit: ParametersLiteral = serde_json::from_str(&format!(
        r#"{{"log_n":10,"log_q":[50{}],"log_p":[55,55],"log_scale":36}}"#,
        ",36".repeat(depth_levels)
    ))
    .expect("literal");
    let params = lit
        .build_insecure_for_tests()
        .expect("INSECURE test parameters");
    let plan = compile(&net, params.slots()).expect("compile");
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let (c, h, w) = net.input;
    let x: Vec<f64> = rand_vec(&mut rng, c * h * w, 1.0);
    let want = net.forward(&x).expect("forward");
    let clear = plan.execute_cleartext(&x).expect("cleartext");
    let d = clear
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(d < 1e-9, "{name}: plan differs from the network by {d}");
    let model = HeModel::new(plan.clone(), params.clone()).expect("bind");
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
    let (mut sym, dec) = secret_key_pair(sk).expect("secret key");
    let cts = model
        .client_spec()
        .encrypt_input(&encoder, &mut sym, &x)
        .expect("encrypt");
    let (out, _) = model
        .evaluate(&ev, &cts, &AtomicBool::new(false), |_, _, _| {})
        .expect("evaluate");
    let got = model
        .client_spec()
        .decrypt_output(&encoder, &dec, &out)
        .expect("decrypt");
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "{name}: depth {}, {} cts in, max error {err:.2e}",
        plan.depth(),
        plan.input.num_cts
    );
    assert!(err < 1e-4, "{name}: encrypted differs by {err}");
}

#[test]
fn strided_and_padded_convolution() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let net = Network {
        input: (1, 8, 8),
        layers: vec![
            conv(&mut rng, 1, 3, 3, 2, 1, 1),
            Layer::Flatten,
            Layer::Dense {
                in_f: 48,
                out_f: 4,
                weight: rand_vec(&mut rng, 192, 0.3),
                bias: rand_vec(&mut rng, 4, 0.1),
            },
        ],
    };
    check("conv stride 2 pad 1 + dense (fused)", net, 1);
}

#[test]
fn multi_channel_and_grouped_convolutions() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let net = Network {
        input: (2, 6, 6),
        layers: vec![
            conv(&mut rng, 2, 4, 3, 1, 1, 1),
            Layer::Poly {
                coeffs: vec![0.0, 0.0, 1.0],
            },
            conv(&mut rng, 4, 4, 3, 1, 0, 2),
        ],
    };
    check(
        "conv 2->4 channel mixing, square, grouped conv 4->4 (2 groups)",
        net,
        3,
    );
}

#[test]
fn general_polynomial_and_global_pooling() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let net = Network {
        input: (1, 8, 8),
        layers: vec![
            conv(&mut rng, 1, 2, 3, 1, 0, 1),
            Layer::Poly {
                coeffs: vec![0.1, 0.5, 0.25, -0.05],
            },
            Layer::AvgPool2d {
                kernel: (6, 6),
                stride: (6, 6),
            },
            Layer::Flatten,
            Layer::Dense {
                in_f: 2,
                out_f: 3,
                weight: rand_vec(&mut rng, 6, 0.5),
                bias: rand_vec(&mut rng, 3, 0.1),
            },
        ],
    };
    check("conv, cubic polynomial, global average pool, dense", net, 5);
}

#[test]
fn interval_polynomial_is_folded_and_evaluated_in_chebyshev_basis() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    // A smooth ReLU-like degree-8 polynomial on [-3, 3] in the monomial basis, as the converter
    // produces: 0.35 + x/2 + 0.21 x^2 - 0.011 x^4 + 0.0004 x^6 - 0.000006 x^8.
    let monomial = vec![0.35, 0.5, 0.21, 0.0, -0.011, 0.0, 0.0004, 0.0, -0.000006];
    let net = Network {
        input: (1, 8, 8),
        layers: vec![
            conv(&mut rng, 1, 2, 3, 1, 0, 1),
            Layer::IntervalPoly {
                coeffs: monomial,
                interval: (-3.0, 3.0),
                chebyshev: false,
            },
            Layer::AvgPool2d {
                kernel: (2, 2),
                stride: (2, 2),
            },
            Layer::Flatten,
            Layer::Dense {
                in_f: 18,
                out_f: 4,
                weight: rand_vec(&mut rng, 72, 0.5),
                bias: rand_vec(&mut rng, 4, 0.1),
            },
        ],
    };
    let plan = compile(&net, 512).expect("compile");
    // conv (1, with the interval map folded in) + Chebyshev degree 8 (4) + pool+dense (1).
    assert_eq!(plan.depth(), 6);
    check(
        "conv, interval polynomial (degree 8), avgpool, dense",
        net,
        6,
    );
}

#[test]
fn shape_errors_are_reported() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let bad = Network {
        input: (1, 8, 8),
        layers: vec![conv(&mut rng, 2, 3, 3, 1, 0, 1)],
    };
    let err = compile(&bad, 512).expect_err("channel mismatch");
    assert_eq!(err.code(), "invalid_model");
    let bad = Network {
        input: (1, 4, 4),
        layers: vec![
            Layer::Flatten,
            Layer::Dense {
                in_f: 15,
                out_f: 2,
                weight: vec![0.0; 30],
                bias: vec![0.0; 2],
            },
        ],
    };
    assert!(compile(&bad, 512).is_err());
    let too_big = Network {
        input: (1, 64, 64),
        layers: vec![Layer::Flatten],
    };
    assert!(compile(&too_big, 512).is_err());
}

#[test]
fn mnist_relu_converts_and_compiles_for_n_2_15() {
    use cipherinfer_model::convert::{ConvertOptions, convert};
    use cipherinfer_model::{Manifest, onnx, plain};
    let manifest = Manifest::shipped().expect("manifest");
    let entry = manifest.model("mnist-relu").expect("entry").clone();
    let ir =
        onnx::import(&manifest.read_model("mnist-relu").expect("model").bytes).expect("import");
    let samples = manifest.load_samples(&entry.dataset).expect("samples");
    let inputs = plain::sample_inputs(&samples, &entry.input).expect("inputs");
    let calibration: Vec<_> = inputs.iter().take(200).map(|(t, _)| t.clone()).collect();
    let conversion = convert(&ir, &calibration, &ConvertOptions::default()).expect("convert");
    let converted = conversion.model;
    let net = Network::from_ir(&converted).expect("lower");
    let plan = compile(&net, 1 << 14).expect("compile");
    let diagonals: usize = plan
        .steps
        .iter()
        .map(|s| match s {
            cipherinfer_compiler::Step::Linear(l) => l.diagonals.values().map(|d| d.len()).sum(),
            _ => 0,
        })
        .sum();
    eprintln!(
        "mnist-relu: depth {}, {} rotation keys, {} diagonals, steps: {:?}",
        plan.depth(),
        plan.rotation_steps().len(),
        diagonals,
        plan.steps.iter().map(|s| s.describe()).collect::<Vec<_>>()
    );
    let mut correct = 0;
    for (x, label) in inputs.iter().take(100) {
        let want = plain::run(&converted, x).expect("run").into_data();
        let got = plan.execute_cleartext(x.data()).expect("cleartext");
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-6, "plan differs from converted model by {d}");
        let am = got
            .iter()
            .enumerate()
            .fold(0, |b, (i, v)| if *v > got[b] { i } else { b });
        correct += usize::from(am == *label as usize);
    }
    eprintln!("mnist-relu converted, plan cleartext accuracy on 100: {correct}%");
    assert!(plan.depth() <= 16);
    // Its depth selects the N = 2^15 ring (128-bit), the smallest that offers 16 levels.
    let lit = cipherinfer_compiler::select_literal(
        plan.depth(),
        1 << 14,
        cipherinfer_ckks::SecurityLevel::Bits128,
    )
    .expect("fits");
    assert_eq!(lit.log_n, 15);
}

#[test]
fn asymmetric_padding_as_torch_pads_it() {
    // F.pad(x, (0, 1, 0, 1)) before a stride-2 conv, as exported: padding on the bottom and
    // right only. Checked against the model crate's own plaintext executor, then encrypted.
    use cipherinfer_model::ir::{Conv2d, Dense, ModelBuilder, Op, Padding, Shape as IrShape};
    use cipherinfer_model::plain::{self, Tensor};
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut b = ModelBuilder::new("x", IrShape::new(2, 7, 7)).expect("input");
    b.add(
        "conv",
        Op::Conv2d(Conv2d {
            in_channels: 2,
            out_channels: 3,
            kernel: [3, 3],
            stride: [2, 2],
            padding: Padding {
                top: 0,
                left: 0,
                bottom: 1,
                right: 1,
            },
            groups: 1,
            weights: rand_vec(&mut rng, 3 * 2 * 9, 0.4),
            bias: rand_vec(&mut rng, 3, 0.1),
        }),
        &["x"],
    )
    .expect("conv");
    b.add(
        "flat",
        Op::Reshape {
            shape: IrShape::new(27, 1, 1),
        },
        &["conv"],
    )
    .expect("flatten");
    b.add(
        "fc",
        Op::Dense(Dense {
            in_features: 27,
            out_features: 4,
            weights: rand_vec(&mut rng, 108, 0.3),
            bias: rand_vec(&mut rng, 4, 0.1),
        }),
        &["flat"],
    )
    .expect("dense");
    let ir = b.build("fc").expect("model");
    let net = Network::from_ir(&ir).expect("asymmetric padding lowers");
    let x = rand_vec(&mut rng, 2 * 7 * 7, 1.0);
    let want = plain::run(
        &ir,
        &Tensor::new(IrShape::new(2, 7, 7), x.clone()).expect("t"),
    )
    .expect("plain")
    .into_data();
    let got = net.forward(&x).expect("forward");
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        d < 1e-12,
        "lowered network differs from the IR executor by {d}"
    );
    check("conv with bottom/right padding + dense", net, 1);
}
