//! CKKS parameters: a serde literal, a validating builder, named 128-bit presets, and the
//! immutable shared context (NTT plans, RNS tables) every other object is bound to.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tfhe_ntt::prime64::Plan;

use crate::arith::{MAX_PRIME_BITS, MIN_PRIME_BITS, Modulus, is_prime, ntt_primes};
use crate::error::{Error, Result};

/// Lists of 64-bit integers (RNS primes) in JSON: written as decimal strings, since a JSON number
/// above 2^53 loses its low bits in JavaScript and in any parser that reads numbers as doubles;
/// read from strings or integers. A string is 1 to 20 ASCII digits that fit in a `u64` (no sign,
/// space or exponent). Use with `#[serde(with = "decimal")]` (or [`decimal::option`]).
pub mod decimal {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    /// Writes the list as decimal strings.
    pub fn serialize<S: Serializer>(values: &[u64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(values.iter().map(u64::to_string))
    }

    /// Reads a list of decimal strings or integers.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        d.deserialize_seq(ListVisitor)
    }

    /// The same for an optional list.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes a present list as decimal strings (and an absent one as `null`).
        pub fn serialize<S: Serializer>(
            values: &Option<Vec<u64>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match values {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        /// Reads `null` or a list of decimal strings or integers.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u64>>, D::Error> {
            #[derive(Deserialize)]
            struct Wrapped(#[serde(with = "super")] Vec<u64>);
            Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
        }
    }

    /// Parses one decimal string as the module describes.
    pub fn parse(text: &str) -> Option<u64> {
        if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    }

    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<u64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of unsigned 64-bit integers (decimal strings or numbers)")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u64>, A::Error> {
            // Bounded by what the caller's input holds; a prime chain has a few dozen entries.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(Value(v)) = seq.next_element()? {
                out.push(v);
            }
            Ok(out)
        }
    }

    struct Value(u64);

    impl<'de> serde::Deserialize<'de> for Value {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(ValueVisitor).map(Value)
        }
    }

    struct ValueVisitor;

    impl Visitor<'_> for ValueVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an unsigned 64-bit integer as a decimal string or a number")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
}

/// Distribution of the secret key's coefficients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SecretDistribution {
    /// Uniform over {-1, 0, 1}: the distribution the security standard's tables assume.
    #[default]
    Ternary,
    /// Ternary with exactly `hamming_weight` non-zero coefficients (at least 192 when secure).
    SparseTernary {
        /// Number of non-zero coefficients.
        hamming_weight: usize,
    },
}

/// Serializable description of a parameter set, before validation.
///
/// Give either `log_q` (bit sizes; primes are generated deterministically) or `q` (explicit
/// primes), and likewise `log_p` or `p` for the special primes used by key switching.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParametersLiteral {
    /// log2 of the ring degree N.
    pub log_n: u32,
    /// Bit sizes of the ciphertext primes q_0 (base) .. q_L.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_q: Vec<u32>,
    /// Explicit ciphertext primes (alternative to `log_q`), written as decimal strings (see
    /// [`decimal`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "decimal")]
    pub q: Vec<u64>,
    /// Bit sizes of the special primes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_p: Vec<u32>,
    /// Explicit special primes (alternative to `log_p`), written as decimal strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "decimal")]
    pub p: Vec<u64>,
    /// log2 of the default encoding scale.
    pub log_scale: u32,
    /// Number of key-switching digits; defaults to ceil((L+1) / #special primes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnum: Option<usize>,
    /// Secret key distribution.
    #[serde(default)]
    pub secret: SecretDistribution,
    /// Targeted bit security, 128 (the default, also when absent), 192 or 256: `build` checks
    /// log2(QP) against that level's bound of the HE Security Standard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_bits: Option<u32>,
}

/// The security a parameter set was checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityLevel {
    /// Meets the 128-bit bound of the Homomorphic Encryption Security Standard.
    Bits128,
    /// Meets the 192-bit bound.
    Bits192,
    /// Meets the 256-bit bound.
    Bits256,
    /// Built through the test-only constructor: NOT secure, for fast tests only.
    InsecureTestOnly,
}

impl SecurityLevel {
    /// The secure levels, weakest first.
    pub const SECURE: [SecurityLevel; 3] = [Self::Bits128, Self::Bits192, Self::Bits256];

