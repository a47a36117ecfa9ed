//! Bounded reading of untrusted bytes ([`Cursor`]), bit packing and unpacking of RNS
//! polynomials, and the exact encoded sizes shared by encoders and the decoders' length checks.

use std::ops::Range;

use super::envelope::err;
use super::{HEADER_LEN, SEED_LEN};
use crate::error::{DecodeErrorCode, Result};
use crate::params::Parameters;

/// Reads fixed-size fields off untrusted bytes without panicking.
pub(super) struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(super) fn take(&mut self, k: usize) -> Result<&'a [u8]> {
        let (head, rest) = self
            .rest
            .split_at_checked(k)
            .ok_or_else(|| err(DecodeErrorCode::Truncated, "input ends inside the object"))?;
        self.rest = rest;
        Ok(head)
    }

    pub(super) fn array<const K: usize>(&mut self) -> Result<[u8; K]> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<K>()
            .ok_or_else(|| err(DecodeErrorCode::Truncated, "input ends inside the object"))?;
        self.rest = rest;
        Ok(*head)
    }

    pub(super) fn u8(&mut self) -> Result<u8> {
        self.array::<1>().map(|[b]| b)
    }
    pub(super) fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_le_bytes)
    }
    pub(super) fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }
    pub(super) fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// Checks that exactly `expected` bytes remain (the length check before allocating).
    pub(super) fn expect_remaining(&self, expected: Option<usize>, what: &str) -> Result<()> {
        match expected {
            Some(e) if e == self.rest.len() => Ok(()),
            Some(e) => Err(err(
                DecodeErrorCode::Truncated,
                format!(
                    "{what}: {} payload bytes remain, expected {e}",
                    self.rest.len()
                ),
            )),
            None => Err(err(
                DecodeErrorCode::Truncated,
                format!("{what}: impossible length"),
            )),
        }
    }

    pub(super) fn finish(self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(err(
                DecodeErrorCode::Truncated,
                format!("{} trailing bytes", self.rest.len()),
            ))
        }
    }
}

/// Byte length of a polynomial packed over the primes `primes`.
pub(super) fn packed_len(params: &Parameters, primes: Range<usize>) -> usize {
    let bits: usize = primes.map(|i| params.modulus(i).bits() as usize).sum();
    (bits * params.n()).div_ceil(8)
}

/// Packs a flat RNS polynomial (limb `j` over prime `primes.start + j`), each residue on its
/// prime's bit width, least significant bit first, through a 128-bit buffer flushed 8 bytes at
/// a time.
pub(super) fn pack_poly(
    out: &mut Vec<u8>,
    params: &Parameters,
    poly: &[u64],
    primes: Range<usize>,
) {
    let n = params.n();
    let mut acc: u128 = 0;
    let mut nbits: u32 = 0;
    for (limb, i) in poly.chunks(n).zip(primes) {
        let w = params.modulus(i).bits();
        let mask = u64::MAX >> (64 - w);
        for &x in limb {
            acc |= ((x & mask) as u128) << nbits;
            nbits += w;
            if nbits >= 64 {
                out.extend_from_slice(&(acc as u64).to_le_bytes());
                acc >>= 64;
                nbits -= 64;
            }
        }
    }
    let tail = (acc as u64).to_le_bytes();
    out.extend_from_slice(tail.get(..nbits.div_ceil(8) as usize).unwrap_or(&tail));
}

/// Unpacks a polynomial from exactly `packed_len(params, primes)` bytes, rejecting residues not
/// below their prime and non-zero padding bits.
pub(super) fn unpack_poly(
    bytes: &[u8],
    params: &Parameters,
    primes: Range<usize>,
) -> Result<Vec<u64>> {
    let n = params.n();
    let mut out = Vec::with_capacity(n.saturating_mul(primes.len()));
    let mut r = BitReader {
        rest: bytes,
        acc: 0,
        nbits: 0,
    };
    for i in primes {
        let m = params.modulus(i);
        let (w, p) = (m.bits(), m.value());
        let mask = u64::MAX >> (64 - w);
        for _ in 0..n {
            while r.nbits < w {
                r.refill()?;
            }
            let x = (r.acc as u64) & mask;
            r.acc >>= w;
            r.nbits -= w;
            if x >= p {
                return Err(err(
                    DecodeErrorCode::NonConformant,
                    format!("residue {x} is not below its prime {p}"),
                ));
            }
            out.push(x);
        }
    }
    if r.acc != 0 || !r.rest.is_empty() {
        return Err(err(DecodeErrorCode::NonConformant, "non-zero padding bits"));
    }
    Ok(out)
}

struct BitReader<'a> {
    rest: &'a [u8],
    acc: u128,
    nbits: u32,
}

impl BitReader<'_> {
    /// Loads up to 8 more bytes; called only when fewer than 64 bits are buffered.
    #[inline]
    fn refill(&mut self) -> Result<()> {
        let (word, got) = match self.rest.split_first_chunk::<8>() {
            Some((head, rest)) => {
                self.rest = rest;
                (u64::from_le_bytes(*head), 64)
            }
            None => {
                let mut buf = [0u8; 8];
                let k = self.rest.len();
                if k == 0 {
                    return Err(err(DecodeErrorCode::Truncated, "polynomial ends early"));
                }
                for (d, s) in buf.iter_mut().zip(self.rest) {
                    *d = *s;
                }
                self.rest = &[];
                (u64::from_le_bytes(buf), 8 * k as u32)
            }
        };
        self.acc |= (word as u128) << self.nbits;
        self.nbits += got;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes (shared by encoders and the decoders' length checks).

pub(super) fn ciphertext_size(
    params: &Parameters,
    level: usize,
    count: usize,
    seeded: bool,
) -> usize {
    let poly = packed_len(params, 0..level + 1);
    HEADER_LEN
        + 10
        + if seeded {
            poly + SEED_LEN
        } else {
            count * poly
        }
}

/// The primes a switching key of `digits` digits holds: `q_0..=q_top`, then the special primes.
pub(super) fn key_primes(params: &Parameters, digits: usize) -> [Range<usize>; 2] {
    let top = crate::keys::key_top(params, digits);
    [0..top + 1, params.num_q()..params.num_q() + params.num_p()]
}

/// Byte length of one packed polynomial of a switching key of `digits` digits.
pub(super) fn key_poly_len(params: &Parameters, digits: usize) -> usize {
    key_primes(params, digits)
        .into_iter()
        .map(|r| packed_len(params, r))
        .sum()
}

pub(super) fn switching_key_payload_size(params: &Parameters, digits: usize) -> usize {
    1 + digits * key_poly_len(params, digits) + SEED_LEN
}

pub(super) fn relin_key_size(params: &Parameters) -> usize {
    HEADER_LEN + switching_key_payload_size(params, params.dnum())
}

/// Encoded length of a Galois key of `digits` digits.
pub(super) fn galois_key_size(params: &Parameters, digits: usize) -> usize {
    HEADER_LEN + 8 + switching_key_payload_size(params, digits)
}
