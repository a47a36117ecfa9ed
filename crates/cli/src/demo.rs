//! `cipherinfer demo`: the whole workflow on the shipped sample images, with no configuration.
//!
//! A remote inference server starts in-process on a loopback port with its embedded defaults
//! (every shipped HE-friendly model, an object store in a temporary directory) and is reached
//! over MCP Streamable HTTP. The local crypto server runs exactly as under `cipherinfer
//! classify`: this binary's `local` command as a child process, spoken to over MCP stdio, with a
//! temporary key store. The client workflow (`cipherinfer_client::Workflow`) generates keys,
//! provisions them (Step 0) and classifies each sample image under encryption. The remote side
//! never sees anything but ciphertexts and public evaluation keys.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cipherinfer_client::{ClassifyRequest, RemoteClient};
use cipherinfer_model::{Manifest, onnx, plain};
use cipherinfer_remote::{Server, ServerOptions};
use tokio_util::sync::CancellationToken;

use crate::BoxErr;
use crate::client::LocalServer;

/// Options of `cipherinfer demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Models to demonstrate (default: every model the server serves).
    #[arg(long, value_delimiter = ',')]
    model: Vec<String>,
    /// Images per model, from the shipped samples.
    #[arg(long, default_value_t = 10)]
    images: usize,
    /// Keep the temporary directory (keys, server data) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

/// A running in-process remote server.
pub struct LoopbackServer {
    /// Its MCP endpoint.
    pub url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl LoopbackServer {
    /// Builds the server (compiling `models`) and serves it on `127.0.0.1:0`.
    pub async fn start(data_dir: &Path, models: Vec<String>) -> Result<Self, BoxErr> {
        let options = ServerOptions {
            data_dir: data_dir.to_path_buf(),
            models,
            ..ServerOptions::default()
        };
        let server = tokio::task::spawn_blocking(move || Server::build(options)).await??;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/mcp", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(listener, shutdown.clone()));
        Ok(Self {
            url,
            shutdown,
            task,
        })
    }

    /// Stops the server and waits for it (at most 10 s).
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// A fresh private temporary directory (0700).
pub fn temp_dir(prefix: &str) -> Result<PathBuf, BoxErr> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("randomness unavailable: {e}"))?;
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", hex::encode(bytes)));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    Ok(dir)
}

use std::os::unix::fs::DirBuilderExt;

fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