    /// The level of a bit count (128, 192 or 256).
    pub fn from_bits(bits: u32) -> Result<Self> {
        match bits {
            128 => Ok(Self::Bits128),
            192 => Ok(Self::Bits192),
            256 => Ok(Self::Bits256),
            _ => Err(Error::InvalidParameters(format!(
                "security of {bits} bits is not one of 128, 192, 256"
            ))),
        }
    }

    /// Bits of security, or `None` for test-only parameters.
    pub fn bits(self) -> Option<u32> {
        match self {
            Self::Bits128 => Some(128),
            Self::Bits192 => Some(192),
            Self::Bits256 => Some(256),
            Self::InsecureTestOnly => None,
        }
    }

    /// Whether the level is one of the secure ones.
    pub fn is_secure(self) -> bool {
        self != Self::InsecureTestOnly
    }

    /// The largest log2(QP) at this level for ring degree 2^`log_n` with a ternary secret (HE
    /// Security Standard, classical attacks); `None` for an unlisted degree or test-only level.
    pub fn max_log_qp(self, log_n: u32) -> Option<u32> {
        let row: [u32; 6] = match self {
            Self::Bits128 => [27, 54, 109, 218, 438, 881],
            Self::Bits192 => [19, 37, 75, 152, 305, 611],
            Self::Bits256 => [14, 29, 58, 118, 237, 476],
            Self::InsecureTestOnly => return None,
        };
        let i = usize::try_from(log_n.checked_sub(10)?).ok()?;
        row.get(i).copied()
    }
}

/// 128-bit security bound on log2(QP) for a ternary secret (HE Security Standard, classical).
pub fn max_log_qp_128(log_n: u32) -> Option<u32> {
    SecurityLevel::Bits128.max_log_qp(log_n)
}

/// Named, documented 128-bit presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Preset {
    /// N = 2^13, Q = `[40, 30×4]` bits, P = `[48]`, scale 2^30: depth 4, 4096 slots, dnum 5.
    /// log2(QP) = 208 ≤ 218. Small, fast keys for shallow networks.
    Pn13Depth4,
    /// N = 2^13, Q = `[30, 26×5]` bits, P = `[58]`, scale 2^26: depth 5, 4096 slots, dnum 3.
    /// log2(QP) ≈ 218 ≤ 218. Sized for the shipped CNNs: P covers every two-prime digit, and a
    /// seeded rotation key is about 0.67 MB. Values at level 0 must stay below 2^3 in magnitude.
    Pn13Depth5,
    /// N = 2^14, Q = `[55, 40×7]` bits, P = `[50, 50]`, scale 2^40: depth 7, 8192 slots, dnum 4.
    /// log2(QP) ≈ 435 ≤ 438. P exceeds every two-prime digit, so key switching adds little
    /// noise; a seeded rotation key is about 3.4 MiB.
    Pn14Depth7,
    /// N = 2^14, Q = `[60, 40×8]` bits, P = `[58]`, scale 2^40: depth 8, dnum 9 — the chain SEAL's
    /// examples use, kept for side-by-side benchmarks. log2(QP) = 438.
    Pn14SealChain,
    /// N = 2^15, Q = `[60, 40×16]` bits, P = `[60×3]`, scale 2^40: depth 16, 16384 slots, dnum 6.
    /// log2(QP) = 880 ≤ 881.
    Pn15Depth16,
}

impl Preset {
    /// All presets.
    pub const ALL: [Preset; 5] = [
        Preset::Pn13Depth4,
        Preset::Pn13Depth5,
        Preset::Pn14Depth7,
        Preset::Pn14SealChain,
        Preset::Pn15Depth16,
    ];

