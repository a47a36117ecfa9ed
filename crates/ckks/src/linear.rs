//! Linear transforms on slot vectors by the diagonal method with baby-step/giant-step (BSGS).
//!
//! A transform maps `inputs` ciphertexts to `outputs` ciphertexts. Block `(o, i)` — the part of
//! output `o` that depends on input `i` — is given by its non-zero generalized diagonals
//! `diag_k[s] = M_{o,i}[s][(s + k) mod n]` over `n` slots. With baby-step size `n1`, diagonal
//! `k = j·n1 + b` is evaluated as `rot(Σ_b rot(diag_k, −j·n1) ⊙ rot(x, b), j·n1)`.
//!
//! Cost of one application: per input, one decomposition and one key inner product per distinct
//! baby step (shared by every output and giant step: double hoisting); per (output, giant step),
//! two multiply-accumulates in Q ∪ P per diagonal and a giant-step rotation that stays in Q ∪ P
//! (only its `c_1` is divided by P, to be decomposed); per output, one division by P fused with
//! the rescale (one level). A rotation step without its own key is composed of power-of-two keys
//! ([`crate::Evaluator::rotation_parts`]).
//!
//! **Batch mode.** A transform defined over `n` slots, encoded for parameters with `B·n` slots,
//! acts on `B` interleaved vectors — vector `b`'s slot `s` at slot `s·B + b` — each exactly as
//! the transform says. Rotating the full vector by `k·B` rotates every vector by `k`, and the
//! masks are the diagonals with each value repeated `B` times, so the rotation keys are the
//! transform's steps times `B`.
//!
//! Masks are encoded ahead of time ([`MaskEncoding::Ahead`]) or, when they would not fit in
//! memory, each time the transform runs ([`MaskEncoding::OnUse`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::ciphertext::{Ciphertext, ExtendedPlaintext};
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::evaluator::{Evaluator, ExtendedCiphertext, ExtendedRotations};
use crate::params::Parameters;

/// Non-zero diagonals of one block: diagonal index `k` -> values (one per slot).
pub type Diagonals = BTreeMap<usize, Vec<f64>>;

/// A linear map from `inputs` to `outputs` slot vectors, given block by block by diagonals.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearTransform {
    slots: usize,
    inputs: usize,
    outputs: usize,
    /// (output, input) -> diagonals.
    blocks: BTreeMap<(usize, usize), Diagonals>,
    baby_steps: usize,
}

/// When the masks of an [`EncodedLinearTransform`] are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskEncoding {
    /// All at once by [`LinearTransform::encode_with`]: fastest, takes
    /// [`LinearTransform::encoded_bytes`] of memory.
    Ahead,
    /// On every application: the memory of the diagonals only, slower per application.
    OnUse,
    /// On first use (or by [`EncodedLinearTransform::warm`]) and kept: as fast as
    /// [`MaskEncoding::Ahead`] once warm, with an encoding step that costs nothing up front.
    Cached,
}

enum Mask {
    /// Encoded over Q ∪ P at the transform's level.
    Ready(ExtendedPlaintext),
    /// The diagonal already rotated by its giant step, over the transform's own slots.
    Deferred(Vec<f64>),
    /// As `Deferred`, with its encoding once made.
    Cached(Vec<f64>, OnceLock<ExtendedPlaintext>),
}

/// Per input, the (baby rotation, mask) terms of one (output, giant step) group.
type GroupParts = Vec<(usize, Vec<(i64, Mask)>)>;

/// A [`LinearTransform`] with its diagonals pre-rotated (and, with [`MaskEncoding::Ahead`],
/// encoded) at a level and scale for one parameter set.
pub struct EncodedLinearTransform {
    level: usize,
    scale: f64,
    inputs: usize,
    outputs: usize,
    batch: usize,
    /// Rotation of giant step `j` is `j · giant_unit` (baby-step size times the batch).
    giant_unit: usize,
    /// (output, giant step) -> per input, the baby-step terms.
    groups: BTreeMap<(usize, usize), GroupParts>,
    /// Set for [`MaskEncoding::OnUse`].
    encoder: Option<Encoder>,
}

impl std::fmt::Debug for EncodedLinearTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedLinearTransform")
            .field("level", &self.level)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("batch", &self.batch)
            .field("groups", &self.groups.len())
            .field("masks_on_use", &self.encoder.is_some())
            .finish()
    }
}

