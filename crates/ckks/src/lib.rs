//! RNS-CKKS homomorphic encryption in pure Rust.
//!
//! The layers, bottom to top: [`arith`] (word arithmetic, primes) → [`params`] (validated,
//! immutable parameter sets and their RNS/NTT tables) → ring operations → [`keys`],
//! [`encoder`], [`encryption`] → [`evaluator`] (arithmetic, rescaling, hybrid key switching,
//! hoisted rotations) → [`linear`] (baby-step/giant-step linear transforms) and [`polynomial`]
//! (Chebyshev polynomial evaluation) → [`serialization`] (versioned, bit-packed, seeded wire
//! forms with bounded, conformance-checked decoding).
//!
//! ```
//! use cipherinfer_ckks::{Encoder, Evaluator, KeyGenerator, Preset, secret_key_pair};
//! let params = Preset::Pn13Depth4.build()?;
//! let mut kg = KeyGenerator::new(params.clone())?;
//! let sk = kg.secret_key();
//! let keys = kg.evaluation_keys(&sk, true, &[1], false)?;
//! let encoder = Encoder::new(params.clone());
//! let (mut sym, dec) = secret_key_pair(sk)?;
//! let pt = encoder.encode(&[1.0, 2.0, 3.0], params.max_level(), params.default_scale())?;
//! let ct = sym.encrypt(&pt)?;
//! let ev = Evaluator::new(keys);
//! let sq = ev.mul_rescale(&ct, &ct)?;
//! let rot = ev.rotate(&sq, 1)?;
//! let out = encoder.decode(&dec.decrypt(&rot)?)?;
//! assert!((out[0] - 4.0).abs() < 1e-3 && (out[1] - 9.0).abs() < 1e-3);
//! # Ok::<(), cipherinfer_ckks::Error>(())
//! ```

pub mod arith;
pub mod ciphertext;
pub mod encoder;
pub mod encryption;
pub mod error;
pub mod evaluator;
pub mod keys;
pub mod linear;
pub mod params;
pub mod polynomial;
mod ring;
pub mod sampling;
pub mod serialization;

pub use ciphertext::{Ciphertext, ExtendedPlaintext, Plaintext};
pub use encoder::Encoder;
pub use encryption::{Decryptor, Encryptor, SymmetricEncryptor, secret_key_pair};
pub use error::{DecodeErrorCode, Error, Result};
pub use evaluator::{Decomposition, Evaluator, ExtendedRotations, power_of_two_parts};
pub use keys::{EvaluationKeys, GaloisKey, KeyGenerator, PublicKey, RelinearizationKey, SecretKey};
pub use linear::{
    Diagonals, EncodedLinearTransform, LinearTransform, MaskEncoding, bsgs_rotation_steps,
};
pub use num_complex::Complex64;
pub use params::{Parameters, ParametersLiteral, Preset, SecretDistribution, SecurityLevel};
pub use polynomial::{Basis, Polynomial};