    /// The preset's name, as written in configuration (`PN13_DEPTH5`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Preset::Pn13Depth4 => "PN13_DEPTH4",
            Preset::Pn13Depth5 => "PN13_DEPTH5",
            Preset::Pn14Depth7 => "PN14_DEPTH7",
            Preset::Pn14SealChain => "PN14_SEAL_CHAIN",
            Preset::Pn15Depth16 => "PN15_DEPTH16",
        }
    }

    /// The preset of a name (case-insensitive).
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::InvalidParameters(format!(
                    "unknown preset {name:?} (known: {})",
                    Self::ALL.map(Preset::name).join(", ")
                ))
            })
    }

    /// The literal of the preset.
    pub fn literal(self) -> ParametersLiteral {
        let (log_n, log_q, log_p, log_scale, dnum) = match self {
            Preset::Pn13Depth4 => (13, vec![40, 30, 30, 30, 30], vec![48], 30, 5),
            Preset::Pn13Depth5 => (13, vec![30, 26, 26, 26, 26, 26], vec![58], 26, 3),
            Preset::Pn14Depth7 => (14, [vec![55], vec![40; 7]].concat(), vec![50, 50], 40, 4),
            Preset::Pn14SealChain => (14, [vec![60], vec![40; 8]].concat(), vec![58], 40, 9),
            Preset::Pn15Depth16 => (15, [vec![60], vec![40; 16]].concat(), vec![60; 3], 40, 6),
        };
        ParametersLiteral {
            log_n,
            log_q,
            q: vec![],
            log_p,
            p: vec![],
            log_scale,
            dnum: Some(dnum),
            secret: SecretDistribution::Ternary,
            security_bits: None,
        }
    }

    /// Builds the preset's parameters.
    pub fn build(self) -> Result<Arc<Parameters>> {
        self.literal().build()
    }
}

impl ParametersLiteral {
    /// Validates the literal, enforcing its security level (`security_bits`, 128 when absent),
    /// and builds the shared parameters.
    pub fn build(&self) -> Result<Arc<Parameters>> {
        let level = SecurityLevel::from_bits(self.security_bits.unwrap_or(128))?;
        Parameters::new(self, level).map(Arc::new)
    }

    /// Builds parameters WITHOUT the security check, for fast tests with small rings.
    /// The result is marked [`SecurityLevel::InsecureTestOnly`]; never use it for real data.
    #[cfg(any(test, feature = "insecure-test-params"))]
    pub fn build_insecure_for_tests(&self) -> Result<Arc<Parameters>> {
        Parameters::new(self, SecurityLevel::InsecureTestOnly).map(Arc::new)
    }
}

/// Fast RNS basis conversion tables from a set of primes to another (approximate, HPS-style:
/// the result may exceed the exact value by a small multiple of the source modulus).
#[derive(Clone, Debug)]
pub(crate) struct BasisConversion {
    /// Global indices of the source primes.
    pub from: Vec<usize>,
    /// Global indices of the target primes.
    pub to: Vec<usize>,
    /// (B / b_i)^{-1} mod b_i and its Shoup companion, per source prime.
    pub qhat_inv: Vec<(u64, u64)>,
    /// (B / b_i) mod t, indexed [target][source].
    pub qhat_mod: Vec<Vec<u64>>,
    /// Shoup companions of `qhat_mod`.
    pub qhat_mod_shoup: Vec<Vec<u64>>,
    /// 1 / b_i as floating point, to find the overflow multiple of B exactly.
    pub inv_from: Vec<f64>,
    /// [target][u] = (u · B) mod t for u in 0..=|from|: subtracted to center the result.
    pub b_multiples: Vec<Vec<u64>>,
}

impl BasisConversion {
    fn new(moduli: &[Modulus], from: Vec<usize>, to: Vec<usize>) -> Self {
        let mut qhat_inv = Vec::with_capacity(from.len());
        for &i in &from {
            let m = &moduli[i];
            let mut prod = 1u64;
            for &j in &from {
                if j != i {
                    prod = m.mul(prod, m.reduce(moduli[j].value()));
                }
            }
            let inv = m.inv(prod);
            qhat_inv.push((inv, m.shoup(inv)));
        }
        let qhat_mod = to
            .iter()
            .map(|&t| {
                let mt = &moduli[t];
                from.iter()
                    .map(|&i| {
                        from.iter()
                            .filter(|&&j| j != i)
                            .fold(1u64, |acc, &j| mt.mul(acc, mt.reduce(moduli[j].value())))
                    })
                    .collect()
            })
            .collect::<Vec<Vec<u64>>>();
        let qhat_mod_shoup = to
            .iter()
            .zip(&qhat_mod)
            .map(|(&t, row)| row.iter().map(|&f| moduli[t].shoup(f)).collect())
            .collect();
        let inv_from = from
            .iter()
            .map(|&i| 1.0 / moduli[i].value() as f64)
            .collect();
        let b_multiples = to
            .iter()
            .map(|&t| {
                let mt = &moduli[t];
                let b = from
                    .iter()
                    .fold(1u64, |acc, &j| mt.mul(acc, mt.reduce(moduli[j].value())));
                (0..=from.len() as u64).map(|u| mt.mul(u, b)).collect()
            })
            .collect();
        Self {
            from,
            to,
            qhat_inv,
            qhat_mod,
            qhat_mod_shoup,
            inv_from,
            b_multiples,
        }
    }
}