/// Runs `cipherinfer demo`.
pub async fn demo(args: DemoArgs) -> Result<(), BoxErr> {
    let started = Instant::now();
    let dir = temp_dir("cipherinfer-demo")?;
    let outcome = run(&args, &dir, started).await;
    if args.keep {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

async fn run(args: &DemoArgs, dir: &Path, started: Instant) -> Result<(), BoxErr> {
    let manifest = Manifest::shipped()?;
    let models = if args.model.is_empty() {
        manifest
            .models
            .iter()
            .filter(|m| m.he.friendly)
            .map(|m| m.name.clone())
            .collect()
    } else {
        args.model.clone()
    };
    println!(
        "cipherinfer demo: starting a remote inference server on loopback ({}) ...",
        models.join(", ")
    );
    let server = LoopbackServer::start(&dir.join("server"), models.clone()).await?;
    let outcome = classify_samples(args, dir, &manifest, &server.url, &models).await;
    server.stop().await;
    let tally = outcome?;
    println!(
        "\n{}/{} encrypted predictions equal the cleartext model's, {}/{} match the true label; {:.0} ms per image end to end; whole demo {:.1} s. The server saw only ciphertexts and public keys.",
        tally.agree,
        tally.total,
        tally.correct,
        tally.total,
        tally.seconds / tally.total.max(1) as f64 * 1e3,
        started.elapsed().as_secs_f64()
    );
    if tally.agree != tally.total {
        return Err(format!(
            "{} of {} encrypted predictions differ from the cleartext model's",
            tally.total - tally.agree,
            tally.total
        )
        .into());
    }
    Ok(())
}

/// What the demo counted.
#[derive(Default)]
struct Tally {
    agree: usize,
    correct: usize,
    total: usize,
    seconds: f64,
}

/// The cleartext model's prediction for each sample image of `model`'s dataset, by test index.
fn cleartext_predictions(
    manifest: &Manifest,
    model: &str,
) -> Result<std::collections::HashMap<usize, usize>, BoxErr> {
    let entry = manifest.model(model)?;
    let ir = onnx::import(&manifest.read_model(model)?.bytes)?;
    let set = manifest.load_samples(&entry.dataset)?;
    let inputs = plain::sample_inputs(&set, &entry.input)?;
    let mut out = std::collections::HashMap::new();
    for image in &manifest.dataset(&entry.dataset)?.images {
        if let Some((x, _)) = inputs.get(image.test_index) {
            let logits = plain::run(&ir, x)?.into_data();
            let argmax = logits
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > logits[b] { i } else { b });
            out.insert(image.test_index, argmax);
        }
    }
    Ok(out)
}

async fn classify_samples(
    args: &DemoArgs,
    dir: &Path,
    manifest: &Manifest,
    url: &str,
    models: &[String],
) -> Result<Tally, BoxErr> {
    // The trusted side exactly as `cipherinfer classify` runs it: this binary's `local`
    // command as a child MCP server over stdio, which alone reads the secret keys.
    let key_root = dir.join("keys");
    // Every shipped sample image lies below the manifest's directory.
    let samples = std::path::absolute(manifest.dir())?;
    let local = LocalServer::spawn(&key_root, &[samples]).await?;
    let remote = match RemoteClient::connect(url).await {
        Ok(r) => r,
        Err(e) => {
            local.close().await;
            return Err(e.into());
        }
    };
    println!(
        "local crypto server: `cipherinfer local` over stdio (MCP), key store {}",
        key_root.display()
    );
    println!("remote inference server: {url} (MCP over HTTP)\n");
    let outcome = classify_all(args, manifest, &local, &remote, models).await;
    remote.close().await;
    local.close().await;
    outcome
}

async fn classify_all(
    args: &DemoArgs,
    manifest: &Manifest,
    local: &LocalServer,
    remote: &RemoteClient,
    models: &[String],
) -> Result<Tally, BoxErr> {
    let mut workflow = local.workflow(remote, Some("demo".into()), None)?;
    let mut tally = Tally::default();
    for name in models {
        let clear = cleartext_predictions(manifest, name)?;
        let entry = manifest.model(name)?;
        let dataset = manifest.dataset(&entry.dataset)?;
        println!("== {name} ({}) ==", entry.description);
        println!(
            "{:<28} {:>12} {:>12} {:>12} {:>6} {:>7} {:>7} {:>8} {:>7} {:>9}",
            "image",
            "true",
            "cleartext",
            "encrypted",
            "p",
            "enc ms",
            "up ms",
            "infer ms",
            "dec ms",
            "uploaded"
        );
        for image in dataset.images.iter().take(args.images) {
            let path = manifest.dir().join(&image.file);
            let r = workflow
                .classify(
                    &ClassifyRequest {
                        image_path: path.clone(),
                        model: Some(name.clone()),
                        client_id: None,
                        top_k: Some(3),
                    },
                    |_| {},
                )
                .await?;
            if r.provisioned {
                println!(
                    "  keys: generated in {:.2} s, {} of evaluation keys provisioned (Step 0) in {:.2} s",
                    r.timings.keygen_s.unwrap_or(0.0),
                    mb(r.evaluation_key_bytes),
                    r.timings.provision_s.unwrap_or(0.0)
                );
            }
            let name_of = |i: usize| {
                dataset
                    .classes
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| i.to_string())
            };
            let predicted = r.classification.class_index as usize;
            let cleartext = clear.get(&image.test_index).copied();
            let agree = cleartext == Some(predicted);
            tally.agree += usize::from(agree);
            tally.correct += usize::from(usize::from(image.label) == predicted);
            tally.total += 1;
            tally.seconds += r.timings.total_s
                - r.timings.keygen_s.unwrap_or(0.0)
                - r.timings.provision_s.unwrap_or(0.0);
            let file = Path::new(&image.file)
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
            println!(
                "{:<28} {:>12} {:>12} {:>12} {:>6.3} {:>7.1} {:>7.1} {:>8.1} {:>7.1} {:>9} {}",
                file,
                name_of(usize::from(image.label)),
                cleartext.map_or_else(|| "?".to_string(), name_of),
                r.classification.label,
                r.classification
                    .top_k
                    .first()
                    .map_or(0.0, |c| c.probability),
                r.timings.encrypt_s * 1e3,
                r.timings.upload_s * 1e3,
                r.timings.infer_s * 1e3,
                r.timings.decrypt_s * 1e3,
                format!("{} KB", r.bytes_uploaded / 1000),
                if agree { "=" } else { "≠ cleartext" }
            );
        }
        println!();
    }
    Ok(tally)
}
