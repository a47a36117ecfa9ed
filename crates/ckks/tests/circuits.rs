//! Linear transforms and polynomial evaluation against their plaintext counterparts.

mod common;
use common::*;

use cipherinfer_ckks::{LinearTransform, Polynomial};

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
            let want = lt.apply_plain(&v);
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
        let reference = dense.apply_plain(&v);
        assert!(precision_bits(&reference[..24], &direct) > 40.0);
        assert!(reference[24..].iter().all(|&x| x == 0.0));
    }
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
        ];
        for (name, p) in polys {
            if p.depth() > ct.level() {
                continue;
            }
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
