//! Untrusted-input validation: names, chunks, Base64, tokens, parameters, Algorithm IDs,
//! canonical bytes.

use cipherinfer_ckks::Preset;
use cipherinfer_protocol::auth::{AuthToken, TOKEN_LEN, TokenHash};
use cipherinfer_protocol::params::{ExtendedParameters, galois_element, max_log_qp};
use cipherinfer_protocol::validate::{
    Limits, decode_base64_limited, encode_base64, max_encoded_len, missing_chunks,
    validate_client_id, validate_file_name, validate_session_id,
};
use cipherinfer_protocol::{AlgorithmId, ErrorCode, Scheme, canonical_call_bytes, canonical_json};
use serde_json::json;

#[test]
fn hostile_file_names_are_rejected() {
    let long = "a".repeat(129);
    let hostile = [
        "../x",
        "..",
        ".",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "",
        "a\0b",
        long.as_str(),
        ".hidden",
        "-rf",
        "name.",
        "CON",
        "nul.bin",
        "Com1.txt",
        "enc input.bin",
        "enc\ninput",
        "enc_input\u{2024}bin", // ONE DOT LEADER, looks like '.'
        "enc\u{FF0F}input",     // FULLWIDTH SOLIDUS, looks like '/'
        "еnc.bin",              // Cyrillic 'е'
        "c:evil",
        "%2e%2e",
    ];
    for name in hostile {
        let err = validate_file_name(name).expect_err(name);
        assert_eq!(err.error_code, ErrorCode::InvalidFileName, "{name:?}");
        assert!(!err.retryable);
    }
    for good in [
        "enc_input_ic0_phase0.bin",
        "a",
        "0.ct",
        "x-y_z.1.bin",
        &"b".repeat(128),
        "console.bin",
    ] {
        let r = validate_file_name(good);
        assert!(r.is_ok(), "{good:?}: {r:?}");
    }
}

#[test]
fn identifiers_follow_their_syntax() {
    validate_client_id("agent_fe8354f2851b").expect("draft example");
    validate_session_id("session_20260617_8f3a9b").expect("draft example");
    for bad in ["", "a b", "a.b", "a/b", &"x".repeat(65), "é"] {
        assert_eq!(
            validate_client_id(bad).expect_err(bad).error_code,
            ErrorCode::InvalidArgument
        );
    }
    assert!(validate_session_id(&"s".repeat(128)).is_ok());
    assert!(validate_session_id(&"s".repeat(129)).is_err());
    assert!(validate_session_id("../s").is_err());
}

#[test]
fn base64_oversize_is_rejected_before_decoding() {
    // Invalid characters everywhere: if the length check did not come first, the error would
    // be ERROR_INVALID_BASE64.
    let limit = 3 * 1024;
    let text = "!".repeat(max_encoded_len(limit) as usize + 4);
    let err = decode_base64_limited(&text, limit).expect_err("oversize");
    assert_eq!(err.error_code, ErrorCode::ChunkTooLarge);
    // Exactly at the limit decodes.
    let data = vec![7u8; limit as usize];
    let enc = encode_base64(&data);
    assert_eq!(decode_base64_limited(&enc, limit).expect("at limit"), data);
    // One byte over: the padded length is the same bucket, so the exact check catches it.
    let enc = encode_base64(&vec![1u8; limit as usize - 1]);
    assert!(decode_base64_limited(&enc, limit - 2).is_err());
    let over = encode_base64(&[1u8; 10]);
    assert_eq!(
        decode_base64_limited(&over, 9)
            .expect_err("10 > 9")
            .error_code,
        ErrorCode::ChunkTooLarge
    );
}

#[test]
fn bad_base64_is_rejected() {
    for bad in [
        "",
        "abc",       // not a multiple of 4
        "ab=c",      // padding inside
        "YWJj\n",    // whitespace
        "YW Jj",     // whitespace
        "YWJ-",      // URL-safe alphabet
        "YQ",        // unpadded
        "YR==",      // non-canonical trailing bits
        "====",      // only padding
        "YWJj\u{0}", // NUL
    ] {
        let err = decode_base64_limited(bad, 1024).expect_err(bad);
        assert_eq!(err.error_code, ErrorCode::InvalidBase64, "{bad:?}");
    }
    assert_eq!(decode_base64_limited("YWJj", 1024).expect("abc"), b"abc");
    assert_eq!(decode_base64_limited("YQ==", 1024).expect("a"), b"a");
}

