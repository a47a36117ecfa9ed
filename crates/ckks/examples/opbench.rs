//! Per-operation timings and serialized sizes, printed as JSON with the keys of
//! `bench/seal_peer.py`, for the side-by-side comparison with SEAL (`bench/compare.py`).
//!
//! `cargo run --release -p cipherinfer-ckks --example opbench -- [--threads N] [--preset NAME]
//! [--reps-factor F]`. Defaults: one thread, the SEAL chain preset (N = 2^14,
//! [60, 40×8] + [58]).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use cipherinfer_ckks::serialization::ToBytes;
use cipherinfer_ckks::{Encoder, Encryptor, Evaluator, KeyGenerator, Preset, secret_key_pair};

fn time<F: FnMut()>(reps: usize, mut f: F) -> (f64, f64) {
    for _ in 0..2.min(reps) {
        f();
    }
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0])
}

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxErr> {
    let mut threads = 1usize;
    let mut preset = Preset::Pn14SealChain;
    let mut factor = 1.0f64;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--threads" => {
                threads = args.get(i + 1).ok_or("--threads N")?.parse()?;
                i += 1;
            }
            "--preset" => {
                let name = args.get(i + 1).ok_or("--preset NAME")?;
                preset = serde_json_name(name)?;
                i += 1;
            }
            "--reps-factor" => {
                factor = args.get(i + 1).ok_or("--reps-factor F")?.parse()?;
                i += 1;
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
        i += 1;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| run(preset, threads, factor))
}

fn serde_json_name(name: &str) -> Result<Preset, BoxErr> {
    Preset::ALL
        .into_iter()
        .find(|p| format!("{p:?}").eq_ignore_ascii_case(name) || preset_key(*p) == name)
        .ok_or_else(|| format!("unknown preset {name}").into())
}

fn preset_key(p: Preset) -> String {
    serde_plain(p)
}

