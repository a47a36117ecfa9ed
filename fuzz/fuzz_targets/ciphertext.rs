#![no_main]
//! Decodes a ciphertext; whatever is accepted re-encodes to the same bytes and decrypts.

use cipherinfer_ckks::Ciphertext;
use cipherinfer_ckks::serialization::{FromBytes, ToBytes};
use cipherinfer_ckks_fuzz::{LIMIT, fixture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    if let Ok(ct) = Ciphertext::from_bytes(&f.params, data, LIMIT) {
        assert_eq!(ct.serialized_size(), data.len());
        assert_eq!(
            ct.to_bytes(),
            data,
            "accepted input must re-encode to itself"
        );
        if let Ok(pt) = f.decryptor.decrypt(&ct) {
            let _ = f.encoder.decode(&pt);
        }
    }
});
