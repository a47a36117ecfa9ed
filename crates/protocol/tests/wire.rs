//! Wire stability: error code strings, serde round trips of every type, JSON Schemas of every
//! tool's arguments, and the draft's example messages.

use cipherinfer_ckks::Preset;
use cipherinfer_compiler::plan::Grid;
use cipherinfer_compiler::{Shape, SlotMap};
use cipherinfer_protocol::auth::AuthToken;
use cipherinfer_protocol::error::parse_arguments;
use cipherinfer_protocol::local::*;
use cipherinfer_protocol::params::{ExtendedParameters, InferenceTelemetry};
use cipherinfer_protocol::remote::*;
use cipherinfer_protocol::validate::Limits;
use cipherinfer_protocol::{AlgorithmId, ClientSpec, ErrorCode, ToolError};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

#[test]
fn error_code_strings_are_pinned() {
    let expected = [
        "ERROR_INVALID_ARGUMENT",
        "ERROR_UNAUTHORIZED",
        "ERROR_RATE_LIMITED",
        "ERROR_UNKNOWN_CLIENT",
        "ERROR_CLIENT_EXISTS",
        "ERROR_UNKNOWN_SESSION",
        "ERROR_SESSION_FORBIDDEN",
        "ERROR_EXPIRED",
        "ERROR_INVALID_FILE_NAME",
        "ERROR_INVALID_CHUNK_INDEX",
        "ERROR_TOTAL_CHUNKS_MISMATCH",
        "ERROR_CHUNK_TOO_LARGE",
        "ERROR_OBJECT_TOO_LARGE",
        "ERROR_INVALID_BASE64",
        "ERROR_CHUNK_CONFLICT",
        "ERROR_INCOMPLETE_UPLOAD",
        "ERROR_INTEGRITY_MISMATCH",
        "ERROR_UNKNOWN_MODEL",
        "ERROR_UNSUPPORTED_ALGORITHM",
        "ERROR_INVALID_PARAMETERS",
        "ERROR_WEAK_PARAMETERS",
        "ERROR_PARAMETER_MISMATCH",
        "ERROR_UNSUPPORTED_PACKING",
        "ERROR_DEPTH_EXCEEDED",
        "ERROR_INVALID_GALOIS_KEY",
        "ERROR_NOISE_OVERFLOW",
        "ERROR_MALFORMED_CIPHERTEXT",
        "ERROR_MALFORMED_KEYS",
        "ERROR_KEYS_NOT_PROVISIONED",
        "ERROR_KEYS_REVOKED",
        "ERROR_KEY_REFERENCE_UNRESOLVED",
        "ERROR_QUOTA_EXCEEDED",
        "ERROR_BUSY",
        "ERROR_CANCELLED",
        "ERROR_RESULT_NOT_FOUND",
        "ERROR_REPLAY",
        "ERROR_BAD_SIGNATURE",
        "ERROR_STALE_REQUEST",
        "ERROR_IDENTITY_MISMATCH",
        "ERROR_INSECURE_TRANSPORT",
        "ERROR_PATH_NOT_ALLOWED",
        "ERROR_FILE_NOT_FOUND",
        "ERROR_IMAGE_UNREADABLE",
        "ERROR_DECRYPTION_FAILED",
        "ERROR_UNAVAILABLE",
        "ERROR_INTERNAL",
    ];
    assert_eq!(ErrorCode::ALL.len(), expected.len());
    let retryable = [
        "ERROR_RATE_LIMITED",
        "ERROR_QUOTA_EXCEEDED",
        "ERROR_BUSY",
        "ERROR_CANCELLED",
        "ERROR_UNAVAILABLE",
        "ERROR_INTERNAL",
    ];
    for (code, s) in ErrorCode::ALL.iter().zip(expected) {
        assert_eq!(code.as_str(), s);
        assert_eq!(code.to_string(), s);
        assert_eq!(serde_json::to_value(code).expect("ser"), json!(s));
        assert_eq!(
            serde_json::from_value::<ErrorCode>(json!(s)).expect("de"),
            *code
        );
        assert_eq!(ErrorCode::parse(s), Some(*code));
        assert_eq!(code.is_retryable(), retryable.contains(&s), "{s}");
        assert!(!code.description().is_empty());
    }
    assert_eq!(ErrorCode::parse("ERROR_NOPE"), None);
    // The JSON Schema lists exactly these strings.
    let schema = serde_json::to_value(schemars::schema_for!(ErrorCode)).expect("schema");
    let text = schema.to_string();
    for s in expected {
        assert!(text.contains(s), "{s} missing from the schema");
    }
}

#[test]
fn tool_error_payload() {
    let e = ToolError::new(ErrorCode::IncompleteUpload, "2 chunks missing")
        .with_details(json!({"missing": [{"file_name": "a.bin", "chunks": [1, 2]}]}));
    let v = e.to_json();
    assert_eq!(v["ok"], json!(false));
    assert_eq!(v["error_code"], json!("ERROR_INCOMPLETE_UPLOAD"));
    assert_eq!(v["retryable"], json!(false));
    assert!(v.get("retry_after_ms").is_none());
    assert_eq!(v["details"]["missing"][0]["chunks"], json!([1, 2]));
    let back: ToolError = serde_json::from_value(v).expect("de");
    assert_eq!(back, e);
    assert_eq!(e.to_string(), "ERROR_INCOMPLETE_UPLOAD: 2 chunks missing");
    let busy = ToolError::new(ErrorCode::Busy, "full").with_retry_after_ms(500);
    assert!(busy.retryable);
    assert_eq!(busy.to_json()["retry_after_ms"], json!(500));
}

