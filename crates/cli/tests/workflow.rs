//! The whole workflow through the real binaries: `cipherinfer serve` as a separate process on a
//! loopback port, `cipherinfer classify` spawning `cipherinfer local` over stdio. Predictions are
//! compared with the cleartext model; the failures a user meets give their exit codes; and the
//! official MCP Python SDK drives the local server's `private_classify` over stdio.
#![cfg(all(feature = "server", feature = "client"))]
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cipherinfer_model::{Manifest, onnx, plain};
use serde_json::Value;

mod common;

use common::{BIN, Remote, temp};

/// The models every remote server of these tests serves.
const MODELS: &str = "mnist-cnn,fashion-cnn";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cipherinfer(args: &[&str], key_dir: &Path) -> Run {
    let key_dir = key_dir.to_str().unwrap();
    run_bin(&[args, &["--key-dir", key_dir]].concat())
}

/// The binary with exactly `args`.
fn run_bin(args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The shipped sample images of `model`'s dataset with their cleartext predictions.
fn samples(model: &str, n: usize) -> Vec<(PathBuf, usize)> {
    let manifest = Manifest::shipped().unwrap();
    let entry = manifest.model(model).unwrap().clone();
    let ir = onnx::import(&manifest.read_model(model).unwrap().bytes).unwrap();
    let set = manifest.load_samples(&entry.dataset).unwrap();
    let inputs = plain::sample_inputs(&set, &entry.input).unwrap();
    let dataset = manifest.dataset(&entry.dataset).unwrap();
    dataset
        .images
        .iter()
        .take(n)
        .map(|img| {
            let (x, _) = &inputs[img.test_index];
            let logits = plain::run(&ir, x).unwrap().into_data();
            let argmax = logits
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > logits[b] { i } else { b });
            (manifest.dir().join(&img.file), argmax)
        })
        .collect()
}

