//! Slot layouts and the compiled plan.
//!
//! A tensor lives in one or more ciphertexts; a [`SlotMap`] says at which (ciphertext, slot)
//! positions each feature sits. Consecutive linear layers are fused into one [`LinearOp`] and
//! lowered to a [`LinearStep`]: for every (output ciphertext, input ciphertext) pair, the
//! generalized diagonals `d_k` with `out[s] = Σ_k d_k[s] · in[s + k]`. CHW outputs are placed on a
//! grid anchored at the input pixels they start from (a stride-1 convolution moves no data: its
//! diagonals are its taps); vector outputs use the replicated-block method — `m` diagonals, then
//! log2(span/m) rotate-and-add steps — leaving feature `r` in slot `r`. Activations are slot-wise.
//!
//! Two layouts keep convolutions cheap after pooling and strides:
//!
//! - **Window sums.** An average pooling that a convolution follows is not fused into it (that
//!   would multiply the convolution's diagonals by the window's offsets: 9 taps become 36 after a
//!   2×2 pool). It becomes a [`Step::RotateSum`] — each ciphertext plus its rotations by the
//!   window's column and row offsets, no level and no masks — and its `1/(kh·kw)` goes into the
//!   convolution, which reads each window's sum where the window starts.
//! - **Multiplexed outputs.** After a stride (or a window sum), a channel occupies one slot in
//!   `sy·sx` of its block. A strided output grid puts up to `sy·sx` channels in one block, each in
//!   its own lane of those gaps ([`Lanes`]), so the tensor fills fewer ciphertexts: later
//!   activations and layers touch fewer ciphertexts, and a convolution still finds each channel's
//!   neighbours at fixed slot distances (Lee et al.'s multiplexed packing).

use std::collections::{BTreeMap, BTreeSet};

use cipherinfer_ckks::bsgs_rotation_steps;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{CompileError, Result};
use crate::linear::LinearOp;
use crate::network::{Layer, Network, Shape};

/// Geometry of a CHW tensor laid out channel-per-block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Grid {
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Slots per channel block (power of two).
    pub block: usize,
    /// Slot distance between rows.
    pub row_stride: usize,
    /// Slot distance between columns.
    pub col_stride: usize,
    /// Channel blocks per ciphertext.
    pub channels_per_ct: usize,
    /// Channels sharing one block in the gaps a stride leaves (multiplexed packing); absent
    /// for one channel per block.
    #[serde(default, skip_serializing_if = "Lanes::is_single")]
    pub lanes: Lanes,
}

/// Multiplexed packing: after a stride, `rows × cols` channels share one block, channel lane
/// `(a, b)` offset by `a · row_step + b · col_step` slots from the grid positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Lanes {
    /// Lanes down.
    pub rows: usize,
    /// Lanes across.
    pub cols: usize,
    /// Slot distance between lanes down.
    pub row_step: usize,
    /// Slot distance between lanes across.
    pub col_step: usize,
}

impl Default for Lanes {
    fn default() -> Self {
        Self {
            rows: 1,
            cols: 1,
            row_step: 0,
            col_step: 0,
        }
    }
}

impl Lanes {
    /// Whether a block holds one channel (no multiplexing).
    pub fn is_single(&self) -> bool {
        *self == Lanes::default()
    }

    /// Channels per block.
    pub fn count(&self) -> usize {
        self.rows * self.cols
    }
}

impl Grid {
    /// (ciphertext, slot) of element (c, y, x).
    pub fn position(&self, c: usize, y: usize, x: usize) -> (usize, usize) {
        let m = self.lanes.count().max(1);
        let (block, lane) = (c / m, c % m);
        let offset = (lane / self.lanes.cols.max(1)) * self.lanes.row_step
            + (lane % self.lanes.cols.max(1)) * self.lanes.col_step;
        (
            block / self.channels_per_ct,
            (block % self.channels_per_ct) * self.block
                + y * self.row_stride
                + x * self.col_stride
                + offset,
        )
    }
    /// Ciphertexts needed.
    pub fn num_cts(&self) -> usize {
        self.c
            .div_ceil(self.lanes.count().max(1))
            .div_ceil(self.channels_per_ct)
    }

