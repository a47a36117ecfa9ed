//! RNS polynomials in Z[X]/(X^N + 1): flat limb storage, NTT, automorphisms, basis conversion,
//! rescaling. A polynomial is a `Vec<u64>` of `k·N` residues; limb `j` belongs to the prime with
//! global index `indices[j]` (ciphertext primes first, then special primes).

use rayon::prelude::*;

use crate::arith::Modulus;
use crate::params::{BasisConversion, Parameters};

/// Runs `f` compiled for the best instruction set the CPU has (AVX-512, AVX2 or scalar), so
/// plain loops inside it auto-vectorize with the wide instructions.
struct Kernel<F>(F);

impl<F: FnOnce()> pulp::WithSimd for Kernel<F> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        (self.0)()
    }
}

#[inline(always)]
fn simd(f: impl FnOnce()) {
    pulp::Arch::new().dispatch(Kernel(f))
}

/// `x mod t` for `x < 2^61`, `2^17 ≤ t < 2^61`, from a floating-point quotient (off by at most
/// one, corrected without branches): vectorizes, unlike a 128-bit Barrett product.
#[inline(always)]
fn reduce_by_float(x: u64, t: u64, inv_t: f64) -> u64 {
    let q = (x as f64 * inv_t) as u64;
    let r = x.wrapping_sub(q.wrapping_mul(t)) as i64;
    let r = (r + ((t as i64) & (r >> 63))) as u64;
    r.min(r.wrapping_sub(t))
}

/// Below this many limbs·N words, per-limb work stays on the calling thread.
const PAR_THRESHOLD: usize = 1 << 14;

fn par_limbs<F>(data: &mut [u64], n: usize, indices: &[usize], f: F)
where
    F: Fn(usize, &mut [u64]) + Sync + Send,
{
    debug_assert_eq!(data.len(), n * indices.len());
    if data.len() >= PAR_THRESHOLD * 2 && rayon::current_num_threads() > 1 {
        data.par_chunks_mut(n)
            .zip(indices.par_iter())
            .for_each(|(limb, &i)| f(i, limb));
    } else {
        for (limb, &i) in data.chunks_mut(n).zip(indices) {
            f(i, limb);
        }
    }
}

/// Forward NTT of every limb.
pub(crate) fn ntt(params: &Parameters, data: &mut [u64], indices: &[usize]) {
    par_limbs(data, params.n(), indices, |i, limb| {
        params.plan(i).fwd(limb)
    });
}

/// Inverse NTT (normalized) of every limb.
pub(crate) fn intt(params: &Parameters, data: &mut [u64], indices: &[usize]) {
    par_limbs(data, params.n(), indices, |i, limb| {
        let plan = params.plan(i);
        plan.inv(limb);
        plan.normalize(limb);
    });
}

/// `a += b` limb-wise.
pub(crate) fn add_assign(params: &Parameters, a: &mut [u64], b: &[u64], indices: &[usize]) {
    let n = params.n();
    for ((la, lb), &i) in a.chunks_mut(n).zip(b.chunks(n)).zip(indices) {
        let m = params.modulus(i);
        for (x, &y) in la.iter_mut().zip(lb) {
            *x = m.add(*x, y);
        }
    }
}

/// `a -= b` limb-wise.
pub(crate) fn sub_assign(params: &Parameters, a: &mut [u64], b: &[u64], indices: &[usize]) {
    let n = params.n();
    for ((la, lb), &i) in a.chunks_mut(n).zip(b.chunks(n)).zip(indices) {
        let m = params.modulus(i);
        for (x, &y) in la.iter_mut().zip(lb) {
            *x = m.sub(*x, y);
        }
    }
}

/// `a = -a` limb-wise.
pub(crate) fn neg_assign(params: &Parameters, a: &mut [u64], indices: &[usize]) {
    let n = params.n();
    for (la, &i) in a.chunks_mut(n).zip(indices) {
        let m = params.modulus(i);
        for x in la.iter_mut() {
            *x = m.neg(*x);
        }
    }
}

/// `a ⊙= b` limb-wise (NTT domain).
pub(crate) fn mul_assign(params: &Parameters, a: &mut [u64], b: &[u64], indices: &[usize]) {
    let prod = mul(params, a, b, indices);
    a.copy_from_slice(&prod);
}

/// `out = a ⊙ b` limb-wise (NTT domain), with the SIMD multiply-accumulate on a zero
/// accumulator.
pub(crate) fn mul(params: &Parameters, a: &[u64], b: &[u64], indices: &[usize]) -> Vec<u64> {
    let mut out = vec![0u64; a.len()];
    mul_add_assign(params, &mut out, a, b, indices);
    out
}

/// `acc += a ⊙ b` limb-wise (NTT domain), with the NTT library's SIMD multiply-accumulate.
pub(crate) fn mul_add_assign(
    params: &Parameters,
    acc: &mut [u64],
    a: &[u64],
    b: &[u64],
    indices: &[usize],
) {
    let n = params.n();
    for (((lc, la), lb), &i) in acc
        .chunks_mut(n)
        .zip(a.chunks(n))
        .zip(b.chunks(n))
        .zip(indices)
    {
        params.plan(i).mul_accumulate(lc, la, lb);
    }
}

