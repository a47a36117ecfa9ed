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

use cipherinfer_model::ModelPackage;
use cipherinfer_model::convert::convert;
use cipherinfer_model::ir::Model;
use cipherinfer_model::plain::{self, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{CompileError, Result};
use crate::import::{Compiled, ServingOptions, compile_converted};

/// Degrees tried, cheapest first (CKKS depth 3 to 8).
pub const AUTO_DEGREES: [usize; 6] = [7, 15, 31, 63, 127, 255];

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
    let last = (AUTO_DEGREES.len() - 1, margins.len() - 1);
    let (mut best, mut stale) = (f64::NEG_INFINITY, 0);
    'search: for (i, &degree) in AUTO_DEGREES.iter().enumerate() {
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
            let agreement = top1_agreement(&given, &conversion.model, images)?;
            let index = search.trials.len();
            search.trials.push(DegreeTrial {
                degree,
                margin,
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
                        return Ok((compiled, Some(search)));
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
            return Ok((compiled, Some(search)));
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
