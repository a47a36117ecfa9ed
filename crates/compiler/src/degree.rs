//! Choosing the activation degree: the cheapest polynomial degree whose approximated network
//! agrees with the network as given on the package's images, among those whose depth fits a
//! parameter set.
//!
//! The degrees tried are `2^k − 1` ([`AUTO_DEGREES`]): the CKKS evaluation takes `k` levels for
//! them, so each is the most accurate polynomial of its depth. For each, and for each range
//! margin of [`AUTO_MARGINS`] at least the one asked for, the network is converted (ranges measured
//! on the calibration images), run in plaintext simulation on the images, and compared with the
//! network as given (top-1). The first degree that reaches the target
//! agreement and fits a parameter set is taken; when a degree no longer fits, or none reaches the
//! target, the one of highest agreement that fits (the lowest such degree on a tie). The search
//! also stops when two degrees in a row bring no better agreement.
//!
//! **Levels moved between activations.** Before a degree `d` that misses the target gives way to
//! `2d + 1` (one more level per activation, often a larger ring), the search tries the same depth
//! spent unevenly: one activation at `2d + 1`, another at `(d − 1) / 2`. Which ones comes from how
//! much each alone moves the agreement when raised or lowered (`2k` conversions for `k`
//! activations, not recorded as trials); the pair that gains most is tried as a trial of degree
//! `d` with its per-activation `degrees`.
//!
//! **Exact max-pools.** When max-pools are converted exactly ([`PoolMode::Max`]) and no degree is
//! given for their `|x|/2` polynomials, that degree is searched too: [`AUTO_POOL_DEGREES`] in
//! turn, cheapest first, each with the search above over [`EXACT_POOL_ACTIVATION_DEGREES`]. The
//! first pool degree whose search reaches the target is taken; otherwise the one of highest
//! agreement, the search stopping at the first pool degree at which nothing fits. On the shipped
//! colour package the pools take most of the depth: the search ends at activations of degree 3
//! and pools of degree 14.

use cipherinfer_model::ModelPackage;
use cipherinfer_model::convert::{
    Conversion, ConvertOptions, PoolMode, convert, convert_with_degrees,
};
use cipherinfer_model::ir::{Model, Op};
use cipherinfer_model::plain::{self, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{CompileError, Result};
use crate::import::{Compiled, ServingOptions, compile_converted};

/// Degrees tried, cheapest first (CKKS depth 3 to 8).
pub const AUTO_DEGREES: [usize; 6] = [7, 15, 31, 63, 127, 255];

/// Degrees of the `|x|/2` polynomial of an exact max-pool tried (`2^k − 2`: even, `k` levels),
/// when the pools are exact ([`PoolMode::Max`]) and no pool degree is given.
pub const AUTO_POOL_DEGREES: [usize; 4] = [6, 14, 30, 62];

/// Activation degrees tried beside exact max-pools: from 3 (two levels), since the pools take
/// most of the depth and the activation after a pool sees the pooled maxima.
pub const EXACT_POOL_ACTIVATION_DEGREES: [usize; 7] = [3, 7, 15, 31, 63, 127, 255];

/// Top-1 agreement with the network as given at which the search stops.
pub const DEFAULT_TARGET_AGREEMENT: f64 = 0.99;

/// How many of a shipped model's sample images (the first ones) the degree search measures
/// agreement on; the first `ConvertOptions::calibration_images` of them also calibrate.
pub const SHIPPED_SEARCH_IMAGES: usize = 500;

/// Range margins tried at each degree, beside the one asked for (never below it): a
/// high-degree polynomial diverges fast outside its interval, and a wider interval costs it
/// little accuracy.
pub const AUTO_MARGINS: [f64; 2] = [0.5, 1.0];

/// One degree tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DegreeTrial {
    /// The activation degree.
    pub degree: usize,
    /// The range margin (fraction of each measured range's half-width added on each side).
    pub margin: f64,
    /// Per activation, in network order, when they differ (levels moved between activations);
    /// empty when every activation has `degree`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub degrees: Vec<usize>,
    /// Degree of the exact max-pools' `|x|/2` polynomials (`None`: average pools, or the
    /// activation degree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_degree: Option<usize>,
    /// Top-1 agreement of the approximated network with the network as given, on the images.
    pub top1_agreement: f64,
    /// Depth of the compiled plan, when a parameter set holds it (`None`: not compiled, or no
    /// parameter set at the security level holds it).
    pub depth: Option<usize>,
    /// Whether this degree was taken.
    pub chosen: bool,
}

