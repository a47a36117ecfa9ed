//! [`LocalCrypto`]: the local server's tools as synchronous methods (CPU-bound: callers on an
//! async runtime run them on a blocking thread).

use std::path::PathBuf;
use std::time::Instant;

use cipherinfer_ckks::serialization::ToBytes;
use cipherinfer_ckks::{EvaluationKeys, KeyGenerator};
use cipherinfer_compiler::Shape;
use cipherinfer_model::Manifest;
use cipherinfer_protocol::AlgorithmId;
use cipherinfer_protocol::error::{ErrorCode, Result, ToolError};
use cipherinfer_protocol::local::{
    CiphertextObject, DEFAULT_INLINE_PAYLOAD_BYTES, DEFAULT_TOP_K, ExportEvaluationKeysArgs,
    ExportEvaluationKeysResult, FheDecryptArgs, FheDecryptResult, FheEncryptArgs, FheEncryptResult,
    GenerateKeysArgs, GenerateKeysResult,
};
use cipherinfer_protocol::params::ExtendedParameters;
use cipherinfer_protocol::validate::{DEFAULT_CHUNK_BYTES, encode_base64, sha256_hex};
use rayon::prelude::*;

use crate::fsutil::{Confinement, FILE_MODE, create_private_dir_all, read_limited, write_atomic};
use crate::output::{self, MAX_RESULT_FILE_BYTES};
use crate::store::{
    ClientRecord, KeyStore, LoadedClient, MAX_EVALUATION_KEY_BYTES, MAX_KEY_GENERATION_MEMORY,
    RECORD_FORMAT, identity_preprocessing, now, parse_preprocessing, shape_len,
    validate_client_spec,
};

/// Largest `inline_max_bytes` honoured: bigger requests are capped so that one tool result
/// stays far below the stdio line limit.
pub const MAX_INLINE_PAYLOAD_BYTES: u64 = 8 * 1024 * 1024;

/// The object name of input ciphertext `i`, as the remote server expects it
/// (`ModelInfo.input_objects`).
pub fn input_object_name(i: usize) -> String {
    format!("input-{i}.ct")
}

/// Configuration of the local crypto core.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Root of the key store.
    pub key_root: PathBuf,
    /// Directories tool paths must lie in; empty allows any absolute path.
    pub allowed_dirs: Vec<PathBuf>,
}

/// The local crypto core: key store, path policy, and one method per tool.
#[derive(Debug)]
pub struct LocalCrypto {
    store: KeyStore,
    paths: Confinement,
}

fn internal(e: impl std::fmt::Display) -> ToolError {
    ToolError::new(ErrorCode::Internal, e.to_string())
}

fn chunk_count(bytes: u64, chunk_bytes: u64) -> Result<u32> {
    u32::try_from(bytes.div_ceil(chunk_bytes.max(1)))
        .map_err(|_| ToolError::new(ErrorCode::ObjectTooLarge, "too many chunks"))
}

fn shape_vec(shape: &Shape) -> Vec<u32> {
    let dims = match *shape {
        Shape::Vector(n) => vec![n],
        Shape::Chw(c, h, w) => vec![c, h, w],
    };
    dims.into_iter()
        .map(|d| u32::try_from(d).unwrap_or(u32::MAX))
        .collect()
}

impl LocalCrypto {
    /// Opens the key store (creating its root, mode 0700) and resolves the allowed directories
    /// (each must exist). When paths are confined, the store's work directory
    /// ([`crate::classify::WORK_DIR`], where `private_classify` and the CLI keep a call's session
    /// files; created here, mode 0700) is allowed too: it holds only public keys, ciphertexts and
    /// results, never the store's secrets, which stay outside every allowed directory.
    pub fn new(config: LocalConfig) -> Result<Self> {
        let store = KeyStore::open(config.key_root)?;
        let mut allowed = config.allowed_dirs;
        if !allowed.is_empty() {
            let work = store.root().join(crate::classify::WORK_DIR);
            create_private_dir_all(&work).map_err(|e| {
                ToolError::new(
                    ErrorCode::Internal,
                    format!("cannot create the work directory: {e}"),
                )
            })?;
            allowed.push(work);
        }
        Ok(Self {
            store,
            paths: Confinement::new(&allowed)?,
        })
    }

    /// The key store.
    pub fn store(&self) -> &KeyStore {
        &self.store
    }

