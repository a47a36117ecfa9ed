//! Randomness: OS-seeded ChaCha20, uniform residues expanded from public seeds, ternary secrets
//! and discrete Gaussian errors (σ = 3.2, tail cut at 6σ).

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::params::{Parameters, SecretDistribution};

/// Standard deviation of error polynomials.
pub const SIGMA: f64 = 3.2;
/// Errors are bounded by this magnitude (6σ rounded down).
pub const ERROR_BOUND: i64 = 19;

/// A fresh 32-byte seed from the operating system.
pub fn os_seed() -> Result<[u8; 32]> {
    let mut s = [0u8; 32];
    getrandom::fill(&mut s).map_err(|e| Error::Randomness(e.to_string()))?;
    Ok(s)
}

/// A ChaCha20 generator seeded by the operating system.
pub fn os_rng() -> Result<ChaCha20Rng> {
    let mut seed = os_seed()?;
    let rng = ChaCha20Rng::from_seed(seed);
    seed.zeroize();
    Ok(rng)
}

/// Expands a public seed into a uniform polynomial over the primes `indices` (one limb each),
/// in the NTT domain (uniform there as well). `stream` separates independent polynomials drawn
/// from one seed. Deterministic: serialized objects store only the seed.
pub fn expand_uniform(
    params: &Parameters,
    seed: &[u8; 32],
    stream: u64,
    indices: &[usize],
) -> Vec<u64> {
    let n = params.n();
    let mut rng = ChaCha20Rng::from_seed(*seed);
    rng.set_stream(stream);
    let mut out = vec![0u64; n * indices.len()];
    // Each prime draws from its own offset so subsets of primes expand to the same limbs.
    for (limb, &i) in out.chunks_mut(n).zip(indices) {
        rng.set_word_pos((i as u128) << 40);
        let m = params.modulus(i);
        let p = m.value();
        let mask = u64::MAX >> (64 - m.bits());
        for x in limb.iter_mut() {
            loop {
                let v = rng.next_u64() & mask;
                if v < p {
                    *x = v;
                    break;
                }
            }
        }
    }
    out
}

/// Samples a secret polynomial's coefficients in {-1, 0, 1}.
pub fn sample_secret<R: Rng>(params: &Parameters, rng: &mut R) -> Vec<i8> {
    let n = params.n();
    match params.secret_distribution() {
        SecretDistribution::Ternary => sample_ternary(n, rng),
        SecretDistribution::SparseTernary { hamming_weight } => {
            let mut s = vec![0i8; n];
            let mut placed = 0;
            while placed < hamming_weight {
                let pos = uniform_below(rng, n as u64) as usize;
                if s[pos] == 0 {
                    s[pos] = if rng.next_u32() & 1 == 0 { 1 } else { -1 };
                    placed += 1;
                }
            }
            s
        }
    }
}

/// Uniform ternary coefficients.
pub fn sample_ternary<R: Rng>(n: usize, rng: &mut R) -> Vec<i8> {
    let mut out = Vec::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        rng.fill_bytes(&mut buf);
        for &b in &buf {
            if b < 255 && out.len() < n {
                out.push((b % 3) as i8 - 1);
            }
        }
    }
    buf.zeroize();
    out
}

fn uniform_below<R: Rng>(rng: &mut R, bound: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % bound);
    loop {
        let v = rng.next_u64();
        if v < zone {
            return v % bound;
        }
    }
}

/// Cumulative distribution table of the discrete Gaussian on [-B, B], scaled to 2^64.
fn gaussian_cdt() -> [u64; (2 * ERROR_BOUND + 1) as usize] {
    let weights: Vec<f64> = (-ERROR_BOUND..=ERROR_BOUND)
        .map(|k| (-((k * k) as f64) / (2.0 * SIGMA * SIGMA)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut table = [0u64; (2 * ERROR_BOUND + 1) as usize];
    let mut acc = 0.0;
    for (t, w) in table.iter_mut().zip(&weights) {
        acc += w / total;
        *t = if acc >= 1.0 {
            u64::MAX
        } else {
            (acc * 2f64.powi(64)) as u64
        };
    }
    table[table.len() - 1] = u64::MAX;
    table
}

/// Discrete Gaussian error coefficients (σ = 3.2), sampled by a full scan of the table so the
/// time taken does not depend on the value drawn.
pub fn sample_gaussian<R: Rng>(n: usize, rng: &mut R) -> Vec<i64> {
    let table = gaussian_cdt();
    (0..n)
        .map(|_| {
            let u = rng.next_u64();
            let below: i64 = table.iter().map(|&t| (u >= t) as i64).sum();
            (below - ERROR_BOUND).min(ERROR_BOUND)
        })
        .collect()
}

/// Converts small signed coefficients to an NTT-domain RNS polynomial over `indices`.
pub fn small_to_ntt(params: &Parameters, coeffs: &[i64], indices: &[usize]) -> Vec<u64> {
    let n = params.n();
    let mut out = vec![0u64; n * indices.len()];
    for (limb, &i) in out.chunks_mut(n).zip(indices) {
        let m = params.modulus(i);
        for (x, &c) in limb.iter_mut().zip(coeffs) {
            *x = m.reduce_i64(c);
        }
    }
    crate::ring::ntt(params, &mut out, indices);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_has_expected_moments_and_bound() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let e = sample_gaussian(1 << 18, &mut rng);
        let mean = e.iter().sum::<i64>() as f64 / e.len() as f64;
        let var = e.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / e.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var.sqrt() - SIGMA).abs() < 0.05, "sigma {}", var.sqrt());
        assert!(e.iter().all(|x| x.abs() <= ERROR_BOUND));
    }

    #[test]
    fn ternary_is_balanced() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let t = sample_ternary(90_000, &mut rng);
        for v in [-1i8, 0, 1] {
            let c = t.iter().filter(|&&x| x == v).count();
            assert!((c as i64 - 30_000).abs() < 800, "{v}: {c}");
        }
    }
}
