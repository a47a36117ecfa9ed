//! Linear transforms and polynomial evaluation against their plaintext counterparts.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use cipherinfer_ckks::{Error, LinearTransform, MaskEncoding, Polynomial};

#[test]
fn linear_transform_equals_plaintext_matrix_vector_product() {
    for params in param_sets() {
        let slots = params.slots();
        // A dense 24x40 matrix on the first 40 slots, plus a banded full-size transform.
        let rows: Vec<Vec<f64>> = (0..24).map(|i| random_vec(40, 100 + i, 0.5)).collect();
        let dense = LinearTransform::from_matrix(&rows, slots).expect("matrix");
        let mut diags = std::collections::BTreeMap::new();
        for (t, k) in [0usize, 1, 2, 7, 64, slots - 3].into_iter().enumerate() {
            diags.insert(k, random_vec(slots, 200 + t as u64, 1.0));
        }
        let banded = LinearTransform::new(slots, diags).expect("diags");
        let mut steps = dense.rotation_steps();
        steps.extend(banded.rotation_steps());
        let mut c = ctx(params.clone(), &steps, false);
        let v = random_vec(slots, 300, 1.0);
        let ct = c.encrypt(&v);
        let level = ct.level();
        let q = params.q_primes()[level] as f64;
        for (name, lt) in [("dense", &dense), ("banded", &banded)] {
            let enc = lt.encode(&c.encoder, level, q).expect("encode");
            let out = c.ev.linear_transform(&ct, &enc).expect("apply");
            assert_eq!(out.level(), level - 1);
            assert!(
                (out.scale() / ct.scale() - 1.0).abs() < 1e-9,
                "scale preserved"
            );
            let want = lt.apply_plain(&v).expect("plain");
            let bits = precision_bits(&c.decrypt(&out), &want);
            eprintln!(
                "n={} {name}: {} diagonals, {} rotations, {bits:.1} bits",
                params.n(),
                lt.num_diagonals(),
                lt.rotation_steps().len()
            );
            assert!(bits > 17.0, "{name}: {bits:.1} bits");
        }
        // Check the dense reference itself against a direct product.
        let direct: Vec<f64> = rows
            .iter()
            .map(|r| r.iter().zip(&v).map(|(a, b)| a * b).sum())
            .collect();
        let reference = dense.apply_plain(&v).expect("plain");
        assert!(precision_bits(&reference[..24], &direct) > 40.0);
        assert!(reference[24..].iter().all(|&x| x == 0.0));
    }
}

/// A 2-input, 3-output block transform over a quarter of the slots, run on four interleaved
/// vectors at once (batch mode), with masks encoded ahead and on use: every output of every
/// vector matches the plaintext product, and both encodings give the same ciphertext values.
#[test]
fn block_transform_in_batch_mode_equals_plaintext_blocks() {
    for params in param_sets() {
        let batch = 4;
        let slots = params.slots() / batch;
        let mut blocks = BTreeMap::new();
        for (t, (o, i, k)) in [
            (0, 0, 0usize),
            (0, 1, 3),
            (1, 0, 1),
            (1, 1, 9),
            (1, 1, slots - 2),
        ]
        .into_iter()
        .enumerate()
        {
            let d: &mut BTreeMap<usize, Vec<f64>> = blocks.entry((o, i)).or_default();
            d.insert(k, random_vec(slots, 400 + t as u64, 1.0));
        }
        // Output 2 has no block: it must come out as zeros.
        let lt = LinearTransform::from_blocks(slots, 2, 3, blocks).expect("blocks");
        let steps: Vec<i64> = lt
            .rotation_steps()
            .iter()
            .map(|s| s * batch as i64)
            .collect();
        let mut c = ctx(params.clone(), &steps, false);
        let vectors: Vec<Vec<Vec<f64>>> = (0..batch)
            .map(|b| {
                (0..2)
                    .map(|i| random_vec(slots, 500 + 10 * b as u64 + i, 1.0))
                    .collect()
            })
            .collect();
        // Input i interleaves vector b's slot s at s·batch + b.
        let cts: Vec<_> = (0..2)
            .map(|i| {
                let mut v = vec![0.0; params.slots()];
                for (b, vs) in vectors.iter().enumerate() {
                    for (s, x) in vs[i].iter().enumerate() {
                        v[s * batch + b] = *x;
                    }
                }
                c.encrypt(&v)
            })
            .collect();
        let level = cts[0].level();
        let q = params.q_primes()[level] as f64;
        let mut results = Vec::new();
        for masks in [MaskEncoding::Ahead, MaskEncoding::OnUse] {
            let enc = lt.encode_with(&c.encoder, level, q, masks).expect("encode");
            assert_eq!((enc.inputs(), enc.outputs(), enc.batch()), (2, 3, batch));
            let out =
                c.ev.linear_transform_blocks(&cts, &enc, None)
                    .expect("apply");
            assert_eq!(out.len(), 3);
            let decrypted: Vec<Vec<f64>> = out.iter().map(|ct| c.decrypt(ct)).collect();
            for (b, vs) in vectors.iter().enumerate() {
                let want = lt.apply_plain_blocks(vs).expect("plain");
                for (o, w) in want.iter().enumerate() {
                    let got: Vec<f64> = (0..slots).map(|s| decrypted[o][s * batch + b]).collect();
                    let bits = precision_bits(&got, w);
                    assert!(
                        bits > 17.0,
                        "{masks:?} vector {b} output {o}: {bits:.1} bits"
                    );
                }
            }
            assert!(want_zero(&decrypted[2]), "output without blocks is zero");
            results.push(decrypted);
        }
        let bits = precision_bits(&results[0][1], &results[1][1]);
        assert!(bits > 20.0, "ahead vs on-use: {bits:.1} bits");
    }
}

