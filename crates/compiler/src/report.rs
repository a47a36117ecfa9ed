//! What `cipherinfer compile` tells the operator about a compiled model: the layers, the depth,
//! the parameter set, the keys and bytes a client will send and receive, an estimate of the
//! encrypted latency on this machine, and how often the network as approximated (plaintext
//! simulation) agrees with the network as given.

use std::fmt;
use std::time::Instant;

use cipherinfer_ckks::serialization::ciphertext_bytes;
use cipherinfer_ckks::{Encoder, Evaluator, KeyGenerator, Parameters, secret_key_pair};
use cipherinfer_model::convert::ConversionReport;
use cipherinfer_model::ir::Model;
use cipherinfer_model::plain::{self, Tensor};
use serde::Serialize;

use crate::error::Result;
use crate::exec::HeModel;
use crate::plan::{Plan, Step, chebyshev_polynomial, is_pure_square};

/// One layer of the network that runs encrypted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerRow {
    /// Node name.
    pub name: String,
    /// Operator and its attributes.
    pub op: String,
    /// Output shape (channels x height x width).
    pub output: String,
}

/// One step of the compiled plan (fused linear layers or an activation).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    /// What the step is.
    pub step: String,
    /// Levels it consumes.
    pub levels: usize,
    /// Rotations (key switches) one evaluation performs: giant steps and block sums.
    pub rotations: usize,
    /// Baby-step rotations, hoisted (one decomposition per input shared by all of them).
    pub hoisted_rotations: usize,
    /// Plaintext products (diagonals) of a linear step.
    pub plaintext_products: usize,
    /// Ciphertext products of an activation.
    pub ciphertext_products: usize,
}

/// The parameter set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParameterRow {
    /// Ring degree N.
    pub ring_degree: usize,
    /// Slots per ciphertext.
    pub slots: usize,
    /// Bits of each ciphertext prime (base first).
    pub q_bits: Vec<u32>,
    /// Bits of each special prime.
    pub p_bits: Vec<u32>,
    /// log2 of the scale.
    pub log_scale: u32,
    /// Key-switching digits.
    pub dnum: usize,
    /// log2(QP).
    pub log_qp: f64,
    /// Security level in bits.
    pub security_bits: u32,
    /// Parameter id (hex).
    pub parameter_id: String,
}

/// How the network as approximated compares with the network as given, in plaintext.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agreement {
    /// Which images: `test` (labelled) or `calibration`.
    pub images_from: String,
    /// Images compared.
    pub images: usize,
    /// Fraction of images with the same top-1 class.
    pub top1_agreement: f64,
    /// Top-1 accuracy of the network as given (labelled images only).
    pub original_accuracy: Option<f64>,
    /// Top-1 accuracy of the approximated network (labelled images only).
    pub approximated_accuracy: Option<f64>,
}

/// Per-operation costs measured on this machine at the top level of the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UnitCosts {
    /// One rotation (decomposition, key inner product, automorphism), milliseconds.
    pub rotation_ms: f64,
    /// One plaintext-ciphertext product with accumulation, milliseconds.
    pub plaintext_product_ms: f64,
    /// One ciphertext product with relinearization and rescaling, milliseconds.
    pub ciphertext_product_ms: f64,
}

/// The report of `cipherinfer compile`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompileReport {
    /// Model name.
    pub name: String,
    /// The layers that run encrypted (after conversion).
    pub layers: Vec<LayerRow>,
    /// The plan's steps.
    pub steps: Vec<StepRow>,
    /// Multiplicative depth.
    pub depth: usize,
    /// The parameter set.
    pub parameters: ParameterRow,
    /// Rotation keys a client generates.
    pub rotation_keys: usize,
    /// Rotation steps without a key of their own, composed of power-of-two keys (under a key
    /// budget).
    pub composed_rotations: usize,
    /// The evaluation-key budget the keys were chosen against (`--max-key-mib`), bytes.
    pub key_budget_bytes: Option<u64>,
    /// Whether a relinearization key is needed.
    pub relinearization: bool,
    /// Bytes of the evaluation keys as uploaded (seeded).
    pub eval_keys_bytes: usize,
    /// Bytes of one encrypted image as uploaded (seeded ciphertexts).
    pub input_bytes: usize,
    /// Bytes of one encrypted result.
    pub output_bytes: usize,
    /// Server memory for the model: its encoded masks, plus one client's evaluation keys as
    /// held in memory (both halves of every key, 8 bytes per residue).
    pub server_memory_bytes: usize,
    /// Estimated server time of one encrypted inference on this machine, milliseconds.
    pub estimated_latency_ms: Option<f64>,
    /// The measured unit costs behind the estimate.
    pub unit_costs: Option<UnitCosts>,
    /// Agreement of the approximated network with the network as given.
    pub agreement: Option<Agreement>,
    /// What the conversion did.
    pub conversion: Option<ConversionReport>,
    /// What the import changed without changing the predicted class (a final Softmax dropped).
    pub notes: Vec<String>,
    /// How the activation degree was chosen (`--degree auto`).
    pub degree_search: Option<crate::degree::DegreeSearch>,
}