#[test]
fn ckks_errors_map_to_codes() {
    let mut lit = Preset::Pn14Depth7.literal();
    lit.log_q.push(40);
    let err = lit.build().expect_err("insecure");
    assert_eq!(
        ErrorCode::from_ckks(&err, ErrorCode::MalformedKeys),
        ErrorCode::WeakParameters
    );
    let missing = cipherinfer_ckks::Error::MissingKey {
        kind: "rotation",
        galois_element: Some(5),
    };
    assert_eq!(
        ErrorCode::from_ckks(&missing, ErrorCode::MalformedKeys),
        ErrorCode::InvalidGaloisKey
    );
    assert_eq!(
        ErrorCode::from_ckks(
            &cipherinfer_ckks::Error::OutOfLevels,
            ErrorCode::MalformedCiphertext
        ),
        ErrorCode::DepthExceeded
    );
    // A truncated ciphertext decodes to the caller's "malformed" code.
    let params = Preset::Pn13Depth4.build().expect("preset");
    use cipherinfer_ckks::serialization::FromBytes;
    let err = cipherinfer_ckks::Ciphertext::from_bytes(&params, b"CIFR\x01", 1 << 20)
        .expect_err("truncated");
    assert_eq!(
        ToolError::from_ckks(&err, ErrorCode::MalformedCiphertext).error_code,
        ErrorCode::MalformedCiphertext
    );
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) -> Value {
    let json = serde_json::to_value(value).expect("serialize");
    let back: T = serde_json::from_value(json.clone()).expect("deserialize");
    assert_eq!(&back, value);
    json
}

fn token() -> AuthToken {
    AuthToken::generate().expect("token")
}

fn alg() -> AlgorithmId {
    "CKKS-RNS-128-N8192-CIFR1".parse().expect("alg")
}

const PID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A small client specification (never validated here: the wire form is what matters).
fn client_spec() -> ClientSpec {
    ClientSpec {
        parameters: Preset::Pn13Depth5.literal(),
        parameter_id: PID.into(),
        input_shape: (1, 2, 2),
        input: SlotMap {
            num_cts: 1,
            positions: vec![
                vec![(0, 0), (0, 4)],
                vec![(0, 1)],
                vec![(0, 2)],
                vec![(0, 3)],
            ],
            grid: Some(Grid {
                c: 1,
                h: 2,
                w: 2,
                block: 4,
                row_stride: 2,
                col_stride: 1,
                channels_per_ct: 1024,
                lanes: Default::default(),
            }),
        },
        batch_size: 1,
        input_level: 5,
        input_scale: 67108864.0,
        rotation_steps: vec![1, -28],
        rotation_key_levels: Vec::new(),
        relinearization: true,
        output: SlotMap {
            num_cts: 1,
            positions: vec![vec![(0, 0)], vec![(0, 1)]],
            grid: None,
        },
        output_shape: Shape::Vector(2),
        output_multiplier: 0.25,
        depth: 5,
    }
}

fn telemetry() -> InferenceTelemetry {
    InferenceTelemetry {
        remaining_level: Some(0),
        current_scale: Some(67108864.0),
        noise_budget_remaining: None,
        computation_depth_used: 5,
        output_shape: vec![10],
        requires_decryption: true,
        error_code: None,
    }
}

fn classification() -> Classification {
    Classification {
        label: "7".into(),
        class_index: 7,
        probabilities: vec![0.1; 10],
        top_k: vec![ClassScore {
            class_index: 7,
            label: "7".into(),
            probability: 0.9,
            logit: 8.25,
        }],
        logits: vec![0.5; 10],
        output_shape: vec![10],
        precision_bits: 14.5,
    }
}

