//! Keys: secret (zeroized, never printed), public, and hybrid key-switching keys for
//! relinearization, rotations and conjugation. Every public key stores the seed of its uniform
//! part, so its serialized form is half the size.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::params::Parameters;
use crate::ring;
use crate::sampling::{self, expand_uniform, os_rng, os_seed, sample_gaussian, small_to_ntt};

/// The secret key. Zeroized on drop; it implements neither `Debug` nor `Serialize`: the only
/// way out is [`SecretKey::export_bytes`].
#[allow(missing_debug_implementations)] // deliberately no Debug: secrets never print
pub struct SecretKey {
    pub(crate) params: Arc<Parameters>,
    pub(crate) coeffs: Vec<i8>,
    /// NTT form over all primes (ciphertext and special).
    pub(crate) ntt: Vec<u64>,
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.coeffs.zeroize();
        self.ntt.zeroize();
    }
}

impl SecretKey {
    pub(crate) fn from_coeffs(params: Arc<Parameters>, coeffs: Vec<i8>) -> Self {
        let all: Vec<usize> = (0..params.num_q() + params.num_p()).collect();
        let wide: Zeroizing<Vec<i64>> = Zeroizing::new(coeffs.iter().map(|&c| c as i64).collect());
        let ntt = small_to_ntt(&params, &wide, &all);
        Self {
            params,
            coeffs,
            ntt,
        }
    }

    /// The parameters the key belongs to.
    pub fn parameters(&self) -> &Arc<Parameters> {
        &self.params
    }

    /// NTT-domain limb of the secret for a global prime index.
    pub(crate) fn limb(&self, i: usize) -> &[u64] {
        ring::select_limbs(&self.ntt, self.params.n(), i)
    }

    /// The secret restricted to the given primes (NTT domain).
    pub(crate) fn limbs(&self, indices: &[usize]) -> Zeroizing<Vec<u64>> {
        let mut out = Zeroizing::new(Vec::with_capacity(indices.len() * self.params.n()));
        for &i in indices {
            out.extend_from_slice(self.limb(i));
        }
        out
    }
}

/// A public encryption key `(b, a) = (-a·s + e, a)` over the ciphertext primes; `a` is expanded
/// from `seed`.
#[derive(Clone)]
pub struct PublicKey {
    pub(crate) params: Arc<Parameters>,
    pub(crate) b: Vec<u64>,
    pub(crate) a: Vec<u64>,
    pub(crate) seed: [u8; 32],
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("params", &self.params.id_hex())
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// Rebuilds a public key from `b` and the seed of `a` (used by decoders).
    pub(crate) fn from_parts(params: Arc<Parameters>, b: Vec<u64>, seed: [u8; 32]) -> Self {
        let q: Vec<usize> = (0..params.num_q()).collect();
        let a = expand_uniform(&params, &seed, 0, &q);
        Self { params, b, a, seed }
    }
}

/// A hybrid key-switching key: for each digit `j`, `(b_j, a_j)` with `b_j = -a_j·s + e_j +
/// P·g_j·s'`, where `g_j` is the digit's CRT gadget; `a_j` is expanded from `seed` (stream
/// `1 + j`; stream 0 is the public key's).
///
/// **Level-aware keys.** A key with `d ≤ dnum` digits holds the residues of `q_0..=q_top` and of
/// P only, `top = min(d·α, L + 1) − 1`: it switches ciphertexts at levels up to `top`, which is all
/// a rotation used only low in the circuit needs, at `d·(top + 1 + |P|)` residue polynomials
/// instead of `dnum·(L + 1 + |P|)`. The gadget's residues do not depend on the other primes, so
/// such a key is exactly the full key's restriction.
#[derive(Clone)]
pub struct SwitchingKey {
    pub(crate) params: Arc<Parameters>,
    pub(crate) b: Vec<Vec<u64>>,
    pub(crate) a: Vec<Vec<u64>>,
    pub(crate) seed: [u8; 32],
}

impl fmt::Debug for SwitchingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwitchingKey")
            .field("params", &self.params.id_hex())
            .field("digits", &self.b.len())
            .finish_non_exhaustive()
    }
}

