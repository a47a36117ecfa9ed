//! Precision of every basic operation against plaintext arithmetic.

mod common;
use common::*;

use cipherinfer_ckks::Encryptor;

#[test]
fn encode_decode_and_encrypt_decrypt_precision() {
    for params in param_sets() {
        let mut c = ctx(params.clone(), &[], false);
        let slots = params.slots();
        let v = random_vec(slots, 1, 1.0);
        let pt = c
            .encoder
            .encode(&v, params.max_level(), params.default_scale())
            .expect("enc");
        let back = c.encoder.decode(&pt).expect("dec");
        let bits = precision_bits(&back, &v);
        assert!(
            bits > 30.0,
            "encode/decode {bits:.1} bits, n={}",
            params.n()
        );
        let ct = c.sym.encrypt(&pt).expect("sym");
        assert!(ct.is_seeded());
        let bits = precision_bits(&c.decrypt(&ct), &v);
        assert!(bits > 25.0, "symmetric {bits:.1} bits");
        let mut enc = Encryptor::new(c.pk.clone()).expect("encryptor");
        let ct = enc.encrypt(&pt).expect("pk enc");
        let bits = precision_bits(&c.decrypt(&ct), &v);
        assert!(bits > 20.0, "public-key {bits:.1} bits");
        // Complex values and every level.
        let z = random_complex(slots, 5);
        for level in 0..=params.max_level() {
            let pt = c
                .encoder
                .encode_complex(&z, level, params.default_scale())
                .expect("enc");
            let ct = c.sym.encrypt(&pt).expect("enc");
            let got = c
                .encoder
                .decode_complex(&c.dec.decrypt(&ct).expect("d"))
                .expect("d");
            let err = got
                .iter()
                .zip(&z)
                .map(|(a, b)| (a - b).norm())
                .fold(0.0, f64::max);
            assert!(err < 2f64.powi(-20), "level {level}: err {err}");
        }
    }
}

#[test]
fn multiply_relinearize_rescale_precision() {
    for params in param_sets() {
        let mut c = ctx(params.clone(), &[], false);
        let slots = params.slots();
        let a = random_vec(slots, 2, 1.0);
        let b = random_vec(slots, 3, 1.0);
        let ca = c.encrypt(&a);
        let cb = c.encrypt(&b);
        let prod = c.ev.mul_rescale(&ca, &cb).expect("mul");
        assert_eq!(prod.level(), params.max_level() - 1);
        assert_eq!(prod.depth_consumed(), 1);
        let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
        let bits = precision_bits(&c.decrypt(&prod), &want);
        eprintln!(
            "n={} mul+relin+rescale precision: {bits:.2} bits",
            params.n()
        );
        assert!(bits >= 20.0, "{bits:.1} bits");
        // The fused path equals relinearize-then-rescale.
        let unfused =
            c.ev.rescale(&c.ev.mul(&ca, &cb).expect("mul"))
                .expect("rescale");
        assert_eq!(unfused.scale(), prod.scale());
        assert!(precision_bits(&c.decrypt(&unfused), &c.decrypt(&prod)) >= 20.0);
        // A chain down to level 0.
        let mut x = ca.clone();
        let mut want = a.clone();
        while x.level() > 0 {
            x =
                c.ev.mul_rescale(&x, &c.ev.drop_to_level(&ca, x.level()).expect("drop"))
                    .expect("mul");
            want = want.iter().zip(&a).map(|(w, y)| w * y).collect();
        }
        let bits = precision_bits(&c.decrypt(&x), &want);
        assert!(bits >= 15.0, "chain {bits:.1} bits");
    }
}

#[test]
fn add_sub_negate_constants_plaintexts() {
    for params in param_sets() {
        let mut c = ctx(params.clone(), &[], false);
        let slots = params.slots();
        let a = random_vec(slots, 4, 2.0);
        let b = random_vec(slots, 5, 2.0);
        let ca = c.encrypt(&a);
        let cb = c.encrypt(&b);
        let ev = &c.ev;
        let check = |ct: &cipherinfer_ckks::Ciphertext, f: &dyn Fn(f64, f64) -> f64, what: &str| {
            let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| f(*x, *y)).collect();
            let bits = precision_bits(&c.decrypt(ct), &want);
            assert!(bits > 20.0, "{what}: {bits:.1} bits");
        };
        check(&ev.add(&ca, &cb).expect("add"), &|x, y| x + y, "add");
        check(&ev.sub(&ca, &cb).expect("sub"), &|x, y| x - y, "sub");
        check(&ev.negate(&ca).expect("neg"), &|x, _| -x, "neg");
        check(
            &ev.add_const(&ca, 1.5).expect("addc"),
            &|x, _| x + 1.5,
            "add_const",
        );
        check(
            &ev.mul_integer(&ca, -3).expect("muli"),
            &|x, _| -3.0 * x,
            "mul_integer",
        );
        let top = params.max_level();
        let s = params.default_scale();
        let pb = c.encoder.encode(&b, top, s).expect("enc");
        check(
            &ev.add_plain(&ca, &pb).expect("addp"),
            &|x, y| x + y,
            "add_plain",
        );
        check(
            &ev.sub_plain(&ca, &pb).expect("subp"),
            &|x, y| x - y,
            "sub_plain",
        );
        let pm = c
            .encoder
            .encode(&b, top, params.q_primes()[top] as f64)
            .expect("enc");
        let m = ev
            .rescale(&ev.mul_plain(&ca, &pm).expect("mulp"))
            .expect("rs");
        check(&m, &|x, y| x * y, "mul_plain");
        let m = ev.mul_const_rescale_to(&ca, 0.3, s).expect("mulc");
        assert_eq!(m.scale(), s);
        check(&m, &|x, _| 0.3 * x, "mul_const_rescale_to");
        let sq = ev.rescale(&ev.square(&ca).expect("sq")).expect("rs");
        check(&sq, &|x, _| x * x, "square");
    }
}
