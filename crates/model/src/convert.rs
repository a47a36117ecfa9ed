//! Conversion to HE-friendly form: every non-polynomial activation ([`Op::Activation`]: ReLU,
//! LeakyReLU, Clip/ReLU6, Sigmoid, Tanh) becomes a polynomial fitted to that function on the values
//! seen at that node on calibration images, every `MaxPool2d` becomes an average pool.
//!
//! Nodes are converted one at a time in graph order, and each is calibrated by running the
//! plaintext executor ([`crate::plain`]) on the model as converted so far, so a polynomial is fitted
//! to the inputs it will really receive once everything before it is approximated too.
//!
//! - **Activations**: the interval is the range observed on the calibration images, widened by
//!   [`ConvertOptions::margin`] on each side; the polynomial of [`ConvertOptions::degree`] is fitted
//!   to the activation's own function ([`Activation::apply`]) by [`FitMethod::LeastSquares`]
//!   (weighted towards the observed values, which concentrate near 0, with a small uniform weight
//!   over the whole interval so it stays bounded there) or [`FitMethod::Chebyshev`] (interpolation
//!   at Chebyshev nodes: near-minimax on the interval). Kinks (ReLU, LeakyReLU, a Clip bound inside
//!   the interval) are what a polynomial approximates worst; Sigmoid and Tanh converge fast with
//!   the degree on intervals of a few units, slowly on wide ones where they saturate. Measured
//!   (`tests/onnx_ops.rs`), largest error of a degree-8 Chebyshev fit on [-8, 8]: ReLU 0.27,
//!   LeakyReLU(0.2) 0.21, ReLU6 0.38, Sigmoid 0.035, Tanh 0.30; on [-4, 4]: Sigmoid 0.0018, Tanh
//!   0.069. The report gives, for each activation, the largest error against the true function
//!   over the interval and the RMS error on the calibration values.
//! - **MaxPool**, by [`ConvertOptions::max_pool`]:
//!   - [`PoolMode::Average`] (default): replaced by the average pool of the same window, with a
//!     warning. The average of a window is smaller than its maximum, which shifts what the next
//!     layers see; with [`ConvertOptions::pool_gain`] a per-channel gain (least squares of the
//!     max-pool output on the average-pool output, on the calibration images) is folded into the
//!     next Conv2d or Dense's input weights, which costs nothing under CKKS.
//!   - [`PoolMode::Max`]: the maximum itself, by a tournament of
//!     `max(a, b) = (a + b)/2 + |a − b|/2` over the window (`⌈log2 window⌉` rounds; a 2×2 window
//!     takes two). A round is a grouped convolution giving the differences of its pairs from the
//!     pool's input and the rounds before, then a polynomial fitted to `|x|/2` on the symmetric
//!     range of differences seen on the calibration images (degree
//!     [`ConvertOptions::pool_degree`], by default the activation degree). The sums
//!     `(a + b)/2` are not computed apart: the last round's combination (every term linear in
//!     the pool's input and the rounds' outputs) fuses into the next layer, which the compiler
//!     reads as residual shortcuts. A 2×2 pool costs `2 × (1 + depth of the polynomial)` levels.
//!
//! [`convert_and_evaluate`] also reports the accuracy before and after on labelled samples.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ir::{
    Activation, Conv2d, IrError, Model, Node, Op, Padding, Polynomial, Pool2d, absorb_input_affine,
};
use crate::plain::{self, Tensor};

/// Why a model could not be converted.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// No calibration image was given.
    #[error("no calibration image")]
    NoCalibrationData,
    /// An option is out of range.
    #[error("invalid conversion option: {0}")]
    InvalidOption(String),
    /// A calibration run or a rebuilt model failed.
    #[error(transparent)]
    Ir(#[from] IrError),
}

/// Result type of the converter.
pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

/// How activation polynomials are fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FitMethod {
    /// Least squares on the calibration values (plus 1% weight spread uniformly over the
    /// interval): accurate where the data is.
    LeastSquares,
    /// Interpolation at the Chebyshev nodes of the interval: near-minimax over all of it.
    Chebyshev,
}

/// Conversion settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConvertOptions {
    /// Degree of each activation polynomial (CKKS depth at most `⌈log2 degree⌉ + 1`, and
    /// `⌈log2(degree + 1)⌉` for a degree `2^k − 1`: 7, 15, 31, 63, 127, 255).
    pub degree: usize,
    /// How many calibration images to use (the first ones given).
    pub calibration_images: usize,
    /// Widening of the observed interval, as a fraction of its half-width, on each side.
    pub margin: f64,
    /// How the polynomials are fitted.
    pub fit: FitMethod,
    /// Calibrate and fold a per-channel gain after each max-pool replaced by an average
    /// ([`PoolMode::Average`]).
    pub pool_gain: bool,
    /// How max-pools are converted.
    #[serde(default)]
    pub max_pool: PoolMode,
    /// Degree of the `|x|/2` polynomial of an exact max-pool ([`PoolMode::Max`]); `None`: the
    /// activation degree ([`ConvertOptions::degree`]).
    #[serde(default)]
    pub pool_degree: Option<usize>,
}