/// What the degree search did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DegreeSearch {
    /// The agreement aimed at.
    pub target_agreement: f64,
    /// Images the agreement was measured on.
    pub images: usize,
    /// Every degree tried, in order.
    pub trials: Vec<DegreeTrial>,
}

impl DegreeTrial {
    /// The degree, or the per-activation degrees joined by `/` when they differ.
    pub fn describe_degree(&self) -> String {
        let activations = if self.degrees.is_empty() {
            self.degree.to_string()
        } else {
            self.degrees
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("/")
        };
        match self.pool_degree {
            Some(p) => format!("{activations}, max-pool {p}"),
            None => activations,
        }
    }
}

impl DegreeSearch {
    /// The degree taken.
    pub fn chosen(&self) -> Option<usize> {
        self.chosen_trial().map(|t| t.degree)
    }

    /// The trial taken.
    pub fn chosen_trial(&self) -> Option<&DegreeTrial> {
        self.trials.iter().find(|t| t.chosen)
    }
}

fn predictions(model: &Model, images: &[Tensor]) -> Result<Vec<Option<usize>>> {
    plain::predict(model, images).map_err(|e| CompileError::Input(e.to_string()))
}

/// The uneven spending of degree `degree`'s levels the module describes: the per-activation
/// degrees, their conversion and agreement, or `None` when there is nothing to move (fewer than
/// two activations, or no degree below).
fn moved_levels(
    ir: &Model,
    calibration: &[Tensor],
    images: &[Tensor],
    given: &[Option<usize>],
    options: &ConvertOptions,
) -> Result<Option<(Vec<usize>, Conversion, f64)>> {
    let k = ir
        .nodes()
        .iter()
        .filter(|n| matches!(n.op, Op::Activation(_)))
        .count();
    let d = options.degree;
    let (up, down) = (2 * d + 1, (d - 1) / 2);
    if k < 2 || down < 3 || up > *AUTO_DEGREES.last().unwrap_or(&d) {
        return Ok(None);
    }
    let moved = |raise: usize, lower: usize| {
        let mut v = vec![d; k];
        v[raise] = up;
        v[lower] = down;
        v
    };
    let pairs: Vec<(usize, usize)> = if k <= MOVED_PAIRS_ALL {
        (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .collect()
    } else {
        // Each activation alone raised, then alone lowered: the most sensitive one gets the
        // level of the least sensitive.
        let alone = |at: usize, degree: usize| -> Result<f64> {
            let mut v = vec![d; k];
            v[at] = degree;
            let c = convert_with_degrees(ir, calibration, options, &v)?;
            top1_agreement(given, &c.model, images)
        };
        let raised = (0..k).map(|a| alone(a, up)).collect::<Result<Vec<_>>>()?;
        let lowered = (0..k).map(|a| alone(a, down)).collect::<Result<Vec<_>>>()?;
        let mut best: Option<(f64, usize, usize)> = None;
        for (i, r) in raised.iter().enumerate() {
            for (j, l) in lowered.iter().enumerate() {
                if i != j && best.is_none_or(|b| r + l > b.0) {
                    best = Some((r + l, i, j));
                }
            }
        }
        best.map(|(_, i, j)| vec![(i, j)]).unwrap_or_default()
    };
    // Top-1 agreement first; on a tie (a few hundred images tie often), the smaller mean squared
    // difference of the outputs from the network's as given.
    let given_out = images
        .iter()
        .map(|x| plain::run(ir, x).map_err(|e| CompileError::Input(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    let mut best: Option<((f64, f64), Vec<usize>, Conversion)> = None;
    for (i, j) in pairs {
        let degrees = moved(i, j);
        let conversion = convert_with_degrees(ir, calibration, options, &degrees)?;
        let (mut same, mut sq, mut count) = (0usize, 0.0, 0usize);
        for (x, want) in images.iter().zip(&given_out) {
            let got =
                plain::run(&conversion.model, x).map_err(|e| CompileError::Input(e.to_string()))?;
            same += usize::from(got.argmax() == want.argmax());
            for (a, b) in got.data().iter().zip(want.data()) {
                sq += (a - b) * (a - b);
                count += 1;
            }
        }
        let score = (
            same as f64 / images.len().max(1) as f64,
            sq / count.max(1) as f64,
        );
        if best
            .as_ref()
            .is_none_or(|(b, ..)| score.0 > b.0 || (score.0 == b.0 && score.1 < b.1))
        {
            best = Some((score, degrees, conversion));
        }
    }
    Ok(best.map(|((agreement, _), degrees, conversion)| (degrees, conversion, agreement)))
}

/// Up to this many activations, every (raised, lowered) pair is tried when levels are moved;
/// above, one pair chosen from each activation's own sensitivity.
const MOVED_PAIRS_ALL: usize = 4;

fn top1_agreement(given: &[Option<usize>], approximated: &Model, images: &[Tensor]) -> Result<f64> {
    let got = predictions(approximated, images)?;
    let same = given.iter().zip(&got).filter(|(a, b)| a == b).count();
    Ok(same as f64 / images.len().max(1) as f64)
}

/// Compiles `ir` for serving with the activation degree chosen as the module describes
/// (`options.convert.degree` is ignored). `images` measure the agreement (the calibration images
/// when empty). A network with nothing to approximate is compiled as it is, with no search.
pub fn compile_choosing_degree(
    ir: &Model,
    calibration: &[Tensor],
    images: &[Tensor],
    options: &ServingOptions,
    target: f64,
) -> Result<(Compiled, Option<DegreeSearch>)> {
    if ir.is_he_friendly() || calibration.is_empty() {
        // Nothing to approximate, or a needs_calibration error.
        return Ok((crate::compile_for_serving(ir, calibration, options)?, None));
    }
    if !(0.0..=1.0).contains(&target) {
        return Err(CompileError::Input(format!(
            "target agreement {target} is not between 0 and 1"
        )));
    }
    let images = if images.is_empty() {
        calibration
    } else {
        images
    };
    let given = predictions(ir, images)?;
    let exact_pools = options.convert.max_pool == PoolMode::Max
        && options.convert.pool_degree.is_none()
        && ir.nodes().iter().any(|n| matches!(n.op, Op::MaxPool2d(_)));
    if !exact_pools {
        let found = search_degrees(
            ir,
            calibration,
            images,
            &given,
            options,
            target,
            &AUTO_DEGREES,
        )?;
        return Ok((found.0, Some(found.1)));
    }
    // Exact max-pools: each |x|/2 degree in turn, cheapest first, with the activation degree
    // searched at each (from degree 3: after a pool the activation sees the pooled maxima).
    let mut search = DegreeSearch {
        target_agreement: target,
        images: images.len(),
        trials: Vec::new(),
    };
    let mut best: Option<(f64, usize, Compiled)> = None;
    let mut first_error = None;
    for pool_degree in AUTO_POOL_DEGREES {
        let mut opts = *options;
        opts.convert.pool_degree = Some(pool_degree);
        let (compiled, found) = match search_degrees(
            ir,
            calibration,
            images,
            &given,
            &opts,
            target,
            &EXACT_POOL_ACTIVATION_DEGREES,
        ) {
            Ok(found) => found,
            Err(e) => {
                // Nothing fits at this pool degree: higher ones are deeper still.
                first_error.get_or_insert(e);
                break;
            }
        };
        let Some(k) = found.trials.iter().position(|t| t.chosen) else {
            break;
        };
        let (agreement, at) = (found.trials[k].top1_agreement, search.trials.len() + k);
        search.trials.extend(
            found
                .trials
                .into_iter()
                .map(|t| DegreeTrial { chosen: false, ..t }),
        );
        if best.as_ref().is_none_or(|b| agreement > b.0) {
            best = Some((agreement, at, compiled));
        }
        if agreement >= target {
            break;
        }
    }
    match best {
        Some((_, at, compiled)) => {
            search.trials[at].chosen = true;
            Ok((compiled, Some(search)))
        }
        None => Err(first_error
            .unwrap_or_else(|| CompileError::DoesNotFit("no max-pool degree fits".into()))),
    }
}

/// The search of the module for one pool degree (that of `options`), over `degrees`.
fn search_degrees(
    ir: &Model,
    calibration: &[Tensor],
    images: &[Tensor],
    given: &[Option<usize>],
    options: &ServingOptions,
    target: f64,
    degrees: &[usize],
) -> Result<(Compiled, DegreeSearch)> {
    let mut search = DegreeSearch {
        target_agreement: target,
        images: images.len(),
        trials: Vec::new(),
    };
    // (agreement, trial index, converted) of the trials not compiled yet.
    let mut candidates = Vec::new();
    let mut first_error = None;
    let mut margins = vec![options.convert.margin];
    margins.extend(AUTO_MARGINS.iter().filter(|&&m| m > options.convert.margin));
    let last = (degrees.len() - 1, margins.len() - 1);
    let (mut best, mut stale) = (f64::NEG_INFINITY, 0);
    'search: for (i, &degree) in degrees.iter().enumerate() {
        // Two degrees in a row without a better agreement: the approximation is no longer what
        // limits it (a replaced MaxPool, say); higher degrees would only cost levels.
        let here = search
            .trials
            .iter()
            .map(|t| t.top1_agreement)
            .fold(best, f64::max);
        if here > best {
            (best, stale) = (here, 0);
        } else if i > 0 {
            stale += 1;
            if stale >= 2 {
                break 'search;
            }
        }
        for (j, &margin) in margins.iter().enumerate() {
            let mut opts = *options;
            opts.convert.degree = degree;
            opts.convert.margin = margin;
            let conversion = convert(ir, calibration, &opts.convert)?;
            let agreement = top1_agreement(given, &conversion.model, images)?;
            let index = search.trials.len();
            search.trials.push(DegreeTrial {
                degree,
                margin,
                degrees: Vec::new(),
                pool_degree: opts.convert.pool_degree,
                top1_agreement: agreement,
                depth: None,
                chosen: false,
            });
            if agreement < target && (i, j) != last {
                candidates.push((agreement, index, conversion));
                continue;
            }
            match compile_converted(conversion.clone(), calibration, &opts) {
                Ok(compiled) => {
                    search.trials[index].depth = Some(compiled.he.depth());
                    if agreement >= target || candidates.iter().all(|c| c.0 < agreement) {
                        search.trials[index].chosen = true;
                        return Ok((compiled, search));
                    }
                    candidates.push((agreement, index, conversion));
                    break 'search;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    break 'search;
                }
            }
        }
        // Every margin missed the target at this degree: the same depth spent unevenly, at the
        // margin that did best.
        let Some(at_best) = search
            .trials
            .iter()
            .filter(|t| t.degree == degree)
            .max_by(|a, b| a.top1_agreement.total_cmp(&b.top1_agreement))
            .map(|t| t.margin)
        else {
            continue;
        };
        let mut opts = *options;
        opts.convert.degree = degree;
        opts.convert.margin = at_best;
        let Some((degrees, conversion, agreement)) =
            moved_levels(ir, calibration, images, given, &opts.convert)?
        else {
            continue;
        };
        let index = search.trials.len();
        search.trials.push(DegreeTrial {
            degree,
            margin: at_best,
            degrees,
            pool_degree: opts.convert.pool_degree,
            top1_agreement: agreement,
            depth: None,
            chosen: false,
        });
        if agreement >= target {
            match compile_converted(conversion.clone(), calibration, &opts) {
                Ok(compiled) => {
                    search.trials[index].depth = Some(compiled.he.depth());
                    search.trials[index].chosen = true;
                    return Ok((compiled, search));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    break 'search;
                }
            }
        }
        candidates.push((agreement, index, conversion));
    }
    // No degree reached the target within what fits: the best agreement that fits (the
    // cheapest on a tie).
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, index, conversion) in candidates {
        let mut opts = *options;
        opts.convert.degree = search.trials[index].degree;
        opts.convert.margin = search.trials[index].margin;
        if let Ok(compiled) = compile_converted(conversion, calibration, &opts) {
            search.trials[index].depth = Some(compiled.he.depth());
            search.trials[index].chosen = true;
            return Ok((compiled, search));
        }
    }
    Err(first_error.unwrap_or_else(|| CompileError::DoesNotFit("no activation degree fits".into())))
}

/// The activation degree asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Degree {
    /// Chosen by [`compile_choosing_degree`].
    Auto,
    /// This degree.
    Fixed(usize),
}

/// Compiles a model package with a fixed or a chosen activation degree (the agreement measured
/// on [`agreement_images`]).
pub fn compile_package(
    package: &ModelPackage,
    degree: Degree,
    target: f64,
    options: &ServingOptions,
) -> Result<(Compiled, Option<DegreeSearch>)> {
    let calibration = package.calibration_inputs();
    match degree {
        Degree::Fixed(d) => {
            let mut options = *options;
            options.convert.degree = d;
            let compiled = crate::compile_for_serving(&package.model, &calibration, &options)?;
            Ok((compiled, None))
        }
        Degree::Auto => {
            let images: Vec<Tensor> = agreement_images(package)
                .0
                .into_iter()
                .map(|(x, _)| x)
                .collect();
            compile_choosing_degree(&package.model, &calibration, &images, options, target)
        }
    }
}

/// The images agreement is measured on: the package's test images with their labels, or its
/// calibration images when it has none (named by the second value).
pub fn agreement_images(package: &ModelPackage) -> (Vec<(Tensor, Option<usize>)>, &'static str) {
    if package.test.is_empty() {
        let images = package.calibration.iter().map(|t| (t.clone(), None));
        (images.collect(), "calibration")
    } else {
        let images = package
            .test
            .iter()
            .map(|t| (t.input.clone(), Some(t.label)));
        (images.collect(), "test")
    }
}