    /// Whether every element has its own slot inside its channel's block.
    fn is_injective(&self) -> bool {
        let m = self.lanes.count().max(1).min(self.c);
        let mut seen = BTreeSet::new();
        for lane in 0..m {
            for y in 0..self.h {
                for x in 0..self.w {
                    let (_, s) = self.position(lane, y, x);
                    if s >= self.block || !seen.insert(s) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// The densest multiplexed form of this grid: as many channels per block as the gaps left
    /// by its strides hold (powers of two, no more than needed), so a strided layer's output
    /// fills fewer ciphertexts. Lanes sit at fractions of the strides, so a later convolution
    /// still finds each channel's neighbours at fixed slot distances.
    pub fn multiplexed(self) -> Grid {
        let plain = Grid {
            lanes: Lanes::default(),
            ..self
        };
        let mut best = plain;
        let mut rows = 1;
        while rows <= self.row_stride && self.row_stride.is_multiple_of(rows) {
            let mut cols = 1;
            while cols <= self.col_stride && self.col_stride.is_multiple_of(cols) {
                let lanes = Lanes {
                    rows,
                    cols,
                    row_step: self.row_stride / rows,
                    col_step: self.col_stride / cols,
                };
                let g = Grid { lanes, ..plain };
                if lanes.count() <= self.c.next_power_of_two()
                    && g.is_injective()
                    && (g.num_cts(), lanes.count()) < (best.num_cts(), best.lanes.count())
                {
                    best = g;
                }
                cols *= 2;
            }
            rows *= 2;
        }
        best
    }
}

/// Where each feature of a tensor is stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SlotMap {
    /// Number of ciphertexts.
    pub num_cts: usize,
    /// For each feature (CHW flattened order), the (ciphertext, slot) positions holding it; the
    /// first is canonical.
    pub positions: Vec<Vec<(usize, usize)>>,
    /// Grid geometry, for CHW tensors.
    pub grid: Option<Grid>,
}

impl SlotMap {
    /// The client's packing of an input tensor: one channel per block of `next_pow2(h·w)`
    /// slots, row-major; a single channel is replicated into every block of the ciphertext so
    /// each output channel of the first layer finds it in its own block.
    pub fn input(shape: (usize, usize, usize), slots: usize) -> Result<Self> {
        let (c, h, w) = shape;
        let block = (h * w).next_power_of_two();
        // A power-of-two row stride makes convolution taps (row_stride·dy + dx) share rotation
        // keys with the dense layers' baby/giant steps; use it when the block stays the same.
        let row_stride = if h * w.next_power_of_two() <= block {
            w.next_power_of_two()
        } else {
            w
        };
        if block > slots {
            return Err(CompileError::DoesNotFit(format!(
                "a {h}x{w} channel needs {block} slots, the parameters have {slots}"
            )));
        }
        let grid = Grid {
            c,
            h,
            w,
            block,
            row_stride,
            col_stride: 1,
            channels_per_ct: slots / block,
            lanes: Lanes::default(),
        };
        let mut positions = Vec::with_capacity(c * h * w);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let (ct, s) = grid.position(ch, y, x);
                    let mut p = vec![(ct, s)];
                    if c == 1 {
                        p.extend((1..grid.channels_per_ct).map(|b| (0, b * block + s)));
                    }
                    positions.push(p);
                }
            }
        }
        Ok(Self {
            num_cts: grid.num_cts(),
            positions,
            grid: Some(grid),
        })
    }

    /// Packs a tensor into per-ciphertext slot vectors.
    pub fn pack(&self, values: &[f64], slots: usize) -> Result<Vec<Vec<f64>>> {
        if values.len() != self.positions.len() {
            return Err(CompileError::Input(format!(
                "expected {} values, got {}",
                self.positions.len(),
                values.len()
            )));
        }
        let mut cts = vec![vec![0.0; slots]; self.num_cts];
        for (v, ps) in values.iter().zip(&self.positions) {
            for &(ct, s) in ps {
                cts[ct][s] = *v;
            }
        }
        Ok(cts)
    }

    /// Reads the canonical value of every feature.
    pub fn unpack(&self, cts: &[Vec<f64>]) -> Vec<f64> {
        self.positions
            .iter()
            .map(|ps| {
                ps.first()
                    .and_then(|&(ct, s)| cts.get(ct).and_then(|c| c.get(s)))
                    .copied()
                    .unwrap_or(f64::NAN)
            })
            .collect()
    }
}

/// Serializes a map with composite keys as a sequence of (key, value) pairs (JSON objects only
/// take string keys).
mod as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, K: Serialize, V: Serialize>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        let pairs: Vec<(K, V)> = Vec::deserialize(d)?;
        Ok(pairs.into_iter().collect())
    }
}

/// How one evaluation uses a rotation step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RotationUse {
    /// The highest level it runs at.
    pub level: usize,
    /// Rotations sharing a decomposition with others (a key inner product each).
    pub hoisted: usize,
    /// Rotations with their own decomposition (a full key switch each).
    pub full: usize,
}