/// Multiplies every limb by a per-limb scalar given as residues (one per limb).
pub(crate) fn mul_scalar_assign(
    params: &Parameters,
    a: &mut [u64],
    scalars: &[u64],
    indices: &[usize],
) {
    let n = params.n();
    for ((la, &s), &i) in a.chunks_mut(n).zip(scalars).zip(indices) {
        let m = params.modulus(i);
        let ss = m.shoup(s);
        for x in la.iter_mut() {
            *x = m.mul_shoup(*x, s, ss);
        }
    }
}

/// Adds a per-limb scalar (residues) to every coefficient of an NTT-domain polynomial, which
/// adds that constant to the polynomial's constant term.
pub(crate) fn add_scalar_assign(
    params: &Parameters,
    a: &mut [u64],
    scalars: &[u64],
    indices: &[usize],
) {
    let n = params.n();
    for ((la, &s), &i) in a.chunks_mut(n).zip(scalars).zip(indices) {
        let m = params.modulus(i);
        for x in la.iter_mut() {
            *x = m.add(*x, s);
        }
    }
}

/// Applies an NTT-domain permutation (automorphism) to every limb: `out[k] = a[perm[k]]`.
pub(crate) fn permute(a: &[u64], perm: &[u32], n: usize) -> Vec<u64> {
    let mut out = vec![0u64; a.len()];
    for (lo, la) in out.chunks_mut(n).zip(a.chunks(n)) {
        for (o, &p) in lo.iter_mut().zip(perm) {
            *o = la[p as usize];
        }
    }
    out
}

/// Exact, centered basis conversion of coefficient-domain limbs (`src`, one per `conv.from`
/// prime, value x mod B) to coefficient-domain limbs for every `conv.to` prime (`dst`, one limb
/// per target): the result represents the centered remainder of x mod B, in (-B/2, B/2].
///
/// The fast (HPS) conversion `Σ y_i·(B/b_i)` overshoots by `u·B` with `u = Σ y_i/b_i`; `u` is
/// found by rounding that sum in floating point and subtracted. Centering matters: a biased
/// remainder adds a low-frequency error that concentrates in a few slots.
pub(crate) fn convert_basis(
    params: &Parameters,
    conv: &BasisConversion,
    src: &[u64],
    dst: &mut [u64],
) {
    let n = params.n();
    let k = conv.from.len();
    if k == 1 {
        // One source prime b (digits of one prime, as with dnum = L+1): B/b = 1, so the value is
        // x itself, centered by subtracting b when x > b/2.
        let half = params.modulus(conv.from[0]).value() / 2;
        let work = |(t_pos, out): (usize, &mut [u64])| {
            let t = params.modulus(conv.to[t_pos]).value();
            let inv_t = 1.0 / t as f64;
            let b_mod = conv.b_multiples[t_pos][1];
            simd(|| {
                for (o, &x) in out.iter_mut().zip(&src[..n]) {
                    let r = reduce_by_float(x, t, inv_t);
                    let d = r.wrapping_sub(Modulus::select(x > half, b_mod));
                    *o = d.min(d.wrapping_add(t));
                }
            });
        };
        if dst.len() >= PAR_THRESHOLD * 2 && rayon::current_num_threads() > 1 {
            dst.par_chunks_mut(n).enumerate().for_each(work);
        } else {
            dst.chunks_mut(n).enumerate().for_each(work);
        }
        return;
    }
    // y_i = x_i * (B/b_i)^{-1} mod b_i, stored interleaved per coefficient for cache locality.
    let mut y = vec![0u64; n * k];
    let mut frac = vec![0f64; n];
    for (j, (&i, &(inv, inv_s))) in conv.from.iter().zip(&conv.qhat_inv).enumerate() {
        let m = params.modulus(i);
        let limb = &src[j * n..(j + 1) * n];
        let inv_b = conv.inv_from[j];
        for (c, (&x, f)) in limb.iter().zip(frac.iter_mut()).enumerate() {
            let yy = m.mul_shoup(x, inv, inv_s);
            y[c * k + j] = yy;
            *f += yy as f64 * inv_b;
        }
    }
    // Overflow multiple, rounded so the represented value is centered.
    let u: Vec<u8> = frac.iter().map(|&f| f.round() as u8).collect();
    let work = |(t_pos, out): (usize, &mut [u64])| {
        let t = conv.to[t_pos];
        let m = params.modulus(t);
        let factors = &conv.qhat_mod[t_pos];
        let shoups = &conv.qhat_mod_shoup[t_pos];
        let mults = &conv.b_multiples[t_pos];
        match k {
            // Few sources (the common dnum = L+1 and two-prime digits): Shoup products.
            1 => {
                let (f, fs) = (factors[0], shoups[0]);
                for ((o, &yy), &uu) in out.iter_mut().zip(&y).zip(&u) {
                    *o = m.sub(m.mul_shoup(yy, f, fs), mults[uu as usize]);
                }
            }
            2 => {
                let (f0, fs0, f1, fs1) = (factors[0], shoups[0], factors[1], shoups[1]);
                for ((o, ys), &uu) in out.iter_mut().zip(y.chunks_exact(2)).zip(&u) {
                    let s = m.mul_shoup_lazy(ys[0], f0, fs0) + m.mul_shoup_lazy(ys[1], f1, fs1);
                    *o = m.sub(m.reduce(s), mults[uu as usize]);
                }
            }
            _ => {
                for ((o, ys), &uu) in out.iter_mut().zip(y.chunks_exact(k)).zip(&u) {
                    let mut acc: u128 = 0;
                    for (&yy, &f) in ys.iter().zip(factors) {
                        acc += yy as u128 * f as u128;
                    }
                    *o = m.sub(m.reduce_u128(acc), mults[uu as usize]);
                }
            }
        }
    };
    if dst.len() >= PAR_THRESHOLD * 2 && rayon::current_num_threads() > 1 {
        dst.par_chunks_mut(n).enumerate().for_each(work);
    } else {
        dst.chunks_mut(n).enumerate().for_each(work);
    }
}