fn step_rows(plan: &Plan) -> Vec<StepRow> {
    // Ciphertexts the current tensor fills: slot-wise steps act on each.
    let mut cts = plan.input.num_cts;
    plan.steps
        .iter()
        .map(|step| {
            let (rotations, hoisted_rotations, plaintext_products, ciphertext_products) = match step
            {
                Step::Linear(l) => {
                    let (hoisted, giants) = l.bsgs_rotations(l.baby_steps);
                    let products = l.diagonals.values().map(|d| d.len()).sum();
                    cts = l.out_cts;
                    (giants + l.block_sum.len(), hoisted, products, 0)
                }
                Step::Save { .. } => (0, 0, 0, 0),
                // Per ciphertext and stage, one decomposition: its first rotation is a full one.
                Step::RotateSum { stages } => {
                    let all: usize = stages.iter().map(Vec::len).sum();
                    (cts * stages.len(), cts * (all - stages.len()), 0, 0)
                }
                Step::Poly { coeffs } if is_pure_square(coeffs) => (0, 0, 0, cts),
                Step::Poly { coeffs } => (
                    0,
                    0,
                    0,
                    cts * cipherinfer_ckks::Polynomial::monomial(coeffs.clone())
                        .map_or(0, |p| p.products()),
                ),
                Step::Chebyshev { coeffs, interval } => (
                    0,
                    0,
                    0,
                    cts * chebyshev_polynomial(coeffs, *interval).map_or(0, |p| p.products()),
                ),
            };
            StepRow {
                step: step.describe(),
                levels: step.depth(),
                rotations,
                hoisted_rotations,
                plaintext_products,
                ciphertext_products,
            }
        })
        .collect()
}

fn parameter_row(params: &Parameters) -> ParameterRow {
    let bits = |v: Vec<u64>| -> Vec<u32> { v.iter().map(|&p| 64 - p.leading_zeros()).collect() };
    ParameterRow {
        ring_degree: params.n(),
        slots: params.slots(),
        q_bits: bits(params.q_primes()),
        p_bits: bits(params.p_primes()),
        log_scale: params.literal().log_scale,
        dnum: params.dnum(),
        log_qp: params.log_qp(),
        security_bits: params.security().bits().unwrap_or(0),
        parameter_id: params.id_hex(),
    }
}

/// Measures one rotation, one plaintext product and one ciphertext product at the top level of
/// `params` (median of three each; generates one rotation key and the relinearization key).
pub fn measure_unit_costs(params: &std::sync::Arc<Parameters>) -> Result<UnitCosts> {
    let mut kg = KeyGenerator::new(params.clone())?;
    let sk = kg.secret_key();
    let keys = kg.evaluation_keys(&sk, true, &[1], false)?;
    let ev = Evaluator::new(keys);
    let encoder = Encoder::new(params.clone());
    let (mut enc, _dec) = secret_key_pair(sk)?;
    let top = params.max_level();
    let values: Vec<f64> = (0..params.slots())
        .map(|i| ((i * 7919) % 1000) as f64 / 1000.0 - 0.5)
        .collect();
    let pt = encoder.encode(&values, top, params.default_scale())?;
    let ct = enc.encrypt(&pt)?;
    let median_ms = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let mut t = Vec::with_capacity(3);
        for _ in 0..3 {
            let start = Instant::now();
            f()?;
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
        t.sort_by(f64::total_cmp);
        Ok(t[1])
    };
    let rotation_ms = median_ms(&mut || {
        ev.rotate(&ct, 1)?;
        Ok(())
    })?;
    let product = ev.mul_plain(&ct, &pt)?;
    let plaintext_product_ms = median_ms(&mut || {
        let mut p = ev.mul_plain(&ct, &pt)?;
        ev.add_assign(&mut p, &product)?;
        Ok(())
    })?;
    let ciphertext_product_ms = median_ms(&mut || {
        ev.mul_rescale(&ct, &ct)?;
        Ok(())
    })?;
    Ok(UnitCosts {
        rotation_ms,
        plaintext_product_ms,
        ciphertext_product_ms,
    })
}

