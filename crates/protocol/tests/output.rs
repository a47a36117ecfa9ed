//! The result format both servers share: one output ciphertext as its plain encoding, several in
//! the `CIOUTSET` set, every one of them returned and read back in order; damaged sets are
//! refused with codes. INSECURE small ring (N = 2^11), for speed.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::sync::Arc;

use cipherinfer_ckks::serialization::ToBytes;
use cipherinfer_ckks::{
    Ciphertext, Encoder, KeyGenerator, Parameters, ParametersLiteral, secret_key_pair,
};
use cipherinfer_protocol::ErrorCode;
use cipherinfer_protocol::output::{OUTPUT_SET_MAGIC, decode_output, encode_output};

fn test_params(log_scale: u32) -> Arc<Parameters> {
    let lit: ParametersLiteral = serde_json::from_str(&format!(
        r#"{{"log_n":11,"log_q":[50,40],"log_p":[55],"log_scale":{log_scale}}}"#
    ))
    .unwrap();
    lit.build_insecure_for_tests().unwrap()
}

/// `count` ciphertexts of distinct values, with the values.
fn ciphertexts(params: &Arc<Parameters>, count: usize) -> (Vec<Ciphertext>, Vec<Vec<f64>>) {
    let mut kg = KeyGenerator::new(params.clone()).unwrap();
    let (mut enc, _) = secret_key_pair(kg.secret_key()).unwrap();
    let encoder = Encoder::new(params.clone());
    let values: Vec<Vec<f64>> = (0..count)
        .map(|k| (0..8).map(|i| (k * 8 + i) as f64 / 16.0).collect())
        .collect();
    let cts = values
        .iter()
        .map(|v| {
            let pt = encoder.encode(v, 1, (1u64 << 30) as f64).unwrap();
            enc.encrypt(&pt).unwrap()
        })
        .collect();
    (cts, values)
}

#[test]
fn every_output_ciphertext_is_returned_in_order() {
    let params = test_params(30);
    // One: exactly the ciphertext's encoding (what every classifier returns).
    let (one, _) = ciphertexts(&params, 1);
    assert_eq!(encode_output(&one), one[0].to_bytes());
    let back = decode_output(&params, &encode_output(&one), 1 << 24).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].to_bytes(), one[0].to_bytes());
    // Several: the set, every ciphertext in order.
    let (three, _) = ciphertexts(&params, 3);
    let bytes = encode_output(&three);
    assert_eq!(bytes[..8], OUTPUT_SET_MAGIC);
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 3);
    let back = decode_output(&params, &bytes, 1 << 24).unwrap();
    assert_eq!(back.len(), 3);
    for (a, b) in back.iter().zip(&three) {
        assert_eq!(a.to_bytes(), b.to_bytes());
    }
}

#[test]
fn damaged_result_sets_are_refused_with_codes() {
    let params = test_params(30);
    let (three, _) = ciphertexts(&params, 3);
    let good = encode_output(&three);
    let code = |bytes: &[u8], limit: usize| decode_output(&params, bytes, limit).unwrap_err();
    let malformed = |bytes: &[u8]| {
        assert_eq!(
            code(bytes, 1 << 24).error_code,
            ErrorCode::MalformedCiphertext
        );
    };
    // Truncated anywhere: in the header, in a length, in a ciphertext.
    for cut in [4, 10, 14, 30, good.len() / 2, good.len() - 1] {
        malformed(&good[..cut]);
    }
    // Trailing bytes after the last ciphertext.
    let mut trailing = good.clone();
    trailing.push(0);
    malformed(&trailing);
    // Counts outside 2..=64, and a count larger than the ciphertexts present.
    for count in [0u32, 1, 65, u32::MAX, 4] {
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&count.to_le_bytes());
        malformed(&bad);
    }
    // A length running past the end.
    let mut bad = good.clone();
    bad[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    malformed(&bad);
    // A ciphertext of another parameter set inside the set.
    let other = test_params(31);
    let (foreign, _) = ciphertexts(&other, 1);
    let mixed = encode_output(&[three[0].clone(), foreign[0].clone()]);
    malformed(&mixed);
    // Over the byte limit: too large, before anything is decoded.
    assert_eq!(
        code(&good, good.len() - 1).error_code,
        ErrorCode::ObjectTooLarge
    );
    // The intact set still decodes.
    assert_eq!(decode_output(&params, &good, 1 << 24).unwrap().len(), 3);
}

/// A result file holds the bytes or, as the draft has the client persist the response, their
/// Base64 text; anything else is refused with a code.
#[test]
fn result_files_hold_bytes_or_their_base64_text() {
    use cipherinfer_protocol::output::result_file_bytes;
    use cipherinfer_protocol::validate::encode_base64;
    let params = test_params(30);
    let (three, _) = ciphertexts(&params, 3);
    for bytes in [encode_output(&three[..1]), encode_output(&three)] {
        assert_eq!(result_file_bytes(bytes.clone(), 1 << 24).unwrap(), bytes);
        let text = format!("  {}\r\n", encode_base64(&bytes));
        assert_eq!(
            result_file_bytes(text.into_bytes(), 1 << 24).unwrap(),
            bytes
        );
        let too_small = bytes.len() - 1;
        let text = encode_base64(&bytes).into_bytes();
        assert_eq!(
            result_file_bytes(text, too_small).unwrap_err().error_code,
            ErrorCode::ObjectTooLarge
        );
    }
    for bad in [
        b"\xff\xfe binary".to_vec(),
        b"Q0lG===".to_vec(),
        b"not base64!".to_vec(),
        Vec::new(),
    ] {
        assert_eq!(
            result_file_bytes(bad, 1 << 24).unwrap_err().error_code,
            ErrorCode::MalformedCiphertext
        );
    }
}
