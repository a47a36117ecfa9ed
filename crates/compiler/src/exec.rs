//! The encrypted executor: a [`Plan`] bound to CKKS parameters, with every mask encoded at the
//! level and scale a level/scale simulation assigns to it — ahead of time when the masks fit a
//! memory budget, otherwise when their step runs.
//!
//! **Batch mode.** A plan compiled for `n'` slots runs on parameters with `n = B·n'` slots as `B`
//! independent copies: image `b`'s slot `i` sits at slot `i·B + b`. Rotating the full vector by
//! `k·B` rotates every image by `k` within its own `n'` slots, and masks are the plan's masks with
//! each value repeated `B` times, so every step acts on each image exactly as on one image
//! (the interleaving is an isomorphism of the slot algebra). The rotation keys are the plan's
//! steps times `B`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cipherinfer_ckks::linear::dilate;
use cipherinfer_ckks::{
    Ciphertext, EncodedLinearTransform, Encoder, Evaluator, LinearTransform, MaskEncoding,
    Parameters, Plaintext, Polynomial,
};

use crate::client::ClientSpec;
use crate::error::{CompileError, Result};
use crate::plan::{Plan, Step, chebyshev_polynomial, is_pure_square};

/// Memory the pre-encoded masks of a model may take before [`HeModel::new`] switches to encoding
/// them when their step runs (1 GiB).
pub const DEFAULT_MASK_BUDGET: usize = 1 << 30;

/// A linear step: the BSGS transform, then the bias and the block sums.
struct EncodedLinear {
    transform: EncodedLinearTransform,
    bias: Vec<Plaintext>,
    block_sum: Vec<i64>,
    saved: Vec<usize>,
}

enum EncodedStep {
    Linear(EncodedLinear),
    Save(usize),
    RotateSum(Vec<Vec<i64>>),
    Square,
    Poly(Polynomial),
}

fn poly_step(p: Polynomial, level: &mut usize) -> Result<EncodedStep> {
    let d = p.depth();
    *level = level.checked_sub(d).ok_or_else(|| {
        CompileError::DoesNotFit("polynomial deeper than the remaining levels".into())
    })?;
    Ok(EncodedStep::Poly(p))
}

/// A kept ciphertext brought to the level and scale of the current ones for a residual sum:
/// dropped to that level when the scales agree, otherwise dropped to the level above and
/// rescaled onto the scale by a product with 1.
fn bring(ev: &Evaluator, ct: &Ciphertext, level: usize, scale: f64) -> Result<Ciphertext> {
    let same_scale = ((ct.scale() - scale) / ct.scale().max(scale)).abs() <= 1e-12;
    if same_scale && ct.level() >= level {
        return Ok(ev.drop_to_level(ct, level)?);
    }
    if ct.level() <= level {
        return Err(CompileError::Input(format!(
            "a kept ciphertext at level {} and scale 2^{:.2} cannot join one at level {level} \
             and scale 2^{:.2}",
            ct.level(),
            ct.scale().log2(),
            scale.log2()
        )));
    }
    let above = ev.drop_to_level(ct, level + 1)?;
    Ok(ev.mul_const_rescale_to(&above, 1.0, scale)?)
}

/// A plan ready to run on ciphertexts under one parameter set.
pub struct HeModel {
    plan: Plan,
    params: Arc<Parameters>,
    batch: usize,
    input_level: usize,
    input_scale: f64,
    steps: Vec<EncodedStep>,
    lazy_masks: bool,
    mask_bytes: usize,
    /// The rotation keys the client generates: step (times the batch) → highest level served.
    rotation_keys: BTreeMap<i64, usize>,
    /// The budget they were chosen against, bytes of the evaluation-key bundle.
    key_budget: Option<u64>,
}

impl std::fmt::Debug for HeModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeModel")
            .field("depth", &self.plan.depth())
            .field("batch", &self.batch)
            .field("input_level", &self.input_level)
            .field("steps", &self.steps.len())
            .field("lazy_masks", &self.lazy_masks)
            .finish_non_exhaustive()
    }
}

/// Telemetry of one encrypted evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// Levels consumed.
    pub depth_used: usize,
    /// Level of the output.
    pub output_level: usize,
    /// Scale of the output.
    pub output_scale: f64,
    /// Seconds per step.
    pub step_seconds: Vec<f64>,
}

