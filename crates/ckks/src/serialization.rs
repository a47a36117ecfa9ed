//! Versioned, bit-packed, seeded wire forms of every CKKS object, and bounded,
//! conformance-checked decoding of untrusted bytes.
//!
//! Encoding goes through [`ToBytes`]; decoding through [`FromBytes`], which always takes the
//! parameter set the object must conform to and a byte limit the caller chooses. The secret key
//! has no `ToBytes`: it leaves memory only through [`SecretKey::export_bytes`] (zeroized buffer)
//! and comes back through [`SecretKey::import_bytes`]. [`peek_header`] reads the envelope alone,
//! so a server can route or reject a message before decoding it.
//!
//! # Wire format, version 1
//!
//! All integers are little-endian. Every object starts with a 40-byte envelope:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 4 | magic `b"CIFR"` |
//! | 4 | 2 | format version, u16 (= 1) |
//! | 6 | 1 | object type, u8 (see [`ObjectType`]: 1 ciphertext, 2 plaintext, 3 public key, 4 relinearization key, 5 Galois key, 6 evaluation keys, 7 secret key) |
//! | 7 | 1 | flags, u8: bit 0 = seeded ([`FLAG_SEEDED`]); the other bits must be 0 |
//! | 8 | 32 | parameter id ([`Parameters::id`]) |
//!
//! A *packed polynomial* over a list of primes is its NTT-domain residues, limb after limb
//! (prime order), each residue written on exactly `bits(q_i)` bits (the bit width of its prime),
//! least significant bit first into a continuous bit stream, which is padded with zero bits to a
//! whole byte at the end of the polynomial. Its length is `ceil(N · Σ bits(q_i) / 8)` bytes
//! (with N ≥ 16 there is never padding). A *seed* is 32 bytes from which the uniform part is
//! expanded by [`expand_uniform`](crate::sampling::expand_uniform) (ChaCha20).
//!
//! Payloads, after the envelope:
//!
//! * **Ciphertext** (1): `level` u8, `count` u8 (number of polynomials, 2 or 3), `scale` f64
//!   (IEEE-754 bits). Flag seeded (only with `count = 2`): `c_0` packed over `q_0..=q_level`,
//!   then the seed of `c_1` (stream 0). Otherwise `count` polynomials packed over
//!   `q_0..=q_level`.
//! * **Plaintext** (2): `level` u8, `scale` f64, the polynomial packed over `q_0..=q_level`.
//!   Flags 0.
//! * **Public key** (3): `b` packed over all ciphertext primes, then the seed of `a` (stream 0).
//!   Flag seeded (always).
//! * **Relinearization key** (4): `dnum` u8 (must equal [`Parameters::dnum`]), `dnum`
//!   polynomials `b_j` each packed over all primes (ciphertext then special), then the seed of
//!   the `a_j` (stream `1 + j`). Flag seeded (always).
//! * **Galois key** (5): Galois element u64 (odd, `< 2N`, `≠ 1`), then as the relinearization
//!   key. Flag seeded (always).
//! * **Evaluation keys** (6): `has_relin` u8 (0 or 1), `count` u32 (number of Galois keys,
//!   `≤ N − 1`), then the complete encoding (with its own envelope) of the relinearization key
//!   if present, then of each Galois key, by strictly increasing Galois element. Flags 0. Every
//!   nested encoding has a length fixed by the parameters, so no length prefixes are needed.
//! * **Secret key** (7): the N ternary coefficients, 2 bits each, four per byte, least
//!   significant bits first: `00` = 0, `01` = +1, `11` = −1 (`10` is invalid). Flags 0.
//!
//! Encodings are canonical: an accepted input re-encodes to exactly the same bytes.
//!
//! # Decoding untrusted input
//!
//! Checks run in this order, each with a typed [`DecodeErrorCode`]: the input length against
//! the caller's `max_bytes` ([`TooLarge`](DecodeErrorCode::TooLarge)); the envelope (magic,
//! version, object type, flags, parameter id: `BadMagic`, `UnsupportedVersion`, `WrongType`,
//! `NonConformant`, `WrongParameters`); the fixed-size payload fields that determine the length
//! (level, counts, `dnum`: `NonConformant`); the exact expected length, before anything is
//! allocated (`Truncated`, also for trailing bytes); then conformance (every residue below its
//! prime, zero padding bits, scale finite, `≥ 1` and below `Q_level`, valid Galois elements in
//! increasing order, valid ternary codes and, for sparse secrets, the Hamming weight:
//! `NonConformant`). Decoders never panic. Memory is allocated only after the length check and
//! is proportional to the input: at most 8 bytes of decoded object (including uniform parts
//! expanded from seeds) per input byte, since every residue takes at least 17 bits on the wire.
//!
//! # Integrity is the protocol's job
//!
//! Conformance is not authenticity. A residue may legitimately take any value below its prime,
//! and a seed any value, so a bit flip in a key's or ciphertext's payload is either rejected
//! (when the residue leaves its range) or decodes to a *different, conforming* object (a wrong
//! key or ciphertext, producing garbage results). Detecting tampering or corruption requires a
//! MAC, signature or authenticated channel at the protocol layer.
//!
//! # Versions
//!
//! Decoders dispatch on the envelope's version; only version 1 exists, and encoders always write
//! it. A future version gets its own decoding path, so version 1 data keeps loading.

