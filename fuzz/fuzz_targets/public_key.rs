#![no_main]
//! Decodes a public key; whatever is accepted re-encodes to the same bytes and encrypts.

use cipherinfer_ckks::serialization::{FromBytes, ToBytes};
use cipherinfer_ckks::{Encryptor, PublicKey};
use cipherinfer_ckks_fuzz::{LIMIT, fixture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    if let Ok(pk) = PublicKey::from_bytes(&f.params, data, LIMIT) {
        assert_eq!(pk.serialized_size(), data.len());
        assert_eq!(
            pk.to_bytes(),
            data,
            "accepted input must re-encode to itself"
        );
        let pt = f.decryptor.decrypt(&f.ciphertext).expect("decrypt fixture");
        let ct = Encryptor::new(pk)
            .expect("encryptor")
            .encrypt(&pt)
            .expect("encrypt");
        let _ = f.decryptor.decrypt(&ct);
    }
});
