//! Typed errors of the CKKS library. Messages never contain secret material.

use thiserror::Error;

/// Everything that can go wrong in the CKKS library.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A parameter set failed validation.
    #[error("invalid parameters: {0}")]
    InvalidParameters(String),
    /// The parameter set is weaker than the security level it was built for.
    #[error(
        "insecure parameters: log2(QP) = {log_qp:.1} bits exceeds the {security_bits}-bit bound of {bound} bits for N = {n} (Homomorphic Encryption Security Standard, ternary secret)"
    )]
    Insecure {
        /// Ring degree.
        n: usize,
        /// Total modulus bits including special primes.
        log_qp: f64,
        /// Largest allowed total at that level.
        bound: u32,
        /// The level asked for (128, 192 or 256).
        security_bits: u32,
    },
    /// Two operands, or an operand and the evaluator, use different parameter sets.
    #[error("parameter mismatch: object bound to {found}, expected {expected}")]
    ParameterMismatch {
        /// Expected parameter id (hex prefix).
        expected: String,
        /// Parameter id found (hex prefix).
        found: String,
    },
    /// A level is out of range for the operation.
    #[error("invalid level {level}: allowed {min}..={max}")]
    InvalidLevel {
        /// Level requested or found.
        level: usize,
        /// Lowest allowed level.
        min: usize,
        /// Highest allowed level.
        max: usize,
    },
    /// Two operands are at different levels.
    #[error("level mismatch: {left} vs {right}")]
    LevelMismatch {
        /// Level of the left operand.
        left: usize,
        /// Level of the right operand.
        right: usize,
    },
    /// Two operands have different scales.
    #[error("scale mismatch: 2^{left:.4} vs 2^{right:.4}")]
    ScaleMismatch {
        /// log2 of the left scale.
        left: f64,
        /// log2 of the right scale.
        right: f64,
    },
    /// A scale is not usable (not finite, not positive, or too large for the modulus).
    #[error("invalid scale 2^{log_scale:.2}: {reason}")]
    InvalidScale {
        /// log2 of the scale.
        log_scale: f64,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// No level is left to rescale into.
    #[error("no level left: cannot rescale a ciphertext at level 0")]
    OutOfLevels,
    /// A ciphertext has the wrong number of polynomials for the operation.
    #[error("ciphertext has degree {found}, expected {expected}")]
    CiphertextDegree {
        /// Degree found (number of polynomials minus one).
        found: usize,
        /// Degree expected.
        expected: usize,
    },
    /// An evaluation key the operation needs is absent.
    #[error("missing {kind} key{}", galois_element.map(|g| format!(" for Galois element {g}")).unwrap_or_default())]
    MissingKey {
        /// Which kind of key (relinearization, rotation, conjugation).
        kind: &'static str,
        /// The Galois element, for rotation keys.
        galois_element: Option<u64>,
    },
    /// A key generated for lower levels than the ciphertext it must switch.
    #[error("the {kind} key serves levels up to {key_level}, the ciphertext is at level {level}")]
    KeyLevel {
        /// Which kind of key (relinearization, rotation, conjugation).
        kind: &'static str,
        /// Highest level the key serves.
        key_level: usize,
        /// Level of the ciphertext.
        level: usize,
    },
    /// Input vector is too long, or otherwise unusable for encoding.
    #[error("encoding error: {0}")]
    Encoding(String),
    /// A value exceeds what the modulus can represent at this scale.
    #[error("value out of range: {0}")]
    OutOfRange(String),
    /// Serialized input was rejected.
    #[error("decode error ({code}): {detail}")]
    Decode {
        /// Machine-readable reason.
        code: DecodeErrorCode,
        /// Human-readable detail.
        detail: String,
    },
    /// The operating system's randomness source failed.
    #[error("randomness unavailable: {0}")]
    Randomness(String),
    /// The operation was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
}

/// Machine-readable reasons for rejecting serialized input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorCode {
    /// Input is larger than the caller's limit.
    TooLarge,
    /// Input ends before the object does, or has trailing bytes.
    Truncated,
    /// Wrong magic bytes: not a cipherinfer object.
    BadMagic,
    /// Unknown format version.
    UnsupportedVersion,
    /// The object is of another type than expected.
    WrongType,
    /// Bound to another parameter set.
    WrongParameters,
    /// A field is out of range or inconsistent with the parameters.
    NonConformant,
}

impl DecodeErrorCode {
    /// Stable snake_case name for protocols and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Truncated => "truncated",
            Self::BadMagic => "bad_magic",
            Self::UnsupportedVersion => "unsupported_version",
            Self::WrongType => "wrong_type",
            Self::WrongParameters => "wrong_parameters",
            Self::NonConformant => "non_conformant",
        }
    }
}

impl std::fmt::Display for DecodeErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// Shorthand for a decode error.
    pub(crate) fn decode(code: DecodeErrorCode, detail: impl Into<String>) -> Self {
        Self::Decode {
            code,
            detail: detail.into(),
        }
    }

    /// Stable snake_case code for protocols and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidParameters(_) => "invalid_parameters",
            Self::Insecure { .. } => "insecure_parameters",
            Self::ParameterMismatch { .. } => "parameter_mismatch",
            Self::InvalidLevel { .. } => "invalid_level",
            Self::LevelMismatch { .. } => "level_mismatch",
            Self::ScaleMismatch { .. } => "scale_mismatch",
            Self::InvalidScale { .. } => "invalid_scale",
            Self::OutOfLevels => "out_of_levels",
            Self::CiphertextDegree { .. } => "ciphertext_degree",
            Self::MissingKey { .. } => "missing_key",
            Self::KeyLevel { .. } => "key_level",
            Self::Encoding(_) => "encoding",
            Self::OutOfRange(_) => "out_of_range",
            Self::Decode { code, .. } => code.as_str(),
            Self::Randomness(_) => "randomness_unavailable",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Result alias of the library.
pub type Result<T> = std::result::Result<T, Error>;