impl HeModel {
    /// Binds a plan to parameters: checks the slot count and depth, simulates levels and scales,
    /// and encodes every bias; masks are encoded on first use and kept within
    /// [`DEFAULT_MASK_BUDGET`] ([`HeModel::warm`] encodes them all at once).
    /// Parameters with `B` times the plan's slots run `B` images at once (batch mode). Inputs are
    /// encrypted at the lowest level that suffices.
    pub fn new(plan: Plan, params: Arc<Parameters>) -> Result<Self> {
        Self::with_mask_budget(plan, params, DEFAULT_MASK_BUDGET)
    }

    /// [`HeModel::new`] with a memory budget (bytes) for pre-encoded masks; above it, masks are
    /// encoded when their step runs (slower per image, but the model fits in memory).
    pub fn with_mask_budget(plan: Plan, params: Arc<Parameters>, budget: usize) -> Result<Self> {
        let slots = params.slots();
        if plan.slots == 0 || !plan.slots.is_power_of_two() || !slots.is_multiple_of(plan.slots) {
            return Err(CompileError::DoesNotFit(format!(
                "plan compiled for {} slots, parameters have {slots}",
                plan.slots
            )));
        }
        let batch = slots / plan.slots;
        let depth = plan.depth();
        if depth > params.max_level() {
            return Err(CompileError::DoesNotFit(format!(
                "the network needs depth {depth}, the parameters offer {}",
                params.max_level()
            )));
        }
        let q = params.q_primes();
        // The BSGS transforms of the linear steps, and the bytes of all their masks if encoded
        // ahead of time.
        let mut level = depth;
        let mut mask_bytes = 0usize;
        let mut transforms = Vec::new();
        for step in &plan.steps {
            if let Step::Linear(l) = step {
                let lt = LinearTransform::from_blocks(
                    plan.slots,
                    l.in_cts,
                    l.out_cts,
                    l.diagonals.clone(),
                )?
                .with_baby_steps(l.baby_steps)?;
                mask_bytes = mask_bytes.saturating_add(lt.encoded_bytes(&params, level));
                transforms.push(lt);
            }
            level = level.saturating_sub(step.depth());
        }
        let lazy_masks = mask_bytes > budget;
        let encoder = Encoder::new(params.clone());
        let mut transforms = transforms.into_iter();
        let mut level = depth;
        let mut scale = params.default_scale();
        let mut steps = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            match step {
                Step::Linear(l) => {
                    let mask_scale = q[level] as f64;
                    // Within the budget, masks are encoded on first use (or by `warm`) and
                    // kept, so binding a model is instant; above it, on every use.
                    let masks = if lazy_masks {
                        MaskEncoding::OnUse
                    } else {
                        MaskEncoding::Cached
                    };
                    let transform = transforms.next().ok_or_else(|| {
                        CompileError::Input("linear step without its transform".into())
                    })?;
                    let transform = transform.encode_with(&encoder, level, mask_scale, masks)?;
                    let out_scale = scale * mask_scale / q[level] as f64;
                    let bias = l
                        .bias
                        .iter()
                        .map(|b| encoder.encode(&dilate(b, batch), level - 1, out_scale))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    steps.push(EncodedStep::Linear(EncodedLinear {
                        transform,
                        bias,
                        block_sum: l.block_sum.iter().map(|&s| (s * batch) as i64).collect(),
                        saved: l.saved.clone(),
                    }));
                    level -= 1;
                    scale = out_scale;
                }
                Step::Poly { coeffs } => {
                    if is_pure_square(coeffs) {
                        steps.push(EncodedStep::Square);
                        scale = scale * scale / q[level] as f64;
                        level -= 1;
                    } else {
                        steps.push(poly_step(
                            Polynomial::monomial(coeffs.clone())?,
                            &mut level,
                        )?);
                    }
                }
                Step::Chebyshev { coeffs, interval } => {
                    steps.push(poly_step(
                        chebyshev_polynomial(coeffs, *interval)?,
                        &mut level,
                    )?);
                }
                Step::Save { register } => steps.push(EncodedStep::Save(*register)),
                Step::RotateSum { stages } => steps.push(EncodedStep::RotateSum(
                    stages
                        .iter()
                        .map(|st| st.iter().map(|&o| (o * batch) as i64).collect())
                        .collect(),
                )),
            }
        }
        let input_scale = params.default_scale();
        let mut model = Self {
            plan,
            params,
            batch,
            input_level: depth,
            input_scale,
            steps,
            lazy_masks,
            mask_bytes: if lazy_masks { 0 } else { mask_bytes },
            rotation_keys: BTreeMap::new(),
            key_budget: None,
        };
        model.rotation_keys = model.choose_rotation_keys(None)?;
        Ok(model)
    }

    fn choose_rotation_keys(&self, max_bytes: Option<u64>) -> Result<BTreeMap<i64, usize>> {
        let uses = self
            .plan
            .rotation_uses()
            .into_iter()
            .map(|(s, u)| (s * self.batch as i64, u))
            .collect();
        crate::keyset::choose_rotation_keys(
            &self.params,
            &uses,
            self.plan.needs_relinearization(),
            max_bytes,
        )
    }

    /// The model with its rotation keys chosen so the evaluation-key bundle takes at most
    /// `max_bytes` (see [`crate::keyset`]): some rotations are then composed of power-of-two
    /// keys at evaluation time. `None` gives every rotation step its own key.
    pub fn with_key_budget(mut self, max_bytes: Option<u64>) -> Result<Self> {
        self.rotation_keys = self.choose_rotation_keys(max_bytes)?;
        self.key_budget = max_bytes;
        Ok(self)
    }

    /// Rotation steps the evaluation uses that have no key of their own (composed of
    /// power-of-two keys under the key budget).
    pub fn composed_rotations(&self) -> usize {
        self.plan
            .rotation_uses()
            .keys()
            .filter(|&&s| !self.rotation_keys.contains_key(&(s * self.batch as i64)))
            .count()
    }

    /// The evaluation-key budget the rotation keys were chosen against, if any.
    pub fn key_budget(&self) -> Option<u64> {
        self.key_budget
    }

    /// Encodes every mask that is kept but not encoded yet, so that the next evaluation runs at
    /// full speed (a server calls it in the background after loading a model).
    pub fn warm(&self) -> Result<()> {
        for step in &self.steps {
            if let EncodedStep::Linear(l) = step {
                l.transform.warm()?;
            }
        }
        Ok(())
    }

    /// Masks kept once encoded: how many are encoded now, and how many there are (none with
    /// lazy masks).
    pub fn cached_masks(&self) -> (usize, usize) {
        self.steps
            .iter()
            .filter_map(|s| match s {
                EncodedStep::Linear(l) => Some(l.transform.cached_masks()),
                _ => None,
            })
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }

    /// Bytes the kept masks take once encoded (0 with lazy masks).
    pub fn mask_bytes(&self) -> usize {
        self.mask_bytes
    }

    /// Working memory of one evaluation at its largest step, beyond the model's masks and the
    /// client's keys (an upper estimate from the plan): the live ciphertexts and kept registers;
    /// for a linear step, every input's hoisted rotations in the extended basis Q ∪ P, one
    /// decomposition, the output accumulators and, with lazy masks, one group's masks; for an
    /// activation, its power basis.
    pub fn working_memory_bytes(&self) -> usize {
        let p = &self.params;
        let n = p.n();
        let special = p.p_primes().len();
        let ct = |level: usize| 2 * (level + 1) * n * 8;
        let ext = |level: usize| (level + 1 + special) * n * 8;
        let mut level = self.input_level;
        let mut cts = self.plan.input.num_cts;
        let mut registers = 0usize;
        let mut peak = 0usize;
        for step in &self.plan.steps {
            let here = match step {
                Step::Linear(l) => {
                    let n1 = l.baby_steps.max(1);
                    let mut per_group = std::collections::BTreeMap::new();
                    for (&(o, _), d) in &l.diagonals {
                        for &k in d.keys() {
                            *per_group.entry((o, k / n1)).or_insert(0usize) += 1;
                        }
                    }
                    let rotations = l.bsgs_rotations(n1).0;
                    let lazy = if self.lazy_masks {
                        per_group.values().copied().max().unwrap_or(0) * ext(level)
                    } else {
                        0
                    };
                    let digits = cipherinfer_ckks::keys::key_shape_for_level(p, level).0;
                    let w = l.in_cts * ct(level)
                        + rotations * 3 * ext(level)
                        + digits * ext(level)
                        + l.out_cts * 2 * ext(level)
                        + lazy;
                    cts = l.out_cts;
                    w
                }
                Step::Poly { coeffs } | Step::Chebyshev { coeffs, .. } => {
                    let terms = coeffs.len().next_power_of_two().trailing_zeros() as usize;
                    cts * ct(level) + (coeffs.len().isqrt() + terms + 4) * ct(level)
                }
                Step::RotateSum { stages } => {
                    let widest = stages.iter().map(Vec::len).max().unwrap_or(0);
                    let digits = cipherinfer_ckks::keys::key_shape_for_level(p, level).0;
                    cts * ct(level) + (widest + 1) * ct(level) + digits * ext(level)
                }
                Step::Save { .. } => {
                    registers += cts * ct(level);
                    0
                }
            };
            peak = peak.max(here + registers);
            level = level.saturating_sub(step.depth());
        }
        peak
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    /// Level at which the client encrypts its input.
    pub fn input_level(&self) -> usize {
        self.input_level
    }
    /// Scale at which the client encodes its input.
    pub fn input_scale(&self) -> f64 {
        self.input_scale
    }
    /// The parameters.
    pub fn parameters(&self) -> &Arc<Parameters> {
        &self.params
    }
    /// Images evaluated at once (1: latency mode).
    pub fn batch_size(&self) -> usize {
        self.batch
    }
    /// Whether masks are encoded when their step runs rather than ahead of time.
    pub fn lazy_masks(&self) -> bool {
        self.lazy_masks
    }
    /// Multiplicative depth of the evaluation.
    pub fn depth(&self) -> usize {
        self.plan.depth()
    }
    /// The rotation keys the client generates, by step: by default every step the evaluation
    /// rotates by (the plan's, times the batch size); under a key budget
    /// ([`HeModel::with_key_budget`]) some of them replaced by powers of two.
    pub fn rotation_steps(&self) -> Vec<i64> {
        self.rotation_keys.keys().copied().collect()
    }

    /// The highest level each rotation key must serve, in the order of
    /// [`HeModel::rotation_steps`].
    pub fn rotation_key_levels(&self) -> Vec<usize> {
        self.rotation_keys.values().copied().collect()
    }

    /// Refuses an evaluation before any work when `max_depth` (a caller's bound on the
    /// multiplicative depth) is below the plan's depth.
    pub fn check_depth_bound(&self, max_depth: usize) -> Result<()> {
        let needed = self.plan.depth();
        if needed > max_depth {
            return Err(CompileError::DepthExceeded {
                needed,
                bound: max_depth,
            });
        }
        Ok(())
    }

    /// Checks that an evaluator holds every key the evaluation uses and belongs to the model's
    /// parameters.
    pub fn check_keys(&self, ev: &Evaluator) -> Result<()> {
        if ev.parameters().id() != self.params.id() {
            return Err(CompileError::Ckks(
                cipherinfer_ckks::Error::ParameterMismatch {
                    expected: self.params.id_hex()[..16].to_string(),
                    found: ev.parameters().id_hex()[..16].to_string(),
                },
            ));
        }
        let missing: Vec<i64> = self
            .rotation_steps()
            .into_iter()
            .zip(self.rotation_key_levels())
            .filter(|&(s, level)| !ev.can_rotate_at(s, level))
            .map(|(s, _)| s)
            .collect();
        if !missing.is_empty() {
            return Err(CompileError::MissingRotationKeys { steps: missing });
        }
        if self.plan.needs_relinearization() && !ev.has_relinearization_key() {
            return Err(CompileError::MissingRelinearizationKey);
        }
        Ok(())
    }

    /// What the client needs: parameters, packing, levels, keys to generate, output layout.
    pub fn client_spec(&self) -> ClientSpec {
        let g = self.plan.input.grid;
        ClientSpec {
            parameters: self.params.literal().clone(),
            parameter_id: self.params.id_hex(),
            input_shape: g.map(|g| (g.c, g.h, g.w)).unwrap_or((
                self.plan.input.positions.len(),
                1,
                1,
            )),
            input: self.plan.input.clone(),
            batch_size: self.batch,
            input_level: self.input_level,
            input_scale: self.input_scale,
            rotation_steps: self.rotation_steps(),
            rotation_key_levels: self.rotation_key_levels(),
            relinearization: self.plan.needs_relinearization(),
            output: self.plan.output.clone(),
            output_shape: self.plan.output_shape,
            output_multiplier: self.plan.output_multiplier,
            depth: self.plan.depth(),
        }
    }

    /// Evaluates the model on encrypted inputs (one ciphertext per input block of the plan).
    /// `progress(step, total, description)` is called before each step; setting `cancel` stops
    /// the evaluation between steps with [`CompileError::Cancelled`].
    pub fn evaluate(
        &self,
        ev: &Evaluator,
        inputs: &[Ciphertext],
        cancel: &AtomicBool,
        mut progress: impl FnMut(usize, usize, &str),
    ) -> Result<(Vec<Ciphertext>, EvalReport)> {
        self.check_keys(ev)?;
        if inputs.len() != self.plan.input.num_cts {
            return Err(CompileError::Input(format!(
                "expected {} input ciphertexts, got {}",
                self.plan.input.num_cts,
                inputs.len()
            )));
        }
        let mut cts: Vec<Ciphertext> = inputs
            .iter()
            .map(|ct| {
                if ct.level() < self.input_level {
                    return Err(CompileError::Input(format!(
                        "input at level {}, the model needs {}",
                        ct.level(),
                        self.input_level
                    )));
                }
                Ok(ev.drop_to_level(ct, self.input_level)?)
            })
            .collect::<Result<_>>()?;
        let total = self.steps.len();
        let mut times = Vec::with_capacity(total);
        let mut registers: Vec<Vec<Ciphertext>> = Vec::new();
        for (idx, (step, plain)) in self.steps.iter().zip(&self.plan.steps).enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(CompileError::Cancelled);
            }
            progress(idx, total, &plain.describe());
            let t = std::time::Instant::now();
            cts = match step {
                EncodedStep::Square => cts
                    .iter()
                    .map(|c| ev.mul_rescale(c, c))
                    .collect::<std::result::Result<_, _>>()?,
                EncodedStep::Poly(p) => cts
                    .iter()
                    .map(|c| ev.evaluate_polynomial(c, p, None))
                    .collect::<std::result::Result<_, _>>()?,
                EncodedStep::RotateSum(stages) => {
                    for stage in stages {
                        for ct in cts.iter_mut() {
                            for rotated in ev.rotate_hoisted(ct, stage)? {
                                ev.add_assign(ct, &rotated)?;
                            }
                        }
                    }
                    cts
                }
                EncodedStep::Save(register) => {
                    if *register != registers.len() {
                        return Err(CompileError::Input(format!(
                            "register {register} saved out of order"
                        )));
                    }
                    registers.push(cts.clone());
                    cts
                }
                EncodedStep::Linear(l) => {
                    for &r in &l.saved {
                        let kept = registers.get(r).ok_or_else(|| {
                            CompileError::Input(format!("register {r} is used before it is saved"))
                        })?;
                        let (level, scale) = (cts[0].level(), cts[0].scale());
                        for ct in kept {
                            cts.push(bring(ev, ct, level, scale)?);
                        }
                    }
                    self.linear(ev, l, &cts, cancel)?
                }
            };
            times.push(t.elapsed().as_secs_f64());
        }
        progress(total, total, "done");
        let out = &cts[0];
        let report = EvalReport {
            depth_used: self.input_level - out.level(),
            output_level: out.level(),
            output_scale: out.scale(),
            step_seconds: times,
        };
        Ok((cts, report))
    }

    fn linear(
        &self,
        ev: &Evaluator,
        l: &EncodedLinear,
        inputs: &[Ciphertext],
        cancel: &AtomicBool,
    ) -> Result<Vec<Ciphertext>> {
        let mut result = ev
            .linear_transform_blocks(inputs, &l.transform, Some(cancel))
            .map_err(|e| match e {
                cipherinfer_ckks::Error::Cancelled => CompileError::Cancelled,
                cipherinfer_ckks::Error::LevelMismatch { .. } => {
                    CompileError::Input("ciphertext level does not match the plan".into())
                }
                e => CompileError::Ckks(e),
            })?;
        for (r, bias) in result.iter_mut().zip(&l.bias) {
            *r = ev.add_plain(r, bias)?;
        }
        for &step in &l.block_sum {
            let rot = ev.rotate(&result[0], step)?;
            ev.add_assign(&mut result[0], &rot)?;
        }
        Ok(result)
    }
}