use std::ops::Range;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::ciphertext::{Ciphertext, Plaintext};
use crate::error::{DecodeErrorCode, Error, Result};
use crate::keys::{
    EvaluationKeys, GaloisKey, PublicKey, RelinearizationKey, SecretKey, SwitchingKey,
};
use crate::params::Parameters;

/// Magic bytes opening every encoding.
pub const MAGIC: [u8; 4] = *b"CIFR";
/// The format version encoders write.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the envelope in bytes.
pub const HEADER_LEN: usize = 40;
/// Flag bit 0: the object's uniform polynomials are carried as a seed.
pub const FLAG_SEEDED: u8 = 1;
/// Flag bits defined by version 1.
const KNOWN_FLAGS: u8 = FLAG_SEEDED;
/// Length of a seed in bytes.
const SEED_LEN: usize = 32;

/// Object types of the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum ObjectType {
    /// A [`Ciphertext`].
    Ciphertext = 1,
    /// A [`Plaintext`].
    Plaintext = 2,
    /// A [`PublicKey`].
    PublicKey = 3,
    /// A [`RelinearizationKey`].
    RelinearizationKey = 4,
    /// A [`GaloisKey`].
    GaloisKey = 5,
    /// An [`EvaluationKeys`] set.
    EvaluationKeys = 6,
    /// A [`SecretKey`].
    SecretKey = 7,
}

impl ObjectType {
    /// The type code on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The type of a wire code, if it is known.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Ciphertext,
            2 => Self::Plaintext,
            3 => Self::PublicKey,
            4 => Self::RelinearizationKey,
            5 => Self::GaloisKey,
            6 => Self::EvaluationKeys,
            7 => Self::SecretKey,
            _ => return None,
        })
    }

    /// Stable snake_case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ciphertext => "ciphertext",
            Self::Plaintext => "plaintext",
            Self::PublicKey => "public_key",
            Self::RelinearizationKey => "relinearization_key",
            Self::GaloisKey => "galois_key",
            Self::EvaluationKeys => "evaluation_keys",
            Self::SecretKey => "secret_key",
        }
    }
}

/// The envelope of an encoding, as returned by [`peek_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u16,
    /// Object type.
    pub object_type: ObjectType,
    /// Flag bits.
    pub flags: u8,
    /// Id of the parameter set the object is bound to.
    pub parameter_id: [u8; 32],
}

impl Header {
    /// Whether the seeded flag is set.
    pub fn is_seeded(&self) -> bool {
        self.flags & FLAG_SEEDED != 0
    }
}

