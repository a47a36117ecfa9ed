//! The compiled-model artifact: it rebuilds exactly the executor that was compiled, at the
//! parameters' security level, and every damaged or hostile file gets its own error code.

use std::path::{Path, PathBuf};

use cipherinfer_ckks::SecurityLevel;
use cipherinfer_compiler::artifact::{ARTIFACT_HEADER_LEN, MAX_ARTIFACT_BYTES};
use cipherinfer_compiler::report::{CompileReport, agreement};
use cipherinfer_compiler::{Artifact, Compiled, ServingOptions, compile_for_serving};
use cipherinfer_model::package::ModelCard;
use cipherinfer_model::{Manifest, onnx, plain};
use sha2::{Digest, Sha256};

fn mnist_card() -> ModelCard {
    serde_json::from_value(serde_json::json!({
        "format_version": 1,
        "name": "mnist-test",
        "labels": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        "input": {"channels": 1, "height": 28, "width": 28, "mean": [0.1307], "std": [0.3081]}
    }))
    .expect("card")
}

/// mnist-cnn (HE-friendly as shipped) compiled at `security`, with its first images.
fn compiled(security: SecurityLevel) -> (Compiled, Vec<plain::Tensor>) {
    let manifest = Manifest::shipped().expect("manifest");
    let entry = manifest.model("mnist-cnn").expect("entry").clone();
    let ir = onnx::import(&manifest.read_model("mnist-cnn").expect("model").bytes).expect("onnx");
    let samples = manifest.load_samples(&entry.dataset).expect("samples");
    let inputs: Vec<_> = plain::sample_inputs(&samples, &entry.input)
        .expect("inputs")
        .into_iter()
        .take(20)
        .map(|(t, _)| t)
        .collect();
    let options = ServingOptions {
        security,
        ..ServingOptions::default()
    };
    let c = compile_for_serving(&ir, &inputs, &options).expect("compiles");
    (c, inputs)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("cipherinfer-artifact-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// Artifact bytes with `payload` under a correct header (so only the content is wrong).
fn with_payload(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"CIMODEL\n");
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

fn code_of(bytes: &[u8]) -> &'static str {
    match Artifact::from_bytes(Path::new("x.cimodel"), bytes) {
        Ok(a) => match a.instantiate(Path::new("x.cimodel")) {
            Ok(_) => "ok",
            Err(e) => e.code(),
        },
        Err(e) => e.code(),
    }
}

#[test]
fn an_artifact_rebuilds_the_same_executor_and_reports_its_costs() {
    let (c, inputs) = compiled(SecurityLevel::Bits128);
    let dir = temp_dir("roundtrip");
    let path = dir.join("mnist-test.cimodel");
    let artifact = c.artifact(mnist_card(), "00");
    artifact.write(&path).expect("write");
    let back = Artifact::read(&path).expect("read");
    assert_eq!(back, artifact);
    let (_, he) = back.instantiate(&path).expect("instantiate");
    assert_eq!(he.plan(), c.he.plan());
    assert_eq!(he.parameters().id(), c.he.parameters().id());
    assert_eq!(he.client_spec(), c.he.client_spec());

    // The report: sizes from the formulas, agreement 100% for a network used as given.
    let images: Vec<_> = inputs.iter().map(|t| (t.clone(), None)).collect();
    let agree = agreement(&c.model, &c.model, &images, "calibration")
        .expect("agreement")
        .expect("some");
    assert_eq!(agree.top1_agreement, 1.0);
    assert_eq!(agree.images, inputs.len());
    let report = CompileReport::new("mnist-test", &c.model, &c.he, None, Some(agree), None);
    assert_eq!(report.depth, c.he.depth());
    assert_eq!(report.parameters.ring_degree, 8192);
    assert_eq!(report.parameters.security_bits, 128);
    assert_eq!(report.rotation_keys, c.he.rotation_steps().len());
    // PN13_DEPTH5 sizes (docs/formats.md §1.6): 669 777 bytes per full Galois key, 669 769 for
    // relinearization, a seeded input ciphertext of 163 922 bytes per block. Rotation keys
    // serve only the levels they are used at, so the bundle the client makes — whose size the
    // report gives exactly — is smaller than full keys.
    let relin = if report.relinearization { 669_769 } else { 0 };
    let mut kg = cipherinfer_ckks::KeyGenerator::new(c.he.parameters().clone()).expect("kg");
    let sk = kg.secret_key();
    let bundle =
        c.he.client_spec()
            .evaluation_keys(&mut kg, &sk)
            .expect("keys");
    assert_eq!(
        report.eval_keys_bytes,
        cipherinfer_ckks::serialization::ToBytes::to_bytes(&bundle).len()
    );
    assert!(report.eval_keys_bytes < 45 + relin + report.rotation_keys * 669_777);
    assert_eq!(report.input_bytes % 163_922, 0);
    assert!(report.layers.len() == c.model.nodes().len() && !report.steps.is_empty());
    let text = report.to_string();
    assert!(
        text.contains("depth 5") && text.contains("128-bit security"),
        "{text}"
    );

    // A key budget travels in the artifact: the served model asks for the same, smaller keys.
    let budget = report.eval_keys_bytes as u64 * 3 / 4;
    let mut small = c;
    small.he = small.he.with_key_budget(Some(budget)).expect("budget");
    let artifact = small.artifact(mnist_card(), "00");
    assert_eq!(artifact.max_key_bytes, Some(budget));
    artifact.write(&path).expect("write");
    let (_, he) = Artifact::read(&path)
        .expect("read")
        .instantiate(&path)
        .expect("instantiate");
    assert_eq!(he.client_spec(), small.he.client_spec());
    assert!(he.client_spec().evaluation_keys_bytes(he.parameters()) as u64 <= budget);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn higher_security_is_kept_through_the_artifact() {
    let (c, _) = compiled(SecurityLevel::Bits192);
    assert_eq!(c.he.parameters().security(), SecurityLevel::Bits192);
    let artifact = c.artifact(mnist_card(), "00");
    assert_eq!(artifact.parameters.security_bits, Some(192));
    let bytes = artifact.to_bytes().expect("bytes");
    let back = Artifact::from_bytes(Path::new("a"), &bytes).expect("parses");
    let (_, he) = back.instantiate(Path::new("a")).expect("instantiates");
    assert_eq!(he.parameters().security(), SecurityLevel::Bits192);
    assert_eq!(he.parameters().id(), c.he.parameters().id());
    // The same network at 192 bits needs a ring at least as large as at 128.
    let (c128, _) = compiled(SecurityLevel::Bits128);
    assert!(c.he.parameters().n() >= c128.he.parameters().n());
}

#[test]
fn damaged_and_hostile_artifacts_are_refused_with_their_code() {
    let (c, _) = compiled(SecurityLevel::Bits128);
    let artifact = c.artifact(mnist_card(), "00");
    let good = artifact.to_bytes().expect("bytes");
    assert_eq!(code_of(&good), "ok");

    // Not an artifact at all.
    assert_eq!(code_of(b"{\"card\": 1}"), "artifact_not_compiled_model");
    assert_eq!(code_of(b""), "artifact_not_compiled_model");
    // Truncated anywhere, or trailing bytes.
    for len in [
        9,
        ARTIFACT_HEADER_LEN - 1,
        ARTIFACT_HEADER_LEN,
        good.len() - 1,
    ] {
        assert_eq!(code_of(&good[..len]), "artifact_truncated", "prefix {len}");
    }
    let mut padded = good.clone();
    padded.push(b' ');
    assert_eq!(code_of(&padded), "artifact_truncated");
    // Another version.
    let mut v2 = good.clone();
    v2[8] = 2;
    assert_eq!(code_of(&v2), "artifact_version");
    // A flipped bit anywhere in the payload.
    for at in [ARTIFACT_HEADER_LEN, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x04;
        assert_eq!(code_of(&bad), "artifact_checksum", "byte {at}");
    }
    // A correct checksum over content that is wrong.
    let mut value: serde_json::Value = serde_json::to_value(&artifact).expect("json");
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = value.clone();
        f(&mut v);
        code_of(&with_payload(&serde_json::to_vec(&v).expect("json")))
    };
    assert_eq!(edit(&|v| v["surprise"] = 1.into()), "artifact_malformed");
    assert_eq!(
        edit(&|v| v["model"]["nodes"][0]["op"]["weights"] = serde_json::json!([1.0])),
        "artifact_malformed"
    );
    assert_eq!(
        edit(&|v| v["card"]["labels"] = serde_json::json!(["a", "b"])),
        "artifact_invalid"
    );
    assert_eq!(
        edit(&|v| v["card"]["input"]["height"] = 32.into()),
        "artifact_invalid"
    );
    assert_eq!(
        edit(&|v| v["output_divisor"] = 0.into()),
        "artifact_invalid"
    );
    // Parameters that do not meet the security they claim, or too shallow for the plan.
    assert_eq!(
        edit(&|v| v["parameters"]["security_bits"] = 256.into()),
        "artifact_invalid"
    );
    assert_eq!(
        edit(&|v| {
            let q = v["parameters"]["q"].as_array().expect("q").clone();
            v["parameters"]["q"] = serde_json::Value::Array(q[..3].to_vec());
        }),
        "artifact_invalid"
    );
    // A ReLU left in the network (an artifact not written by compile).
    let relu = cipherinfer_model::ir::Op::Activation(cipherinfer_model::ir::Activation::Relu);
    value["model"]["nodes"][1]["op"] = serde_json::to_value(relu).expect("json");
    let relu = with_payload(&serde_json::to_vec(&value).expect("json"));
    assert_eq!(code_of(&relu), "artifact_invalid");

    // Files: missing, oversized (sparse), and an atomic write leaves no temporary behind.
    let dir = temp_dir("hostile");
    let missing = Artifact::read(&dir.join("none.cimodel")).expect_err("missing");
    assert_eq!(missing.code(), "artifact_unreadable");
    let huge = dir.join("huge.cimodel");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(MAX_ARTIFACT_BYTES + 1))
        .expect("sparse file");
    assert_eq!(
        Artifact::read(&huge).expect_err("huge").code(),
        "artifact_too_large"
    );
    let out = dir.join("ok.cimodel");
    artifact.write(&out).expect("write");
    artifact.write(&out).expect("overwrite");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    std::fs::remove_dir_all(dir).ok();
}