/// How a `MaxPool2d` is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// The average of the window, with a calibrated per-channel gain folded into the next layer
    /// ([`ConvertOptions::pool_gain`]): no level of its own, but not the maximum.
    #[default]
    Average,
    /// The maximum itself, as a tournament of `max(a, b) = (a + b)/2 + |a − b|/2` over the
    /// window: `⌈log2 window⌉` rounds, each one linear level (the differences of the round's
    /// pairs) and one polynomial `|x|/2` fitted on the differences seen on the calibration
    /// images (even, least squares or Chebyshev on the symmetric measured range).
    Max,
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolMode::Average => "average",
            PoolMode::Max => "max",
        })
    }
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            degree: 8,
            calibration_images: 200,
            margin: 0.1,
            fit: FitMethod::LeastSquares,
            pool_gain: true,
            max_pool: PoolMode::Average,
            pool_degree: None,
        }
    }
}

/// What the conversion did to one activation (or saw at one already HE-friendly activation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationReport {
    /// Node name.
    pub node: String,
    /// Operator before conversion (`Relu`, `LeakyRelu`, `Clip`, `Sigmoid`, `Tanh`, `Square`,
    /// `Polynomial`).
    pub original: String,
    /// The activation replaced, with its parameters (`None` for one left as it was).
    #[serde(default)]
    pub activation: Option<Activation>,
    /// Smallest and largest input seen on the calibration images.
    pub observed: [f64; 2],
    /// Interval the polynomial was fitted on (`None` for an activation left as it was).
    pub interval: Option<[f64; 2]>,
    /// Degree of the activation after conversion.
    pub degree: usize,
    /// CKKS depth of the activation after conversion.
    pub depth: u32,
    /// Largest |polynomial − activation| over the interval, against the activation's own function
    /// (converted activations only).
    pub max_error: Option<f64>,
    /// Root mean square of polynomial − activation on the calibration values (converted
    /// activations only).
    pub rms_error: Option<f64>,
}

/// What the conversion did to one max-pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolReport {
    /// Node name.
    pub node: String,
    /// The window.
    pub pool: Pool2d,
    /// Smallest and largest per-channel gain folded into the next layer (`None` if none was).
    pub gain: Option<[f64; 2]>,
    /// What replaced it.
    #[serde(default)]
    pub mode: PoolMode,
    /// The rounds of an exact max-pool ([`PoolMode::Max`]), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<PoolRound>,
}

/// One round of an exact max-pool: `|d|/2` of the differences `d` of the round's pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolRound {
    /// The polynomial's node.
    pub node: String,
    /// Pairs compared per channel and output position.
    pub pairs: usize,
    /// Smallest and largest difference seen on the calibration images.
    pub observed: [f64; 2],
    /// Interval the polynomial was fitted on (symmetric).
    pub interval: [f64; 2],
    /// Degree of the polynomial.
    pub degree: usize,
    /// Its CKKS depth.
    pub depth: u32,
    /// Largest |polynomial − |x|/2| over the interval.
    pub max_error: f64,
    /// Root mean square of polynomial − |x|/2 on the calibration differences.
    pub rms_error: f64,
}

/// What a conversion did and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversionReport {
    /// The settings used.
    pub options: ConvertOptions,
    /// Calibration images used.
    pub calibration_images: usize,
    /// Things a user should know (replaced max-pools, gains not applied, ...).
    pub warnings: Vec<String>,
    /// Every activation of the converted model, in graph order.
    pub activations: Vec<ActivationReport>,
    /// Every replaced max-pool, in graph order.
    pub pools: Vec<PoolReport>,
    /// Multiplicative depth of the converted model (each linear layer 1).
    pub depth: u32,
    /// Multiplicative depth with adjacent linear layers merged.
    pub depth_merged: u32,
    /// Top-1 accuracy of the original model on the labelled samples.
    pub accuracy_before: Option<f64>,
    /// Top-1 accuracy of the converted model on the labelled samples.
    pub accuracy_after: Option<f64>,
    /// Labelled samples the accuracies were measured on.
    pub evaluated_images: usize,
}

impl fmt::Display for ConversionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "conversion: degree {}, {:?} fit, margin {}, {} calibration images",
            self.options.degree, self.options.fit, self.options.margin, self.calibration_images
        )?;
        for a in &self.activations {
            let original = a.activation.map_or(a.original.clone(), |f| f.to_string());
            write!(
                f,
                "  {} ({original} -> degree {}, depth {}): observed [{:.3}, {:.3}]",
                a.node, a.degree, a.depth, a.observed[0], a.observed[1]
            )?;
            if let Some([lo, hi]) = a.interval {
                write!(f, ", fitted on [{lo:.3}, {hi:.3}]")?;
            }
            if let (Some(m), Some(r)) = (a.max_error, a.rms_error) {
                write!(f, ", max error {m:.4}, rms error {r:.4}")?;
            }
            writeln!(f)?;
        }
        for p in &self.pools {
            let [kh, kw] = p.pool.kernel;
            match p.mode {
                PoolMode::Average => write!(f, "  {} (MaxPool2d {kh}x{kw} -> AvgPool2d)", p.node)?,
                PoolMode::Max => write!(
                    f,
                    "  {} (MaxPool2d {kh}x{kw} -> {} rounds of max(a, b) = (a + b)/2 + |a - b|/2)",
                    p.node,
                    p.rounds.len()
                )?,
            }
            if let Some([lo, hi]) = p.gain {
                write!(f, ", gain {lo:.3} to {hi:.3} folded into the next layer")?;
            }
            writeln!(f)?;
            for r in &p.rounds {
                writeln!(
                    f,
                    "    {} ({} pairs, |x|/2 -> degree {}, depth {}): observed [{:.3}, {:.3}], \
                     fitted on [{:.3}, {:.3}], max error {:.4}, rms error {:.4}",
                    r.node,
                    r.pairs,
                    r.degree,
                    r.depth,
                    r.observed[0],
                    r.observed[1],
                    r.interval[0],
                    r.interval[1],
                    r.max_error,
                    r.rms_error
                )?;
            }
        }
        writeln!(
            f,
            "  depth {} ({} with linear layers merged)",
            self.depth, self.depth_merged
        )?;
        if let (Some(b), Some(a)) = (self.accuracy_before, self.accuracy_after) {
            writeln!(
                f,
                "  accuracy on {} images: {:.2}% before, {:.2}% after",
                self.evaluated_images,
                100.0 * b,
                100.0 * a
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}

/// A converted model and its report.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The HE-friendly model.
    pub model: Model,
    /// What was done.
    pub report: ConversionReport,
}

