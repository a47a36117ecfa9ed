//! Plaintexts and ciphertexts (NTT domain), with the telemetry the protocol reports: level,
//! remaining levels, scale and depth consumed.

use std::fmt;
use std::sync::Arc;

use crate::params::Parameters;

/// An encoded message at a level and scale (NTT domain, `level + 1` limbs).
#[derive(Clone)]
pub struct Plaintext {
    pub(crate) params: Arc<Parameters>,
    pub(crate) poly: Vec<u64>,
    pub(crate) level: usize,
    pub(crate) scale: f64,
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plaintext")
            .field("level", &self.level)
            .field("log2_scale", &self.scale.log2())
            .finish_non_exhaustive()
    }
}

impl Plaintext {
    /// Level of the plaintext.
    pub fn level(&self) -> usize {
        self.level
    }
    /// Scale of the plaintext.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// The parameters it belongs to.
    pub fn parameters(&self) -> &Arc<Parameters> {
        &self.params
    }
}

/// An encoded message over the extended basis Q_level ∪ P (NTT domain): a mask for
/// [`crate::Evaluator::rotate_and_combine`], multiplied before the key switch's division by P.
#[derive(Clone)]
pub struct ExtendedPlaintext {
    pub(crate) params: Arc<Parameters>,
    pub(crate) poly: Vec<u64>,
    pub(crate) level: usize,
    pub(crate) scale: f64,
}

impl fmt::Debug for ExtendedPlaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtendedPlaintext")
            .field("level", &self.level)
            .field("log2_scale", &self.scale.log2())
            .finish_non_exhaustive()
    }
}

impl ExtendedPlaintext {
    /// Level of the plaintext.
    pub fn level(&self) -> usize {
        self.level
    }
    /// Scale of the plaintext.
    pub fn scale(&self) -> f64 {
        self.scale
    }
}

/// A CKKS ciphertext: polynomials `c_0 .. c_d` (d = 1 normally, 2 after a multiplication
/// without relinearization) in the NTT domain over the primes `q_0 .. q_level`.
#[derive(Clone)]
pub struct Ciphertext {
    pub(crate) params: Arc<Parameters>,
    pub(crate) polys: Vec<Vec<u64>>,
    pub(crate) level: usize,
    pub(crate) scale: f64,
    /// Seed of `c_1` when it is still the fresh uniform polynomial of a symmetric encryption;
    /// lets the ciphertext serialize at half size.
    pub(crate) seed: Option<[u8; 32]>,
}

impl fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ciphertext")
            .field("degree", &self.degree())
            .field("level", &self.level)
            .field("log2_scale", &self.scale.log2())
            .field("seeded", &self.seed.is_some())
            .finish_non_exhaustive()
    }
}

impl Ciphertext {
    /// Current level: the number of rescalings still possible.
    pub fn level(&self) -> usize {
        self.level
    }
    /// Same as [`Ciphertext::level`], under the protocol's name.
    pub fn remaining_levels(&self) -> usize {
        self.level
    }
    /// Levels consumed since a fresh encryption at the top level.
    pub fn depth_consumed(&self) -> usize {
        self.params.max_level() - self.level
    }
    /// Current scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// log2 of the current scale.
    pub fn log2_scale(&self) -> f64 {
        self.scale.log2()
    }
    /// Overrides the recorded scale (for callers that track a scale exactly, e.g. after a
    /// multiplication by a constant encoded at a known scale).
    pub fn set_scale(&mut self, scale: f64) {
        self.scale = scale;
    }
    /// Degree: number of polynomials minus one.
    pub fn degree(&self) -> usize {
        self.polys.len() - 1
    }
    /// Whether `c_1` is still expandable from a seed (serializes at half size).
    pub fn is_seeded(&self) -> bool {
        self.seed.is_some()
    }
    /// The parameters it belongs to.
    pub fn parameters(&self) -> &Arc<Parameters> {
        &self.params
    }
    /// Indices of its primes.
    pub(crate) fn indices(&self) -> Vec<usize> {
        (0..=self.level).collect()
    }
}