/// Encodes an object in the current wire format.
pub trait ToBytes {
    /// The encoding.
    fn to_bytes(&self) -> Vec<u8>;
    /// Exact length of [`ToBytes::to_bytes`], computed without encoding.
    fn serialized_size(&self) -> usize;
}

/// Decodes an object from untrusted bytes, checking it against the parameters it must conform
/// to. Inputs longer than `max_bytes` are rejected before anything else is read.
pub trait FromBytes: Sized {
    /// Decodes `bytes`, which must be exactly one encoding bound to `params`.
    fn from_bytes(params: &Arc<Parameters>, bytes: &[u8], max_bytes: usize) -> Result<Self>;
}

fn err(code: DecodeErrorCode, detail: impl Into<String>) -> Error {
    Error::decode(code, detail)
}

/// Reads and validates the envelope (magic, version, type, flags) without decoding the payload
/// and without checking the parameter id against any parameter set.
pub fn peek_header(bytes: &[u8]) -> Result<Header> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes.get(..magic_len) != MAGIC.get(..magic_len) {
        return Err(err(DecodeErrorCode::BadMagic, "not a cipherinfer object"));
    }
    if bytes.len() < HEADER_LEN {
        return Err(err(
            DecodeErrorCode::Truncated,
            format!(
                "{} bytes is shorter than the {HEADER_LEN}-byte envelope",
                bytes.len()
            ),
        ));
    }
    let mut c = Cursor::new(bytes);
    c.take(MAGIC.len())?;
    let version = c.u16()?;
    let ty = c.u8()?;
    let flags = c.u8()?;
    let parameter_id = c.array::<32>()?;
    if version != FORMAT_VERSION {
        return Err(err(
            DecodeErrorCode::UnsupportedVersion,
            format!("format version {version}; this build reads version {FORMAT_VERSION}"),
        ));
    }
    let object_type = ObjectType::from_code(ty).ok_or_else(|| {
        err(
            DecodeErrorCode::WrongType,
            format!("unknown object type {ty}"),
        )
    })?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!("unknown flag bits {:#04x}", flags & !KNOWN_FLAGS),
        ));
    }
    Ok(Header {
        version,
        object_type,
        flags,
        parameter_id,
    })
}

/// Checks size limit and envelope; returns the header and the payload.
fn open<'a>(
    params: &Parameters,
    bytes: &'a [u8],
    max_bytes: usize,
    expected: ObjectType,
) -> Result<(Header, &'a [u8])> {
    if bytes.len() > max_bytes {
        return Err(err(
            DecodeErrorCode::TooLarge,
            format!("{} bytes exceeds the limit of {max_bytes}", bytes.len()),
        ));
    }
    let header = peek_header(bytes)?;
    if header.object_type != expected {
        return Err(err(
            DecodeErrorCode::WrongType,
            format!(
                "found a {}, expected a {}",
                header.object_type.as_str(),
                expected.as_str()
            ),
        ));
    }
    if header.parameter_id != params.id() {
        let found: String = header
            .parameter_id
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        return Err(err(
            DecodeErrorCode::WrongParameters,
            format!(
                "bound to parameters {found}…, expected {}…",
                &params.id_hex()[..16]
            ),
        ));
    }
    let payload = bytes
        .get(HEADER_LEN..)
        .ok_or_else(|| err(DecodeErrorCode::Truncated, "missing payload"))?;
    Ok((header, payload))
}

fn unsupported(version: u16) -> Error {
    err(
        DecodeErrorCode::UnsupportedVersion,
        format!("format version {version}"),
    )
}

fn require_flags(header: &Header, flags: u8) -> Result<()> {
    if header.flags != flags {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!(
                "flags {:#04x} invalid for a {} (expected {flags:#04x})",
                header.flags,
                header.object_type.as_str()
            ),
        ));
    }
    Ok(())
}

fn write_header(out: &mut Vec<u8>, ty: ObjectType, flags: u8, params: &Parameters) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(ty.code());
    out.push(flags);
    out.extend_from_slice(&params.id());
}

/// A small count written as u8; values that do not fit saturate, and decoders reject them.
fn small_u8(x: usize) -> u8 {
    u8::try_from(x).unwrap_or(u8::MAX)
}