#[test]
fn chunk_coordinates_and_sizes() {
    let limits = Limits::default();
    assert_eq!(limits.max_total_chunks(), 512);
    Limits::check_chunk_coordinates(0, 2, 512).expect("first of two");
    Limits::check_chunk_coordinates(1, 2, 512).expect("second of two");
    for (i, n) in [(2, 2), (0, 0), (0, 513), (u32::MAX, 1)] {
        assert_eq!(
            Limits::check_chunk_coordinates(i, n, 512)
                .expect_err("bad coordinates")
                .error_code,
            ErrorCode::InvalidChunkIndex
        );
    }
    Limits::check_object_size(10, 22, 32).expect("fits");
    assert_eq!(
        Limits::check_object_size(10, 23, 32)
            .expect_err("over")
            .error_code,
        ErrorCode::ObjectTooLarge
    );
    assert!(Limits::check_object_size(u64::MAX, 1, u64::MAX).is_err());
    assert_eq!(missing_chunks(5, &[0, 3, 3, 9]), vec![1, 2, 4]);
    assert!(missing_chunks(2, &[1, 0]).is_empty());
}

#[test]
fn tokens_hash_and_verify_in_constant_time() {
    let token = AuthToken::generate().expect("token");
    assert_eq!(token.expose().len(), TOKEN_LEN);
    assert!(token.expose().starts_with("cit_"));
    assert!(token.is_well_formed());
    assert_ne!(token, AuthToken::generate().expect("token"));
    let stored = token.hash().expect("hash");
    stored.verify(Some(&token)).expect("same token verifies");
    // Stored form round-trips through JSON as hex.
    let json = serde_json::to_string(&stored).expect("ser");
    assert_eq!(json.len(), 66);
    let back: TokenHash = serde_json::from_str(&json).expect("de");
    back.verify(Some(&token)).expect("verifies after reload");

    let other = AuthToken::generate().expect("token");
    let mut flipped = token.expose().to_string();
    let last = if flipped.ends_with('A') { "B" } else { "A" };
    flipped.replace_range(flipped.len() - 1.., last);
    for wrong in [
        Some(other),
        Some(AuthToken::from_string(flipped)),
        Some(AuthToken::from_string(String::new())),
        Some(AuthToken::from_string("x".repeat(10_000))),
        None,
    ] {
        let err = stored.verify(wrong.as_ref()).expect_err("wrong token");
        assert_eq!(err.error_code, ErrorCode::Unauthorized);
        assert!(!err.message.contains("cit_"));
    }
    assert!(AuthToken::from_string("short".into()).hash().is_err());
}

#[test]
fn token_debug_is_redacted() {
    let token = AuthToken::generate().expect("token");
    let secret = token.expose().to_string();
    assert!(!format!("{token:?}").contains(&secret[4..]));
    assert!(!format!("{token}").contains(&secret[4..]));
    let args = cipherinfer_protocol::remote::SessionArgs {
        client_id: "agent_1".into(),
        session_id: "s1".into(),
        auth_token: Some(token.clone()),
    };
    assert!(!format!("{args:?}").contains(&secret[4..]));
    // But it serializes in full: the client must receive it once.
    assert!(serde_json::to_string(&args).expect("ser").contains(&secret));
}

#[test]
fn bearer_header_parsing() {
    let t = AuthToken::from_authorization_header("Bearer cit_abc").expect("bearer");
    assert_eq!(t.expose(), "cit_abc");
    assert!(AuthToken::from_authorization_header("bearer  cit_abc ").is_some());
    assert!(AuthToken::from_authorization_header("Basic dXNlcjpwYXNz").is_none());
    assert!(AuthToken::from_authorization_header("Bearer").is_none());
}

#[test]
fn weak_parameters_are_rejected_with_the_right_code() {
    let params = Preset::Pn14Depth7.build().expect("preset");
    let block = ExtendedParameters::from_ckks(&params);
    block.validate().expect("preset is valid");

    let mut low = block.clone();
    low.security_level = Some(80);
    assert_eq!(
        low.validate().expect_err("80").error_code,
        ErrorCode::WeakParameters
    );

    // The 438-bit chain of N = 2^14 does not meet a declared 192-bit level (bound 305).
    let mut high = block.clone();
    high.security_level = Some(192);
    let err = high.validate().expect_err("192");
    assert_eq!(err.error_code, ErrorCode::WeakParameters);
    assert!(err.message.contains("305"), "{}", err.message);

    // Same chain, but N halved: 435 bits far above the 218-bit bound of N = 2^13. The primes
    // are 1 mod 2^15, hence also 1 mod 2^14.
    let mut small_ring = block.clone();
    small_ring.poly_modulus_degree = Some(8192);
    small_ring.slot_count = Some(4096);
    assert_eq!(
        small_ring.validate().expect_err("too many bits").error_code,
        ErrorCode::WeakParameters
    );

    let mut odd_level = block.clone();
    odd_level.security_level = Some(150);
    assert_eq!(
        odd_level.validate().expect_err("150").error_code,
        ErrorCode::InvalidParameters
    );

    let mut sparse = block.clone();
    sparse.secret_hamming_weight = Some(64);
    assert_eq!(
        sparse.validate().expect_err("h=64").error_code,
        ErrorCode::WeakParameters
    );

    assert_eq!(max_log_qp(14, 128), Some(438));
    assert_eq!(max_log_qp(13, 256), Some(118));
    assert_eq!(max_log_qp(16, 128), None);
}

