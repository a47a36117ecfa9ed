//! The draft's Section 7 negotiation parameters: the extended request block (7.1) with its
//! model-independent validation and its conversion to and from the CKKS library's
//! [`ParametersLiteral`], and the extended response telemetry (7.2).

use std::collections::BTreeMap;

use cipherinfer_ckks::arith::{MAX_PRIME_BITS, MIN_PRIME_BITS, is_prime};
use cipherinfer_ckks::{Parameters, ParametersLiteral, SecretDistribution};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, Result, ToolError};

/// The mathematical scheme of draft 7.1 `scheme_context`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SchemeContext {
    /// Approximate arithmetic on complex/real slots (N/2 slots).
    #[serde(rename = "CKKS")]
    Ckks,
    /// Exact integer arithmetic, BFV (N slots).
    #[serde(rename = "BFV")]
    Bfv,
    /// Exact integer arithmetic, BGV (N slots).
    #[serde(rename = "BGV")]
    Bgv,
}

impl SchemeContext {
    /// Number of slots of a ring of degree `n` under this scheme (draft 7.1).
    pub fn slots(self, n: u32) -> u32 {
        match self {
            Self::Ckks => n / 2,
            Self::Bfv | Self::Bgv => n,
        }
    }
}

/// Smallest ring degree accepted in a parameter block.
pub const MIN_POLY_MODULUS_DEGREE: u32 = 1 << 10;
/// Largest ring degree accepted in a parameter block (the largest with a published bound).
pub const MAX_POLY_MODULUS_DEGREE: u32 = 1 << 15;
/// Most primes a modulus chain may have.
pub const MAX_COEFF_MODULUS_PRIMES: usize = 64;
/// Largest `max_multiplication_depth` accepted.
pub const MAX_MULTIPLICATION_DEPTH: u32 = 64;
/// Largest `omp_threads` hint accepted.
pub const MAX_OMP_THREADS: u32 = 1024;
/// Most entries `galois_key_mappings` may have.
pub const MAX_GALOIS_KEY_MAPPINGS: usize = 4096;
/// Longest `input_packing_format` name.
pub const MAX_PACKING_FORMAT_LEN: usize = 64;
/// The packing of this project's compiler: one channel per power-of-two block of slots,
/// row-major inside the block (see `docs/protocol.md`).
pub const PACKING_CHW_BLOCKS: &str = "chw_blocks";

/// Largest log2(QP) meeting a security level for a ring degree, per the Homomorphic Encryption
/// Security Standard (classical attacks, ternary secret). The table is the CKKS library's.
pub fn max_log_qp(log_n: u32, security_bits: u32) -> Option<u32> {
    cipherinfer_ckks::SecurityLevel::from_bits(security_bits)
        .ok()?
        .max_log_qp(log_n)
}

/// Galois element of a left rotation by `step` slots in a CKKS ring of degree `n`
/// (5^step mod 2N; negative steps rotate right). Matches the CKKS library.
pub fn galois_element(n: u32, step: i64) -> u64 {
    let slots = i64::from(n / 2).max(1);
    let mut e = step.rem_euclid(slots) as u64;
    let two_n = 2 * u64::from(n);
    let mut g = 1u64;
    let mut base = 5u64 % two_n;
    while e > 0 {
        if e & 1 == 1 {
            g = g * base % two_n;
        }
        base = base * base % two_n;
        e >>= 1;
    }
    g
}

fn invalid(msg: impl Into<String>) -> ToolError {
    ToolError::new(ErrorCode::InvalidParameters, msg)
}

/// A requested `security_level` as bits: absent is 128; 128, 192 and 256 are the HE Standard's
/// levels; below 128 is `ERROR_WEAK_PARAMETERS`, anything else `ERROR_INVALID_PARAMETERS`.
pub fn security_level_bits(level: Option<u32>) -> Result<u32> {
    match level {
        None => Ok(128),
        Some(s) if s < 128 => Err(ToolError::new(
            ErrorCode::WeakParameters,
            format!("security_level {s} is below the minimum of 128 bits"),
        )),
        Some(s @ (128 | 192 | 256)) => Ok(s),
        Some(s) => Err(invalid(format!(
            "security_level {s} is not one of 128, 192, 256"
        ))),
    }
}