fn want_zero(v: &[f64]) -> bool {
    v.iter().all(|x| x.abs() < 1e-4)
}

/// Malformed transforms and mismatched inputs are typed errors, and a set cancel flag stops
/// the evaluation.
#[test]
fn block_transform_rejects_bad_shapes_levels_and_stops_on_cancel() {
    let params = small_insecure();
    let slots = params.slots();
    let diag = |k: usize| BTreeMap::from([(k, vec![1.0; slots])]);
    assert!(
        LinearTransform::from_blocks(slots, 1, 1, BTreeMap::from([((1, 0), diag(0))])).is_err()
    );
    assert!(LinearTransform::from_blocks(slots, 0, 1, BTreeMap::new()).is_err());
    assert!(
        LinearTransform::new(slots, diag(slots)).is_err(),
        "index out of range"
    );
    assert!(LinearTransform::new(slots, BTreeMap::from([(1, vec![f64::NAN; slots])])).is_err());
    assert!(LinearTransform::new(slots, BTreeMap::from([(1, vec![1.0; slots - 1])])).is_err());
    assert!(
        LinearTransform::new(slots - 1, diag(0)).is_err(),
        "not a power of two"
    );
    let lt = LinearTransform::from_blocks(
        slots,
        2,
        1,
        BTreeMap::from([((0, 0), diag(1)), ((0, 1), diag(2))]),
    )
    .expect("transform");
    assert!(lt.apply_plain(&[1.0]).is_err(), "two inputs, one given");
    let mut c = ctx(params.clone(), &lt.rotation_steps(), false);
    let ct = c.encrypt(&random_vec(slots, 7, 1.0));
    let level = ct.level();
    let enc = lt
        .encode(&c.encoder, level, params.q_primes()[level] as f64)
        .expect("encode");
    assert!(
        c.ev.linear_transform_blocks(std::slice::from_ref(&ct), &enc, None)
            .is_err()
    );
    assert!(
        c.ev.linear_transform(&ct, &enc).is_err(),
        "1 → 1 entry point on a 2-input transform"
    );
    let lower = c.ev.drop_to_level(&ct, level - 1).expect("drop");
    assert!(matches!(
        c.ev.linear_transform_blocks(&[lower.clone(), lower], &enc, None),
        Err(Error::LevelMismatch { .. })
    ));
    let cancel = AtomicBool::new(true);
    assert!(matches!(
        c.ev.linear_transform_blocks(&[ct.clone(), ct], &enc, Some(&cancel)),
        Err(Error::Cancelled)
    ));
}

