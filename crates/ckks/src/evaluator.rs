//! Homomorphic evaluation: arithmetic with ciphertexts, plaintexts and constants; relinearization;
//! rescaling; rotations (single and hoisted); conjugation; slot sums. Level and scale mismatches
//! are typed errors. The evaluator is `Send + Sync` and uses rayon inside each operation.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;

use crate::ciphertext::{Ciphertext, ExtendedPlaintext, Plaintext};
use crate::encoder::check_scale;
use crate::error::{Error, Result};
use crate::keys::{EvaluationKeys, SwitchingKey, check_params};
use crate::params::Parameters;
use crate::ring;

/// Relative tolerance under which two scales count as equal.
const SCALE_TOLERANCE: f64 = 1e-9;

/// A polynomial decomposed for key switching: one extended polynomial over Q_level ∪ P per
/// digit, NTT domain. Computing it is the expensive half of a key switch; hoisted rotations
/// reuse one decomposition for many rotation steps.
#[derive(Clone)]
pub struct Decomposition {
    level: usize,
    digits: Vec<Vec<u64>>,
}

impl fmt::Debug for Decomposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decomposition")
            .field("level", &self.level)
            .field("digits", &self.digits.len())
            .finish()
    }
}

/// A Galois key prepared for evaluation: its polynomials pre-permuted by the inverse
/// automorphism, so the key-switch inner product needs no gather and the permutation is applied
/// once to the two output polynomials.
struct PreparedGaloisKey {
    key: SwitchingKey,
    perm: Vec<u32>,
}

/// (key-switched c_0 part, c_1 part) over Q ∪ P, and σ(c_0) over Q.
type RotatedParts = (Vec<u64>, Vec<u64>, Vec<u64>);

/// Rotations of one ciphertext kept in the extended basis, from
/// [`Evaluator::rotations_extended`].
pub struct ExtendedRotations {
    ct: Ciphertext,
    /// Galois element -> rotated parts.
    by_step: HashMap<u64, RotatedParts>,
}

impl fmt::Debug for ExtendedRotations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtendedRotations")
            .field("level", &self.ct.level)
            .field("rotations", &self.by_step.len())
            .finish()
    }
}

/// Evaluates operations on ciphertexts with a set of public evaluation keys.
pub struct Evaluator {
    params: Arc<Parameters>,
    relin: Option<SwitchingKey>,
    galois: HashMap<u64, PreparedGaloisKey>,
}

impl fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Evaluator")
            .field("params", &self.params.id_hex())
            .field("galois_elements", &self.galois_elements())
            .field("relinearization", &self.relin.is_some())
            .finish()
    }
}

fn scales_match(a: f64, b: f64) -> bool {
    ((a - b) / a.max(b)).abs() <= SCALE_TOLERANCE
}

impl Evaluator {
    /// An evaluator over the given evaluation keys (consumed: Galois keys are re-laid out for
    /// evaluation).
    pub fn new(keys: EvaluationKeys) -> Self {
        let params = keys.params.clone();
        let n = params.n();
        let galois = keys
            .galois
            .into_iter()
            .map(|(g, gk)| {
                let perm = params.automorphism_permutation(g);
                let mut inv = vec![0u32; n];
                for (k, &p) in perm.iter().enumerate() {
                    inv[p as usize] = k as u32;
                }
                let mut key = gk.key;
                for poly in key.b.iter_mut().chain(key.a.iter_mut()) {
                    *poly = ring::permute(poly, &inv, n);
                }
                (g, PreparedGaloisKey { key, perm })
            })
            .collect();
        Self {
            params,
            relin: keys.relin.map(|r| r.0),
            galois,
        }
    }

    /// The parameters.
    pub fn parameters(&self) -> &Arc<Parameters> {
        &self.params
    }

    /// Galois elements the evaluator holds keys for, sorted.
    pub fn galois_elements(&self) -> Vec<u64> {
        let mut g: Vec<u64> = self.galois.keys().copied().collect();
        g.sort_unstable();
        g
    }

