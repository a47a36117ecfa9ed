//! Shared fixtures of the fuzz targets: a tiny INSECURE ring (N = 32, two 30/25-bit ciphertext
//! primes, one 30-bit special prime) so the fuzzer explores fast, a fixed secret key, and a few
//! valid objects to exercise decoded keys and ciphertexts on; a reader that turns fuzz input into
//! structured choices ([`Input`]); and independent restatements of the protocol's input rules
//! ([`reference`]).

pub mod reference;

use std::sync::{Arc, OnceLock};

use cipherinfer_ckks::serialization::HEADER_LEN;
use cipherinfer_ckks::{
    Ciphertext, Decryptor, Encoder, KeyGenerator, Parameters, ParametersLiteral, SecretKey,
    secret_key_pair,
};

/// The tiny ring's literal. INSECURE: for fuzzing only.
pub const TINY_LITERAL: &str =
    r#"{"log_n":5,"log_q":[30,25],"log_p":[30],"log_scale":20,"dnum":2}"#;

/// Byte limit the targets pass to the decoders (well above every valid tiny-ring object).
pub const LIMIT: usize = 1 << 16;

/// Everything the targets share, built once per process.
pub struct Fixture {
    /// The tiny ring.
    pub params: Arc<Parameters>,
    /// Encoder of the ring.
    pub encoder: Encoder,
    /// Decryptor with a fixed secret key (coefficients all +1), so runs are deterministic.
    pub decryptor: Decryptor,
    /// A fresh seeded ciphertext at the top level.
    pub ciphertext: Ciphertext,
}

/// The shared fixture.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let lit: ParametersLiteral = serde_json::from_str(TINY_LITERAL).expect("literal");
        let params = lit.build_insecure_for_tests().expect("tiny ring");
        let sk = fixed_secret_key(&params);
        let encoder = Encoder::new(params.clone());
        let (mut encryptor, decryptor) = secret_key_pair(sk).expect("secret key");
        let pt = encoder
            .encode(&[0.5, -0.25], params.max_level(), params.default_scale())
            .expect("encode");
        let ciphertext = encryptor.encrypt(&pt).expect("encrypt");
        Fixture {
            params,
            encoder,
            decryptor,
            ciphertext,
        }
    })
}

/// The secret key with every coefficient +1 (code 01), built through the importer.
pub fn fixed_secret_key(params: &Arc<Parameters>) -> SecretKey {
    let mut bytes = Vec::with_capacity(HEADER_LEN + params.n() / 4);
    bytes.extend_from_slice(b"CIFR");
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.push(7);
    bytes.push(0);
    bytes.extend_from_slice(&params.id());
    bytes.resize(HEADER_LEN + params.n() / 4, 0b0101_0101);
    SecretKey::import_bytes(params, &bytes, LIMIT).expect("fixed secret key")
}

/// A key generator for the tiny ring (OS-seeded; used only to write the seed corpus).
pub fn key_generator() -> KeyGenerator {
    KeyGenerator::new(fixture().params.clone()).expect("key generator")
}

/// Structured choices read off the fuzz input, front to back; past the end every read is zero,
/// so any input decodes to something.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `data` from its start.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.data
    }

    /// One byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A string of up to 255 bytes (a length byte, then the bytes, lossily as UTF-8).
    pub fn string(&mut self) -> String {
        let n = usize::from(self.u8());
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }
}
