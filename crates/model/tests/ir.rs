//! The IR on small synthetic graphs: shape checks, depth accounting, BatchNorm folding, JSON.

use cipherinfer_model::ir::{
    BatchNorm, Conv2d, Dense, IrError, Model, ModelBuilder, Node, Op, Padding, Polynomial, Pool2d,
    Shape, ceil_log2,
};
use cipherinfer_model::plain::{self, Tensor};

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

fn conv(cin: usize, cout: usize, k: usize, pad: usize, groups: usize, seed: u64) -> Op {
    Op::Conv2d(Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [1, 1],
        padding: Padding::uniform(pad),
        groups,
        weights: values(cout * cin / groups * k * k, seed),
        bias: values(cout, seed + 1),
    })
}

fn dense(inp: usize, out: usize, seed: u64) -> Op {
    Op::Dense(Dense {
        in_features: inp,
        out_features: out,
        weights: values(inp * out, seed),
        bias: values(out, seed + 1),
    })
}

fn bn(c: usize, seed: u64) -> Op {
    let gamma: Vec<f64> = values(c, seed).iter().map(|v| v + 1.5).collect();
    let var: Vec<f64> = values(c, seed + 1).iter().map(|v| v + 1.2).collect();
    Op::BatchNorm(BatchNorm::from_stats(
        &gamma,
        &values(c, seed + 2),
        &values(c, seed + 3),
        &var,
        1e-5,
    ))
}

fn input(shape: Shape, seed: u64) -> Tensor {
    Tensor::new(shape, values(shape.len(), seed)).expect("tensor")
}

/// A graph with a BatchNorm in each position `fold_batchnorm` handles:
/// after a Conv (→ into it), after a Dense (→ into it), before a Dense through a Reshape,
/// before an unpadded Conv, and after a residual Add before a pool (→ depthwise 1x1 conv).
fn graph_with_batchnorms() -> Model {
    let mut b = ModelBuilder::new("x", Shape::new(3, 8, 8)).expect("input");
    b.add("c1", conv(3, 4, 3, 1, 1, 10), &["x"]).expect("c1");
    b.add("bn1", bn(4, 20), &["c1"]).expect("bn1");
    b.add("sq1", Op::Square, &["bn1"]).expect("sq1");
    b.add("bn2", bn(4, 30), &["sq1"]).expect("bn2");
    b.add("c2", conv(4, 4, 3, 0, 2, 40), &["bn2"])
        .expect("c2: 4x6x6");
    b.add("c3", conv(4, 4, 3, 0, 1, 50), &["sq1"])
        .expect("c3: 4x6x6");
    b.add("res", Op::Add, &["c2", "c3"]).expect("res");
    b.add("bn3", bn(4, 60), &["res"]).expect("bn3");
    b.add("pool", Op::AvgPool2d(Pool2d::square(2)), &["bn3"])
        .expect("pool: 4x3x3");
    b.add("bn4", bn(4, 70), &["pool"]).expect("bn4");
    b.add(
        "flat",
        Op::Reshape {
            shape: Shape::flat(36),
        },
        &["bn4"],
    )
    .expect("flat");
    b.add("fc1", dense(36, 6, 80), &["flat"]).expect("fc1");
    b.add("bn5", bn(6, 90), &["fc1"]).expect("bn5");
    b.add(
        "poly",
        Op::Polynomial(Polynomial::new(vec![0.1, 0.5, 0.25])),
        &["bn5"],
    )
    .expect("poly");
    b.add("fc2", dense(6, 3, 100), &["poly"]).expect("fc2");
    b.build("fc2").expect("model")
}