/// Highest activation degree fitted (Chebyshev coefficients: well conditioned at any degree). A
/// degree-255 polynomial takes 8 levels and about 34 ciphertext products under CKKS.
pub const MAX_FIT_DEGREE: usize = 255;
/// Most calibration values kept for a least-squares fit.
const MAX_FIT_SAMPLES: usize = 20_000;
/// Grid points spread over the interval in a least-squares fit (and for the error report).
const GRID_POINTS: usize = 2001;
/// Share of the least-squares weight spread uniformly over the interval.
const UNIFORM_WEIGHT: f64 = 0.01;

/// Converts `model` using the first `options.calibration_images` of `calibration`.
pub fn convert(
    model: &Model,
    calibration: &[Tensor],
    options: &ConvertOptions,
) -> Result<Conversion> {
    convert_with_degrees(model, calibration, options, &[])
}

/// [`convert`] with the `k`-th activation replaced by a polynomial of degree `degrees[k]`
/// (activations beyond the list take `options.degree`): levels moved to where the network is
/// sensitive, at the same total depth.
pub fn convert_with_degrees(
    model: &Model,
    calibration: &[Tensor],
    options: &ConvertOptions,
    degrees: &[usize],
) -> Result<Conversion> {
    for &degree in std::iter::once(&options.degree)
        .chain(degrees)
        .chain(&options.pool_degree)
    {
        if degree == 0 || degree > MAX_FIT_DEGREE {
            return Err(ConvertError::InvalidOption(format!(
                "degree {degree} (1 to {MAX_FIT_DEGREE})"
            )));
        }
    }
    if !(options.margin.is_finite() && options.margin >= 0.0) {
        return Err(ConvertError::InvalidOption(format!(
            "margin {}",
            options.margin
        )));
    }
    let images = &calibration[..calibration.len().min(options.calibration_images)];
    if images.is_empty() {
        return Err(ConvertError::NoCalibrationData);
    }
    let mut warnings = Vec::new();
    if images.len() < options.calibration_images {
        warnings.push(format!(
            "{} calibration images asked for, {} available",
            options.calibration_images,
            images.len()
        ));
    }
    let mut model = if options.max_pool == PoolMode::Max {
        pools_before_activations(model)?
    } else {
        model.clone()
    };
    let mut fitted: Vec<ActivationReport> = Vec::new();
    let mut pools = Vec::new();
    let mut i = 0;
    while i < model.nodes().len() {
        let node = &model.nodes()[i];
        match node.op {
            Op::Activation(act) => {
                let obs = observe_input(&model, images, i, true)?;
                let interval = widen(obs.range, options.margin);
                let f = |x| act.apply(x);
                let degree = degrees.get(fitted.len()).copied().unwrap_or(options.degree);
                let poly = fit_polynomial(f, interval, degree, options.fit, &obs.samples);
                let report = ActivationReport {
                    node: node.name.clone(),
                    original: act.name().into(),
                    activation: Some(act),
                    observed: obs.range,
                    interval: Some(interval),
                    degree: poly.degree(),
                    depth: poly.depth(),
                    max_error: Some(max_error(&poly, f, interval)),
                    rms_error: Some(rms_error(&poly, f, &obs.samples)),
                };
                model = replace_op(&model, i, Op::Polynomial(poly))?;
                fitted.push(report);
            }
            Op::MaxPool2d(pool) if options.max_pool == PoolMode::Max && pool.window() > 1 => {
                let name = node.name.clone();
                let degree = options.pool_degree.unwrap_or(options.degree);
                let (next, rounds) = exact_max_pool(&model, images, i, pool, degree, options)?;
                // The pool's own nodes are done: go on after them.
                i += next.nodes().len() - model.nodes().len();
                model = next;
                pools.push(PoolReport {
                    node: name,
                    pool,
                    gain: None,
                    mode: PoolMode::Max,
                    rounds,
                });
            }
            Op::MaxPool2d(pool) => {
                let name = node.name.clone();
                let (next, gain) = replace_max_pool(&model, images, i, pool, options.pool_gain)?;
                model = next;
                let mut msg = format!(
                    "node {name:?}: MaxPool2d {}x{} stride {}x{} replaced by AvgPool2d of the same \
                     window (not equivalent: the mean of a window is below its maximum)",
                    pool.kernel[0], pool.kernel[1], pool.stride[0], pool.stride[1]
                );
                match gain {
                    Some([lo, hi]) => msg.push_str(&format!(
                        "; a per-channel gain of {lo:.3} to {hi:.3} was folded into the next layer"
                    )),
                    None if options.pool_gain => msg.push_str(
                        "; no gain applied (the pool is not read by a single Conv2d or Dense)",
                    ),
                    None => {}
                }
                warnings.push(msg);
                pools.push(PoolReport {
                    node: name,
                    pool,
                    gain,
                    mode: PoolMode::Average,
                    rounds: Vec::new(),
                });
            }
            _ => {}
        }
        i += 1;
    }
    let pool_nodes: Vec<&str> = pools
        .iter()
        .flat_map(|p: &PoolReport| p.rounds.iter().map(|r| r.node.as_str()))
        .collect();
    let activations = activation_reports(&model, images, fitted, &pool_nodes)?;
    let report = ConversionReport {
        options: *options,
        calibration_images: images.len(),
        warnings,
        activations,
        pools,
        depth: model.multiplicative_depth()?,
        depth_merged: model.multiplicative_depth_merged()?,
        accuracy_before: None,
        accuracy_after: None,
        evaluated_images: 0,
    };
    Ok(Conversion { model, report })
}

