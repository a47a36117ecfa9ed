//! `cipherinfer bench model`: encrypted inference benchmark of a shipped model or a model
//! package — per-image server latency with a per-step breakdown, client encrypt/decrypt time,
//! evaluation-key and ciphertext bytes as uploaded, accuracy and argmax agreement against the
//! cleartext plan and against the network as given (before any ReLU/MaxPool approximation),
//! and peak memory. JSON on stdout, a summary on stderr.
//!
//! `cipherinfer bench model [--model NAME|DIR] [--images N|DIR | --all] [--threads 2]
//! [--samples FILE] [--batch B] [--params auto|PRESET] [--degree D] [--encrypt K] [--parallel] [--max-key-mib M]`: NAME a shipped model, DIR
//! a model package (its `test/` images by default); `--images DIR` a folder of images with a
//! `labels.txt` of `FILE LABEL` lines (LABEL a class index or name); FILE a sample set in the
//! shipped format, e.g. the full test set written by `bench/export_full_test_set.py`; B images
//! per ciphertext set in batch mode; `--encrypt K` encrypts only the first K images and runs
//! all of them through the approximated network in cleartext; `--parallel` also measures
//! throughput with the ciphertext sets evaluated side by side; `--max-key-mib M` keeps the
//! evaluation keys within M MiB (rotations composed of power-of-two keys); PRESET e.g. `PN13_DEPTH5`, default `auto`: the smallest
//! 128-bit set that fits; D: the degree of the ReLU polynomials when the model needs conversion.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use cipherinfer_ckks::serialization::ToBytes;
use cipherinfer_ckks::{Encoder, Evaluator, KeyGenerator, Preset, secret_key_pair};
use cipherinfer_compiler::degree::{
    DEFAULT_TARGET_AGREEMENT, Degree, SHIPPED_SEARCH_IMAGES, agreement_images,
};
use cipherinfer_compiler::{
    Network, ServingOptions, compile, compile_choosing_degree, compile_model_batch,
    select_parameters,
};
use cipherinfer_model::convert::{ConvertOptions, convert_with_degrees};
use cipherinfer_model::{Manifest, Model, ModelPackage, SampleSet, Tensor, onnx, plain};

use crate::BoxErr;

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Options of `cipherinfer bench model`.
#[derive(clap::Args, Debug)]
pub struct ModelBenchArgs {
    /// Shipped model (name) or model package (directory) to run.
    #[arg(long, default_value = "mnist-cnn")]
    model: String,
    /// Images: the first N of the sample set (or the package's test images), or a directory of
    /// images with a labels.txt.
    #[arg(long, default_value = "100")]
    images: String,
    /// Every image of the sample set.
    #[arg(long)]
    all: bool,
    /// Evaluation threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// A sample set in the shipped format instead of the shipped one.
    #[arg(long)]
    samples: Option<String>,
    /// Images per ciphertext set (batch mode).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Parameter set: auto (smallest 128-bit set that fits) or a preset name like PN13_DEPTH5.
    #[arg(long, default_value = "auto")]
    params: String,
    /// Degree of the ReLU polynomials when the model needs conversion, or `auto` (as
    /// `cipherinfer compile` chooses it, on the images benchmarked).
    #[arg(long, default_value = "auto", value_parser = crate::compile::parse_degree)]
    degree: Degree,
    /// Encrypt only the first K of the images; every image still runs through the approximated
    /// network in cleartext (`plaintext_simulation` in the report), e.g. a full test set.
    #[arg(long)]
    encrypt: Option<usize>,
    /// Also measure throughput with ciphertext sets evaluated side by side (as a server does
    /// for concurrent requests: each thread takes a set, and a thread with nothing left helps
    /// another set's evaluation), after the one-at-a-time latency run.
    #[arg(long)]
    parallel: bool,
    /// Keep the evaluation keys within this many MiB, composing the other rotations of
    /// power-of-two keys (as `compile --max-key-mib`).
    #[arg(long, value_parser = crate::compile::parse_mib)]
    max_key_mib: Option<u64>,
    #[command(flatten)]
    pool: crate::compile::PoolArgs,
}

/// Runs `cipherinfer bench model`.
pub fn model_bench(a: ModelBenchArgs) -> Result<(), BoxErr> {
    let (count, images_dir) = match a.images.parse::<usize>() {
        _ if a.all => (usize::MAX, None),
        Ok(n) => (n, None),
        Err(_) => (usize::MAX, Some(std::path::PathBuf::from(&a.images))),
    };
    let opts = Opts {
        batch: a.batch,
        params: a.params,
        degree: a.degree,
        encrypt: a.encrypt,
        parallel: a.parallel,
        max_key_bytes: a.max_key_mib,
        convert: {
            let mut c = ConvertOptions::default();
            a.pool.apply(&mut c);
            c
        },
    };
    let input = BenchInput::load(&a.model, images_dir.as_deref(), a.samples.as_deref())?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build()?;
    pool.install(|| run(input, count, a.threads, &opts))
}