#[test]
fn batchnorm_folding_keeps_the_outputs() {
    let model = graph_with_batchnorms();
    let folded = model.fold_batchnorm().expect("folds");
    println!("{model}\n\n{folded}");
    assert!(
        folded
            .nodes()
            .iter()
            .all(|n| !matches!(n.op, Op::BatchNorm(_)))
    );
    let names: Vec<&str> = folded.nodes().iter().map(|n| n.name.as_str()).collect();
    // bn1 → c1, bn2 → c2 (unpadded, after it), bn3 → depthwise conv, bn4 → fc1, bn5 → fc1.
    assert_eq!(
        names,
        [
            "c1", "sq1", "c2", "c3", "res", "bn3", "pool", "flat", "fc1", "poly", "fc2"
        ]
    );
    assert!(matches!(&folded.node("bn3").expect("bn3").op,
        Op::Conv2d(c) if c.groups == 4 && c.kernel == [1, 1]));
    assert_eq!(folded.node("c2").expect("c2").inputs, ["sq1"]);
    for seed in 0..5 {
        let x = input(model.input_shape(), seed);
        let want = plain::run(&model, &x).expect("runs");
        let got = plain::run(&folded, &x).expect("runs");
        for (g, w) in got.data().iter().zip(want.data()) {
            assert!((g - w).abs() <= 1e-9 * w.abs().max(1.0), "{g} vs {w}");
        }
    }
    // Folding saves the levels of every BatchNorm but the one that became a convolution.
    let unfolded_depth = model.multiplicative_depth().expect("depth");
    let folded_depth = folded.multiplicative_depth().expect("depth");
    assert_eq!(unfolded_depth, 13);
    assert_eq!(folded_depth, 9);
}

#[test]
fn batchnorm_before_a_padded_conv_is_not_folded_into_it() {
    // The shift would wrongly reach the zero border: it becomes a depthwise conv instead.
    let mut b = ModelBuilder::new("x", Shape::new(2, 5, 5)).expect("input");
    b.add("sq", Op::Square, &["x"]).expect("sq");
    b.add("bn", bn(2, 1), &["sq"]).expect("bn");
    b.add("c", conv(2, 3, 3, 1, 1, 2), &["bn"]).expect("c");
    let model = b.build("c").expect("model");
    let folded = model.fold_batchnorm().expect("folds");
    assert!(matches!(&folded.node("bn").expect("bn").op, Op::Conv2d(c) if c.groups == 2));
    let x = input(model.input_shape(), 3);
    let (want, got) = (
        plain::run(&model, &x).expect("runs"),
        plain::run(&folded, &x).expect("runs"),
    );
    for (g, w) in got.data().iter().zip(want.data()) {
        assert!((g - w).abs() < 1e-12);
    }
    // A BatchNorm that is the output folds into the layer before it and the output follows.
    let mut b = ModelBuilder::new("x", Shape::flat(4)).expect("input");
    b.add("fc", dense(4, 2, 5), &["x"]).expect("fc");
    b.add("bn", bn(2, 6), &["fc"]).expect("bn");
    let folded = b
        .build("bn")
        .expect("model")
        .fold_batchnorm()
        .expect("folds");
    assert_eq!(folded.output(), "fc");
    assert_eq!(folded.nodes().len(), 1);
}

#[test]
fn shapes_are_checked_when_nodes_are_added() {
    let mut b = ModelBuilder::new("x", Shape::new(1, 6, 6)).expect("input");
    let err = b
        .add("c", conv(2, 4, 3, 0, 1, 1), &["x"])
        .expect_err("channels");
    assert!(
        matches!(&err, IrError::Invalid { node, op: "Conv2d", reason } if node == "c" && reason.contains("channels")),
        "{err}"
    );
    let err = b
        .add("c", conv(1, 4, 7, 0, 1, 1), &["x"])
        .expect_err("kernel too big");
    assert!(err.to_string().contains("larger"), "{err}");
    assert_eq!(
        b.add("c", conv(1, 4, 3, 0, 1, 1), &["x"]).expect("fits"),
        Shape::new(4, 4, 4)
    );
    let err = b.add("d", dense(64, 2, 1), &["c"]).expect_err("not flat");
    assert!(err.to_string().contains("Reshape"), "{err}");
    let err = b
        .add(
            "r",
            Op::Reshape {
                shape: Shape::flat(63),
            },
            &["c"],
        )
        .expect_err("count");
    assert!(err.to_string().contains("64 values"), "{err}");
    b.add(
        "r",
        Op::Reshape {
            shape: Shape::flat(64),
        },
        &["c"],
    )
    .expect("flatten");
    assert!(matches!(
        b.add("d", dense(64, 2, 1), &["nope"]),
        Err(IrError::UnknownInput { ref input, .. }) if input == "nope"
    ));
    assert!(matches!(
        b.add("c", Op::Square, &["x"]),
        Err(IrError::DuplicateName { .. })
    ));
    assert!(matches!(
        b.add("x", Op::Square, &["x"]),
        Err(IrError::DuplicateName { .. })
    ));
    assert!(b.add("add", Op::Add, &["c", "x"]).is_err());
    assert!(b.add("add", Op::Add, &["c"]).is_err());
    let mut bad = dense(64, 2, 1);
    if let Op::Dense(d) = &mut bad {
        d.weights[3] = f64::NAN;
    }
    assert!(b.add("d", bad, &["r"]).is_err());
    let mut short = dense(64, 2, 1);
    if let Op::Dense(d) = &mut short {
        d.bias.pop();
    }
    assert!(b.add("d", short, &["r"]).is_err());
    b.add("d", dense(64, 2, 1), &["r"]).expect("dense");
    assert!(matches!(
        b.clone().build("missing"),
        Err(IrError::UnknownOutput { .. })
    ));
    let model = b.build("d").expect("model");
    assert_eq!(model.output_shape(), Shape::flat(2));
    assert_eq!(model.value_shape("r"), Some(Shape::flat(64)));
    assert_eq!(model.consumers("c"), [1]);

    assert!(ModelBuilder::new("x", Shape::new(0, 3, 3)).is_err());
    assert!(ModelBuilder::new("x", Shape::new(1 << 20, 1 << 20, 1)).is_err());
    assert!(ModelBuilder::new("", Shape::flat(3)).is_err());
}

