//! Criterion benchmarks of every CKKS operation, per ring size. Names follow
//! `n=<N>/logqp=<bits>/dnum=<d>/<op>`. One thread unless `CKKS_BENCH_THREADS` says otherwise:
//! `cargo bench -p cipherinfer-ckks --bench ops`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;

use cipherinfer_ckks::{
    Encoder, Encryptor, Evaluator, KeyGenerator, LinearTransform, Polynomial, Preset,
    secret_key_pair,
};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench_preset(c: &mut Criterion, preset: Preset) {
    let params = preset.build().expect("preset");
    let name = format!(
        "n={}/logqp={:.0}/dnum={}",
        params.n(),
        params.log_qp(),
        params.dnum()
    );
    let mut kg = KeyGenerator::new(params.clone()).expect("keygen");
    let sk = kg.secret_key();
    let pk = kg.public_key(&sk).expect("pk");
    let steps: Vec<i64> = (1..=16).collect();
    let keys = kg.evaluation_keys(&sk, true, &steps, false).expect("keys");
    let encoder = Encoder::new(params.clone());
    let mut enc = Encryptor::new(pk).expect("encryptor");
    let ev = Evaluator::new(keys);
    let top = params.max_level();
    let scale = params.default_scale();
    let v: Vec<f64> = (0..params.slots())
        .map(|i| (i % 17) as f64 / 17.0 - 0.5)
        .collect();
    let pt = encoder.encode(&v, top, scale).expect("encode");
    let ct = enc.encrypt(&pt).expect("encrypt");

    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    g.bench_function("keygen_rotation_key", |b| {
        b.iter(|| kg.galois_key(&sk, params.galois_element(1)).expect("key"))
    });
    g.bench_function("encode", |b| {
        b.iter(|| encoder.encode(black_box(&v), top, scale).expect("e"))
    });
    g.bench_function("encrypt_pk", |b| {
        b.iter(|| enc.encrypt(black_box(&pt)).expect("e"))
    });
    let (mut sym, dec) = secret_key_pair(sk).expect("secret key");
    g.bench_function("encrypt_sk_seeded", |b| {
        b.iter(|| sym.encrypt(black_box(&pt)).expect("e"))
    });
    g.bench_function("decrypt_decode", |b| {
        b.iter(|| {
            encoder
                .decode(&dec.decrypt(black_box(&ct)).expect("d"))
                .expect("d")
        })
    });
    g.bench_function("add", |b| {
        b.iter(|| ev.add(black_box(&ct), &ct).expect("add"))
    });
    g.bench_function("mul_plain", |b| {
        b.iter(|| ev.mul_plain(black_box(&ct), &pt).expect("m"))
    });
    g.bench_function("mul_relin_rescale", |b| {
        b.iter(|| ev.mul_rescale(black_box(&ct), &ct).expect("mul"))
    });
    let prod = ev.mul(&ct, &ct).expect("mul");
    g.bench_function("rescale", |b| {
        b.iter(|| ev.rescale(black_box(&prod)).expect("rs"))
    });
    g.bench_function("rotate", |b| {
        b.iter(|| ev.rotate(black_box(&ct), 1).expect("rot"))
    });
    g.bench_function("rotate16_hoisted", |b| {
        b.iter(|| ev.rotate_hoisted(black_box(&ct), &steps).expect("rot"))
    });
    let rows: Vec<Vec<f64>> = (0..64)
        .map(|i| {
            (0..64)
                .map(|j| ((i * 64 + j) % 13) as f64 / 13.0 - 0.5)
                .collect()
        })
        .collect();
    let lt = LinearTransform::from_matrix(&rows, params.slots()).expect("matrix");
    if lt.rotation_steps().iter().all(|&s| ev.can_rotate(s)) {
        let enc_lt = lt
            .encode(&encoder, top, params.q_primes()[top] as f64)
            .expect("encode lt");
        g.bench_function("linear_transform_64x64", |b| {
            b.iter(|| ev.linear_transform(black_box(&ct), &enc_lt).expect("lt"))
        });
    }
    let poly = Polynomial::chebyshev_interpolate(|x| x.max(0.0), 7, -1.0, 1.0).expect("poly");
    if poly.depth() <= top {
        g.bench_function("poly_eval_deg7", |b| {
            b.iter(|| {
                ev.evaluate_polynomial(black_box(&ct), &poly, None)
                    .expect("poly")
            })
        });
    }
    g.finish();
}

fn ops(c: &mut Criterion) {
    let threads = std::env::var("CKKS_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // Criterion is not Send, so the thread count is set on rayon's global pool.
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon global pool");
    for preset in [
        Preset::Pn13Depth4,
        Preset::Pn14Depth7,
        Preset::Pn14SealChain,
        Preset::Pn15Depth16,
    ] {
        bench_preset(c, preset);
    }
}

criterion_group!(benches, ops);
criterion_main!(benches);
