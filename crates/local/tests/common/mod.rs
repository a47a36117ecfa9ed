//! Shared fixtures: a compiled shipped model (as the remote server compiles it), scratch
//! directories, and the remote's evaluation step done in-process.
#![allow(dead_code, clippy::unwrap_used, clippy::panic, reason = "test support")]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cipherinfer_ckks::serialization::FromBytes;
use cipherinfer_ckks::{Ciphertext, EvaluationKeys, Evaluator};
use cipherinfer_local::{LocalConfig, LocalCrypto};
use cipherinfer_model::{Manifest, Model, Tensor, onnx, plain};
use cipherinfer_protocol::local::GenerateKeysArgs;
use cipherinfer_remote::Registry;
use cipherinfer_remote::registry::ServedModel;
use serde_json::Value;

/// The mnist-cnn model compiled once per test binary, as the remote server does.
pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry::shipped(&["mnist-cnn".to_string()]).expect("registry"))
}

pub fn served() -> &'static ServedModel {
    registry().get("mnist-cnn").expect("mnist-cnn")
}

/// The plaintext model, for reference logits.
pub fn plain_model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let manifest = Manifest::shipped().expect("manifest");
        onnx::import(&manifest.read_model("mnist-cnn").expect("model").bytes).expect("import")
    })
}

/// Reference logits of the plaintext model on a preprocessed input.
pub fn reference_logits(x: &[f64]) -> Vec<f64> {
    let shape = cipherinfer_model::Shape::new(1, 28, 28);
    plain::run(
        plain_model(),
        &Tensor::new(shape, x.to_vec()).expect("tensor"),
    )
    .expect("run")
    .into_data()
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cipherinfer-local-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        Self(dir.canonicalize().expect("canonical"))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    pub fn str(&self, p: &str) -> String {
        self.join(p).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A crypto core whose key store lives in `scratch/keys` and whose paths are confined to
/// `scratch/work` (created).
pub fn crypto(scratch: &Scratch) -> LocalCrypto {
    let work = scratch.join("work");
    std::fs::create_dir_all(&work).expect("work");
    LocalCrypto::new(LocalConfig {
        key_root: scratch.join("keys"),
        allowed_dirs: vec![work],
    })
    .expect("crypto")
}

/// generate_keys arguments for mnist-cnn as a client copies them from ModelInfo.
pub fn keygen_args(client_id: &str) -> GenerateKeysArgs {
    let info = &served().info;
    GenerateKeysArgs {
        client_id: client_id.into(),
        model: info.name.clone(),
        client_spec: info.client_spec.clone(),
        overwrite: false,
        labels: Some(info.labels.clone()),
        preprocessing: info.preprocessing.clone(),
    }
}

/// The shipped sample PNG of mnist with this test index, and its path.
pub fn mnist_sample(test_index: usize) -> PathBuf {
    let manifest = Manifest::shipped().expect("manifest");
    let ds = manifest.dataset("mnist").expect("dataset");
    let img = ds
        .images
        .iter()
        .find(|i| i.test_index == test_index)
        .expect("sample");
    manifest.path_of(&img.file)
}

/// Copies a file into the scratch work directory; returns the new path.
pub fn copy_in(scratch: &Scratch, from: &Path, name: &str) -> String {
    let to = scratch.join("work").join(name);
    std::fs::copy(from, &to).expect("copy");
    to.to_string_lossy().into_owned()
}

/// The remote's Step 3-4 in process: decode the bundle and the input objects, evaluate, and
/// return the output ciphertexts.
pub fn evaluate_remote(bundle: &[u8], inputs: &[Vec<u8>]) -> Vec<Ciphertext> {
    let served = served();
    let params = served.params();
    let keys = EvaluationKeys::from_bytes(params, bundle, 1 << 30).expect("bundle decodes");
    let ev = Evaluator::new(keys);
    let cts: Vec<Ciphertext> = inputs
        .iter()
        .map(|b| Ciphertext::from_bytes(params, b, 1 << 26).expect("input decodes"))
        .collect();
    let (out, _) = served
        .model
        .evaluate(&ev, &cts, &AtomicBool::new(false), |_, _, _| {})
        .expect("evaluate");
    out
}

pub fn code(v: &Value) -> &str {
    v["error_code"].as_str().unwrap_or("")
}
