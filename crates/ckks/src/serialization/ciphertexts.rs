//! [`ToBytes`] and [`FromBytes`] of [`Ciphertext`] and [`Plaintext`].

use std::sync::Arc;

use super::envelope::{open, small_u8, unsupported, write_header};
use super::packing::{ciphertext_size, pack_poly, packed_len};
use super::{FLAG_SEEDED, FromBytes, HEADER_LEN, ObjectType, ToBytes, v1};
use crate::ciphertext::{Ciphertext, Plaintext};
use crate::error::Result;
use crate::params::Parameters;

impl ToBytes for Ciphertext {
    fn to_bytes(&self) -> Vec<u8> {
        let seed = self.seed.filter(|_| self.polys.len() == 2);
        let mut out = Vec::with_capacity(self.serialized_size());
        let flags = if seed.is_some() { FLAG_SEEDED } else { 0 };
        write_header(&mut out, ObjectType::Ciphertext, flags, &self.params);
        out.push(small_u8(self.level));
        out.push(small_u8(self.polys.len()));
        out.extend_from_slice(&self.scale.to_bits().to_le_bytes());
        let primes = 0..self.level + 1;
        match (seed, self.polys.first()) {
            (Some(seed), Some(c0)) => {
                pack_poly(&mut out, &self.params, c0, primes);
                out.extend_from_slice(&seed);
            }
            _ => {
                for p in &self.polys {
                    pack_poly(&mut out, &self.params, p, primes.clone());
                }
            }
        }
        out
    }

    fn serialized_size(&self) -> usize {
        let seeded = self.seed.is_some() && self.polys.len() == 2;
        ciphertext_size(&self.params, self.level, self.polys.len(), seeded)
    }
}

impl ToBytes for Plaintext {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.serialized_size());
        write_header(&mut out, ObjectType::Plaintext, 0, &self.params);
        out.push(small_u8(self.level));
        out.extend_from_slice(&self.scale.to_bits().to_le_bytes());
        pack_poly(&mut out, &self.params, &self.poly, 0..self.level + 1);
        out
    }

    fn serialized_size(&self) -> usize {
        HEADER_LEN + 9 + packed_len(&self.params, 0..self.level + 1)
    }
}

impl FromBytes for Ciphertext {
    fn from_bytes(params: &Arc<Parameters>, bytes: &[u8], max_bytes: usize) -> Result<Self> {
        let (h, payload) = open(params, bytes, max_bytes, ObjectType::Ciphertext)?;
        match h.version {
            1 => v1::ciphertext(params, &h, payload),
            v => Err(unsupported(v)),
        }
    }
}

impl FromBytes for Plaintext {
    fn from_bytes(params: &Arc<Parameters>, bytes: &[u8], max_bytes: usize) -> Result<Self> {
        let (h, payload) = open(params, bytes, max_bytes, ObjectType::Plaintext)?;
        match h.version {
            1 => v1::plaintext(params, &h, payload),
            v => Err(unsupported(v)),
        }
    }
}
