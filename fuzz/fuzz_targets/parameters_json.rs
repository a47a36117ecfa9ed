#![no_main]
//! Parses a parameter literal from JSON and validates it with the secure builder; whatever builds round-trips through its canonical literal to the same id.

use cipherinfer_ckks::ParametersLiteral;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(lit) = serde_json::from_slice::<ParametersLiteral>(data) else {
        return;
    };
    if let Ok(params) = lit.build() {
        let json = serde_json::to_vec(params.literal()).expect("serialize");
        let canonical: ParametersLiteral = serde_json::from_slice(&json).expect("parse canonical");
        let again = canonical.build().expect("canonical literal builds");
        assert_eq!(again.id(), params.id());
    }
});