/// Converts `model`, calibrating on the first labelled samples, and reports the accuracy of the
/// original and the converted model on all of them.
pub fn convert_and_evaluate(
    model: &Model,
    labelled: &[(Tensor, u8)],
    options: &ConvertOptions,
) -> Result<Conversion> {
    let calibration: Vec<Tensor> = labelled
        .iter()
        .take(options.calibration_images)
        .map(|(x, _)| x.clone())
        .collect();
    let mut conversion = convert(model, &calibration, options)?;
    conversion.report.accuracy_before = Some(plain::accuracy(model, labelled)?);
    conversion.report.accuracy_after = Some(plain::accuracy(&conversion.model, labelled)?);
    conversion.report.evaluated_images = labelled.len();
    Ok(conversion)
}

fn replace_op(model: &Model, i: usize, op: Op) -> Result<Model> {
    let mut nodes = model.nodes().to_vec();
    nodes[i].op = op;
    Ok(model.with_nodes(nodes, model.output())?)
}

/// Replaces max-pool node `i` by an average pool, folding the calibrated gain into the next layer
/// when asked and possible. Returns the new model and the gain range applied.
fn replace_max_pool(
    model: &Model,
    images: &[Tensor],
    i: usize,
    pool: Pool2d,
    with_gain: bool,
) -> Result<(Model, Option<[f64; 2]>)> {
    let mut nodes = model.nodes().to_vec();
    nodes[i].op = Op::AvgPool2d(pool);
    let shape = model.shapes()[i];
    let name = nodes[i].name.clone();
    let reader = model.single_reader_through_reshapes(&name);
    let (Some(q), true) = (reader, with_gain && i != model.output_index()) else {
        return Ok((model.with_nodes(nodes, model.output())?, None));
    };
    // Per channel, the gain g minimizing Σ (max − g·avg)² over the calibration images.
    let (mut num, mut den) = (vec![0.0; shape.channels], vec![0.0; shape.channels]);
    let max_model = model.clone();
    let avg_model = model.with_nodes(nodes.clone(), model.output())?;
    for x in images {
        let tm = plain::trace_until(&max_model, x, i + 1)?;
        let ta = plain::trace_until(&avg_model, x, i + 1)?;
        let (Some(m), Some(a)) = (tm.node(i), ta.node(i)) else {
            continue;
        };
        let plane = shape.plane().max(1);
        for (k, (mv, av)) in m.data().iter().zip(a.data()).enumerate() {
            num[k / plane] += mv * av;
            den[k / plane] += av * av;
        }
    }
    let gain: Vec<f64> = num
        .iter()
        .zip(&den)
        .map(|(&n, &d)| {
            let g = n / d;
            if d > 1e-300 && g.is_finite() && g > 0.0 {
                g
            } else {
                1.0
            }
        })
        .collect();
    let zeros = vec![0.0; gain.len()];
    let direct = nodes[q].input() == name;
    if !absorb_input_affine(&mut nodes[q].op, shape, &gain, &zeros, direct) {
        return Ok((avg_model, None));
    }
    let lo = gain.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = gain.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Ok((model.with_nodes(nodes, model.output())?, Some([lo, hi])))
}

/// One value of an exact max-pool's tournament, per channel and output position: a linear
/// combination of the window's inputs (`x`, one coefficient per window element, row-major) and
/// of the `|d|/2` outputs of the rounds before (`abs[t]`, one coefficient per pair of round `t`).
#[derive(Clone, Debug)]
struct Lane {
    x: Vec<f64>,
    abs: Vec<Vec<f64>>,
}

impl Lane {
    /// `a·self + b·other`.
    fn combine(&self, a: f64, other: &Lane, b: f64) -> Lane {
        let rounds = self.abs.len().max(other.abs.len());
        let abs = (0..rounds)
            .map(|t| {
                let (u, v) = (self.abs_of(t), other.abs_of(t));
                (0..u.len().max(v.len()))
                    .map(|m| {
                        a * u.get(m).copied().unwrap_or(0.0) + b * v.get(m).copied().unwrap_or(0.0)
                    })
                    .collect()
            })
            .collect();
        let x = self
            .x
            .iter()
            .zip(&other.x)
            .map(|(u, v)| a * u + b * v)
            .collect();
        Lane { x, abs }
    }