#[test]
fn double_hoisted_rotation_sums_equal_one_by_one_rotations() {
    for params in param_sets() {
        let slots = params.slots();
        let steps = [0i64, 1, 5, 28, -3, 117];
        let mut c = ctx(params.clone(), &steps, false);
        let v = random_vec(slots, 500, 1.0);
        let ct = c.encrypt(&v);
        let level = ct.level();
        let scale = params.q_primes()[level] as f64;
        let masks: Vec<Vec<f64>> = (0..steps.len())
            .map(|t| random_vec(slots, 600 + t as u64, 1.0))
            .collect();
        let ext: Vec<_> = masks
            .iter()
            .map(|m| c.encoder.encode_extended(m, level, scale).expect("encode"))
            .collect();
        let terms: Vec<(i64, &cipherinfer_ckks::ExtendedPlaintext)> =
            steps.iter().copied().zip(ext.iter()).collect();
        let combined =
            c.ev.rescale(&c.ev.rotate_and_combine(&ct, None, &terms).expect("combine"))
                .expect("rs");
        let n = slots as i64;
        let want: Vec<f64> = (0..slots)
            .map(|i| {
                steps
                    .iter()
                    .zip(&masks)
                    .map(|(&s, m)| m[i] * v[(i as i64 + s).rem_euclid(n) as usize])
                    .sum()
            })
            .collect();
        let bits = precision_bits(&c.decrypt(&combined), &want);
        eprintln!("n={} rotate_and_combine: {bits:.1} bits", params.n());
        assert!(bits > 20.0, "{bits:.1} bits");
        // Only the identity term: no key switch at all, still exact.
        let identity =
            c.ev.rotate_and_combine(&ct, None, &[(0, &ext[0])])
                .expect("identity");
        let want0: Vec<f64> = v.iter().zip(&masks[0]).map(|(a, b)| a * b).collect();
        assert!(precision_bits(&c.decrypt(&c.ev.rescale(&identity).expect("rs")), &want0) > 20.0);
        // Prepared rotations serve several combinations; an empty one is an error.
        let rots = c.ev.rotations_extended(&ct, None, &steps).expect("prepare");
        let again = c.ev.combine_rotations(&rots, &terms).expect("combine");
        assert!(precision_bits(&c.decrypt(&c.ev.rescale(&again).expect("rs")), &want) > 20.0);
        assert!(c.ev.combine_rotations(&rots, &[]).is_err());
        // Missing key and level mismatch are typed errors.
        let other = c
            .encoder
            .encode_extended(&masks[0], level - 1, scale)
            .expect("encode");
        assert!(c.ev.rotate_and_combine(&ct, None, &[(1, &other)]).is_err());
        assert!(c.ev.rotate_and_combine(&ct, None, &[(2, &ext[0])]).is_err());
    }
}

#[test]
fn polynomial_evaluation_equals_plaintext_polynomial() {
    for params in param_sets() {
        let mut c = ctx(params.clone(), &[], false);
        let slots = params.slots();
        let v = random_vec(slots, 400, 1.0);
        let ct = c.encrypt(&v);
        let polys = vec![
            (
                "x^2+x+0.5",
                Polynomial::monomial(vec![0.5, 1.0, 1.0]).expect("p"),
            ),
            (
                "cubic",
                Polynomial::monomial(vec![0.1, -0.3, 0.2, 0.7]).expect("p"),
            ),
            (
                "cheb deg 7 [-1,1]",
                Polynomial::chebyshev(vec![0.2, 0.5, -0.1, 0.3, 0.05, -0.2, 0.1, 0.15], -1.0, 1.0)
                    .expect("p"),
            ),
            (
                "relu approx deg 6 [-2,2]",
                Polynomial::chebyshev_interpolate(|x| x.max(0.0), 6, -2.0, 2.0).expect("p"),
            ),
            (
                "monomial deg 5 (3 levels, not 4)",
                Polynomial::monomial(vec![0.1, 0.5, 0.0, -0.3, 0.0, 0.2]).expect("p"),
            ),
            (
                "relu approx deg 63 [-1,1]",
                Polynomial::chebyshev_interpolate(|x| x.max(0.0), 63, -1.0, 1.0).expect("p"),
            ),
            (
                "relu approx deg 127 [-1,1] (7 levels)",
                Polynomial::chebyshev_interpolate(|x| x.max(0.0), 127, -1.0, 1.0).expect("p"),
            ),
            (
                "odd sign approx deg 31 [-1,1]",
                Polynomial::chebyshev_interpolate(|x| (8.0 * x).tanh(), 31, -1.0, 1.0).expect("p"),
            ),
        ];
        for (name, p) in polys {
            if p.depth() > ct.level() {
                continue;
            }
            let bound = (usize::BITS - (p.degree() - 1).leading_zeros()) as usize + 1;
            assert!(p.depth() <= bound, "{name}: depth {} > {bound}", p.depth());
            let out = c.ev.evaluate_polynomial(&ct, &p, None).expect("eval");
            assert_eq!(
                out.level(),
                ct.level() - p.depth(),
                "{name}: depth reported"
            );
            assert_eq!(out.scale(), ct.scale());
            let want: Vec<f64> = v.iter().map(|&x| p.evaluate(x)).collect();
            let bits = precision_bits(&c.decrypt(&out), &want);
            eprintln!(
                "n={} {name}: depth {}, {bits:.1} bits",
                params.n(),
                p.depth()
            );
            assert!(bits > 15.0, "{name}: {bits:.1} bits");
        }
        // Too deep for the remaining levels: a typed error, not a panic.
        let deep = Polynomial::chebyshev_interpolate(|x| x.tanh(), 255, -1.0, 1.0).expect("p");
        assert!(c.ev.evaluate_polynomial(&ct, &deep, None).is_err());
    }
}

#[test]
fn chebyshev_interpolation_is_accurate_in_plaintext() {
    let p = Polynomial::chebyshev_interpolate(|x| x.exp(), 12, -1.0, 2.0).expect("p");
    for i in 0..50 {
        let x = -1.0 + 3.0 * i as f64 / 49.0;
        assert!((p.evaluate(x) - x.exp()).abs() < 1e-9);
    }
}
