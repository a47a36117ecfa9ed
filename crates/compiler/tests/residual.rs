//! Residual connections: an IR graph with identity and projection shortcuts lowers to a chain
//! with registers, and the fused plan runs encrypted (INSECURE small ring, for speed) to the
//! network's own outputs; graphs that are not a main path with shortcuts are refused by node.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::sync::atomic::AtomicBool;

use cipherinfer_ckks::{Encoder, Evaluator, KeyGenerator, ParametersLiteral, secret_key_pair};
use cipherinfer_compiler::{HeModel, Layer, Network, Step, compile};
use cipherinfer_model::convert::{ConvertOptions, PoolMode, convert};
use cipherinfer_model::ir::{
    Conv2d, Dense, Model, ModelBuilder, Op, Padding, Polynomial, Pool2d, Shape,
};
use cipherinfer_model::plain::{self, Tensor};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

fn rand_vec(rng: &mut ChaCha20Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|_| (rng.next_u64() as f64 / u64::MAX as f64 * 2.0 - 1.0) * scale)
        .collect()
}

fn conv(rng: &mut ChaCha20Rng, cin: usize, cout: usize, k: usize, stride: usize) -> Op {
    let scale = 0.8 / ((cin * k * k) as f64).sqrt();
    Op::Conv2d(Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [stride, stride],
        padding: Padding::uniform(k / 2),
        groups: 1,
        weights: rand_vec(rng, cout * cin * k * k, scale),
        bias: rand_vec(rng, cout, 0.1),
    })
}

/// A bounded activation: a ReLU-like Chebyshev series on [-4, 4].
fn act() -> Op {
    Op::Polynomial(Polynomial::chebyshev(
        vec![0.85, 2.0, 0.85, 0.0, -0.17],
        [-4.0, 4.0],
    ))
}

/// stem conv → act → [conv → act → conv] + identity → act → [strided conv → act → conv] +
/// strided 1x1 projection → act → global average pool → dense.
fn resnet(seed: u64) -> Model {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut b = ModelBuilder::new("image", Shape::from([3, 8, 8])).expect("builder");
    b.add("stem", conv(&mut rng, 3, 4, 3, 1), &["image"])
        .unwrap();
    b.add("a0", act(), &["stem"]).unwrap();
    b.add("c1", conv(&mut rng, 4, 4, 3, 1), &["a0"]).unwrap();
    b.add("a1", act(), &["c1"]).unwrap();
    b.add("c2", conv(&mut rng, 4, 4, 3, 1), &["a1"]).unwrap();
    // Identity shortcut, with the shortcut as the first input.
    b.add("sum1", Op::Add, &["a0", "c2"]).unwrap();
    b.add("a2", act(), &["sum1"]).unwrap();
    // The projection is listed before the main branch, as exporters often do.
    b.add("proj", conv(&mut rng, 4, 8, 1, 2), &["a2"]).unwrap();
    b.add("c3", conv(&mut rng, 4, 8, 3, 2), &["a2"]).unwrap();
    b.add("a3", act(), &["c3"]).unwrap();
    b.add("c4", conv(&mut rng, 8, 8, 3, 1), &["a3"]).unwrap();
    b.add("sum2", Op::Add, &["c4", "proj"]).unwrap();
    b.add("a4", act(), &["sum2"]).unwrap();
    b.add(
        "gap",
        Op::AvgPool2d(Pool2d::global(Shape::from([8, 4, 4]))),
        &["a4"],
    )
    .unwrap();
    b.add(
        "flat",
        Op::Reshape {
            shape: Shape::from([8, 1, 1]).flattened(),
        },
        &["gap"],
    )
    .unwrap();
    let dense = Dense {
        in_features: 8,
        out_features: 5,
        weights: rand_vec(&mut rng, 40, 0.5),
        bias: vec![0.0; 5],
    };
    b.add("fc", Op::Dense(dense), &["flat"]).unwrap();
    b.build("fc").expect("model")
}

fn image(seed: u64) -> Vec<f64> {
    rand_vec(&mut ChaCha20Rng::seed_from_u64(seed), 3 * 8 * 8, 1.0)
}

fn max_err(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn shortcuts_lower_to_registers_and_the_plan_matches_the_graph() {
    let model = resnet(7);
    let net = Network::from_ir(&model).expect("lower");
    let saves = net.layers.iter().filter(|l| **l == Layer::Save).count();
    assert_eq!(saves, 2, "one register per shortcut source");
    let branches: Vec<usize> = net
        .layers
        .iter()
        .filter_map(|l| match l {
            Layer::AddSaved { branch, .. } => Some(branch.len()),
            _ => None,
        })
        .collect();
    assert_eq!(branches, vec![0, 1], "identity, then the 1x1 projection");
    let plan = compile(&net, 1 << 12).expect("compile");
    // Each residual sum fuses with the convolution before it: no level for the Add.
    let fused = plan
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Linear(l) if !l.saved.is_empty()))
        .count();
    assert_eq!(fused, 2);
    let linear = plan
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Linear(_)))
        .count();
    assert_eq!(linear, 6, "stem, c1, c2+sum1, c3, c4+sum2, pool+dense");
    for seed in 0..4 {
        let x = image(seed);
        let graph = plain::run(
            &model,
            &Tensor::new(model.input_shape(), x.clone()).unwrap(),
        )
        .expect("graph");
        let chain = net.forward(&x).expect("chain");
        assert!(
            max_err(graph.data(), &chain) < 1e-12,
            "chain differs from the graph"
        );
        let clear = plan.execute_cleartext(&x).expect("plan");
        assert!(
            max_err(&clear, &chain) < 1e-9,
            "plan differs from the chain"
        );
    }
}

