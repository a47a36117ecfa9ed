//! [`ToBytes`] and [`FromBytes`] of the public, relinearization, Galois and evaluation keys, and
//! the secret key's [`SecretKey::export_bytes`] / [`SecretKey::import_bytes`].

use std::sync::Arc;

use zeroize::Zeroizing;

use super::envelope::{open, small_u8, unsupported, write_header};
use super::packing::{key_primes, pack_poly, packed_len, switching_key_payload_size};
use super::{FLAG_SEEDED, FromBytes, HEADER_LEN, ObjectType, SEED_LEN, ToBytes, v1};
use crate::error::Result;
use crate::keys::{
    EvaluationKeys, GaloisKey, PublicKey, RelinearizationKey, SecretKey, SwitchingKey,
};
use crate::params::Parameters;

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
    let n = key.params.n();
    for b in &key.b {
        let mut at = 0;
        for primes in key_primes(&key.params, key.b.len()) {
            let end = at + primes.len() * n;
            pack_poly(out, &key.params, &b[at..end], primes);
            at = end;
        }
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