#[test]
fn strided_grouped_and_global_pooling_shapes() {
    let mut b = ModelBuilder::new("x", Shape::new(4, 9, 7)).expect("input");
    let mut strided = conv(4, 6, 3, 0, 2, 1);
    if let Op::Conv2d(c) = &mut strided {
        c.stride = [2, 3];
        c.padding = Padding {
            top: 1,
            left: 0,
            bottom: 0,
            right: 2,
        };
    }
    // rows (9 + 1 - 3) / 2 + 1 = 4, columns (7 + 2 - 3) / 3 + 1 = 3
    assert_eq!(
        b.add("c", strided, &["x"]).expect("conv"),
        Shape::new(6, 4, 3)
    );
    let global = Pool2d::global(Shape::new(6, 4, 3));
    assert_eq!(
        b.add("g", Op::AvgPool2d(global), &["c"]).expect("pool"),
        Shape::new(6, 1, 1)
    );
    assert!(global.is_global(Shape::new(6, 4, 3)));
    let model = b.build("g").expect("model");
    // The global average of a strided grouped conv, checked by hand.
    let x = input(model.input_shape(), 9);
    let out = plain::run(&model, &x).expect("runs");
    let Op::Conv2d(c) = &model.nodes()[0].op else {
        unreachable!()
    };
    for o in 0..6 {
        let mut sum = 0.0;
        for oy in 0..4 {
            for ox in 0..3 {
                let mut acc = c.bias[o];
                for i in 0..2 {
                    let ch = (o / 3) * 2 + i;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 3 + kx) as isize);
                            if (0..9).contains(&iy) && (0..7).contains(&ix) {
                                acc += c.weights[c.weight_index(o, i, ky, kx)]
                                    * x.at(ch, iy as usize, ix as usize);
                            }
                        }
                    }
                }
                sum += acc;
            }
        }
        assert!((out.data()[o] - sum / 12.0).abs() < 1e-12);
    }
}