fn run_encrypted(net: &Network, levels: usize) -> f64 {
    let lit: ParametersLiteral = serde_json::from_str(&format!(
        r#"{{"log_n":11,"log_q":[55{}],"log_p":[58,58],"log_scale":40}}"#,
        ",40".repeat(levels)
    ))
    .expect("literal");
    let params = lit
        .build_insecure_for_tests()
        .expect("INSECURE test parameters");
    let plan = compile(net, params.slots()).expect("compile");
    assert!(plan.depth() <= levels, "depth {}", plan.depth());
    let model = HeModel::new(plan.clone(), params.clone()).expect("bind");
    let mut kg = KeyGenerator::new(params.clone()).expect("kg");
    let sk = kg.secret_key();
    let keys = kg
        .evaluation_keys(&sk, true, &plan.rotation_steps(), false)
        .expect("keys");
    let ev = Evaluator::new(keys);
    let encoder = Encoder::new(params.clone());
    let (mut sym, dec) = secret_key_pair(sk).expect("secret key");
    let mut worst: f64 = 0.0;
    for seed in 0..2 {
        let x = image(seed);
        let want = net.forward(&x).expect("forward");
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
        let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        worst = worst.max(max_err(&got, &want) / scale);
    }
    worst
}

#[test]
fn one_register_added_twice_in_a_run_is_read_once() {
    let net = Network {
        input: (1, 4, 4),
        layers: vec![
            Layer::Save,
            Layer::Poly {
                coeffs: vec![0.1, 0.5, 0.25],
            },
            Layer::AddSaved {
                register: 0,
                branch: vec![],
            },
            Layer::AddSaved {
                register: 0,
                branch: vec![Layer::AvgPool2d {
                    kernel: (1, 1),
                    stride: (1, 1),
                }],
            },
        ],
    };
    let plan = compile(&net, 64).expect("compile");
    let Some(Step::Linear(l)) = plan.steps.last() else {
        panic!("the sums fuse into one linear step: {:?}", plan.steps);
    };
    assert_eq!(l.saved, vec![0]);
    assert_eq!(l.in_cts, 2);
    let x = image(3)[..16].to_vec();
    let want: Vec<f64> = x
        .iter()
        .map(|v| 0.1 + 0.5 * v + 0.25 * v * v + 2.0 * v)
        .collect();
    assert!(max_err(&net.forward(&x).unwrap(), &want) < 1e-12);
    assert!(max_err(&plan.execute_cleartext(&x).unwrap(), &want) < 1e-9);
}

#[test]
fn a_residual_network_runs_encrypted_to_its_plaintext_outputs() {
    let net = Network::from_ir(&resnet(11)).expect("lower");
    let depth = compile(&net, 1 << 10).expect("plan").depth();
    let err = run_encrypted(&net, depth);
    let bits = -err.log2();
    eprintln!("residual network, depth {depth}: relative error 2^-{bits:.1}");
    assert!(bits > 14.0, "only {bits:.1} bits against plaintext");
}

#[test]
fn a_shortcut_across_a_square_is_brought_to_the_current_scale() {
    // x² leaves its output at scale Δ²/q, not Δ: the kept tensor must be rescaled onto it.
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let Op::Conv2d(c) = conv(&mut rng, 3, 3, 3, 1) else {
        unreachable!()
    };
    let layer = Layer::Conv2d {
        in_c: 3,
        out_c: 3,
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1, 1, 1),
        groups: 1,
        weight: c.weights,
        bias: c.bias,
    };
    let net = Network {
        input: (3, 8, 8),
        layers: vec![
            Layer::Save,
            layer.clone(),
            Layer::Poly {
                coeffs: vec![0.0, 0.0, 1.0],
            },
            layer,
            Layer::AddSaved {
                register: 0,
                branch: vec![],
            },
        ],
    };
    let bits = -run_encrypted(&net, 3).log2();
    assert!(bits > 14.0, "only {bits:.1} bits against plaintext");
}