/// Cost of a hoisted rotation relative to a full one (the decomposition is shared).
const HOISTED_ROTATION_COST: f64 = 0.5;

/// The estimated latency of `steps` on `params` from unit costs at the top level; each step's
/// cost scales with the primes left at its level.
pub fn estimate_latency_ms(steps: &[StepRow], depth: usize, costs: &UnitCosts) -> f64 {
    let top = depth as f64 + 1.0;
    let mut level = depth;
    let mut total = 0.0;
    for s in steps {
        let factor = (level as f64 + 1.0) / top;
        total += factor
            * ((s.rotations as f64 + HOISTED_ROTATION_COST * s.hoisted_rotations as f64)
                * costs.rotation_ms
                + s.plaintext_products as f64 * costs.plaintext_product_ms
                + s.ciphertext_products as f64 * costs.ciphertext_product_ms);
        level = level.saturating_sub(s.levels);
    }
    total
}

/// Top-1 agreement (and accuracies, with labels) of `approximated` against `original` on
/// `images`.
pub fn agreement(
    original: &Model,
    approximated: &Model,
    images: &[(Tensor, Option<usize>)],
    images_from: &str,
) -> Result<Option<Agreement>> {
    if images.is_empty() {
        return Ok(None);
    }
    let (mut same, mut right_original, mut right_approx, mut labelled) = (0, 0, 0, 0);
    for (x, label) in images {
        let a = plain::run(original, x).map_err(|e| crate::CompileError::Input(e.to_string()))?;
        let b =
            plain::run(approximated, x).map_err(|e| crate::CompileError::Input(e.to_string()))?;
        let (a, b) = (a.argmax(), b.argmax());
        same += usize::from(a == b);
        if let Some(l) = label {
            labelled += 1;
            right_original += usize::from(a == Some(*l));
            right_approx += usize::from(b == Some(*l));
        }
    }
    let n = images.len() as f64;
    let frac = |k: usize| (labelled > 0).then(|| k as f64 / labelled as f64);
    Ok(Some(Agreement {
        images_from: images_from.to_string(),
        images: images.len(),
        top1_agreement: same as f64 / n,
        original_accuracy: frac(right_original),
        approximated_accuracy: frac(right_approx),
    }))
}

impl CompileReport {
    /// The report of a compiled model; `costs`, when given, yields the latency estimate.
    pub fn new(
        name: &str,
        model: &Model,
        he: &HeModel,
        conversion: Option<ConversionReport>,
        agreement: Option<Agreement>,
        costs: Option<UnitCosts>,
    ) -> Self {
        let params = he.parameters();
        let plan = he.plan();
        let spec = he.client_spec();
        let steps = step_rows(plan);
        let depth = plan.depth();
        let input_level = he.input_level();
        Self {
            name: name.to_string(),
            layers: model
                .iter()
                .map(|(node, shape)| LayerRow {
                    name: node.name.clone(),
                    op: node.op.to_string(),
                    output: shape.to_string(),
                })
                .collect(),
            estimated_latency_ms: costs.map(|c| estimate_latency_ms(&steps, depth, &c)),
            unit_costs: costs,
            steps,
            depth,
            parameters: parameter_row(params),
            rotation_keys: spec.rotation_steps.len(),
            composed_rotations: he.composed_rotations(),
            key_budget_bytes: he.key_budget(),
            relinearization: spec.relinearization,
            eval_keys_bytes: spec.evaluation_keys_bytes(params),
            server_memory_bytes: he
                .mask_bytes()
                .saturating_add(spec.key_memory_bytes(params)),
            input_bytes: spec.input.num_cts * ciphertext_bytes(params, input_level, true),
            output_bytes: plan.output.num_cts
                * ciphertext_bytes(params, input_level.saturating_sub(depth), false),
            agreement,
            conversion,
            notes: Vec::new(),
            degree_search: None,
        }
    }