    fn abs_of(&self, t: usize) -> &[f64] {
        self.abs.get(t).map_or(&[], Vec::as_slice)
    }
}

/// Appends the nodes that compute `lanes` (as channels `c·lanes + l` of a tensor named `out`)
/// from the pool input `x` and the rounds' outputs `abs` (name, pairs): one grouped convolution
/// per source with a non-zero coefficient, summed by `Add`s. The most recent round's output comes
/// first, so that it is the main path and the others are residual shortcuts.
fn lane_nodes(
    nodes: &mut Vec<Node>,
    out: &str,
    lanes: &[Lane],
    x: &str,
    pool: Pool2d,
    channels: usize,
    abs: &[(String, usize)],
) {
    let mut terms: Vec<(String, Op)> = Vec::new();
    for (t, (name, pairs)) in abs.iter().enumerate().rev() {
        if lanes.iter().all(|l| l.abs_of(t).iter().all(|&w| w == 0.0)) {
            continue;
        }
        let weights = |l: &Lane| -> Vec<f64> {
            (0..*pairs)
                .map(|m| l.abs_of(t).get(m).copied().unwrap_or(0.0))
                .collect()
        };
        let op = lane_conv(lanes, channels, *pairs, [1, 1], [1, 1], weights);
        terms.push((name.clone(), op));
    }
    if lanes.iter().any(|l| l.x.iter().any(|&w| w != 0.0)) || terms.is_empty() {
        let op = lane_conv(lanes, channels, 1, pool.kernel, pool.stride, |l| {
            l.x.clone()
        });
        terms.push((x.to_string(), op));
    }
    let count = terms.len();
    let mut sum = String::new();
    for (k, (source, op)) in terms.into_iter().enumerate() {
        let name = if count == 1 {
            out.to_string()
        } else {
            format!("{out}.from.{source}")
        };
        nodes.push(Node::new(&name, op, &[&source]));
        if k == 0 {
            sum = name;
        } else {
            let total = if k + 1 == count {
                out.to_string()
            } else {
                format!("{out}.sum{k}")
            };
            nodes.push(Node::new(&total, Op::Add, &[&sum, &name]));
            sum = total;
        }
    }
}

/// The grouped convolution giving every lane of every channel from one source with `per_group`
/// channels per input channel: lane `l` of channel `c` is output channel `c·lanes + l`, with the
/// weights `weights(lane)` (`per_group · kernel` values) on group `c`.
fn lane_conv(
    lanes: &[Lane],
    channels: usize,
    per_group: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    weights: impl Fn(&Lane) -> Vec<f64>,
) -> Op {
    let per_channel: Vec<f64> = lanes.iter().flat_map(&weights).collect();
    Op::Conv2d(Conv2d {
        in_channels: channels * per_group,
        out_channels: channels * lanes.len(),
        kernel,
        stride,
        padding: Padding::default(),
        groups: channels,
        weights: per_channel.repeat(channels),
        bias: vec![0.0; channels * lanes.len()],
    })
}

/// Swaps every max-pool that reads a monotone activation (read by nothing else) with it:
/// `maxpool(f(x)) = f(maxpool(x))` for a non-decreasing `f` (ReLU, LeakyReLU with a slope
/// `≥ 0`, Clip, Sigmoid, Tanh). The tournament then compares exact values rather than
/// approximated activations, and the activation runs on the pooled tensor. The pool's name stays
/// the name of the (now activated) output.
fn pools_before_activations(model: &Model) -> Result<Model> {
    let mut nodes = model.nodes().to_vec();
    let mut i = 0;
    while i < nodes.len() {
        let Op::MaxPool2d(pool) = nodes[i].op else {
            i += 1;
            continue;
        };
        let source = nodes[i].input().to_string();
        let Some(a) = nodes.iter().position(|n| n.name == source) else {
            i += 1;
            continue;
        };
        let monotone = match nodes[a].op {
            Op::Activation(Activation::LeakyRelu { alpha }) => alpha >= 0.0,
            Op::Activation(_) => true,
            _ => false,
        };
        let readers = nodes.iter().filter(|n| n.inputs.contains(&source)).count();
        if !monotone || readers != 1 || source == model.output() {
            i += 1;
            continue;
        }
        let name = nodes[i].name.clone();
        let pooled = format!("{name}.before.{source}");
        let act = nodes[a].op.clone();
        let input = nodes[a].input().to_string();
        nodes[a] = Node::new(&pooled, Op::MaxPool2d(pool), &[&input]);
        nodes[i] = Node::new(&name, act, &[&pooled]);
        i += 1;
    }
    Ok(model.with_nodes(nodes, model.output())?)
}

