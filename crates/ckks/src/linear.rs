//! Linear transforms on the slot vector by the diagonal method with baby-step/giant-step.
//!
//! A transform is data: its non-zero generalized diagonals (`diag_k[i] = M[i][(i + k) mod n]`,
//! `n` = slots) and a baby-step size `n1`. It reports the rotation keys it needs, so key
//! generation makes exactly those. Cost of one application: one plaintext multiplication per
//! diagonal, `|baby steps|` hoisted rotations (one decomposition) plus `|giant steps|` ordinary
//! rotations — about 2·sqrt(#diagonals) rotations — and one rescale (one level).

use std::collections::{BTreeMap, BTreeSet};

use crate::ciphertext::{Ciphertext, ExtendedPlaintext};
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::evaluator::Evaluator;

/// A slot-vector linear map given by its non-zero diagonals.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearTransform {
    slots: usize,
    diagonals: BTreeMap<usize, Vec<f64>>,
    baby_steps: usize,
}

/// A [`LinearTransform`] with its diagonals pre-rotated and encoded at a level and scale.
#[derive(Clone, Debug)]
pub struct EncodedLinearTransform {
    level: usize,
    scale: f64,
    baby_steps: usize,
    /// giant step index j -> [(baby step i, plaintext of rot(diag_{j·n1+i}, -j·n1))], encoded
    /// over Q ∪ P for double hoisting.
    groups: BTreeMap<usize, Vec<(usize, ExtendedPlaintext)>>,
}

impl EncodedLinearTransform {
    /// Level the diagonals were encoded at (the ciphertext must be at this level).
    pub fn level(&self) -> usize {
        self.level
    }
    /// Scale of the encoded diagonals.
    pub fn scale(&self) -> f64 {
        self.scale
    }
}

fn split(k: usize, n1: usize) -> (usize, usize) {
    (k / n1, k % n1)
}

fn count_rotations(keys: &BTreeSet<usize>, n1: usize) -> usize {
    let babies: BTreeSet<usize> = keys.iter().map(|&k| k % n1).filter(|&i| i != 0).collect();
    let giants: BTreeSet<usize> = keys.iter().map(|&k| k / n1).filter(|&j| j != 0).collect();
    babies.len() + giants.len()
}

impl LinearTransform {
    /// A transform from diagonals `k -> diag_k` (each of length `slots`, `k < slots`), with the
    /// baby-step size chosen to minimise the number of rotations.
    pub fn new(slots: usize, diagonals: BTreeMap<usize, Vec<f64>>) -> Result<Self> {
        if !slots.is_power_of_two() {
            return Err(Error::Encoding(format!(
                "slot count {slots} is not a power of two"
            )));
        }
        for (&k, d) in &diagonals {
            if k >= slots || d.len() != slots {
                return Err(Error::Encoding(format!(
                    "diagonal {k} must have index < {slots} and length {slots} (has {})",
                    d.len()
                )));
            }
            if d.iter().any(|x| !x.is_finite()) {
                return Err(Error::Encoding(format!(
                    "diagonal {k} has a non-finite entry"
                )));
            }
        }
        let keys: BTreeSet<usize> = diagonals.keys().copied().collect();
        let mut best = (usize::MAX, 1usize);
        let mut n1 = 1usize;
        while n1 <= slots {
            let c = count_rotations(&keys, n1);
            if c < best.0 {
                best = (c, n1);
            }
            n1 <<= 1;
        }
        Ok(Self {
            slots,
            diagonals,
            baby_steps: best.1,
        })
    }

