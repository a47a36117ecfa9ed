#![no_main]
//! Decodes a plaintext; whatever is accepted re-encodes to the same bytes and decodes.

use cipherinfer_ckks::Plaintext;
use cipherinfer_ckks::serialization::{FromBytes, ToBytes};
use cipherinfer_ckks_fuzz::{LIMIT, fixture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    if let Ok(pt) = Plaintext::from_bytes(&f.params, data, LIMIT) {
        assert_eq!(pt.serialized_size(), data.len());
        assert_eq!(
            pt.to_bytes(),
            data,
            "accepted input must re-encode to itself"
        );
        let _ = f.encoder.decode(&pt);
    }
});
