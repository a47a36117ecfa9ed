//! Key switching: the gadget decomposition of a polynomial over Q_level ∪ P, the inner product
//! with a switching key, and the divisions by P (with and without a fused rescale).

use std::fmt;

use rayon::prelude::*;

use super::Evaluator;
use crate::ciphertext::Ciphertext;
use crate::error::{Error, Result};
use crate::keys::SwitchingKey;
use crate::ring;

/// A polynomial decomposed for key switching: one extended polynomial over Q_level ∪ P per
/// digit, NTT domain. Computing it is the expensive half of a key switch; hoisted rotations
/// reuse one decomposition for many rotation steps.
#[derive(Clone)]
pub struct Decomposition {
    pub(super) level: usize,
    pub(super) digits: Vec<Vec<u64>>,
}

impl fmt::Debug for Decomposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decomposition")
            .field("level", &self.level)
            .field("digits", &self.digits.len())
            .finish()
    }
}

impl Evaluator {
    /// Decomposes `c` (NTT domain, level `level`) into digits extended to Q_level ∪ P.
    pub(super) fn decompose_poly(&self, c: &[u64], level: usize) -> Decomposition {
        let p = &*self.params;
        let n = p.n();
        let q_idx: Vec<usize> = (0..=level).collect();
        let ext = p.ext_indices(level);
        let num_q = p.num_q();
        let pos = |g: usize| {
            if g <= level {
                g
            } else {
                level + 1 + (g - num_q)
            }
        };
        let mut coef = c.to_vec();
        ring::intt(p, &mut coef, &q_idx);
        let convs = p.modup(level);
        let digits = convs
            .par_iter()
            .map(|conv| {
                let mut out = vec![0u64; ext.len() * n];
                let lo = conv.from[0];
                let hi = conv.from[conv.from.len() - 1] + 1;
                let mut tmp = vec![0u64; conv.to.len() * n];
                ring::convert_basis(p, conv, &coef[lo * n..hi * n], &mut tmp);
                ring::ntt(p, &mut tmp, &conv.to);
                for (j, &t) in conv.to.iter().enumerate() {
                    let d = pos(t);
                    out[d * n..(d + 1) * n].copy_from_slice(&tmp[j * n..(j + 1) * n]);
                }
                for &g in &conv.from {
                    out[g * n..(g + 1) * n].copy_from_slice(&c[g * n..(g + 1) * n]);
                }
                out
            })
            .collect();
        Decomposition { level, digits }
    }

    /// Decomposes the `c_1` part of a ciphertext once, for [`Evaluator::rotate_hoisted`].
    pub fn decompose(&self, ct: &Ciphertext) -> Result<Decomposition> {
        self.check(ct)?;
        if ct.degree() != 1 {
            return Err(Error::CiphertextDegree {
                found: ct.degree(),
                expected: 1,
            });
        }
        Ok(self.decompose_poly(&ct.polys[1], ct.level))
    }

    /// Inner product of a decomposition with a switching key, over Q_level ∪ P (NTT domain).
    /// A key generated for lower levels than the decomposition's is refused.
    pub(super) fn inner_product(
        &self,
        dec: &Decomposition,
        key: &SwitchingKey,
        kind: &'static str,
    ) -> Result<(Vec<u64>, Vec<u64>)> {
        if key.max_level() < dec.level || key.digits() < dec.digits.len() {
            return Err(Error::KeyLevel {
                kind,
                key_level: key.max_level(),
                level: dec.level,
            });
        }
        let p = &*self.params;
        let n = p.n();
        let ext = p.ext_indices(dec.level);
        let mut acc0 = vec![0u64; ext.len() * n];
        let mut acc1 = vec![0u64; ext.len() * n];
        let inner = |(d, (o0, o1)): (usize, (&mut [u64], &mut [u64]))| {
            let g = ext[d];
            let at = key.position(g);
            let plan = p.plan(g);
            for (j, digit) in dec.digits.iter().enumerate() {
                let x = &digit[d * n..(d + 1) * n];
                plan.mul_accumulate(o0, x, &key.b[j][at * n..(at + 1) * n]);
                plan.mul_accumulate(o1, x, &key.a[j][at * n..(at + 1) * n]);
            }
        };
        if rayon::current_num_threads() > 1 {
            acc0.par_chunks_mut(n)
                .zip(acc1.par_chunks_mut(n))
                .enumerate()
                .for_each(inner);
        } else {
            acc0.chunks_mut(n)
                .zip(acc1.chunks_mut(n))
                .enumerate()
                .for_each(inner);
        }
        Ok((acc0, acc1))
    }

    /// Key switch: inner product with the key, then division by P. Returns the two NTT-domain
    /// polynomials over Q_level.
    pub(super) fn switch(
        &self,
        dec: &Decomposition,
        key: &SwitchingKey,
        kind: &'static str,
    ) -> Result<(Vec<u64>, Vec<u64>)> {
        let (acc0, acc1) = self.inner_product(dec, key, kind)?;
        let level = dec.level;
        Ok(rayon::join(
            || self.mod_down(acc0, level),
            || self.mod_down(acc1, level),
        ))
    }

    /// Fused division by P·q_level: from Q_level ∪ P (NTT) to Q_{level-1} (NTT), rounding.
    pub(super) fn mod_down_rescale(&self, x: Vec<u64>, level: usize) -> Vec<u64> {
        let p = &*self.params;
        let n = p.n();
        let conv = p.moddown_rescale(level);
        let mut src = x[level * n..].to_vec();
        ring::intt(p, &mut src, &conv.from);
        let mut t = vec![0u64; level * n];
        ring::convert_basis(p, conv, &src, &mut t);
        let q_idx: Vec<usize> = (0..level).collect();
        ring::ntt(p, &mut t, &q_idx);
        let invs = p.rescale_inv(level);
        let mut out = x;
        out.truncate(level * n);
        for (i, (lx, lt)) in out.chunks_mut(n).zip(t.chunks(n)).enumerate() {
            let m = p.modulus(i);
            let (pinv, pinv_s) = p.p_inv_mod_q(i);
            let (qinv, qinv_s) = invs[i];
            for (a, &b) in lx.iter_mut().zip(lt) {
                *a = m.mul_shoup(m.mul_shoup(m.sub(*a, b), pinv, pinv_s), qinv, qinv_s);
            }
        }
        out
    }

    /// (x − [x]_P) / P: from Q_level ∪ P (NTT) down to Q_level (NTT).
    pub(super) fn mod_down(&self, mut x: Vec<u64>, level: usize) -> Vec<u64> {
        let p = &*self.params;
        let n = p.n();
        let conv = p.moddown(level);
        let qn = (level + 1) * n;
        let mut xp = x[qn..].to_vec();
        ring::intt(p, &mut xp, &conv.from);
        let mut t = vec![0u64; qn];
        ring::convert_basis(p, conv, &xp, &mut t);
        let q_idx: Vec<usize> = (0..=level).collect();
        ring::ntt(p, &mut t, &q_idx);
        x.truncate(qn);
        for (i, (lx, lt)) in x.chunks_mut(n).zip(t.chunks(n)).enumerate() {
            let m = p.modulus(i);
            let (inv, inv_s) = p.p_inv_mod_q(i);
            for (a, &b) in lx.iter_mut().zip(lt) {
                *a = m.mul_shoup(m.sub(*a, b), inv, inv_s);
            }
        }
        x
    }
}
