//! Writes one or more valid encodings per fuzz target into `corpus/<target>/` (the fuzzer
//! starts from them instead of from nothing): CKKS objects, tool arguments of every remote tool,
//! Base64 chunks, names and tokens, canonical JSON, and chunk-staging scenarios. Run from
//! `fuzz/`: `cargo run --release --example seed_corpus`.

use std::fs;
use std::path::Path;

use cipherinfer_ckks::serialization::ToBytes;
use cipherinfer_ckks::{Encryptor, EvaluationKeys, Evaluator, Preset};
use cipherinfer_ckks_fuzz::{TINY_LITERAL, fixture, key_generator};
use cipherinfer_protocol::validate::{encode_base64, sha256_hex};
use serde_json::{Value, json};

fn write(target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(name), bytes)?;
    eprintln!("corpus/{target}/{name}: {} bytes", bytes.len());
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let f = fixture();
    let params = &f.params;
    let sk = f.decryptor.secret_key();
    let mut kg = key_generator();
    let pk = kg.public_key(sk)?;
    let relin = kg.relinearization_key(sk)?;
    let rot1 = kg.galois_key(sk, params.galois_element(1))?;
    let conj = kg.galois_key(sk, params.galois_element_conjugate())?;
    let keys = kg.evaluation_keys(sk, true, &[1, 2], true)?;

    let pt = f.encoder.encode(
        &[1.0, -2.0, 0.5],
        params.max_level(),
        params.default_scale(),
    )?;
    let full = Encryptor::new(pk.clone())?.encrypt(&pt)?;
    let ev = Evaluator::new(keys.clone());
    let deg2 = ev.mul_no_relin(&f.ciphertext, &full)?;
    let low = ev.mul_rescale(&f.ciphertext, &full)?;

    write("ciphertext", "seeded", &f.ciphertext.to_bytes())?;
    write("ciphertext", "full", &full.to_bytes())?;
    write("ciphertext", "degree2", &deg2.to_bytes())?;
    write("ciphertext", "level0", &low.to_bytes())?;
    write("plaintext", "top", &pt.to_bytes())?;
    write(
        "plaintext",
        "level0",
        &f.encoder.encode(&[3.0], 0, 16.0)?.to_bytes(),
    )?;
    write("public_key", "pk", &pk.to_bytes())?;
    write("relin_key", "relin", &relin.to_bytes())?;
    write("galois_key", "rotate1", &rot1.to_bytes())?;
    write("galois_key", "conjugate", &conj.to_bytes())?;
    write("evaluation_keys", "relin_rot1_rot2_conj", &keys.to_bytes())?;
    write(
        "evaluation_keys",
        "empty",
        &EvaluationKeys::new(params.clone()).to_bytes(),
    )?;
    write("secret_key", "fixed", &sk.export_bytes())?;
    write("secret_key", "random", &kg.secret_key().export_bytes())?;

    write("parameters_json", "tiny_insecure", TINY_LITERAL.as_bytes())?;
    write(
        "parameters_json",
        "tiny_explicit",
        &serde_json::to_vec(params.literal())?,
    )?;
    for preset in Preset::ALL {
        let name = format!("{preset:?}");
        write(
            "parameters_json",
            &name,
            &serde_json::to_vec(&preset.literal())?,
        )?;
    }
    write(
        "parameters_json",
        "sparse",
        br#"{"log_n":13,"log_q":[40,30,30],"log_p":[48],"log_scale":30,"secret":{"kind":"sparse_ternary","hamming_weight":192}}"#,
    )?;
    tool_arguments()?;
    chunk_base64()?;
    canonical_json()?;
    chunk_reassembly()?;
    Ok(())
}

/// A selector byte followed by the JSON text of `v`.
fn selected(selector: u8, v: &Value) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend_from_slice(v.to_string().as_bytes());
    out
}