/// One fused linear layer lowered to diagonals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearStep {
    /// Ciphertexts in.
    pub in_cts: usize,
    /// Ciphertexts out.
    pub out_cts: usize,
    /// Baby-step size of the baby-step/giant-step evaluation.
    pub baby_steps: usize,
    /// (output ct, input ct) -> diagonal index k -> diagonal values (one per slot).
    #[serde(with = "as_pairs")]
    pub diagonals: BTreeMap<(usize, usize), BTreeMap<usize, Vec<f64>>>,
    /// Bias per output ciphertext (one value per slot).
    pub bias: Vec<Vec<f64>>,
    /// Rotate-and-add steps applied to output ciphertext 0 afterwards.
    pub block_sum: Vec<usize>,
    /// Registers whose ciphertexts follow the current ones as inputs (a residual sum fused into
    /// this step): input ciphertext `i` is the current tensor's for `i` below its count, then
    /// those of each register in turn.
    #[serde(default)]
    pub saved: Vec<usize>,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Step {
    /// A fused linear layer (one level).
    Linear(LinearStep),
    /// A slot-wise polynomial `Σ c_i x^i` (⌈log2 d⌉ levels for x², more in general).
    Poly {
        /// Coefficients, lowest degree first.
        coeffs: Vec<f64>,
    },
    /// A slot-wise polynomial `Σ c_i T_i(y)` in the Chebyshev basis, `y` mapping `interval` to
    /// `[-1, 1]` (the interval is `(-1, 1)` when the map was folded into the previous step).
    Chebyshev {
        /// Chebyshev coefficients, lowest degree first.
        coeffs: Vec<f64>,
        /// Interval of the inputs.
        interval: (f64, f64),
    },
    /// Keeps the current ciphertexts in `register` for a later residual sum (no level).
    Save {
        /// The register.
        register: usize,
    },
    /// Sums each ciphertext with rotations of itself, stage by stage: `x ← x + Σ_o rot(x, o)`
    /// for the offsets `o` of each stage (hoisted within a stage). A pooling window summed this
    /// way costs rotations but no level and no masks; its `1/(kh·kw)` goes into the next step.
    RotateSum {
        /// Offsets of each stage.
        stages: Vec<Vec<usize>>,
    },
}

/// The CKKS polynomial of a Chebyshev step.
pub fn chebyshev_polynomial(
    coeffs: &[f64],
    interval: (f64, f64),
) -> Result<cipherinfer_ckks::Polynomial> {
    Ok(cipherinfer_ckks::Polynomial::chebyshev(
        coeffs.to_vec(),
        interval.0,
        interval.1,
    )?)
}

impl Step {
    /// Levels the step consumes.
    pub fn depth(&self) -> usize {
        match self {
            Step::Linear(_) => 1,
            Step::Save { .. } | Step::RotateSum { .. } => 0,
            Step::Poly { coeffs } => poly_depth(coeffs),
            Step::Chebyshev { coeffs, interval } => chebyshev_polynomial(coeffs, *interval)
                .map(|p| p.depth())
                .unwrap_or(usize::MAX),
        }
    }
    /// Short description for progress reports.
    pub fn describe(&self) -> String {
        match self {
            Step::Linear(l) => format!(
                "linear: {} -> {} ciphertexts, {} diagonals{}",
                l.in_cts,
                l.out_cts,
                l.diagonals.values().map(BTreeMap::len).sum::<usize>(),
                if l.saved.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", adds register {}",
                        l.saved
                            .iter()
                            .map(usize::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ),
            Step::Save { register } => format!("keep for a residual sum: register {register}"),
            Step::RotateSum { stages } => format!(
                "window sum: {} rotations per ciphertext",
                stages.iter().map(Vec::len).sum::<usize>()
            ),
            Step::Poly { coeffs } => {
                format!("activation: degree {}", coeffs.len().saturating_sub(1))
            }
            Step::Chebyshev { coeffs, .. } => {
                format!(
                    "activation: Chebyshev degree {}",
                    coeffs.len().saturating_sub(1)
                )
            }
        }
    }
}

/// Levels a monomial-basis polynomial takes: x² is one multiplication; in general the CKKS
/// library's baby-step/giant-step evaluation (at most ⌈log2 d⌉ + 1).
pub fn poly_depth(coeffs: &[f64]) -> usize {
    if is_pure_square(coeffs) {
        return 1;
    }
    cipherinfer_ckks::Polynomial::monomial(coeffs.to_vec()).map_or(usize::MAX, |p| p.depth())
}

/// Whether the polynomial is exactly `x²`.
pub fn is_pure_square(coeffs: &[f64]) -> bool {
    coeffs.len() >= 3
        && coeffs[0] == 0.0
        && coeffs[1] == 0.0
        && coeffs[2] == 1.0
        && coeffs[3..].iter().all(|&c| c == 0.0)
}

/// A compiled network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Slots per ciphertext.
    pub slots: usize,
    /// How the client packs the input.
    pub input: SlotMap,
    /// Where the output features are after the last step.
    pub output: SlotMap,
    /// Output shape.
    pub output_shape: Shape,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Decrypted outputs are multiplied by this (the last layer was divided by it so that the
    /// outputs fit the headroom of the base prime).
    pub output_multiplier: f64,
}

/// Options of [`compile_with`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompileOptions {
    /// Divide the network's final linear layer by this (a power of two keeps it exact).
    pub output_divisor: f64,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            output_divisor: 1.0,
        }
    }
}