/// Highest level a key of `digits` digits serves.
pub(crate) fn key_top(params: &Parameters, digits: usize) -> usize {
    (digits * params.alpha()).clamp(1, params.num_q()) - 1
}

/// Digits and residue polynomials per digit (ciphertext primes up to the key's top level, then
/// the special primes) of a key serving levels up to `level`.
pub fn key_shape_for_level(params: &Parameters, level: usize) -> (usize, usize) {
    let digits = key_digits_for_level(params, level);
    (digits, key_top(params, digits) + 1 + params.num_p())
}

/// Digits a key needs to switch ciphertexts at levels up to `level`.
pub fn key_digits_for_level(params: &Parameters, level: usize) -> usize {
    (level.min(params.max_level()) + 1)
        .div_ceil(params.alpha())
        .clamp(1, params.dnum())
}

impl SwitchingKey {
    pub(crate) fn expand_a(params: &Parameters, seed: &[u8; 32], digits: usize) -> Vec<Vec<u64>> {
        let residues = params.ext_indices(key_top(params, digits));
        (0..digits)
            .map(|j| expand_uniform(params, seed, 1 + j as u64, &residues))
            .collect()
    }

    /// Digits of the key (the parameters' `dnum` for a full key).
    pub fn digits(&self) -> usize {
        self.b.len()
    }

    /// Highest level the key switches.
    pub fn max_level(&self) -> usize {
        key_top(&self.params, self.b.len())
    }

    /// Bytes of residues the key holds in memory (both halves of every digit).
    pub fn memory_bytes(&self) -> usize {
        self.b
            .iter()
            .chain(&self.a)
            .map(|p| p.len() * std::mem::size_of::<u64>())
            .sum()
    }

    /// Where residue `g` (global prime index) sits in the key's polynomials.
    pub(crate) fn position(&self, g: usize) -> usize {
        let top = self.max_level();
        if g <= top {
            g
        } else {
            top + 1 + (g - self.params.num_q())
        }
    }

    /// Rebuilds a key from its `b` polynomials and seed (the only constructor decoders use).
    pub(crate) fn from_parts(params: Arc<Parameters>, b: Vec<Vec<u64>>, seed: [u8; 32]) -> Self {
        let a = Self::expand_a(&params, &seed, b.len());
        Self { params, b, a, seed }
    }
}

/// Relinearization key: switches from s² to s.
#[derive(Clone, Debug)]
pub struct RelinearizationKey(pub(crate) SwitchingKey);

impl RelinearizationKey {
    /// Highest level the key serves.
    pub fn max_level(&self) -> usize {
        self.0.max_level()
    }
}

/// Galois key for the automorphism X -> X^g (a rotation or conjugation): switches from σ_g(s)
/// to s.
#[derive(Clone, Debug)]
pub struct GaloisKey {
    pub(crate) galois_element: u64,
    pub(crate) key: SwitchingKey,
}

impl GaloisKey {
    /// Assembles a Galois key from its element and switching key (used by decoders).
    pub(crate) fn from_parts(galois_element: u64, key: SwitchingKey) -> Self {
        Self {
            galois_element,
            key,
        }
    }

    /// The Galois element g of the automorphism X -> X^g.
    pub fn galois_element(&self) -> u64 {
        self.galois_element
    }

    /// Highest level the key serves.
    pub fn max_level(&self) -> usize {
        self.key.max_level()
    }
}

/// The public evaluation keys a server needs: relinearization and any Galois keys.
#[derive(Clone, Debug)]
pub struct EvaluationKeys {
    pub(crate) params: Arc<Parameters>,
    pub(crate) relin: Option<RelinearizationKey>,
    pub(crate) galois: BTreeMap<u64, GaloisKey>,
}

