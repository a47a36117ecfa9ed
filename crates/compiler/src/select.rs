//! Choosing the smallest CKKS parameters at a security level (128, 192 or 256 bits) for a plan:
//! ring degree first (speed and key size grow with N), then the largest scale that fits
//! (precision).

use std::sync::Arc;

use cipherinfer_ckks::{Parameters, ParametersLiteral, SecretDistribution, SecurityLevel};

use crate::error::{CompileError, Result};

/// Bits of headroom the base prime keeps above the scale (outputs up to 2^3 in magnitude; the
/// compiler's output divisor brings larger outputs into that range).
pub const BASE_HEADROOM_BITS: u32 = 4;

/// The literal of the smallest parameter set at `security` with `depth` levels and at least
/// `min_slots` slots: N from 2^13 to 2^15, scale from 2^40 down to 2^26, ciphertext primes
/// `[scale + 4, scale × depth]`, key-switching digits of two primes, and special primes that
/// cover the largest digit.
pub fn select_literal(
    depth: usize,
    min_slots: usize,
    security: SecurityLevel,
) -> Result<ParametersLiteral> {
    let Some(bits) = security.bits() else {
        return Err(CompileError::DoesNotFit(
            "parameters are selected only at a secure level (128, 192 or 256 bits)".into(),
        ));
    };
    for log_n in 13u32..=15 {
        if (1usize << (log_n - 1)) < min_slots {
            continue;
        }
        let Some(bound) = security.max_log_qp(log_n) else {
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
                security_bits: (bits != 128).then_some(bits),
            });
        }
    }
    Err(CompileError::DoesNotFit(format!(
        "no {bits}-bit parameter set up to N = 2^15 offers depth {depth} with {min_slots} slots \
         (without bootstrapping); use lower-degree activations, fewer layers or a lower security level"
    )))
}

/// [`select_literal`], built.
pub fn select_parameters(
    depth: usize,
    min_slots: usize,
    security: SecurityLevel,
) -> Result<Arc<Parameters>> {
    Ok(select_literal(depth, min_slots, security)?.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cipherinfer_ckks::Preset;
    use cipherinfer_ckks::params::max_log_qp_128;

    const S128: SecurityLevel = SecurityLevel::Bits128;

    #[test]
    fn the_shipped_cnns_get_exactly_the_depth_5_preset() {
        let p = select_parameters(5, 4096, S128).expect("fits");
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
            let p = select_parameters(depth, slots, S128).expect("fits");
            assert_eq!(p.security(), SecurityLevel::Bits128);
            assert_eq!(p.max_level(), depth);
            assert!(p.slots() >= slots);
            let bound = max_log_qp_128(p.log_n()).expect("bound");
            assert!(p.log_qp() <= bound as f64);
        }
        // mnist-relu's depth 16 needs N = 2^15.
        assert_eq!(select_parameters(16, 8192, S128).expect("fits").log_n(), 15);
        // Too deep for any ring without bootstrapping.
        assert!(select_parameters(40, 4096, S128).is_err());
        assert!(select_parameters(5, 1 << 15, S128).is_err());
    }

    #[test]
    fn higher_security_levels_get_smaller_moduli_and_keep_their_level() {
        for level in [SecurityLevel::Bits192, SecurityLevel::Bits256] {
            let bits = level.bits().expect("secure");
            for (depth, slots) in [(5, 4096), (7, 4096), (11, 8192)] {
                let lit = select_literal(depth, slots, level).expect("fits");
                assert_eq!(lit.security_bits, Some(bits));
                let p = lit.build().expect("builds");
                assert_eq!(p.security(), level);
                assert_eq!(p.max_level(), depth);
                let bound = level.max_log_qp(p.log_n()).expect("bound");
                assert!(
                    p.log_qp() <= bound as f64,
                    "{depth}: {} > {bound}",
                    p.log_qp()
                );
                // The same depth at 128 bits never needs a larger ring.
                let p128 = select_parameters(depth, slots, S128).expect("fits");
                assert!(p128.log_n() <= p.log_n());
                // The literal round-trips through JSON with its level, and the id differs.
                let json = serde_json::to_string(p.literal()).expect("json");
                let back: ParametersLiteral = serde_json::from_str(&json).expect("parse");
                assert_eq!(back.build().expect("rebuilds").id(), p.id());
                let mut weaker = p.literal().clone();
                weaker.security_bits = None;
                assert_ne!(weaker.build().expect("128-bit").id(), p.id());
            }
        }
        // A set that meets 128 bits is refused when it claims 256.
        let mut lit = Preset::Pn13Depth5.literal();
        lit.security_bits = Some(256);
        assert!(matches!(
            lit.build(),
            Err(cipherinfer_ckks::Error::Insecure {
                security_bits: 256,
                ..
            })
        ));
        lit.security_bits = Some(100);
        assert!(lit.build().is_err());
        // mnist-relu's depth 16 does not fit 256 bits.
        assert!(select_literal(16, 8192, SecurityLevel::Bits256).is_err());
    }
}