/// The power-of-two divisor that brings outputs of magnitude up to `max_abs` (with a 2x margin)
/// under `2^(log2 q_0 − log2 scale − 1)`, the largest magnitude decryptable at level 0.
pub fn output_divisor_for(max_abs: f64, params: &cipherinfer_ckks::Parameters) -> f64 {
    let q0 = params.q_primes()[0] as f64;
    let limit = q0 / params.default_scale() / 2.0;
    let mut d = 1.0;
    while 2.0 * max_abs / d >= limit {
        d *= 2.0;
    }
    d
}

/// Rotation keys a linear step needs with baby-step size `n1`.
fn step_keys(keys: &BTreeSet<usize>, n1: usize, block_sum: &[usize]) -> BTreeSet<usize> {
    let mut out = bsgs_rotation_steps(keys.iter().copied(), n1);
    out.extend(block_sum.iter().copied());
    out
}

/// Time of a giant-step rotation in units of a hoisted baby-step one: a giant step divides by
/// P, decomposes and takes a key inner product; a baby step takes only the inner product.
const GIANT_ROTATION_COST: usize = 3;

/// What a rotation key not already needed elsewhere costs, in hoisted rotations per evaluation:
/// a baby-step size that needs more keys must save more than this per key. (Measured: on
/// mnist-cnn three more keys save 5 ms of 43; on the larger colour networks, rotation counts
/// that differ by a few units did not show in the time, while their keys grew by a quarter.)
const NEW_KEY_COST: usize = 2;

/// Chooses the baby-step size (a power of two, so keys are shared across layers): the least
/// rotation time plus [`NEW_KEY_COST`] per key not already needed by `others`, then the fewest
/// such keys (a client short of room for keys sets a key budget, see [`crate::keyset`]).
fn best_baby_steps(l: &LinearStep, slots: usize, others: &BTreeSet<usize>) -> usize {
    let keys = l.keys();
    let mut best = ((usize::MAX, usize::MAX), 1usize);
    let mut n1 = 1usize;
    while n1 <= slots {
        let rotations = bsgs_rotation_steps(keys.iter().copied(), n1);
        let new = rotations
            .iter()
            .chain(&l.block_sum)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|k| !others.contains(k))
            .count();
        let (hoisted, giant) = l.bsgs_rotations(n1);
        let time = hoisted + GIANT_ROTATION_COST * giant;
        let cost = (time + NEW_KEY_COST * new, new);
        if cost < best.0 {
            best = (cost, n1);
        }
        n1 <<= 1;
    }
    best.1
}

/// Re-chooses every linear step's baby-step size knowing the keys the other steps need.
fn share_keys(steps: &mut [Step], slots: usize) {
    for _ in 0..3 {
        for i in 0..steps.len() {
            let others: BTreeSet<usize> = steps
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .filter_map(|(_, s)| match s {
                    Step::Linear(l) => Some(step_keys(&l.keys(), l.baby_steps, &l.block_sum)),
                    Step::RotateSum { stages } => Some(stages.iter().flatten().copied().collect()),
                    Step::Poly { .. } | Step::Chebyshev { .. } | Step::Save { .. } => None,
                })
                .flatten()
                .collect();
            if let Step::Linear(l) = &mut steps[i] {
                l.baby_steps = best_baby_steps(l, slots, &others);
            }
        }
    }
}

impl LinearStep {
    /// Rotations of a baby-step/giant-step evaluation with baby-step size `n1`: hoisted ones
    /// (per input ciphertext, one per distinct non-zero baby step) and giant-step ones (one per
    /// output ciphertext and non-zero giant step), block sums not included.
    pub fn bsgs_rotations(&self, n1: usize) -> (usize, usize) {
        let n1 = n1.max(1);
        let mut babies = BTreeSet::new();
        let mut giants = BTreeSet::new();
        for (&(o, i), d) in &self.diagonals {
            for &k in d.keys() {
                if k % n1 != 0 {
                    babies.insert((i, k % n1));
                }
                if k / n1 != 0 {
                    giants.insert((o, k / n1));
                }
            }
        }
        (babies.len(), giants.len())
    }

