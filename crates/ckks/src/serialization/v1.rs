//! Decoders of format version 1. `payload` is everything after the envelope, whose magic,
//! version, type and parameter id are already checked.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::checks::{check_galois_element, check_level, check_scale};
use super::envelope::{err, require_flags};
use super::packing::{
    Cursor, all_primes, galois_key_size, packed_len, relin_key_size, unpack_poly,
};
use super::{FLAG_SEEDED, FromBytes, Header, SEED_LEN};
use crate::ciphertext::{Ciphertext, Plaintext};
use crate::error::{DecodeErrorCode, Result};
use crate::keys::{
    EvaluationKeys, GaloisKey, PublicKey, RelinearizationKey, SecretKey, SwitchingKey,
};
use crate::params::{Parameters, SecretDistribution};
use crate::sampling::expand_uniform;

pub(super) fn ciphertext(
    params: &Arc<Parameters>,
    h: &Header,
    payload: &[u8],
) -> Result<Ciphertext> {
    let mut c = Cursor::new(payload);
    let level = c.u8()? as usize;
    let count = c.u8()? as usize;
    let scale = f64::from_bits(c.u64()?);
    check_level(params, level)?;
    if !(2..=3).contains(&count) {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!("{count} polynomials; a ciphertext has 2 or 3"),
        ));
    }
    let seeded = h.is_seeded();
    if seeded && count != 2 {
        return Err(err(
            DecodeErrorCode::NonConformant,
            "only a 2-polynomial ciphertext can be seeded",
        ));
    }
    let primes = 0..level + 1;
    let poly_len = packed_len(params, primes.clone());
    let expected = if seeded {
        poly_len + SEED_LEN
    } else {
        count * poly_len
    };
    c.expect_remaining(Some(expected), "ciphertext")?;
    check_scale(params, scale, level)?;
    let mut polys = Vec::with_capacity(count);
    polys.push(unpack_poly(c.take(poly_len)?, params, primes.clone())?);
    let seed = if seeded {
        let seed = c.array::<SEED_LEN>()?;
        polys.push(expand_uniform(
            params,
            &seed,
            0,
            &primes.collect::<Vec<_>>(),
        ));
        Some(seed)
    } else {
        for _ in 1..count {
            polys.push(unpack_poly(c.take(poly_len)?, params, primes.clone())?);
        }
        None
    };
    c.finish()?;
    Ok(Ciphertext {
        params: params.clone(),
        polys,
        level,
        scale,
        seed,
    })
}

pub(super) fn plaintext(params: &Arc<Parameters>, h: &Header, payload: &[u8]) -> Result<Plaintext> {
    require_flags(h, 0)?;
    let mut c = Cursor::new(payload);
    let level = c.u8()? as usize;
    let scale = f64::from_bits(c.u64()?);
    check_level(params, level)?;
    let primes = 0..level + 1;
    let poly_len = packed_len(params, primes.clone());
    c.expect_remaining(Some(poly_len), "plaintext")?;
    check_scale(params, scale, level)?;
    let poly = unpack_poly(c.take(poly_len)?, params, primes)?;
    c.finish()?;
    Ok(Plaintext {
        params: params.clone(),
        poly,
        level,
        scale,
    })
}

pub(super) fn public_key(
    params: &Arc<Parameters>,
    h: &Header,
    payload: &[u8],
) -> Result<PublicKey> {
    require_flags(h, FLAG_SEEDED)?;
    let mut c = Cursor::new(payload);
    let primes = 0..params.num_q();
    let poly_len = packed_len(params, primes.clone());
    c.expect_remaining(Some(poly_len + SEED_LEN), "public key")?;
    let b = unpack_poly(c.take(poly_len)?, params, primes)?;
    let seed = c.array::<SEED_LEN>()?;
    c.finish()?;
    Ok(PublicKey::from_parts(params.clone(), b, seed))
}

/// The switching-key part shared by relinearization and Galois keys.
fn switching_key(params: &Arc<Parameters>, mut c: Cursor<'_>, what: &str) -> Result<SwitchingKey> {
    let dnum = c.u8()? as usize;
    if dnum != params.dnum() {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!(
                "{what}: {dnum} digits, the parameters use {}",
                params.dnum()
            ),
        ));
    }
    let primes = all_primes(params);
    let poly_len = packed_len(params, primes.clone());
    c.expect_remaining(Some(dnum * poly_len + SEED_LEN), what)?;
    let mut b = Vec::with_capacity(dnum);
    for _ in 0..dnum {
        b.push(unpack_poly(c.take(poly_len)?, params, primes.clone())?);
    }
    let seed = c.array::<SEED_LEN>()?;
    c.finish()?;
    Ok(SwitchingKey::from_parts(params.clone(), b, seed))
}