#[test]
fn parameter_block_round_trips_to_ckks_with_the_same_id() {
    for preset in Preset::ALL {
        let params = preset.build().expect("preset");
        let block = ExtendedParameters::from_ckks(&params);
        let rebuilt = block.build_ckks().expect("rebuild");
        assert_eq!(rebuilt.id(), params.id(), "{preset:?}");
        let alg = AlgorithmId::for_ckks(&params).expect("alg");
        assert_eq!(alg.scheme, Scheme::CkksRns);
        assert_eq!(alg.ring_degree as usize, params.n());
        assert!(alg.is_implemented());
        // Through JSON as well.
        let json = serde_json::to_value(&block).expect("ser");
        let back: ExtendedParameters = serde_json::from_value(json).expect("de");
        assert_eq!(back, block);
    }
}

/// A change applied to a valid parameter block.
type Mutation = Box<dyn Fn(&mut ExtendedParameters)>;

#[test]
fn parameter_block_rejects_malformed_fields() {
    let params = Preset::Pn13Depth5.build().expect("preset");
    let block = ExtendedParameters::from_ckks(&params);
    let cases: Vec<(Mutation, ErrorCode)> = vec![
        (
            Box::new(|b| b.poly_modulus_degree = Some(8000)),
            ErrorCode::InvalidParameters,
        ),
        (
            Box::new(|b| b.poly_modulus_degree = Some(1 << 16)),
            ErrorCode::InvalidParameters,
        ),
        (
            Box::new(|b| b.scale = Some(f64::NAN)),
            ErrorCode::InvalidParameters,
        ),
        (
            Box::new(|b| b.scale = Some(0.5)),
            ErrorCode::InvalidParameters,
        ),
        // CKKS scales are powers of two here: refused as invalid, not as a mismatch.
        (
            Box::new(|b| b.scale = Some(67_108_865.0)),
            ErrorCode::InvalidParameters,
        ),
        (
            Box::new(|b| {
                if let Some(c) = b.coeff_modulus.as_mut() {
                    c[1] = c[0];
                }
            }),
            ErrorCode::InvalidParameters,
        ),
        (
            Box::new(|b| {
                if let Some(c) = b.coeff_modulus.as_mut() {
                    c[0] += 2;
                }
            }),
            ErrorCode::InvalidParameters,
        ),
        (
            Box::new(|b| b.coeff_modulus = Some(vec![])),
            ErrorCode::InvalidParameters,
        ),
        (
            Box::new(|b| b.special_prime_count = Some(0)),
            ErrorCode::InvalidParameters,
        ),
        (
            Box::new(|b| b.key_switching_digits = Some(99)),
            ErrorCode::InvalidParameters,
        ),
        (
            Box::new(|b| b.max_multiplication_depth = Some(6)),
            ErrorCode::DepthExceeded,
        ),
        (
            Box::new(|b| b.slot_count = Some(3000)),
            ErrorCode::UnsupportedPacking,
        ),
        (
            Box::new(|b| b.slot_count = Some(8192)),
            ErrorCode::UnsupportedPacking,
        ),
        (
            Box::new(|b| b.batch_size = Some(0)),
            ErrorCode::UnsupportedPacking,
        ),
        (
            Box::new(|b| b.batch_size = Some(5000)),
            ErrorCode::UnsupportedPacking,
        ),
        (
            Box::new(|b| b.input_packing_format = Some("NCHW/../x".into())),
            ErrorCode::UnsupportedPacking,
        ),
        (
            Box::new(|b| b.omp_threads = Some(0)),
            ErrorCode::InvalidArgument,
        ),
        (
            Box::new(|b| b.omp_threads = Some(100_000)),
            ErrorCode::InvalidArgument,
        ),
        (
            Box::new(|b| b.galois_key_mappings = Some([("1".to_string(), 7)].into())),
            ErrorCode::InvalidGaloisKey,
        ),
        (
            Box::new(|b| b.galois_key_mappings = Some([("01".to_string(), 5)].into())),
            ErrorCode::InvalidGaloisKey,
        ),
        (
            Box::new(|b| b.galois_key_mappings = Some([("4096".to_string(), 1)].into())),
            ErrorCode::InvalidGaloisKey,
        ),
    ];
    for (i, (mutate, code)) in cases.iter().enumerate() {
        let mut b = block.clone();
        mutate(&mut b);
        let err = b.validate().expect_err(&format!("case {i}"));
        assert_eq!(err.error_code, *code, "case {i}: {}", err.message);
    }
    let mut ok = block.clone();
    ok.max_multiplication_depth = Some(5);
    ok.batch_size = Some(1);
    ok.slot_count = Some(1024);
    ok.omp_threads = Some(9);
    ok.galois_key_mappings = Some(
        [
            ("1".to_string(), galois_element(8192, 1)),
            ("-28".to_string(), galois_element(8192, -28)),
        ]
        .into(),
    );
    ok.validate().expect("valid block");
    // A non-CKKS scheme is syntactically fine but not implemented.
    let mut bfv = block.clone();
    bfv.scheme_context = Some(cipherinfer_protocol::SchemeContext::Bfv);
    bfv.slot_count = None;
    assert_eq!(
        bfv.to_ckks_literal().expect_err("bfv").error_code,
        ErrorCode::UnsupportedAlgorithm
    );
    // Unknown fields are refused.
    assert!(
        serde_json::from_value::<ExtendedParameters>(json!({"poly_modulus_dgree": 8192})).is_err()
    );
}