    /// Whether a rotation by `step` is possible (key present, or a trivial step).
    pub fn can_rotate(&self, step: i64) -> bool {
        let g = self.params.galois_element(step);
        g == 1 || self.galois.contains_key(&g)
    }

    /// Whether the relinearization key is present.
    pub fn has_relinearization_key(&self) -> bool {
        self.relin.is_some()
    }

    fn check(&self, ct: &Ciphertext) -> Result<()> {
        check_params(&self.params, &ct.params)
    }

    fn check_pair(&self, a: &Ciphertext, b: &Ciphertext) -> Result<()> {
        self.check(a)?;
        self.check(b)?;
        if a.level != b.level {
            return Err(Error::LevelMismatch {
                left: a.level,
                right: b.level,
            });
        }
        Ok(())
    }

    fn check_scales(a: f64, b: f64) -> Result<()> {
        if !scales_match(a, b) {
            return Err(Error::ScaleMismatch {
                left: a.log2(),
                right: b.log2(),
            });
        }
        Ok(())
    }

    fn check_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<()> {
        self.check(ct)?;
        check_params(&self.params, &pt.params)?;
        if pt.level < ct.level {
            return Err(Error::LevelMismatch {
                left: ct.level,
                right: pt.level,
            });
        }
        Ok(())
    }

    // ---------------------------------------------------------------- addition