impl EncodedLinearTransform {
    fn encode_mask(&self, encoder: &Encoder, d: &[f64]) -> Result<ExtendedPlaintext> {
        encoder.encode_extended(&dilate(d, self.batch), self.level, self.scale)
    }

    /// Encodes every [`MaskEncoding::Cached`] mask not encoded yet (in parallel), so the next
    /// application runs at full speed. Does nothing for the other encodings.
    pub fn warm(&self) -> Result<()> {
        let Some(enc) = &self.encoder else {
            return Ok(());
        };
        let cells: Vec<(&Vec<f64>, &OnceLock<ExtendedPlaintext>)> = self
            .groups
            .values()
            .flat_map(|parts| parts.iter().flat_map(|(_, terms)| terms.iter()))
            .filter_map(|(_, m)| match m {
                Mask::Cached(d, cell) if cell.get().is_none() => Some((d, cell)),
                _ => None,
            })
            .collect();
        cells.par_iter().try_for_each(|(d, cell)| {
            if cell.get().is_none() {
                let _ = cell.set(self.encode_mask(enc, d)?);
            }
            Ok(())
        })
    }

    /// Masks kept once encoded ([`MaskEncoding::Cached`]): how many are encoded now, and how
    /// many there are.
    pub fn cached_masks(&self) -> (usize, usize) {
        self.groups
            .values()
            .flat_map(|parts| parts.iter().flat_map(|(_, terms)| terms.iter()))
            .fold((0, 0), |(done, all), (_, m)| match m {
                Mask::Cached(_, cell) => (done + usize::from(cell.get().is_some()), all + 1),
                _ => (done, all),
            })
    }

    /// Level the diagonals were encoded at (the ciphertexts must be at this level).
    pub fn level(&self) -> usize {
        self.level
    }
    /// Scale of the encoded diagonals.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// Number of input ciphertexts.
    pub fn inputs(&self) -> usize {
        self.inputs
    }
    /// Number of output ciphertexts.
    pub fn outputs(&self) -> usize {
        self.outputs
    }
    /// Vectors interleaved in each ciphertext (1 unless the parameters have more slots than the
    /// transform).
    pub fn batch(&self) -> usize {
        self.batch
    }
}

/// The rotation steps a BSGS evaluation of diagonals `keys` with baby-step size `baby_steps`
/// needs: the non-zero baby steps `k mod n1` and giant steps `⌊k / n1⌋·n1`. Their count is the
/// number of rotations one application performs per input.
pub fn bsgs_rotation_steps(
    keys: impl IntoIterator<Item = usize>,
    baby_steps: usize,
) -> BTreeSet<usize> {
    let n1 = baby_steps.max(1);
    let mut out = BTreeSet::new();
    for k in keys {
        if k % n1 != 0 {
            out.insert(k % n1);
        }
        if k / n1 != 0 {
            out.insert(k / n1 * n1);
        }
    }
    out
}

