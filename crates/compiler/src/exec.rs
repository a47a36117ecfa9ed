//! The encrypted executor: a [`Plan`] bound to CKKS parameters, with every mask pre-encoded at
//! the level and scale a level/scale simulation assigns to it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cipherinfer_ckks::{
    Ciphertext, Decryptor, Encoder, Evaluator, ExtendedPlaintext, Parameters, Plaintext, Polynomial,
};

use crate::client::ClientSpec;
use crate::error::{CompileError, Result};
use crate::plan::{Plan, Step, chebyshev_polynomial, is_pure_square};

/// Per input ciphertext, the baby-step masks of one (output, giant step) group.
type GroupParts = Vec<(usize, Vec<(i64, ExtendedPlaintext)>)>;

struct EncodedLinear {
    level: usize,
    baby_steps: usize,
    /// (output ct, giant step j) -> [(input ct, [(baby step, mask)])]
    groups: BTreeMap<(usize, usize), GroupParts>,
    bias: Vec<Plaintext>,
    block_sum: Vec<usize>,
    out_cts: usize,
}

enum EncodedStep {
    Linear(EncodedLinear),
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

/// A plan ready to run on ciphertexts under one parameter set.
pub struct HeModel {
    plan: Plan,
    params: Arc<Parameters>,
    input_level: usize,
    input_scale: f64,
    steps: Vec<EncodedStep>,
}

impl std::fmt::Debug for HeModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeModel")
            .field("depth", &self.plan.depth())
            .field("input_level", &self.input_level)
            .field("steps", &self.steps.len())
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
    /// and encodes every mask and bias. Inputs are encrypted at the lowest level that suffices.
    pub fn new(plan: Plan, params: Arc<Parameters>) -> Result<Self> {
        if params.slots() != plan.slots {
            return Err(CompileError::DoesNotFit(format!(
                "plan compiled for {} slots, parameters have {}",
                plan.slots,
                params.slots()
            )));
        }
        let depth = plan.depth();
        if depth > params.max_level() {
            return Err(CompileError::DoesNotFit(format!(
                "the network needs depth {depth}, the parameters offer {}",
                params.max_level()
            )));
        }
        let encoder = Encoder::new(params.clone());
        let q = params.q_primes();
        let mut level = depth;
        let mut scale = params.default_scale();
        let mut steps = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            match step {
                Step::Linear(l) => {
                    let n1 = l.baby_steps;
                    let mask_scale = q[level] as f64;
                    let mut groups: BTreeMap<(usize, usize), GroupParts> = BTreeMap::new();
                    for (&(o, i), diags) in &l.diagonals {
                        let mut by_giant: BTreeMap<usize, Vec<(i64, ExtendedPlaintext)>> =
                            BTreeMap::new();
                        for (&k, d) in diags {
                            let (j, b) = (k / n1, k % n1);
                            let shift = j * n1;
                            let n = d.len();
                            let rotated: Vec<f64> =
                                (0..n).map(|t| d[(t + n - shift % n) % n]).collect();
                            let pt = encoder.encode_extended(&rotated, level, mask_scale)?;
                            by_giant.entry(j).or_default().push((b as i64, pt));
                        }
                        for (j, terms) in by_giant {
                            groups.entry((o, j)).or_default().push((i, terms));
                        }
                    }
                    let out_scale = scale * mask_scale / q[level] as f64;
                    let bias = l
                        .bias
                        .iter()
                        .map(|b| encoder.encode(b, level - 1, out_scale))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    steps.push(EncodedStep::Linear(EncodedLinear {
                        level,
                        baby_steps: n1,
                        groups,
                        bias,
                        block_sum: l.block_sum.clone(),
                        out_cts: l.out_cts,
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
            }
        }
        let input_scale = params.default_scale();
        Ok(Self {
            plan,
            params,
            input_level: depth,
            input_scale,
            steps,
        })
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

    /// Client side: packs an input tensor as the plan says and encrypts it with the secret key
    /// (seeded ciphertexts, at the lowest level the model needs).
    pub fn encrypt_input(
        &self,
        encoder: &Encoder,
        dec: &mut Decryptor,
        input: &[f64],
    ) -> Result<Vec<Ciphertext>> {
        crate::client::pack_and_encrypt(
            &self.plan.input,
            self.input_level,
            self.input_scale,
            encoder,
            dec,
            input,
        )
    }

    /// Client side: decrypts the output ciphertexts and reads the output values.
    pub fn decrypt_output(
        &self,
        encoder: &Encoder,
        dec: &Decryptor,
        outputs: &[Ciphertext],
    ) -> Result<Vec<f64>> {
        crate::client::decrypt_and_unpack(
            &self.plan.output,
            self.plan.output_multiplier,
            encoder,
            dec,
            outputs,
        )
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
            input_level: self.input_level,
            input_scale: self.input_scale,
            rotation_steps: self.plan.rotation_steps(),
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
                EncodedStep::Linear(l) => self.linear(ev, l, &cts, cancel)?,
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
        if inputs.iter().any(|c| c.level() != l.level) {
            return Err(CompileError::Input(
                "ciphertext level does not match the plan".into(),
            ));
        }
        // Per input ciphertext: one decomposition and, per baby step, one key inner product,
        // shared by every output ciphertext and giant step.
        let mut babies: Vec<std::collections::BTreeSet<i64>> =
            vec![Default::default(); inputs.len()];
        for parts in l.groups.values() {
            for (i, terms) in parts {
                babies[*i].extend(terms.iter().map(|(b, _)| *b));
            }
        }
        let rots = inputs
            .iter()
            .zip(&babies)
            .map(|(c, b)| ev.rotations_extended(c, None, &b.iter().copied().collect::<Vec<_>>()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut outs: Vec<Option<Ciphertext>> = vec![None; l.out_cts];
        for (&(o, j), parts) in &l.groups {
            if cancel.load(Ordering::Relaxed) {
                return Err(CompileError::Cancelled);
            }
            let mut inner: Option<Ciphertext> = None;
            for (i, terms) in parts {
                let refs: Vec<(i64, &ExtendedPlaintext)> =
                    terms.iter().map(|(b, pt)| (*b, pt)).collect();
                let part = ev.combine_rotations(&rots[*i], &refs)?;
                match inner.as_mut() {
                    None => inner = Some(part),
                    Some(acc) => ev.add_assign(acc, &part)?,
                }
            }
            let Some(inner) = inner else { continue };
            let moved = ev.rotate(&inner, (j * l.baby_steps) as i64)?;
            match outs[o].as_mut() {
                None => outs[o] = Some(moved),
                Some(acc) => ev.add_assign(acc, &moved)?,
            }
        }
        let mut result = Vec::with_capacity(l.out_cts);
        for (o, acc) in outs.into_iter().enumerate() {
            let acc = acc.ok_or_else(|| {
                CompileError::Input(format!("output ciphertext {o} has no terms"))
            })?;
            let mut r = ev.rescale(&acc)?;
            r = ev.add_plain(&r, &l.bias[o])?;
            result.push(r);
        }
        for &step in &l.block_sum {
            let rot = ev.rotate(&result[0], step as i64)?;
            ev.add_assign(&mut result[0], &rot)?;
        }
        Ok(result)
    }
}