struct Opts {
    batch: usize,
    params: String,
    degree: Degree,
    encrypt: Option<usize>,
    parallel: bool,
    max_key_bytes: Option<u64>,
    /// Conversion settings besides the degree and margin (the pool mode).
    convert: ConvertOptions,
}

/// What a benchmark runs: the network as given, labelled images and calibration inputs.
struct BenchInput {
    name: String,
    ir: Model,
    labelled: Vec<(Tensor, usize)>,
    calibration: Vec<Tensor>,
    /// The images the degree search measures agreement on, as `compile` and `serve` take them.
    search: Vec<Tensor>,
}

impl BenchInput {
    fn load(
        model: &str,
        images_dir: Option<&std::path::Path>,
        samples_file: Option<&str>,
    ) -> Result<Self, BoxErr> {
        let path = std::path::Path::new(model);
        if ModelPackage::is_package(path) {
            if samples_file.is_some() {
                return Err("--samples is for shipped models; give a package --images DIR".into());
            }
            let package = ModelPackage::load(path).map_err(|e| format!("{e} [{}]", e.code()))?;
            let labelled: Vec<(Tensor, usize)> = match images_dir {
                Some(dir) => package.load_labelled_images(dir),
                None => Ok(package.test.clone()),
            }
            .map_err(|e| format!("{e} [{}]", e.code()))?
            .into_iter()
            .map(|t| (t.input, t.label))
            .collect();
            if labelled.is_empty() {
                return Err(format!(
                    "model package {} has no test images: give --images DIR (images and labels.txt)",
                    path.display()
                )
                .into());
            }
            let search = agreement_images(&package)
                .0
                .into_iter()
                .map(|(t, _)| t)
                .collect();
            return Ok(Self {
                name: package.card.name.clone(),
                calibration: package.calibration_inputs(),
                ir: package.model,
                labelled,
                search,
            });
        }
        let manifest = Manifest::shipped()?;
        let entry = manifest.model(model)?.clone();
        let ir = onnx::import(&manifest.read_model(model)?.bytes)?;
        let labelled: Vec<(Tensor, usize)> = match (images_dir, samples_file) {
            (Some(dir), _) => {
                let card = cipherinfer_model::ModelCard::for_shipped(&entry);
                cipherinfer_model::package::load_labelled_images(dir, &card, &entry.input)
                    .map_err(|e| format!("{e} [{}]", e.code()))?
                    .into_iter()
                    .map(|t| (t.input, t.label))
                    .collect()
            }
            (None, Some(file)) => {
                let set = SampleSet::parse(&std::fs::read(file)?, std::path::Path::new(file))?;
                labelled_samples(&set, &entry.input)?
            }
            (None, None) => {
                labelled_samples(&manifest.load_samples(&entry.dataset)?, &entry.input)?
            }
        };
        let search: Vec<Tensor> =
            labelled_samples(&manifest.load_samples(&entry.dataset)?, &entry.input)?
                .into_iter()
                .take(SHIPPED_SEARCH_IMAGES)
                .map(|(t, _)| t)
                .collect();
        let calibration = search
            .iter()
            .take(ConvertOptions::default().calibration_images)
            .cloned()
            .collect();
        Ok(Self {
            name: model.to_string(),
            ir,
            labelled,
            calibration,
            search,
        })
    }
}

fn labelled_samples(
    set: &SampleSet,
    spec: &cipherinfer_model::InputSpec,
) -> Result<Vec<(Tensor, usize)>, BoxErr> {
    Ok(plain::sample_inputs(set, spec)?
        .into_iter()
        .map(|(t, l)| (t, usize::from(l)))
        .collect())
}