// ---------------------------------------------------------------------------------------------
// Byte cursor and bit packing.

/// Reads fixed-size fields off untrusted bytes without panicking.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn take(&mut self, k: usize) -> Result<&'a [u8]> {
        let (head, rest) = self
            .rest
            .split_at_checked(k)
            .ok_or_else(|| err(DecodeErrorCode::Truncated, "input ends inside the object"))?;
        self.rest = rest;
        Ok(head)
    }

    fn array<const K: usize>(&mut self) -> Result<[u8; K]> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<K>()
            .ok_or_else(|| err(DecodeErrorCode::Truncated, "input ends inside the object"))?;
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8> {
        self.array::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// Checks that exactly `expected` bytes remain (the length check before allocating).
    fn expect_remaining(&self, expected: Option<usize>, what: &str) -> Result<()> {
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

    fn finish(self) -> Result<()> {
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
fn packed_len(params: &Parameters, primes: Range<usize>) -> usize {
    let bits: usize = primes.map(|i| params.modulus(i).bits() as usize).sum();
    (bits * params.n()).div_ceil(8)
}

/// Packs a flat RNS polynomial (limb `j` over prime `primes.start + j`), each residue on its
/// prime's bit width, least significant bit first, through a 128-bit buffer flushed 8 bytes at
/// a time.
fn pack_poly(out: &mut Vec<u8>, params: &Parameters, poly: &[u64], primes: Range<usize>) {
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
fn unpack_poly(bytes: &[u8], params: &Parameters, primes: Range<usize>) -> Result<Vec<u64>> {
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

/// Rejects scales that are not finite, below 1, or not below `Q_level`.
fn check_scale(params: &Parameters, scale: f64, level: usize) -> Result<()> {
    if !scale.is_finite() || scale < 1.0 || scale.log2() >= params.log_q_at(level) {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!("scale {scale:e} is not finite, at least 1 and below Q_{level}"),
        ));
    }
    Ok(())
}

fn check_level(params: &Parameters, level: usize) -> Result<()> {
    if level > params.max_level() {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!("level {level} above the maximum {}", params.max_level()),
        ));
    }
    Ok(())
}

/// Rejects Galois elements that are even, not below 2N, or the identity.
fn check_galois_element(params: &Parameters, g: u64) -> Result<()> {
    let two_n = 2 * params.n() as u64;
    if g.is_multiple_of(2) || g >= two_n || g == 1 {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!("Galois element {g} is not odd, below 2N = {two_n} and different from 1"),
        ));
    }
    Ok(())
}

fn all_primes(params: &Parameters) -> Range<usize> {
    0..params.num_q() + params.num_p()
}

// ---------------------------------------------------------------------------------------------
// Sizes (shared by encoders and the decoders' length checks).

fn ciphertext_size(params: &Parameters, level: usize, count: usize, seeded: bool) -> usize {
    let poly = packed_len(params, 0..level + 1);
    HEADER_LEN
        + 10
        + if seeded {
            poly + SEED_LEN
        } else {
            count * poly
        }
}

fn switching_key_payload_size(params: &Parameters, dnum: usize) -> usize {
    1 + dnum * packed_len(params, all_primes(params)) + SEED_LEN
}

fn relin_key_size(params: &Parameters) -> usize {
    HEADER_LEN + switching_key_payload_size(params, params.dnum())
}

fn galois_key_size(params: &Parameters) -> usize {
    HEADER_LEN + 8 + switching_key_payload_size(params, params.dnum())
}

// ---------------------------------------------------------------------------------------------
// Encoders.