fn tool_arguments() -> std::io::Result<()> {
    let hex64 = sha256_hex(b"bundle");
    let token = format!("cit_{}", "A".repeat(43));
    let signature = json!({"nonce": "0123456789abcdef0123456789abcdef", "timestamp_ms": 1_750_000_000_000u64,
        "signature": encode_base64(&[5; 64])});
    let seeds = [
        (
            "begin",
            0,
            json!({"client_id": "agent_fe8354f2851b", "algorithm_id": "CKKS-RNS-128-N8192-CIFR1",
            "parameter_id": hex64, "model": "mnist-cnn", "bundle_bytes": 100_000, "bundle_sha256": hex64,
            "total_chunks": 2}),
        ),
        (
            "begin_key_uri",
            0,
            json!({"client_id": "c1", "algorithm_id": "CKKS-RNS-128-N16384-CIFR1",
            "parameter_id": hex64, "bundle_bytes": 5, "bundle_sha256": hex64, "total_chunks": 0,
            "key_uri": "keystore:team/keys.bin", "mode": "new", "enrollment_token": token}),
        ),
        (
            "begin_rotate",
            0x80,
            json!({"client_id": "c1", "algorithm_id": "CKKS-RNS-128-N8192-CIFR1",
            "parameter_id": hex64, "bundle_bytes": 70_000, "bundle_sha256": hex64, "total_chunks": 3,
            "mode": "rotate", "auth_token": token, "request_signature": signature}),
        ),
        (
            "chunk",
            1,
            json!({"client_id": "c1", "provisioning_id": "0123456789abcdef0123456789abcdef",
            "chunk_index": 1, "total_chunks": 4, "chunk_b64": "AAECAw==", "chunk_sha256": hex64}),
        ),
        (
            "commit",
            2,
            json!({"client_id": "c1", "provisioning_id": "0123456789abcdef0123456789abcdef"}),
        ),
        ("revoke", 3, json!({"client_id": "c1", "auth_token": token})),
        (
            "upload",
            4,
            json!({"client_id": "c1", "session_id": "session_20260617_8f3a9b",
            "file_name": "input-0.ct", "chunk_index": 0, "total_chunks": 3, "chunk_b64": "AAECAw==",
            "auth_token": token, "chunk_sha256": hex64}),
        ),
        (
            "upload_signed",
            0x84,
            json!({"client_id": "c1", "session_id": "s1", "file_name": "NUL.ct",
            "chunk_index": 2, "total_chunks": 2, "chunk_b64": "AA==", "request_signature": signature}),
        ),
        (
            "inference",
            5,
            json!({"client_id": "c1", "session_id": "s1", "model": "mnist-cnn",
            "key_ref": "urn:cipherinfer:key:c1:3", "algorithm_id": "CKKS-RNS-128-N8192-CIFR1",
            "max_inline_bytes": 0, "scheme_context": "CKKS", "poly_modulus_degree": 8192,
            "scale": 1_099_511_627_776.0, "coeff_modulus": [1_152_921_504_606_748_673u64, 1_099_511_922_689u64],
            "special_prime_count": 1, "key_switching_digits": 1, "security_level": 128,
            "max_multiplication_depth": 0, "input_packing_format": "chw_blocks", "batch_size": 1,
            "slot_count": 4096, "galois_key_mappings": {"1": 5, "-1": 16_381}, "omp_threads": 2,
            "input_sha256": {"input-0.ct": hex64}}),
        ),
        (
            "fetch",
            6,
            json!({"client_id": "c1", "session_id": "s1", "result_id": "r-1", "chunk_index": 0,
            "auth_token": token}),
        ),
        (
            "session",
            7,
            json!({"client_id": "c1", "session_id": "s1", "auth_token": token}),
        ),
        ("describe", 8, json!({"model": "mnist-cnn"})),
    ];
    for (name, selector, v) in seeds {
        let mut bytes = vec![selector];
        if selector & 0x80 != 0 {
            for limit in [65_536u32, 200_000, 300_000] {
                bytes.extend_from_slice(&limit.to_le_bytes());
            }
        }
        bytes.extend_from_slice(v.to_string().as_bytes());
        write("tool_arguments", name, &bytes)?;
    }
    write(
        "tool_arguments",
        "key_ref",
        b"\x09urn:cipherinfer:key:agent_1:12",
    )?;
    write(
        "tool_arguments",
        "key_store_uri",
        b"\x0akeystore:a/b.c/d-e_f",
    )?;
    Ok(())
}

fn chunk_base64() -> std::io::Result<()> {
    let mut b64 = vec![0, 0];
    b64.extend_from_slice(&100u16.to_le_bytes());
    b64.extend_from_slice(encode_base64(b"some chunk bytes!").as_bytes());
    write("chunk_base64", "base64", &b64)?;
    let mut big = vec![0, 0x80];
    big.extend_from_slice(&u64::MAX.to_le_bytes());
    big.extend_from_slice(b"QUJD");
    write("chunk_base64", "base64_unlimited", &big)?;
    write("chunk_base64", "file_name", b"\x01input-0.ct")?;
    write("chunk_base64", "reserved_name", b"\x01com1.bin")?;
    write(
        "chunk_base64",
        "digest",
        format!("\x01{}", sha256_hex(b"x")).as_bytes(),
    )?;
    let mut numbers = vec![2];
    for v in [3u32, 4, 512] {
        numbers.extend_from_slice(&v.to_le_bytes());
    }
    for v in [u64::MAX - 1, 2, u64::MAX] {
        numbers.extend_from_slice(&v.to_le_bytes());
    }
    numbers.extend_from_slice(&(32u64 << 20).to_le_bytes());
    write("chunk_base64", "arithmetic", &numbers)?;
    write(
        "chunk_base64",
        "missing",
        &[3, 10, 0, 1, 0, 5, 0, 9, 0, 0, 0x80],
    )?;
    let token = format!("cit_{}", "x_-9".repeat(11).split_at(43).0);
    write("chunk_base64", "token", format!("\x04{token}").as_bytes())?;
    write(
        "chunk_base64",
        "bearer",
        format!("\x04  bearer   {token} ").as_bytes(),
    )?;
    Ok(())
}