/// Immutable, validated CKKS parameters with all precomputed tables. Shared as `Arc<Parameters>`.
pub struct Parameters {
    literal: ParametersLiteral,
    log_n: u32,
    n: usize,
    /// Ciphertext primes followed by special primes ("global" prime indices).
    moduli: Vec<Modulus>,
    plans: Vec<Plan>,
    num_q: usize,
    default_scale: f64,
    dnum: usize,
    alpha: usize,
    security: SecurityLevel,
    id: [u8; 32],
    log_qp: f64,
    /// Exponent e_k of the k-th NTT evaluation point relative to the first (odd, mod 2N).
    ntt_exponent: Vec<u32>,
    /// NTT index of the evaluation point with a given odd exponent (size 2N).
    ntt_index_of_exponent: Vec<u32>,
    /// [level][i] = q_level^{-1} mod q_i (Shoup pair), i < level.
    rescale_inv: Vec<Vec<(u64, u64)>>,
    /// [level][digit] basis extension for key switching.
    modup: Vec<Vec<BasisConversion>>,
    /// [level] conversion from P to Q_level.
    moddown: Vec<BasisConversion>,
    /// [level] conversion from {q_level} ∪ P to Q_{level-1} (fused key switch + rescale);
    /// entry 0 is unused.
    moddown_rescale: Vec<BasisConversion>,
    /// [i] = P^{-1} mod q_i (Shoup pair).
    p_inv_mod_q: Vec<(u64, u64)>,
    /// [i] = P mod q_i.
    p_mod_q: Vec<u64>,
}

impl fmt::Debug for Parameters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parameters")
            .field("log_n", &self.log_n)
            .field("q", &self.q_primes())
            .field("p", &self.p_primes())
            .field("log_scale", &self.literal.log_scale)
            .field("dnum", &self.dnum)
            .field("security", &self.security)
            .field("id", &self.id_hex())
            .finish()
    }
}

fn resolve_primes(
    bits: &[u32],
    explicit: &[u64],
    n: usize,
    exclude: &[u64],
    what: &str,
) -> Result<Vec<u64>> {
    match (bits.is_empty(), explicit.is_empty()) {
        (false, false) => Err(Error::InvalidParameters(format!(
            "give either log_{what} or {what}, not both"
        ))),
        (true, true) => Ok(vec![]),
        (true, false) => Ok(explicit.to_vec()),
        (false, true) => {
            let mut out: Vec<u64> = Vec::with_capacity(bits.len());
            let mut counts: HashMap<u32, usize> = HashMap::new();
            for &b in bits {
                if !(MIN_PRIME_BITS..=MAX_PRIME_BITS).contains(&b) {
                    return Err(Error::InvalidParameters(format!(
                        "prime size {b} bits outside {MIN_PRIME_BITS}..={MAX_PRIME_BITS}"
                    )));
                }
                *counts.entry(b).or_default() += 1;
            }
            // Generate per width in one pass so equal widths get distinct primes.
            let mut by_width: HashMap<u32, Vec<u64>> = HashMap::new();
            let mut taken = exclude.to_vec();
            let mut widths: Vec<u32> = counts.keys().copied().collect();
            widths.sort_unstable();
            for b in widths {
                let ps = ntt_primes(b, n, counts[&b], &taken).ok_or_else(|| {
                    Error::InvalidParameters(format!(
                        "not enough NTT-friendly {b}-bit primes for N = {n}"
                    ))
                })?;
                taken.extend_from_slice(&ps);
                by_width.insert(b, ps);
            }
            for &b in bits {
                let v = by_width.get_mut(&b).ok_or_else(|| {
                    Error::InvalidParameters("internal prime generation error".into())
                })?;
                out.push(v.remove(0));
            }
            Ok(out)
        }
    }
}