    /// The transform of an `m × n` matrix (`m, n ≤ slots`) acting on the first `n` slots and
    /// writing the first `m` slots (the other output slots are zero, whatever the input holds
    /// beyond its first `n` slots).
    pub fn from_matrix(matrix: &[Vec<f64>], slots: usize) -> Result<Self> {
        let m = matrix.len();
        let n = matrix.first().map(|r| r.len()).unwrap_or(0);
        if m == 0 || n == 0 || m > slots || n > slots || matrix.iter().any(|r| r.len() != n) {
            return Err(Error::Encoding(format!(
                "matrix must be rectangular with 1..={slots} rows and columns"
            )));
        }
        let mut diagonals: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for (i, row) in matrix.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                if x != 0.0 {
                    let k = (j + slots - i) % slots;
                    diagonals.entry(k).or_insert_with(|| vec![0.0; slots])[i] = x;
                }
            }
        }
        Self::new(slots, diagonals)
    }

    /// Overrides the baby-step size (a power of two ≤ slots).
    pub fn with_baby_steps(mut self, n1: usize) -> Result<Self> {
        if !n1.is_power_of_two() || n1 > self.slots {
            return Err(Error::Encoding(format!("baby-step size {n1} invalid")));
        }
        self.baby_steps = n1;
        Ok(self)
    }

    /// Baby-step size.
    pub fn baby_steps(&self) -> usize {
        self.baby_steps
    }

    /// Number of non-zero diagonals.
    pub fn num_diagonals(&self) -> usize {
        self.diagonals.len()
    }

    /// Rotation steps whose keys an evaluation needs (baby steps, then giant steps).
    ///
    /// Evaluation cost: one decomposition, one key inner product per non-zero diagonal (no
    /// NTT), one division by P per giant step, one ordinary rotation per giant step.
    pub fn rotation_steps(&self) -> Vec<i64> {
        let n1 = self.baby_steps;
        let babies: BTreeSet<usize> = self
            .diagonals
            .keys()
            .map(|&k| k % n1)
            .filter(|&i| i != 0)
            .collect();
        let giants: BTreeSet<usize> = self
            .diagonals
            .keys()
            .map(|&k| k / n1 * n1)
            .filter(|&j| j != 0)
            .collect();
        babies.into_iter().chain(giants).map(|s| s as i64).collect()
    }

    /// The plaintext result `M·v` (reference for tests and for a cleartext executor).
    pub fn apply_plain(&self, v: &[f64]) -> Vec<f64> {
        let n = self.slots;
        let mut out = vec![0.0; n];
        for (&k, d) in &self.diagonals {
            for (i, o) in out.iter_mut().enumerate() {
                *o += d[i] * v.get((i + k) % n).copied().unwrap_or(0.0);
            }
        }
        out
    }

    /// Pre-rotates and encodes the diagonals at `level` and `scale` (use the prime q_level as
    /// the scale to keep the ciphertext's scale unchanged after the rescale).
    pub fn encode(
        &self,
        encoder: &Encoder,
        level: usize,
        scale: f64,
    ) -> Result<EncodedLinearTransform> {
        if encoder.slots() != self.slots {
            return Err(Error::Encoding(format!(
                "transform has {} slots, parameters have {}",
                self.slots,
                encoder.slots()
            )));
        }
        let n = self.slots;
        let n1 = self.baby_steps;
        let mut groups: BTreeMap<usize, Vec<(usize, ExtendedPlaintext)>> = BTreeMap::new();
        for (&k, d) in &self.diagonals {
            let (j, i) = split(k, n1);
            let shift = j * n1;
            // rot(d, -shift)[t] = d[(t - shift) mod n]
            let rotated: Vec<f64> = (0..n).map(|t| d[(t + n - shift % n) % n]).collect();
            let pt = encoder.encode_extended(&rotated, level, scale)?;
            groups.entry(j).or_default().push((i, pt));
        }
        Ok(EncodedLinearTransform {
            level,
            scale,
            baby_steps: n1,
            groups,
        })
    }
}

impl Evaluator {
    /// Applies an encoded linear transform and rescales once: the result is one level lower
    /// with scale `ct.scale · lt.scale / q_level`.
    pub fn linear_transform(
        &self,
        ct: &Ciphertext,
        lt: &EncodedLinearTransform,
    ) -> Result<Ciphertext> {
        if ct.level() != lt.level {
            return Err(Error::LevelMismatch {
                left: ct.level(),
                right: lt.level,
            });
        }
        // One decomposition serves every baby step of every group (double hoisting).
        let dec = self.decompose(ct)?;
        let mut total: Option<Ciphertext> = None;
        for (&j, items) in &lt.groups {
            let terms: Vec<(i64, &ExtendedPlaintext)> =
                items.iter().map(|(i, pt)| (*i as i64, pt)).collect();
            let inner = self.rotate_and_combine(ct, Some(&dec), &terms)?;
            let moved = self.rotate(&inner, (j * lt.baby_steps) as i64)?;
            match total.as_mut() {
                None => total = Some(moved),
                Some(acc) => self.add_assign(acc, &moved)?,
            }
        }
        let total = match total {
            Some(t) => t,
            // No diagonals: the zero map.
            None => self.mul_integer(&self.mul_plain_zero(ct, lt.scale)?, 0)?,
        };
        self.rescale(&total)
    }

    fn mul_plain_zero(&self, ct: &Ciphertext, scale: f64) -> Result<Ciphertext> {
        self.mul_const(ct, 0.0, scale)
    }
}