fn check_diagonals(slots: usize, diagonals: &Diagonals) -> Result<()> {
    for (&k, d) in diagonals {
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
    Ok(())
}

impl LinearTransform {
    /// A one-input, one-output transform from diagonals `k -> diag_k` (each of length `slots`,
    /// `k < slots`), with the baby-step size chosen to minimise the number of rotations.
    pub fn new(slots: usize, diagonals: Diagonals) -> Result<Self> {
        Self::from_blocks(slots, 1, 1, BTreeMap::from([((0, 0), diagonals)]))
    }

    /// A transform from `inputs` to `outputs` vectors of `slots` slots, block `(o, i)` given by
    /// its diagonals; the baby-step size minimises the number of rotations.
    pub fn from_blocks(
        slots: usize,
        inputs: usize,
        outputs: usize,
        blocks: BTreeMap<(usize, usize), Diagonals>,
    ) -> Result<Self> {
        if !slots.is_power_of_two() {
            return Err(Error::Encoding(format!(
                "slot count {slots} is not a power of two"
            )));
        }
        if inputs == 0 || outputs == 0 {
            return Err(Error::Encoding(
                "a linear transform needs at least one input and one output".into(),
            ));
        }
        for (&(o, i), diagonals) in &blocks {
            if o >= outputs || i >= inputs {
                return Err(Error::Encoding(format!(
                    "block ({o}, {i}) outside {outputs} outputs × {inputs} inputs"
                )));
            }
            check_diagonals(slots, diagonals)?;
        }
        let mut lt = Self {
            slots,
            inputs,
            outputs,
            blocks,
            baby_steps: 1,
        };
        let keys = lt.diagonal_indices();
        let mut best = (usize::MAX, 1usize);
        let mut n1 = 1usize;
        while n1 <= slots {
            let c = bsgs_rotation_steps(keys.iter().copied(), n1).len();
            if c < best.0 {
                best = (c, n1);
            }
            n1 <<= 1;
        }
        lt.baby_steps = best.1;
        Ok(lt)
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
        let mut diagonals = Diagonals::new();
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

    /// Overrides the baby-step size (a power of two ≤ slots), e.g. to share rotation keys with
    /// other transforms.
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

    /// Slots of the vectors the transform acts on.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Number of non-zero diagonals over all blocks.
    pub fn num_diagonals(&self) -> usize {
        self.blocks.values().map(BTreeMap::len).sum()
    }

    /// Diagonal indices used by any block.
    pub fn diagonal_indices(&self) -> BTreeSet<usize> {
        self.blocks
            .values()
            .flat_map(|d| d.keys().copied())
            .collect()
    }

    /// Rotation steps whose keys an evaluation needs over the transform's own slots (times the
    /// batch in batch mode; see [`EncodedLinearTransform::batch`]).
    pub fn rotation_steps(&self) -> Vec<i64> {
        bsgs_rotation_steps(self.diagonal_indices(), self.baby_steps)
            .into_iter()
            .map(|s| s as i64)
            .collect()
    }

    /// The plaintext result (reference for tests and for a cleartext executor): `out[o] =
    /// Σ_i M_{o,i} · inputs[i]`.
    pub fn apply_plain_blocks(&self, inputs: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
        let n = self.slots;
        if inputs.len() != self.inputs || inputs.iter().any(|v| v.len() > n) {
            return Err(Error::Encoding(format!(
                "expected {} input vectors of at most {n} values",
                self.inputs
            )));
        }
        let mut out = vec![vec![0.0; n]; self.outputs];
        for (&(o, i), diagonals) in &self.blocks {
            let v = &inputs[i];
            for (&k, d) in diagonals {
                for (s, acc) in out[o].iter_mut().enumerate() {
                    *acc += d[s] * v.get((s + k) % n).copied().unwrap_or(0.0);
                }
            }
        }
        Ok(out)
    }

    /// [`LinearTransform::apply_plain_blocks`] for a one-input, one-output transform (an input
    /// shorter than the slot count is zero-padded).
    pub fn apply_plain(&self, v: &[f64]) -> Result<Vec<f64>> {
        if self.outputs != 1 {
            return Err(Error::Encoding(format!(
                "transform has {} outputs; use apply_plain_blocks",
                self.outputs
            )));
        }
        let mut out = self.apply_plain_blocks(&[v.to_vec()])?;
        Ok(out.swap_remove(0))
    }

    /// Bytes the masks take when encoded ahead of time at `level` under `params`.
    pub fn encoded_bytes(&self, params: &Parameters, level: usize) -> usize {
        let residues = level + 1 + params.p_primes().len();
        self.num_diagonals()
            .saturating_mul(residues.saturating_mul(params.n()).saturating_mul(8))
    }

    /// Pre-rotates and encodes the diagonals at `level` and `scale` (use the prime q_level as
    /// the scale to keep the ciphertext's scale unchanged after the rescale).
    pub fn encode(
        &self,
        encoder: &Encoder,
        level: usize,
        scale: f64,
    ) -> Result<EncodedLinearTransform> {
        self.encode_with(encoder, level, scale, MaskEncoding::Ahead)
    }

    /// [`LinearTransform::encode`] with a choice of when the masks are encoded. The encoder's
    /// slot count must be a multiple `B` of the transform's (batch mode with `B` vectors).
    pub fn encode_with(
        &self,
        encoder: &Encoder,
        level: usize,
        scale: f64,
        masks: MaskEncoding,
    ) -> Result<EncodedLinearTransform> {
        let params = encoder.parameters();
        let full = encoder.slots();
        if !full.is_multiple_of(self.slots) {
            return Err(Error::Encoding(format!(
                "transform has {} slots, parameters have {full}",
                self.slots
            )));
        }
        if level > params.max_level() || level == 0 {
            return Err(Error::Encoding(format!(
                "a linear transform is encoded at a level in 1..={} (got {level})",
                params.max_level()
            )));
        }
        let batch = full / self.slots;
        let n = self.slots;
        let n1 = self.baby_steps;
        // (output, giant step, input, baby rotation, rotated diagonal)
        let mut flat: Vec<(usize, usize, usize, i64, Vec<f64>)> = Vec::new();
        for (&(o, i), diagonals) in &self.blocks {
            for (&k, d) in diagonals {
                let (j, b) = (k / n1, k % n1);
                let shift = (j * n1) % n;
                // rot(d, -shift)[t] = d[(t - shift) mod n]
                let rotated: Vec<f64> = (0..n).map(|t| d[(t + n - shift) % n]).collect();
                flat.push((o, j, i, (b * batch) as i64, rotated));
            }
        }
        let encoded: Vec<Mask> = flat
            .par_iter_mut()
            .map(|(.., rotated)| match masks {
                MaskEncoding::OnUse => Ok(Mask::Deferred(std::mem::take(rotated))),
                MaskEncoding::Cached => Ok(Mask::Cached(std::mem::take(rotated), OnceLock::new())),
                MaskEncoding::Ahead => Ok(Mask::Ready(encoder.encode_extended(
                    &dilate(rotated, batch),
                    level,
                    scale,
                )?)),
            })
            .collect::<Result<_>>()?;
        let mut groups: BTreeMap<(usize, usize), GroupParts> = BTreeMap::new();
        for ((o, j, i, b, _), mask) in flat.into_iter().zip(encoded) {
            let parts = groups.entry((o, j)).or_default();
            match parts.last_mut() {
                Some((last, terms)) if *last == i => terms.push((b, mask)),
                _ => parts.push((i, vec![(b, mask)])),
            }
        }
        Ok(EncodedLinearTransform {
            level,
            scale,
            inputs: self.inputs,
            outputs: self.outputs,
            batch,
            giant_unit: n1 * batch,
            groups,
            encoder: (masks != MaskEncoding::Ahead).then(|| encoder.clone()),
        })
    }
}

/// Repeats every value `batch` times: slot `i·batch + b` holds `v[i]`.
pub fn dilate(v: &[f64], batch: usize) -> Vec<f64> {
    if batch == 1 {
        return v.to_vec();
    }
    v.iter()
        .flat_map(|&x| std::iter::repeat_n(x, batch))
        .collect()
}

impl Evaluator {
    /// Applies an encoded one-input, one-output linear transform and rescales once: the result
    /// is one level lower with scale `ct.scale · lt.scale / q_level`.
    pub fn linear_transform(
        &self,
        ct: &Ciphertext,
        lt: &EncodedLinearTransform,
    ) -> Result<Ciphertext> {
        let mut out = self.linear_transform_blocks(std::slice::from_ref(ct), lt, None)?;
        match (out.pop(), out.is_empty()) {
            (Some(r), true) => Ok(r),
            _ => Err(Error::Encoding(format!(
                "transform has {} outputs; use linear_transform_blocks",
                lt.outputs
            ))),
        }
    }

    /// Applies an encoded linear transform to `inputs` (all at the transform's level and one
    /// scale) and rescales each output once. Setting `cancel` stops the evaluation between
    /// groups with [`Error::Cancelled`].
    pub fn linear_transform_blocks(
        &self,
        inputs: &[Ciphertext],
        lt: &EncodedLinearTransform,
        cancel: Option<&AtomicBool>,
    ) -> Result<Vec<Ciphertext>> {
        if inputs.len() != lt.inputs {
            return Err(Error::Encoding(format!(
                "transform takes {} input ciphertexts, got {}",
                lt.inputs,
                inputs.len()
            )));
        }
        if let Some(ct) = inputs.iter().find(|c| c.level() != lt.level) {
            return Err(Error::LevelMismatch {
                left: ct.level(),
                right: lt.level,
            });
        }
        let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
        // Per input: one decomposition and, per baby step, one key inner product, shared by
        // every output and giant step.
        let mut babies: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); inputs.len()];
        for parts in lt.groups.values() {
            for (i, terms) in parts {
                babies[*i].extend(terms.iter().map(|(b, _)| *b));
            }
        }
        let rots = inputs
            .iter()
            .zip(&babies)
            .map(|(c, b)| self.rotations_extended(c, None, &b.iter().copied().collect::<Vec<_>>()))
            .collect::<Result<Vec<_>>>()?;
        // Per output, the giant-step terms are summed in Q ∪ P: each group's inner sum is
        // rotated there (its c_0 never divided by P) and every output pays one division by P,
        // fused with its rescale. Groups run in parallel, each thread summing into its own
        // per-output accumulators (one task per group: coarse enough to use every core at
        // small rings), merged at the end.
        let groups: Vec<(&(usize, usize), &GroupParts)> = lt.groups.iter().collect();
        type Sums = Vec<Option<ExtendedCiphertext>>;
        let merge = |acc: &mut Option<ExtendedCiphertext>, x: ExtendedCiphertext| -> Result<()> {
            match acc.as_mut() {
                None => *acc = Some(x),
                Some(a) => self.add_extended_assign(a, &x)?,
            }
            Ok(())
        };
        let outs: Sums = groups
            .par_iter()
            .with_max_len(1)
            .try_fold(
                || vec![None; lt.outputs],
                |mut sums: Sums, &(&(o, j), parts)| -> Result<Sums> {
                    if cancelled() {
                        return Err(Error::Cancelled);
                    }
                    if let Some(moved) = self.linear_group(&rots, lt, j, parts)? {
                        merge(&mut sums[o], moved)?;
                    }
                    Ok(sums)
                },
            )
            .try_reduce(
                || vec![None; lt.outputs],
                |mut a: Sums, b: Sums| -> Result<Sums> {
                    for (x, y) in a.iter_mut().zip(b) {
                        if let Some(y) = y {
                            merge(x, y)?;
                        }
                    }
                    Ok(a)
                },
            )?;
        outs.into_par_iter()
            .map(|acc| match acc {
                Some(acc) => self.mod_down_rescale_extended(acc),
                // A block row without diagonals: the zero vector, at the same level and scale.
                None => self.rescale(&self.mul_const(&inputs[0], 0.0, lt.scale)?),
            })
            .collect()
    }

    /// One (output, giant step) group of a linear transform: the baby-step terms of every
    /// input multiplied by their masks and summed in Q ∪ P, then rotated by the giant step.
    fn linear_group(
        &self,
        rots: &[ExtendedRotations],
        lt: &EncodedLinearTransform,
        j: usize,
        parts: &GroupParts,
    ) -> Result<Option<ExtendedCiphertext>> {
        let mut inner: Option<ExtendedCiphertext> = None;
        for (i, terms) in parts {
            let deferred: Vec<Option<ExtendedPlaintext>> = match &lt.encoder {
                Some(enc) => terms
                    .iter()
                    .map(|(_, m)| match m {
                        Mask::Deferred(d) => Ok(Some(lt.encode_mask(enc, d)?)),
                        Mask::Cached(d, cell) => {
                            if cell.get().is_none() {
                                // Two evaluations racing encode the same mask; one is kept.
                                let _ = cell.set(lt.encode_mask(enc, d)?);
                            }
                            Ok(None)
                        }
                        Mask::Ready(_) => Ok(None),
                    })
                    .collect::<Result<_>>()?,
                None => Vec::new(),
            };
            let refs = terms
                .iter()
                .enumerate()
                .map(|(t, (b, m))| match (m, deferred.get(t)) {
                    (Mask::Ready(pt), _) | (Mask::Deferred(_), Some(Some(pt))) => Ok((*b, pt)),
                    (Mask::Cached(_, cell), _) => cell
                        .get()
                        .map(|pt| (*b, pt))
                        .ok_or_else(|| Error::Encoding("a cached mask was not encoded".into())),
                    (Mask::Deferred(_), _) => {
                        Err(Error::Encoding("a deferred mask was not encoded".into()))
                    }
                })
                .collect::<Result<Vec<(i64, &ExtendedPlaintext)>>>()?;
            let part = self.combine_rotations_extended(&rots[*i], &refs)?;
            match inner.as_mut() {
                None => inner = Some(part),
                Some(acc) => self.add_extended_assign(acc, &part)?,
            }
        }
        let Some(inner) = inner else { return Ok(None) };
        Ok(Some(
            self.rotate_extended(&inner, (j * lt.giant_unit) as i64)?,
        ))
    }
}