impl ToBytes for Ciphertext {
    fn to_bytes(&self) -> Vec<u8> {
        let seed = self.seed.filter(|_| self.polys.len() == 2);
        let mut out = Vec::with_capacity(self.serialized_size());
        let flags = if seed.is_some() { FLAG_SEEDED } else { 0 };
        write_header(&mut out, ObjectType::Ciphertext, flags, &self.params);
        out.push(small_u8(self.level));
        out.push(small_u8(self.polys.len()));
        out.extend_from_slice(&self.scale.to_bits().to_le_bytes());
        let primes = 0..self.level + 1;
        match (seed, self.polys.first()) {
            (Some(seed), Some(c0)) => {
                pack_poly(&mut out, &self.params, c0, primes);
                out.extend_from_slice(&seed);
            }
            _ => {
                for p in &self.polys {
                    pack_poly(&mut out, &self.params, p, primes.clone());
                }
            }
        }
        out
    }

    fn serialized_size(&self) -> usize {
        let seeded = self.seed.is_some() && self.polys.len() == 2;
        ciphertext_size(&self.params, self.level, self.polys.len(), seeded)
    }
}

impl ToBytes for Plaintext {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.serialized_size());
        write_header(&mut out, ObjectType::Plaintext, 0, &self.params);
        out.push(small_u8(self.level));
        out.extend_from_slice(&self.scale.to_bits().to_le_bytes());
        pack_poly(&mut out, &self.params, &self.poly, 0..self.level + 1);
        out
    }

    fn serialized_size(&self) -> usize {
        HEADER_LEN + 9 + packed_len(&self.params, 0..self.level + 1)
    }
}

impl ToBytes for PublicKey {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.serialized_size());
        write_header(&mut out, ObjectType::PublicKey, FLAG_SEEDED, &self.params);
        pack_poly(&mut out, &self.params, &self.b, 0..self.params.num_q());
        out.extend_from_slice(&self.seed);
        out
    }

    fn serialized_size(&self) -> usize {
        HEADER_LEN + packed_len(&self.params, 0..self.params.num_q()) + SEED_LEN
    }
}

fn write_switching_key(out: &mut Vec<u8>, key: &SwitchingKey) {
    out.push(small_u8(key.b.len()));
    for b in &key.b {
        pack_poly(out, &key.params, b, all_primes(&key.params));
    }
    out.extend_from_slice(&key.seed);
}

impl ToBytes for RelinearizationKey {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.serialized_size());
        write_header(
            &mut out,
            ObjectType::RelinearizationKey,
            FLAG_SEEDED,
            &self.0.params,
        );
        write_switching_key(&mut out, &self.0);
        out
    }

    fn serialized_size(&self) -> usize {
        HEADER_LEN + switching_key_payload_size(&self.0.params, self.0.b.len())
    }
}

impl ToBytes for GaloisKey {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.serialized_size());
        write_header(
            &mut out,
            ObjectType::GaloisKey,
            FLAG_SEEDED,
            &self.key.params,
        );
        out.extend_from_slice(&self.galois_element.to_le_bytes());
        write_switching_key(&mut out, &self.key);
        out
    }

    fn serialized_size(&self) -> usize {
        HEADER_LEN + 8 + switching_key_payload_size(&self.key.params, self.key.b.len())
    }
}

impl ToBytes for EvaluationKeys {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.serialized_size());
        write_header(&mut out, ObjectType::EvaluationKeys, 0, &self.params);
        out.push(u8::from(self.relin.is_some()));
        let count = u32::try_from(self.galois.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        if let Some(r) = &self.relin {
            out.extend_from_slice(&r.to_bytes());
        }
        // BTreeMap iteration: strictly increasing Galois elements.
        for k in self.galois.values() {
            out.extend_from_slice(&k.to_bytes());
        }
        out
    }

    fn serialized_size(&self) -> usize {
        HEADER_LEN
            + 5
            + self.relin.as_ref().map_or(0, |r| r.serialized_size())
            + self
                .galois
                .values()
                .map(|k| k.serialized_size())
                .sum::<usize>()
    }
}

// ---------------------------------------------------------------------------------------------
// Decoders: envelope, then dispatch on the format version.

impl FromBytes for Ciphertext {
    fn from_bytes(params: &Arc<Parameters>, bytes: &[u8], max_bytes: usize) -> Result<Self> {
        let (h, payload) = open(params, bytes, max_bytes, ObjectType::Ciphertext)?;
        match h.version {
            1 => v1::ciphertext(params, &h, payload),
            v => Err(unsupported(v)),
        }
    }
}