    /// Diagonal indices used by any (output, input) pair.
    pub fn keys(&self) -> BTreeSet<usize> {
        self.diagonals
            .values()
            .flat_map(|d| d.keys().copied())
            .collect()
    }
}

impl Plan {
    /// Multiplicative depth of the plan.
    pub fn depth(&self) -> usize {
        self.steps.iter().map(Step::depth).sum()
    }

    /// Every rotation step the encrypted evaluation uses, sorted: the minimal key set.
    pub fn rotation_steps(&self) -> Vec<i64> {
        let mut out = BTreeSet::new();
        for step in &self.steps {
            match step {
                Step::Linear(l) => {
                    out.extend(
                        bsgs_rotation_steps(l.keys(), l.baby_steps)
                            .into_iter()
                            .map(|s| s as i64),
                    );
                    out.extend(l.block_sum.iter().map(|&s| s as i64));
                }
                Step::RotateSum { stages } => {
                    out.extend(stages.iter().flatten().map(|&s| s as i64));
                }
                _ => {}
            }
        }
        out.into_iter().collect()
    }

    /// Every rotation step with the highest level it runs at (the input is at level
    /// [`Plan::depth`]), by step: a key need serve no level above it.
    pub fn rotation_key_levels(&self) -> BTreeMap<i64, usize> {
        self.rotation_uses()
            .into_iter()
            .map(|(s, u)| (s, u.level))
            .collect()
    }

    /// Every rotation step with the highest level it runs at and how often one evaluation
    /// rotates by it, hoisted (sharing a decomposition) or not.
    pub fn rotation_uses(&self) -> BTreeMap<i64, RotationUse> {
        let mut out: BTreeMap<i64, RotationUse> = BTreeMap::new();
        let mut want = |step: usize, level: usize, hoisted: bool| {
            let u = out.entry(step as i64).or_default();
            u.level = u.level.max(level);
            if hoisted {
                u.hoisted += 1;
            } else {
                u.full += 1;
            }
        };
        let mut level = self.depth();
        let mut cts = self.input.num_cts;
        for step in &self.steps {
            match step {
                Step::Linear(l) => {
                    let n1 = l.baby_steps.max(1);
                    let mut babies = BTreeSet::new();
                    let mut giants = BTreeSet::new();
                    for (&(o, i), d) in &l.diagonals {
                        for &k in d.keys() {
                            babies.insert((i, k % n1));
                            giants.insert((o, k / n1 * n1));
                        }
                    }
                    for (_, b) in babies.into_iter().filter(|&(_, b)| b != 0) {
                        want(b, level, true);
                    }
                    for (_, g) in giants.into_iter().filter(|&(_, g)| g != 0) {
                        want(g, level, false);
                    }
                    // The block sums run after the step's rescale.
                    for &s in &l.block_sum {
                        want(s, level.saturating_sub(1), false);
                    }
                    cts = l.out_cts;
                }
                Step::RotateSum { stages } => {
                    // Per ciphertext and stage, the first rotation decomposes, the others
                    // share it.
                    for _ in 0..cts {
                        for stage in stages {
                            for (t, &s) in stage.iter().enumerate() {
                                want(s, level, t > 0);
                            }
                        }
                    }
                }
                Step::Poly { .. } | Step::Chebyshev { .. } | Step::Save { .. } => {}
            }
            level = level.saturating_sub(step.depth());
        }
        out
    }

    /// Whether any step needs relinearization (ciphertext products).
    pub fn needs_relinearization(&self) -> bool {
        self.steps.iter().any(|s| {
            matches!(s, Step::Poly { coeffs } if poly_depth(coeffs) > 0)
                || matches!(s, Step::Chebyshev { .. })
        })
    }