fn canonical_json() -> std::io::Result<()> {
    let seeds = [
        (
            "object",
            json!({"b": [1, -2, 3.5, 1e300, -0.0], "a": {"é": "\u{1}\n\"\\", "": null}, "auth_token": "x"}),
        ),
        (
            "numbers",
            json!([
                0,
                u64::MAX,
                i64::MIN,
                0.1,
                5e-324,
                1.7976931348623157e308,
                123_456_789.125
            ]),
        ),
        ("deep", (0..40).fold(json!(1), |v, _| json!([v]))),
        (
            "strings",
            json!({"\u{7f}": "\u{2028}\u{fffd}\t\u{0}", "Z": true, "a": false}),
        ),
    ];
    for (i, (name, v)) in seeds.into_iter().enumerate() {
        write("canonical_json", name, &selected(i as u8, &v))?;
    }
    write(
        "canonical_json",
        "text_forms",
        b"\x81{\"k\": [1E2, 1e-7, -0, 18446744073709551616, \"\\u00e9\\ud83d\\ude00\"], \"k\": 2}",
    )
}

/// Chunk-staging scenarios in the encoding `fuzz_targets/chunk_reassembly.rs` reads.
struct Scenario(Vec<u8>);

impl Scenario {
    /// Limits: chunk size class (0..8), 64 KiB units of the object limit, objects per session
    /// (1..=4), extra object bytes, per-client bytes, sessions byte.
    fn new(
        chunk: u8,
        units: u8,
        objects: u8,
        object_extra: u16,
        client: u16,
        sessions: u8,
    ) -> Self {
        let mut v = vec![chunk | (units << 3) | ((objects - 1) << 6)];
        v.extend_from_slice(&object_extra.to_le_bytes());
        v.extend_from_slice(&client.to_le_bytes());
        v.push(sessions);
        Self(v)
    }

    fn op(&mut self, bob: bool, session: u8, kind: u8) -> &mut Self {
        self.0.push(u8::from(bob) << 7 | session << 4 | kind);
        self
    }

    /// Chunk `index` of `total` (both below 8) of object `file` (0..3): `variant` picks the
    /// bytes, `len_code` their length (below 0xc0: 1..=64 bytes; above: KiB), `digest` 0 none,
    /// 5 right, 7 wrong.
    #[allow(clippy::too_many_arguments)]
    fn upload(
        &mut self,
        bob: bool,
        session: u8,
        file: u8,
        index: u8,
        total: u8,
        variant: u8,
        len_code: u8,
        digest: u8,
    ) -> &mut Self {
        self.op(bob, session, file);
        self.0
            .extend_from_slice(&[total - 1, index, variant, len_code, digest]);
        self
    }

    fn status(&mut self, bob: bool, session: u8) -> &mut Self {
        self.op(bob, session, 12)
    }
}

fn chunk_reassembly() -> std::io::Result<()> {
    let mut s = Scenario::new(6, 2, 2, 0xffff, 0xffff, 0xff);
    s.upload(false, 0, 0, 2, 3, 0, 40, 0)
        .upload(false, 0, 0, 0, 3, 0, 40, 5)
        .status(false, 0);
    s.upload(false, 0, 0, 2, 3, 0, 40, 0)
        .upload(false, 0, 0, 2, 3, 1, 40, 0);
    s.upload(false, 0, 0, 1, 2, 0, 40, 0)
        .op(false, 0, 15)
        .status(false, 0);
    s.upload(false, 0, 0, 1, 3, 0, 40, 7)
        .upload(false, 0, 0, 1, 3, 0, 40, 0)
        .status(false, 0);
    s.op(false, 0, 14).status(false, 0);
    write("chunk_reassembly", "complete_resend_conflict_restart", &s.0)?;

    let mut s = Scenario::new(7, 1, 1, 0, 0xffff, 0xfe);
    s.upload(false, 1, 1, 0, 2, 2, 0xff, 0)
        .upload(false, 1, 1, 1, 2, 2, 1, 0)
        .upload(false, 1, 1, 1, 2, 2, 2, 0);
    s.upload(false, 1, 2, 0, 1, 2, 3, 0).status(false, 1);
    write("chunk_reassembly", "object_limit", &s.0)?;

    let mut s = Scenario::new(3, 0, 4, 500, 300, 1);
    s.upload(false, 0, 0, 0, 1, 0, 63, 0)
        .upload(false, 1, 0, 0, 1, 0, 63, 0);
    s.upload(false, 0, 1, 0, 1, 0, 63, 0)
        .upload(false, 0, 2, 0, 1, 0, 63, 0);
    s.upload(true, 0, 0, 0, 1, 0, 10, 0)
        .status(true, 0)
        .op(true, 0, 14)
        .status(false, 0);
    write("chunk_reassembly", "quotas_and_ownership", &s.0)?;

    let mut s = Scenario::new(2, 0, 1, 99, 0xffff, 0xff);
    s.op(false, 2, 3);
    let text = b"AAE=";
    s.0.extend_from_slice(&[0, 0, 0xf0, text.len() as u8]);
    s.0.extend_from_slice(text);
    s.0.push(0);
    s.upload(false, 2, 0, 0, 1, 0, 0xc1, 0).status(false, 2);
    write("chunk_reassembly", "raw_text_and_oversized", &s.0)?;
    Ok(())
}
