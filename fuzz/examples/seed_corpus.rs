//! Writes one or more valid encodings per fuzz target into `corpus/<target>/` (the fuzzer
//! starts from them instead of from nothing). Run from `fuzz/`:
//! `cargo run --release --example seed_corpus`.

use std::fs;
use std::path::Path;

use cipherinfer_ckks::serialization::ToBytes;
use cipherinfer_ckks::{Encryptor, EvaluationKeys, Evaluator, Preset};
use cipherinfer_ckks_fuzz::{TINY_LITERAL, fixture, key_generator};

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
    Ok(())
}
