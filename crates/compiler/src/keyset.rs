//! The rotation keys a model's client generates, chosen against a size budget.
//!
//! By default every rotation step the plan uses gets its own key (fewest key switches). Under a
//! budget on the evaluation-key bundle (`--max-key-mib`), some steps get no key and are composed
//! at evaluation time of the keys for the powers of two in their binary expansion
//! ([`cipherinfer_ckks::power_of_two_parts`]): a step with `w` set bits then costs `w` key
//! switches instead of one, and a hoisted rotation (one key inner product on a shared
//! decomposition) becomes `w` full ones. From the smallest set (every step composed), the steps
//! whose own key saves the most evaluation time per byte are given one back while the budget
//! holds; the keys for powers of two serve the highest level of any step composed of them.

use std::collections::{BTreeMap, BTreeSet};

use cipherinfer_ckks::serialization::evaluation_keys_bytes_to_levels;
use cipherinfer_ckks::{Parameters, power_of_two_parts};

use crate::error::{CompileError, Result};
use crate::plan::RotationUse;

/// Cost of a full key switch in units of a hoisted rotation (a key inner product only).
const FULL_ROTATION_COST: usize = 3;

/// The keys to generate (step → highest level served) when `composed` steps are made of
/// power-of-two keys and the others have their own.
fn key_levels(
    uses: &BTreeMap<i64, RotationUse>,
    composed: &BTreeSet<i64>,
    slots: usize,
) -> BTreeMap<i64, usize> {
    let mut keys: BTreeMap<i64, usize> = BTreeMap::new();
    let mut want = |s: i64, level: usize| {
        let l = keys.entry(s).or_insert(level);
        *l = (*l).max(level);
    };
    for (&s, u) in uses {
        if composed.contains(&s) {
            for part in power_of_two_parts(s, slots) {
                want(part, u.level);
            }
        } else {
            want(s, u.level);
        }
    }
    keys
}

/// Bytes of the evaluation-key bundle with these rotation keys.
fn bundle_bytes(params: &Parameters, keys: &BTreeMap<i64, usize>, relinearization: bool) -> u64 {
    let levels: Vec<usize> = keys.values().copied().collect();
    evaluation_keys_bytes_to_levels(params, &levels, relinearization) as u64
}

/// Extra evaluation time (in hoisted-rotation units) of composing step `s` instead of keying it.
fn composing_cost(s: i64, u: &RotationUse, slots: usize) -> usize {
    let w = power_of_two_parts(s, slots).len();
    u.full * (w - 1) * FULL_ROTATION_COST + u.hoisted * (w * FULL_ROTATION_COST - 1)
}

/// The rotation keys to generate, step → highest level served, for rotation `uses` (actual
/// steps on parameters with `slots` slots): one per step when that fits `max_bytes` (or there
/// is no budget), otherwise, starting from every step composed of powers of two, the steps that
/// save the most time per byte get their own key back while the budget holds. Refused when even
/// the keys for powers of two alone exceed the budget.
pub fn choose_rotation_keys(
    params: &Parameters,
    uses: &BTreeMap<i64, RotationUse>,
    relinearization: bool,
    max_bytes: Option<u64>,
) -> Result<BTreeMap<i64, usize>> {
    let slots = params.slots();
    let direct = key_levels(uses, &BTreeSet::new(), slots);
    let Some(budget) = max_bytes else {
        return Ok(direct);
    };
    if bundle_bytes(params, &direct, relinearization) <= budget {
        return Ok(direct);
    }
    let mut composed: BTreeSet<i64> = uses
        .keys()
        .copied()
        .filter(|&s| power_of_two_parts(s, slots).len() > 1)
        .collect();
    let mut keys = key_levels(uses, &composed, slots);
    let mut bytes = bundle_bytes(params, &keys, relinearization);
    if bytes > budget {
        return Err(CompileError::KeyBudget {
            budget,
            smallest: bytes,
        });
    }
    loop {
        // The composed step whose own key saves the most time per byte added, within budget.
        let mut best: Option<(f64, i64, BTreeMap<i64, usize>, u64)> = None;
        for &s in &composed {
            let mut fewer = composed.clone();
            fewer.remove(&s);
            let trial = key_levels(uses, &fewer, slots);
            let trial_bytes = bundle_bytes(params, &trial, relinearization);
            if trial_bytes > budget {
                continue;
            }
            let saved = composing_cost(s, &uses[&s], slots) as f64;
            let added = trial_bytes.saturating_sub(bytes).max(1) as f64;
            if best.as_ref().is_none_or(|b| saved / added > b.0) {
                best = Some((saved / added, s, trial, trial_bytes));
            }
        }
        let Some((_, s, trial, trial_bytes)) = best else {
            return Ok(keys);
        };
        composed.remove(&s);
        keys = trial;
        bytes = trial_bytes;
    }
}
