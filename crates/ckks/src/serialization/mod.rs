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
//! * **Relinearization key** (4): `digits` u8 (1 to [`Parameters::dnum`]), then `digits`
//!   polynomials `b_j`, each packed over the key's primes — the ciphertext primes `q_0..=q_top`
//!   with `top = min(digits·α, L + 1) − 1` (α ciphertext primes per digit), then the special
//!   primes — then the seed of the `a_j` (stream `1 + j`, expanded over the same primes). With
//!   `digits = dnum` the key holds every prime and serves every level; with fewer it serves the
//!   levels up to `top` only (a *level-aware* key, see
//!   [`SwitchingKey`](crate::keys::SwitchingKey)). Flag seeded (always).
//! * **Galois key** (5): Galois element u64 (odd, `< 2N`, `≠ 1`), then as the relinearization
//!   key. Flag seeded (always).
//! * **Evaluation keys** (6): `has_relin` u8 (0 or 1), `count` u32 (number of Galois keys,
//!   `≤ N − 1`), then the complete encoding (with its own envelope) of the relinearization key
//!   if present, then of each Galois key, by strictly increasing Galois element. Flags 0. Every
//!   nested encoding's length follows from the parameters and its digit count, so no length
//!   prefixes are needed: the decoder walks the digit counts and checks the total length before
//!   decoding any key.
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
//!
//! # Layout of this module
//!
//! * `mod.rs` (here): the constants, [`ObjectType`], [`Header`] and the [`ToBytes`] /
//!   [`FromBytes`] traits.
//! * `envelope`: the 40-byte envelope: [`peek_header`], opening an encoding against a parameter
//!   set and the expected type (size limit first), writing the envelope, flag checks.
//! * `packing`: the bounded byte cursor, bit packing and unpacking of polynomials, and the exact
//!   encoded sizes shared by encoders and the decoders' length checks.
//! * `checks`: conformance checks of decoded fields (level, scale, Galois element).
//! * `ciphertexts`: [`ToBytes`] and [`FromBytes`] of [`Ciphertext`] and [`Plaintext`].
//! * `keys`: [`ToBytes`] and [`FromBytes`] of the public, relinearization, Galois and evaluation
//!   keys, and [`SecretKey::export_bytes`] / [`SecretKey::import_bytes`].
//! * `v1`: the decoders of format version 1, to which the `FromBytes` impls dispatch.

use std::sync::Arc;

#[cfg(doc)]
use crate::ciphertext::{Ciphertext, Plaintext};
#[cfg(doc)]
use crate::error::DecodeErrorCode;
use crate::error::Result;
#[cfg(doc)]
use crate::keys::{EvaluationKeys, GaloisKey, PublicKey, RelinearizationKey, SecretKey};
use crate::params::Parameters;

mod checks;
mod ciphertexts;
mod envelope;
mod keys;
mod packing;
mod v1;

pub use envelope::peek_header;

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

/// Bytes of a ciphertext of two polynomials at `level` as encoded (seeded: the first polynomial
/// and a seed, as a client's fresh encryption; otherwise both polynomials, as results are).
pub fn ciphertext_bytes(params: &Parameters, level: usize, seeded: bool) -> usize {
    packing::ciphertext_size(params, level, 2, seeded)
}

/// Bytes of an evaluation-key bundle with `galois_keys` rotation keys and, if `relinearization`,
/// the relinearization key, as encoded (seeded) — what a client uploads in Step 0.
pub fn evaluation_keys_bytes(
    params: &Parameters,
    galois_keys: usize,
    relinearization: bool,
) -> usize {
    let top = params.max_level();
    evaluation_keys_bytes_to_levels(params, &vec![top; galois_keys], relinearization)
}

/// [`evaluation_keys_bytes`] with each rotation key serving levels up to the one listed for it
/// (see [`KeyGenerator::evaluation_keys_to_levels`](crate::KeyGenerator::evaluation_keys_to_levels)).
pub fn evaluation_keys_bytes_to_levels(
    params: &Parameters,
    galois_key_levels: &[usize],
    relinearization: bool,
) -> usize {
    HEADER_LEN
        + 5
        + if relinearization {
            packing::relin_key_size(params)
        } else {
            0
        }
        + galois_key_levels
            .iter()
            .map(|&l| {
                packing::galois_key_size(params, crate::keys::key_digits_for_level(params, l))
            })
            .sum::<usize>()
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