/// The security a served parameter set gives, against a requested `security_level`: a request
/// above it is `ERROR_WEAK_PARAMETERS` (the set is weaker than asked), with both in the details.
pub fn check_security_at_least(requested: Option<u32>, served_bits: u32) -> Result<()> {
    let want = security_level_bits(requested)?;
    if want > served_bits {
        return Err(ToolError::new(
            ErrorCode::WeakParameters,
            format!(
                "security_level {want} asked; this parameter set gives {served_bits}-bit security"
            ),
        )
        .with_details(serde_json::json!({ "requested": want, "served": served_bits })));
    }
    Ok(())
}

/// Declares a struct whose fields are its own followed by the draft 7.1 extended parameters,
/// which are written out only here, and the conversions `extended_parameters()` and
/// `with_extended_parameters()` between the struct and an [`ExtendedParameters`] block. Every
/// type that carries the 7.1 fields at its top level (the block itself, `remote_inference_cnn`'s
/// arguments) is declared with it, so the fields, their documentation and their JSON Schema
/// cannot drift apart.
macro_rules! with_extended_parameters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty,)*
            /// Underlying scheme: "CKKS", "BFV" or "BGV".
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub scheme_context: Option<$crate::params::SchemeContext>,
            /// Ring degree N, a power of two in 1024..=32768.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub poly_modulus_degree: Option<u32>,
            /// CKKS encoding scale (e.g. 1099511627776 = 2^40); a power of two for this
            /// implementation.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub scale: Option<f64>,
            /// The ordered RNS prime chain: ciphertext primes q_0..q_L, then the special
            /// (key-switching) primes, as decimal strings (values exceed 2^53, which JSON
            /// numbers do not hold exactly in every client); JSON integers are also accepted.
            #[serde(
                default,
                skip_serializing_if = "Option::is_none",
                with = "cipherinfer_ckks::params::decimal::option"
            )]
            #[schemars(with = "Option<Vec<cipherinfer_compiler::client::DecimalU64>>")]
            pub coeff_modulus: Option<Vec<u64>>,
            /// Extension: how many trailing primes of `coeff_modulus` are special primes
            /// (default 1).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub special_prime_count: Option<u32>,
            /// Extension: number of key-switching digits (dnum); default
            /// ceil((L+1) / special_prime_count).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub key_switching_digits: Option<u32>,
            /// Extension: Hamming weight of a sparse ternary secret; absent for a uniform
            /// ternary secret.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub secret_hamming_weight: Option<u32>,
            /// Targeted bit security: 128, 192 or 256. Below 128 is refused
            /// (ERROR_WEAK_PARAMETERS).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub security_level: Option<u32>,
            /// Client's upper bound on the multiplicative depth; evaluation aborts early with
            /// ERROR_DEPTH_EXCEEDED if the model needs more.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub max_multiplication_depth: Option<u32>,
            /// How input values are mapped to slots, e.g. "chw_blocks"; must equal the model's.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub input_packing_format: Option<String>,
            /// Independent samples packed per ciphertext, 1..=slot_count.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub batch_size: Option<u32>,
            /// Slots used per ciphertext: N/2 for CKKS (N for BFV/BGV) or a power-of-two
            /// divisor.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub slot_count: Option<u32>,
            /// Rotation step (decimal string, negative = right) to the Galois element of its
            /// key.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub galois_key_mappings: Option<std::collections::BTreeMap<String, u64>>,
            /// Hint for evaluation parallelism (1..=1024); never changes the result.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub omp_threads: Option<u32>,
        }

        impl $name {
            /// The draft 7.1 block carried by this value.
            pub fn extended_parameters(&self) -> $crate::params::ExtendedParameters {
                $crate::params::ExtendedParameters {
                    scheme_context: self.scheme_context,
                    poly_modulus_degree: self.poly_modulus_degree,
                    scale: self.scale,
                    coeff_modulus: self.coeff_modulus.clone(),
                    special_prime_count: self.special_prime_count,
                    key_switching_digits: self.key_switching_digits,
                    secret_hamming_weight: self.secret_hamming_weight,
                    security_level: self.security_level,
                    max_multiplication_depth: self.max_multiplication_depth,
                    input_packing_format: self.input_packing_format.clone(),
                    batch_size: self.batch_size,
                    slot_count: self.slot_count,
                    galois_key_mappings: self.galois_key_mappings.clone(),
                    omp_threads: self.omp_threads,
                }
            }

            /// This value with its draft 7.1 fields replaced by the block `p`.
            pub fn with_extended_parameters(
                mut self,
                p: $crate::params::ExtendedParameters,
            ) -> Self {
                self.scheme_context = p.scheme_context;
                self.poly_modulus_degree = p.poly_modulus_degree;
                self.scale = p.scale;
                self.coeff_modulus = p.coeff_modulus;
                self.special_prime_count = p.special_prime_count;
                self.key_switching_digits = p.key_switching_digits;
                self.secret_hamming_weight = p.secret_hamming_weight;
                self.security_level = p.security_level;
                self.max_multiplication_depth = p.max_multiplication_depth;
                self.input_packing_format = p.input_packing_format;
                self.batch_size = p.batch_size;
                self.slot_count = p.slot_count;
                self.galois_key_mappings = p.galois_key_mappings;
                self.omp_threads = p.omp_threads;
                self
            }
        }
    };
}
pub(crate) use with_extended_parameters;

