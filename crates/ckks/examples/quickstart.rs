//! A private dense layer with a square activation, end to end on the 128-bit N = 2^14 preset:
//! encrypt a vector with the secret key (seeded ciphertext), evaluate `y = (W·x)^2` and a slot
//! sum on the ciphertext with only public evaluation keys, decrypt, and compare with plaintext.
//!
//! `cargo run --release -p cipherinfer-ckks --example quickstart`

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use cipherinfer_ckks::{
    Encoder, Evaluator, KeyGenerator, LinearTransform, Preset, Result, secret_key_pair,
};

fn main() -> Result<()> {
    let t0 = Instant::now();
    let params = Preset::Pn14Depth7.build()?;
    println!(
        "parameters: N = {}, log2(QP) = {:.0} (128-bit bound {}), depth {}, id {}",
        params.n(),
        params.log_qp(),
        438,
        params.max_level(),
        &params.id_hex()[..16]
    );
    // A 10x64 "dense layer" on a 64-value input, like the last layer of a small classifier.
    let (rows, cols) = (10usize, 64usize);
    let w: Vec<Vec<f64>> = (0..rows)
        .map(|i| {
            (0..cols)
                .map(|j| (((i * 31 + j * 17) % 23) as f64 - 11.0) / 40.0)
                .collect()
        })
        .collect();
    let x: Vec<f64> = (0..cols).map(|j| ((j * 7) % 13) as f64 / 13.0).collect();
    let layer = LinearTransform::from_matrix(&w, params.slots())?;
    let mut steps = layer.rotation_steps();
    steps.extend(Evaluator::sum_slots_steps(16));

    // Client side: keys and encryption. Only the evaluation keys leave the client.
    let mut kg = KeyGenerator::new(params.clone())?;
    let sk = kg.secret_key();
    let keys = kg.evaluation_keys(&sk, true, &steps, false)?;
    println!(
        "keys: relinearization + {} rotation keys ({:.2} s)",
        keys.galois_elements().len(),
        t0.elapsed().as_secs_f64()
    );
    let encoder = Encoder::new(params.clone());
    let (mut sym, dec) = secret_key_pair(sk)?;
    let ct = sym.encrypt(&encoder.encode(&x, params.max_level(), params.default_scale())?)?;

    // Server side: sees only the ciphertext and public keys.
    let t1 = Instant::now();
    let ev = Evaluator::new(keys);
    let lt = layer.encode(&encoder, ct.level(), params.q_primes()[ct.level()] as f64)?;
    let setup = t1.elapsed();
    let t1 = Instant::now();
    let z = ev.linear_transform(&ct, &lt)?;
    let y = ev.mul_rescale(&z, &z)?;
    let total = ev.sum_slots(&y, 16)?;
    let server = t1.elapsed();

    // Client side again: decrypt and compare.
    let got = encoder.decode(&dec.decrypt(&y)?)?;
    let sum = encoder.decode(&dec.decrypt(&total)?)?[0];
    let want: Vec<f64> = w
        .iter()
        .map(|r| r.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>().powi(2))
        .collect();
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        println!("  y[{i}] encrypted {g:>12.6}   plaintext {w:>12.6}");
    }
    println!(
        "  sum   encrypted {sum:>12.6}   plaintext {:>12.6}",
        want.iter().sum::<f64>()
    );
    println!(
        "server: setup {:.0} ms (keys, {} encoded diagonals), evaluation {:.1} ms; depth used {}, levels left {}, max error 2^{:.1} ({:.1} bits)",
        setup.as_secs_f64() * 1e3,
        layer.num_diagonals(),
        server.as_secs_f64() * 1e3,
        total.depth_consumed(),
        total.remaining_levels(),
        err.log2(),
        -err.log2()
    );
    Ok(())
}