    /// `a + b` (same level and scale; degrees may differ).
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.add_assign(&mut out, b)?;
        Ok(out)
    }

    /// `a += b`.
    pub fn add_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        self.combine_assign(a, b, ring::add_assign)
    }

    /// `a - b` (same level and scale).
    pub fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.sub_assign(&mut out, b)?;
        Ok(out)
    }

    /// `a -= b`.
    pub fn sub_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        self.combine_assign(a, b, ring::sub_assign)
    }

    /// `a = a ∘ b` polynomial by polynomial, after checking level and scale; a lower-degree `a`
    /// is padded with zero polynomials.
    fn combine_assign(
        &self,
        a: &mut Ciphertext,
        b: &Ciphertext,
        op: fn(&Parameters, &mut [u64], &[u64], &[usize]),
    ) -> Result<()> {
        self.check_pair(a, b)?;
        Self::check_scales(a.scale, b.scale)?;
        let idx = a.indices();
        while a.polys.len() < b.polys.len() {
            a.polys.push(vec![0u64; a.polys[0].len()]);
        }
        for (x, y) in a.polys.iter_mut().zip(&b.polys) {
            op(&self.params, x, y, &idx);
        }
        a.seed = None;
        Ok(())
    }

    /// `-a`.
    pub fn negate(&self, a: &Ciphertext) -> Result<Ciphertext> {
        self.check(a)?;
        let mut out = a.clone();
        let idx = out.indices();
        for x in out.polys.iter_mut() {
            ring::neg_assign(&self.params, x, &idx);
        }
        out.seed = None;
        Ok(out)
    }

    /// `ct + pt` (plaintext at the same scale, level at least the ciphertext's).
    pub fn add_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        self.check_plain(ct, pt)?;
        Self::check_scales(ct.scale, pt.scale)?;
        let mut out = ct.clone();
        let k = (ct.level + 1) * self.params.n();
        ring::add_assign(
            &self.params,
            &mut out.polys[0],
            &pt.poly[..k],
            &ct.indices(),
        );
        Ok(out)
    }

    /// `ct - pt`.
    pub fn sub_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        self.check_plain(ct, pt)?;
        Self::check_scales(ct.scale, pt.scale)?;
        let mut out = ct.clone();
        let k = (ct.level + 1) * self.params.n();
        ring::sub_assign(
            &self.params,
            &mut out.polys[0],
            &pt.poly[..k],
            &ct.indices(),
        );
        Ok(out)
    }

    fn const_residues(&self, value: f64, level: usize) -> Result<Vec<u64>> {
        if !value.is_finite() || value.abs() >= 2f64.powi(120) {
            return Err(Error::OutOfRange(format!(
                "constant {value} cannot be represented"
            )));
        }
        let r = value.round() as i128;
        Ok((0..=level)
            .map(|i| self.params.modulus(i).reduce_i128(r))
            .collect())
    }

    /// `ct + c` for a real constant (added to every slot).
    pub fn add_const(&self, ct: &Ciphertext, c: f64) -> Result<Ciphertext> {
        self.check(ct)?;
        let res = self.const_residues(c * ct.scale, ct.level)?;
        let mut out = ct.clone();
        ring::add_scalar_assign(&self.params, &mut out.polys[0], &res, &ct.indices());
        Ok(out)
    }

    // ---------------------------------------------------------------- multiplication

    /// `ct · k` for an integer `k` (scale unchanged, no level consumed).
    pub fn mul_integer(&self, ct: &Ciphertext, k: i64) -> Result<Ciphertext> {
        self.check(ct)?;
        let res: Vec<u64> = (0..=ct.level)
            .map(|i| self.params.modulus(i).reduce_i64(k))
            .collect();
        let mut out = ct.clone();
        let idx = ct.indices();
        for x in out.polys.iter_mut() {
            ring::mul_scalar_assign(&self.params, x, &res, &idx);
        }
        out.seed = None;
        Ok(out)
    }

    /// `ct · c` with `c` encoded as the integer `round(c · const_scale)`: the scale is
    /// multiplied by `const_scale`; no rescale.
    pub fn mul_const(&self, ct: &Ciphertext, c: f64, const_scale: f64) -> Result<Ciphertext> {
        self.check(ct)?;
        let new_scale = ct.scale * const_scale;
        check_scale(&self.params, new_scale, ct.level)?;
        let res = self.const_residues(c * const_scale, ct.level)?;
        let mut out = ct.clone();
        let idx = ct.indices();
        for x in out.polys.iter_mut() {
            ring::mul_scalar_assign(&self.params, x, &res, &idx);
        }
        out.scale = new_scale;
        out.seed = None;
        Ok(out)
    }

    /// `ct · c`, then rescale, landing exactly on `target_scale` one level down. The constant
    /// is encoded at `target_scale · q_level / scale`. Consumes one level.
    pub fn mul_const_rescale_to(
        &self,
        ct: &Ciphertext,
        c: f64,
        target_scale: f64,
    ) -> Result<Ciphertext> {
        self.check(ct)?;
        if ct.level == 0 {
            return Err(Error::OutOfLevels);
        }
        let ql = self.params.modulus(ct.level).value() as f64;
        let const_scale = target_scale * ql / ct.scale;
        if const_scale < 1.0 {
            return Err(Error::InvalidScale {
                log_scale: target_scale.log2(),
                reason: "target scale too small for this ciphertext",
            });
        }
        let mut out = self.rescale(&self.mul_const(ct, c, const_scale)?)?;
        out.scale = target_scale;
        Ok(out)
    }

    /// `ct ⊙ pt` (scales multiply; no rescale).
    pub fn mul_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        self.check_plain(ct, pt)?;
        let new_scale = ct.scale * pt.scale;
        check_scale(&self.params, new_scale, ct.level)?;
        let k = (ct.level + 1) * self.params.n();
        let idx = ct.indices();
        let mut out = ct.clone();
        for x in out.polys.iter_mut() {
            ring::mul_assign(&self.params, x, &pt.poly[..k], &idx);
        }
        out.scale = new_scale;
        out.seed = None;
        Ok(out)
    }

    /// `a · b` without relinearization (degree 2 result; scales multiply).
    pub fn mul_no_relin(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        self.check_pair(a, b)?;
        if a.degree() != 1 || b.degree() != 1 {
            return Err(Error::CiphertextDegree {
                found: a.degree().max(b.degree()),
                expected: 1,
            });
        }
        let new_scale = a.scale * b.scale;
        check_scale(&self.params, new_scale, a.level)?;
        let idx = a.indices();
        let p = &self.params;
        let (a0, a1, b0, b1) = (&a.polys[0], &a.polys[1], &b.polys[0], &b.polys[1]);
        let d0 = ring::mul(p, a0, b0, &idx);
        let mut d1 = ring::mul(p, a0, b1, &idx);
        ring::mul_add_assign(p, &mut d1, a1, b0, &idx);
        let d2 = ring::mul(p, a1, b1, &idx);
        Ok(Ciphertext {
            params: self.params.clone(),
            polys: vec![d0, d1, d2],
            level: a.level,
            scale: new_scale,
            seed: None,
        })
    }

    /// `a · b` with relinearization (scales multiply; no rescale).
    pub fn mul(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let d = self.mul_no_relin(a, b)?;
        self.relinearize(&d)
    }

    /// `a · b`, relinearize, rescale: the usual homomorphic product. Consumes one level.
    /// The key switch's division by P and the rescale's division by q_level are fused into
    /// one basis conversion.
    pub fn mul_rescale(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        if a.level == 0 {
            return Err(Error::OutOfLevels);
        }
        let d = self.mul_no_relin(a, b)?;
        let key = self.relin.as_ref().ok_or(Error::MissingKey {
            kind: "relinearization",
            galois_element: None,
        })?;
        let level = d.level;
        let n = self.params.n();
        let dec = self.decompose_poly(&d.polys[2], level);
        let (acc0, acc1) = self.inner_product(&dec, key);
        // Lift c_0, c_1 to the extended basis as P·c_i (zero modulo the special primes).
        let lift = |mut acc: Vec<u64>, c: &[u64]| {
            let mut pm = vec![0u64; n];
            for (i, (la, lc)) in acc
                .chunks_mut(n)
                .zip(c.chunks(n))
                .enumerate()
                .take(level + 1)
            {
                pm.fill(self.params.p_mod_q(i));
                self.params.plan(i).mul_accumulate(la, lc, &pm);
            }
            self.mod_down_rescale(acc, level)
        };
        let (c0, c1) = rayon::join(|| lift(acc0, &d.polys[0]), || lift(acc1, &d.polys[1]));
        let q = self.params.modulus(level).value() as f64;
        Ok(Ciphertext {
            params: self.params.clone(),
            polys: vec![c0, c1],
            level: level - 1,
            scale: d.scale / q,
            seed: None,
        })
    }

    /// `a²` with relinearization (no rescale).
    pub fn square(&self, a: &Ciphertext) -> Result<Ciphertext> {
        self.mul(a, a)
    }

    /// Brings a degree-2 ciphertext back to degree 1 with the relinearization key.
    pub fn relinearize(&self, ct: &Ciphertext) -> Result<Ciphertext> {
        self.check(ct)?;
        match ct.degree() {
            1 => return Ok(ct.clone()),
            2 => {}
            d => {
                return Err(Error::CiphertextDegree {
                    found: d,
                    expected: 2,
                });
            }
        }
        let key = self.relin.as_ref().ok_or(Error::MissingKey {
            kind: "relinearization",
            galois_element: None,
        })?;
        let dec = self.decompose_poly(&ct.polys[2], ct.level);
        let (k0, k1) = self.switch(&dec, key);
        let idx = ct.indices();
        let mut c0 = ct.polys[0].clone();
        let mut c1 = ct.polys[1].clone();
        ring::add_assign(&self.params, &mut c0, &k0, &idx);
        ring::add_assign(&self.params, &mut c1, &k1, &idx);
        Ok(Ciphertext {
            params: self.params.clone(),
            polys: vec![c0, c1],
            level: ct.level,
            scale: ct.scale,
            seed: None,
        })
    }

    /// Divides by the last prime with rounding: level − 1, scale / q_level.
    pub fn rescale(&self, ct: &Ciphertext) -> Result<Ciphertext> {
        self.check(ct)?;
        if ct.level == 0 {
            return Err(Error::OutOfLevels);
        }
        let q = self.params.modulus(ct.level).value() as f64;
        let polys = ct
            .polys
            .par_iter()
            .map(|p| ring::rescale(&self.params, p, ct.level))
            .collect();
        Ok(Ciphertext {
            params: self.params.clone(),
            polys,
            level: ct.level - 1,
            scale: ct.scale / q,
            seed: None,
        })
    }

    /// Drops the ciphertext to a lower level without changing its scale.
    pub fn drop_to_level(&self, ct: &Ciphertext, level: usize) -> Result<Ciphertext> {
        self.check(ct)?;
        if level > ct.level {
            return Err(Error::InvalidLevel {
                level,
                min: 0,
                max: ct.level,
            });
        }
        let k = (level + 1) * self.params.n();
        Ok(Ciphertext {
            params: self.params.clone(),
            polys: ct.polys.iter().map(|p| p[..k].to_vec()).collect(),
            level,
            scale: ct.scale,
            seed: if level == ct.level { ct.seed } else { None },
        })
    }

    // ---------------------------------------------------------------- key switching

    /// Decomposes `c` (NTT domain, level `level`) into digits extended to Q_level ∪ P.
    fn decompose_poly(&self, c: &[u64], level: usize) -> Decomposition {
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
    fn inner_product(&self, dec: &Decomposition, key: &SwitchingKey) -> (Vec<u64>, Vec<u64>) {
        let p = &*self.params;
        let n = p.n();
        let ext = p.ext_indices(dec.level);
        let mut acc0 = vec![0u64; ext.len() * n];
        let mut acc1 = vec![0u64; ext.len() * n];
        let inner = |(d, (o0, o1)): (usize, (&mut [u64], &mut [u64]))| {
            let g = ext[d];
            let plan = p.plan(g);
            for (j, digit) in dec.digits.iter().enumerate() {
                let x = &digit[d * n..(d + 1) * n];
                plan.mul_accumulate(o0, x, &key.b[j][g * n..(g + 1) * n]);
                plan.mul_accumulate(o1, x, &key.a[j][g * n..(g + 1) * n]);
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
        (acc0, acc1)
    }

    /// Key switch: inner product with the key, then division by P. Returns the two NTT-domain
    /// polynomials over Q_level.
    fn switch(&self, dec: &Decomposition, key: &SwitchingKey) -> (Vec<u64>, Vec<u64>) {
        let (acc0, acc1) = self.inner_product(dec, key);
        let level = dec.level;
        rayon::join(|| self.mod_down(acc0, level), || self.mod_down(acc1, level))
    }

    /// Fused division by P·q_level: from Q_level ∪ P (NTT) to Q_{level-1} (NTT), rounding.
    fn mod_down_rescale(&self, x: Vec<u64>, level: usize) -> Vec<u64> {
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
    fn mod_down(&self, mut x: Vec<u64>, level: usize) -> Vec<u64> {
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

    // ---------------------------------------------------------------- automorphisms

    fn galois_key(&self, g: u64) -> Result<&PreparedGaloisKey> {
        let kind = if g == self.params.galois_element_conjugate() {
            "conjugation"
        } else {
            "rotation"
        };
        self.galois.get(&g).ok_or(Error::MissingKey {
            kind,
            galois_element: Some(g),
        })
    }

    /// Applies X -> X^g to a ciphertext whose `c_1` was decomposed in `dec`:
    /// `σ_g(c_0 + KS'(c_1)_0, KS'(c_1)_1)` with the pre-permuted key.
    fn automorphism_hoisted(
        &self,
        ct: &Ciphertext,
        dec: &Decomposition,
        g: u64,
    ) -> Result<Ciphertext> {
        if g == 1 {
            return Ok(ct.clone());
        }
        let gk = self.galois_key(g)?;
        let (mut k0, k1) = self.switch(dec, &gk.key);
        let n = self.params.n();
        ring::add_assign(&self.params, &mut k0, &ct.polys[0], &ct.indices());
        Ok(Ciphertext {
            params: self.params.clone(),
            polys: vec![
                ring::permute(&k0, &gk.perm, n),
                ring::permute(&k1, &gk.perm, n),
            ],
            level: ct.level,
            scale: ct.scale,
            seed: None,
        })
    }

    /// Rotates the slots left by `step` (negative: right). Needs the rotation key for `step`.
    pub fn rotate(&self, ct: &Ciphertext, step: i64) -> Result<Ciphertext> {
        let g = self.params.galois_element(step);
        if g == 1 {
            self.check(ct)?;
            return Ok(ct.clone());
        }
        self.galois_key(g)?;
        let dec = self.decompose(ct)?;
        self.automorphism_hoisted(ct, &dec, g)
    }

    /// Rotations of one ciphertext by many steps from a single decomposition (hoisting): the
    /// expensive basis extension is done once instead of once per step.
    pub fn rotate_hoisted(&self, ct: &Ciphertext, steps: &[i64]) -> Result<Vec<Ciphertext>> {
        for &s in steps {
            let g = self.params.galois_element(s);
            if g != 1 {
                self.galois_key(g)?;
            }
        }
        let dec = self.decompose(ct)?;
        self.rotate_decomposed(ct, &dec, steps)
    }

    /// Rotations of `ct` by `steps` using a decomposition computed by [`Evaluator::decompose`].
    pub fn rotate_decomposed(
        &self,
        ct: &Ciphertext,
        dec: &Decomposition,
        steps: &[i64],
    ) -> Result<Vec<Ciphertext>> {
        self.check(ct)?;
        if dec.level != ct.level {
            return Err(Error::LevelMismatch {
                left: ct.level,
                right: dec.level,
            });
        }
        steps
            .iter()
            .map(|&s| self.automorphism_hoisted(ct, dec, self.params.galois_element(s)))
            .collect()
    }

    /// `Σ_t mask_t ⊙ rot(ct, step_t)` by double hoisting: one decomposition of `c_1` (reused
    /// from `dec` when given), then per term only the key inner product, a permutation and a
    /// multiplication by the mask in the extended basis Q ∪ P — no NTT — and a single division by
    /// P at the end. All masks must share one scale and be at the ciphertext's level; the result
    /// has scale `ct.scale · mask.scale` and is not rescaled.
    pub fn rotate_and_combine(
        &self,
        ct: &Ciphertext,
        dec: Option<&Decomposition>,
        terms: &[(i64, &ExtendedPlaintext)],
    ) -> Result<Ciphertext> {
        let steps: Vec<i64> = terms.iter().map(|(s, _)| *s).collect();
        let rots = self.rotations_extended(ct, dec, &steps)?;
        self.combine_rotations(&rots, terms)
    }

    /// Rotations of `ct` kept in the extended basis Q ∪ P (before the division by P), for many
    /// [`Evaluator::combine_rotations`] calls: the key inner product per step is paid once.
    pub fn rotations_extended(
        &self,
        ct: &Ciphertext,
        dec: Option<&Decomposition>,
        steps: &[i64],
    ) -> Result<ExtendedRotations> {
        self.check(ct)?;
        if ct.degree() != 1 {
            return Err(Error::CiphertextDegree {
                found: ct.degree(),
                expected: 1,
            });
        }
        let level = ct.level;
        let owned;
        let dec = match dec {
            Some(d) => {
                if d.level != level {
                    return Err(Error::LevelMismatch {
                        left: level,
                        right: d.level,
                    });
                }
                d
            }
            None => {
                owned = self.decompose_poly(&ct.polys[1], level);
                &owned
            }
        };
        let n = self.params.n();
        let mut by_step = HashMap::new();
        for &step in steps {
            let g = self.params.galois_element(step);
            if g == 1 || by_step.contains_key(&g) {
                continue;
            }
            let gk = self.galois_key(g)?;
            let (a0, a1) = self.inner_product(dec, &gk.key);
            let ((a0, a1), c0) = rayon::join(
                || {
                    (
                        ring::permute(&a0, &gk.perm, n),
                        ring::permute(&a1, &gk.perm, n),
                    )
                },
                || ring::permute(&ct.polys[0], &gk.perm, n),
            );
            by_step.insert(g, (a0, a1, c0));
        }
        Ok(ExtendedRotations {
            ct: ct.clone(),
            by_step,
        })
    }

    /// `Σ_t mask_t ⊙ rot(ct, step_t)` from rotations prepared by
    /// [`Evaluator::rotations_extended`]: per term, two multiply-accumulates in Q ∪ P and one
    /// in Q; one division by P for the whole sum.
    pub fn combine_rotations(
        &self,
        rots: &ExtendedRotations,
        terms: &[(i64, &ExtendedPlaintext)],
    ) -> Result<Ciphertext> {
        let ct = &rots.ct;
        let Some(first) = terms.first() else {
            return Err(Error::Encoding(
                "a rotation combination needs at least one term".into(),
            ));
        };
        let scale = first.1.scale;
        for (_, pt) in terms {
            check_params(&self.params, &pt.params)?;
            if pt.level != ct.level {
                return Err(Error::LevelMismatch {
                    left: ct.level,
                    right: pt.level,
                });
            }
            Self::check_scales(scale, pt.scale)?;
        }
        let new_scale = ct.scale * scale;
        check_scale(&self.params, new_scale, ct.level)?;
        let p = &*self.params;
        let n = p.n();
        let level = ct.level;
        let q_idx = ct.indices();
        let ext = p.ext_indices(level);
        let qn = (level + 1) * n;
        let mut acc0 = vec![0u64; ext.len() * n];
        let mut acc1 = vec![0u64; ext.len() * n];
        let mut out0 = vec![0u64; qn];
        let mut out1 = vec![0u64; qn];
        let mut any_rotation = false;
        for (step, pt) in terms {
            let g = self.params.galois_element(*step);
            let mask_q = &pt.poly[..qn];
            if g == 1 {
                ring::mul_add_assign(p, &mut out0, &ct.polys[0], mask_q, &q_idx);
                ring::mul_add_assign(p, &mut out1, &ct.polys[1], mask_q, &q_idx);
                continue;
            }
            let (a0, a1, c0) = rots.by_step.get(&g).ok_or(Error::MissingKey {
                kind: "rotation (not prepared)",
                galois_element: Some(g),
            })?;
            any_rotation = true;
            rayon::join(
                || ring::mul_add_assign(p, &mut acc0, a0, &pt.poly, &ext),
                || ring::mul_add_assign(p, &mut acc1, a1, &pt.poly, &ext),
            );
            ring::mul_add_assign(p, &mut out0, c0, mask_q, &q_idx);
        }
        if any_rotation {
            let (m0, m1) =
                rayon::join(|| self.mod_down(acc0, level), || self.mod_down(acc1, level));
            ring::add_assign(p, &mut out0, &m0, &q_idx);
            ring::add_assign(p, &mut out1, &m1, &q_idx);
        }
        Ok(Ciphertext {
            params: self.params.clone(),
            polys: vec![out0, out1],
            level,
            scale: new_scale,
            seed: None,
        })
    }

    /// Complex conjugation of every slot. Needs the conjugation key.
    pub fn conjugate(&self, ct: &Ciphertext) -> Result<Ciphertext> {
        let g = self.params.galois_element_conjugate();
        self.galois_key(g)?;
        let dec = self.decompose(ct)?;
        self.automorphism_hoisted(ct, &dec, g)
    }

    /// Rotation steps [`Evaluator::sum_slots`] needs for `n` slots (a power of two).
    pub fn sum_slots_steps(n: usize) -> Vec<i64> {
        let mut out = Vec::new();
        let mut k = 1usize;
        while k < n {
            out.push(k as i64);
            k <<= 1;
        }
        out
    }

    /// Sums each window of `n` consecutive slots (power of two, cyclically): slot `j` of the
    /// result holds `Σ_{i<n} x_{j+i}`. Uses log2(n) rotations.
    pub fn sum_slots(&self, ct: &Ciphertext, n: usize) -> Result<Ciphertext> {
        if !n.is_power_of_two() || n > self.params.slots() {
            return Err(Error::Encoding(format!(
                "slot-sum width {n} must be a power of two at most {}",
                self.params.slots()
            )));
        }
        let mut acc = ct.clone();
        for step in Self::sum_slots_steps(n) {
            let r = self.rotate(&acc, step)?;
            self.add_assign(&mut acc, &r)?;
        }
        Ok(acc)
    }
}
