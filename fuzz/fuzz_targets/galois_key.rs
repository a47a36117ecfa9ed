#![no_main]
//! Decodes a Galois key; whatever is accepted re-encodes to the same bytes and loads into an evaluator.

use cipherinfer_ckks::serialization::{FromBytes, ToBytes};
use cipherinfer_ckks::{EvaluationKeys, Evaluator, GaloisKey};
use cipherinfer_ckks_fuzz::{LIMIT, fixture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    if let Ok(k) = GaloisKey::from_bytes(&f.params, data, LIMIT) {
        assert_eq!(k.serialized_size(), data.len());
        assert_eq!(
            k.to_bytes(),
            data,
            "accepted input must re-encode to itself"
        );
        let g = k.galois_element();
        let mut keys = EvaluationKeys::new(f.params.clone());
        keys.insert_galois_key(k).expect("same parameters");
        // Any odd element below 2N gets a permutation; rotations reach the powers of 5.
        let ev = Evaluator::new(keys);
        assert_eq!(ev.galois_elements(), vec![g]);
        if g == f.params.galois_element(1) {
            let r = ev.rotate(&f.ciphertext, 1).expect("rotate");
            let _ = f.decryptor.decrypt(&r);
        }
    }
});
