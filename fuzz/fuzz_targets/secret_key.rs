#![no_main]
//! Imports a secret key; whatever is accepted exports to the same bytes and decrypts.

use cipherinfer_ckks::{Decryptor, SecretKey};
use cipherinfer_ckks_fuzz::{LIMIT, fixture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    if let Ok(sk) = SecretKey::import_bytes(&f.params, data, LIMIT) {
        assert_eq!(
            sk.export_bytes().as_slice(),
            data,
            "accepted input must re-export to itself"
        );
        let dec = Decryptor::new(sk).expect("decryptor");
        let _ = dec.decrypt(&f.ciphertext).expect("decrypt");
    }
});