#[test]
fn every_type_round_trips() {
    let params = Preset::Pn13Depth5.build().expect("preset");
    let block = ExtendedParameters::from_ckks(&params);
    round_trip(&block);
    round_trip(&Limits::default());
    round_trip(&telemetry());
    round_trip(&ProvisionKeysBeginArgs {
        client_id: "agent_fe8354f2851b".into(),
        algorithm_id: alg().to_string(),
        parameter_id: PID.into(),
        model: Some("mnist-cnn".into()),
        mode: ProvisionMode::Rotate,
        bundle_bytes: 12345,
        bundle_sha256: PID.into(),
        total_chunks: 1,
        key_uri: None,
        auth_token: Some(token()),
        enrollment_token: None,
        bundle_signature: None,
    });
    round_trip(&ProvisionKeysBeginResult {
        ok: true,
        provisioning_id: "ab".repeat(16),
        client_id: "c".into(),
        total_chunks: 3,
        max_chunk_bytes: 1 << 25,
        expires_at: 1_800_000_000,
    });
    round_trip(&ProvisionKeysChunkArgs {
        client_id: "c".into(),
        provisioning_id: "ab".repeat(16),
        chunk_index: 0,
        total_chunks: 3,
        chunk_b64: "AAAA".into(),
        chunk_sha256: Some(PID.into()),
    });
    round_trip(&ProvisionKeysChunkAck {
        ok: true,
        provisioning_id: "ab".repeat(16),
        chunk_index: 0,
        chunk_bytes: 3,
        received_chunks: 1,
        total_chunks: 3,
        duplicate: false,
    });
    round_trip(&ProvisionKeysCommitArgs {
        client_id: "c".into(),
        provisioning_id: "ab".repeat(16),
    });
    let provisioned = round_trip(&ProvisionKeysResult {
        ok: true,
        client_id: "c".into(),
        key_ref: format_key_ref("c", 2),
        key_version: 2,
        algorithm_id: alg(),
        parameter_id: PID.into(),
        auth_token: token(),
        bundle_bytes: 9,
        bundle_sha256: PID.into(),
        relinearization: true,
        galois_elements: vec![5, 25],
        models: vec!["mnist-cnn".into()],
        identity_key: None,
    });
    assert!(
        provisioned["auth_token"]
            .as_str()
            .is_some_and(|t| t.starts_with("cit_"))
    );
    round_trip(&RevokeKeysArgs {
        client_id: "c".into(),
        auth_token: Some(token()),
    });
    round_trip(&RevokeKeysResult {
        ok: true,
        client_id: "c".into(),
        revoked_key_ref: format_key_ref("c", 1),
        sessions_deleted: 2,
    });
    round_trip(&UploadChunkAck {
        ok: true,
        file_name: "enc_input_ic0_phase0.bin".into(),
        chunk_index: 0,
        chunk_bytes: 4_194_304,
        total_chunks: 2,
        received_chunks: 1,
        object_complete: false,
        duplicate: false,
    });
    let args = RemoteInferenceArgs {
        client_id: "c".into(),
        session_id: "s".into(),
        auth_token: Some(token()),
        model: Some("mnist-cnn".into()),
        max_inline_bytes: Some(0),
        ..Default::default()
    }
    .with_extended_parameters(block.clone());
    let v = round_trip(&args);
    assert_eq!(
        v["poly_modulus_degree"],
        json!(8192),
        "7.1 fields sit at top level"
    );
    assert_eq!(args.extended_parameters(), block);
    let result = RemoteInferenceResult {
        ok: true,
        session_id: "s".into(),
        model: "mnist-cnn".into(),
        algorithm_id: alg(),
        parameter_id: PID.into(),
        encrypted_logit_b64: None,
        encrypted_logit_bytes: 2_000_000,
        encrypted_logit_sha256: PID.into(),
        result_signature: None,
        result_ref: Some(ResultRef {
            result_id: "r1".into(),
            total_bytes: 2_000_000,
            total_chunks: 4,
            chunk_bytes: 524_288,
            sha256: PID.into(),
            expires_at: 1_800_000_000,
        }),
        profile: Profile {
            infer_s: 57.1,
            threads: Some(2),
            step_s: vec![1.0, 2.0],
            ..Default::default()
        },
        telemetry: telemetry(),
    };
    let v = round_trip(&result);
    assert_eq!(
        v["requires_decryption"],
        json!(true),
        "7.2 fields sit at top level"
    );
    assert_eq!(v["computation_depth_used"], json!(5));
    assert_eq!(v["profile"]["infer_s"], json!(57.1));
    round_trip(&FetchResultChunkArgs {
        client_id: "c".into(),
        session_id: "s".into(),
        result_id: "r1".into(),
        chunk_index: 3,
        auth_token: None,
    });
    round_trip(&FetchResultChunkResult {
        ok: true,
        result_id: "r1".into(),
        chunk_index: 3,
        total_chunks: 4,
        chunk_b64: "AAAA".into(),
        chunk_bytes: 3,
    });
    round_trip(&DescribeCapabilitiesArgs {
        model: None,
        security_level: Some(192),
    });
    round_trip(&Capabilities {
        ok: true,
        protocol: PROTOCOL_PROFILE.into(),
        server: "cipherinfer-remote 0.1.0".into(),
        algorithm_ids: vec![alg()],
        limits: Limits::default(),
        session_ttl_s: 3600,
        result_ttl_s: 600,
        enrollment_required: false,
        server_identity: cipherinfer_protocol::integrity::IdentityKey::generate()
            .expect("key")
            .public(),
        signatures_required: true,
        identity_registration_required: false,
        max_clock_skew_ms: 300_000,
        default_model: "mnist-cnn".into(),
        models: vec![ModelInfo {
            name: "mnist-cnn".into(),
            description: "MNIST digits".into(),
            input_shape: vec![1, 28, 28],
            output_shape: vec![10],
            labels: (0..10).map(|i| i.to_string()).collect(),
            algorithm_id: alg(),
            parameter_id: PID.into(),
            parameters: block.clone(),
            multiplicative_depth: 5,
            rotation_steps: vec![1, -28],
            galois_elements: vec![5, 25],
            relinearization: true,
            input_objects: vec!["enc_input_ic0.bin".into()],
            client_spec: client_spec(),
            preprocessing: Some(json!({"resize": [28, 28]})),
        }],
    });
    round_trip(&SessionArgs {
        client_id: "c".into(),
        session_id: "s".into(),
        auth_token: None,
    });
    round_trip(&SessionStatus {
        ok: true,
        session_id: "s".into(),
        objects: vec![ObjectStatus {
            file_name: "a.bin".into(),
            total_chunks: 2,
            received_chunks: 1,
            missing_chunks: vec![1],
            bytes: 10,
        }],
        results: vec!["r1".into()],
        expires_at: 1,
    });
    round_trip(&DeleteSessionResult {
        ok: true,
        session_id: "s".into(),
        deleted: true,
        bytes_freed: 10,
    });
    // Local tools.
    round_trip(&GenerateKeysArgs {
        client_id: "c".into(),
        model: "mnist-cnn".into(),
        client_spec: client_spec(),
        overwrite: false,
        labels: None,
        preprocessing: None,
    });
    round_trip(&GenerateKeysArgs {
        client_id: "c".into(),
        model: "mnist-cnn".into(),
        client_spec: client_spec(),
        overwrite: true,
        labels: Some(vec!["zero".into(), "one".into()]),
        preprocessing: Some(json!({"mean": [0.5], "std": [0.25]})),
    });
    round_trip(&GenerateKeysResult {
        ok: true,
        client_id: "c".into(),
        model: "mnist-cnn".into(),
        algorithm_id: alg(),
        parameter_id: PID.into(),
        parameters: block.clone(),
        galois_elements: vec![5],
        relinearization: true,
        evaluation_key_bytes: 100,
        keygen_s: 0.5,
        identity: cipherinfer_protocol::integrity::IdentityKey::generate()
            .expect("identity")
            .public(),
    });
    round_trip(&ExportEvaluationKeysArgs {
        client_id: "c".into(),
        output_path: "/tmp/keys.bin".into(),
        chunk_bytes: Some(1 << 22),
    });
    round_trip(&ExportEvaluationKeysResult {
        ok: true,
        client_id: "c".into(),
        path: "/tmp/keys.bin".into(),
        bytes: 100,
        sha256: PID.into(),
        chunk_count: 1,
        chunk_bytes: 1 << 22,
        algorithm_id: alg(),
        parameter_id: PID.into(),
        galois_elements: vec![5],
        relinearization: true,
    });
    round_trip(&FheEncryptArgs {
        client_id: "c".into(),
        image_path: "/home/user/cat.jpg".into(),
        session_dir: "/runtime_mcp/sessions/s".into(),
        model: None,
        chunk_bytes: None,
        inline_max_bytes: Some(0),
    });
    round_trip(&FheEncryptResult {
        ok: true,
        client_id: "c".into(),
        model: "mnist-cnn".into(),
        session_dir: "/runtime_mcp/sessions/s".into(),
        algorithm_id: alg(),
        parameter_id: PID.into(),
        objects: vec![CiphertextObject {
            file_name: "enc_input_ic0.bin".into(),
            path: "/runtime_mcp/sessions/s/enc_input_ic0.bin".into(),
            bytes: 400_000,
            sha256: PID.into(),
            chunk_count: 1,
        }],
        chunk_bytes: 1 << 22,
        total_bytes: 400_000,
        encrypted_payload_b64: None,
        encrypt_s: 0.1,
        image: Some(ImageFit {
            original_width: 640,
            original_height: 480,
            original_mode: "rgba".into(),
            mode: "grey".into(),
            width: 28,
            height: 28,
            cropped: Some([80, 0, 480, 480]),
            resized: true,
        }),
    });
    round_trip(&FheDecryptArgs {
        client_id: "c".into(),
        encrypted_logit_path: "/runtime_mcp/sessions/s/enc_logit.bin".into(),
        model: None,
        top_k: Some(3),
        result_attestation: None,
    });
    let v = round_trip(&FheDecryptResult {
        ok: true,
        client_id: "c".into(),
        model: "mnist-cnn".into(),
        classification: classification(),
        decrypt_s: 0.01,
    });
    assert_eq!(v["label"], json!("7"), "classification sits at top level");
    round_trip(&PrivateClassifyArgs {
        image_path: "/home/user/7.png".into(),
        remote_url: Some("https://infer.example/mcp".into()),
        model: Some("mnist-cnn".into()),
        client_id: None,
        top_k: None,
    });
    round_trip(&PrivateClassifyResult {
        ok: true,
        model: "mnist-cnn".into(),
        client_id: "c".into(),
        remote_url: "https://infer.example/mcp".into(),
        session_id: "s".into(),
        classification: classification(),
        provisioned: true,
        bytes_uploaded: 400_000,
        evaluation_key_bytes: 20_000_000,
        timings: ClassifyTimings {
            encrypt_s: 0.1,
            total_s: 3.0,
            ..Default::default()
        },
        image: None,
    });
    let fit = ImageFit {
        original_width: 28,
        original_height: 28,
        original_mode: "rgb".into(),
        mode: "grey".into(),
        width: 28,
        height: 28,
        cropped: None,
        resized: false,
    };
    assert!(fit.changed());
    assert_eq!(fit.describe(), "converted from 28x28 rgb to 28x28 grey");
    let wide = ImageFit {
        original_width: 640,
        original_height: 480,
        cropped: Some([80, 0, 480, 480]),
        resized: true,
        ..fit
    };
    assert!(wide.changed());
    assert_eq!(
        wide.describe(),
        "centre 480x480 at (80, 0) kept, resized from 640x480 rgb to 28x28 grey"
    );
}

