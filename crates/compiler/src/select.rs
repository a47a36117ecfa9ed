//! Choosing the smallest 128-bit CKKS parameters for a plan: ring degree first (speed and key
//! size grow with N), then the largest scale that fits (precision).

use std::sync::Arc;

use cipherinfer_ckks::params::max_log_qp_128;
use cipherinfer_ckks::{Parameters, ParametersLiteral, SecretDistribution};

use crate::error::{CompileError, Result};

/// Bits of headroom the base prime keeps above the scale (outputs up to 2^3 in magnitude; the
/// compiler's output divisor brings larger outputs into that range).
pub const BASE_HEADROOM_BITS: u32 = 4;

/// The literal of the smallest 128-bit parameter set with `depth` levels and at least
/// `min_slots` slots: N from 2^13 to 2^15, scale from 2^40 down to 2^26, ciphertext primes
/// `[scale + 4, scale × depth]`, key-switching digits of two primes, and special primes that
/// cover the largest digit.
pub fn select_literal(depth: usize, min_slots: usize) -> Result<ParametersLiteral> {
    for log_n in 13u32..=15 {
        if (1usize << (log_n - 1)) < min_slots {
            continue;
        }
        let Some(bound) = max_log_qp_128(log_n) else {
            continue;
        };
        for scale in (26u32..=40).rev() {
            let q0 = scale + BASE_HEADROOM_BITS;
            let log_q: Vec<u32> = std::iter::once(q0)
                .chain(std::iter::repeat_n(scale, depth))
                .collect();
            // Digits of two primes (one if there is only one prime).
            let digit_bits = if depth == 0 { q0 } else { q0 + scale };
            let log_p: Vec<u32> = if digit_bits + 2 <= 60 {
                vec![digit_bits + 2]
            } else {
                let half = (digit_bits + 3).div_ceil(2);
                vec![half, half]
            };
            let total: u32 = log_q.iter().sum::<u32>() + log_p.iter().sum::<u32>();
            if total > bound {
                continue;
            }
            return Ok(ParametersLiteral {
                log_n,
                log_q,
                q: vec![],
                log_p,
                p: vec![],
                log_scale: scale,
                dnum: Some((depth + 1).div_ceil(2)),
                secret: SecretDistribution::Ternary,
            });
        }
    }
    Err(CompileError::DoesNotFit(format!(
        "no 128-bit parameter set up to N = 2^15 offers depth {depth} with {min_slots} slots"
    )))
}

/// [`select_literal`], built.
pub fn select_parameters(depth: usize, min_slots: usize) -> Result<Arc<Parameters>> {
    Ok(select_literal(depth, min_slots)?.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cipherinfer_ckks::{Preset, SecurityLevel};

    #[test]
    fn the_shipped_cnns_get_exactly_the_depth_5_preset() {
        let p = select_parameters(5, 4096).expect("fits");
        assert_eq!(p.id(), Preset::Pn13Depth5.build().expect("preset").id());
    }

    #[test]
    fn deeper_or_wider_plans_move_to_larger_rings_and_stay_secure() {
        for (depth, slots) in [
            (1, 16),
            (5, 4096),
            (6, 4096),
            (9, 8192),
            (16, 8192),
            (16, 16384),
            (20, 16384),
        ] {
            let p = select_parameters(depth, slots).expect("fits");
            assert_eq!(p.security(), SecurityLevel::Bits128);
            assert_eq!(p.max_level(), depth);
            assert!(p.slots() >= slots);
            let bound = max_log_qp_128(p.log_n()).expect("bound");
            assert!(p.log_qp() <= bound as f64);
        }
        // mnist-relu's depth 16 needs N = 2^15.
        assert_eq!(select_parameters(16, 8192).expect("fits").log_n(), 15);
        // Too deep for any ring without bootstrapping.
        assert!(select_parameters(40, 4096).is_err());
        assert!(select_parameters(5, 1 << 15).is_err());
    }
}