    /// The path policy.
    pub fn paths(&self) -> &Confinement {
        &self.paths
    }

    fn check_model(loaded: &LoadedClient, model: Option<&String>) -> Result<()> {
        match model {
            Some(m) if *m != loaded.record.model => Err(ToolError::new(
                ErrorCode::UnknownModel,
                format!(
                    "client {:?} has keys for model {:?}, not {m:?}",
                    loaded.record.client_id, loaded.record.model
                ),
            )),
            _ => Ok(()),
        }
    }

    /// `generate_keys`: validates the untrusted client specification, generates a secret key,
    /// the relinearization key if the model needs it and one Galois key per rotation step (in
    /// parallel), serializes the evaluation keys as the Step 0 bundle and stores the key set.
    pub fn generate_keys(&self, a: &GenerateKeysArgs) -> Result<GenerateKeysResult> {
        a.validate()?;
        let started = Instant::now();
        let params = validate_client_spec(&a.client_spec)?;
        let spec = &a.client_spec;
        let algorithm_id = AlgorithmId::for_ckks(&params)?;
        if !a.overwrite && self.store.exists(&a.client_id)? {
            return Err(ToolError::new(
                ErrorCode::ClientExists,
                format!(
                    "client {:?} already has a key set (pass overwrite: true to replace it)",
                    a.client_id
                ),
            ));
        }
        let outputs = shape_len(&spec.output_shape);
        // Labels and preprocessing: the caller's (from ModelInfo), else the shipped manifest's
        // entry of this model, else defaults.
        let shipped = Manifest::shipped()
            .ok()
            .and_then(|m| m.model(&a.model).ok().cloned());
        let labels = match (&a.labels, &shipped) {
            (Some(l), _) => l.clone(),
            (None, Some(entry)) if entry.classes.len() == outputs => entry.classes.clone(),
            _ => (0..outputs).map(|i| i.to_string()).collect(),
        };
        if labels.len() != outputs {
            return Err(ToolError::new(
                ErrorCode::InvalidArgument,
                format!("{} labels for {outputs} outputs", labels.len()),
            ));
        }
        let preprocessing = match (&a.preprocessing, &shipped) {
            (Some(p), _) => p.clone(),
            (None, Some(entry)) => serde_json::to_value(&entry.input).map_err(internal)?,
            (None, None) => {
                serde_json::to_value(identity_preprocessing(spec.input_shape)).map_err(internal)?
            }
        };
        parse_preprocessing(&preprocessing, spec.input_shape)?;

        let mut kg = KeyGenerator::new(params.clone())
            .map_err(|e| ToolError::from_ckks(&e, ErrorCode::Internal))?;
        // Each rotation key serves only the levels its rotations run at (smaller keys).
        let elements: Vec<(u64, usize)> = spec.galois_key_levels(&params).into_iter().collect();
        // The keys in memory (both halves of every digit, 8 bytes per residue) plus their
        // serialized copy: refused before any key is made when that passes the bound.
        let bundle = spec.evaluation_keys_bytes(&params) as u64;
        let memory = spec.key_memory_bytes(&params) as u64;
        if bundle > MAX_EVALUATION_KEY_BYTES
            || memory.saturating_add(bundle) > MAX_KEY_GENERATION_MEMORY
        {
            return Err(ToolError::new(
                ErrorCode::ObjectTooLarge,
                format!(
                    "the model asks for {} rotation keys: {:.1} GiB of evaluation keys, {:.1} GiB \
                     of memory to make them; this local server makes at most {} GiB of keys \
                     in {} GiB of memory",
                    elements.len(),
                    bundle as f64 / (1u64 << 30) as f64,
                    memory.saturating_add(bundle) as f64 / (1u64 << 30) as f64,
                    MAX_EVALUATION_KEY_BYTES >> 30,
                    MAX_KEY_GENERATION_MEMORY >> 30
                ),
            ));
        }
        let sk = kg.secret_key();
        let mut keys = EvaluationKeys::new(params.clone());
        if spec.relinearization {
            let rk = kg
                .relinearization_key(&sk)
                .map_err(|e| ToolError::from_ckks(&e, ErrorCode::Internal))?;
            keys.set_relinearization_key(rk)
                .map_err(|e| ToolError::from_ckks(&e, ErrorCode::Internal))?;
        }
        // One OS-seeded generator per key: independent randomness, no shared state.
        let galois = elements
            .par_iter()
            .map(|&(g, level)| {
                KeyGenerator::new(params.clone())
                    .and_then(|mut kg| kg.galois_key_to_level(&sk, g, level))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ToolError::from_ckks(&e, ErrorCode::Internal))?;
        for k in galois {
            keys.insert_galois_key(k)
                .map_err(|e| ToolError::from_ckks(&e, ErrorCode::Internal))?;
        }
        let mut galois_elements = keys.galois_elements();
        galois_elements.sort_unstable();
        let relinearization = keys.relinearization_key().is_some();
        let bundle = keys.to_bytes();
        drop(keys);
        let record = ClientRecord {
            format_version: RECORD_FORMAT,
            client_id: a.client_id.clone(),
            model: a.model.clone(),
            client_spec: a.client_spec.clone(),
            labels,
            preprocessing,
            algorithm_id,
            parameter_id: params.id_hex(),
            created_at: now(),
            galois_elements: galois_elements.clone(),
            relinearization,
            evaluation_key_bytes: bundle.len() as u64,
            evaluation_key_sha256: sha256_hex(&bundle),
        };
        self.store.create(&record, &sk, &bundle, a.overwrite)?;
        drop(sk);
        let mut parameters = ExtendedParameters::from_ckks(&params);
        parameters.max_multiplication_depth = u32::try_from(spec.depth).ok();
        tracing::info!(
            client_id = %a.client_id,
            model = %a.model,
            galois_keys = galois_elements.len(),
            bundle_bytes = bundle.len(),
            "key set generated"
        );
        // The identity that will sign this client's calls, made now if it is the first key set.
        let identity = self.store.identity(&a.client_id)?.public();
        Ok(GenerateKeysResult {
            identity,
            ok: true,
            client_id: a.client_id.clone(),
            model: a.model.clone(),
            algorithm_id,
            parameter_id: record.parameter_id,
            parameters,
            galois_elements,
            relinearization,
            evaluation_key_bytes: record.evaluation_key_bytes,
            keygen_s: started.elapsed().as_secs_f64(),
        })
    }

    /// `export_evaluation_keys`: writes the stored public bundle (checked against its recorded
    /// size and SHA-256) to `output_path` atomically, mode 0600, and reports what
    /// `provision_keys_begin` needs.
    pub fn export_evaluation_keys(
        &self,
        a: &ExportEvaluationKeysArgs,
    ) -> Result<ExportEvaluationKeysResult> {
        a.validate()?;
        let (record, bundle) = self.store.evaluation_keys(&a.client_id)?;
        let target = self.paths.new_file("output_path", &a.output_path)?;
        write_atomic(&target, &bundle, FILE_MODE)
            .map_err(|e| crate::fsutil::io_error("output_path", &e))?;
        let chunk_bytes = a.chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES);
        Ok(ExportEvaluationKeysResult {
            ok: true,
            client_id: a.client_id.clone(),
            path: target.to_string_lossy().into_owned(),
            bytes: bundle.len() as u64,
            sha256: record.evaluation_key_sha256,
            chunk_count: chunk_count(bundle.len() as u64, chunk_bytes)?,
            chunk_bytes,
            algorithm_id: record.algorithm_id,
            parameter_id: record.parameter_id,
            galois_elements: record.galois_elements,
            relinearization: record.relinearization,
        })
    }