impl EvaluationKeys {
    /// An empty key set for the parameters.
    pub fn new(params: Arc<Parameters>) -> Self {
        Self {
            params,
            relin: None,
            galois: BTreeMap::new(),
        }
    }
    /// Adds or replaces the relinearization key.
    pub fn set_relinearization_key(&mut self, k: RelinearizationKey) -> Result<()> {
        check_params(&self.params, &k.0.params)?;
        self.relin = Some(k);
        Ok(())
    }
    /// Adds or replaces a Galois key.
    pub fn insert_galois_key(&mut self, k: GaloisKey) -> Result<()> {
        check_params(&self.params, &k.key.params)?;
        self.galois.insert(k.galois_element, k);
        Ok(())
    }
    /// The parameters the keys belong to.
    pub fn parameters(&self) -> &Arc<Parameters> {
        &self.params
    }
    /// The relinearization key, if present.
    pub fn relinearization_key(&self) -> Option<&RelinearizationKey> {
        self.relin.as_ref()
    }
    /// Galois elements for which a key is present.
    pub fn galois_elements(&self) -> Vec<u64> {
        self.galois.keys().copied().collect()
    }
    /// The Galois key for an element.
    pub fn galois_key(&self, g: u64) -> Option<&GaloisKey> {
        self.galois.get(&g)
    }
    /// Bytes of residues the keys hold in memory, as allocated.
    pub fn memory_bytes(&self) -> usize {
        self.relin.as_ref().map_or(0, |k| k.0.memory_bytes())
            + self
                .galois
                .values()
                .map(|k| k.key.memory_bytes())
                .sum::<usize>()
    }
    /// Rotation steps (in `0..slots`) covered by the Galois keys present.
    pub fn rotation_steps(&self) -> Vec<i64> {
        let slots = self.params.slots() as i64;
        (1..slots)
            .filter(|&k| self.galois.contains_key(&self.params.galois_element(k)))
            .collect()
    }
}

pub(crate) fn check_params(expected: &Parameters, found: &Parameters) -> Result<()> {
    if expected.id() != found.id() {
        return Err(Error::ParameterMismatch {
            expected: expected.id_hex()[..16].to_string(),
            found: found.id_hex()[..16].to_string(),
        });
    }
    Ok(())
}

/// Generates keys from an OS-seeded ChaCha20 generator.
pub struct KeyGenerator {
    params: Arc<Parameters>,
    rng: ChaCha20Rng,
}

impl fmt::Debug for KeyGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyGenerator")
            .field("params", &self.params.id_hex())
            .finish_non_exhaustive()
    }
}

impl KeyGenerator {
    /// A key generator seeded by the operating system.
    pub fn new(params: Arc<Parameters>) -> Result<Self> {
        Ok(Self {
            params,
            rng: os_rng()?,
        })
    }

    /// The parameters keys are made for.
    pub fn parameters(&self) -> &Arc<Parameters> {
        &self.params
    }

    /// A fresh secret key.
    pub fn secret_key(&mut self) -> SecretKey {
        let coeffs = sampling::sample_secret(&self.params, &mut self.rng);
        SecretKey::from_coeffs(self.params.clone(), coeffs)
    }

    /// A public encryption key for `sk`.
    pub fn public_key(&mut self, sk: &SecretKey) -> Result<PublicKey> {
        check_params(&self.params, &sk.params)?;
        let params = &self.params;
        let q: Vec<usize> = (0..params.num_q()).collect();
        let seed = os_seed()?;
        let a = expand_uniform(params, &seed, 0, &q);
        let e = Zeroizing::new(sample_gaussian(params.n(), &mut self.rng));
        let mut b = small_to_ntt(params, &e, &q);
        let s = sk.limbs(&q);
        let mut as_ = ring::mul(params, &a, &s, &q);
        ring::sub_assign(params, &mut b, &as_, &q);
        as_.zeroize();
        Ok(PublicKey {
            params: params.clone(),
            b,
            a,
            seed,
        })
    }

    /// A switching key of `digits` digits from `s_from` (NTT over all primes) to `sk`.
    fn switching_key(
        &mut self,
        sk: &SecretKey,
        s_from: &[u64],
        digits: usize,
    ) -> Result<SwitchingKey> {
        let params = self.params.clone();
        let n = params.n();
        let residues = params.ext_indices(key_top(&params, digits));
        let s = sk.limbs(&residues);
        let alpha = params.alpha();
        let seed = os_seed()?;
        let a = SwitchingKey::expand_a(&params, &seed, digits);
        let mut b = Vec::with_capacity(digits);
        for (j, aj) in a.iter().enumerate() {
            let e = Zeroizing::new(sample_gaussian(n, &mut self.rng));
            let mut bj = small_to_ntt(&params, &e, &residues);
            let mut as_ = ring::mul(&params, aj, &s, &residues);
            ring::sub_assign(&params, &mut bj, &as_, &residues);
            as_.zeroize();
            for t in (j * alpha)..((j + 1) * alpha).min(params.num_q()) {
                let m = params.modulus(t);
                let pm = params.p_mod_q(t);
                let pms = m.shoup(pm);
                let limb = &mut bj[t * n..(t + 1) * n];
                for (x, &s) in limb.iter_mut().zip(&s_from[t * n..(t + 1) * n]) {
                    *x = m.add(*x, m.mul_shoup(s, pm, pms));
                }
            }
            b.push(bj);
        }
        Ok(SwitchingKey { params, b, a, seed })
    }