impl Parameters {
    fn new(lit: &ParametersLiteral, security: SecurityLevel) -> Result<Self> {
        let secure = security.is_secure();
        let log_n = lit.log_n;
        let range = if secure { 10..=15 } else { 4..=16 };
        if !range.contains(&log_n) {
            return Err(Error::InvalidParameters(format!(
                "log_n = {log_n} outside {}..={}",
                range.start(),
                range.end()
            )));
        }
        let n = 1usize << log_n;
        let q = resolve_primes(&lit.log_q, &lit.q, n, &[], "q")?;
        let p = resolve_primes(&lit.log_p, &lit.p, n, &q, "p")?;
        if q.is_empty() {
            return Err(Error::InvalidParameters(
                "at least one ciphertext prime is required".into(),
            ));
        }
        if p.is_empty() {
            return Err(Error::InvalidParameters(
                "at least one special prime is required for key switching".into(),
            ));
        }
        let all: Vec<u64> = q.iter().chain(p.iter()).copied().collect();
        for (i, &x) in all.iter().enumerate() {
            let bits = 64 - x.leading_zeros();
            if !(MIN_PRIME_BITS..=MAX_PRIME_BITS).contains(&bits) {
                return Err(Error::InvalidParameters(format!(
                    "prime {x} has {bits} bits, outside {MIN_PRIME_BITS}..={MAX_PRIME_BITS}"
                )));
            }
            if !is_prime(x) {
                return Err(Error::InvalidParameters(format!("{x} is not prime")));
            }
            if x % (2 * n as u64) != 1 {
                return Err(Error::InvalidParameters(format!(
                    "prime {x} is not NTT-friendly: p mod 2N != 1 for N = {n}"
                )));
            }
            if all[..i].contains(&x) {
                return Err(Error::InvalidParameters(format!("prime {x} appears twice")));
            }
        }
        let log_qp: f64 = all.iter().map(|&x| (x as f64).log2()).sum();
        if let Some(bits) = security.bits() {
            let bound = security.max_log_qp(log_n).ok_or_else(|| {
                Error::InvalidParameters(format!("no {bits}-bit bound known for log_n = {log_n}"))
            })?;
            if log_qp > bound as f64 {
                return Err(Error::Insecure {
                    n,
                    log_qp,
                    bound,
                    security_bits: bits,
                });
            }
        }
        match lit.secret {
            SecretDistribution::Ternary => {}
            SecretDistribution::SparseTernary { hamming_weight } => {
                if hamming_weight == 0 || hamming_weight > n {
                    return Err(Error::InvalidParameters(format!(
                        "hamming weight {hamming_weight} outside 1..={n}"
                    )));
                }
                if secure && hamming_weight < 192 {
                    return Err(Error::InvalidParameters(format!(
                        "sparse secret with hamming weight {hamming_weight} < 192 is not 128-bit secure"
                    )));
                }
            }
        }
        let num_q = q.len();
        let num_p = p.len();
        let dnum = lit.dnum.unwrap_or(num_q.div_ceil(num_p));
        if dnum == 0 || dnum > num_q {
            return Err(Error::InvalidParameters(format!(
                "dnum = {dnum} outside 1..={num_q}"
            )));
        }
        let alpha = num_q.div_ceil(dnum);
        // Digits are alpha primes each; dnum must not leave an empty digit.
        if alpha * (dnum - 1) >= num_q {
            return Err(Error::InvalidParameters(format!(
                "dnum = {dnum} leaves an empty digit for {num_q} primes"
            )));
        }
        // Key-switching noise grows as (largest digit modulus) / P: refuse sets where it would
        // swamp the message.
        let log_p: f64 = p.iter().map(|&x| (x as f64).log2()).sum();
        let max_digit: f64 = q
            .chunks(alpha)
            .map(|d| d.iter().map(|&x| (x as f64).log2()).sum::<f64>())
            .fold(0.0, f64::max);
        if max_digit > log_p + 8.0 {
            return Err(Error::InvalidParameters(format!(
                "special primes too small: P has {log_p:.0} bits but a key-switching digit has {max_digit:.0}; add special primes or raise dnum"
            )));
        }
        if lit.log_scale == 0 || lit.log_scale > 60 {
            return Err(Error::InvalidParameters(format!(
                "log_scale = {} outside 1..=60",
                lit.log_scale
            )));
        }

        let moduli: Vec<Modulus> = all.iter().map(|&x| Modulus::new(x)).collect();
        let plans = all
            .iter()
            .map(|&x| {
                Plan::try_new(n, x).ok_or_else(|| {
                    Error::InvalidParameters(format!("no negacyclic NTT for prime {x} and N = {n}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let (ntt_exponent, ntt_index_of_exponent) = ntt_ordering(n, &moduli, &plans)?;

        // Rescale tables.
        let rescale_inv = (0..num_q)
            .map(|l| {
                (0..l)
                    .map(|i| {
                        let m = &moduli[i];
                        let inv = m.inv(m.reduce(moduli[l].value()));
                        (inv, m.shoup(inv))
                    })
                    .collect()
            })
            .collect();
        let p_idx: Vec<usize> = (num_q..num_q + num_p).collect();
        let modup = (0..num_q)
            .map(|l| {
                (0..dnum)
                    .filter_map(|d| {
                        let lo = d * alpha;
                        let hi = ((d + 1) * alpha).min(l + 1);
                        if lo >= hi {
                            return None;
                        }
                        let from: Vec<usize> = (lo..hi).collect();
                        let to: Vec<usize> = (0..=l)
                            .filter(|i| !(lo..hi).contains(i))
                            .chain(p_idx.iter().copied())
                            .collect();
                        Some(BasisConversion::new(&moduli, from, to))
                    })
                    .collect()
            })
            .collect();
        let moddown = (0..num_q)
            .map(|l| BasisConversion::new(&moduli, p_idx.clone(), (0..=l).collect()))
            .collect();
        let moddown_rescale = (0..num_q)
            .map(|l| {
                let from: Vec<usize> = std::iter::once(l).chain(p_idx.iter().copied()).collect();
                BasisConversion::new(&moduli, from, (0..l).collect())
            })
            .collect();
        let mut p_inv_mod_q = Vec::with_capacity(num_q);
        let mut p_mod_q = Vec::with_capacity(num_q);
        for m in &moduli[..num_q] {
            let pm = p.iter().fold(1u64, |acc, &x| m.mul(acc, m.reduce(x)));
            let inv = m.inv(pm);
            p_mod_q.push(pm);
            p_inv_mod_q.push((inv, m.shoup(inv)));
        }

        // Canonical literal with explicit primes, so the id does not depend on how primes were given.
        let canonical = ParametersLiteral {
            log_n,
            log_q: vec![],
            q: q.clone(),
            log_p: vec![],
            p: p.clone(),
            log_scale: lit.log_scale,
            dnum: Some(dnum),
            secret: lit.secret,
            security_bits: security.bits().filter(|&b| b != 128),
        };
        let id = parameter_id(&canonical, security);
        Ok(Self {
            literal: canonical,
            log_n,
            n,
            moduli,
            plans,
            num_q,
            default_scale: 2f64.powi(lit.log_scale as i32),
            dnum,
            alpha,
            security,
            id,
            log_qp,
            ntt_exponent,
            ntt_index_of_exponent,
            rescale_inv,
            modup,
            moddown,
            moddown_rescale,
            p_inv_mod_q,
            p_mod_q,
        })
    }

    /// The canonical literal (explicit primes) these parameters were built from.
    pub fn literal(&self) -> &ParametersLiteral {
        &self.literal
    }
    /// Ring degree N.
    pub fn n(&self) -> usize {
        self.n
    }
    /// log2 N.
    pub fn log_n(&self) -> u32 {
        self.log_n
    }
    /// Number of complex slots, N/2.
    pub fn slots(&self) -> usize {
        self.n / 2
    }
    /// Highest ciphertext level L (number of ciphertext primes minus one).
    pub fn max_level(&self) -> usize {
        self.num_q - 1
    }
    /// Ciphertext primes.
    pub fn q_primes(&self) -> Vec<u64> {
        self.moduli[..self.num_q]
            .iter()
            .map(|m| m.value())
            .collect()
    }
    /// Special primes.
    pub fn p_primes(&self) -> Vec<u64> {
        self.moduli[self.num_q..]
            .iter()
            .map(|m| m.value())
            .collect()
    }
    /// Default encoding scale.
    pub fn default_scale(&self) -> f64 {
        self.default_scale
    }
    /// Number of key-switching digits.
    pub fn dnum(&self) -> usize {
        self.dnum
    }
    /// Total modulus bits log2(QP).
    pub fn log_qp(&self) -> f64 {
        self.log_qp
    }
    /// log2 of the ciphertext modulus at a level.
    pub fn log_q_at(&self, level: usize) -> f64 {
        self.moduli[..=level.min(self.num_q - 1)]
            .iter()
            .map(|m| (m.value() as f64).log2())
            .sum()
    }
    /// Security level.
    pub fn security(&self) -> SecurityLevel {
        self.security
    }
    /// Secret distribution.
    pub fn secret_distribution(&self) -> SecretDistribution {
        self.literal.secret
    }
    /// Stable identifier: SHA-256 of the canonical parameter encoding.
    pub fn id(&self) -> [u8; 32] {
        self.id
    }
    /// Hex form of [`Parameters::id`].
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    // ----- crate-internal accessors -----
    pub(crate) fn num_q(&self) -> usize {
        self.num_q
    }
    pub(crate) fn num_p(&self) -> usize {
        self.moduli.len() - self.num_q
    }
    pub(crate) fn alpha(&self) -> usize {
        self.alpha
    }
    pub(crate) fn modulus(&self, i: usize) -> &Modulus {
        &self.moduli[i]
    }
    pub(crate) fn plan(&self, i: usize) -> &Plan {
        &self.plans[i]
    }
    pub(crate) fn rescale_inv(&self, level: usize) -> &[(u64, u64)] {
        &self.rescale_inv[level]
    }
    pub(crate) fn modup(&self, level: usize) -> &[BasisConversion] {
        &self.modup[level]
    }
    pub(crate) fn moddown(&self, level: usize) -> &BasisConversion {
        &self.moddown[level]
    }
    pub(crate) fn moddown_rescale(&self, level: usize) -> &BasisConversion {
        &self.moddown_rescale[level]
    }
    pub(crate) fn p_inv_mod_q(&self, i: usize) -> (u64, u64) {
        self.p_inv_mod_q[i]
    }
    pub(crate) fn p_mod_q(&self, i: usize) -> u64 {
        self.p_mod_q[i]
    }
    /// Global prime indices of the extended basis Q_level ∪ P.
    pub(crate) fn ext_indices(&self, level: usize) -> Vec<usize> {
        (0..=level).chain(self.num_q..self.moduli.len()).collect()
    }
    /// Permutation of NTT slots realising X -> X^g: out[k] = in[perm[k]].
    pub(crate) fn automorphism_permutation(&self, g: u64) -> Vec<u32> {
        let two_n = 2 * self.n as u64;
        self.ntt_exponent
            .iter()
            .map(|&e| self.ntt_index_of_exponent[((e as u64 * g) % two_n) as usize])
            .collect()
    }
    /// Galois element of a left rotation by `step` slots (negative: right).
    pub fn galois_element(&self, step: i64) -> u64 {
        let slots = self.slots() as i64;
        let k = step.rem_euclid(slots) as u64;
        let two_n = 2 * self.n as u64;
        let mut g = 1u64;
        let mut base = 5u64;
        let mut e = k;
        while e > 0 {
            if e & 1 == 1 {
                g = g * base % two_n;
            }
            base = base * base % two_n;
            e >>= 1;
        }
        g
    }
    /// Galois element of complex conjugation.
    pub fn galois_element_conjugate(&self) -> u64 {
        2 * self.n as u64 - 1
    }
}

fn parameter_id(lit: &ParametersLiteral, security: SecurityLevel) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cipherinfer/ckks/parameters/v1");
    h.update(lit.log_n.to_le_bytes());
    h.update((lit.q.len() as u32).to_le_bytes());
    for x in &lit.q {
        h.update(x.to_le_bytes());
    }
    h.update((lit.p.len() as u32).to_le_bytes());
    for x in &lit.p {
        h.update(x.to_le_bytes());
    }
    h.update(lit.log_scale.to_le_bytes());
    h.update((lit.dnum.unwrap_or(0) as u32).to_le_bytes());
    match lit.secret {
        SecretDistribution::Ternary => h.update([0u8]),
        SecretDistribution::SparseTernary { hamming_weight } => {
            h.update([1u8]);
            h.update((hamming_weight as u64).to_le_bytes());
        }
    }
    h.update([match security {
        SecurityLevel::Bits128 => 0u8,
        SecurityLevel::InsecureTestOnly => 1u8,
        SecurityLevel::Bits192 => 2u8,
        SecurityLevel::Bits256 => 3u8,
    }]);
    h.finalize().into()
}

/// Learns the order in which the NTT library lists evaluation points, so automorphisms can be
/// applied in the NTT domain as permutations. Verifies all primes share the same order.
fn ntt_ordering(n: usize, moduli: &[Modulus], plans: &[Plan]) -> Result<(Vec<u32>, Vec<u32>)> {
    let two_n = 2 * n;
    let mut reference: Option<Vec<u32>> = None;
    for (m, plan) in moduli.iter().zip(plans) {
        let mut x = vec![0u64; n];
        x[1] = 1;
        plan.fwd(&mut x);
        let psi = x[0];
        let mut exp_of: HashMap<u64, u32> = HashMap::with_capacity(n);
        let psi2 = m.mul(psi, psi);
        let mut cur = psi;
        for j in 0..n {
            exp_of.insert(cur, (2 * j + 1) as u32);
            cur = m.mul(cur, psi2);
        }
        let e: Vec<u32> = x
            .iter()
            .map(|v| {
                exp_of.get(v).copied().ok_or_else(|| {
                    Error::InvalidParameters("NTT evaluation points are not 2N-th roots".into())
                })
            })
            .collect::<Result<_>>()?;
        match &reference {
            None => reference = Some(e),
            Some(r) if *r == e => {}
            Some(_) => {
                return Err(Error::InvalidParameters(
                    "NTT plans list evaluation points in different orders".into(),
                ));
            }
        }
    }
    let e = reference.ok_or_else(|| Error::InvalidParameters("no primes".into()))?;
    let mut idx = vec![u32::MAX; two_n];
    for (k, &ek) in e.iter().enumerate() {
        idx[ek as usize] = k as u32;
    }
    Ok((e, idx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_build_and_are_secure() {
        for p in Preset::ALL {
            let params = p.build().expect("preset builds");
            assert_eq!(params.security(), SecurityLevel::Bits128);
            let bound = max_log_qp_128(params.log_n()).expect("bound");
            assert!(params.log_qp() <= bound as f64, "{p:?}");
        }
        let p14 = Preset::Pn14Depth7.build().expect("builds");
        assert_eq!(p14.max_level(), 7);
        assert_eq!(p14.dnum(), 4);
    }

    #[test]
    fn weak_parameters_are_rejected_with_clear_message() {
        let mut lit = Preset::Pn14Depth7.literal();
        lit.log_q.push(40);
        let err = lit.build().expect_err("too many bits");
        assert_eq!(err.code(), "insecure_parameters");
        let msg = err.to_string();
        assert!(msg.contains("475") && msg.contains("438"), "{msg}");
        let small = ParametersLiteral {
            log_n: 9,
            log_q: vec![30],
            q: vec![],
            log_p: vec![30],
            p: vec![],
            log_scale: 20,
            dnum: None,
            secret: SecretDistribution::Ternary,
            security_bits: None,
        };
        assert!(small.build().is_err());
        assert!(small.build_insecure_for_tests().is_ok());
        let mut sparse = Preset::Pn13Depth4.literal();
        sparse.secret = SecretDistribution::SparseTernary { hamming_weight: 64 };
        assert!(sparse.build().is_err());
    }

    #[test]
    fn literal_round_trips_and_id_is_stable() {
        let json = r#"{"log_n":13,"log_q":[40,30,30,30,30],"log_p":[48],"log_scale":30,"dnum":5}"#;
        let lit: ParametersLiteral = serde_json::from_str(json).expect("parse");
        let a = lit.build().expect("build");
        let b = Preset::Pn13Depth4.build().expect("build");
        assert_eq!(a.id(), b.id());
        // Explicit primes give the same id.
        let explicit: ParametersLiteral =
            serde_json::from_str(&serde_json::to_string(a.literal()).expect("ser")).expect("de");
        assert_eq!(explicit.build().expect("build").id(), a.id());
        let mut other = lit.clone();
        other.log_scale = 31;
        assert_ne!(other.build().expect("build").id(), a.id());
        assert!(serde_json::from_str::<ParametersLiteral>(r#"{"log_n":13,"bogus":1}"#).is_err());
    }

    #[test]
    fn bad_primes_rejected() {
        let mut lit = Preset::Pn13Depth4.literal();
        lit.log_q.clear();
        lit.q = vec![1_099_511_627_689]; // not NTT-friendly for N = 2^13
        assert!(lit.build().is_err());
        let params = Preset::Pn13Depth4.build().expect("builds");
        let mut dup = Preset::Pn13Depth4.literal();
        dup.log_q.clear();
        dup.q = vec![params.q_primes()[1], params.q_primes()[1]];
        assert!(dup.build().is_err());
    }
}