impl FromBytes for Plaintext {
    fn from_bytes(params: &Arc<Parameters>, bytes: &[u8], max_bytes: usize) -> Result<Self> {
        let (h, payload) = open(params, bytes, max_bytes, ObjectType::Plaintext)?;
        match h.version {
            1 => v1::plaintext(params, &h, payload),
            v => Err(unsupported(v)),
        }
    }
}

impl FromBytes for PublicKey {
    fn from_bytes(params: &Arc<Parameters>, bytes: &[u8], max_bytes: usize) -> Result<Self> {
        let (h, payload) = open(params, bytes, max_bytes, ObjectType::PublicKey)?;
        match h.version {
            1 => v1::public_key(params, &h, payload),
            v => Err(unsupported(v)),
        }
    }
}

impl FromBytes for RelinearizationKey {
    fn from_bytes(params: &Arc<Parameters>, bytes: &[u8], max_bytes: usize) -> Result<Self> {
        let (h, payload) = open(params, bytes, max_bytes, ObjectType::RelinearizationKey)?;
        match h.version {
            1 => v1::relinearization_key(params, &h, payload),
            v => Err(unsupported(v)),
        }
    }
}

impl FromBytes for GaloisKey {
    fn from_bytes(params: &Arc<Parameters>, bytes: &[u8], max_bytes: usize) -> Result<Self> {
        let (h, payload) = open(params, bytes, max_bytes, ObjectType::GaloisKey)?;
        match h.version {
            1 => v1::galois_key(params, &h, payload),
            v => Err(unsupported(v)),
        }
    }
}

impl FromBytes for EvaluationKeys {
    fn from_bytes(params: &Arc<Parameters>, bytes: &[u8], max_bytes: usize) -> Result<Self> {
        let (h, payload) = open(params, bytes, max_bytes, ObjectType::EvaluationKeys)?;
        match h.version {
            1 => v1::evaluation_keys(params, &h, payload),
            v => Err(unsupported(v)),
        }
    }
}

impl SecretKey {
    /// Encodes the secret key (ternary coefficients, 2 bits each) into a buffer that is zeroized
    /// when dropped. This is the only way a secret key leaves memory: store or send the result
    /// only over channels fit for secrets.
    pub fn export_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            HEADER_LEN + self.coeffs.len().div_ceil(4),
        ));
        write_header(&mut out, ObjectType::SecretKey, 0, &self.params);
        for chunk in self.coeffs.chunks(4) {
            // Branch-free: 0 -> 00, 1 -> 01, -1 -> 11 (the low two bits of the two's complement).
            let byte = chunk
                .iter()
                .enumerate()
                .fold(0u8, |acc, (j, &c)| acc | (((c as u8) & 3) << (2 * j)));
            out.push(byte);
        }
        out
    }

    /// Decodes a secret key written by [`SecretKey::export_bytes`], with the same checks as
    /// [`FromBytes`]; every temporary holding coefficients is zeroized.
    pub fn import_bytes(
        params: &Arc<Parameters>,
        bytes: &[u8],
        max_bytes: usize,
    ) -> Result<SecretKey> {
        let (h, payload) = open(params, bytes, max_bytes, ObjectType::SecretKey)?;
        match h.version {
            1 => v1::secret_key(params, &h, payload),
            v => Err(unsupported(v)),
        }
    }
}

/// Decoders of format version 1. `payload` is everything after the envelope, whose magic,
/// version, type and parameter id are already checked.
mod v1 {
    use super::*;
    use crate::params::SecretDistribution;
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

    pub(super) fn plaintext(
        params: &Arc<Parameters>,
        h: &Header,
        payload: &[u8],
    ) -> Result<Plaintext> {
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
    fn switching_key(
        params: &Arc<Parameters>,
        mut c: Cursor<'_>,
        what: &str,
    ) -> Result<SwitchingKey> {
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
}
