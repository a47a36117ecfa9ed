//! Encryption with the public key, seeded encryption with the secret key, and decryption.

use std::fmt;
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use zeroize::Zeroizing;

use crate::ciphertext::{Ciphertext, Plaintext};
use crate::error::{Error, Result};
use crate::keys::{PublicKey, SecretKey, check_params};
use crate::params::Parameters;
use crate::ring;
use crate::sampling::{
    expand_uniform, os_rng, os_seed, sample_gaussian, sample_ternary, small_to_ntt,
};

/// Encrypts plaintexts under a public key.
pub struct Encryptor {
    pk: PublicKey,
    rng: ChaCha20Rng,
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor")
            .field("pk", &self.pk)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// An encryptor for a public key, with an OS-seeded generator.
    pub fn new(pk: PublicKey) -> Result<Self> {
        Ok(Self { pk, rng: os_rng()? })
    }

    /// Encrypts `pt`: `(b·u + e_0 + m, a·u + e_1)` with ternary `u` and Gaussian errors.
    pub fn encrypt(&mut self, pt: &Plaintext) -> Result<Ciphertext> {
        let params = &self.pk.params;
        check_params(params, &pt.params)?;
        let n = params.n();
        let idx = pt_indices(pt);
        let k = idx.len();
        let u: Zeroizing<Vec<i64>> = Zeroizing::new(
            sample_ternary(n, &mut self.rng)
                .into_iter()
                .map(i64::from)
                .collect(),
        );
        let u = Zeroizing::new(small_to_ntt(params, &u, &idx));
        let e0 = Zeroizing::new(sample_gaussian(n, &mut self.rng));
        let e1 = Zeroizing::new(sample_gaussian(n, &mut self.rng));
        let mut c0 = small_to_ntt(params, &e0, &idx);
        let mut c1 = small_to_ntt(params, &e1, &idx);
        ring::mul_add_assign(params, &mut c0, &self.pk.b[..k * n], &u, &idx);
        ring::mul_add_assign(params, &mut c1, &self.pk.a[..k * n], &u, &idx);
        ring::add_assign(params, &mut c0, &pt.poly, &idx);
        Ok(Ciphertext {
            params: params.clone(),
            polys: vec![c0, c1],
            level: pt.level,
            scale: pt.scale,
            seed: None,
        })
    }
}

fn pt_indices(pt: &Plaintext) -> Vec<usize> {
    (0..=pt.level).collect()
}

/// Encrypts with the secret key, producing seeded ciphertexts (half size on the wire). Lives
/// only where the secret key lives; [`Decryptor`] is the other role of the same key.
pub struct SymmetricEncryptor {
    sk: Arc<SecretKey>,
    rng: ChaCha20Rng,
}

impl fmt::Debug for SymmetricEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SymmetricEncryptor").finish_non_exhaustive()
    }
}

/// Decrypts with the secret key. Lives only where the secret key lives.
pub struct Decryptor {
    sk: Arc<SecretKey>,
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor").finish_non_exhaustive()
    }
}

/// The two roles of one secret key: a [`SymmetricEncryptor`] and a [`Decryptor`] sharing it
/// (zeroized when both are dropped).
pub fn secret_key_pair(sk: SecretKey) -> Result<(SymmetricEncryptor, Decryptor)> {
    let sk = Arc::new(sk);
    Ok((
        SymmetricEncryptor::new(Arc::clone(&sk))?,
        Decryptor::new(sk)?,
    ))
}

impl SymmetricEncryptor {
    /// A symmetric encryptor with the secret key, with an OS-seeded generator for its errors.
    pub fn new(sk: impl Into<Arc<SecretKey>>) -> Result<Self> {
        Ok(Self {
            sk: sk.into(),
            rng: os_rng()?,
        })
    }

    /// The parameters.
    pub fn parameters(&self) -> &Arc<Parameters> {
        &self.sk.params
    }

    /// Symmetric encryption `(-a·s + e + m, a)` with `a` expanded from a fresh seed.
    pub fn encrypt(&mut self, pt: &Plaintext) -> Result<Ciphertext> {
        let params = self.sk.params.clone();
        check_params(&params, &pt.params)?;
        let idx = pt_indices(pt);
        let seed = os_seed()?;
        let a = expand_uniform(&params, &seed, 0, &idx);
        let e = Zeroizing::new(sample_gaussian(params.n(), &mut self.rng));
        let mut c0 = small_to_ntt(&params, &e, &idx);
        let s = self.sk.limbs(&idx);
        let as_ = Zeroizing::new(ring::mul(&params, &a, &s, &idx));
        ring::sub_assign(&params, &mut c0, &as_, &idx);
        ring::add_assign(&params, &mut c0, &pt.poly, &idx);
        Ok(Ciphertext {
            params,
            polys: vec![c0, a],
            level: pt.level,
            scale: pt.scale,
            seed: Some(seed),
        })
    }
}

impl Decryptor {
    /// A decryptor with the secret key.
    pub fn new(sk: impl Into<Arc<SecretKey>>) -> Result<Self> {
        Ok(Self { sk: sk.into() })
    }

    /// The parameters.
    pub fn parameters(&self) -> &Arc<Parameters> {
        &self.sk.params
    }

    /// The secret key.
    pub fn secret_key(&self) -> &SecretKey {
        &self.sk
    }

    /// Decrypts to a plaintext: `c_0 + c_1·s (+ c_2·s²)`.
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Plaintext> {
        let params = &self.sk.params;
        check_params(params, &ct.params)?;
        if ct.polys.is_empty() || ct.polys.len() > 3 {
            return Err(Error::CiphertextDegree {
                found: ct.polys.len().saturating_sub(1),
                expected: 1,
            });
        }
        let idx = ct.indices();
        let s = self.sk.limbs(&idx);
        let mut m = ct.polys[0].clone();
        let mut s_pow = Zeroizing::new(s.to_vec());
        for (j, c) in ct.polys.iter().enumerate().skip(1) {
            if j > 1 {
                ring::mul_assign(params, &mut s_pow, &s, &idx);
            }
            ring::mul_add_assign(params, &mut m, c, &s_pow, &idx);
        }
        Ok(Plaintext {
            params: params.clone(),
            poly: m,
            level: ct.level,
            scale: ct.scale,
        })
    }
}