    /// Runs the plan on slot vectors in f64: what decryption will show, up to CKKS noise.
    pub fn execute_cleartext(&self, input: &[f64]) -> Result<Vec<f64>> {
        let mut cts = self.input.pack(input, self.slots)?;
        let mut registers: Vec<Vec<Vec<f64>>> = Vec::new();
        let n = self.slots;
        for step in &self.steps {
            cts = match step {
                Step::Save { register } => {
                    if *register != registers.len() {
                        return Err(CompileError::Input(format!(
                            "register {register} saved out of order"
                        )));
                    }
                    registers.push(cts.clone());
                    cts
                }
                Step::RotateSum { stages } => {
                    for stage in stages {
                        for ct in cts.iter_mut() {
                            let base = ct.clone();
                            for &o in stage {
                                for (s, v) in ct.iter_mut().enumerate() {
                                    *v += base[(s + o) % n];
                                }
                            }
                        }
                    }
                    cts
                }
                Step::Chebyshev { coeffs, interval } => {
                    let poly = chebyshev_polynomial(coeffs, *interval)?;
                    cts.iter()
                        .map(|ct| ct.iter().map(|&v| poly.evaluate(v)).collect())
                        .collect()
                }
                Step::Poly { coeffs } => cts
                    .iter()
                    .map(|ct| {
                        ct.iter()
                            .map(|&v| coeffs.iter().rev().fold(0.0, |a, &c| a * v + c))
                            .collect()
                    })
                    .collect(),
                Step::Linear(l) => {
                    for &r in &l.saved {
                        let kept = registers.get(r).ok_or_else(|| {
                            CompileError::Input(format!("register {r} is used before it is saved"))
                        })?;
                        cts.extend(kept.iter().cloned());
                    }
                    if cts.len() != l.in_cts {
                        return Err(CompileError::Input(format!(
                            "linear step takes {} ciphertexts, has {}",
                            l.in_cts,
                            cts.len()
                        )));
                    }
                    let mut out = l.bias.clone();
                    for (&(o, i), diags) in &l.diagonals {
                        for (&k, d) in diags {
                            for s in 0..n {
                                out[o][s] += d[s] * cts[i][(s + k) % n];
                            }
                        }
                    }
                    for &step in &l.block_sum {
                        let rotated: Vec<f64> = (0..n).map(|s| out[0][(s + step) % n]).collect();
                        for (a, b) in out[0].iter_mut().zip(rotated) {
                            *a += b;
                        }
                    }
                    out
                }
            };
        }
        Ok(self.finish_output(&self.output.unpack(&cts)))
    }

    /// Output values as the network computes them, from the values read at the output slots.
    pub fn finish_output(&self, raw: &[f64]) -> Vec<f64> {
        raw.iter().map(|v| v * self.output_multiplier).collect()
    }
}

/// Lowers a fused linear operator from `input` placement to a step and the output placement.
fn lower(
    op: &LinearOp,
    input: &SlotMap,
    out_grid: Option<Grid>,
    slots: usize,
) -> Result<(LinearStep, SlotMap)> {
    let mut diagonals: BTreeMap<(usize, usize), BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    let mut add = |o: usize, i: usize, k: usize, s: usize, w: f64| {
        diagonals
            .entry((o, i))
            .or_default()
            .entry(k)
            .or_insert_with(|| vec![0.0; slots])[s] += w;
    };
    let (out_map, out_cts, block_sum) = match (op.out_shape, out_grid) {
        (Shape::Chw(c, h, w), Some(g)) => {
            let grid = Grid { c, h, w, ..g }.multiplexed();
            let mut positions = Vec::with_capacity(op.rows.len());
            for (f, row) in op.rows.iter().enumerate() {
                let (ch, y, x) = (f / (h * w), (f / w) % h, f % w);
                let (oct, os) = grid.position(ch, y, x);
                for &(i, wv) in row {
                    // Prefer a replica of the input in the output's own ciphertext and block.
                    let cands = &input.positions[i];
                    let &(ict, is) = cands
                        .iter()
                        .find(|&&(ict, is)| ict == oct && is / g.block == os / g.block)
                        .or_else(|| cands.iter().find(|&&(_, is)| is / g.block == os / g.block))
                        .or_else(|| cands.iter().find(|&&(ict, _)| ict == oct))
                        .unwrap_or(&cands[0]);
                    add(oct, ict, (is + slots - os) % slots, os, wv);
                }
                positions.push(vec![(oct, os)]);
            }
            let map = SlotMap {
                num_cts: grid.num_cts(),
                positions,
                grid: Some(grid),
            };
            (map, grid.num_cts(), vec![])
        }
        (shape, _) => {
            let m = shape.len().next_power_of_two();
            if m > slots {
                return Err(CompileError::DoesNotFit(format!(
                    "{} outputs exceed {slots} slots",
                    shape.len()
                )));
            }
            let mut span = m;
            for (r, row) in op.rows.iter().enumerate() {
                for &(i, wv) in row {
                    let (ict, is) = input.positions[i][0];
                    let k = (is + m - r % m) % m;
                    let s = (is + slots - k) % slots;
                    add(0, ict, k, s, wv);
                    span = span.max((s + 1).next_power_of_two());
                }
            }
            let mut steps = Vec::new();
            let mut st = m;
            while st < span {
                steps.push(st);
                st <<= 1;
            }
            let positions = (0..shape.len()).map(|r| vec![(0, r)]).collect();
            let map = SlotMap {
                num_cts: 1,
                positions,
                grid: None,
            };
            (map, 1, steps)
        }
    };
    let mut bias = vec![vec![0.0; slots]; out_cts];
    for (f, b) in op.bias.iter().enumerate() {
        let (ct, s) = out_map.positions[f][0];
        bias[ct][s] = *b;
    }
    let mut step = LinearStep {
        in_cts: input.num_cts,
        out_cts,
        baby_steps: 1,
        diagonals,
        bias,
        block_sum,
        saved: Vec::new(),
    };
    step.baby_steps = best_baby_steps(&step, slots, &BTreeSet::new());
    Ok((step, out_map))
}

