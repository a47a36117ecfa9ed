//! Conformance checks of decoded payload fields, shared by the version decoders.

use super::envelope::err;
use crate::error::{DecodeErrorCode, Result};
use crate::params::Parameters;

/// Rejects scales that are not finite, below 1, or not below `Q_level`.
pub(super) fn check_scale(params: &Parameters, scale: f64, level: usize) -> Result<()> {
    if !scale.is_finite() || scale < 1.0 || scale.log2() >= params.log_q_at(level) {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!("scale {scale:e} is not finite, at least 1 and below Q_{level}"),
        ));
    }
    Ok(())
}

pub(super) fn check_level(params: &Parameters, level: usize) -> Result<()> {
    if level > params.max_level() {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!("level {level} above the maximum {}", params.max_level()),
        ));
    }
    Ok(())
}

/// Rejects Galois elements that are even, not below 2N, or the identity.
pub(super) fn check_galois_element(params: &Parameters, g: u64) -> Result<()> {
    let two_n = 2 * params.n() as u64;
    if g.is_multiple_of(2) || g >= two_n || g == 1 {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!("Galois element {g} is not odd, below 2N = {two_n} and different from 1"),
        ));
    }
    Ok(())
}
