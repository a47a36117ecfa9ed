//! LocalCrypto end to end with real 128-bit parameters (mnist-cnn, compiled as the remote
//! compiles it): keygen → export → encrypt a shipped PNG → the remote's evaluation in process →
//! the remote's output bytes → fhe_decrypt; then every error path a caller can cause.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::os::unix::fs::PermissionsExt;

use cipherinfer_ckks::serialization::ToBytes;
use cipherinfer_local::output::encode_output;
use cipherinfer_local::store::{CLIENT_FILE, EVALUATION_KEYS_FILE, SECRET_KEY_FILE};
use cipherinfer_protocol::local::{
    ExportEvaluationKeysArgs, FheDecryptArgs, FheEncryptArgs, GenerateKeysArgs,
};
use cipherinfer_protocol::validate::sha256_hex;
use cipherinfer_protocol::{ErrorCode, parse_arguments};
use common::*;

fn encrypt_args(client_id: &str, image: &str, session_dir: &str) -> FheEncryptArgs {
    FheEncryptArgs {
        client_id: client_id.into(),
        image_path: image.into(),
        session_dir: session_dir.into(),
        model: None,
        chunk_bytes: None,
        inline_max_bytes: None,
    }
}

fn decrypt_args(client_id: &str, path: &str) -> FheDecryptArgs {
    FheDecryptArgs {
        client_id: client_id.into(),
        encrypted_logit_path: path.into(),
        model: None,
        top_k: None,
        result_attestation: None,
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs the remote's evaluation on the objects of an encrypt result and writes its output bytes
/// (exactly what `encrypted_logit_b64` decodes to) to `name` in the work directory.
fn remote_round(
    scratch: &Scratch,
    bundle: &[u8],
    enc: &cipherinfer_protocol::local::FheEncryptResult,
    name: &str,
) -> String {
    let inputs: Vec<Vec<u8>> = enc
        .objects
        .iter()
        .map(|o| std::fs::read(&o.path).unwrap())
        .collect();
    let out = evaluate_remote(bundle, &inputs);
    // The remote returns its first output ciphertext's encoding; encode_output of one
    // ciphertext is exactly that.
    let bytes = encode_output(&out);
    assert_eq!(bytes, out[0].to_bytes());
    let path = scratch.join("work").join(name);
    std::fs::write(&path, &bytes).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn keygen_export_encrypt_evaluate_decrypt_matches_the_plaintext_model() {
    let scratch = Scratch::new("e2e");
    let crypto = crypto(&scratch);
    let t = std::time::Instant::now();
    let info = &served().info;
    let keys = crypto.generate_keys(&keygen_args("alice")).expect("keygen");
    eprintln!(
        "keygen {:.2}s ({} galois keys)",
        t.elapsed().as_secs_f64(),
        keys.galois_elements.len()
    );
    assert_eq!(keys.parameter_id, info.parameter_id);
    assert_eq!(keys.algorithm_id, info.algorithm_id);
    // The identity that signs the client's calls is made with its first key set.
    assert_eq!(
        keys.identity,
        crypto.store().identity("alice").unwrap().public()
    );
    assert_eq!(keys.galois_elements, info.galois_elements);
    assert_eq!(keys.relinearization, info.relinearization);
    assert_eq!(
        keys.parameters.max_multiplication_depth,
        Some(info.multiplicative_depth)
    );

    // Export: the bytes the remote's provision_keys_commit decodes.
    let export = crypto
        .export_evaluation_keys(&ExportEvaluationKeysArgs {
            client_id: "alice".into(),
            output_path: scratch.str("work/alice.keys"),
            chunk_bytes: Some(1 << 20),
        })
        .expect("export");
    let bundle = std::fs::read(&export.path).unwrap();
    assert_eq!(export.bytes, bundle.len() as u64);
    assert_eq!(export.sha256, sha256_hex(&bundle));
    assert_eq!(export.bytes, keys.evaluation_key_bytes);
    assert_eq!(export.chunk_count as u64, export.bytes.div_ceil(1 << 20));
    assert_eq!(export.galois_elements, info.galois_elements);
    assert_eq!(mode(std::path::Path::new(&export.path)), 0o600);

    // File modes of the key store.
    let dir = scratch.join("keys").join("alice");
    assert_eq!(mode(&scratch.join("keys")), 0o700);
    assert_eq!(mode(&dir), 0o700);
    for f in [SECRET_KEY_FILE, CLIENT_FILE, EVALUATION_KEYS_FILE] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(
        std::fs::read(dir.join(EVALUATION_KEYS_FILE)).unwrap(),
        bundle
    );

    let manifest = cipherinfer_model::Manifest::shipped().unwrap();
    let samples = &manifest.dataset("mnist").unwrap().images;
    let loaded = crypto.store().load("alice").unwrap();
    for (n, sample) in samples.iter().enumerate() {
        let image = copy_in(
            &scratch,
            &manifest.path_of(&sample.file),
            &format!("img-{n}.png"),
        );
        let session = scratch.str(&format!("work/session-{n}/nested"));
        let t = std::time::Instant::now();
        let enc = crypto
            .fhe_encrypt(&encrypt_args("alice", &image, &session))
            .expect("encrypt");
        let encrypt_s = t.elapsed().as_secs_f64();
        assert_eq!(enc.objects.len(), info.input_objects.len());
        for (o, want) in enc.objects.iter().zip(&info.input_objects) {
            assert_eq!(&o.file_name, want);
            let bytes = std::fs::read(&o.path).unwrap();
            assert_eq!(o.bytes, bytes.len() as u64);
            assert_eq!(o.sha256, sha256_hex(&bytes));
            assert_eq!(o.chunk_count as u64, o.bytes.div_ceil(4 << 20));
            assert_eq!(mode(std::path::Path::new(&o.path)), 0o600);
        }
        assert_eq!(mode(std::path::Path::new(&enc.session_dir)), 0o700);
        // One small object: inline by default.
        let inline = enc.encrypted_payload_b64.as_deref().expect("inline");
        assert_eq!(
            cipherinfer_protocol::validate::decode_base64_limited(inline, 1 << 24).unwrap(),
            std::fs::read(&enc.objects[0].path).unwrap()
        );

        let t = std::time::Instant::now();
        let result = remote_round(&scratch, &bundle, &enc, &format!("out-{n}.ct"));
        let remote_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let d = crypto
            .fhe_decrypt(&decrypt_args("alice", &result))
            .expect("decrypt");
        let decrypt_s = t.elapsed().as_secs_f64();
        // The draft's form of the file (6.5): the Base64 text of the response, as received
        // (here with line breaks and a final newline), decrypts to the same classification.
        let b64 = cipherinfer_protocol::validate::encode_base64(&std::fs::read(&result).unwrap());
        let wrapped: Vec<&str> = b64
            .as_bytes()
            .chunks(76)
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        let text_path = format!("{result}.b64");
        std::fs::write(&text_path, wrapped.join("\n") + "\n").unwrap();
        let from_text = crypto
            .fhe_decrypt(&decrypt_args("alice", &text_path))
            .expect("decrypt Base64 file");
        assert_eq!(from_text.classification.logits, d.classification.logits);
        // Text that is not Base64 is a malformed result, not a panic or an internal error.
        std::fs::write(&text_path, "not a result\n").unwrap();
        fails(
            crypto.fhe_decrypt(&decrypt_args("alice", &text_path)),
            ErrorCode::MalformedCiphertext,
        );

        let x = cipherinfer_local::image::preprocess_file(
            &manifest.path_of(&sample.file),
            loaded.spec.input_shape,
            &loaded.input,
        )
        .unwrap();
        let want = reference_logits(&x);
        let c = &d.classification;
        let argmax = cipherinfer_model::plain::argmax(&want).unwrap();
        assert_eq!(c.class_index as usize, argmax, "sample {}", sample.file);
        assert_eq!(c.label, info.labels[argmax]);
        assert_eq!(c.output_shape, vec![10]);
        assert_eq!(c.logits.len(), 10);
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let err = c
            .logits
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err <= 1e-2 * scale, "error {err} vs logits up to {scale}");
        let measured_bits = -err.log2();
        eprintln!(
            "{}: label {} precision_bits {:.2} measured {:.2} (encrypt {encrypt_s:.2}s, remote {remote_s:.2}s, decrypt {decrypt_s:.3}s)",
            sample.file, c.label, c.precision_bits, measured_bits
        );
        // mnist-cnn is compiled to N = 8192 with a 2^26 scale and output multiplier 8: its
        // decrypted logits carry about 2^-6.5..2^-8 of absolute error, which the estimate
        // must not overstate.
        assert!(c.precision_bits >= 5.0, "precision {}", c.precision_bits);
        assert!(
            c.precision_bits <= measured_bits + 2.0,
            "estimate {} optimistic: measured {measured_bits}",
            c.precision_bits
        );
        // Softmax and top-k.
        let sum: f64 = c.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-9);
        assert_eq!(c.top_k.len(), 3);
        assert_eq!(c.top_k[0].class_index, c.class_index);
        assert!(
            c.top_k
                .windows(2)
                .all(|w| w[0].probability >= w[1].probability)
        );
    }
}

/// A key set for `client_id` and one encrypted-and-evaluated sample; returns (bundle, result
/// path).
fn provisioned(
    scratch: &Scratch,
    crypto: &cipherinfer_local::LocalCrypto,
    client_id: &str,
) -> (Vec<u8>, String) {
    crypto
        .generate_keys(&keygen_args(client_id))
        .expect("keygen");
    let (_, bundle) = crypto.store().evaluation_keys(client_id).unwrap();
    let image = copy_in(scratch, &mnist_sample(0), &format!("{client_id}.png"));
    let enc = crypto
        .fhe_encrypt(&encrypt_args(
            client_id,
            &image,
            &scratch.str(&format!("work/{client_id}-session")),
        ))
        .expect("encrypt");
    let result = remote_round(scratch, &bundle, &enc, &format!("{client_id}-out.ct"));
    (bundle, result)
}

fn fails<T: std::fmt::Debug>(r: cipherinfer_protocol::Result<T>, code: ErrorCode) -> String {
    match r {
        Ok(v) => panic!("expected {code}, got {v:?}"),
        Err(e) => {
            assert_eq!(e.error_code, code, "{}", e.message);
            e.message
        }
    }
}

#[test]
fn unknown_and_existing_clients() {
    let scratch = Scratch::new("clients");
    let crypto = crypto(&scratch);
    let image = copy_in(&scratch, &mnist_sample(0), "a.png");
    let session = scratch.str("work/s");
    fails(
        crypto.fhe_encrypt(&encrypt_args("nobody", &image, &session)),
        ErrorCode::UnknownClient,
    );
    fails(
        crypto.fhe_decrypt(&decrypt_args("nobody", &image)),
        ErrorCode::UnknownClient,
    );
    fails(
        crypto.export_evaluation_keys(&ExportEvaluationKeysArgs {
            client_id: "nobody".into(),
            output_path: scratch.str("work/k.bin"),
            chunk_bytes: None,
        }),
        ErrorCode::UnknownClient,
    );
    // client_id is data, never a path.
    let mut bad = keygen_args("../etc");
    fails(crypto.generate_keys(&bad), ErrorCode::InvalidArgument);
    bad.client_id = "a/b".into();
    fails(crypto.generate_keys(&bad), ErrorCode::InvalidArgument);

    crypto.generate_keys(&keygen_args("carol")).unwrap();
    let secret = scratch.join("keys/carol").join(SECRET_KEY_FILE);
    let first = std::fs::read(&secret).unwrap();
    fails(
        crypto.generate_keys(&keygen_args("carol")),
        ErrorCode::ClientExists,
    );
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        first,
        "refused keygen kept the key"
    );
    let identity = crypto.store().identity("carol").unwrap().public();
    let mut again = keygen_args("carol");
    again.overwrite = true;
    let regenerated = crypto.generate_keys(&again).unwrap();
    assert_eq!(regenerated.identity, identity, "new keys keep the identity");
    assert_ne!(
        std::fs::read(&secret).unwrap(),
        first,
        "overwrite made a new key"
    );
    assert_eq!(crypto.store().list().unwrap(), vec!["carol".to_string()]);
    // No staging or trash directories are left behind (the work directory of a confined
    // store is made when it opens, the identities with the first key set).
    let leftovers: Vec<_> = std::fs::read_dir(scratch.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| {
            name != cipherinfer_local::classify::WORK_DIR
                && name != cipherinfer_local::store::IDENTITIES_DIR
        })
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("carol")]);
}

