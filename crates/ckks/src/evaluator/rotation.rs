//! Automorphisms: rotations (single, hoisted, and double-hoisted combinations kept in the
//! extended basis), conjugation and slot sums.

use std::collections::HashMap;
use std::fmt;

use super::{Decomposition, Evaluator, PreparedGaloisKey};
use crate::ciphertext::{Ciphertext, ExtendedPlaintext};
use crate::encoder::check_scale;
use crate::error::{Error, Result};
use crate::keys::check_params;
use crate::ring;

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
            let (a0, a1) = self.inner_product(dec, &gk.key, "rotation")?;
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