#[test]
fn galois_elements_match_the_ckks_library() {
    let params = Preset::Pn13Depth4.build().expect("preset");
    for step in [1i64, 2, 5, 28, 100, 4095, -1, -28, -4095] {
        assert_eq!(
            galois_element(8192, step),
            params.galois_element(step),
            "{step}"
        );
    }
}

#[test]
fn depth_bound_and_galois_availability() {
    let mut block = ExtendedParameters {
        max_multiplication_depth: Some(3),
        ..Default::default()
    };
    assert_eq!(
        block.check_depth_bound(5).expect_err("3 < 5").error_code,
        ErrorCode::DepthExceeded
    );
    block.check_depth_bound(3).expect("3 >= 3");
    block.galois_key_mappings = Some([("1".to_string(), 5)].into());
    block.check_galois_available(&[5, 25]).expect("present");
    assert_eq!(
        block
            .check_galois_available(&[25])
            .expect_err("missing")
            .error_code,
        ErrorCode::InvalidGaloisKey
    );
    let reference = ExtendedParameters {
        poly_modulus_degree: Some(8192),
        input_packing_format: Some("chw_blocks".into()),
        ..Default::default()
    };
    let mut req = ExtendedParameters {
        poly_modulus_degree: Some(16384),
        ..Default::default()
    };
    assert_eq!(
        req.check_matches(&reference)
            .expect_err("N differs")
            .error_code,
        ErrorCode::ParameterMismatch
    );
    req.poly_modulus_degree = None;
    req.input_packing_format = Some("gip_2d".into());
    assert_eq!(
        req.check_matches(&reference)
            .expect_err("packing differs")
            .error_code,
        ErrorCode::UnsupportedPacking
    );
}

#[test]
fn algorithm_ids_parse_display_and_reject_unknown() {
    let id: AlgorithmId = "CKKS-RNS-128-N8192-CIFR1".parse().expect("parse");
    assert_eq!(id.scheme, Scheme::CkksRns);
    assert_eq!(id.security_bits, 128);
    assert_eq!(id.ring_degree, 8192);
    assert_eq!(id.format_version, 1);
    assert_eq!(id.to_string(), "CKKS-RNS-128-N8192-CIFR1");
    let bfv: AlgorithmId = "BFV-RNS-192-N16384-CIFR2".parse().expect("parse");
    assert!(!bfv.is_implemented());
    assert_eq!(
        bfv.ensure_implemented().expect_err("bfv").error_code,
        ErrorCode::UnsupportedAlgorithm
    );
    for bad in [
        "",
        "CKKS",
        "CKKS-RNS-128",
        "ckks-rns-128-N8192-CIFR1",
        "CKKS-RNS-80-N8192-CIFR1",
        "CKKS-RNS-128-N8000-CIFR1",
        "CKKS-RNS-128-N08192-CIFR1",
        "CKKS-RNS-128-N512-CIFR1",
        "CKKS-RNS-128-N8192-CIFR0",
        "CKKS-RNS-128-N8192-CIFR1-extra",
        "TFHE-RNS-128-N8192-CIFR1",
        "CKKS-RNS-128-N8192-SEAL4",
        "CKKS-RNS-128-N+8192-CIFR1",
    ] {
        let err = bad.parse::<AlgorithmId>().expect_err(bad);
        assert_eq!(err.error_code, ErrorCode::UnsupportedAlgorithm, "{bad}");
    }
    let json = serde_json::to_string(&id).expect("ser");
    assert_eq!(json, "\"CKKS-RNS-128-N8192-CIFR1\"");
    assert!(serde_json::from_str::<AlgorithmId>("\"CKKS-RNS-64-N8192-CIFR1\"").is_err());
}