fn serde_plain(p: Preset) -> String {
    // SCREAMING_SNAKE_CASE name as in serialized literals.
    let dbg = format!("{p:?}");
    let mut out = String::new();
    for (i, c) in dbg.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn run(preset: Preset, threads: usize, factor: f64) -> Result<(), BoxErr> {
    let reps = |r: usize| ((r as f64 * factor).ceil() as usize).max(3);
    let params = preset.build()?;
    let encoder = Encoder::new(params.clone());
    let mut kg = KeyGenerator::new(params.clone())?;
    let sk = kg.secret_key();
    let pk = kg.public_key(&sk)?;
    let mut out = serde_json_map();
    let mut put = |k: &str, v: serde_json::Value| {
        out.insert(k.to_string(), v);
    };
    let record = |name: &str, (median, min): (f64, f64), r: usize| {
        eprintln!("{name:28} median {median:9.3} ms   min {min:9.3} ms   ({r} reps)");
        (name.to_string(), median, min, r)
    };
    let mut results = Vec::new();

    let (m, mn) = time(reps(20), || {
        let _ = kg.galois_key(&sk, params.galois_element(1)).expect("key");
    });
    results.push(record("keygen_rotation_key", (m, mn), reps(20)));
    let (m, mn) = time(reps(20), || {
        let _ = kg.relinearization_key(&sk).expect("key");
    });
    results.push(record("keygen_relin_key", (m, mn), reps(20)));

    let steps: Vec<i64> = (1..=16).collect();
    let keys = kg.evaluation_keys(&sk, true, &steps, false)?;
    let ev = Evaluator::new(keys.clone());
    let top = params.max_level();
    let scale = params.default_scale();
    let v: Vec<f64> = (0..params.slots())
        .map(|i| ((i * 7919) % 1000) as f64 / 1000.0 - 0.5)
        .collect();
    let mut enc = Encryptor::new(pk.clone())?;
    let (mut sym, dec) = secret_key_pair(sk)?;

    let r = reps(50);
    results.push(record(
        "encode",
        time(r, || drop(encoder.encode(&v, top, scale).expect("enc"))),
        r,
    ));
    let pt = encoder.encode(&v, top, scale)?;
    results.push(record(
        "encrypt",
        time(r, || drop(enc.encrypt(&pt).expect("enc"))),
        r,
    ));
    results.push(record(
        "encode_encrypt",
        time(r, || {
            drop(
                enc.encrypt(&encoder.encode(&v, top, scale).expect("e"))
                    .expect("e"),
            )
        }),
        r,
    ));
    results.push(record(
        "encrypt_symmetric_seeded",
        time(r, || drop(sym.encrypt(&pt).expect("enc"))),
        r,
    ));
    let a = enc.encrypt(&pt)?;
    let b = enc.encrypt(&pt)?;
    let r = reps(40);
    results.push(record(
        "mul_relin_rescale",
        time(r, || drop(ev.mul_rescale(&a, &b).expect("mul"))),
        r,
    ));
    results.push(record(
        "multiply",
        time(reps(50), || drop(ev.mul_no_relin(&a, &b).expect("mul"))),
        reps(50),
    ));
    let d = ev.mul_no_relin(&a, &b)?;
    results.push(record(
        "relinearize",
        time(r, || drop(ev.relinearize(&d).expect("relin"))),
        r,
    ));
    let m = ev.mul(&a, &b)?;
    results.push(record(
        "rescale",
        time(r, || drop(ev.rescale(&m).expect("rs"))),
        r,
    ));
    results.push(record(
        "rotate",
        time(r, || drop(ev.rotate(&a, 1).expect("rot"))),
        r,
    ));
    let r16 = reps(12);
    results.push(record(
        "rotate16",
        time(r16, || drop(ev.rotate_hoisted(&a, &steps).expect("rot"))),
        r16,
    ));
    results.push(record(
        "rotate16_unhoisted",
        time(r16, || {
            for &s in &steps {
                drop(ev.rotate(&a, s).expect("rot"));
            }
        }),
        r16,
    ));
    let r = reps(50);
    results.push(record(
        "decrypt",
        time(r, || drop(dec.decrypt(&a).expect("dec"))),
        r,
    ));
    let dp = dec.decrypt(&a)?;
    results.push(record(
        "decode",
        time(r, || drop(encoder.decode(&dp).expect("dec"))),
        r,
    ));
    results.push(record(
        "decrypt_decode",
        time(r, || {
            drop(encoder.decode(&dec.decrypt(&a).expect("d")).expect("d"))
        }),
        r,
    ));

    for (name, median, min, r) in results {
        put(&format!("{name}_ms"), median.into());
        put(&format!("{name}_ms_min"), min.into());
        put(&format!("{name}_reps"), r.into());
    }

    // Serialized sizes.
    let seeded = sym.encrypt(&pt)?;
    let after = ev.mul_rescale(&a, &b)?;
    put("ciphertext_bytes", a.to_bytes().len().into());
    put("ciphertext_seeded_bytes", seeded.to_bytes().len().into());
    put(
        "ciphertext_after_rescale_bytes",
        after.to_bytes().len().into(),
    );
    put("public_key_bytes", pk.to_bytes().len().into());
    let relin = keys.relinearization_key().ok_or("relin key")?;
    put("relin_key_bytes", relin.to_bytes().len().into());
    let g1 = keys
        .galois_key(params.galois_element(1))
        .ok_or("galois key")?;
    put("rotation_key_bytes", g1.to_bytes().len().into());
    // Keys are always stored seeded (uniform halves regenerated from a 32-byte seed).
    put("relin_key_seeded_bytes", relin.to_bytes().len().into());
    put("rotation_key_seeded_bytes", g1.to_bytes().len().into());
    // The depth-7 preset's rotation key, for the size target of seeded keys at N = 2^14.
    let p7 = Preset::Pn14Depth7.build()?;
    let mut kg7 = KeyGenerator::new(p7.clone())?;
    let sk7 = kg7.secret_key();
    let g7 = kg7.galois_key(&sk7, p7.galois_element(1))?;
    put("pn14_depth7_rotation_key_bytes", g7.to_bytes().len().into());

    // Correctness of what was timed.
    let want: Vec<f64> = v.iter().map(|x| x * x).collect();
    let got = encoder.decode(&dec.decrypt(&after)?)?;
    let err = got
        .iter()
        .zip(&want)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let rot = encoder.decode(&dec.decrypt(&ev.rotate(&a, 1)?)?)?;
    let n = v.len();
    let rerr = (0..n)
        .map(|i| (rot[i] - v[(i + 1) % n]).abs())
        .fold(0.0, f64::max);
    put(
        "correctness",
        serde_json::json!({
            "mul_relin_rescale_max_abs_err_log2": err.log2(),
            "rotate_max_abs_err_log2": rerr.log2(),
        }),
    );
    put("implementation", "cipherinfer-ckks".into());
    put("threads", threads.into());
    put(
        "params",
        serde_json::json!({
            "preset": format!("{preset:?}"),
            "log_n": params.log_n(),
            "q": params.q_primes(),
            "p": params.p_primes(),
            "dnum": params.dnum(),
            "log_qp": params.log_qp(),
        }),
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::Value::Object(out))?
    );
    Ok(())
}

fn serde_json_map() -> serde_json::Map<String, serde_json::Value> {
    serde_json::Map::new()
}
