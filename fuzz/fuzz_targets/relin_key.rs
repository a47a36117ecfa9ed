#![no_main]
//! Decodes a relinearization key; whatever is accepted re-encodes to the same bytes and relinearizes.

use cipherinfer_ckks::serialization::{FromBytes, ToBytes};
use cipherinfer_ckks::{EvaluationKeys, Evaluator, RelinearizationKey};
use cipherinfer_ckks_fuzz::{LIMIT, fixture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    if let Ok(k) = RelinearizationKey::from_bytes(&f.params, data, LIMIT) {
        assert_eq!(k.serialized_size(), data.len());
        assert_eq!(
            k.to_bytes(),
            data,
            "accepted input must re-encode to itself"
        );
        let mut keys = EvaluationKeys::new(f.params.clone());
        keys.set_relinearization_key(k).expect("same parameters");
        let ev = Evaluator::new(keys);
        let sq = ev
            .mul(&f.ciphertext, &f.ciphertext)
            .expect("relinearize with any conforming key");
        let _ = f.decryptor.decrypt(&sq);
    }
});