with_extended_parameters! {
    /// Draft 7.1 extended request parameters. Every field is optional; a field that is present
    /// is validated and must agree with the provisioned key set and the model.
    ///
    /// `special_prime_count`, `key_switching_digits` and `secret_hamming_weight` are
    /// cipherinfer extensions that make the block describe a CKKS parameter set completely (so
    /// its parameter id can be recomputed).
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ExtendedParameters {}
}

impl ExtendedParameters {
    /// The block describing a built CKKS parameter set completely (model-specific fields —
    /// packing, batch size, Galois mappings, threads — are left empty).
    pub fn from_ckks(params: &Parameters) -> Self {
        let lit = params.literal();
        let mut chain = params.q_primes();
        chain.extend(params.p_primes());
        let security_level = params.security().bits();
        Self {
            scheme_context: Some(SchemeContext::Ckks),
            poly_modulus_degree: u32::try_from(params.n()).ok(),
            scale: Some(params.default_scale()),
            coeff_modulus: Some(chain),
            special_prime_count: u32::try_from(params.p_primes().len()).ok(),
            key_switching_digits: u32::try_from(params.dnum()).ok(),
            secret_hamming_weight: match lit.secret {
                SecretDistribution::Ternary => None,
                SecretDistribution::SparseTernary { hamming_weight } => {
                    u32::try_from(hamming_weight).ok()
                }
            },
            security_level,
            max_multiplication_depth: u32::try_from(params.max_level()).ok(),
            input_packing_format: None,
            batch_size: None,
            slot_count: u32::try_from(params.slots()).ok(),
            galois_key_mappings: None,
            omp_threads: None,
        }
    }

