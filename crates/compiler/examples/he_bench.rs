//! Encrypted inference benchmark of a shipped model: per-image server latency with a per-step
//! breakdown, client encrypt/decrypt time, evaluation-key and ciphertext bytes as uploaded, and
//! accuracy and argmax agreement against the cleartext plan. JSON on stdout, a summary on stderr.
//!
//! `cargo run --release -p cipherinfer-compiler --example he_bench -- [--model mnist-cnn]
//! [--images 100 | --all] [--threads 2] [--samples FILE] [--batch B] [--params auto|PRESET]
//! [--degree D]` (FILE: a sample set in the shipped format, e.g. the full test set written by
//! `bench/export_full_test_set.py`; B images per ciphertext set in batch mode; PRESET e.g.
//! `PN13_DEPTH5`, default `auto`: the smallest 128-bit set that fits; D: the degree of the ReLU
//! polynomials when the model needs conversion, like mnist-relu).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use cipherinfer_ckks::serialization::ToBytes;
use cipherinfer_ckks::{Decryptor, Encoder, Evaluator, KeyGenerator, Preset};
use cipherinfer_compiler::{Network, compile, compile_model_batch, select_parameters};
use cipherinfer_model::convert::{ConvertOptions, convert_and_evaluate};
use cipherinfer_model::{Manifest, SampleSet, Tensor, onnx, plain};

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), BoxErr> {
    let mut name = "mnist-cnn".to_string();
    let mut images = 100usize;
    let mut threads = 2usize;
    let mut samples_file: Option<String> = None;
    let mut opts = Opts {
        batch: 1,
        params: "auto".into(),
        degree: ConvertOptions::default().degree,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--model" => name = args.get(i + 1).ok_or("--model NAME")?.clone(),
            "--images" => images = args.get(i + 1).ok_or("--images N")?.parse()?,
            "--threads" => threads = args.get(i + 1).ok_or("--threads N")?.parse()?,
            "--samples" => samples_file = Some(args.get(i + 1).ok_or("--samples FILE")?.clone()),
            "--batch" => opts.batch = args.get(i + 1).ok_or("--batch B")?.parse()?,
            "--params" => opts.params = args.get(i + 1).ok_or("--params NAME")?.clone(),
            "--degree" => opts.degree = args.get(i + 1).ok_or("--degree D")?.parse()?,
            "--all" => {
                images = usize::MAX;
                i -= 1;
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
        i += 2;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| run(&name, images, threads, samples_file.as_deref(), &opts))
}

struct Opts {
    batch: usize,
    params: String,
    degree: usize,
}

fn run(
    name: &str,
    images: usize,
    threads: usize,
    samples_file: Option<&str>,
    opts: &Opts,
) -> Result<(), BoxErr> {
    let manifest = Manifest::shipped()?;
    let entry = manifest.model(name)?.clone();
    let mut ir = onnx::import(&manifest.read_model(name)?.bytes)?;
    let samples = match samples_file {
        Some(path) => SampleSet::parse(&std::fs::read(path)?, std::path::Path::new(path))?,
        None => manifest.load_samples(&entry.dataset)?,
    };
    let inputs: Vec<(Vec<f64>, u8)> = plain::sample_inputs(&samples, &entry.input)?
        .into_iter()
        .map(|(t, l)| (t.into_data(), l))
        .collect();
    let images = images.min(inputs.len());
    let mut conversion_json = serde_json::Value::Null;
    if !ir.is_he_friendly() {
        let labelled: Vec<(Tensor, u8)> = plain::sample_inputs(&samples, &entry.input)?;
        let options = ConvertOptions {
            degree: opts.degree,
            ..ConvertOptions::default()
        };
        let conversion = convert_and_evaluate(&ir, &labelled, &options)?;
        eprintln!("{}", conversion.report);
        conversion_json = serde_json::json!({
            "degree": opts.degree,
            "accuracy_before": conversion.report.accuracy_before,
            "accuracy_after": conversion.report.accuracy_after,
            "evaluated_images": conversion.report.evaluated_images,
        });
        ir = conversion.model;
    }
    let calibration: Vec<Vec<f64>> = inputs.iter().take(200).map(|(x, _)| x.clone()).collect();
    let params = match opts.params.as_str() {
        "auto" => {
            // The smallest 128-bit set whose ring offers the plan's depth with `batch` images.
            let net = Network::from_ir(&ir)?;
            let mut chosen = None;
            for log_n in 13u32..=15 {
                let slots = 1usize << (log_n - 1);
                let Ok(plan) = compile(&net, slots / opts.batch.max(1)) else {
                    continue;
                };
                if let Ok(p) = select_parameters(plan.depth(), slots)
                    && p.log_n() == log_n
                {
                    chosen = Some(p);
                    break;
                }
            }
            chosen.ok_or("no 128-bit parameter set fits this model and batch")?
        }
        preset => Preset::from_name(preset)?.build()?,
    };
    let t = Instant::now();
    let (_net, model) = compile_model_batch(&ir, params.clone(), &calibration, opts.batch)?;
    let compile_s = t.elapsed().as_secs_f64();
    let plan = model.plan();
    let steps = model.rotation_steps();
    let batch = model.batch_size();

    // Client: keys, as uploaded (seeded, bit-packed).
    let t = Instant::now();
    let mut kg = KeyGenerator::new(params.clone())?;
    let sk = kg.secret_key();
    let keys = kg.evaluation_keys(&sk, plan.needs_relinearization(), &steps, false)?;
    let keygen_s = t.elapsed().as_secs_f64();
    let key_bytes = keys.to_bytes().len();
    let ev = Evaluator::new(keys);
    let encoder = Encoder::new(params.clone());
    let mut dec = Decryptor::new(sk)?;

    let mut eval_ms = Vec::new();
    let mut enc_ms = Vec::new();
    let mut dec_ms = Vec::new();
    let mut per_step: Vec<Vec<f64>> = vec![Vec::new(); plan.steps.len()];
    let (mut agree, mut correct_enc, mut correct_plain) = (0usize, 0usize, 0usize);
    let (mut in_bytes, mut out_bytes) = (0usize, 0usize);
    let mut worst: f64 = 0.0;
    for chunk in inputs[..images].chunks(batch) {
        let xs: Vec<&[f64]> = chunk.iter().map(|(x, _)| x.as_slice()).collect();
        let t = Instant::now();
        let cts = model.encrypt_batch(&encoder, &mut dec, &xs)?;
        enc_ms.push(t.elapsed().as_secs_f64() * 1e3);
        in_bytes = cts.iter().map(|c| c.to_bytes().len()).sum();
        let t = Instant::now();
        let (out, report) = model.evaluate(&ev, &cts, &AtomicBool::new(false), |_, _, _| {})?;
        eval_ms.push(t.elapsed().as_secs_f64() * 1e3);
        for (acc, s) in per_step.iter_mut().zip(&report.step_seconds) {
            acc.push(s * 1e3);
        }
        out_bytes = out.iter().map(|c| c.to_bytes().len()).sum();
        let t = Instant::now();
        let got_all = model.decrypt_batch(&encoder, &dec, &out)?;
        dec_ms.push(t.elapsed().as_secs_f64() * 1e3);
        for ((x, label), got) in chunk.iter().zip(&got_all) {
            let want = plan.execute_cleartext(x)?;
            worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(worst, f64::max);
            agree += usize::from(argmax(got) == argmax(&want));
            correct_enc += usize::from(argmax(got) == *label as usize);
            correct_plain += usize::from(argmax(&want) == *label as usize);
        }
    }
    let total_eval_s: f64 = eval_ms.iter().sum::<f64>() / 1e3;
    let mean = eval_ms.iter().sum::<f64>() / eval_ms.len() as f64;
    let step_medians: Vec<serde_json::Value> = plan
        .steps
        .iter()
        .zip(per_step.iter_mut())
        .map(|(s, v)| serde_json::json!({"step": s.describe(), "ms_median": median(v)}))
        .collect();
    let out = serde_json::json!({
        "model": name,
        "images": images,
        "threads": threads,
        "parameters": {"choice": opts.params, "log_n": params.log_n(), "log_qp": params.log_qp(), "dnum": params.dnum(), "q_primes": params.q_primes().len(), "p_primes": params.p_primes().len(), "security_bits": 128},
        "batch_size": batch,
        "lazy_masks": model.lazy_masks(),
        "conversion": conversion_json,
        "throughput_images_per_s": images as f64 / total_eval_s,
        "depth": plan.depth(),
        "rotation_keys": steps.len(),
        "server_eval_ms_median_per_ciphertext_set": median(&mut eval_ms.clone()),
        "server_eval_ms_mean": mean,
        "per_step_ms_median": step_medians,
        "encrypt_ms_median": median(&mut enc_ms),
        "decrypt_ms_median": median(&mut dec_ms),
        "eval_keys_bytes": key_bytes,
        "input_ct_bytes": in_bytes,
        "output_ct_bytes": out_bytes,
        "encrypted_accuracy": correct_enc as f64 / images as f64,
        "cleartext_accuracy": correct_plain as f64 / images as f64,
        "argmax_agreement": agree as f64 / images as f64,
        "max_abs_logit_error": worst,
        "compile_s": compile_s,
        "keygen_s": keygen_s,
    });
    eprintln!(
        "{name}: {images} images, batch {batch}, {threads} thread(s): {:.1} images/s; server {:.1} ms median per evaluation ({mean:.1} mean); keys {:.2} MB; input {:.1} KB; encrypted accuracy {:.2}%, argmax agreement {:.2}%",
        images as f64 / total_eval_s,
        median(&mut eval_ms),
        key_bytes as f64 / 1e6,
        in_bytes as f64 / 1e3,
        100.0 * correct_enc as f64 / images as f64,
        100.0 * agree as f64 / images as f64
    );
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
