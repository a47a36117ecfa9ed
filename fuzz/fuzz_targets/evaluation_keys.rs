#![no_main]
//! Decodes an evaluation-key set; whatever is accepted re-encodes to the same bytes and evaluates.

use cipherinfer_ckks::serialization::{FromBytes, ToBytes};
use cipherinfer_ckks::{EvaluationKeys, Evaluator};
use cipherinfer_ckks_fuzz::{LIMIT, fixture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    if let Ok(keys) = EvaluationKeys::from_bytes(&f.params, data, LIMIT) {
        assert_eq!(keys.serialized_size(), data.len());
        assert_eq!(
            keys.to_bytes(),
            data,
            "accepted input must re-encode to itself"
        );
        let elements = keys.galois_elements();
        assert!(elements.windows(2).all(|w| w[0] < w[1]));
        let has_relin = keys.relinearization_key().is_some();
        let ev = Evaluator::new(keys);
        if ev.can_rotate(1) {
            let r = ev.rotate(&f.ciphertext, 1).expect("rotate");
            let _ = f.decryptor.decrypt(&r);
        }
        if has_relin {
            let m = ev
                .mul_rescale(&f.ciphertext, &f.ciphertext)
                .expect("multiply");
            let _ = f.decryptor.decrypt(&m);
        }
    }
});