    /// Checks every present field on its own and against the others, without the model or
    /// keys: degree, scale, primes (distinct, NTT-friendly, prime), the declared security level
    /// against the HE Security Standard bound, depth against the chain, slot count, batch size,
    /// Galois mappings and thread hint.
    pub fn validate(&self) -> Result<()> {
        let scheme = self.scheme_context.unwrap_or(SchemeContext::Ckks);
        let n = self.poly_modulus_degree;
        if let Some(n) = n
            && (!n.is_power_of_two()
                || !(MIN_POLY_MODULUS_DEGREE..=MAX_POLY_MODULUS_DEGREE).contains(&n))
        {
            return Err(invalid(format!(
                "poly_modulus_degree {n} is not a power of two in {MIN_POLY_MODULUS_DEGREE}..={MAX_POLY_MODULUS_DEGREE}"
            )));
        }
        let security = security_level_bits(self.security_level)?;
        if let Some(scale) = self.scale
            && (!scale.is_finite() || scale <= 1.0 || scale > 2f64.powi(60))
        {
            return Err(invalid(format!("scale {scale} outside (1, 2^60]")));
        }
        if let Some(scale) = self.scale
            && scheme == SchemeContext::Ckks
            && scale.log2().fract() != 0.0
        {
            return Err(invalid(format!(
                "scale {scale} is not a power of two (CKKS scales are 2^k here)"
            )));
        }
        let mut ciphertext_primes = None;
        if let Some(chain) = &self.coeff_modulus {
            ciphertext_primes = Some(self.validate_chain(chain, n, security)?);
        } else if self.special_prime_count.is_some() || self.key_switching_digits.is_some() {
            return Err(invalid(
                "special_prime_count and key_switching_digits need coeff_modulus",
            ));
        }
        if let Some(d) = self.max_multiplication_depth {
            if d > MAX_MULTIPLICATION_DEPTH {
                return Err(ToolError::new(
                    ErrorCode::DepthExceeded,
                    format!("max_multiplication_depth {d} above {MAX_MULTIPLICATION_DEPTH}"),
                ));
            }
            if let Some(q) = ciphertext_primes
                && d as usize >= q
            {
                return Err(ToolError::new(
                    ErrorCode::DepthExceeded,
                    format!(
                        "max_multiplication_depth {d} needs {} ciphertext primes; coeff_modulus has {q}",
                        d + 1
                    ),
                ));
            }
        }
        if let Some(h) = self.secret_hamming_weight {
            if h == 0 || n.is_some_and(|n| h > n) {
                return Err(invalid(format!("secret_hamming_weight {h} out of range")));
            }
            if h < 192 {
                return Err(ToolError::new(
                    ErrorCode::WeakParameters,
                    format!("a sparse secret of Hamming weight {h} < 192 is not 128-bit secure"),
                ));
            }
        }
        if let Some(f) = &self.input_packing_format {
            validate_packing_format(f)?;
        }
        let max_slots = n.map(|n| scheme.slots(n));
        if let Some(s) = self.slot_count {
            let ok = s.is_power_of_two()
                && s <= max_slots.unwrap_or(scheme.slots(MAX_POLY_MODULUS_DEGREE));
            if !ok {
                return Err(ToolError::new(
                    ErrorCode::UnsupportedPacking,
                    format!(
                        "slot_count {s} must be a power of two dividing {}",
                        max_slots.map_or("the slot count".to_string(), |m| m.to_string())
                    ),
                ));
            }
        }
        if let Some(b) = self.batch_size {
            let cap = self
                .slot_count
                .or(max_slots)
                .unwrap_or(scheme.slots(MAX_POLY_MODULUS_DEGREE));
            if b == 0 || b > cap {
                return Err(ToolError::new(
                    ErrorCode::UnsupportedPacking,
                    format!("batch_size {b} outside 1..={cap}"),
                ));
            }
        }
        if let Some(map) = &self.galois_key_mappings {
            self.validate_galois(map, scheme, n)?;
        }
        if let Some(t) = self.omp_threads
            && (t == 0 || t > MAX_OMP_THREADS)
        {
            return Err(ToolError::new(
                ErrorCode::InvalidArgument,
                format!("omp_threads {t} outside 1..={MAX_OMP_THREADS}"),
            ));
        }
        Ok(())
    }