fn run(input: BenchInput, images: usize, threads: usize, opts: &Opts) -> Result<(), BoxErr> {
    let BenchInput {
        name,
        ir: original,
        labelled,
        calibration,
        search,
    } = input;
    let name = name.as_str();
    let simulated = images.min(labelled.len());
    let images = opts.encrypt.unwrap_or(simulated).min(simulated);
    if images == 0 {
        return Err("no image to encrypt: --encrypt must be at least 1".into());
    }
    let inputs: Vec<(Vec<f64>, usize)> = labelled[..images]
        .iter()
        .map(|(t, l)| (t.data().to_vec(), *l))
        .collect();
    let mut ir = original.clone();
    let mut conversion_json = serde_json::Value::Null;
    if !ir.is_he_friendly() {
        if calibration.is_empty() {
            return Err("the network needs calibration images to be converted".into());
        }
        let (degree, margin, degrees, pool_degree) = match opts.degree {
            Degree::Fixed(d) => (d, opts.convert.margin, Vec::new(), opts.convert.pool_degree),
            Degree::Auto => {
                let (_, search) = compile_choosing_degree(
                    &ir,
                    &calibration,
                    &search,
                    &ServingOptions {
                        convert: opts.convert,
                        ..ServingOptions::default()
                    },
                    DEFAULT_TARGET_AGREEMENT,
                )?;
                let search = search.ok_or("no degree search for a network to convert")?;
                let chosen = search.chosen_trial().ok_or("no degree chosen")?;
                eprintln!(
                    "degree {} chosen ({})",
                    chosen.describe_degree(),
                    search
                        .trials
                        .iter()
                        .map(|t| format!(
                            "{} (margin {}) -> {:.1}%",
                            t.describe_degree(),
                            t.margin,
                            100.0 * t.top1_agreement
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                (
                    chosen.degree,
                    chosen.margin,
                    chosen.degrees.clone(),
                    chosen.pool_degree.or(opts.convert.pool_degree),
                )
            }
        };
        let options = ConvertOptions {
            degree,
            margin,
            pool_degree,
            ..opts.convert
        };
        let conversion = convert_with_degrees(&ir, &calibration, &options, &degrees)?;
        eprintln!("{}", conversion.report);
        conversion_json = serde_json::json!({
            "degree": degree,
            "degrees": degrees,
            "margin": margin,
            "max_pool": options.max_pool,
            "pool_degree": options.pool_degree,
            "calibration_images": calibration.len().min(options.calibration_images),
        });
        ir = conversion.model;
    }
    // The network as given, in cleartext: what the user's own runtime would answer.
    let original_argmax: Vec<usize> = labelled[..simulated]
        .iter()
        .map(|(t, _)| Ok(argmax(plain::run(&original, t)?.data())))
        .collect::<Result<_, BoxErr>>()?;
    let calibration: Vec<Vec<f64>> = calibration
        .iter()
        .take(ConvertOptions::default().calibration_images)
        .map(|t| t.data().to_vec())
        .collect();
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
                if let Ok(p) = select_parameters(
                    plan.depth(),
                    slots,
                    cipherinfer_ckks::SecurityLevel::Bits128,
                ) && p.log_n() == log_n
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
    let model = model.with_key_budget(opts.max_key_bytes)?;
    model.warm()?;
    let compile_s = t.elapsed().as_secs_f64();
    let plan = model.plan();
    let steps = model.rotation_steps();
    let batch = model.batch_size();
    let spec = model.client_spec();

    // Client: keys, as uploaded (seeded, bit-packed).
    let t = Instant::now();
    let mut kg = KeyGenerator::new(params.clone())?;
    let sk = kg.secret_key();
    let keys = spec.evaluation_keys(&mut kg, &sk)?;
    let keygen_s = t.elapsed().as_secs_f64();
    let key_bytes = keys.to_bytes().len();
    let ev = Evaluator::new(keys);
    let encoder = Encoder::new(params.clone());
    let (mut sym, dec) = secret_key_pair(sk)?;

    let mut eval_ms = Vec::new();
    let mut enc_ms = Vec::new();
    let mut dec_ms = Vec::new();
    let mut per_step: Vec<Vec<f64>> = vec![Vec::new(); plan.steps.len()];
    let (mut agree, mut correct_enc, mut correct_plain) = (0usize, 0usize, 0usize);
    let (mut agree_original, mut correct_original) = (0usize, 0usize);
    let mut done = 0usize;
    let (mut in_bytes, mut out_bytes) = (0usize, 0usize);
    let mut worst: f64 = 0.0;
    for chunk in inputs[..images].chunks(batch) {
        let xs: Vec<&[f64]> = chunk.iter().map(|(x, _)| x.as_slice()).collect();
        let t = Instant::now();
        let cts = spec.encrypt_batch(&encoder, &mut sym, &xs)?;
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
        let got_all = spec.decrypt_batch(&encoder, &dec, &out)?;
        dec_ms.push(t.elapsed().as_secs_f64() * 1e3);
        for ((x, label), got) in chunk.iter().zip(&got_all) {
            let want = plan.execute_cleartext(x)?;
            let given = original_argmax[done];
            done += 1;
            agree_original += usize::from(argmax(got) == given);
            correct_original += usize::from(given == *label);
            worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(worst, f64::max);
            agree += usize::from(argmax(got) == argmax(&want));
            correct_enc += usize::from(argmax(got) == *label);
            correct_plain += usize::from(argmax(&want) == *label);
        }
    }
    // Throughput with sets side by side: every set encrypted first, then all evaluated at once
    // on the pool (checked against the one-at-a-time results).
    let parallel = if opts.parallel {
        use rayon::prelude::*;
        let sets = inputs[..images]
            .chunks(batch)
            .map(|chunk| {
                let xs: Vec<&[f64]> = chunk.iter().map(|(x, _)| x.as_slice()).collect();
                spec.encrypt_batch(&encoder, &mut sym, &xs)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let t = Instant::now();
        let outs = sets
            .par_iter()
            .with_max_len(1)
            .map(|cts| {
                model
                    .evaluate(&ev, cts, &AtomicBool::new(false), |_, _, _| {})
                    .map(|(out, _)| out)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let wall = t.elapsed().as_secs_f64();
        let mut same = 0usize;
        for (out, chunk) in outs.iter().zip(inputs[..images].chunks(batch)) {
            for (got, (x, _)) in spec.decrypt_batch(&encoder, &dec, out)?.iter().zip(chunk) {
                same += usize::from(argmax(got) == argmax(&plan.execute_cleartext(x)?));
            }
        }
        Some(serde_json::json!({
            "images": images,
            "wall_s": wall,
            "throughput_images_per_s": images as f64 / wall,
            "argmax_agreement": same as f64 / images as f64,
        }))
    } else {
        None
    };
    // Every selected image through the approximated network in cleartext: what the encrypted
    // runs give up to CKKS noise (they agree with it on the images encrypted above).
    let tensors: Vec<Tensor> = labelled[..simulated]
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    let approximated: Vec<Option<usize>> = {
        use rayon::prelude::*;
        tensors
            .par_iter()
            .map(|t| plain::run(&ir, t).map(|out| out.argmax()))
            .collect::<Result<_, _>>()?
    };
    let (mut sim_correct, mut sim_agree, mut given_correct) = (0usize, 0usize, 0usize);
    for ((got, (_, label)), given) in approximated.iter().zip(&labelled).zip(&original_argmax) {
        sim_correct += usize::from(*got == Some(*label));
        sim_agree += usize::from(*got == Some(*given));
        given_correct += usize::from(given == label);
    }
    let simulation = serde_json::json!({
        "images": simulated,
        "accuracy": sim_correct as f64 / simulated as f64,
        "agreement_with_original_network": sim_agree as f64 / simulated as f64,
        "original_network_accuracy": given_correct as f64 / simulated as f64,
    });
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
        "parallel": parallel,
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
        "original_network_accuracy": correct_original as f64 / images as f64,
        "agreement_with_original_network": agree_original as f64 / images as f64,
        "peak_memory_bytes": peak_memory_bytes(),
        "max_abs_logit_error": worst,
        "plaintext_simulation": simulation,
        "compile_s": compile_s,
        "keygen_s": keygen_s,
    });
    eprintln!(
        "{name}: {images} images, batch {batch}, {threads} thread(s): {:.1} images/s; server {:.1} ms median per evaluation ({mean:.1} mean); keys {:.2} MB; input {:.1} KB; encrypted accuracy {:.2}% (network as given: {:.2}%), argmax agreement {:.2}% with the compiled plan, {:.2}% with the network as given",
        images as f64 / total_eval_s,
        median(&mut eval_ms),
        key_bytes as f64 / 1e6,
        in_bytes as f64 / 1e3,
        100.0 * correct_enc as f64 / images as f64,
        100.0 * correct_original as f64 / images as f64,
        100.0 * agree as f64 / images as f64,
        100.0 * agree_original as f64 / images as f64
    );
    if let Some(p) = &parallel {
        eprintln!(
            "sets side by side on {threads} thread(s): {:.1} images/s ({:.2}% argmax agreement with the compiled plan)",
            p["throughput_images_per_s"].as_f64().unwrap_or(f64::NAN),
            100.0 * p["argmax_agreement"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if simulated > images {
        eprintln!(
            "approximated network in cleartext on all {simulated} images: accuracy {:.2}% (network as given: {:.2}%), agreement {:.2}%",
            100.0 * sim_correct as f64 / simulated as f64,
            100.0 * given_correct as f64 / simulated as f64,
            100.0 * sim_agree as f64 / simulated as f64
        );
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Peak resident memory of this process (Linux `VmHWM`), if known.
fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