fn schema_of<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).expect("schema")
}

fn assert_required<T: JsonSchema>(required: &[&str]) {
    let schema = schema_of::<T>();
    assert_eq!(schema["type"], json!("object"), "{}", T::schema_name());
    let listed: Vec<&str> = schema["required"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut want: Vec<&str> = required.to_vec();
    want.sort_unstable();
    let mut got = listed.clone();
    got.sort_unstable();
    assert_eq!(got, want, "required fields of {}", T::schema_name());
    let props = schema["properties"].as_object().expect("properties");
    for (name, prop) in props {
        let described = prop.get("description").is_some()
            || prop.get("$ref").is_some()
            || prop.get("allOf").is_some()
            || prop.get("anyOf").is_some();
        assert!(described, "{}.{name} has no description", T::schema_name());
    }
    assert_eq!(
        schema["additionalProperties"],
        json!(false),
        "{} must refuse unknown fields",
        T::schema_name()
    );
}

#[test]
fn tool_argument_schemas_list_their_required_fields() {
    assert_required::<ProvisionKeysBeginArgs>(&[
        "client_id",
        "algorithm_id",
        "parameter_id",
        "bundle_bytes",
        "bundle_sha256",
        "total_chunks",
    ]);
    assert_required::<ProvisionKeysChunkArgs>(&[
        "client_id",
        "provisioning_id",
        "chunk_index",
        "total_chunks",
        "chunk_b64",
    ]);
    assert_required::<ProvisionKeysCommitArgs>(&["client_id", "provisioning_id"]);
    assert_required::<RevokeKeysArgs>(&["client_id"]);
    assert_required::<UploadCiphertextChunkArgs>(&[
        "client_id",
        "session_id",
        "file_name",
        "chunk_index",
        "total_chunks",
        "chunk_b64",
    ]);
    assert_required::<RemoteInferenceArgs>(&["client_id", "session_id"]);
    assert_required::<FetchResultChunkArgs>(&[
        "client_id",
        "session_id",
        "result_id",
        "chunk_index",
    ]);
    assert_required::<DescribeCapabilitiesArgs>(&[]);
    assert_required::<SessionArgs>(&["client_id", "session_id"]);
    assert_required::<GenerateKeysArgs>(&["client_id", "model", "client_spec"]);
    assert_required::<ExportEvaluationKeysArgs>(&["client_id", "output_path"]);
    assert_required::<FheEncryptArgs>(&["client_id", "image_path", "session_dir"]);
    assert_required::<FheDecryptArgs>(&["client_id", "encrypted_logit_path"]);
    assert_required::<PrivateClassifyArgs>(&["image_path"]);
    // The inference schema carries every draft 7.1 field.
    let schema = schema_of::<RemoteInferenceArgs>();
    for f in [
        "scheme_context",
        "poly_modulus_degree",
        "scale",
        "coeff_modulus",
        "security_level",
        "max_multiplication_depth",
        "input_packing_format",
        "batch_size",
        "slot_count",
        "galois_key_mappings",
        "omp_threads",
    ] {
        assert!(schema["properties"].get(f).is_some(), "{f}");
    }
    // Result schemas generate too, and the inference result lists the 7.2 fields.
    let schema = schema_of::<RemoteInferenceResult>();
    for f in [
        "encrypted_logit_b64",
        "encrypted_logit_bytes",
        "profile",
        "computation_depth_used",
        "output_shape",
        "requires_decryption",
        "remaining_level",
        "current_scale",
        "error_code",
        "result_ref",
    ] {
        assert!(schema["properties"].get(f).is_some(), "{f}");
    }
    for s in [
        schema_of::<ProvisionKeysResult>(),
        schema_of::<Capabilities>(),
        schema_of::<FheEncryptResult>(),
        schema_of::<FheDecryptResult>(),
        schema_of::<PrivateClassifyResult>(),
        schema_of::<ToolError>(),
    ] {
        assert_eq!(s["type"], json!("object"));
    }
}

#[test]
fn draft_example_messages_parse() {
    // Figure 3.
    let up: UploadCiphertextChunkArgs = parse_arguments(json!({
        "client_id": "agent_fe8354f2851b",
        "session_id": "session_20260617_8f3a9b",
        "file_name": "enc_input_ic0_phase0.bin",
        "chunk_index": 0,
        "total_chunks": 2,
        "chunk_b64": "YWJj",
        "auth_token": "k7Qf6w2Jx0aB9dW3nT1uY5vH8sR4eL2"
    }))
    .expect("figure 3");
    up.validate(&Limits::default()).expect("valid");
    // Figure 4.
    let inf: RemoteInferenceArgs = parse_arguments(json!({
        "client_id": "agent_fe8354f2851b",
        "session_id": "session_20260617_8f3a9b",
        "auth_token": "k7Qf6w2Jx0aB9dW3nT1uY5vH8sR4eL2",
        "omp_threads": 9
    }))
    .expect("figure 4");
    assert_eq!(inf.validate().expect("valid"), None);
    assert_eq!(inf.omp_threads, Some(9));
    // Figure 2 and Figure 6.
    let enc: FheEncryptArgs = parse_arguments(json!({
        "client_id": "agent_fe8354f2851b",
        "image_path": "/home/user/cat.jpg",
        "session_dir": "/runtime_mcp/sessions/session_20260617_8f3a9b"
    }))
    .expect("figure 2");
    enc.validate().expect("valid");
    let dec: FheDecryptArgs = parse_arguments(json!({
        "client_id": "agent_fe8354f2851b",
        "encrypted_logit_path": "/runtime_mcp/sessions/session_20260617_8f3a9b/enc_logit.bin"
    }))
    .expect("figure 6");
    dec.validate().expect("valid");
    // The draft's per-chunk acknowledgement is a subset of ours.
    let ack = serde_json::to_value(UploadChunkAck {
        ok: true,
        file_name: "enc_input_ic0_phase0.bin".into(),
        chunk_index: 0,
        chunk_bytes: 4_194_304,
        total_chunks: 2,
        received_chunks: 1,
        object_complete: false,
        duplicate: false,
    })
    .expect("ser");
    let draft = json!({"ok": true, "file_name": "enc_input_ic0_phase0.bin", "chunk_index": 0, "chunk_bytes": 4194304});
    for (k, v) in draft.as_object().expect("object") {
        assert_eq!(&ack[k], v, "{k}");
    }
}

#[test]
fn arguments_refuse_unknown_fields_and_bad_values_with_codes() {
    let err = parse_arguments::<UploadCiphertextChunkArgs>(json!({
        "client_id": "c", "session_id": "s", "file_name": "a", "chunk_index": 0,
        "total_chunks": 1, "chunk_b64": "YWJj", "path": "/etc"
    }))
    .expect_err("unknown field");
    assert_eq!(err.error_code, ErrorCode::InvalidArgument);
    let err = parse_arguments::<UploadCiphertextChunkArgs>(json!({"client_id": "c"}))
        .expect_err("missing fields");
    assert_eq!(err.error_code, ErrorCode::InvalidArgument);

    let mut up = UploadCiphertextChunkArgs {
        client_id: "c".into(),
        session_id: "s".into(),
        file_name: "../../keys".into(),
        chunk_index: 0,
        total_chunks: 1,
        chunk_b64: "YWJj".into(),
        auth_token: None,
        chunk_sha256: None,
    };
    assert_eq!(
        up.validate(&Limits::default())
            .expect_err("hostile")
            .error_code,
        ErrorCode::InvalidFileName
    );
    up.file_name = "ok.bin".into();
    up.chunk_index = 1;
    assert_eq!(
        up.validate(&Limits::default())
            .expect_err("index")
            .error_code,
        ErrorCode::InvalidChunkIndex
    );

    let inf = RemoteInferenceArgs {
        client_id: "c".into(),
        session_id: "s".into(),
        security_level: Some(112),
        ..Default::default()
    };
    assert_eq!(
        inf.validate().expect_err("weak").error_code,
        ErrorCode::WeakParameters
    );
    let inf = RemoteInferenceArgs {
        client_id: "c".into(),
        session_id: "s".into(),
        key_ref: Some(format_key_ref("other", 1)),
        ..Default::default()
    };
    assert_eq!(
        inf.validate().expect_err("other key").error_code,
        ErrorCode::Unauthorized
    );
    let inf = RemoteInferenceArgs {
        client_id: "c".into(),
        session_id: "s".into(),
        algorithm_id: Some("CKKS-RNS-128-N8192-CIFR1".into()),
        ..Default::default()
    };
    assert_eq!(inf.validate().expect("valid"), Some(alg()));
}

#[test]
fn provisioning_begin_validation() {
    let limits = Limits::default();
    let base = ProvisionKeysBeginArgs {
        client_id: "agent_1".into(),
        algorithm_id: alg().to_string(),
        parameter_id: PID.into(),
        model: None,
        mode: ProvisionMode::New,
        bundle_bytes: 40 << 20,
        bundle_sha256: PID.into(),
        total_chunks: 10,
        key_uri: None,
        auth_token: None,
        enrollment_token: None,
        bundle_signature: None,
    };
    assert_eq!(base.validate(&limits).expect("valid"), alg());
    let check = |f: &dyn Fn(&mut ProvisionKeysBeginArgs), code: ErrorCode| {
        let mut a = base.clone();
        f(&mut a);
        assert_eq!(a.validate(&limits).expect_err("invalid").error_code, code);
    };
    check(&|a| a.total_chunks = 1, ErrorCode::ChunkTooLarge);
    check(&|a| a.total_chunks = 0, ErrorCode::InvalidChunkIndex);
    check(&|a| a.bundle_bytes = 2 << 30, ErrorCode::ObjectTooLarge);
    check(
        &|a| a.algorithm_id = "BFV-RNS-128-N8192-CIFR1".into(),
        ErrorCode::UnsupportedAlgorithm,
    );
    check(
        &|a| a.parameter_id = "XYZ".into(),
        ErrorCode::InvalidArgument,
    );
    check(&|a| a.mode = ProvisionMode::Rotate, ErrorCode::Unauthorized);
    check(
        &|a| a.key_uri = Some("keystore:bundles/a.bin".into()),
        ErrorCode::InvalidChunkIndex,
    );
    check(
        &|a| {
            a.key_uri = Some("https://evil.example/keys".into());
            a.total_chunks = 0;
        },
        ErrorCode::InvalidArgument,
    );
    check(
        &|a| {
            a.key_uri = Some("keystore:../etc/passwd".into());
            a.total_chunks = 0;
        },
        ErrorCode::InvalidArgument,
    );
    let mut oob = base.clone();
    oob.key_uri = Some("keystore:bundles/agent_1.keys".into());
    oob.total_chunks = 0;
    oob.validate(&limits).expect("out-of-band reference");
    assert_eq!(
        parse_key_store_uri("keystore:bundles/agent_1.keys").expect("uri"),
        vec!["bundles".to_string(), "agent_1.keys".to_string()]
    );
}

#[test]
fn key_refs_round_trip_and_reject_garbage() {
    let r = format_key_ref("agent_fe8354f2851b", 3);
    assert_eq!(r, "urn:cipherinfer:key:agent_fe8354f2851b:3");
    assert_eq!(
        parse_key_ref(&r).expect("parse"),
        ("agent_fe8354f2851b".to_string(), 3)
    );
    for bad in [
        "",
        "urn:cipherinfer:key:",
        "urn:cipherinfer:key:a:0",
        "urn:cipherinfer:key:a:01",
        "urn:cipherinfer:key:a/b:1",
        "urn:cipherinfer:key:a:1:2",
        "urn:other:key:a:1",
    ] {
        assert!(parse_key_ref(bad).is_err(), "{bad}");
    }
}

#[test]
fn local_paths_and_urls() {
    for bad in ["", "relative/x.png", "/a/../b.png", "/a\0b"] {
        assert_eq!(
            validate_local_path("image_path", bad)
                .expect_err(bad)
                .error_code,
            ErrorCode::PathNotAllowed
        );
    }
    validate_local_path("image_path", "/home/user/cat.jpg").expect("absolute");
    for good in [
        "https://infer.example/mcp",
        "http://127.0.0.1:8080/mcp",
        "http://localhost:9/mcp",
        "http://[::1]:9/mcp",
    ] {
        let r = validate_remote_url(good);
        assert!(r.is_ok(), "{good}: {r:?}");
    }
    for bad in [
        "ftp://x/mcp",
        "http://example.com/mcp",
        "https://user:pw@example.com/mcp",
        "https:///mcp",
        "https://a b/mcp",
        "http://127.0.0.1.evil.example/mcp",
    ] {
        assert!(validate_remote_url(bad).is_err(), "{bad}");
    }
    // A token must never travel in the clear to a host off this machine.
    for remote_plain in [
        "http://example.com/mcp",
        "http://10.0.0.1:8750/mcp",
        "http://127.0.0.1.evil.example/mcp",
        "http://[2001:db8::1]:8750/mcp",
    ] {
        assert_eq!(
            validate_remote_url(remote_plain)
                .expect_err(remote_plain)
                .error_code,
            ErrorCode::InsecureTransport,
            "{remote_plain}"
        );
    }
    let args = PrivateClassifyArgs {
        image_path: "/x.png".into(),
        remote_url: None,
        model: None,
        client_id: None,
        top_k: Some(0),
    };
    assert_eq!(
        args.validate().expect_err("top_k").error_code,
        ErrorCode::InvalidArgument
    );
}

/// The client specification travels typed, with the JSON it always had: field names as in the
/// compiler, tuples and shapes as arrays, the output shape externally tagged.
#[test]
fn the_client_spec_wire_form_is_pinned() {
    let spec = client_spec();
    let v = round_trip(&spec);
    let want = json!({
        "parameters": {
            "log_n": 13,
            "log_q": [30, 26, 26, 26, 26, 26],
            "log_p": [58],
            "log_scale": 26,
            "dnum": 3,
            "secret": {"kind": "ternary"}
        },
        "parameter_id": PID,
        "input_shape": [1, 2, 2],
        "input": {
            "num_cts": 1,
            "positions": [[[0, 0], [0, 4]], [[0, 1]], [[0, 2]], [[0, 3]]],
            "grid": {"c": 1, "h": 2, "w": 2, "block": 4, "row_stride": 2, "col_stride": 1,
                     "channels_per_ct": 1024}
        },
        "batch_size": 1,
        "input_level": 5,
        "input_scale": 67108864.0,
        "rotation_steps": [1, -28],
        "relinearization": true,
        "output": {"num_cts": 1, "positions": [[[0, 0]], [[0, 1]]], "grid": null},
        "output_shape": {"Vector": 2},
        "output_multiplier": 0.25,
        "depth": 5
    });
    assert_eq!(v, want);
    // A specification written before batching (no batch_size) still reads, as batch 1.
    let mut old = want.clone();
    old.as_object_mut().expect("object").remove("batch_size");
    let back: ClientSpec = serde_json::from_value(old).expect("no batch_size");
    assert_eq!(back, spec);
    // Unknown fields inside the parameters are refused (the literal denies them).
    let mut extra = want;
    extra["parameters"]["log_k"] = json!(3);
    assert!(serde_json::from_value::<ClientSpec>(extra).is_err());
}

/// RNS primes exceed 2^53, which a JavaScript client's JSON numbers do not hold: `coeff_modulus`
/// and the client specification's `q`/`p` are written as decimal strings, read from strings or
/// integers, and their schemas say string.
#[test]
fn primes_above_2_53_travel_as_decimal_strings() {
    // 2^61 - 1 is prime; as an f64 it would read back as 2^61.
    let big: u64 = (1 << 61) - 1;
    let as_strings = json!({"client_id": "c", "session_id": "s",
        "coeff_modulus": ["1073643521", big.to_string()]});
    let as_numbers = json!({"client_id": "c", "session_id": "s",
        "coeff_modulus": [1_073_643_521_u64, big]});
    let a: RemoteInferenceArgs = parse_arguments(as_strings.clone()).expect("strings");
    let b: RemoteInferenceArgs = parse_arguments(as_numbers).expect("numbers");
    assert_eq!(a.coeff_modulus, Some(vec![1_073_643_521, big]));
    assert_eq!(a, b);
    assert_eq!(serde_json::to_value(&a).expect("json"), as_strings);
    for bad in [json!(["0x1f"]), json!(["-3"]), json!([3.5]), json!(["1 2"])] {
        let v = json!({"client_id": "c", "session_id": "s", "coeff_modulus": bad});
        let e = parse_arguments::<RemoteInferenceArgs>(v).expect_err("refused");
        assert_eq!(e.error_code, ErrorCode::InvalidArgument);
    }
    let schema = schema_of::<RemoteInferenceArgs>();
    let field = &schema["properties"]["coeff_modulus"];
    assert_eq!(field["items"]["type"], json!("string"), "{field}");
    // The client specification inside describe_capabilities: primes as strings.
    let mut spec = client_spec();
    spec.parameters.q = vec![1_073_643_521];
    spec.parameters.p = vec![big];
    let v = serde_json::to_value(&spec).expect("spec");
    assert_eq!(v["parameters"]["p"], json!([big.to_string()]));
    assert_eq!(v["parameters"]["q"], json!(["1073643521"]));
    let back: ClientSpec = serde_json::from_value(v).expect("reads back");
    assert_eq!(back.parameters.p, vec![big]);
}

/// A client_spec of the wrong form is ERROR_INVALID_ARGUMENT naming the field, never a
/// JSON-RPC or internal error.
#[test]
fn a_malformed_client_spec_is_an_invalid_argument_naming_the_field() {
    let good = serde_json::to_value(client_spec()).expect("spec");
    let args = |spec: Value| json!({"client_id": "c", "model": "mnist-cnn", "client_spec": spec});
    let parsed: GenerateKeysArgs = parse_arguments(args(good.clone())).expect("good spec");
    assert_eq!(parsed.client_spec, client_spec());
    let mut wrong_type = good.clone();
    wrong_type["input_level"] = json!("x");
    let mut missing = good.clone();
    missing
        .as_object_mut()
        .expect("object")
        .remove("rotation_steps");
    let mut bad_shape = good.clone();
    bad_shape["output_shape"] = json!([10]);
    let mut bad_position = good.clone();
    bad_position["input"]["positions"][0][0] = json!([0, 1, 2]);
    for bad in [
        wrong_type,
        missing,
        bad_shape,
        bad_position,
        json!({"foo": 1}),
        json!([1]),
        json!(null),
        json!("spec"),
    ] {
        let err = parse_arguments::<GenerateKeysArgs>(args(bad.clone())).expect_err("refused");
        assert_eq!(err.error_code, ErrorCode::InvalidArgument, "{bad}");
        assert!(err.message.contains("client_spec"), "{}", err.message);
    }
    let err = parse_arguments::<GenerateKeysArgs>(json!({"client_id": "c", "model": "m"}))
        .expect_err("missing");
    assert_eq!(err.error_code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("client_spec"), "{}", err.message);

    // The same check on the client side, reading a server's ModelInfo.
    let mut info = serde_json::to_value(model_info()).expect("info");
    info["client_spec"]["depth"] = json!(-1);
    let err = serde_json::from_value::<ModelInfo>(info).expect_err("refused");
    assert!(err.to_string().contains("client_spec"), "{err}");
}

fn model_info() -> ModelInfo {
    let params = Preset::Pn13Depth5.build().expect("preset");
    ModelInfo {
        name: "mnist-cnn".into(),
        description: "MNIST digits".into(),
        input_shape: vec![1, 2, 2],
        output_shape: vec![2],
        labels: vec!["a".into(), "b".into()],
        algorithm_id: alg(),
        parameter_id: PID.into(),
        parameters: ExtendedParameters::from_ckks(&params),
        multiplicative_depth: 5,
        rotation_steps: vec![1, -28],
        galois_elements: vec![5, 25],
        relinearization: true,
        input_objects: vec!["input-0.ct".into()],
        client_spec: client_spec(),
        preprocessing: None,
    }
}

/// The tool schemas describe the client specification field by field (not as any object).
#[test]
fn the_client_spec_schema_is_typed() {
    let check = |schema: &Value, what: &str| {
        let defs = &schema["$defs"];
        let spec = &defs["ClientSpec"];
        for f in [
            "parameters",
            "parameter_id",
            "input_shape",
            "input",
            "input_level",
            "input_scale",
            "rotation_steps",
            "relinearization",
            "output",
            "output_shape",
            "output_multiplier",
            "depth",
            "batch_size",
        ] {
            assert!(spec["properties"].get(f).is_some(), "{what}: {f}");
        }
        for d in ["ParametersLiteral", "SlotMap", "Shape"] {
            assert!(defs.get(d).is_some(), "{what}: {d}");
        }
        assert!(defs["ParametersLiteral"]["properties"]["q"].is_object());
    };
    let args = schema_of::<GenerateKeysArgs>();
    assert_eq!(
        args["properties"]["client_spec"]["$ref"],
        json!("#/$defs/ClientSpec")
    );
    check(&args, "GenerateKeysArgs");
    check(&schema_of::<ModelInfo>(), "ModelInfo");
    check(&schema_of::<Capabilities>(), "Capabilities");
}
