//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use cipherinfer_ckks::{
    Ciphertext, Complex64, Decryptor, Encoder, EvaluationKeys, Evaluator, KeyGenerator, Parameters,
    ParametersLiteral, Preset, PublicKey, SymmetricEncryptor, secret_key_pair,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// INSECURE small ring for fast tests: N = 2^10, Q = [50, 40×4], P = [50, 50], dnum 3.
pub fn small_insecure() -> Arc<Parameters> {
    let lit: ParametersLiteral = serde_json::from_str(
        r#"{"log_n":10,"log_q":[50,40,40,40,40],"log_p":[50,50],"log_scale":40,"dnum":3}"#,
    )
    .expect("literal");
    lit.build_insecure_for_tests()
        .expect("insecure test parameters")
}

/// The parameter sets most tests loop over: a small insecure ring (always) and, for the
/// precision claims, the real N = 2^14 preset.
pub fn param_sets() -> Vec<Arc<Parameters>> {
    vec![
        small_insecure(),
        Preset::Pn14Depth7.build().expect("preset"),
    ]
}

/// Everything a test needs for one parameter set.
pub struct Ctx {
    pub params: Arc<Parameters>,
    pub encoder: Encoder,
    pub sym: SymmetricEncryptor,
    pub dec: Decryptor,
    pub pk: PublicKey,
    pub ev: Evaluator,
}

pub fn ctx(params: Arc<Parameters>, steps: &[i64], conj: bool) -> Ctx {
    let mut kg = KeyGenerator::new(params.clone()).expect("keygen");
    let sk = kg.secret_key();
    let pk = kg.public_key(&sk).expect("pk");
    let keys: EvaluationKeys = kg.evaluation_keys(&sk, true, steps, conj).expect("keys");
    let (sym, dec) = secret_key_pair(sk).expect("secret key");
    Ctx {
        encoder: Encoder::new(params.clone()),
        sym,
        dec,
        pk,
        ev: Evaluator::new(keys),
        params,
    }
}

pub fn random_vec(n: usize, seed: u64, bound: f64) -> Vec<f64> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (rng.next_u64() as f64 / u64::MAX as f64 * 2.0 - 1.0) * bound)
        .collect()
}

pub fn random_complex(n: usize, seed: u64) -> Vec<Complex64> {
    let re = random_vec(n, seed, 1.0);
    let im = random_vec(n, seed + 1000, 1.0);
    re.into_iter()
        .zip(im)
        .map(|(a, b)| Complex64::new(a, b))
        .collect()
}

impl Ctx {
    pub fn encrypt(&mut self, v: &[f64]) -> Ciphertext {
        let pt = self
            .encoder
            .encode(v, self.params.max_level(), self.params.default_scale())
            .expect("encode");
        self.sym.encrypt(&pt).expect("encrypt")
    }
    pub fn decrypt(&self, ct: &Ciphertext) -> Vec<f64> {
        self.encoder
            .decode(&self.dec.decrypt(ct).expect("decrypt"))
            .expect("decode")
    }
}

/// Precision in bits: -log2 of the largest absolute error.
pub fn precision_bits(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let err = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);
    -(err.max(f64::MIN_POSITIVE)).log2()
}