#[test]
fn canonical_bytes_are_deterministic() {
    let a = json!({"session_id": "s", "client_id": "c", "n": 1, "x": [1.5, true, null], "u": "é\n\"", "mac": "zz"});
    let b = json!({"u": "é\n\"", "x": [1.5, true, null], "n": 1, "client_id": "c", "mac": "other", "session_id": "s"});
    let ca = canonical_call_bytes("remote_inference_cnn", &a, &["mac"]).expect("a");
    let cb = canonical_call_bytes("remote_inference_cnn", &b, &["mac"]).expect("b");
    assert_eq!(ca, cb);
    let mut expected = b"cipherinfer-call-v1\0remote_inference_cnn\0".to_vec();
    expected.extend_from_slice(
        "{\"client_id\":\"c\",\"n\":1,\"session_id\":\"s\",\"u\":\"é\\n\\\"\",\"x\":[1.5,true,null]}"
            .as_bytes(),
    );
    assert_eq!(ca, expected);
    // Another tool name or a changed value changes the bytes.
    assert_ne!(canonical_call_bytes("other", &a, &["mac"]).expect("c"), ca);
    assert_ne!(
        canonical_call_bytes("remote_inference_cnn", &json!({"client_id": "d"}), &[]).expect("d"),
        ca
    );
    assert_eq!(
        canonical_json(&json!({"b": {"z": 1, "a": "\u{1}"}, "a": -3})).expect("nested"),
        b"{\"a\":-3,\"b\":{\"a\":\"\\u0001\",\"z\":1}}".to_vec()
    );
    let mut deep = json!(0);
    for _ in 0..100 {
        deep = json!([deep]);
    }
    assert!(canonical_json(&deep).is_err());
}

#[test]
fn generate_keys_labels_and_preprocessing_are_checked() {
    use cipherinfer_protocol::local::GenerateKeysArgs;
    let mut a = GenerateKeysArgs {
        client_id: "c".into(),
        model: "mnist-cnn".into(),
        // Its contents are the local server's to check (ClientSpec::validate), not validate()'s.
        client_spec: serde_json::from_value(json!({
            "parameters": {"log_n": 13, "log_scale": 26},
            "parameter_id": "",
            "input_shape": [1, 1, 1],
            "input": {"num_cts": 1, "positions": [[[0, 0]]], "grid": null},
            "input_level": 0,
            "input_scale": 1.0,
            "rotation_steps": [],
            "relinearization": false,
            "output": {"num_cts": 1, "positions": [[[0, 0]]], "grid": null},
            "output_shape": {"Vector": 1},
            "output_multiplier": 1.0,
            "depth": 0
        }))
        .expect("client spec"),
        overwrite: false,
        labels: Some(vec!["cat".into(), "dog".into()]),
        preprocessing: Some(json!({"mean": [0.5], "std": [0.5]})),
    };
    assert!(a.validate().is_ok());
    for labels in [
        vec![],
        vec![String::new()],
        vec!["a\nb".to_string()],
        vec!["x".repeat(257)],
    ] {
        a.labels = Some(labels);
        assert_eq!(
            a.validate().expect_err("refused").error_code,
            ErrorCode::InvalidArgument
        );
    }
    a.labels = None;
    a.preprocessing = Some(json!("normalize"));
    assert_eq!(
        a.validate().expect_err("refused").error_code,
        ErrorCode::InvalidArgument
    );
    a.preprocessing = None;
    assert!(a.validate().is_ok());
    // Absent optional fields stay absent on the wire.
    let v = serde_json::to_value(&a).expect("serializes");
    assert!(v.get("labels").is_none() && v.get("preprocessing").is_none());
}
