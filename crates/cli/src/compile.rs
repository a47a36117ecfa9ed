//! `cipherinfer compile DIR`: compiles a model package for serving and reports what it costs.
//!
//! Imports the package's ONNX network, replaces ReLU-like activations and MaxPool by
//! polynomials fitted over the ranges its calibration images reach, picks the smallest CKKS
//! parameters at the requested security that hold the depth, prints the report (layers, plan,
//! depth, parameters, keys and bytes, estimated latency, agreement with the network as given in
//! plaintext simulation), and writes the compiled model (`NAME.cimodel`) that
//! `cipherinfer serve --model FILE` loads without recompiling. The written file is read back and
//! instantiated before the command succeeds, and the time that takes is reported.

use std::path::PathBuf;
use std::time::Instant;

use cipherinfer_ckks::SecurityLevel;
use cipherinfer_compiler::artifact::ARTIFACT_EXTENSION;
use cipherinfer_compiler::degree::{
    DEFAULT_TARGET_AGREEMENT, Degree, agreement_images, compile_package,
};
use cipherinfer_compiler::report::{CompileReport, agreement, measure_unit_costs};
use cipherinfer_compiler::{Artifact, ServingOptions};
use cipherinfer_model::ModelPackage;
use cipherinfer_model::convert::{ConvertOptions, FitMethod, MAX_FIT_DEGREE, PoolMode};
use serde_json::json;

use crate::BoxErr;

/// How polynomials are fitted, on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Fit {
    /// Least squares weighted towards the calibration values.
    LeastSquares,
    /// Chebyshev interpolation: near-minimax over the whole interval.
    Chebyshev,
}

/// How MaxPool is converted, on the command line (`compile` and `bench model`).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct PoolArgs {
    /// How each MaxPool is converted: `average` (the window's mean with a calibrated per-channel
    /// gain: no level of its own, but not the maximum) or `max` (the maximum, by rounds of
    /// max(a, b) = (a + b)/2 + |a - b|/2 with |x| a polynomial fitted on the differences the
    /// calibration images give: a 2x2 pool costs 2 x (1 + the polynomial's depth) levels).
    #[arg(long, value_enum, default_value = "average")]
    max_pool: PoolArg,
    /// Degree of the |x| polynomial of `--max-pool max` (default: the activation degree).
    #[arg(long, value_parser = parse_pool_degree)]
    pool_degree: Option<usize>,
}

/// [`PoolMode`], on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PoolArg {
    /// Average with a calibrated gain.
    Average,
    /// The maximum, by |a - b|.
    Max,
}

impl PoolArgs {
    /// Sets the pool conversion of `options`.
    pub fn apply(&self, options: &mut ConvertOptions) {
        options.max_pool = match self.max_pool {
            PoolArg::Average => PoolMode::Average,
            PoolArg::Max => PoolMode::Max,
        };
        options.pool_degree = self.pool_degree;
    }
}

fn parse_pool_degree(s: &str) -> Result<usize, String> {
    match parse_degree(s)? {
        Degree::Fixed(d) if d >= 2 => Ok(d),
        _ => Err(format!(
            "{s:?}: the |x| polynomial needs a degree from 2 to {MAX_FIT_DEGREE}"
        )),
    }
}

/// Options of `cipherinfer compile`.
#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    /// The model package directory (model.json, model.onnx, calibration/ and test/ images).
    package: PathBuf,
    /// Where to write the compiled model (default: NAME.cimodel in the current directory).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Security level of the CKKS parameters, in bits: 128, 192 or 256.
    #[arg(long, default_value = "128", value_parser = parse_security)]
    security: SecurityLevel,
    /// Degree of the polynomial that replaces each ReLU-like activation, or `auto`: the cheapest
    /// of 7, 15, 31, 63, 127, 255 whose approximated network agrees with the network as given
    /// on the package's test images (calibration images without them) at --target-agreement,
    /// among those a parameter set holds.
    #[arg(long, default_value = "auto", value_parser = parse_degree)]
    degree: Degree,
    /// Top-1 agreement with the network as given that `--degree auto` aims at (0 to 1).
    #[arg(long, default_value_t = DEFAULT_TARGET_AGREEMENT)]
    target_agreement: f64,
    /// Widening of each measured activation range, as a fraction of its half-width per side.
    #[arg(long, default_value_t = ConvertOptions::default().margin)]
    margin: f64,
    /// How the polynomials are fitted.
    #[arg(long, value_enum, default_value = "least-squares")]
    fit: Fit,
    #[command(flatten)]
    pool: PoolArgs,
    /// Refuse a model whose server memory (encoded masks plus one client's keys) exceeds this
    /// many GiB (default: this machine's memory).
    #[arg(long)]
    max_memory_gib: Option<f64>,
    /// Keep the evaluation keys a client uploads within this many MiB: rotation steps beyond
    /// the budget get no key of their own and are composed of power-of-two keys when the model
    /// runs (the steps that cost least time per byte go first). Default: one key per step.
    #[arg(long, value_parser = parse_mib)]
    max_key_mib: Option<u64>,
    /// Skip the latency estimate (it generates one key and times a few operations).
    #[arg(long)]
    no_estimate: bool,
    /// Print the report as JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// Total memory of this machine in GiB (Linux `/proc/meminfo`), if known.
