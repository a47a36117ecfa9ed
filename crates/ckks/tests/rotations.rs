//! Rotations by random steps, hoisting, conjugation and slot sums against plaintext.

mod common;
use common::*;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

fn rotated(v: &[f64], k: i64) -> Vec<f64> {
    let n = v.len() as i64;
    (0..n).map(|i| v[(i + k).rem_euclid(n) as usize]).collect()
}

#[test]
fn rotations_by_random_steps_and_hoisting() {
    let mut sets = param_sets();
    sets.push(
        cipherinfer_ckks::Preset::Pn14SealChain
            .build()
            .expect("preset"),
    );
    for params in sets {
        // The SEAL-compatible chain has P (58 bits) below its first prime (60 bits), so its
        // key switching is noisier (about 22 bits; SEAL itself reaches about 18 there).
        let min_bits = if params.dnum() == 9 { 20.0 } else { 24.0 };
        let slots = params.slots() as i64;
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let mut steps: Vec<i64> = (0..6)
            .map(|_| (rng.next_u64() % slots as u64) as i64)
            .collect();
        steps.extend([1, -1, -5, slots - 1]);
        let mut c = ctx(params.clone(), &steps, false);
        let v = random_vec(slots as usize, 12, 1.0);
        let ct = c.encrypt(&v);
        let mut one_by_one = Vec::new();
        for &k in &steps {
            let r = c.ev.rotate(&ct, k).expect("rotate");
            let got = c.decrypt(&r);
            let bits = precision_bits(&got, &rotated(&v, k));
            eprintln!("n={} rotate {k}: {bits:.2} bits", params.n());
            assert!(bits > min_bits, "rotate {k}: {bits:.1} bits");
            one_by_one.push(got);
        }
        let hoisted = c.ev.rotate_hoisted(&ct, &steps).expect("hoisted");
        for ((h, o), &k) in hoisted.iter().zip(&one_by_one).zip(&steps) {
            let got = c.decrypt(h);
            assert!(precision_bits(&got, &rotated(&v, k)) > min_bits);
            assert!(
                precision_bits(&got, o) > min_bits,
                "hoisted differs from one-by-one at {k}"
            );
        }
        // Rotation at a lower level, after a multiplication.
        let sq = c.ev.mul_rescale(&ct, &ct).expect("sq");
        let r = c.ev.rotate(&sq, 1).expect("rot");
        let want: Vec<f64> = rotated(&v, 1).iter().map(|x| x * x).collect();
        assert!(precision_bits(&c.decrypt(&r), &want) > min_bits);
        // A missing key is a typed error.
        let err = c.ev.rotate(&ct, 2).expect_err("no key for 2");
        assert_eq!(err.code(), "missing_key");
    }
}

#[test]
fn conjugation_and_slot_sums() {
    let params = small_insecure();
    let steps = cipherinfer_ckks::Evaluator::sum_slots_steps(64);
    let mut c = ctx(params.clone(), &steps, true);
    let z = random_complex(params.slots(), 21);
    let pt = c
        .encoder
        .encode_complex(&z, params.max_level(), params.default_scale())
        .expect("enc");
    let ct = c.sym.encrypt(&pt).expect("enc");
    let cj = c.ev.conjugate(&ct).expect("conj");
    let got = c
        .encoder
        .decode_complex(&c.dec.decrypt(&cj).expect("d"))
        .expect("d");
    let err = got
        .iter()
        .zip(&z)
        .map(|(a, b)| (a - b.conj()).norm())
        .fold(0.0, f64::max);
    assert!(err < 2f64.powi(-20), "conjugate err {err}");

    let v = random_vec(params.slots(), 22, 1.0);
    let ct = c.encrypt(&v);
    let s = c.ev.sum_slots(&ct, 64).expect("sum");
    let n = v.len();
    let want: Vec<f64> = (0..n)
        .map(|j| (0..64).map(|i| v[(j + i) % n]).sum())
        .collect();
    let bits = precision_bits(&c.decrypt(&s), &want);
    assert!(bits > 18.0, "sum_slots {bits:.1} bits");
}

/// With keys for powers of two only, every other step is composed of its set bits: single,
/// hoisted and double-hoisted (linear transform) rotations all agree with plaintext, and a step
/// whose parts lack a key is a typed error.
#[test]
fn rotations_composed_of_power_of_two_keys() {
    use cipherinfer_ckks::{LinearTransform, power_of_two_parts};
    let params = small_insecure();
    let slots = params.slots();
    let powers: Vec<i64> = (0..slots.trailing_zeros()).map(|b| 1i64 << b).collect();
    let mut c = ctx(params.clone(), &powers, false);
    let v = random_vec(slots, 21, 1.0);
    let ct = c.encrypt(&v);
    let steps = [3i64, 5, 7, slots as i64 - 1, -6, 100];
    assert_eq!(
        power_of_two_parts(-6, slots),
        power_of_two_parts(slots as i64 - 6, slots)
    );
    assert_eq!(power_of_two_parts(7, slots), vec![1, 2, 4]);
    for &k in &steps {
        assert!(c.ev.can_rotate_at(k, ct.level()));
        let got = c.decrypt(&c.ev.rotate(&ct, k).expect("composed rotation"));
        let bits = precision_bits(&got, &rotated(&v, k));
        assert!(bits > 20.0, "composed rotate {k}: {bits:.1} bits");
    }
    for (h, &k) in
        c.ev.rotate_hoisted(&ct, &steps)
            .expect("hoisted")
            .iter()
            .zip(&steps)
    {
        assert!(
            precision_bits(&c.decrypt(h), &rotated(&v, k)) > 20.0,
            "hoisted {k}"
        );
    }
    // A banded transform whose baby and giant steps are not powers of two.
    let mut diags = std::collections::BTreeMap::new();
    for (t, k) in [0usize, 3, 5, 6, 13, 27, 45].into_iter().enumerate() {
        diags.insert(k, random_vec(slots, 40 + t as u64, 1.0));
    }
    let lt = LinearTransform::new(slots, diags).expect("diagonals");
    assert!(lt.rotation_steps().iter().any(|s| !powers.contains(s)));
    let level = ct.level();
    let enc = lt
        .encode(&c.encoder, level, params.q_primes()[level] as f64)
        .expect("encode");
    let out =
        c.ev.linear_transform(&ct, &enc)
            .expect("composed transform");
    let want = lt.apply_plain(&v).expect("plain");
    let bits = precision_bits(&c.decrypt(&out), &want);
    assert!(
        bits > 17.0,
        "transform with composed rotations: {bits:.1} bits"
    );

    // Without the key for 4, a step with that bit cannot be made; others still can.
    let mut partial = ctx(params.clone(), &[1, 2, 8], false);
    let ct = partial.encrypt(&v);
    assert!(!partial.ev.can_rotate(5));
    let err = partial.ev.rotate(&ct, 5).expect_err("no key for 4");
    assert_eq!(err.code(), "missing_key");
    assert!(partial.ev.rotate_hoisted(&ct, &[3, 5]).is_err());
    let got = partial.decrypt(&partial.ev.rotate(&ct, 11).expect("8 + 2 + 1"));
    assert!(precision_bits(&got, &rotated(&v, 11)) > 20.0);
}