#[test]
fn multiplicative_depth_counts_like_the_he_executor() {
    // The CKKS library's baby-step/giant-step evaluation: x^3 = (c·x)·x² in 2 levels, and never
    // more than the product tree's ⌈log2 d⌉ + 1.
    for (degree, depth) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (8, 4), (16, 5)] {
        let mut coeffs = vec![0.0; degree + 1];
        coeffs[degree] = 1.0;
        assert_eq!(Polynomial::new(coeffs).depth(), depth, "degree {degree}");
    }
    for degree in 1..=64usize {
        let coeffs: Vec<f64> = (0..=degree).map(|i| 1.0 / (1.0 + i as f64)).collect();
        let ckks = cipherinfer_ckks::Polynomial::monomial(coeffs.clone()).expect("p");
        let ir = Polynomial::new(coeffs.clone());
        assert_eq!(ir.depth() as usize, ckks.depth(), "degree {degree}");
        assert!(ir.depth() <= ceil_log2(degree) + 1, "degree {degree}");
        // In the Chebyshev basis, degree 2^k − 1 takes k levels.
        let cheb = Polynomial::chebyshev(coeffs, [-2.0, 3.0]);
        if (degree + 1).is_power_of_two() {
            assert_eq!(cheb.depth(), ceil_log2(degree + 1), "degree {degree}");
        }
        assert!((cheb.evaluate(0.5) - ckks_cheb(&cheb.coeffs, 0.5)).abs() < 1e-9);
    }
    assert_eq!(Polynomial::new(vec![3.0, 0.0, 0.0]).depth(), 0);
    // Residual branches take the longest path; merging removes levels of chained linear layers.
    let mut b = ModelBuilder::new("x", Shape::new(2, 6, 6)).expect("input");
    b.add("c1", conv(2, 2, 3, 1, 1, 1), &["x"]).expect("c1");
    b.add("sq", Op::Square, &["c1"]).expect("sq");
    b.add("c2", conv(2, 2, 3, 1, 1, 2), &["sq"]).expect("c2");
    b.add(
        "p",
        Op::Polynomial(Polynomial::new(vec![0.0, 1.0, 0.5, 0.25])),
        &["c2"],
    )
    .expect("p");
    b.add("res", Op::Add, &["p", "sq"]).expect("res");
    b.add("pool", Op::AvgPool2d(Pool2d::square(2)), &["res"])
        .expect("pool");
    b.add(
        "flat",
        Op::Reshape {
            shape: Shape::flat(18),
        },
        &["pool"],
    )
    .expect("flat");
    b.add("fc", dense(18, 4, 3), &["flat"]).expect("fc");
    let model = b.build("fc").expect("model");
    // c1 1, sq 1, c2 1, p 2, pool 1, fc 1 = 7 on the long branch; merged: fc joins pool.
    assert_eq!(model.multiplicative_depth(), Ok(7));
    assert_eq!(model.multiplicative_depth_merged(), Ok(6));
    let profile = model.depth_profile(false).expect("profile");
    let depths: Vec<u32> = profile.iter().map(|d| d.depth).collect();
    assert_eq!(depths, [1, 2, 3, 5, 5, 6, 6, 7]);
}

/// The CKKS library's plaintext value of Chebyshev coefficients on [-2, 3].
fn ckks_cheb(coeffs: &[f64], x: f64) -> f64 {
    cipherinfer_ckks::Polynomial::chebyshev(coeffs.to_vec(), -2.0, 3.0)
        .expect("p")
        .evaluate(x)
}

#[test]
fn json_form_is_readable_and_checked_on_the_way_back() {
    let model = graph_with_batchnorms().fold_batchnorm().expect("folds");
    let json = serde_json::to_value(&model).expect("serializes");
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["input"]["shape"], serde_json::json!([3, 8, 8]));
    assert_eq!(json["nodes"][0]["op"]["kind"], "conv2d");
    assert_eq!(json["nodes"][1]["op"]["kind"], "square");
    assert_eq!(json["output"], "fc2");
    let back: Model = serde_json::from_value(json.clone()).expect("deserializes");
    assert!(back == model);

    let mut wrong = json.clone();
    wrong["nodes"][0]["op"]["weights"]
        .as_array_mut()
        .expect("weights")
        .pop();
    let err = serde_json::from_value::<Model>(wrong).expect_err("short weights");
    assert!(err.to_string().contains("weights"), "{err}");
    let mut wrong = json.clone();
    wrong["nodes"][2]["inputs"][0] = "later".into();
    assert!(serde_json::from_value::<Model>(wrong).is_err());
    let mut wrong = json;
    wrong["format_version"] = 99.into();
    let err = serde_json::from_value::<Model>(wrong).expect_err("version");
    assert!(err.to_string().contains("format_version 99"), "{err}");

    // Nodes are plain data: a pass can take them apart and rebuild the model.
    let (name, shape, mut nodes, output) = model.clone().into_parts();
    nodes.push(Node::new("extra", Op::Square, &[output.as_str()]));
    let bigger = Model::from_nodes(name, shape, nodes, "extra").expect("rebuilds");
    assert_eq!(bigger.nodes().len(), model.nodes().len() + 1);
    assert_eq!(
        bigger.prune().expect("prunes").nodes().len(),
        bigger.nodes().len()
    );
    let (name, shape, nodes, _) = bigger.into_parts();
    let smaller = Model::from_nodes(name, shape, nodes, "fc2")
        .expect("rebuilds")
        .prune()
        .expect("prunes");
    assert!(smaller == model);
}