/// Divides an NTT-domain polynomial at `level` by its last prime with rounding, returning the
/// NTT-domain polynomial at `level - 1`.
pub(crate) fn rescale(params: &Parameters, a: &[u64], level: usize) -> Vec<u64> {
    let n = params.n();
    let ql = *params.modulus(level);
    let mut last = a[level * n..(level + 1) * n].to_vec();
    params.plan(level).inv(&mut last);
    params.plan(level).normalize(&mut last);
    let half = ql.value() / 2;
    let invs = params.rescale_inv(level);
    let mut out = a[..level * n].to_vec();
    let indices: Vec<usize> = (0..level).collect();
    par_limbs(&mut out, n, &indices, |i, limb| {
        let m = params.modulus(i);
        let ql_mod = m.reduce(ql.value());
        // Centered representative of the last limb, reduced mod q_i, then NTT.
        let mut r: Vec<u64> = last
            .iter()
            .map(|&x| m.sub(m.reduce(x), Modulus::select(x > half, ql_mod)))
            .collect();
        params.plan(i).fwd(&mut r);
        let (inv, inv_s) = invs[i];
        for (o, &ri) in limb.iter_mut().zip(&r) {
            *o = m.mul_shoup(m.sub(*o, ri), inv, inv_s);
        }
    });
    out
}

/// Reads limbs of a polynomial stored over all primes (keys) for the given global indices.
pub(crate) fn select_limbs(full: &[u64], n: usize, i: usize) -> &[u64] {
    &full[i * n..(i + 1) * n]
}

#[cfg(test)]
mod tests {
    use crate::params::Preset;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{Rng, SeedableRng};

    #[test]
    fn float_quotient_reduction_is_exact() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        for preset in [Preset::Pn14SealChain, Preset::Pn13Depth5] {
            let params = preset.build().expect("params");
            let primes: Vec<u64> = params
                .q_primes()
                .into_iter()
                .chain(params.p_primes())
                .collect();
            for &t in &primes {
                let inv = 1.0 / t as f64;
                for &src in &primes {
                    for _ in 0..2000 {
                        let x = rng.next_u64() % src;
                        assert_eq!(super::reduce_by_float(x, t, inv), x % t);
                    }
                    for x in [0, 1, t - 1, t, t + 1, 2 * t - 1, src - 1, src / 2] {
                        assert_eq!(super::reduce_by_float(x, t, inv), x % t);
                    }
                }
            }
        }
        let t = (1u64 << 17) + 1;
        let x = (1u64 << 61) - 1;
        assert_eq!(super::reduce_by_float(x, t, 1.0 / t as f64), x % t);
    }

    #[test]
    fn ntt_library_multiply_accumulate_is_exact_and_reduced() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for preset in [
            Preset::Pn14Depth7,
            Preset::Pn14SealChain,
            Preset::Pn13Depth4,
        ] {
            let params = preset.build().expect("params");
            let n = params.n();
            for i in 0..params.num_q() + params.num_p() {
                let m = params.modulus(i);
                let p = m.value();
                let a: Vec<u64> = (0..n).map(|_| rng.next_u64() % p).collect();
                let b: Vec<u64> = (0..n).map(|_| rng.next_u64() % p).collect();
                let c: Vec<u64> = (0..n).map(|_| rng.next_u64() % p).collect();
                let mut acc = c.clone();
                params.plan(i).mul_accumulate(&mut acc, &a, &b);
                for k in 0..n {
                    assert!(acc[k] < p, "prime {p}: unreduced output");
                    assert_eq!(acc[k], m.add(c[k], m.mul(a[k], b[k])), "prime {p}");
                }
            }
        }
    }
}