#[test]
fn graphs_that_are_not_a_path_with_shortcuts_are_refused_by_node() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    // Two non-linear branches joined by an Add (an Inception-like fork).
    let mut b = ModelBuilder::new("image", Shape::from([3, 8, 8])).unwrap();
    b.add("left", conv(&mut rng, 3, 4, 3, 1), &["image"])
        .unwrap();
    b.add("la", act(), &["left"]).unwrap();
    b.add("right", conv(&mut rng, 3, 4, 3, 1), &["image"])
        .unwrap();
    b.add("ra", act(), &["right"]).unwrap();
    b.add("join", Op::Add, &["la", "ra"]).unwrap();
    let model = b.build("join").unwrap();
    let err = Network::from_ir(&model).expect_err("a fork is refused");
    let msg = err.to_string();
    assert!(msg.contains("join") && msg.contains("shortcut"), "{msg}");

    // A shortcut from a value that is itself inside another shortcut branch.
    let mut b = ModelBuilder::new("image", Shape::from([3, 8, 8])).unwrap();
    b.add("c0", conv(&mut rng, 3, 3, 3, 1), &["image"]).unwrap();
    b.add("a0", act(), &["c0"]).unwrap();
    b.add("p", conv(&mut rng, 3, 3, 1, 1), &["a0"]).unwrap();
    b.add("c1", conv(&mut rng, 3, 3, 3, 1), &["a0"]).unwrap();
    b.add("s1", Op::Add, &["c1", "p"]).unwrap();
    b.add("s2", Op::Add, &["s1", "p"]).unwrap();
    let model = b.build("s2").unwrap();
    let msg = Network::from_ir(&model)
        .expect_err("shared branch")
        .to_string();
    assert!(
        msg.contains("node s2") && msg.contains("\"p\"") && msg.contains("main path"),
        "{msg}"
    );

    // A register used before it is saved, or a shortcut of the wrong shape, in a hand-built
    // chain.
    let bad = Network {
        input: (1, 4, 4),
        layers: vec![Layer::AddSaved {
            register: 0,
            branch: vec![],
        }],
    };
    assert!(
        bad.shapes()
            .unwrap_err()
            .to_string()
            .contains("before it is saved")
    );
    let bad = Network {
        input: (1, 4, 4),
        layers: vec![
            Layer::Save,
            Layer::AvgPool2d {
                kernel: (2, 2),
                stride: (2, 2),
            },
            Layer::AddSaved {
                register: 0,
                branch: vec![],
            },
        ],
    };
    assert!(bad.shapes().unwrap_err().to_string().contains("shortcut"));
}

/// conv → bounded activation → 2x2 MaxPool → flatten → dense, on a 3×8×8 input.
fn max_pooled(seed: u64) -> Model {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut b = ModelBuilder::new("image", Shape::from([3, 8, 8])).unwrap();
    b.add("c0", conv(&mut rng, 3, 4, 3, 1), &["image"]).unwrap();
    b.add("a0", act(), &["c0"]).unwrap();
    b.add("pool", Op::MaxPool2d(Pool2d::square(2)), &["a0"])
        .unwrap();
    b.add(
        "flat",
        Op::Reshape {
            shape: Shape::from([4, 4, 4]).flattened(),
        },
        &["pool"],
    )
    .unwrap();
    let dense = Dense {
        in_features: 64,
        out_features: 5,
        weights: rand_vec(&mut rng, 320, 0.3),
        bias: vec![0.0; 5],
    };
    b.add("fc", Op::Dense(dense), &["flat"]).unwrap();
    b.build("fc").unwrap()
}

#[test]
fn an_exact_max_pool_lowers_to_shortcuts_and_runs_encrypted() {
    let model = max_pooled(13);
    let images: Vec<Tensor> = (0..16)
        .map(|s| Tensor::new(model.input_shape(), image(100 + s)).unwrap())
        .collect();
    let options = ConvertOptions {
        max_pool: PoolMode::Max,
        pool_degree: Some(6),
        ..ConvertOptions::default()
    };
    let converted = convert(&model, &images, &options).unwrap().model;
    let net = Network::from_ir(&converted).expect("lower");
    // The pool input and the first round's |d|/2 are kept; the second round's differences and
    // the final combination read them as shortcuts.
    let saves = net.layers.iter().filter(|l| **l == Layer::Save).count();
    assert_eq!(saves, 2);
    let plan = compile(&net, 1 << 10).expect("compile");
    // conv, activation (3), then per round one linear step and |d|/2 (3): the final
    // combination fuses with the dense layer.
    let linear = plan
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Linear(_)))
        .count();
    assert_eq!(linear, 4, "conv, round 1, round 2, combination + dense");
    assert_eq!(plan.depth(), 1 + 3 + 2 * (1 + 3) + 1);
    for x in &images[..4] {
        let graph = plain::run(&converted, x).unwrap();
        let clear = plan.execute_cleartext(x.data()).unwrap();
        assert!(
            max_err(graph.data(), &clear) < 1e-9,
            "plan differs from the graph"
        );
    }
    let depth = plan.depth();
    let err = run_encrypted(&net, depth);
    let bits = -err.log2();
    eprintln!("exact max-pool network, depth {depth}: relative error 2^-{bits:.1}");
    assert!(bits > 12.0, "only {bits:.1} bits against plaintext");
}