fn results(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The README's first command: `cipherinfer demo` starts a loopback server and `cipherinfer
/// local` as a child MCP server, and every encrypted prediction equals the cleartext one.
#[test]
fn demo_runs_the_real_architecture() {
    let out = Command::new(BIN)
        .args(["demo", "--images", "2"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("`cipherinfer local` over stdio (MCP)"),
        "{stdout}"
    );
    assert!(stdout.contains("(MCP over HTTP)"), "{stdout}");
    assert!(
        stdout.contains("4/4 encrypted predictions equal the cleartext model's"),
        "{stdout}"
    );
    // Both models provisioned once each (Step 0), then reused.
    assert_eq!(
        stdout.matches("provisioned (Step 0)").count(),
        2,
        "{stdout}"
    );
}

#[test]
fn classify_through_the_real_binaries() {
    let dir = temp("classify");
    let keys = dir.join("keys");
    let remote = Remote::start(&dir.join("server"), MODELS, &[]);
    let mnist = samples("mnist-cnn", 3);
    let mut args = vec!["classify", "--remote", &remote.url, "--json"];
    let paths: Vec<String> = mnist
        .iter()
        .map(|(p, _)| p.to_string_lossy().into_owned())
        .collect();
    args.extend(paths.iter().map(String::as_str));

    // First run: keys generated and provisioned once, then every image classified.
    let run = cipherinfer(&args, &keys);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got = results(&run.stdout);
    assert_eq!(got.len(), mnist.len());
    for (r, (path, want)) in got.iter().zip(&mnist) {
        assert_eq!(r["class_index"], *want, "{}: {r}", path.display());
        assert_eq!(r["model"], "mnist-cnn");
        // mnist-cnn's logits come back with about 6.5-7.7 correct bits (scale 2^26 at level
        // 0, output multiplier 8): ample for an argmax over logits some units apart.
        assert!(r["precision_bits"].as_f64().unwrap() > 5.0, "{r}");
        assert!(r["bytes_uploaded"].as_u64().unwrap() > 0);
    }
    assert_eq!(got[0]["provisioned"], true);
    assert_eq!(got[1]["provisioned"], false);

    // Second run: the cached credential is used; another model gets its own keys.
    let fashion = samples("fashion-cnn", 1);
    let f = fashion[0].0.to_string_lossy().into_owned();
    let run = cipherinfer(
        &[
            "classify",
            "--remote",
            &remote.url,
            "--json",
            "--model",
            "fashion-cnn",
            &f,
        ],
        &keys,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = &results(&run.stdout)[0];
    assert_eq!(r["class_index"], fashion[0].1, "{r}");
    assert_eq!(r["provisioned"], true);
    let run = cipherinfer(
        &["classify", "--remote", &remote.url, "--json", &paths[0]],
        &keys,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(results(&run.stdout)[0]["provisioned"], false);

    // The server loses its state: the client provisions again by itself.
    drop(remote);
    let remote = Remote::start(&dir.join("server-2"), MODELS, &[]);
    let run = cipherinfer(
        &["classify", "--remote", &remote.url, "--json", &paths[1]],
        &keys,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = &results(&run.stdout)[0];
    assert_eq!(r["provisioned"], true, "{r}");
    assert_eq!(r["class_index"], mnist[1].1);

    // Text output.
    let run = cipherinfer(&["classify", "--remote", &remote.url, &paths[2]], &keys);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("precision"), "{}", run.stdout);

    // Failures a user meets, each with its exit code and a clear message.
    let missing = dir.join("missing.png");
    let run = cipherinfer(
        &[
            "classify",
            "--remote",
            &remote.url,
            missing.to_str().unwrap(),
        ],
        &keys,
    );
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(
        run.stderr.contains("ERROR_FILE_NOT_FOUND"),
        "{}",
        run.stderr
    );
    let corrupt = dir.join("corrupt.png");
    std::fs::write(&corrupt, b"this is not a png").unwrap();
    let run = cipherinfer(
        &[
            "classify",
            "--remote",
            &remote.url,
            corrupt.to_str().unwrap(),
        ],
        &keys,
    );
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(
        run.stderr.contains("ERROR_IMAGE_UNREADABLE"),
        "{}",
        run.stderr
    );
    let run = cipherinfer(
        &[
            "classify",
            "--remote",
            &remote.url,
            "--model",
            "nope",
            &paths[0],
        ],
        &keys,
    );
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("ERROR_UNKNOWN_MODEL"), "{}", run.stderr);
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/mcp", l.local_addr().unwrap())
    };
    let run = cipherinfer(&["classify", "--remote", &unreachable, &paths[0]], &keys);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("ERROR_UNAVAILABLE"), "{}", run.stderr);
    let run = cipherinfer(
        &["classify", "--remote", "http://example.org/mcp", &paths[0]],
        &keys,
    );
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("loopback"), "{}", run.stderr);
    drop(remote);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cipherinfer classify --json --model MODEL` of `images` against `url`: one result per image.
fn classify_json(url: &str, model: &str, images: &[(PathBuf, usize)], keys: &Path) -> Vec<Value> {
    let mut args: Vec<String> = ["classify", "--remote", url, "--json", "--model", model]
        .map(String::from)
        .to_vec();
    args.extend(images.iter().map(|(p, _)| p.to_string_lossy().into_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = cipherinfer(&args, keys);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got = results(&run.stdout);
    assert_eq!(got.len(), images.len(), "{}", run.stdout);
    for (r, (path, _)) in got.iter().zip(images) {
        assert_eq!(r["path"], path.to_string_lossy().as_ref(), "{r}");
    }
    got
}

/// `cipherinfer compile PACKAGE --out OUT --no-estimate --json`: the report, after success.
fn compile_package(package: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "compile",
        package.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-estimate",
        "--json",
    ];
    args.extend_from_slice(extra);
    let run = run_bin(&args);
    assert_eq!(run.code, 0, "{}: {}", package.display(), run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

/// Writes a model package of the shipped `model` under `dir`: the user's card (their own name
/// and class names) and their ONNX file, with `calibration` sample images.
fn write_package(dir: &Path, model: &str, name: &str, calibration: &[(PathBuf, usize)]) {
    let manifest = Manifest::shipped().unwrap();
    std::fs::create_dir_all(dir.join("calibration")).unwrap();
    std::fs::write(
        dir.join("model.onnx"),
        manifest.read_model(model).unwrap().bytes,
    )
    .unwrap();
    let card = serde_json::json!({
        "format_version": 1,
        "name": name,
        "labels": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
        "input": {"channels": 1, "height": 28, "width": 28, "mean": [0.1307], "std": [0.3081]}
    });
    std::fs::write(dir.join("model.json"), card.to_string()).unwrap();
    for (i, (path, _)) in calibration.iter().enumerate() {
        std::fs::copy(path, dir.join("calibration").join(format!("{i}.png"))).unwrap();
    }
}

/// Bring your own model: a package directory is served by `serve --model DIR` under its card's
/// name beside a shipped model, and `classify --model NAME` answers with the card's class names
/// and the cleartext network's predictions. A bad package stops `serve` with its code.
#[test]
fn a_model_package_is_served_and_classified() {
    let dir = temp("package");
    let package = dir.join("my-digits");
    let mnist = samples("mnist-cnn", 4);
    write_package(&package, "mnist-cnn", "my-digits", &mnist[..2]);
    let models = format!("mnist-cnn,{}", package.display());
    let remote = Remote::start(&dir.join("server"), &models, &[]);
    let got = classify_json(&remote.url, "my-digits", &mnist, &dir.join("keys"));
    let names = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    for (r, (path, want)) in got.iter().zip(&mnist) {
        assert_eq!(r["model"], "my-digits", "{r}");
        assert_eq!(r["class_index"], *want, "{}: {r}", path.display());
        assert_eq!(r["label"], names[*want], "{r}");
    }
    drop(remote);

    // A card that disagrees with its network: serve refuses to start and says why.
    let bad = dir.join("bad");
    write_package(&bad, "mnist-cnn", "bad", &[]);
    let card = std::fs::read_to_string(bad.join("model.json")).unwrap();
    std::fs::write(
        bad.join("model.json"),
        card.replace("\"nine\"", "\"nine\", \"ten\""),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--model"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.join("server-bad"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("card_label_mismatch"), "{stderr}");
    assert!(stderr.contains("11 labels"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shipped colour package (3×32×32 RGB, a conventional Conv-BN-ReLU-MaxPool CNN exported by
/// stock PyTorch): `serve --model DIR` converts and compiles it, `classify` answers with the
/// network's own predictions on its test images, and `bench model --model DIR` measures it.
#[test]
fn the_colour_package_runs_end_to_end() {
    // Canonical: the local server refuses image paths with `..`.
    let package = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/colour-shapes")
        .canonicalize()
        .unwrap();
    let pkg = cipherinfer_model::ModelPackage::load(&package).unwrap();
    assert_eq!(pkg.card.input_shape(), (3, 32, 32));
    assert!(!pkg.model.is_he_friendly(), "ReLU and MaxPool as exported");
    let cases: Vec<(PathBuf, usize)> = pkg
        .test
        .iter()
        .take(6)
        .map(|t| {
            let logits = plain::run(&pkg.model, &t.input).unwrap().into_data();
            let argmax = logits
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > logits[b] { i } else { b });
            (package.join("test").join(&t.file), argmax)
        })
        .collect();
    let dir = temp("colour");
    // compile -> serve --model FILE -> classify, the path the README gives.
    let artifact = dir.join("colour-shapes.cimodel");
    let report = compile_package(&package, &artifact, &[]);
    assert_eq!(report["name"], "colour-shapes");
    assert_eq!(report["parameters"]["security_bits"], 128);
    assert_eq!(report["agreement"]["images_from"], "test");
    assert!(
        report["artifact"]["load_ms"].as_f64().unwrap() < 5_000.0,
        "{report}"
    );
    let remote = Remote::start(&dir.join("server"), artifact.to_str().unwrap(), &[]);
    let got = classify_json(&remote.url, "colour-shapes", &cases, &dir.join("keys"));
    let agree = got
        .iter()
        .zip(&cases)
        .filter(|(r, (_, want))| r["class_index"] == *want)
        .count();
    // Polynomial ReLUs may flip a near tie; the network's answer on nearly every image.
    assert!(agree + 1 >= cases.len(), "{agree}/{}: {got:?}", cases.len());
    for r in &got {
        let i = r["class_index"].as_u64().unwrap() as usize;
        assert_eq!(r["label"], pkg.card.labels[i], "{r}");
        assert_eq!(r["image"]["resized"], false, "{r}");
    }
    // A larger, wider RGBA photo of the same scene: its centre square fitted to 32x32 RGB, and
    // the user is told.
    let big = dir.join("big.png");
    let img = image::open(&cases[0].0).unwrap();
    img.resize_exact(96, 80, image::imageops::FilterType::Nearest)
        .to_rgba8()
        .save(&big)
        .unwrap();
    let run = cipherinfer(
        &[
            "classify",
            "--remote",
            &remote.url,
            "--model",
            "colour-shapes",
            big.to_str().unwrap(),
        ],
        &dir.join("keys"),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("image centre 80x80 at (8, 0) kept, resized from 96x80 rgba to 32x32 rgb"),
        "{}",
        run.stdout
    );
    drop(remote);

    let out = Command::new(BIN)
        .args(["bench", "model", "--images", "2", "--model"])
        .arg(&package)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["model"], "colour-shapes");
    assert_eq!(report["images"], 2);
    for field in [
        "encrypted_accuracy",
        "original_network_accuracy",
        "agreement_with_original_network",
        "eval_keys_bytes",
        "peak_memory_bytes",
    ] {
        assert!(report[field].is_number(), "{field}: {report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `compile --max-pool max` on the shipped colour package: the pools become exact tournaments of
/// `max(a, b) = (a + b)/2 + |a − b|/2`, the degrees of `|x|` and of the ReLUs are searched
/// together, and the approximated network agrees with the network as given more often than with
/// average pools (plaintext simulation on the package's 90 test images: 97.8% against 94.4%).
#[test]
fn exact_max_pools_are_searched_and_beat_average_pools_on_the_colour_package() {
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/colour-shapes");
    let dir = temp("exact-pools");
    let exact = compile_package(&package, &dir.join("exact.cimodel"), &["--max-pool", "max"]);
    let average = compile_package(&package, &dir.join("average.cimodel"), &[]);
    let agreement = |r: &Value| r["agreement"]["top1_agreement"].as_f64().unwrap();
    assert!(
        agreement(&exact) > agreement(&average),
        "exact {} vs average {}",
        agreement(&exact),
        agreement(&average)
    );
    assert!(agreement(&exact) >= 0.96, "{}", exact["agreement"]);
    let chosen: Vec<&Value> = exact["degree_search"]["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["chosen"] == true)
        .collect();
    assert_eq!(chosen.len(), 1);
    assert_eq!(chosen[0]["pool_degree"], 14, "{}", chosen[0]);
    for pool in exact["conversion"]["pools"].as_array().unwrap() {
        assert_eq!(pool["mode"], "max", "{pool}");
        let rounds = pool["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "a 2x2 window: two rounds");
        for r in rounds {
            assert_eq!(r["degree"], 14, "{r}");
            let [lo, hi] = [&r["interval"][0], &r["interval"][1]].map(|v| v.as_f64().unwrap());
            assert_eq!(lo, -hi, "symmetric: {r}");
        }
    }
    for pool in average["conversion"]["pools"].as_array().unwrap() {
        assert_eq!(pool["mode"], "average", "{pool}");
    }
    // Each round's pool input and |x|/2 are kept and read back inside the next linear steps.
    let kept = exact["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"].as_str().unwrap().contains("adds register"))
        .count();
    assert_eq!(kept, 4, "two per pool");
    assert!(exact["depth"].as_u64().unwrap() > average["depth"].as_u64().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The binary carries its models: a copy of it, run from an empty directory with its home and
/// cache elsewhere, runs the demo (both shipped models served and classified) and serves the
/// shipped colour package by name, from the copy of `models/` it wrote into its own cache.
#[test]
fn compile_reports_user_cnns_and_refuses_what_cannot_fit() {
    // Two conventional CNNs trained and exported by stock PyTorch (training/train_lenet5.py,
    // training/train_colour_cnn.py): BatchNorm folded by the exporter, ReLU, MaxPool, Gemm,
    // GlobalAveragePool. The compiler has no knowledge of them beyond the files.
    let packages = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/packages");
    let dir = temp("compile-report");
    // Plaintext simulation of the approximations, measured: LeNet-5 100% agreement at the degree
    // chosen (7; 99% accuracy as given and approximated); colour-cnn 96% at degree 63, where
    // MaxPool replaced by AvgPool loses most (97% at 127 and 255; with `--max-pool max` the
    // network is too deep for good degrees within N = 2^15: 71% at ReLU 3 and |x| 6). colour-avg32 (AvgPool, training/train_colour_avg32.py): 99% at
    // the degree chosen (63, margin 0.5). colour-resnet (training/train_colour_resnet.py: a
    // ResNet basic block with a strided 1x1 projection shortcut, a residual Add in the ONNX
    // graph): 99% at the degree chosen (15).
    for (name, min_agreement, shape, degree) in [
        ("lenet5-mnist", 0.97, (1, 28, 28), "auto"),
        ("colour-cnn", 0.9, (3, 32, 32), "63"),
        ("colour-avg32", 0.99, (3, 32, 32), "auto"),
        ("colour-resnet", 0.99, (3, 32, 32), "auto"),
    ] {
        let out = dir.join(format!("{name}.cimodel"));
        let r = compile_package(&packages.join(name), &out, &["--degree", degree]);
        if degree == "auto" {
            let search = &r["degree_search"];
            let chosen: Vec<&Value> = search["trials"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["chosen"] == true)
                .collect();
            assert_eq!(chosen.len(), 1, "{name}: {search}");
            assert!(
                chosen[0]["top1_agreement"].as_f64().unwrap() >= 0.99,
                "{search}"
            );
        }
        let agreement = &r["agreement"];
        assert_eq!(agreement["images"], 100, "{name}: {agreement}");
        let agree = agreement["top1_agreement"].as_f64().unwrap();
        let original = agreement["original_accuracy"].as_f64().unwrap();
        assert!(original >= 0.98, "{name}: as given {original}");
        assert!(agree >= min_agreement, "{name}: agreement {agree}");
        let conversion = &r["conversion"];
        assert!(
            conversion["activations"].as_array().unwrap().len() >= 2,
            "{name}: {conversion}"
        );
        assert!(r["depth"].as_u64().unwrap() >= 10, "{name}");
        // The residual sum is fused into the convolution before it: one linear step that also
        // reads the kept block input, no level of its own.
        let residual_steps = r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["step"].as_str().unwrap().contains("adds register"))
            .count();
        assert_eq!(
            residual_steps,
            usize::from(name == "colour-resnet"),
            "{name}"
        );
        assert!(r["rotation_keys"].as_u64().unwrap() > 0, "{name}");
        assert!(r["eval_keys_bytes"].as_u64().unwrap() > 0, "{name}");
        assert!(
            r["server_memory_bytes"].as_u64().unwrap() > r["eval_keys_bytes"].as_u64().unwrap(),
            "{name}"
        );
        assert!(out.is_file(), "{name}: no artifact");
        let pkg = cipherinfer_model::ModelPackage::load(packages.join(name)).unwrap();
        assert_eq!(pkg.card.input_shape(), shape);
    }
    // A depth no 256-bit parameter set holds: a clear error with its code, and no file.
    let out = dir.join("lenet-256.cimodel");
    let run = run_bin(&[
        "compile",
        packages.join("lenet5-mnist").to_str().unwrap(),
        "--security",
        "256",
        "--out",
        out.to_str().unwrap(),
        "--no-estimate",
    ]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("256-bit") && run.stderr.contains("[depth_exceeded]"),
        "{}",
        run.stderr
    );
    assert!(!out.exists());
    // More server memory than allowed: refused before anything is written.
    let run = run_bin(&[
        "compile",
        packages.join("lenet5-mnist").to_str().unwrap(),
        "--max-memory-gib",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--no-estimate",
    ]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("[model_too_large]"), "{}", run.stderr);
    assert!(!out.exists());
    // Not a package; an unknown security level.
    let run = run_bin(&["compile", dir.to_str().unwrap()]);
    assert!(run.stderr.contains("[package_not_found]"), "{}", run.stderr);
    let run = run_bin(&[
        "compile",
        packages.join("colour-cnn").to_str().unwrap(),
        "--security",
        "100",
    ]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("not one of 128, 192, 256"),
        "{}",
        run.stderr
    );
    std::fs::remove_dir_all(dir).ok();
}

/// compile → serve the compiled file → classify under encryption, for a package of
/// tests/packages: each answer is the approximated network's (plaintext run of the compiled
/// model) on the first `images` test images. Returns the compile report.
fn runs_encrypted_end_to_end(package: &str, images: usize, shape: (usize, usize, usize)) -> Value {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/packages")
        .join(package)
        .canonicalize()
        .unwrap();
    let pkg = cipherinfer_model::ModelPackage::load(&package).unwrap();
    assert_eq!(pkg.card.input_shape(), shape);
    let dir = temp(&pkg.card.name);
    let artifact = dir.join("model.cimodel");
    let report = compile_package(&package, &artifact, &[]);
    let compiled = cipherinfer_compiler::Artifact::read(&artifact).unwrap();
    let cases: Vec<(PathBuf, usize)> = pkg
        .test
        .iter()
        .take(images)
        .map(|t| {
            let out = plain::run(&compiled.model, &t.input).unwrap();
            (package.join("test").join(&t.file), out.argmax().unwrap())
        })
        .collect();
    let remote = Remote::start(&dir.join("server"), artifact.to_str().unwrap(), &[]);
    let name = pkg.card.name.clone();
    let got = classify_json(&remote.url, &name, &cases, &dir.join("keys"));
    let mode = if shape.0 == 3 { "rgb" } else { "grey" };
    for (r, (path, want)) in got.iter().zip(&cases) {
        assert_eq!(r["class_index"], *want, "{}: {r}", path.display());
        assert_eq!(r["image"]["width"], shape.2, "{r}");
        assert_eq!(r["image"]["mode"], mode, "{r}");
    }
    eprintln!(
        "{name}: depth {}, N = {}, {} rotation keys, {} keys bytes",
        report["depth"],
        report["parameters"]["ring_degree"],
        report["rotation_keys"],
        report["eval_keys_bytes"]
    );
    drop(remote);
    std::fs::remove_dir_all(dir).ok();
    report
}

#[test]
fn a_64x64_colour_network_runs_encrypted_end_to_end() {
    // A stock PyTorch network on 64x64 RGB (training/train_colour64.py).
    runs_encrypted_end_to_end("colour64", 3, (3, 64, 64));
}

#[test]
fn a_residual_colour_network_runs_encrypted_end_to_end() {
    // A ResNet basic block with a strided 1x1 projection shortcut, exported by stock PyTorch
    // (training/train_colour_resnet.py), at the real 128-bit ring size N = 2^15.
    let report = runs_encrypted_end_to_end("colour-resnet", 2, (3, 32, 32));
    assert_eq!(report["parameters"]["security_bits"], 128);
    assert_eq!(report["parameters"]["ring_degree"], 1 << 15);
}

#[test]
fn a_copied_binary_works_outside_the_repository() {
    let dir = temp("off-tree");
    let bin = dir.join("bin").join("cipherinfer");
    let (work, home) = (dir.join("work"), dir.join("home"));
    for d in [bin.parent().unwrap(), &work, &home] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy(BIN, &bin).unwrap();
    let run = |args: &[&str]| {
        Command::new(&bin)
            .args(args)
            .current_dir(&work)
            .env("HOME", &home)
            .env("CIPHERINFER_HOME", home.join("ci"))
            .env_remove("XDG_CACHE_HOME")
            .env_remove("CIPHERINFER_MODELS_DIR")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = run(&["demo", "--images", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("2/2 encrypted predictions equal the cleartext model's"),
        "{stdout}"
    );
    let copies: Vec<_> = std::fs::read_dir(home.join("ci/models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    for file in [
        "manifest.json",
        "mnist-cnn.onnx",
        "colour-shapes/model.json",
    ] {
        assert!(copies[0].join(file).is_file(), "{file}");
    }
    // The shipped colour package, served by name.
    let mut server = Command::new(&bin)
        .args(["serve", "--bind", "127.0.0.1:0", "--model", "colour-shapes"])
        .arg("--data-dir")
        .arg(dir.join("server"))
        .current_dir(&work)
        .env("HOME", &home)
        .env("CIPHERINFER_HOME", home.join("ci"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        line.starts_with("cipherinfer remote server listening on "),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keygen_and_provision_commands() {
    let dir = temp("provision");
    let keys = dir.join("keys");
    let remote = Remote::start(&dir.join("server"), MODELS, &[]);
    let run = cipherinfer(
        &["keygen", "--remote", &remote.url, "--client-id", "alice"],
        &keys,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("generated"), "{}", run.stdout);
    // The identity to pre-register is printed, and it stays the same across key generations.
    let identity = |out: &str| {
        out.split_whitespace()
            .skip_while(|w| *w != "identity")
            .nth(1)
            .map(str::to_string)
            .unwrap_or_default()
    };
    let first = identity(&run.stdout);
    assert_eq!(first.len(), 64, "{}", run.stdout);
    assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
    let run = cipherinfer(
        &["keygen", "--remote", &remote.url, "--client-id", "alice"],
        &keys,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("already in the key store"),
        "{}",
        run.stdout
    );
    assert_eq!(identity(&run.stdout), first, "{}", run.stdout);
    let run = cipherinfer(
        &["provision", "--remote", &remote.url, "--client-id", "alice"],
        &keys,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("urn:cipherinfer:key:alice:1"),
        "{}",
        run.stdout
    );
    // Another key store cannot take over the same client id at this server.
    let run = cipherinfer(
        &["provision", "--remote", &remote.url, "--client-id", "alice"],
        &dir.join("other-keys"),
    );
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("ERROR_CLIENT_EXISTS"), "{}", run.stderr);
    // A server identity pinned out of band before first contact: a server presenting another
    // is refused before anything is sent; the right pin works.
    let pins = keys.join(".servers");
    let pin_file = std::fs::read_dir(&pins)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let pinned: Value = serde_json::from_slice(&std::fs::read(pin_file).unwrap()).unwrap();
    let server_key = pinned["server_key"].as_str().unwrap().to_string();
    let fresh = dir.join("pinned-keys");
    let pin = |key: &str, replace: bool| {
        let mut args = vec!["pin-server", "--remote", &remote.url, "--server-key", key];
        if replace {
            args.push("--replace");
        }
        cipherinfer(&args, &fresh)
    };
    // Another valid Ed25519 key (the client's own identity) stands for an impostor's.
    let run = pin(&first, false);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let provision_bob = || {
        cipherinfer(
            &["provision", "--remote", &remote.url, "--client-id", "bob"],
            &fresh,
        )
    };
    let run = provision_bob();
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stderr.contains("ERROR_IDENTITY_MISMATCH"),
        "{}",
        run.stderr
    );
    let run = pin(&server_key, false);
    assert_ne!(run.code, 0, "a different pin is not replaced silently");
    assert!(run.stderr.contains("--replace"), "{}", run.stderr);
    let run = pin("not-a-key", true);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("--server-key"), "{}", run.stderr);
    let run = pin(&server_key, true);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = provision_bob();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("urn:cipherinfer:key:bob:1"),
        "{}",
        run.stdout
    );
    // The local server never listens beyond loopback.
    let run = cipherinfer(&["local", "--http", "0.0.0.0:0"], &keys);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("loopback"), "{}", run.stderr);
    // Secret material is private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    drop(remote);
    let _ = std::fs::remove_dir_all(&dir);
}

fn python() -> String {
    std::env::var("CIPHERINFER_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn sdk_or_skip(python: &str) -> bool {
    let ok = Command::new(python)
        .args(["-c", "import mcp.client.stdio"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    assert!(
        !std::env::var("CIPHERINFER_REQUIRE_INTEROP").is_ok_and(|v| v == "1"),
        "CIPHERINFER_REQUIRE_INTEROP=1 but `{python} -c 'import mcp'` fails: pip install mcp==2.3.0"
    );
    eprintln!("SKIPPED: the MCP Python SDK is not importable by {python}");
    false
}

/// The official MCP Python SDK starts `cipherinfer local` over stdio, lists its tools, runs
/// `private_classify` against a real remote server and meets an error path.
#[test]
fn python_sdk_drives_the_local_server_over_stdio() {
    let python = python();
    if !sdk_or_skip(&python) {
        return;
    }
    let dir = temp("python");
    let remote = Remote::start(&dir.join("server"), MODELS, &[]);
    let (image, want) = samples("mnist-cnn", 1).swap_remove(0);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/local_client.py");
    // The README's host configuration as written: no --key-dir, the store under HOME.
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new(&python)
        .arg(&script)
        .arg(BIN)
        .arg(&home)
        .arg(&remote.url)
        .arg(&image)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["class_index"], want, "{last}");
    assert_eq!(
        last["provisioned"], true,
        "refused calls provision nothing: {last}"
    );
    assert!(stdout.contains("ok: tools"), "{stdout}");
    assert!(stdout.contains("ok: error path"), "{stdout}");
    assert!(stdout.contains("ok: progress"), "{stdout}");
    let store = home.join(".local/share/cipherinfer/keys");
    assert!(
        store.join(".work").is_dir(),
        "the key store is at its default place"
    );
    drop(remote);
    let _ = std::fs::remove_dir_all(&dir);
}
