//! Decoders of format version 1. `payload` is everything after the envelope, whose magic,
//! version, type and parameter id are already checked.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::checks::{check_galois_element, check_level, check_scale};
use super::envelope::{err, require_flags};
use super::packing::{
    Cursor, galois_key_size, key_poly_len, key_primes, packed_len, switching_key_payload_size,
    unpack_poly,
};
use super::{FLAG_SEEDED, FromBytes, HEADER_LEN, Header, SEED_LEN};
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

/// A key's digit count: 1 to the parameters' `dnum` (fewer digits: a key for the lower levels).
fn check_digits(params: &Parameters, digits: usize, what: &str) -> Result<()> {
    if digits == 0 || digits > params.dnum() {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!(
                "{what}: {digits} digits, the parameters allow 1 to {}",
                params.dnum()
            ),
        ));
    }
    Ok(())
}

/// The switching-key part shared by relinearization and Galois keys.
fn switching_key(params: &Arc<Parameters>, mut c: Cursor<'_>, what: &str) -> Result<SwitchingKey> {
    let digits = c.u8()? as usize;
    check_digits(params, digits, what)?;
    let poly_len = key_poly_len(params, digits);
    c.expect_remaining(Some(digits * poly_len + SEED_LEN), what)?;
    let mut b = Vec::with_capacity(digits);
    for _ in 0..digits {
        let mut poly = Vec::new();
        for primes in key_primes(params, digits) {
            let len = packed_len(params, primes.clone());
            poly.extend(unpack_poly(c.take(len)?, params, primes)?);
        }
        b.push(poly);
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
    // Each nested key's length follows from its digit count (after its envelope, and a Galois
    // key's element): walk them to check the total length before decoding anything.
    let digits_at = |offset: usize, what: &str| -> Result<usize> {
        let digits = payload.get(5 + offset).copied().ok_or_else(|| {
            err(
                DecodeErrorCode::Truncated,
                format!("evaluation keys end inside a {what}"),
            )
        })? as usize;
        check_digits(params, digits, what)?;
        Ok(digits)
    };
    let relin_len = if has_relin == 1 {
        HEADER_LEN
            + switching_key_payload_size(params, digits_at(HEADER_LEN, "relinearization key")?)
    } else {
        0
    };
    let mut lengths = Vec::with_capacity(count.min(1 << 16));
    let mut at = relin_len;
    for _ in 0..count {
        let len = galois_key_size(params, digits_at(at + HEADER_LEN + 8, "Galois key")?);
        lengths.push(len);
        at += len;
    }
    c.expect_remaining(Some(at), "evaluation keys")?;
    let mut keys = EvaluationKeys::new(params.clone());
    if has_relin == 1 {
        let k = RelinearizationKey::from_bytes(params, c.take(relin_len)?, relin_len)?;
        keys.set_relinearization_key(k)?;
    }
    let mut previous = 1u64;
    for galois_len in lengths {
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
