//! Algorithm Identifiers (draft Section 2, term 9): one token naming the HE scheme, the security
//! level, the ring degree and the library wire-format version.
//!
//! Grammar (case-sensitive, no spaces):
//!
//! ```text
//! algorithm-id = scheme "-" security "-N" degree "-" format
//! scheme       = "CKKS-RNS" / "BFV-RNS" / "BGV-RNS"
//! security     = "128" / "192" / "256"
//! degree       = decimal power of two, 1024 ..= 65536, no leading zeros
//! format       = "CIFR" version          ; version: decimal 1 ..= 65535, no leading zeros
//! ```
//!
//! Example: `CKKS-RNS-128-N8192-CIFR1`. The exact parameter set (primes, scale, key-switching
//! digits) is named by the parameter id (SHA-256, 64 hex digits) carried beside the Algorithm ID.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ErrorCode, Result, ToolError};

/// The HE scheme family of an Algorithm ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// RNS variant of CKKS (approximate arithmetic): the scheme this project implements.
    CkksRns,
    /// RNS variant of BFV (exact integer arithmetic).
    BfvRns,
    /// RNS variant of BGV (exact integer arithmetic).
    BgvRns,
}

impl Scheme {
    /// The scheme's token in an Algorithm ID.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CkksRns => "CKKS-RNS",
            Self::BfvRns => "BFV-RNS",
            Self::BgvRns => "BGV-RNS",
        }
    }
}

/// A parsed Algorithm ID. Serialized as its string form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AlgorithmId {
    /// Scheme family.
    pub scheme: Scheme,
    /// Targeted bit security: 128, 192 or 256.
    pub security_bits: u16,
    /// Ring degree N.
    pub ring_degree: u32,
    /// Version of the cipherinfer wire format the objects are serialized in.
    pub format_version: u16,
}

/// Smallest ring degree an Algorithm ID may name.
pub const MIN_RING_DEGREE: u32 = 1 << 10;
/// Largest ring degree an Algorithm ID may name.
pub const MAX_RING_DEGREE: u32 = 1 << 16;

fn unsupported(s: &str, why: &str) -> ToolError {
    let shown: String = s.chars().take(64).collect();
    ToolError::new(
        ErrorCode::UnsupportedAlgorithm,
        format!("algorithm id {shown:?}: {why}"),
    )
}

/// Parses a decimal with no sign and no leading zeros.
fn strict_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl AlgorithmId {
    /// The Algorithm ID of a CKKS parameter set built by this project's library. Parameters
    /// built without a security check (test-only sets) are refused with `ERROR_WEAK_PARAMETERS`.
    pub fn for_ckks(params: &cipherinfer_ckks::Parameters) -> Result<Self> {
        let Some(security_bits) = params.security().bits() else {
            return Err(ToolError::new(
                ErrorCode::WeakParameters,
                "parameters were built without a security check",
            ));
        };
        let ring_degree = u32::try_from(params.n())
            .map_err(|_| ToolError::new(ErrorCode::InvalidParameters, "ring degree too large"))?;
        Ok(Self {
            scheme: Scheme::CkksRns,
            security_bits: u16::try_from(security_bits).map_err(|_| {
                ToolError::new(ErrorCode::InvalidParameters, "security level too large")
            })?,
            ring_degree,
            format_version: cipherinfer_ckks::serialization::FORMAT_VERSION,
        })
    }

    /// Whether this server implementation can evaluate objects of this algorithm: CKKS-RNS
    /// in the current wire format.
    pub fn is_implemented(&self) -> bool {
        self.scheme == Scheme::CkksRns
            && self.format_version == cipherinfer_ckks::serialization::FORMAT_VERSION
            && self.ring_degree <= 1 << 15
    }

    /// Fails with `ERROR_UNSUPPORTED_ALGORITHM` unless [`AlgorithmId::is_implemented`].
    pub fn ensure_implemented(&self) -> Result<()> {
        if self.is_implemented() {
            Ok(())
        } else {
            Err(unsupported(
                &self.to_string(),
                "not implemented by this server",
            ))
        }
    }
}

impl FromStr for AlgorithmId {
    type Err = ToolError;

    fn from_str(s: &str) -> Result<Self> {
        if s.len() > 64 {
            return Err(unsupported(s, "longer than 64 characters"));
        }
        let (scheme, rest) = [Scheme::CkksRns, Scheme::BfvRns, Scheme::BgvRns]
            .into_iter()
            .find_map(|sc| {
                s.strip_prefix(sc.as_str())
                    .and_then(|r| r.strip_prefix('-'))
                    .map(|r| (sc, r))
            })
            .ok_or_else(|| {
                unsupported(s, "unknown scheme (expected CKKS-RNS, BFV-RNS or BGV-RNS)")
            })?;
        let mut parts = rest.split('-');
        let (Some(sec), Some(deg), Some(fmt), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unsupported(
                s,
                "expected SCHEME-SECURITY-N<degree>-CIFR<version>",
            ));
        };
        let security_bits = match sec {
            "128" => 128,
            "192" => 192,
            "256" => 256,
            _ => return Err(unsupported(s, "security must be 128, 192 or 256")),
        };
        let ring_degree = deg
            .strip_prefix('N')
            .and_then(strict_decimal)
            .and_then(|d| u32::try_from(d).ok())
            .filter(|d| d.is_power_of_two() && (MIN_RING_DEGREE..=MAX_RING_DEGREE).contains(d))
            .ok_or_else(|| {
                unsupported(
                    s,
                    "ring degree must be N followed by a power of two in 1024..=65536",
                )
            })?;
        let format_version = fmt
            .strip_prefix("CIFR")
            .and_then(strict_decimal)
            .and_then(|v| u16::try_from(v).ok())
            .filter(|&v| v >= 1)
            .ok_or_else(|| unsupported(s, "format must be CIFR followed by a version number"))?;
        Ok(Self {
            scheme,
            security_bits,
            ring_degree,
            format_version,
        })
    }
}

impl fmt::Display for AlgorithmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-N{}-CIFR{}",
            self.scheme.as_str(),
            self.security_bits,
            self.ring_degree,
            self.format_version
        )
    }
}

impl Serialize for AlgorithmId {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AlgorithmId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse()
            .map_err(|e: ToolError| serde::de::Error::custom(e.message))
    }
}

/// Regular expression of the Algorithm ID grammar, as published in the JSON Schema.
pub const ALGORITHM_ID_PATTERN: &str =
    "^(CKKS|BFV|BGV)-RNS-(128|192|256)-N[1-9][0-9]{3,4}-CIFR[1-9][0-9]{0,4}$";

impl JsonSchema for AlgorithmId {
    fn schema_name() -> Cow<'static, str> {
        "AlgorithmId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": ALGORITHM_ID_PATTERN,
            "description": "Algorithm ID: SCHEME-SECURITY-N<ring degree>-CIFR<wire format version>, e.g. CKKS-RNS-128-N8192-CIFR1",
        })
    }
}