#[test]
fn labels_and_preprocessing_fall_back_to_the_manifest_then_defaults() {
    let scratch = Scratch::new("fallback");
    let crypto = crypto(&scratch);
    let mut a = keygen_args("m1");
    a.labels = None;
    a.preprocessing = None;
    crypto.generate_keys(&a).unwrap();
    let r = crypto.store().record("m1").unwrap();
    assert_eq!(r.labels, served().info.labels);
    assert_eq!(r.preprocessing["mean"], serde_json::json!([0.1307]));

    a.client_id = "m2".into();
    a.model = "my-own-model".into();
    crypto.generate_keys(&a).unwrap();
    let r = crypto.store().record("m2").unwrap();
    assert_eq!(r.labels, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(r.preprocessing["mean"], serde_json::json!([0.0]));
    assert_eq!(r.preprocessing["std"], serde_json::json!([1.0]));

    a.client_id = "m3".into();
    a.labels = Some(vec!["only".into(), "two".into()]);
    fails(crypto.generate_keys(&a), ErrorCode::InvalidArgument);
    a.labels = None;
    a.preprocessing = Some(
        serde_json::json!({"name": "input", "shape": [1, 1, 28, 28], "layout": "NCHW",
        "dtype": "float32", "preprocess": "", "mean": [0.1], "std": [0.0]}),
    );
    fails(crypto.generate_keys(&a), ErrorCode::InvalidArgument);
    a.preprocessing = Some(serde_json::json!([1, 2]));
    fails(crypto.generate_keys(&a), ErrorCode::InvalidArgument);
    assert!(!crypto.store().exists("m3").unwrap());
}

#[test]
fn untrusted_client_specs_are_validated() {
    let scratch = Scratch::new("spec");
    let crypto = crypto(&scratch);
    let mut a = keygen_args("s");
    // The form is checked when the arguments are parsed (a typed ClientSpec).
    for bad in [serde_json::json!({"foo": 1}), serde_json::json!([1])] {
        let mut args = serde_json::to_value(&a).unwrap();
        args["client_spec"] = bad;
        let err = parse_arguments::<GenerateKeysArgs>(args).unwrap_err();
        assert_eq!(err.error_code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("client_spec"), "{}", err.message);
    }

    // The same primes on a ring half the size: far above the 128-bit bound of N = 4096.
    let mut spec = served().info.client_spec.clone();
    spec.parameters.log_n = 12;
    a.client_spec = spec;
    fails(crypto.generate_keys(&a), ErrorCode::WeakParameters);

    // A parameter id that does not match the parameters.
    let mut spec = served().info.client_spec.clone();
    spec.parameter_id = "00".repeat(32);
    a.client_spec = spec;
    fails(crypto.generate_keys(&a), ErrorCode::InvalidArgument);

    // Rotation steps beyond the slots.
    let mut spec = served().info.client_spec.clone();
    spec.rotation_steps = vec![1i64 << 40];
    a.client_spec = spec;
    fails(crypto.generate_keys(&a), ErrorCode::InvalidArgument);

    // Key levels that do not match the steps, or above the parameters' top level.
    let mut spec = served().info.client_spec.clone();
    spec.rotation_key_levels.push(0);
    a.client_spec = spec;
    fails(crypto.generate_keys(&a), ErrorCode::InvalidArgument);
    let mut spec = served().info.client_spec.clone();
    spec.rotation_key_levels[0] = 99;
    a.client_spec = spec;
    fails(crypto.generate_keys(&a), ErrorCode::InvalidArgument);

    // An input map that points outside its ciphertexts.
    let mut spec = served().info.client_spec.clone();
    spec.input.positions[0][0].0 = spec.input.num_cts;
    a.client_spec = spec;
    fails(crypto.generate_keys(&a), ErrorCode::InvalidArgument);

    // Valid 128-bit parameters at N = 2^15, but 700 rotation keys: about 15 GiB of keys and
    // more of memory, above what a local server makes. Refused before any key is made.
    let params = cipherinfer_ckks::Preset::Pn15Depth16.build().unwrap();
    let mut spec = served().info.client_spec.clone();
    spec.parameters = params.literal().clone();
    spec.parameter_id = params.id_hex();
    spec.input_level = params.max_level();
    spec.rotation_steps = (1..=700).collect();
    // Every key at the top level (no levels given: the largest keys).
    spec.rotation_key_levels.clear();
    a.client_spec = spec;
    let msg = fails(crypto.generate_keys(&a), ErrorCode::ObjectTooLarge);
    assert!(
        msg.contains("700 rotation keys") && msg.contains("GiB"),
        "{msg}"
    );
    assert!(crypto.store().list().unwrap().is_empty());
}

#[test]
fn corrupt_key_store_files_are_refused() {
    let scratch = Scratch::new("corrupt");
    let crypto = crypto(&scratch);
    let (_, result) = provisioned(&scratch, &crypto, "dave");
    let dir = scratch.join("keys/dave");
    let secret = dir.join(SECRET_KEY_FILE);
    let good = std::fs::read(&secret).unwrap();

    // Truncated secret key.
    std::fs::write(&secret, &good[..good.len() / 2]).unwrap();
    let msg = fails(
        crypto.fhe_decrypt(&decrypt_args("dave", &result)),
        ErrorCode::MalformedKeys,
    );
    assert!(msg.contains("secret.key"), "{msg}");
    // Not a key at all.
    std::fs::write(&secret, b"not a key").unwrap();
    fails(
        crypto.fhe_decrypt(&decrypt_args("dave", &result)),
        ErrorCode::MalformedKeys,
    );
    // Empty.
    std::fs::write(&secret, b"").unwrap();
    fails(
        crypto.fhe_decrypt(&decrypt_args("dave", &result)),
        ErrorCode::MalformedKeys,
    );
    // Missing.
    std::fs::remove_file(&secret).unwrap();
    fails(
        crypto.fhe_decrypt(&decrypt_args("dave", &result)),
        ErrorCode::MalformedKeys,
    );
    std::fs::write(&secret, &good).unwrap();
    crypto
        .fhe_decrypt(&decrypt_args("dave", &result))
        .expect("restored key works");

    // Corrupt and truncated record.
    let record = dir.join(CLIENT_FILE);
    let good_record = std::fs::read(&record).unwrap();
    std::fs::write(&record, &good_record[..good_record.len() - 10]).unwrap();
    fails(
        crypto.fhe_decrypt(&decrypt_args("dave", &result)),
        ErrorCode::MalformedKeys,
    );
    let mut v: serde_json::Value = serde_json::from_slice(&good_record).unwrap();
    v["client_spec"]["parameters"]["log_n"] = serde_json::json!(12);
    std::fs::write(&record, serde_json::to_vec(&v).unwrap()).unwrap();
    fails(
        crypto.fhe_decrypt(&decrypt_args("dave", &result)),
        ErrorCode::MalformedKeys,
    );
    // A client_spec of the wrong form is a corrupt record too.
    v["client_spec"]["parameters"]["log_n"] = serde_json::json!("x");
    std::fs::write(&record, serde_json::to_vec(&v).unwrap()).unwrap();
    fails(
        crypto.fhe_decrypt(&decrypt_args("dave", &result)),
        ErrorCode::MalformedKeys,
    );
    // A record as the untyped store wrote it (client_spec an arbitrary JSON object, keys in
    // sorted order) still loads.
    let untyped: serde_json::Value = serde_json::from_slice(&good_record).unwrap();
    std::fs::write(&record, serde_json::to_vec_pretty(&untyped).unwrap()).unwrap();
    crypto
        .fhe_decrypt(&decrypt_args("dave", &result))
        .expect("a record in the untyped layout loads");
    std::fs::write(&record, &good_record).unwrap();

    // A tampered bundle is caught by its recorded SHA-256 before export.
    let keys = dir.join(EVALUATION_KEYS_FILE);
    let mut bundle = std::fs::read(&keys).unwrap();
    let mid = bundle.len() / 2;
    bundle[mid] ^= 1;
    std::fs::write(&keys, &bundle).unwrap();
    fails(
        crypto.export_evaluation_keys(&ExportEvaluationKeysArgs {
            client_id: "dave".into(),
            output_path: scratch.str("work/dave.keys"),
            chunk_bytes: None,
        }),
        ErrorCode::MalformedKeys,
    );
    assert!(!scratch.join("work/dave.keys").exists());
}

#[test]
fn unreadable_and_missing_images() {
    let scratch = Scratch::new("images");
    let crypto = crypto(&scratch);
    crypto.generate_keys(&keygen_args("erin")).unwrap();
    let session = scratch.str("work/s");
    let missing = scratch.str("work/missing.png");
    fails(
        crypto.fhe_encrypt(&encrypt_args("erin", &missing, &session)),
        ErrorCode::FileNotFound,
    );
    let text = scratch.join("work/notes.png");
    std::fs::write(&text, "this is not an image\n").unwrap();
    fails(
        crypto.fhe_encrypt(&encrypt_args("erin", &text.to_string_lossy(), &session)),
        ErrorCode::ImageUnreadable,
    );
    let png = std::fs::read(mnist_sample(0)).unwrap();
    let truncated = scratch.join("work/truncated.png");
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
    fails(
        crypto.fhe_encrypt(&encrypt_args(
            "erin",
            &truncated.to_string_lossy(),
            &session,
        )),
        ErrorCode::ImageUnreadable,
    );
    // A directory is not an image.
    fails(
        crypto.fhe_encrypt(&encrypt_args("erin", &scratch.str("work"), &session)),
        ErrorCode::PathNotAllowed,
    );
    // Nothing was written for the failed calls.
    assert!(
        std::fs::read_dir(scratch.join("work/s"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
}

#[test]
fn paths_are_confined() {
    let scratch = Scratch::new("paths");
    let crypto = crypto(&scratch);
    crypto.generate_keys(&keygen_args("frank")).unwrap();
    let inside = copy_in(&scratch, &mnist_sample(0), "in.png");
    let outside = scratch.join("out.png");
    std::fs::copy(mnist_sample(0), &outside).unwrap();
    let session = scratch.str("work/s");

    let a = encrypt_args("frank", &outside.to_string_lossy(), &session);
    fails(crypto.fhe_encrypt(&a), ErrorCode::PathNotAllowed);
    // `..` is refused by form, even when it would resolve inside.
    let dotdot = format!("{}/work/../work/in.png", scratch.path().display());
    fails(
        crypto.fhe_encrypt(&encrypt_args("frank", &dotdot, &session)),
        ErrorCode::PathNotAllowed,
    );
    fails(
        crypto.fhe_encrypt(&encrypt_args("frank", "work/in.png", &session)),
        ErrorCode::PathNotAllowed,
    );
    fails(
        crypto.fhe_encrypt(&encrypt_args("frank", "", &session)),
        ErrorCode::PathNotAllowed,
    );
    // A symbolic link inside the allowed directory that leads outside.
    let link = scratch.join("work/link.png");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    fails(
        crypto.fhe_encrypt(&encrypt_args("frank", &link.to_string_lossy(), &session)),
        ErrorCode::PathNotAllowed,
    );
    let dir_link = scratch.join("work/elsewhere");
    std::fs::create_dir(scratch.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(scratch.join("elsewhere"), &dir_link).unwrap();
    fails(
        crypto.fhe_encrypt(&encrypt_args(
            "frank",
            &inside,
            &format!("{}/new", dir_link.display()),
        )),
        ErrorCode::PathNotAllowed,
    );
    assert!(!scratch.join("elsewhere/new").exists());
    // Session directories outside are neither created nor used.
    fails(
        crypto.fhe_encrypt(&encrypt_args("frank", &inside, &scratch.str("s2"))),
        ErrorCode::PathNotAllowed,
    );
    assert!(!scratch.join("s2").exists());
    fails(
        crypto.export_evaluation_keys(&ExportEvaluationKeysArgs {
            client_id: "frank".into(),
            output_path: scratch.str("keys.bin"),
            chunk_bytes: None,
        }),
        ErrorCode::PathNotAllowed,
    );
    fails(
        crypto.fhe_decrypt(&decrypt_args("frank", &outside.to_string_lossy())),
        ErrorCode::PathNotAllowed,
    );
    // Inside works; inline is off with inline_max_bytes 0.
    let mut ok = encrypt_args("frank", &inside, &session);
    ok.inline_max_bytes = Some(0);
    ok.chunk_bytes = Some(65_536);
    let r = crypto.fhe_encrypt(&ok).unwrap();
    assert!(r.encrypted_payload_b64.is_none());
    assert_eq!(r.chunk_bytes, 65_536);
    assert_eq!(
        r.objects[0].chunk_count as u64,
        r.objects[0].bytes.div_ceil(65_536)
    );
    // A key set for another model is not silently used.
    ok.model = Some("fashion-cnn".into());
    fails(crypto.fhe_encrypt(&ok), ErrorCode::UnknownModel);
}

#[test]
fn tampered_results_and_foreign_keys() {
    let scratch = Scratch::new("tamper");
    let crypto = crypto(&scratch);
    let (_, result) = provisioned(&scratch, &crypto, "grace");
    crypto.generate_keys(&keygen_args("heidi")).unwrap();
    let good = std::fs::read(&result).unwrap();
    let reference = crypto
        .fhe_decrypt(&decrypt_args("grace", &result))
        .unwrap()
        .classification;

    // Another client's key (same parameters): the decryption is noise, flagged as such.
    let msg = fails(
        crypto.fhe_decrypt(&decrypt_args("heidi", &result)),
        ErrorCode::DecryptionFailed,
    );
    assert!(!msg.is_empty());

    let tampered = scratch.join("work/tampered.ct");
    let path = tampered.to_string_lossy().into_owned();
    let write = |bytes: &[u8]| std::fs::write(&tampered, bytes).unwrap();
    // Header: magic, version, type, parameter id, level, count, scale.
    for (at, what) in [
        (0, "magic"),
        (4, "version"),
        (6, "type"),
        (7, "flags"),
        (12, "parameter id"),
        (40, "level"),
        (41, "count"),
        (49, "scale"),
    ] {
        let mut b = good.clone();
        b[at] ^= 0x80;
        write(&b);
        let e = crypto
            .fhe_decrypt(&decrypt_args("grace", &path))
            .err()
            .unwrap_or_else(|| panic!("{what} flip accepted"));
        assert!(
            matches!(
                e.error_code,
                ErrorCode::MalformedCiphertext | ErrorCode::DecryptionFailed
            ),
            "{what}: {e:?}"
        );
    }
    // Truncated, extended, empty, garbage.
    for b in [
        &good[..good.len() - 1],
        &[good.as_slice(), &[0u8]].concat()[..],
        &[][..],
        &b"CIFR garbage"[..],
    ] {
        write(b);
        fails(
            crypto.fhe_decrypt(&decrypt_args("grace", &path)),
            ErrorCode::MalformedCiphertext,
        );
    }
    // Body bit flips: never a panic; each is refused, or decrypts to a result whose error stays
    // within the precision it reports.
    let mut refused = 0;
    let mut tried = 0;
    let body = 56..good.len() - 32;
    let step = (body.end - body.start) / 40;
    for at in body.step_by(step) {
        let mut b = good.clone();
        b[at] ^= 0xFF;
        write(&b);
        tried += 1;
        match crypto.fhe_decrypt(&decrypt_args("grace", &path)) {
            Err(e) => {
                assert!(
                    matches!(
                        e.error_code,
                        ErrorCode::MalformedCiphertext | ErrorCode::DecryptionFailed
                    ),
                    "{e:?}"
                );
                refused += 1;
            }
            Ok(d) => {
                let c = d.classification;
                let err = c
                    .logits
                    .iter()
                    .zip(&reference.logits)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(
                    err <= 2.0 * (-c.precision_bits).exp2()
                        + 2.0 * (-reference.precision_bits).exp2(),
                    "byte {at}: error {err} beyond the reported precision {}",
                    c.precision_bits
                );
            }
        }
    }
    eprintln!("{refused} of {tried} body corruptions refused");
    assert!(refused > 0);
    // Several ciphertexts where the model produces one.
    let ct =
        <cipherinfer_ckks::Ciphertext as cipherinfer_ckks::serialization::FromBytes>::from_bytes(
            served().params(),
            &good,
            1 << 26,
        )
        .unwrap();
    write(&encode_output(&[ct.clone(), ct]));
    fails(
        crypto.fhe_decrypt(&decrypt_args("grace", &path)),
        ErrorCode::MalformedCiphertext,
    );
    // The untouched result still decrypts.
    write(&good);
    crypto.fhe_decrypt(&decrypt_args("grace", &path)).unwrap();
}

#[test]
fn attested_results_are_checked_before_decryption() {
    use cipherinfer_protocol::integrity::{IdentityKey, ResultClaim};
    use cipherinfer_protocol::local::ResultAttestation;
    let scratch = Scratch::new("attest");
    let crypto = crypto(&scratch);
    let (_, result) = provisioned(&scratch, &crypto, "erin");
    let bytes = std::fs::read(&result).unwrap();
    let server = IdentityKey::generate().unwrap();
    let url = "http://127.0.0.1:8750/mcp";
    let claim = ResultClaim {
        client_id: "erin".into(),
        session_id: "s".into(),
        model: "m".into(),
        algorithm_id: "A".into(),
        parameter_id: "p".into(),
        encrypted_logit_sha256: sha256_hex(&bytes),
        encrypted_logit_bytes: bytes.len() as u64,
    };
    let nonce = "ab".repeat(16);
    let attested = |claim: &ResultClaim, key: &IdentityKey| {
        let mut a = decrypt_args("erin", &result);
        a.result_attestation = Some(ResultAttestation {
            remote_url: url.into(),
            claim: claim.clone(),
            signature: claim.sign(key, &nonce),
        });
        a
    };
    // No server identity pinned for the URL yet: refused.
    fails(
        crypto.fhe_decrypt(&attested(&claim, &server)),
        ErrorCode::IdentityMismatch,
    );
    crypto.store().pin_server(url, &server.public()).unwrap();
    crypto
        .fhe_decrypt(&attested(&claim, &server))
        .expect("an attested result decrypts");
    // Signed by another server, a signed field altered, another client's claim.
    let impostor = IdentityKey::generate().unwrap();
    fails(
        crypto.fhe_decrypt(&attested(&claim, &impostor)),
        ErrorCode::IdentityMismatch,
    );
    let mut altered = attested(&claim, &server);
    if let Some(a) = altered.result_attestation.as_mut() {
        a.claim.session_id = "t".into();
    }
    fails(crypto.fhe_decrypt(&altered), ErrorCode::BadSignature);
    let mut other = claim.clone();
    other.client_id = "olga".into();
    fails(
        crypto.fhe_decrypt(&attested(&other, &server)),
        ErrorCode::BadSignature,
    );
    // The file altered on disk after the check was signed: refused before decryption.
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 1;
    std::fs::write(&result, &flipped).unwrap();
    fails(
        crypto.fhe_decrypt(&attested(&claim, &server)),
        ErrorCode::IntegrityMismatch,
    );
}
