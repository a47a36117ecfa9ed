//! The Steps 0–6 workflow against a real remote server (in-process, over MCP Streamable HTTP on
//! loopback) with the real local crypto tools (in-process, on a scratch key store): predictions
//! equal the cleartext model's, keys are provisioned once and reused, re-provisioned by
//! themselves when the server lost them, and the failures a user meets carry their codes.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cipherinfer_client::{ClassifyRequest, Event, RemoteClient, Workflow, WorkflowOptions};
use cipherinfer_local::{InProcess, LocalConfig, LocalCrypto};
use cipherinfer_model::{Manifest, onnx, plain};
use cipherinfer_protocol::ErrorCode;
use cipherinfer_remote::{Server, ServerOptions};
use tokio_util::sync::CancellationToken;

const MODEL: &str = "mnist-cnn";

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cipherinfer-client-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real remote server on loopback.
struct Remote {
    url: String,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Remote {
    /// Serves mnist-cnn from the store in `data_dir` at `addr` (port 0: any).
    async fn start(data_dir: &Path, addr: SocketAddr) -> Self {
        let options = ServerOptions {
            data_dir: data_dir.to_path_buf(),
            models: vec![MODEL.to_string()],
            ..ServerOptions::default()
        };
        let server = tokio::task::spawn_blocking(move || Server::build(options).unwrap())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(listener, shutdown.clone()));
        Self {
            url: format!("http://{addr}/mcp"),
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// The local side: in-process crypto tools on a key store, and a work directory.
struct Local {
    tools: InProcess,
    work: PathBuf,
}

impl Local {
    fn new(dir: &Path) -> Self {
        let crypto = LocalCrypto::new(LocalConfig {
            key_root: dir.join("keys"),
            allowed_dirs: Vec::new(),
        })
        .unwrap();
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        Self {
            tools: InProcess::new(Arc::new(crypto)),
            work,
        }
    }

    fn workflow<'a>(
        &'a self,
        remote: &'a RemoteClient,
    ) -> Workflow<'a, InProcess, cipherinfer_local::KeyStore> {
        Workflow::new(
            &self.tools,
            self.tools.store(),
            remote,
            WorkflowOptions {
                work_dir: self.work.clone(),
                default_client_id: "wf".into(),
                chunk_bytes: 64 * 1024,
                enrollment_token: None,
            },
        )
    }
}

/// The first `n` shipped sample images of the model with the cleartext model's predictions.
fn samples(n: usize) -> Vec<(PathBuf, u32)> {
    let manifest = Manifest::shipped().unwrap();
    let entry = manifest.model(MODEL).unwrap().clone();
    let ir = onnx::import(&manifest.read_model(MODEL).unwrap().bytes).unwrap();
    let set = manifest.load_samples(&entry.dataset).unwrap();
    let inputs = plain::sample_inputs(&set, &entry.input).unwrap();
    manifest
        .dataset(&entry.dataset)
        .unwrap()
        .images
        .iter()
        .take(n)
        .map(|img| {
            let logits = plain::run(&ir, &inputs[img.test_index].0)
                .unwrap()
                .into_data();
            let argmax =
                (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
            (
                manifest.dir().join(&img.file),
                u32::try_from(argmax).unwrap(),
            )
        })
        .collect()
}

fn request(image: &Path) -> ClassifyRequest {
    ClassifyRequest {
        image_path: image.to_path_buf(),
        model: None,
        client_id: None,
        top_k: Some(3),
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifies_like_the_cleartext_model_and_provisions_once() {
    let dir = Scratch::new("classify");
    let remote_server = Remote::start(&dir.0.join("server"), any_port()).await;
    let local = Local::new(&dir.0);
    let remote = RemoteClient::connect(&remote_server.url).await.unwrap();
    let mut workflow = local.workflow(&remote);
    let images = samples(2);

    let mut events = Vec::new();
    let first = workflow
        .classify(&request(&images[0].0), |e| events.push(e))
        .await
        .unwrap();
    assert!(first.provisioned, "the first call runs Step 0");
    assert_eq!(first.model, MODEL, "the server's default model");
    assert_eq!(first.client_id, format!("wf-{MODEL}"));
    assert_eq!(first.classification.class_index, images[0].1);
    assert_eq!(first.classification.top_k.len(), 3);
    assert!(first.classification.precision_bits >= 5.0);
    assert!(first.evaluation_key_bytes > 1_000_000);
    assert!(first.timings.keygen_s.is_some() && first.timings.provision_s.is_some());
    // The workflow's phases, in order, each at least once.
    let phase = |e: &Event| match e {
        Event::GeneratingKeys { .. } => 0,
        Event::Provisioning(_) => 1,
        Event::Encrypted { .. } => 2,
        Event::Uploading(_) => 3,
        Event::Inference(_) => 4,
        Event::Decrypting => 5,
    };
    let mut phases: Vec<u8> = events.iter().map(phase).collect();
    assert!(phases.is_sorted(), "events out of order: {events:?}");
    phases.dedup();
    assert_eq!(phases, [0, 1, 2, 3, 4, 5]);
    // Uploads count up to the ciphertext's size in several chunks.
    let uploads: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Uploading(t) => Some(*t),
            _ => None,
        })
        .collect();
    assert!(uploads.len() > 1);
    assert_eq!(uploads.last().unwrap().done, first.bytes_uploaded);

    let second = workflow
        .classify(&request(&images[1].0), |_| {})
        .await
        .unwrap();
    assert!(!second.provisioned, "the stored credential is reused");
    assert_eq!(second.classification.class_index, images[1].1);
    assert!(second.timings.keygen_s.is_none());
    // Session files are removed after each classification.
    assert_eq!(std::fs::read_dir(&local.work).unwrap().count(), 0);
    remote.close().await;
    remote_server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisions_again_when_the_server_lost_the_keys() {
    let dir = Scratch::new("lost");
    let data = dir.0.join("server");
    let local = Local::new(&dir.0);
    let image = samples(1).remove(0);

    let server = Remote::start(&data, any_port()).await;
    let addr = server.addr;
    let remote = RemoteClient::connect(&server.url).await.unwrap();
    let first = local
        .workflow(&remote)
        .classify(&request(&image.0), |_| {})
        .await
        .unwrap();
    assert!(first.provisioned);
    remote.close().await;
    server.stop().await;

    // The operator lost every client (records and key bundles); the server's identity file
    // survives, so the client's pin still holds.
    std::fs::remove_dir_all(data.join("clients")).unwrap();
    let server = Remote::start(&data, addr).await;
    let remote = RemoteClient::connect(&server.url).await.unwrap();
    let mut provisioning = 0;
    let again = local
        .workflow(&remote)
        .classify(&request(&image.0), |e| {
            provisioning += usize::from(matches!(e, Event::Provisioning(_)));
        })
        .await
        .unwrap();
    assert!(again.provisioned, "the lost keys were provisioned again");
    assert!(provisioning > 0);
    assert_eq!(again.classification.class_index, image.1);
    // And the new credential is stored: the next call reuses it.
    let third = local
        .workflow(&remote)
        .classify(&request(&image.0), |_| {})
        .await
        .unwrap();
    assert!(!third.provisioned);
    remote.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_carry_their_error_codes() {
    let dir = Scratch::new("errors");
    let local = Local::new(&dir.0);
    let image = samples(1).remove(0);

    // Nothing listens: unavailable (retryable), before any key work.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = RemoteClient::connect(&format!("http://{closed}/mcp"))
        .await
        .unwrap_err();
    assert_eq!(e.error_code, ErrorCode::Unavailable, "{e:?}");

    let server = Remote::start(&dir.0.join("server"), any_port()).await;
    let addr = server.addr;
    let remote = RemoteClient::connect(&server.url).await.unwrap();
    let mut workflow = local.workflow(&remote);

    // A model the server does not serve.
    let e = workflow
        .classify(
            &ClassifyRequest {
                model: Some("no-such-model".into()),
                ..request(&image.0)
            },
            |_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(e.error_code, ErrorCode::UnknownModel, "{e:?}");
    assert!(e.message.contains(MODEL), "names what is served: {e:?}");

    // An image that is not there.
    let e = workflow
        .classify(&request(&dir.0.join("missing.png")), |_| {})
        .await
        .unwrap_err();
    assert_eq!(e.error_code, ErrorCode::FileNotFound, "{e:?}");

    // An invalid client id.
    let e = workflow
        .classify(
            &ClassifyRequest {
                client_id: Some("../etc".into()),
                ..request(&image.0)
            },
            |_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(e.error_code, ErrorCode::InvalidArgument, "{e:?}");

    // A file that is not an image.
    let text = dir.0.join("notes.png");
    std::fs::write(&text, b"not an image").unwrap();
    let e = workflow
        .classify(&request(&text), |_| {})
        .await
        .unwrap_err();
    assert_eq!(e.error_code, ErrorCode::ImageUnreadable, "{e:?}");
    remote.close().await;
    server.stop().await;

    // Another server (another identity) at the same address: the pinned identity refuses it.
    let other = Remote::start(&dir.0.join("other-server"), addr).await;
    let remote = RemoteClient::connect(&other.url).await.unwrap();
    let e = local
        .workflow(&remote)
        .classify(&request(&image.0), |_| {})
        .await
        .unwrap_err();
    assert_eq!(e.error_code, ErrorCode::IdentityMismatch, "{e:?}");
    remote.close().await;
    other.stop().await;
}