/// A 2-D average pooling on a grid as a [`Step::RotateSum`]: the step, the map of the pooled
/// tensor (each window's sum sits where its first element was) and the operator that scales it
/// by `1/(kh·kw)` for the next linear step. `None` for other layers or a tensor off a grid.
fn window_sum(layer: &Layer, input: Shape, current: &SlotMap) -> Option<(Step, SlotMap, LinearOp)> {
    let (Layer::AvgPool2d { kernel, stride }, Some(g)) = (layer, current.grid) else {
        return None;
    };
    let out = layer.output_shape(input, 0).ok()?;
    let (Shape::Chw(c, h, w), Shape::Chw(_, oh, ow)) = (input, out) else {
        return None;
    };
    let stages: Vec<Vec<usize>> = [
        (1..kernel.1)
            .map(|dx| dx * g.col_stride)
            .collect::<Vec<_>>(),
        (1..kernel.0).map(|dy| dy * g.row_stride).collect(),
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect();
    let mut positions = Vec::with_capacity(c * oh * ow);
    for ch in 0..c {
        for y in 0..oh {
            for x in 0..ow {
                positions
                    .push(current.positions[(ch * h + y * stride.0) * w + x * stride.1].clone());
            }
        }
    }
    let grid = Grid {
        h: oh,
        w: ow,
        row_stride: g.row_stride * stride.0,
        col_stride: g.col_stride * stride.1,
        ..g
    };
    let map = SlotMap {
        num_cts: current.num_cts,
        positions,
        grid: Some(grid),
    };
    let mut scaled = LinearOp::identity(out);
    let inv = 1.0 / (kernel.0 * kernel.1) as f64;
    for row in &mut scaled.rows {
        for (_, w) in row.iter_mut() {
            *w *= inv;
        }
    }
    Some((Step::RotateSum { stages }, map, scaled))
}

/// Where the inputs of a register start in the input of a fused run that has `saved` before it
/// (the current tensor, of `current` features, comes first).
fn saved_offset(saved: &[usize], register_shapes: &[Shape], current: usize) -> usize {
    current
        + saved
            .iter()
            .map(|&r| register_shapes[r].len())
            .sum::<usize>()
}

/// Compiles a network for ciphertexts of `slots` slots (latency mode: one image).
pub fn compile(net: &Network, slots: usize) -> Result<Plan> {
    compile_with(net, slots, CompileOptions::default())
}

/// [`compile`] with options.
pub fn compile_with(net: &Network, slots: usize, options: CompileOptions) -> Result<Plan> {
    if !(options.output_divisor.is_finite() && options.output_divisor > 0.0) {
        return Err(CompileError::Input(
            "output divisor must be positive".into(),
        ));
    }
    let (shapes, register_shapes) = net.shapes_and_registers()?;
    let input = SlotMap::input(net.input, slots)?;
    let mut current = input.clone();
    let mut registers: Vec<SlotMap> = Vec::new();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < net.layers.len() {
        match &net.layers[i] {
            Layer::Save => {
                steps.push(Step::Save {
                    register: registers.len(),
                });
                registers.push(current.clone());
                i += 1;
                continue;
            }
            Layer::Poly { coeffs } => {
                steps.push(Step::Poly {
                    coeffs: coeffs.clone(),
                });
                i += 1;
                continue;
            }
            Layer::IntervalPoly {
                coeffs,
                interval,
                chebyshev,
            } => {
                // Reached without a linear step to fold the interval map into: keep the map
                // inside the polynomial (one more level).
                let coeffs = if *chebyshev {
                    coeffs.clone()
                } else {
                    let monomial = coeffs.clone();
                    let eval = move |x: f64| monomial.iter().rev().fold(0.0, |a, &c| a * x + c);
                    let degree = coeffs.len().saturating_sub(1).max(1);
                    cipherinfer_ckks::Polynomial::chebyshev_interpolate(
                        eval, degree, interval.0, interval.1,
                    )?
                    .coeffs()
                    .to_vec()
                };
                steps.push(Step::Chebyshev {
                    coeffs,
                    interval: *interval,
                });
                i += 1;
                continue;
            }
            _ => {}
        }
        // Fuse the run of linear layers starting at i; a residual sum in the run appends the
        // kept tensor to the operator's input.
        let mut op: Option<LinearOp> = None;
        let mut saved: Vec<usize> = Vec::new();
        let mut run_inputs = shapes[i].len();
        let mut j = i;
        // A pooling that a convolution follows: summed by rotations (no level, no masks), so
        // the convolution keeps its own taps instead of one per tap and window offset.
        if let (Some(pooled), Some(Layer::Conv2d { .. })) = (
            window_sum(&net.layers[i], shapes[i], &current),
            net.layers.get(i + 1),
        ) {
            let (step, map, scaled) = pooled;
            steps.push(step);
            run_inputs = map.positions.len();
            current = map;
            op = Some(scaled);
            j = i + 1;
        }
        let mut grid = current.grid;
        loop {
            let layer = &net.layers[j];
            op = Some(match (layer, op.take()) {
                (Layer::AddSaved { register, branch }, first) => {
                    let first = first.unwrap_or_else(|| LinearOp::identity(shapes[j]));
                    let kept = register_shapes[*register];
                    // A register added twice in one run is input once.
                    let at = saved.iter().position(|r| r == register).unwrap_or_else(|| {
                        saved.push(*register);
                        saved.len() - 1
                    });
                    let offset = saved_offset(&saved[..at], &register_shapes, run_inputs);
                    first.plus_branch(branch, kept, offset)?
                }
                (layer, None) => LinearOp::from_layer(layer, shapes[j])?,
                (layer, Some(first)) => LinearOp::from_layer(layer, shapes[j])?.after(&first),
            });
            match (layer, grid.as_mut()) {
                (Layer::Conv2d { stride, .. }, Some(g))
                | (Layer::AvgPool2d { stride, .. }, Some(g)) => {
                    g.row_stride *= stride.0;
                    g.col_stride *= stride.1;
                }
                (Layer::Flatten | Layer::Dense { .. }, _) => grid = None,
                _ => {}
            }
            if j + 1 >= net.layers.len() || !net.layers[j + 1].is_linear() {
                break;
            }
            j += 1;
        }
        let mut op = op.ok_or_else(|| CompileError::Input("empty linear run".into()))?;
        if j + 1 == net.layers.len() && options.output_divisor != 1.0 {
            for row in op.rows.iter_mut() {
                for (_, w) in row.iter_mut() {
                    *w /= options.output_divisor;
                }
            }
            for b in op.bias.iter_mut() {
                *b /= options.output_divisor;
            }
        }
        // A following interval polynomial: fold y = alpha·x + beta (its interval onto [-1, 1])
        // into this step and emit it in the Chebyshev basis on [-1, 1], at no extra level.
        let mut folded = None;
        if let Some(Layer::IntervalPoly {
            coeffs,
            interval: (a, b),
            chebyshev,
        }) = net.layers.get(j + 1)
        {
            let (a, b) = (*a, *b);
            let alpha = 2.0 / (b - a);
            let beta = -(a + b) / (b - a);
            for row in op.rows.iter_mut() {
                for (_, w) in row.iter_mut() {
                    *w *= alpha;
                }
            }
            for v in op.bias.iter_mut() {
                *v = alpha * *v + beta;
            }
            // Chebyshev coefficients on [a, b] are those on [-1, 1] of the mapped input.
            let coeffs = if *chebyshev {
                coeffs.clone()
            } else {
                let monomial = coeffs.clone();
                let (h, c) = ((b - a) / 2.0, (a + b) / 2.0);
                let eval = move |y: f64| {
                    let x = h * y + c;
                    monomial.iter().rev().fold(0.0, |acc, &k| acc * x + k)
                };
                let degree = coeffs.len().saturating_sub(1).max(1);
                cipherinfer_ckks::Polynomial::chebyshev_interpolate(eval, degree, -1.0, 1.0)?
                    .coeffs()
                    .to_vec()
            };
            folded = Some(Step::Chebyshev {
                coeffs,
                interval: (-1.0, 1.0),
            });
        }
        let mut joint = current.clone();
        for &r in &saved {
            let kept = &registers[r];
            let base = joint.num_cts;
            joint.positions.extend(
                kept.positions
                    .iter()
                    .map(|ps| ps.iter().map(|&(ct, s)| (ct + base, s)).collect()),
            );
            joint.num_cts += kept.num_cts;
        }
        let (mut step, out) = lower(&op, &joint, grid, slots)?;
        step.saved = saved;
        steps.push(Step::Linear(step));
        current = out;
        i = j + 1;
        if let Some(step) = folded {
            steps.push(step);
            i += 1;
        }
    }
    share_keys(&mut steps, slots);
    Ok(Plan {
        slots,
        input,
        output: current,
        output_shape: shapes[shapes.len() - 1],
        steps,
        output_multiplier: options.output_divisor,
    })
}
