//! Level-aware rotation keys: a key made for the lower levels rotates there at full precision,
//! is smaller, round-trips canonically, is refused with a typed error above its level, and
//! malformed digit counts on the wire are rejected (INSECURE small ring, for speed).
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;
use common::*;

use cipherinfer_ckks::serialization::{
    FromBytes, HEADER_LEN, ToBytes, evaluation_keys_bytes, evaluation_keys_bytes_to_levels,
};
use cipherinfer_ckks::{
    DecodeErrorCode, Encoder, Error, EvaluationKeys, Evaluator, GaloisKey, KeyGenerator,
    secret_key_pair,
};

fn rotated(v: &[f64], k: usize) -> Vec<f64> {
    (0..v.len()).map(|i| v[(i + k) % v.len()]).collect()
}

fn decode_code<T>(r: cipherinfer_ckks::Result<T>) -> Option<DecodeErrorCode> {
    match r {
        Err(Error::Decode { code, .. }) => Some(code),
        _ => None,
    }
}

#[test]
fn keys_for_lower_levels_rotate_there_and_nowhere_above() {
    // Five ciphertext primes (levels 0..=4), two special primes, dnum 3: two primes a digit.
    let params = small_insecure();
    let mut kg = KeyGenerator::new(params.clone()).unwrap();
    let sk = kg.secret_key();
    // Step 3 is listed twice: the higher level wins.
    let keys = kg
        .evaluation_keys_to_levels(&sk, true, &[(1, 1), (3, 2), (3, 0), (5, 4)], false)
        .unwrap();
    let full = kg.evaluation_keys(&sk, true, &[1, 3, 5], false).unwrap();
    let level_of = |k: &EvaluationKeys, step: i64| {
        k.galois_key(params.galois_element(step))
            .unwrap()
            .max_level()
    };
    // One digit covers levels 0 and 1, two digits levels up to 3.
    assert_eq!(
        (level_of(&keys, 1), level_of(&keys, 3), level_of(&keys, 5)),
        (1, 3, 4)
    );

    let bytes = keys.to_bytes();
    assert_eq!(bytes.len(), keys.serialized_size());
    assert_eq!(
        bytes.len(),
        evaluation_keys_bytes_to_levels(&params, &[1, 2, 4], true)
    );
    let full_bytes = full.to_bytes();
    assert_eq!(full_bytes.len(), evaluation_keys_bytes(&params, 3, true));
    assert!(bytes.len() < full_bytes.len());
    // A one-digit key over 2 + 2 primes against three digits over 5 + 2.
    let small = keys
        .galois_key(params.galois_element(1))
        .unwrap()
        .to_bytes();
    let large = full
        .galois_key(params.galois_element(1))
        .unwrap()
        .to_bytes();
    assert!(
        small.len() * 4 < large.len(),
        "{} vs {}",
        small.len(),
        large.len()
    );
    let back = EvaluationKeys::from_bytes(&params, &bytes, bytes.len()).unwrap();
    assert_eq!(back.to_bytes(), bytes, "canonical");

    let ev = Evaluator::new(back);
    assert!(ev.can_rotate_at(1, 1) && !ev.can_rotate_at(1, 2));
    assert!(ev.can_rotate_at(3, 3) && !ev.can_rotate_at(3, 4));
    assert!(ev.can_rotate_at(5, 4) && ev.can_rotate_at(2048, 4));

    let encoder = Encoder::new(params.clone());
    let (mut sym, dec) = secret_key_pair(sk).unwrap();
    let v = random_vec(params.slots(), 5, 1.0);
    let top = sym
        .encrypt(
            &encoder
                .encode(&v, params.max_level(), params.default_scale())
                .unwrap(),
        )
        .unwrap();
    let decrypt =
        |ct: &cipherinfer_ckks::Ciphertext| encoder.decode(&dec.decrypt(ct).unwrap()).unwrap();
    for (step, level) in [(1usize, 1usize), (1, 0), (3, 3), (3, 2), (5, 4), (5, 0)] {
        let low = ev.drop_to_level(&top, level).unwrap();
        let r = ev.rotate(&low, step as i64).unwrap();
        let bits = precision_bits(&decrypt(&r), &rotated(&v, step));
        assert!(bits > 24.0, "step {step} at level {level}: {bits:.1} bits");
        // The hoisted path agrees.
        let h = ev.rotate_hoisted(&low, &[step as i64]).unwrap();
        assert!(precision_bits(&decrypt(&h[0]), &rotated(&v, step)) > 24.0);
    }
    // Above its level the key is refused, by both paths, with a typed error.
    let at2 = ev.drop_to_level(&top, 2).unwrap();
    let err = ev.rotate(&at2, 1).expect_err("key for level 1 at level 2");
    assert_eq!(err.code(), "key_level");
    assert!(matches!(
        err,
        Error::KeyLevel {
            key_level: 1,
            level: 2,
            ..
        }
    ));
    assert_eq!(
        ev.rotate_hoisted(&top, &[3]).expect_err("level 4").code(),
        "key_level"
    );
    assert_eq!(
        ev.rotations_extended(&top, None, &[1])
            .expect_err("level 4")
            .code(),
        "key_level"
    );
}

#[test]
fn malformed_digit_counts_are_rejected() {
    let params = small_insecure();
    let mut kg = KeyGenerator::new(params.clone()).unwrap();
    let sk = kg.secret_key();
    let key = kg
        .galois_key_to_level(&sk, params.galois_element(1), 1)
        .unwrap();
    let bytes = key.to_bytes();
    let back = GaloisKey::from_bytes(&params, &bytes, bytes.len()).unwrap();
    assert_eq!(back.to_bytes(), bytes);
    let digits_at = HEADER_LEN + 8;
    assert_eq!(bytes[digits_at], 1);
    for (digits, want) in [
        (0u8, DecodeErrorCode::NonConformant),
        (4, DecodeErrorCode::NonConformant),
        (255, DecodeErrorCode::NonConformant),
        (2, DecodeErrorCode::Truncated),
    ] {
        let mut bad = bytes.clone();
        bad[digits_at] = digits;
        assert_eq!(
            decode_code(GaloisKey::from_bytes(&params, &bad, 1 << 30)),
            Some(want),
            "{digits} digits"
        );
    }
    assert_eq!(
        decode_code(GaloisKey::from_bytes(
            &params,
            &bytes[..bytes.len() - 1],
            1 << 30
        )),
        Some(DecodeErrorCode::Truncated)
    );

    // In a bundle: the lengths are walked from each key's digit count before decoding.
    let keys = kg
        .evaluation_keys_to_levels(&sk, false, &[(1, 1), (2, 4)], false)
        .unwrap();
    let bundle = keys.to_bytes();
    let second = HEADER_LEN + 5 + bytes.len() + HEADER_LEN + 8;
    assert_eq!(bundle[second], 3);
    for digits in [0u8, 1, 2, 4, 200] {
        let mut bad = bundle.clone();
        bad[second] = digits;
        let code = decode_code(EvaluationKeys::from_bytes(&params, &bad, 1 << 30));
        assert!(
            matches!(
                code,
                Some(DecodeErrorCode::NonConformant | DecodeErrorCode::Truncated)
            ),
            "{digits} digits: {code:?}"
        );
    }
    for cut in [HEADER_LEN + 5, bundle.len() / 2, bundle.len() - 1] {
        assert_eq!(
            decode_code(EvaluationKeys::from_bytes(&params, &bundle[..cut], 1 << 30)),
            Some(DecodeErrorCode::Truncated),
            "cut at {cut}"
        );
    }
}
