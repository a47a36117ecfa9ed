//! `cipherinfer bench load`: N clients at once, each through key generation, Step 0
//! provisioning, chunked upload, encrypted inference and decryption, against a remote server on
//! loopback (started in-process unless `--remote` names one). Reports throughput, per-step
//! latency percentiles, failures and peak memory.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipherinfer_client::{ClassifyRequest, RemoteClient, Workflow, WorkflowOptions};
use cipherinfer_local::{InProcess, LocalConfig, LocalCrypto};
use cipherinfer_model::Manifest;
use serde_json::json;

use crate::BoxErr;
use crate::demo::{LoopbackServer, temp_dir};

/// Options of `cipherinfer bench load`.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Concurrent clients, each with its own key set and connection.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Images each client classifies after provisioning.
    #[arg(long, default_value_t = 4)]
    images: usize,
    /// Model to use.
    #[arg(long, default_value = "mnist-cnn")]
    model: String,
    /// A running remote server's MCP endpoint; default: one started in-process on loopback.
    #[arg(long)]
    remote: Option<String>,
    /// Process id of that server, to sample its memory (Linux /proc).
    #[arg(long)]
    server_pid: Option<u32>,
}

/// Resident and peak resident memory of a process in bytes, from /proc.
fn memory(pid: Option<u32>) -> Option<(u64, u64)> {
    let path = pid.map_or_else(
        || "/proc/self/status".to_string(),
        |p| format!("/proc/{p}/status"),
    );
    let status = std::fs::read_to_string(path).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

#[derive(Default)]
struct ClientReport {
    provision_s: Vec<f64>,
    keygen_s: Vec<f64>,
    upload_s: Vec<f64>,
    infer_s: Vec<f64>,
    remote_s: Vec<f64>,
    total_s: Vec<f64>,
    correct: usize,
    images: usize,
    failures: Vec<String>,
}

/// Runs `cipherinfer bench load`.
pub async fn load(args: LoadArgs) -> Result<(), BoxErr> {
    let dir = temp_dir("cipherinfer-load")?;
    let outcome = run(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn run(args: &LoadArgs, dir: &Path) -> Result<(), BoxErr> {
    let manifest = Arc::new(Manifest::shipped()?);
    let entry = manifest.model(&args.model)?.clone();
    let dataset = manifest.dataset(&entry.dataset)?.clone();
    let server = match &args.remote {
        Some(_) => None,
        None => Some(LoopbackServer::start(&dir.join("server"), vec![args.model.clone()]).await?),
    };
    let url = args
        .remote
        .clone()
        .or_else(|| server.as_ref().map(|s| s.url.clone()))
        .ok_or("no server")?;
    let local = Arc::new(InProcess::new(Arc::new(LocalCrypto::new(LocalConfig {
        key_root: dir.join("keys"),
        allowed_dirs: Vec::new(),
    })?)));
    let mut run_id = [0u8; 4];
    getrandom::fill(&mut run_id).map_err(|e| format!("randomness unavailable: {e}"))?;
    let run_id = hex::encode(run_id);

    // Memory sampler: every 50 ms, the largest RSS seen of the server (or this process).
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        let pid = args.server_pid;
        tokio::spawn(async move {
            let mut peak = 0u64;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some((rss, _)) = memory(pid) {
                    peak = peak.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    let baseline = memory(args.server_pid);

    eprintln!(
        "{} clients x {} images of {} against {url} ...",
        args.clients, args.images, args.model
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let local = Arc::clone(&local);
        let manifest = Arc::clone(&manifest);
        let dataset = dataset.clone();
        let url = url.clone();
        let model = args.model.clone();
        let images = args.images;
        let work_dir = dir.join(format!("work-{c}"));
        let client_base = format!("load-{run_id}-{c}");
        tasks.push(tokio::spawn(async move {
            let mut report = ClientReport::default();
            if let Err(e) = std::fs::create_dir_all(&work_dir) {
                report.failures.push(e.to_string());
                return report;
            }
            let remote = match RemoteClient::connect(&url).await {
                Ok(r) => r,
                Err(e) => {
                    report
                        .failures
                        .push(format!("{}: {}", e.error_code, e.message));
                    return report;
                }
            };
            let mut workflow = Workflow::new(
                local.as_ref(),
                local.store(),
                &remote,
                WorkflowOptions {
                    work_dir,
                    default_client_id: client_base,
                    chunk_bytes: cipherinfer_client::remote::DEFAULT_CHUNK_BYTES,
                    enrollment_token: None,
                },
            );
            for i in 0..images {
                let Some(image) = dataset.images.get((c * images + i) % dataset.images.len())
                else {
                    break;
                };
                let request = ClassifyRequest {
                    image_path: manifest.dir().join(&image.file),
                    model: Some(model.clone()),
                    client_id: None,
                    top_k: Some(1),
                };
                match workflow.classify(&request, |_| {}).await {
                    Ok(r) => {
                        let t = &r.timings;
                        if let Some(k) = t.keygen_s {
                            report.keygen_s.push(k);
                        }
                        if let Some(p) = t.provision_s {
                            report.provision_s.push(p);
                        }
                        report.upload_s.push(t.upload_s);
                        report.infer_s.push(t.infer_s);
                        report.remote_s.push(t.remote_s);
                        report.total_s.push(t.total_s);
                        report.images += 1;
                        report.correct +=
                            usize::from(r.classification.class_index == u32::from(image.label));
                    }
                    Err(e) => report
                        .failures
                        .push(format!("{}: {}", e.error_code, e.message)),
                }
            }
            remote.close().await;
            report
        }));
    }
    let mut all = ClientReport::default();
    for t in tasks {
        let r = t.await?;
        all.keygen_s.extend(r.keygen_s);
        all.provision_s.extend(r.provision_s);
        all.upload_s.extend(r.upload_s);
        all.infer_s.extend(r.infer_s);
        all.remote_s.extend(r.remote_s);
        all.total_s.extend(r.total_s);
        all.images += r.images;
        all.correct += r.correct;
        all.failures.extend(r.failures);
    }
    let wall = started.elapsed().as_secs_f64();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let sampled_peak = sampler.await.unwrap_or(0);
    let end = memory(args.server_pid);
    if let Some(s) = server {
        s.stop().await;
    }
    let stats = |v: &mut Vec<f64>| json!({"p50_ms": percentile(v, 0.5) * 1e3, "p95_ms": percentile(v, 0.95) * 1e3, "max_ms": percentile(v, 1.0) * 1e3, "n": v.len()});
    let memory_of = if args.server_pid.is_some() {
        "server process"
    } else {
        "this process (in-process server and all clients)"
    };
    let out = json!({
        "clients": args.clients,
        "images_per_client": args.images,
        "model": args.model,
        "remote": url,
        "wall_s": wall,
        "images_classified": all.images,
        "correct": all.correct,
        "failures": all.failures,
        "throughput_images_per_s": all.images as f64 / wall,
        "keygen": stats(&mut all.keygen_s),
        "provision": stats(&mut all.provision_s),
        "upload": stats(&mut all.upload_s),
        "server_infer": stats(&mut all.infer_s),
        "remote_call": stats(&mut all.remote_s),
        "classify_total": stats(&mut all.total_s),
        "memory_of": memory_of,
        "rss_before_bytes": baseline.map(|m| m.0),
        "rss_after_bytes": end.map(|m| m.0),
        "rss_peak_sampled_bytes": sampled_peak,
        "rss_peak_bytes": end.map(|m| m.1),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    eprintln!(
        "{} clients: {} images in {wall:.1} s ({:.2} images/s, provisioning included), {} correct, {} failures; peak RSS of {memory_of}: {:.0} MB",
        args.clients,
        all.images,
        all.images as f64 / wall,
        all.correct,
        all.failures.len(),
        end.map_or(0, |m| m.1) as f64 / 1e6
    );
    if !all.failures.is_empty() {
        return Err(format!("{} requests failed", all.failures.len()).into());
    }
    Ok(())
}
