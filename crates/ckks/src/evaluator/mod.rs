//! Homomorphic evaluation: arithmetic with ciphertexts, plaintexts and constants; relinearization;
//! rescaling; rotations (single and hoisted); conjugation; slot sums. Level and scale mismatches
//! are typed errors. The evaluator is `Send + Sync` and uses rayon inside each operation.
//!
//! This module holds the evaluator and its arithmetic; `keyswitch` the gadget decomposition,
//! key inner product and divisions by P; `rotation` every automorphism (rotations, hoisting,
//! double-hoisted combinations, conjugation, slot sums).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;

use crate::ciphertext::{Ciphertext, Plaintext};
use crate::encoder::check_scale;
use crate::error::{Error, Result};
use crate::keys::{EvaluationKeys, SwitchingKey, check_params};
use crate::params::Parameters;
use crate::ring;

mod keyswitch;
mod rotation;

pub use keyswitch::Decomposition;
pub(crate) use rotation::ExtendedCiphertext;
pub use rotation::ExtendedRotations;

/// The power-of-two rotations (set bits of `step` modulo `slots`, lowest first) whose
/// composition rotates by `step`: how a rotation without its own key is made of the keys for
/// powers of two.
pub fn power_of_two_parts(step: i64, slots: usize) -> Vec<i64> {
    let s = step.rem_euclid(slots as i64);
    (0..63)
        .map(|b| 1i64 << b)
        .filter(|&bit| s & bit != 0)
        .collect()
}

/// Relative tolerance under which two scales count as equal.
const SCALE_TOLERANCE: f64 = 1e-9;

/// A Galois key prepared for evaluation: its polynomials pre-permuted by the inverse
/// automorphism, so the key-switch inner product needs no gather and the permutation is applied
/// once to the two output polynomials.
struct PreparedGaloisKey {
    pub(super) key: SwitchingKey,
    pub(super) perm: Vec<u32>,
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

    /// Whether a rotation by `step` is possible (its key present, or the keys of its
    /// power-of-two parts, or a trivial step).
    pub fn can_rotate(&self, step: i64) -> bool {
        self.rotation_parts(step).is_ok()
    }

    /// Whether a rotation by `step` is possible at `level` (a key serving that level present,
    /// or a trivial step).
    pub fn can_rotate_at(&self, step: i64, level: usize) -> bool {
        self.rotation_parts(step).is_ok_and(|parts| {
            parts.iter().all(|&s| {
                self.galois
                    .get(&self.params.galois_element(s))
                    .is_some_and(|k| k.key.max_level() >= level)
            })
        })
    }

    /// The rotations that make up a rotation by `step`: none for a trivial step, the step
    /// itself when its key is present, otherwise its power-of-two parts (the set bits of the
    /// step modulo the slot count), each of which must have a key. A client may send keys for
    /// powers of two only and let the server compose the other steps (fewer keys, more
    /// rotations).
    pub fn rotation_parts(&self, step: i64) -> Result<Vec<i64>> {
        let g = self.params.galois_element(step);
        if g == 1 {
            return Ok(Vec::new());
        }
        if self.galois.contains_key(&g) {
            return Ok(vec![step]);
        }
        let parts = power_of_two_parts(step, self.params.slots());
        if parts
            .iter()
            .all(|&s| self.galois.contains_key(&self.params.galois_element(s)))
        {
            Ok(parts)
        } else {
            Err(Error::MissingKey {
                kind: "rotation",
                galois_element: Some(g),
            })
        }
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
        let (acc0, acc1) = self.inner_product(&dec, key, "relinearization")?;
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
        let (k0, k1) = self.switch(&dec, key, "relinearization")?;
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
}
