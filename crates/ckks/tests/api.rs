//! API guarantees: typed errors instead of panics, configurable key-switching digits,
//! sharing one evaluator across threads, sparse secrets, documented preset depths.

mod common;
use common::*;

use cipherinfer_ckks::{
    Encoder, Error, Evaluator, KeyGenerator, ParametersLiteral, Preset, SecretDistribution,
};

#[test]
fn mismatches_are_typed_errors() {
    let params = small_insecure();
    let mut c = ctx(params.clone(), &[], false);
    let v = random_vec(params.slots(), 1, 1.0);
    let a = c.encrypt(&v);
    let b = c.ev.mul_rescale(&a, &a).expect("mul");
    assert!(matches!(c.ev.add(&a, &b), Err(Error::LevelMismatch { .. })));
    let a_low = c.ev.drop_to_level(&a, b.level()).expect("drop");
    let scaled = c.ev.mul_const(&a_low, 1.0, 4.0).expect("mul const");
    assert!(matches!(
        c.ev.add(&scaled, &b),
        Err(Error::ScaleMismatch { .. })
    ));
    // Down to level 0, then no further rescale.
    let mut x = a.clone();
    while x.level() > 0 {
        x = c.ev.drop_to_level(&x, x.level() - 1).expect("drop");
    }
    assert!(matches!(c.ev.rescale(&x), Err(Error::OutOfLevels)));
    assert!(matches!(c.ev.mul_rescale(&x, &x), Err(Error::OutOfLevels)));
    assert!(matches!(
        c.ev.drop_to_level(&x, 3),
        Err(Error::InvalidLevel { .. })
    ));
    // A degree-2 ciphertext cannot be rotated or multiplied again before relinearization.
    let d = c.ev.mul_no_relin(&a, &a).expect("tensor");
    assert!(matches!(
        c.ev.mul_no_relin(&d, &a),
        Err(Error::CiphertextDegree { .. })
    ));
    // Objects from another parameter set are refused.
    let other = ctx(Preset::Pn13Depth4.build().expect("p"), &[], false);
    let err = other.ev.add(&a, &a).expect_err("foreign ciphertext");
    assert_eq!(err.code(), "parameter_mismatch");
    assert!(other.dec.decrypt(&a).is_err());
    // Encoding limits.
    let too_long = vec![0.0; params.slots() + 1];
    assert!(
        c.encoder
            .encode(&too_long, 0, params.default_scale())
            .is_err()
    );
    assert!(
        c.encoder
            .encode(&[f64::NAN], 0, params.default_scale())
            .is_err()
    );
    assert!(
        c.encoder
            .encode(&[1.0], params.max_level() + 1, params.default_scale())
            .is_err()
    );
    assert!(c.encoder.encode(&[1.0], 0, 2f64.powi(80)).is_err());
    assert!(
        c.encoder
            .encode(&[1e30], 0, params.default_scale())
            .is_err()
    );
    // Results of errors never contain key material: messages are short and structural.
    assert!(err.to_string().len() < 200);
}

#[test]
fn every_digit_count_switches_keys_correctly() {
    // INSECURE small ring: 6 ciphertext primes, 3 special primes; valid dnum: 2, 3, 6.
    let mut tested = Vec::new();
    for dnum in 1..=6usize {
        let lit: ParametersLiteral = serde_json::from_str(&format!(
            r#"{{"log_n":10,"log_q":[45,36,36,36,36,36],"log_p":[45,45,45],"log_scale":36,"dnum":{dnum}}}"#
        ))
        .expect("literal");
        let Ok(params) = lit.build_insecure_for_tests() else {
            // dnum 1 (one 225-bit digit against a 135-bit P) would destroy precision, and
            // dnum 4 or 5 (digits of 2 primes) would leave an empty digit: all refused.
            assert!(
                matches!(dnum, 1 | 4 | 5),
                "dnum {dnum} unexpectedly rejected"
            );
            continue;
        };
        assert_eq!(params.dnum(), dnum);
        tested.push(dnum);
        let mut c = ctx(params.clone(), &[3], false);
        let v = random_vec(params.slots(), 9, 1.0);
        let ct = c.encrypt(&v);
        let sq = c.ev.mul_rescale(&ct, &ct).expect("mul");
        let r = c.ev.rotate(&sq, 3).expect("rotate");
        let n = v.len();
        let want: Vec<f64> = (0..n).map(|i| v[(i + 3) % n] * v[(i + 3) % n]).collect();
        let bits = precision_bits(&c.decrypt(&r), &want);
        assert!(bits > 20.0, "dnum {dnum}: {bits:.1} bits");
    }
    assert_eq!(tested, vec![2, 3, 6]);
}