fn machine_memory_gib() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / f64::from(1u32 << 20))
}

/// Parses a size in MiB (e.g. `--max-key-mib 64`) into bytes.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let mib: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MiB"))?;
    if !(mib.is_finite() && mib > 0.0 && mib < 1e9) {
        return Err(format!("{s} MiB is not a positive size"));
    }
    Ok((mib * f64::from(1u32 << 20)) as u64)
}

/// Parses `--degree`: `auto` or a degree.
pub fn parse_degree(s: &str) -> Result<Degree, String> {
    if s == "auto" {
        return Ok(Degree::Auto);
    }
    let d: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is neither auto nor a degree"))?;
    if d == 0 || d > MAX_FIT_DEGREE {
        return Err(format!("degree {d} is not between 1 and {MAX_FIT_DEGREE}"));
    }
    Ok(Degree::Fixed(d))
}

fn parse_security(s: &str) -> Result<SecurityLevel, String> {
    let bits = s
        .parse()
        .map_err(|_| format!("{s:?} is not one of 128, 192, 256"))?;
    SecurityLevel::from_bits(bits).map_err(|e| e.to_string())
}

/// Runs `cipherinfer compile`.
pub fn compile(a: CompileArgs) -> Result<(), BoxErr> {
    let security = a.security;
    let package = ModelPackage::load(&a.package).map_err(|e| format!("{e} [{}]", e.code()))?;
    let mut options = ServingOptions {
        convert: ConvertOptions {
            margin: a.margin,
            fit: match a.fit {
                Fit::LeastSquares => FitMethod::LeastSquares,
                Fit::Chebyshev => FitMethod::Chebyshev,
            },
            ..ConvertOptions::default()
        },
        security,
    };
    a.pool.apply(&mut options.convert);
    let started = Instant::now();
    let failed = |e: cipherinfer_compiler::CompileError| {
        format!("{}: {e} [{}]", a.package.display(), e.code())
    };
    let (mut compiled, search) =
        compile_package(&package, a.degree, a.target_agreement, &options).map_err(failed)?;
    compiled.he = compiled.he.with_key_budget(a.max_key_mib).map_err(failed)?;
    let compile_s = started.elapsed().as_secs_f64();

    let (images, from) = agreement_images(&package);
    let agreement = agreement(&package.model, &compiled.model, &images, from)?;
    let costs = if a.no_estimate {
        None
    } else {
        Some(measure_unit_costs(compiled.he.parameters())?)
    };
    let report = CompileReport::new(
        &package.card.name,
        &compiled.model,
        &compiled.he,
        compiled.conversion.clone(),
        agreement,
        costs,
    )
    .with_notes(package.notes.clone())
    .with_degree_search(search);

    let (limit, whose) = match a.max_memory_gib {
        Some(g) => (Some(g), "--max-memory-gib allows"),
        None => (machine_memory_gib(), "this machine has"),
    };
    if let Some(limit) = limit {
        let need = report.server_memory_bytes as f64 / f64::from(1u32 << 30);
        if need > limit {
            return Err(format!(
                "{}: the model needs about {need:.1} GiB of server memory (encoded masks and one \
                 client's evaluation keys), more than the {limit:.1} GiB {whose}; lower --degree, \
                 make the network smaller, or raise --max-memory-gib [model_too_large]",
                a.package.display()
            )
            .into());
        }
    }

    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.{ARTIFACT_EXTENSION}", package.card.name)));
    let artifact = compiled.artifact(package.card.clone(), &package.onnx_sha256);
    artifact
        .write(&out)
        .map_err(|e| format!("{e} [{}]", e.code()))?;
    // Read it back the way `serve` does, and time it.
    let started = Instant::now();
    let loaded = Artifact::read(&out).map_err(|e| format!("{e} [{}]", e.code()))?;
    let (_, he) = loaded
        .instantiate(&out)
        .map_err(|e| format!("{e} [{}]", e.code()))?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    if he.parameters().id() != compiled.he.parameters().id() {
        return Err("the written model rebuilds other parameters than compiled".into());
    }
    let bytes = std::fs::metadata(&out)?.len();

    if a.json {
        let mut value = serde_json::to_value(&report)?;
        value["artifact"] = json!({
            "path": out.display().to_string(),
            "bytes": bytes,
            "load_ms": load_ms,
            "compile_s": compile_s,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{report}");
        println!(
            "compiled in {compile_s:.1} s; wrote {} ({:.1} KiB), which loads in {load_ms:.0} ms: \
             cipherinfer serve --model {}",
            out.display(),
            bytes as f64 / 1024.0,
            out.display()
        );
    }
    Ok(())
}