pub(super) fn relinearization_key(
    params: &Arc<Parameters>,
    h: &Header,
    payload: &[u8],
) -> Result<RelinearizationKey> {
    require_flags(h, FLAG_SEEDED)?;
    switching_key(params, Cursor::new(payload), "relinearization key").map(RelinearizationKey)
}

pub(super) fn galois_key(
    params: &Arc<Parameters>,
    h: &Header,
    payload: &[u8],
) -> Result<GaloisKey> {
    require_flags(h, FLAG_SEEDED)?;
    let mut c = Cursor::new(payload);
    let g = c.u64()?;
    check_galois_element(params, g)?;
    let key = switching_key(params, c, "Galois key")?;
    Ok(GaloisKey::from_parts(g, key))
}

pub(super) fn evaluation_keys(
    params: &Arc<Parameters>,
    h: &Header,
    payload: &[u8],
) -> Result<EvaluationKeys> {
    require_flags(h, 0)?;
    let mut c = Cursor::new(payload);
    let has_relin = c.u8()?;
    let count = c.u32()? as usize;
    if has_relin > 1 {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!("relinearization flag {has_relin} is not 0 or 1"),
        ));
    }
    // There are N - 1 valid Galois elements (odd, below 2N, not 1).
    if count > params.n() - 1 {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!(
                "{count} Galois keys; at most N - 1 = {} exist",
                params.n() - 1
            ),
        ));
    }
    let relin_len = relin_key_size(params);
    let galois_len = galois_key_size(params);
    let expected = count
        .checked_mul(galois_len)
        .and_then(|g| g.checked_add(usize::from(has_relin) * relin_len));
    c.expect_remaining(expected, "evaluation keys")?;
    let mut keys = EvaluationKeys::new(params.clone());
    if has_relin == 1 {
        let k = RelinearizationKey::from_bytes(params, c.take(relin_len)?, relin_len)?;
        keys.set_relinearization_key(k)?;
    }
    let mut previous = 1u64;
    for _ in 0..count {
        let k = GaloisKey::from_bytes(params, c.take(galois_len)?, galois_len)?;
        if k.galois_element <= previous {
            return Err(err(
                DecodeErrorCode::NonConformant,
                format!(
                    "Galois element {} does not follow {previous} in increasing order",
                    k.galois_element
                ),
            ));
        }
        previous = k.galois_element;
        keys.insert_galois_key(k)?;
    }
    c.finish()?;
    Ok(keys)
}

pub(super) fn secret_key(
    params: &Arc<Parameters>,
    h: &Header,
    payload: &[u8],
) -> Result<SecretKey> {
    require_flags(h, 0)?;
    let n = params.n();
    let c = Cursor::new(payload);
    c.expect_remaining(Some(n.div_ceil(4)), "secret key")?;
    let mut coeffs = Zeroizing::new(Vec::with_capacity(n));
    // Branch-free over the secret: accumulate the invalid code (10) and the weight.
    let mut invalid = 0u8;
    let mut weight = 0usize;
    for &byte in payload {
        for j in 0..4 {
            if coeffs.len() == n {
                break;
            }
            let code = (byte >> (2 * j)) & 3;
            invalid |= u8::from(code == 2);
            // Sign-extend the two bits: 00 -> 0, 01 -> 1, 11 -> -1 (10 -> -2, rejected).
            let v = ((code << 6) as i8) >> 6;
            weight += usize::from(v != 0);
            coeffs.push(v);
        }
    }
    if invalid != 0 {
        return Err(err(DecodeErrorCode::NonConformant, "invalid ternary code"));
    }
    if let SecretDistribution::SparseTernary { hamming_weight } = params.secret_distribution()
        && weight != hamming_weight
    {
        return Err(err(
            DecodeErrorCode::NonConformant,
            "Hamming weight differs from the parameters' sparse secret",
        ));
    }
    // Moves the buffer out; the key zeroizes it on drop, the empty husk is zeroized here.
    let coeffs = std::mem::take(&mut *coeffs);
    Ok(SecretKey::from_coeffs(params.clone(), coeffs))
}