    /// The relinearization key for `sk`.
    pub fn relinearization_key(&mut self, sk: &SecretKey) -> Result<RelinearizationKey> {
        check_params(&self.params, &sk.params)?;
        let all: Vec<usize> = (0..self.params.num_q() + self.params.num_p()).collect();
        let s2 = Zeroizing::new(ring::mul(&self.params, &sk.ntt, &sk.ntt, &all));
        Ok(RelinearizationKey(self.switching_key(
            sk,
            &s2,
            self.params.dnum(),
        )?))
    }

    /// The Galois key for X -> X^g.
    pub fn galois_key(&mut self, sk: &SecretKey, g: u64) -> Result<GaloisKey> {
        self.galois_key_to_level(sk, g, self.params.max_level())
    }

    /// The Galois key for X -> X^g serving ciphertexts at levels up to `level` only (smaller:
    /// see [`SwitchingKey`]).
    pub fn galois_key_to_level(
        &mut self,
        sk: &SecretKey,
        g: u64,
        level: usize,
    ) -> Result<GaloisKey> {
        check_params(&self.params, &sk.params)?;
        let two_n = 2 * self.params.n() as u64;
        if g.is_multiple_of(2) || g >= two_n {
            return Err(Error::InvalidParameters(format!(
                "Galois element {g} must be odd and below 2N = {two_n}"
            )));
        }
        let perm = self.params.automorphism_permutation(g);
        let s_g = Zeroizing::new(ring::permute(&sk.ntt, &perm, self.params.n()));
        let digits = key_digits_for_level(&self.params, level);
        Ok(GaloisKey {
            galois_element: g,
            key: self.switching_key(sk, &s_g, digits)?,
        })
    }

    /// Evaluation keys: relinearization (if asked), one Galois key per distinct rotation step,
    /// and the conjugation key (if asked), all serving every level.
    pub fn evaluation_keys(
        &mut self,
        sk: &SecretKey,
        relinearization: bool,
        rotation_steps: &[i64],
        conjugation: bool,
    ) -> Result<EvaluationKeys> {
        let top = self.params.max_level();
        let steps: Vec<(i64, usize)> = rotation_steps.iter().map(|&k| (k, top)).collect();
        self.evaluation_keys_to_levels(sk, relinearization, &steps, conjugation)
    }

    /// [`KeyGenerator::evaluation_keys`] with each rotation key serving levels up to the one
    /// given with its step (a step listed twice gets the higher level).
    pub fn evaluation_keys_to_levels(
        &mut self,
        sk: &SecretKey,
        relinearization: bool,
        rotation_steps: &[(i64, usize)],
        conjugation: bool,
    ) -> Result<EvaluationKeys> {
        let mut keys = EvaluationKeys::new(self.params.clone());
        if relinearization {
            keys.relin = Some(self.relinearization_key(sk)?);
        }
        let mut elements: BTreeMap<u64, usize> = BTreeMap::new();
        let mut want = |g: u64, level: usize| {
            if g != 1 {
                let l = elements.entry(g).or_insert(level);
                *l = (*l).max(level);
            }
        };
        for &(k, level) in rotation_steps {
            want(self.params.galois_element(k), level);
        }
        if conjugation {
            want(
                self.params.galois_element_conjugate(),
                self.params.max_level(),
            );
        }
        for (g, level) in elements {
            let k = self.galois_key_to_level(sk, g, level)?;
            keys.galois.insert(g, k);
        }
        Ok(keys)
    }
}