#[test]
fn one_evaluator_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Evaluator>();
    assert_send_sync::<Encoder>();
    assert_send_sync::<cipherinfer_ckks::Parameters>();
    let params = small_insecure();
    let mut c = ctx(params.clone(), &[1], false);
    let inputs: Vec<Vec<f64>> = (0..4)
        .map(|i| random_vec(params.slots(), 50 + i, 1.0))
        .collect();
    let cts: Vec<_> = inputs.iter().map(|v| c.encrypt(v)).collect();
    let ev = &c.ev;
    let outs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = cts
            .iter()
            .map(|ct| {
                s.spawn(move || {
                    ev.rotate(&ev.mul_rescale(ct, ct).expect("mul"), 1)
                        .expect("rot")
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for (v, out) in inputs.iter().zip(&outs) {
        let n = v.len();
        let want: Vec<f64> = (0..n).map(|i| v[(i + 1) % n].powi(2)).collect();
        assert!(precision_bits(&c.decrypt(out), &want) > 20.0);
    }
}

#[test]
fn sparse_secret_works_and_weak_weight_is_refused() {
    let mut lit = Preset::Pn13Depth4.literal();
    lit.secret = SecretDistribution::SparseTernary {
        hamming_weight: 192,
    };
    let params = lit.build().expect("h = 192 is accepted");
    let mut c = ctx(params.clone(), &[], false);
    let v = random_vec(params.slots(), 3, 1.0);
    let ct = c.encrypt(&v);
    let sq = c.ev.mul_rescale(&ct, &ct).expect("mul");
    let want: Vec<f64> = v.iter().map(|x| x * x).collect();
    assert!(precision_bits(&c.decrypt(&sq), &want) > 12.0);
    lit.secret = SecretDistribution::SparseTernary {
        hamming_weight: 100,
    };
    assert!(lit.build().is_err());
}

#[test]
fn presets_offer_their_documented_depth() {
    // (preset, depth): the number of multiply-rescale steps a fresh ciphertext supports.
    for (preset, depth) in [(Preset::Pn13Depth4, 4usize), (Preset::Pn14Depth7, 7)] {
        let params = preset.build().expect("preset");
        assert_eq!(params.max_level(), depth);
        let mut kg = KeyGenerator::new(params.clone()).expect("kg");
        let sk = kg.secret_key();
        let keys = kg.evaluation_keys(&sk, true, &[], false).expect("keys");
        let ev = Evaluator::new(keys);
        let enc = Encoder::new(params.clone());
        let (mut sym, dec) = cipherinfer_ckks::secret_key_pair(sk).expect("secret key");
        let v = random_vec(params.slots(), 8, 1.0);
        let mut ct = sym
            .encrypt(&enc.encode(&v, depth, params.default_scale()).expect("enc"))
            .expect("enc");
        let one = ct.clone();
        let mut want = v.clone();
        for _ in 0..depth {
            let o = ev.drop_to_level(&one, ct.level()).expect("drop");
            ct = ev.mul_rescale(&ct, &o).expect("mul");
            want = want.iter().zip(&v).map(|(a, b)| a * b).collect();
        }
        assert_eq!(ct.level(), 0);
        assert_eq!(ct.depth_consumed(), depth);
        let got = enc.decode(&dec.decrypt(&ct).expect("dec")).expect("decode");
        let bits = precision_bits(&got, &want);
        assert!(
            bits > 10.0,
            "{preset:?}: {bits:.1} bits after {depth} products"
        );
    }
}

#[test]
fn presets_round_trip_through_their_names() {
    for preset in Preset::ALL {
        assert_eq!(Preset::from_name(preset.name()).expect("known"), preset);
        assert_eq!(
            Preset::from_name(&preset.name().to_lowercase()).expect("case-insensitive"),
            preset
        );
    }
    let err = Preset::from_name("PN12_DEPTH99").expect_err("unknown");
    assert_eq!(err.code(), "invalid_parameters");
    assert!(err.to_string().contains("PN13_DEPTH5"), "{err}");
}