    /// `fhe_encrypt` (Steps 1-2): preprocesses the image, packs it by the model's input map,
    /// encrypts each input ciphertext with the secret key (seeded form) and writes them as
    /// `input-<i>.ct` into `session_dir` (created, mode 0700, when missing).
    pub fn fhe_encrypt(&self, a: &FheEncryptArgs) -> Result<FheEncryptResult> {
        a.validate()?;
        let started = Instant::now();
        let mut loaded = self.store.load(&a.client_id)?;
        Self::check_model(&loaded, a.model.as_ref())?;
        let image_path = self.paths.existing_file("image_path", &a.image_path)?;
        let session_dir = self.paths.directory("session_dir", &a.session_dir)?;
        let (x, fit) = crate::image::preprocess_file_fitted(
            &image_path,
            loaded.spec.input_shape,
            &loaded.input,
        )?;
        let encoder = cipherinfer_ckks::Encoder::new(loaded.params.clone());
        let cts = loaded
            .spec
            .encrypt_input(&encoder, &mut loaded.encryptor, &x)
            .map_err(|e| match e {
                cipherinfer_compiler::CompileError::Ckks(c) => {
                    ToolError::from_ckks(&c, ErrorCode::Internal)
                }
                other => ToolError::new(ErrorCode::InvalidArgument, other.to_string()),
            })?;
        drop(x);
        let chunk_bytes = a.chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES);
        let inline_max = a
            .inline_max_bytes
            .unwrap_or(DEFAULT_INLINE_PAYLOAD_BYTES)
            .min(MAX_INLINE_PAYLOAD_BYTES);
        let mut objects = Vec::with_capacity(cts.len());
        let mut inline = None;
        for (i, ct) in cts.iter().enumerate() {
            let file_name = input_object_name(i);
            let path = session_dir.join(&file_name);
            let bytes = ct.to_bytes();
            write_atomic(&path, &bytes, FILE_MODE)
                .map_err(|e| crate::fsutil::io_error("session_dir", &e))?;
            let n = bytes.len() as u64;
            if cts.len() == 1 && inline_max > 0 && n <= inline_max {
                inline = Some(encode_base64(&bytes));
            }
            objects.push(CiphertextObject {
                file_name,
                path: path.to_string_lossy().into_owned(),
                bytes: n,
                sha256: sha256_hex(&bytes),
                chunk_count: chunk_count(n, chunk_bytes)?,
            });
        }
        Ok(FheEncryptResult {
            ok: true,
            client_id: a.client_id.clone(),
            model: loaded.record.model.clone(),
            session_dir: session_dir.to_string_lossy().into_owned(),
            algorithm_id: loaded.record.algorithm_id,
            parameter_id: loaded.record.parameter_id.clone(),
            total_bytes: objects.iter().map(|o| o.bytes).sum(),
            objects,
            chunk_bytes,
            encrypted_payload_b64: inline,
            encrypt_s: started.elapsed().as_secs_f64(),
            image: Some(fit),
        })
    }

    /// `fhe_decrypt` (Steps 5-6): reads the result file (the remote's output bytes or their
    /// Base64 text, see [`crate::output`]), decodes it against this client's parameters, decrypts, flags
    /// results not made for this key, and classifies.
    pub fn fhe_decrypt(&self, a: &FheDecryptArgs) -> Result<FheDecryptResult> {
        a.validate()?;
        let started = Instant::now();
        let loaded = self.store.load(&a.client_id)?;
        Self::check_model(&loaded, a.model.as_ref())?;
        let path = self
            .paths
            .existing_file("encrypted_logit_path", &a.encrypted_logit_path)?;
        // The file may hold the Base64 text (a little over 4/3 of the bytes) rather than the bytes.
        let limit = usize::try_from(MAX_RESULT_FILE_BYTES).unwrap_or(usize::MAX);
        let file = read_limited(&path, MAX_RESULT_FILE_BYTES.saturating_mul(3) / 2)
            .map_err(|e| e.into_tool("encrypted_logit_path", ErrorCode::ObjectTooLarge))?;
        let bytes = output::result_file_bytes(file, limit)?;
        if let Some(att) = &a.result_attestation {
            // Before any decryption: signed by the pinned server, for these exact bytes.
            let pinned = self.store.pinned_server(&att.remote_url)?.ok_or_else(|| {
                ToolError::new(
                    ErrorCode::IdentityMismatch,
                    format!("no server identity is pinned for {}", att.remote_url),
                )
            })?;
            att.claim.verify(
                &att.signature,
                &pinned,
                &att.signature.request_nonce,
                &bytes,
            )?;
        }
        let cts = output::decode_output(&loaded.params, &bytes, limit)?;
        let encoder = cipherinfer_ckks::Encoder::new(loaded.params.clone());
        let d = output::decrypt_output(&loaded.spec, &encoder, &loaded.decryptor, &cts)?;
        let top_k = a.top_k.unwrap_or(DEFAULT_TOP_K) as usize;
        let classification = output::classify(
            &d.values,
            &loaded.record.labels,
            shape_vec(&loaded.spec.output_shape),
            top_k,
            d.precision_bits,
        );
        Ok(FheDecryptResult {
            ok: true,
            client_id: a.client_id.clone(),
            model: loaded.record.model.clone(),
            classification,
            decrypt_s: started.elapsed().as_secs_f64(),
        })
    }
}