/// Replaces max-pool node `i` by the exact tournament of [`PoolMode::Max`], each round's `|d|/2`
/// fitted with `degree` on the differences the calibration images give. The pool's node name
/// stays the name of its output.
fn exact_max_pool(
    model: &Model,
    images: &[Tensor],
    i: usize,
    pool: Pool2d,
    degree: usize,
    options: &ConvertOptions,
) -> Result<(Model, Vec<PoolRound>)> {
    let node = &model.nodes()[i];
    let name = node.name.clone();
    let x = node.input().to_string();
    let channels = model.value_shape(&x).map_or(1, |s| s.channels);
    let window = pool.window();
    let mut lanes: Vec<Lane> = (0..window)
        .map(|e| {
            let mut x = vec![0.0; window];
            x[e] = 1.0;
            Lane { x, abs: Vec::new() }
        })
        .collect();
    let mut nodes: Vec<Node> = model.nodes()[..i].to_vec();
    let mut abs: Vec<(String, usize)> = Vec::new();
    let mut rounds = Vec::new();
    // Each image's values so far: the network before the pool is run once, each round adds its own.
    let mut traces: Vec<Option<plain::Trace>> = vec![None; images.len()];
    let half_abs = |v: f64| 0.5 * v.abs();
    while lanes.len() > 1 {
        let t = rounds.len();
        let pairs = lanes.len() / 2;
        let diffs: Vec<Lane> = (0..pairs)
            .map(|j| lanes[2 * j].combine(1.0, &lanes[2 * j + 1], -1.0))
            .collect();
        let diff = format!("{name}.round{t}.diff");
        lane_nodes(&mut nodes, &diff, &diffs, &x, pool, channels, &abs);
        let probe = model.with_nodes(nodes.clone(), &diff)?;
        let obs = observe_grown(&probe, images, &mut traces)?;
        // |x| is even and so are the differences' roles (a − b or b − a): fit on both signs.
        let r = obs.range[0].abs().max(obs.range[1].abs());
        let interval = widen([-r, r], options.margin);
        let mut samples = obs.samples;
        let negated: Vec<f64> = samples.iter().map(|v| -v).collect();
        samples.extend(negated);
        let mut poly = fit_polynomial(half_abs, interval, degree, options.fit, &samples);
        // Even on a symmetric interval: the odd Chebyshev terms are rounding noise, and without
        // them the evaluation takes fewer products.
        for c in poly.coeffs.iter_mut().skip(1).step_by(2) {
            *c = 0.0;
        }
        let keep = poly.degree() + 1;
        poly.coeffs.truncate(keep);
        let node = format!("{name}.round{t}.abs");
        rounds.push(PoolRound {
            node: node.clone(),
            pairs,
            observed: obs.range,
            interval,
            degree: poly.degree(),
            depth: poly.depth(),
            max_error: max_error(&poly, half_abs, interval),
            rms_error: rms_error(&poly, half_abs, &samples),
        });
        nodes.push(Node::new(&node, Op::Polynomial(poly), &[&diff]));
        abs.push((node, pairs));
        let mut next: Vec<Lane> = (0..pairs)
            .map(|j| {
                let mut l = lanes[2 * j].combine(0.5, &lanes[2 * j + 1], 0.5);
                l.abs.resize(t + 1, Vec::new());
                l.abs[t] = (0..pairs).map(|m| if m == j { 1.0 } else { 0.0 }).collect();
                l
            })
            .collect();
        if lanes.len() % 2 == 1 {
            next.extend(lanes.last().cloned());
        }
        lanes = next;
    }
    lane_nodes(&mut nodes, &name, &lanes, &x, pool, channels, &abs);
    nodes.extend_from_slice(&model.nodes()[i + 1..]);
    Ok((model.with_nodes(nodes, model.output())?, rounds))
}

/// Values seen at a node's input on the calibration images.
struct Observation {
    range: [f64; 2],
    samples: Vec<f64>,
}

/// Runs the calibration images up to node `i` and observes its (first) input.
fn observe_input(model: &Model, images: &[Tensor], i: usize, keep: bool) -> Result<Observation> {
    let node = &model.nodes()[i];
    let source = model.node_index(node.input());
    let per_image = model.value_shape(node.input()).map_or(1, |s| s.len());
    let mut seen = Observer::new(per_image.saturating_mul(images.len()), keep);
    for x in images {
        match source {
            None => seen.add(x.data()),
            Some(j) => {
                let t = plain::trace_until(model, x, j + 1)?;
                seen.add(t.node(j).map(Tensor::data).unwrap_or_default());
            }
        }
    }
    Ok(seen.finish())
}

/// Values of a model's output on the calibration images, for a model grown by appending nodes:
/// `traces` (one per image) keeps what earlier calls computed, and only the new nodes run.
fn observe_grown(
    model: &Model,
    images: &[Tensor],
    traces: &mut [Option<plain::Trace>],
) -> Result<Observation> {
    let mut seen = Observer::new(
        model.output_shape().len().saturating_mul(images.len()),
        true,
    );
    let count = model.output_index() + 1;
    for (x, slot) in images.iter().zip(traces) {
        let trace = match slot.take() {
            Some(t) => plain::resume(model, x, t, count)?,
            None => plain::trace_until(model, x, count)?,
        };
        seen.add(trace.output().map(Tensor::data).unwrap_or_default());
        *slot = Some(trace);
    }
    Ok(seen.finish())
}

/// Range and an evenly spread subset (at most [`MAX_FIT_SAMPLES`]) of about `total` values.
struct Observer {
    lo: f64,
    hi: f64,
    stride: u64,
    k: u64,
    keep: bool,
    samples: Vec<f64>,
}

