//! Automorphisms: rotations (single, hoisted, and double-hoisted combinations kept in the
//! extended basis), conjugation and slot sums.

use std::collections::HashMap;
use std::fmt;

use rayon::prelude::*;

use super::{Decomposition, Evaluator, PreparedGaloisKey};
use crate::ciphertext::{Ciphertext, ExtendedPlaintext};
use crate::encoder::check_scale;
use crate::error::{Error, Result};
use crate::keys::check_params;
use crate::ring;

/// (key-switched c_0 part, c_1 part) over Q ∪ P, and σ(c_0) over Q.
type RotatedParts = (Vec<u64>, Vec<u64>, Vec<u64>);

/// A ciphertext held in the extended basis Q_level ∪ P as `P·(c_0, c_1)` (NTT domain), before
/// the division by P that key switches end with.
#[derive(Clone)]
pub(crate) struct ExtendedCiphertext {
    polys: [Vec<u64>; 2],
    level: usize,
    scale: f64,
}

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

impl Evaluator {
    pub(super) fn galois_key(&self, g: u64) -> Result<&PreparedGaloisKey> {
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
        let (mut k0, k1) = self.switch(dec, &gk.key, "rotation")?;
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
    /// Without the step's own key, the rotation is composed of its power-of-two parts
    /// ([`Evaluator::rotation_parts`]), one key switch each.
    pub fn rotate(&self, ct: &Ciphertext, step: i64) -> Result<Ciphertext> {
        self.check(ct)?;
        let mut out = ct.clone();
        for part in self.rotation_parts(step)? {
            let dec = self.decompose(&out)?;
            out = self.automorphism_hoisted(&out, &dec, self.params.galois_element(part))?;
        }
        Ok(out)
    }

    /// Rotations of one ciphertext by many steps from a single decomposition (hoisting): the
    /// expensive basis extension is done once instead of once per step.
    pub fn rotate_hoisted(&self, ct: &Ciphertext, steps: &[i64]) -> Result<Vec<Ciphertext>> {
        for &s in steps {
            self.rotation_parts(s)?;
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
            .map(|&s| {
                let g = self.params.galois_element(s);
                if g == 1 || self.galois.contains_key(&g) {
                    self.automorphism_hoisted(ct, dec, g)
                } else {
                    // Composed of power-of-two rotations: not hoisted.
                    self.rotate(ct, s)
                }
            })
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
        let mut elements: Vec<(u64, i64)> = Vec::with_capacity(steps.len());
        for &step in steps {
            let g = self.params.galois_element(step);
            if g != 1 && !elements.iter().any(|(e, _)| *e == g) {
                elements.push((g, step));
            }
        }
        // One task per step: coarse enough that two or more threads share the work without
        // the per-limb scheduling of the inner loops dominating at small rings.
        let by_step = elements
            .par_iter()
            .map(|&(g, step)| {
                let Some(gk) = self.galois.get(&g) else {
                    // Composed of power-of-two rotations, then held as (0, P·r_1) and r_0:
                    // the same sum once divided by P.
                    let mut r = self.rotate(ct, step)?;
                    let a1 = self.lift_to_extended(&r.polys[1], level);
                    let a0 = vec![0u64; a1.len()];
                    return Ok((g, (a0, a1, std::mem::take(&mut r.polys[0]))));
                };
                let (a0, a1) = self.inner_product(dec, &gk.key, "rotation")?;
                let parts = (
                    ring::permute(&a0, &gk.perm, n),
                    ring::permute(&a1, &gk.perm, n),
                    ring::permute(&ct.polys[0], &gk.perm, n),
                );
                Ok((g, parts))
            })
            .collect::<Result<HashMap<_, _>>>()?;
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
        let ExtendedCiphertext {
            polys: [a, b],
            level,
            scale,
        } = self.combine_rotations_extended(rots, terms)?;
        let (c0, c1) = rayon::join(|| self.mod_down(a, level), || self.mod_down(b, level));
        Ok(Ciphertext {
            params: self.params.clone(),
            polys: vec![c0, c1],
            level,
            scale,
            seed: None,
        })
    }

    /// [`Evaluator::combine_rotations`] without the division by P: the sum stays in Q ∪ P as
    /// `P·(c_0, c_1)` for more work there ([`Evaluator::rotate_extended`], additions) before a
    /// single division.
    pub(crate) fn combine_rotations_extended(
        &self,
        rots: &ExtendedRotations,
        terms: &[(i64, &ExtendedPlaintext)],
    ) -> Result<ExtendedCiphertext> {
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
            rayon::join(
                || ring::mul_add_assign(p, &mut acc0, a0, &pt.poly, &ext),
                || ring::mul_add_assign(p, &mut acc1, a1, &pt.poly, &ext),
            );
            ring::mul_add_assign(p, &mut out0, c0, mask_q, &q_idx);
        }
        // The parts over Q alone enter as P·out (zero modulo the special primes).
        for (acc, mut out) in [(&mut acc0, out0), (&mut acc1, out1)] {
            self.mul_by_p(&mut out, level);
            ring::add_assign(p, &mut acc[..qn], &out, &q_idx);
        }
        Ok(ExtendedCiphertext {
            polys: [acc0, acc1],
            level,
            scale: new_scale,
        })
    }

    /// Rotates a ciphertext held in Q ∪ P and leaves the result there: `c_1` is divided by P
    /// and decomposed for the key switch, `c_0` is never divided (the key switch's own division
    /// by P is shared with it), so a sum of rotated terms pays one division at the end.
    pub(crate) fn rotate_extended(
        &self,
        e: &ExtendedCiphertext,
        step: i64,
    ) -> Result<ExtendedCiphertext> {
        let g = self.params.galois_element(step);
        if g == 1 {
            return Ok(e.clone());
        }
        let p = &*self.params;
        let n = p.n();
        let level = e.level;
        let Some(gk) = self.galois.get(&g) else {
            // Composed of power-of-two rotations: divided by P, rotated, lifted back.
            let [a, b] = e.polys.clone();
            let (c0, c1) = rayon::join(|| self.mod_down(a, level), || self.mod_down(b, level));
            let ct = Ciphertext {
                params: self.params.clone(),
                polys: vec![c0, c1],
                level,
                scale: e.scale,
                seed: None,
            };
            let r = self.rotate(&ct, step)?;
            return Ok(ExtendedCiphertext {
                polys: [
                    self.lift_to_extended(&r.polys[0], level),
                    self.lift_to_extended(&r.polys[1], level),
                ],
                level,
                scale: e.scale,
            });
        };
        let c1 = self.mod_down(e.polys[1].clone(), level);
        let dec = self.decompose_poly(&c1, level);
        let (mut k0, k1) = self.inner_product(&dec, &gk.key, "rotation")?;
        ring::add_assign(p, &mut k0, &e.polys[0], &p.ext_indices(level));
        let (r0, r1) = rayon::join(
            || ring::permute(&k0, &gk.perm, n),
            || ring::permute(&k1, &gk.perm, n),
        );
        Ok(ExtendedCiphertext {
            polys: [r0, r1],
            level,
            scale: e.scale,
        })
    }

    /// Multiplies a polynomial over Q_level by P.
    fn mul_by_p(&self, c: &mut [u64], level: usize) {
        let p_mod_q: Vec<u64> = (0..=level).map(|i| self.params.p_mod_q(i)).collect();
        let q_idx: Vec<usize> = (0..=level).collect();
        ring::mul_scalar_assign(&self.params, c, &p_mod_q, &q_idx);
    }

    /// A polynomial over Q_level as `P·c` over Q_level ∪ P (zero modulo the special primes):
    /// exactly `c` again once divided by P.
    fn lift_to_extended(&self, c: &[u64], level: usize) -> Vec<u64> {
        let mut out = vec![0u64; self.params.ext_indices(level).len() * self.params.n()];
        out[..c.len()].copy_from_slice(c);
        self.mul_by_p(&mut out[..c.len()], level);
        out
    }

    /// `a += b` for ciphertexts held in Q ∪ P (same level and scale).
    pub(crate) fn add_extended_assign(
        &self,
        a: &mut ExtendedCiphertext,
        b: &ExtendedCiphertext,
    ) -> Result<()> {
        if a.level != b.level {
            return Err(Error::LevelMismatch {
                left: a.level,
                right: b.level,
            });
        }
        Self::check_scales(a.scale, b.scale)?;
        let ext = self.params.ext_indices(a.level);
        for (x, y) in a.polys.iter_mut().zip(&b.polys) {
            ring::add_assign(&self.params, x, y, &ext);
        }
        Ok(())
    }

    /// Divides a ciphertext held in Q ∪ P by P and by its last prime at once (the rescale
    /// fused into the division): one level lower, scale divided by q_level.
    pub(crate) fn mod_down_rescale_extended(&self, e: ExtendedCiphertext) -> Result<Ciphertext> {
        let level = e.level;
        if level == 0 {
            return Err(Error::OutOfLevels);
        }
        let [a, b] = e.polys;
        let (c0, c1) = rayon::join(
            || self.mod_down_rescale(a, level),
            || self.mod_down_rescale(b, level),
        );
        let q = self.params.modulus(level).value() as f64;
        Ok(Ciphertext {
            params: self.params.clone(),
            polys: vec![c0, c1],
            level: level - 1,
            scale: e.scale / q,
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