    /// The report with the import's notes.
    pub fn with_notes(mut self, notes: Vec<String>) -> Self {
        self.notes = notes;
        self
    }

    /// The report with how the activation degree was chosen.
    pub fn with_degree_search(mut self, search: Option<crate::degree::DegreeSearch>) -> Self {
        self.degree_search = search;
        self
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

impl fmt::Display for CompileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model {}", self.name)?;
        writeln!(f, "layers (encrypted network):")?;
        for l in &self.layers {
            writeln!(f, "  {:<24} {:<48} -> {}", l.name, l.op, l.output)?;
        }
        writeln!(f, "plan:")?;
        for s in &self.steps {
            writeln!(
                f,
                "  {:<56} levels {:>2}  rotations {:>4} (+{:>4} hoisted)  pt-products {:>5}  \
                 ct-products {:>3}",
                s.step,
                s.levels,
                s.rotations,
                s.hoisted_rotations,
                s.plaintext_products,
                s.ciphertext_products
            )?;
        }
        let p = &self.parameters;
        writeln!(f, "depth {}", self.depth)?;
        writeln!(
            f,
            "parameters: N = 2^{} ({} slots), Q = {:?} bits, P = {:?} bits, scale 2^{}, dnum {}, \
             log2(QP) = {:.1}, {}-bit security, id {}",
            p.ring_degree.trailing_zeros(),
            p.slots,
            p.q_bits,
            p.p_bits,
            p.log_scale,
            p.dnum,
            p.log_qp,
            p.security_bits,
            &p.parameter_id[..16.min(p.parameter_id.len())]
        )?;
        writeln!(
            f,
            "keys: {} rotation keys{}, {:.1} MiB uploaded once; input {:.1} KiB, output {:.1} KiB per image",
            self.rotation_keys,
            if self.relinearization {
                " + relinearization"
            } else {
                ""
            },
            mib(self.eval_keys_bytes),
            self.input_bytes as f64 / 1024.0,
            self.output_bytes as f64 / 1024.0
        )?;
        if let Some(budget) = self.key_budget_bytes {
            writeln!(
                f,
                "key budget: {:.1} MiB; {} rotation steps composed of power-of-two keys",
                mib(budget as usize),
                self.composed_rotations
            )?;
        }
        writeln!(
            f,
            "server memory: {:.2} GiB (encoded masks + one client's keys in memory)",
            self.server_memory_bytes as f64 / f64::from(1u32 << 30)
        )?;
        if let Some(ms) = self.estimated_latency_ms {
            writeln!(
                f,
                "estimated latency: {ms:.0} ms per image on this machine (from measured unit costs)"
            )?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        if let Some(c) = &self.conversion {
            for w in &c.warnings {
                writeln!(f, "warning: {w}")?;
            }
            for a in c.activations.iter().filter(|a| a.interval.is_some()) {
                writeln!(
                    f,
                    "  {} ({}): degree {} on [{:.3}, {:.3}], max error {:.4}",
                    a.node,
                    a.original,
                    a.degree,
                    a.interval.map_or(0.0, |i| i[0]),
                    a.interval.map_or(0.0, |i| i[1]),
                    a.max_error.unwrap_or(f64::NAN)
                )?;
            }
        }
        if let Some(search) = &self.degree_search {
            let tried: Vec<String> = search
                .trials
                .iter()
                .map(|t| {
                    let fits = if t.chosen { " (chosen)" } else { "" };
                    format!(
                        "{} (margin {}) -> {:.1}%{fits}",
                        t.describe_degree(),
                        t.margin,
                        100.0 * t.top1_agreement
                    )
                })
                .collect();
            writeln!(
                f,
                "activation degree: chosen by agreement with the network as given on {} images, \
                 target {:.1}%: {}",
                search.images,
                100.0 * search.target_agreement,
                tried.join(", ")
            )?;
        }
        if let Some(a) = &self.agreement {
            write!(
                f,
                "plaintext simulation on {} {} images: top-1 agreement with the network as given {:.1}%",
                a.images,
                a.images_from,
                100.0 * a.top1_agreement
            )?;
            if let (Some(o), Some(x)) = (a.original_accuracy, a.approximated_accuracy) {
                write!(
                    f,
                    "; accuracy {:.1}% as given, {:.1}% approximated",
                    100.0 * o,
                    100.0 * x
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