impl Observer {
    fn new(total: usize, keep: bool) -> Self {
        Self {
            lo: f64::INFINITY,
            hi: f64::NEG_INFINITY,
            stride: total.max(1).div_ceil(MAX_FIT_SAMPLES) as u64,
            k: 0,
            keep,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, values: &[f64]) {
        for &v in values {
            if v.is_finite() {
                self.lo = self.lo.min(v);
                self.hi = self.hi.max(v);
                // Keep a deterministic, evenly spread subset (hashing avoids picking the same
                // channel or position over and over).
                if self.keep && splitmix(self.k).is_multiple_of(self.stride) {
                    self.samples.push(v);
                }
            }
            self.k += 1;
        }
    }

    fn finish(self) -> Observation {
        let range = if self.lo > self.hi {
            [0.0, 0.0]
        } else {
            [self.lo, self.hi]
        };
        Observation {
            range,
            samples: self.samples,
        }
    }
}

/// Ranges seen at every activation of the converted model, with the fit reports of the replaced
/// activations.
fn activation_reports(
    model: &Model,
    images: &[Tensor],
    fitted: Vec<ActivationReport>,
    pool_nodes: &[&str],
) -> Result<Vec<ActivationReport>> {
    let mut out = Vec::new();
    for (i, node) in model.nodes().iter().enumerate() {
        if let Some(f) = fitted.iter().find(|f| f.node == node.name) {
            out.push(f.clone());
            continue;
        }
        if pool_nodes.contains(&node.name.as_str()) {
            continue;
        }
        let (degree, depth) = match &node.op {
            Op::Square => (2, 1),
            Op::Polynomial(p) => (p.degree(), p.depth()),
            _ => continue,
        };
        let obs = observe_input(model, images, i, false)?;
        out.push(ActivationReport {
            node: node.name.clone(),
            original: node.op.kind().into(),
            activation: None,
            observed: obs.range,
            interval: None,
            degree,
            depth,
            max_error: None,
            rms_error: None,
        });
    }
    Ok(out)
}

fn splitmix(k: u64) -> u64 {
    let mut z = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The observed range widened by `margin` times its half-width on each side (never empty).
pub fn widen([lo, hi]: [f64; 2], margin: f64) -> [f64; 2] {
    let c = 0.5 * (lo + hi);
    let r = 0.5 * (hi - lo) * (1.0 + margin);
    let r = if r > 0.0 { r } else { 1.0 };
    [c - r, c + r]
}

/// Fits a polynomial approximation of `f` of `degree` on `interval`; `samples` are the
/// calibration values a least-squares fit weighs (ignored by [`FitMethod::Chebyshev`]). The
/// polynomial records the interval.
pub fn fit_polynomial(
    f: impl Fn(f64) -> f64,
    interval: [f64; 2],
    degree: usize,
    method: FitMethod,
    samples: &[f64],
) -> Polynomial {
    let cheb = match method {
        FitMethod::Chebyshev => chebyshev_interpolate(f, degree, interval),
        FitMethod::LeastSquares => least_squares(f, degree, interval, samples),
    };
    Polynomial::chebyshev(cheb, interval)
}

/// Maps `x` in `[a, b]` to `t` in `[-1, 1]`.
fn to_unit([a, b]: [f64; 2], x: f64) -> f64 {
    (2.0 * x - a - b) / (b - a)
}

/// `T_0(t) .. T_degree(t)`.
fn chebyshev_basis(t: f64, degree: usize, out: &mut Vec<f64>) {
    out.clear();
    out.push(1.0);
    if degree >= 1 {
        out.push(t);
    }
    for k in 2..=degree {
        let next = 2.0 * t * out[k - 1] - out[k - 2];
        out.push(next);
    }
}

/// Chebyshev coefficients (on `interval`) of the interpolant of `f` at the Chebyshev nodes:
/// the CKKS library's interpolation, padded to `degree + 1` coefficients. A degenerate interval
/// is widened as calibration does, so the fit is always defined.
fn chebyshev_interpolate(f: impl Fn(f64) -> f64, degree: usize, interval: [f64; 2]) -> Vec<f64> {
    let [a, b] = if interval[1] > interval[0] {
        interval
    } else {
        widen(interval, 0.0)
    };
    let mut coeffs = cipherinfer_ckks::Polynomial::chebyshev_interpolate(f, degree, a, b)
        .map(|p| p.coeffs().to_vec())
        .unwrap_or_default();
    coeffs.resize(degree + 1, 0.0);
    coeffs
}

/// Chebyshev coefficients (on `interval`) of the weighted least-squares fit of `f`: the samples
/// share `1 − UNIFORM_WEIGHT` of the weight, a uniform grid over the interval the rest.
fn least_squares(
    f: impl Fn(f64) -> f64,
    degree: usize,
    interval: [f64; 2],
    samples: &[f64],
) -> Vec<f64> {
    let [a, b] = interval;
    let n = degree + 1;
    let grid = (0..GRID_POINTS).map(|k| a + (b - a) * k as f64 / (GRID_POINTS - 1) as f64);
    let inside: Vec<f64> = samples
        .iter()
        .copied()
        .filter(|x| (a..=b).contains(x))
        .collect();
    let (ws, wg) = if inside.is_empty() {
        (0.0, (1.0 / GRID_POINTS as f64).sqrt())
    } else {
        (
            ((1.0 - UNIFORM_WEIGHT) / inside.len() as f64).sqrt(),
            (UNIFORM_WEIGHT / GRID_POINTS as f64).sqrt(),
        )
    };
    let rows: Vec<(f64, f64)> = inside
        .iter()
        .map(|&x| (x, ws))
        .chain(grid.map(|x| (x, wg)))
        .collect();
    // Column-major design matrix, weighted.
    let mut cols = vec![vec![0.0; rows.len()]; n];
    let mut rhs = vec![0.0; rows.len()];
    let mut basis = Vec::with_capacity(n);
    for (r, &(x, w)) in rows.iter().enumerate() {
        chebyshev_basis(to_unit(interval, x), degree, &mut basis);
        for (col, &t) in cols.iter_mut().zip(&basis) {
            col[r] = w * t;
        }
        rhs[r] = w * f(x);
    }
    householder_solve(cols, rhs)
}

/// Least-squares solution of `A c = y` (A given by columns) by Householder QR; the coefficients
/// of columns that turn out linearly dependent are 0.
fn householder_solve(mut cols: Vec<Vec<f64>>, mut y: Vec<f64>) -> Vec<f64> {
    let n = cols.len();
    let m = y.len();
    for k in 0..n.min(m) {
        let norm = cols[k][k..].iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let alpha = if cols[k][k] > 0.0 { -norm } else { norm };
        let mut v: Vec<f64> = cols[k][k..].to_vec();
        v[0] -= alpha;
        let vv: f64 = v.iter().map(|x| x * x).sum();
        if vv == 0.0 {
            continue;
        }
        let reflect = |col: &mut [f64]| {
            let s: f64 = v.iter().zip(col.iter()).map(|(a, b)| a * b).sum();
            let f = 2.0 * s / vv;
            for (c, vi) in col.iter_mut().zip(&v) {
                *c -= f * vi;
            }
        };
        for col in cols.iter_mut().skip(k) {
            reflect(&mut col[k..]);
        }
        reflect(&mut y[k..]);
    }
    let scale = (0..n.min(m)).map(|k| cols[k][k].abs()).fold(0.0, f64::max);
    let mut c = vec![0.0; n];
    for k in (0..n.min(m)).rev() {
        let r = cols[k][k];
        if r.abs() <= scale * 1e-13 {
            continue;
        }
        let s: f64 = ((k + 1)..n).map(|j| cols[j][k] * c[j]).sum();
        c[k] = (y[k] - s) / r;
    }
    c
}

/// Largest |p(x) − f(x)| on a grid of 2001 points of the interval (its ends included).
pub fn max_error(p: &Polynomial, f: impl Fn(f64) -> f64, [a, b]: [f64; 2]) -> f64 {
    (0..GRID_POINTS)
        .map(|k| a + (b - a) * k as f64 / (GRID_POINTS - 1) as f64)
        .map(|x| (p.evaluate(x) - f(x)).abs())
        .fold(0.0, f64::max)
}

/// Root mean square of p − f on the samples (0 for none).
fn rms_error(p: &Polynomial, f: impl Fn(f64) -> f64, samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let s: f64 = samples
        .iter()
        .map(|&x| (p.evaluate(x) - f(x)).powi(2))
        .sum();
    (s / samples.len() as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relu(x: f64) -> f64 {
        x.max(0.0)
    }

    #[test]
    fn fits_reproduce_polynomials_exactly() {
        // Both fits recover a polynomial of the degree asked for.
        let f = |x: f64| 1.0 - 2.0 * x + 0.5 * x * x * x;
        let interval = [-2.0, 4.0];
        let samples: Vec<f64> = (0..300).map(|k| -2.0 + 6.0 * k as f64 / 299.0).collect();
        for method in [FitMethod::Chebyshev, FitMethod::LeastSquares] {
            let p = fit_polynomial(f, interval, 3, method, &samples);
            assert_eq!(p.degree(), 3);
            assert!(max_error(&p, f, interval) < 1e-9, "{method:?}");
        }
    }

    #[test]
    fn high_degree_fits_stay_accurate() {
        // The Chebyshev form does not lose precision at the highest degree (the monomial form
        // lost 4e-2 at degree 40 on this interval).
        let interval = [-34.4, 23.2];
        let p = fit_polynomial(relu, interval, MAX_FIT_DEGREE, FitMethod::Chebyshev, &[]);
        let e = max_error(&p, relu, interval);
        let low = fit_polynomial(relu, interval, 31, FitMethod::Chebyshev, &[]);
        let e31 = max_error(&low, relu, interval);
        // The error of |x| approximations falls as 1/degree: 8x the degree, about 8x less.
        assert!(
            e < e31 / 6.0,
            "degree {MAX_FIT_DEGREE}: {e}, degree 31: {e31}"
        );
        let ckks =
            cipherinfer_ckks::Polynomial::chebyshev(p.coeffs.clone(), interval[0], interval[1])
                .expect("p");
        for k in 0..=200 {
            let x = interval[0] + (interval[1] - interval[0]) * k as f64 / 200.0;
            assert!((ckks.evaluate(x) - p.evaluate(x)).abs() < 1e-9, "{x}");
        }
    }

    #[test]
    fn relu_fits_improve_with_degree() {
        let interval = [-10.0, 10.0];
        let errors: Vec<f64> = [2, 4, 8, 16]
            .iter()
            .map(|&d| {
                let p = fit_polynomial(relu, interval, d, FitMethod::Chebyshev, &[]);
                max_error(&p, relu, interval)
            })
            .collect();
        assert!(errors.windows(2).all(|w| w[1] < w[0]), "{errors:?}");
        assert!(errors[3] < 0.25, "{errors:?}");
    }
}