    /// Validates the prime chain; returns the number of ciphertext primes.
    fn validate_chain(&self, chain: &[u64], n: Option<u32>, security: u32) -> Result<usize> {
        if chain.len() < 2 || chain.len() > MAX_COEFF_MODULUS_PRIMES {
            return Err(invalid(format!(
                "coeff_modulus has {} primes; 2..={MAX_COEFF_MODULUS_PRIMES} required (at least one ciphertext and one special prime)",
                chain.len()
            )));
        }
        let special = self.special_prime_count.unwrap_or(1) as usize;
        if special == 0 || special >= chain.len() {
            return Err(invalid(format!(
                "special_prime_count {special} must be in 1..={}",
                chain.len() - 1
            )));
        }
        let num_q = chain.len() - special;
        if let Some(d) = self.key_switching_digits
            && (d == 0 || d as usize > num_q)
        {
            return Err(invalid(format!(
                "key_switching_digits {d} outside 1..={num_q}"
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut log_qp = 0f64;
        for &p in chain {
            let bits = 64 - p.leading_zeros();
            if !(MIN_PRIME_BITS..=MAX_PRIME_BITS).contains(&bits) {
                return Err(invalid(format!(
                    "modulus {p} has {bits} bits; {MIN_PRIME_BITS}..={MAX_PRIME_BITS} allowed"
                )));
            }
            if !seen.insert(p) {
                return Err(invalid(format!("modulus {p} appears twice")));
            }
            if let Some(n) = n
                && p % (2 * u64::from(n)) != 1
            {
                return Err(invalid(format!(
                    "modulus {p} is not 1 mod 2N = {}: no negacyclic NTT",
                    2 * u64::from(n)
                )));
            }
            if !is_prime(p) {
                return Err(invalid(format!("modulus {p} is not prime")));
            }
            log_qp += (p as f64).log2();
        }
        if let Some(n) = n {
            let log_n = n.trailing_zeros();
            let bound = max_log_qp(log_n, security)
                .ok_or_else(|| invalid(format!("no {security}-bit bound is known for N = {n}")))?;
            if log_qp > f64::from(bound) {
                return Err(ToolError::new(
                    ErrorCode::WeakParameters,
                    format!(
                        "log2(QP) = {log_qp:.1} bits exceeds the {security}-bit bound of {bound} bits for N = {n} (HE Security Standard)"
                    ),
                )
                .with_details(serde_json::json!({
                    "log_qp": log_qp,
                    "bound": bound,
                    "security_level": security,
                    "poly_modulus_degree": n,
                })));
            }
        }
        Ok(num_q)
    }

    fn validate_galois(
        &self,
        map: &BTreeMap<String, u64>,
        scheme: SchemeContext,
        n: Option<u32>,
    ) -> Result<()> {
        if map.len() > MAX_GALOIS_KEY_MAPPINGS {
            return Err(ToolError::new(
                ErrorCode::InvalidGaloisKey,
                format!("more than {MAX_GALOIS_KEY_MAPPINGS} galois_key_mappings"),
            ));
        }
        for (step_s, &g) in map {
            let step = parse_step(step_s).ok_or_else(|| {
                let shown: String = step_s.chars().take(24).collect();
                ToolError::new(
                    ErrorCode::InvalidGaloisKey,
                    format!("galois_key_mappings key {shown:?} is not a decimal rotation step"),
                )
            })?;
            if g.is_multiple_of(2) {
                return Err(ToolError::new(
                    ErrorCode::InvalidGaloisKey,
                    format!("Galois element {g} for step {step} is even"),
                ));
            }
            if let Some(n) = n {
                let slots = i64::from(n / 2);
                if step.rem_euclid(slots) == 0 || step.unsigned_abs() >= slots as u64 {
                    return Err(ToolError::new(
                        ErrorCode::InvalidGaloisKey,
                        format!("rotation step {step} is not in 1..{slots} in magnitude"),
                    ));
                }
                if scheme == SchemeContext::Ckks && g != galois_element(n, step) {
                    return Err(ToolError::new(
                        ErrorCode::InvalidGaloisKey,
                        format!(
                            "Galois element {g} does not rotate by {step} slots (expected {})",
                            galois_element(n, step)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Converts a complete CKKS block into the CKKS library's literal (validated first).
    /// Needs `poly_modulus_degree`, `scale` and `coeff_modulus`.
    pub fn to_ckks_literal(&self) -> Result<ParametersLiteral> {
        self.validate()?;
        if let Some(s) = self.scheme_context
            && s != SchemeContext::Ckks
        {
            return Err(ToolError::new(
                ErrorCode::UnsupportedAlgorithm,
                format!("scheme_context {s:?} is not implemented; only CKKS is"),
            ));
        }
        let (Some(n), Some(scale), Some(chain)) =
            (self.poly_modulus_degree, self.scale, &self.coeff_modulus)
        else {
            return Err(invalid(
                "a CKKS parameter set needs poly_modulus_degree, scale and coeff_modulus",
            ));
        };
        let log_scale = scale.log2();
        if log_scale.fract() != 0.0 {
            return Err(invalid(format!("scale {scale} is not a power of two")));
        }
        let special = self.special_prime_count.unwrap_or(1) as usize;
        let split = chain.len() - special;
        Ok(ParametersLiteral {
            log_n: n.trailing_zeros(),
            log_q: vec![],
            q: chain[..split].to_vec(),
            log_p: vec![],
            p: chain[split..].to_vec(),
            log_scale: log_scale as u32,
            dnum: self.key_switching_digits.map(|d| d as usize),
            secret: match self.secret_hamming_weight {
                None => SecretDistribution::Ternary,
                Some(h) => SecretDistribution::SparseTernary {
                    hamming_weight: h as usize,
                },
            },
            security_bits: self.security_level.filter(|&b| b != 128),
        })
    }

    /// Builds the CKKS parameters of a complete block through the library's validating
    /// builder, which enforces the declared security level (128 bits when absent).
    pub fn build_ckks(&self) -> Result<std::sync::Arc<Parameters>> {
        self.to_ckks_literal()?
            .build()
            .map_err(|e| ToolError::from_ckks(&e, ErrorCode::InvalidParameters))
    }

    /// What a request may ask of the `served` parameter set beyond equality of its fields
    /// ([`Self::check_matches`]): a scheme other than CKKS is `ERROR_UNSUPPORTED_ALGORITHM`
    /// (only CKKS is evaluated), a `batch_size` above the images one ciphertext set holds is
    /// `ERROR_UNSUPPORTED_PACKING` (up to it, the client packs that many images and gets each
    /// one's outputs), and a `security_level` above the set's is `ERROR_WEAK_PARAMETERS`.
    pub fn check_served_profile(&self, served: &ExtendedParameters) -> Result<()> {
        let holds = served.batch_size.unwrap_or(1);
        if let Some(b) = self.batch_size
            && b > holds
        {
            return Err(ToolError::new(
                ErrorCode::UnsupportedPacking,
                format!("batch_size {b}: one ciphertext set of this model holds {holds} image(s)"),
            )
            .with_details(serde_json::json!({ "requested": b, "served": holds })));
        }
        if let Some(scheme) = self.scheme_context
            && scheme != SchemeContext::Ckks
        {
            return Err(ToolError::new(
                ErrorCode::UnsupportedAlgorithm,
                format!("scheme_context {scheme:?}: this server evaluates CKKS only"),
            ));
        }
        check_security_at_least(self.security_level, served.security_level.unwrap_or(128))
    }

    /// Checks the present fields against a reference block (the provisioned key set's or the
    /// model's): any field present in both must be equal. `omp_threads`, `batch_size`,
    /// `max_multiplication_depth` and `security_level` are not compared here.
    pub fn check_matches(&self, reference: &ExtendedParameters) -> Result<()> {
        fn same<T: PartialEq + std::fmt::Debug>(
            name: &str,
            a: &Option<T>,
            b: &Option<T>,
            code: ErrorCode,
        ) -> Result<()> {
            match (a, b) {
                (Some(x), Some(y)) if x != y => Err(ToolError::new(
                    code,
                    format!("{name} does not match the key set or model"),
                )
                .with_details(serde_json::json!({
                    "field": name,
                    "requested": format!("{x:?}"),
                    "expected": format!("{y:?}"),
                }))),
                _ => Ok(()),
            }
        }
        let pm = ErrorCode::ParameterMismatch;
        same(
            "scheme_context",
            &self.scheme_context,
            &reference.scheme_context,
            pm,
        )?;
        same(
            "poly_modulus_degree",
            &self.poly_modulus_degree,
            &reference.poly_modulus_degree,
            pm,
        )?;
        same("scale", &self.scale, &reference.scale, pm)?;
        same(
            "coeff_modulus",
            &self.coeff_modulus,
            &reference.coeff_modulus,
            pm,
        )?;
        same(
            "special_prime_count",
            &self.special_prime_count,
            &reference.special_prime_count,
            pm,
        )?;
        same(
            "key_switching_digits",
            &self.key_switching_digits,
            &reference.key_switching_digits,
            pm,
        )?;
        same(
            "secret_hamming_weight",
            &self.secret_hamming_weight,
            &reference.secret_hamming_weight,
            pm,
        )?;
        let up = ErrorCode::UnsupportedPacking;
        same(
            "input_packing_format",
            &self.input_packing_format,
            &reference.input_packing_format,
            up,
        )?;
        same("slot_count", &self.slot_count, &reference.slot_count, up)?;
        Ok(())
    }

    /// Fails with `ERROR_DEPTH_EXCEEDED` when the client's depth bound is below what the model
    /// consumes (draft 7.1: abort early to save computation).
    pub fn check_depth_bound(&self, model_depth: u32) -> Result<()> {
        match self.max_multiplication_depth {
            Some(bound) if bound < model_depth => Err(ToolError::new(
                ErrorCode::DepthExceeded,
                format!("the model needs multiplicative depth {model_depth}; max_multiplication_depth is {bound}"),
            )
            .with_details(serde_json::json!({
                "model_depth": model_depth,
                "max_multiplication_depth": bound,
            }))),
            _ => Ok(()),
        }
    }

    /// Fails with `ERROR_INVALID_GALOIS_KEY` when a mapped step is not among the rotation keys
    /// of the key set (given as Galois elements).
    pub fn check_galois_available(&self, available: &[u64]) -> Result<()> {
        let Some(map) = &self.galois_key_mappings else {
            return Ok(());
        };
        for (step, g) in map {
            if !available.contains(g) {
                return Err(ToolError::new(
                    ErrorCode::InvalidGaloisKey,
                    format!(
                        "no rotation key with Galois element {g} (step {step}) was provisioned"
                    ),
                )
                .with_details(serde_json::json!({ "step": step, "galois_element": g })));
            }
        }
        Ok(())
    }
}

/// Parses a rotation step: optional '-', decimal digits, no leading zeros, not "-0".
fn parse_step(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || digits.len() > 18
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || s == "-0"
    {
        return None;
    }
    s.parse().ok()
}

/// Checks an `input_packing_format` name: `[a-z0-9_]`, 1..=64 characters.
pub fn validate_packing_format(f: &str) -> Result<()> {
    let ok = !f.is_empty()
        && f.len() <= MAX_PACKING_FORMAT_LEN
        && f.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ToolError::new(
            ErrorCode::UnsupportedPacking,
            "input_packing_format must be 1..=64 characters of [a-z0-9_]",
        ))
    }
}

/// Draft 7.2 extended response parameters: cryptographic telemetry of an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InferenceTelemetry {
    /// CKKS: unused primes left in the output's modulus chain (its level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_level: Option<u32>,
    /// CKKS: the output ciphertext's current scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_scale: Option<f64>,
    /// BFV/BGV: remaining invariant noise budget of the output, in bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_budget_remaining: Option<u32>,
    /// Multiplicative depth (levels) the evaluation consumed.
    pub computation_depth_used: u32,
    /// Dimensions of the encrypted output tensor, e.g. [10] for ten logits.
    pub output_shape: Vec<u32>,
    /// Always true for encrypted outputs: route the result to a local decryption tool before
    /// any plaintext analysis.
    pub requires_decryption: bool,
    /// Machine-readable code of a non-fatal condition; absent on plain success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
}
