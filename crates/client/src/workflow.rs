//! Steps 0–6 of the draft as one operation: the orchestration an MCP host performs between
//! the trusted local crypto server and the untrusted remote inference server.
//!
//! The local half is reached through [`LocalOps`] — in-process in the local server's own
//! `private_classify`, or over MCP stdio from the `cipherinfer` client — and the remote half
//! through a [`RemoteClient`]. Only ciphertext and public keys leave the trusted host.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cipherinfer_protocol::integrity::{PublicIdentity, RequestSigner};
use cipherinfer_protocol::local::{
    ClassifyTimings, ExportEvaluationKeysArgs, ExportEvaluationKeysResult, FheDecryptArgs,
    FheDecryptResult, FheEncryptArgs, FheEncryptResult, GenerateKeysArgs, GenerateKeysResult,
    PrivateClassifyResult,
};
use cipherinfer_protocol::remote::{Capabilities, ModelInfo, RemoteInferenceArgs};
use cipherinfer_protocol::validate::{sha256_hex, validate_client_id};
use cipherinfer_protocol::{AuthToken, ErrorCode, ToolError};
use serde::{Deserialize, Serialize};

use crate::mcp::Progress;
use crate::remote::{
    DEFAULT_CHUNK_BYTES, ProvisionRequest, RemoteClient, Transfer, new_session_id,
};

/// The trusted local crypto server's tools (draft 6.1, 6.5 and key management).
pub trait LocalOps: Send + Sync {
    /// `generate_keys`.
    fn generate_keys(
        &self,
        args: GenerateKeysArgs,
    ) -> impl Future<Output = Result<GenerateKeysResult, ToolError>> + Send;
    /// `export_evaluation_keys`.
    fn export_evaluation_keys(
        &self,
        args: ExportEvaluationKeysArgs,
    ) -> impl Future<Output = Result<ExportEvaluationKeysResult, ToolError>> + Send;
    /// `fhe_encrypt`.
    fn fhe_encrypt(
        &self,
        args: FheEncryptArgs,
    ) -> impl Future<Output = Result<FheEncryptResult, ToolError>> + Send;
    /// `fhe_decrypt`.
    fn fhe_decrypt(
        &self,
        args: FheDecryptArgs,
    ) -> impl Future<Output = Result<FheDecryptResult, ToolError>> + Send;
}

/// What a client keeps after Step 0 for one remote server: the key reference and the bearer
/// token (a secret: stored only on the trusted host, readable by its owner alone).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteCredential {
    /// The remote endpoint.
    pub remote_url: String,
    /// The client the keys are bound to.
    pub client_id: String,
    /// Key reference returned by Step 0.
    pub key_ref: String,
    /// Bearer token returned by Step 0.
    pub auth_token: AuthToken,
    /// Model the keys were provisioned for.
    pub model: String,
    /// Parameter id of the key set.
    pub parameter_id: String,
    /// SHA-256 of the provisioned bundle.
    pub bundle_sha256: String,
    /// Size of the provisioned bundle in bytes.
    pub bundle_bytes: u64,
}

impl std::fmt::Debug for RemoteCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCredential")
            .field("remote_url", &self.remote_url)
            .field("client_id", &self.client_id)
            .field("key_ref", &self.key_ref)
            .field("auth_token", &self.auth_token)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// Where [`RemoteCredential`]s are kept, per client and remote endpoint.
pub trait Credentials: Send + Sync {
    /// The credential for `client_id` at `remote_url`, if any.
    fn load(
        &self,
        client_id: &str,
        remote_url: &str,
    ) -> Result<Option<RemoteCredential>, ToolError>;
    /// Stores (replaces) a credential.
    fn save(&self, credential: &RemoteCredential) -> Result<(), ToolError>;
    /// Forgets the credential for `client_id` at `remote_url`.
    fn forget(&self, client_id: &str, remote_url: &str) -> Result<(), ToolError>;
    /// The Ed25519 identity of `client_id` (made on first use), which signs its Step 0
    /// bundles and every call it makes.
    fn signer(&self, client_id: &str) -> Result<std::sync::Arc<dyn RequestSigner>, ToolError>;
    /// The server identity pinned for `remote_url`, if any.
    fn pinned_server(&self, remote_url: &str) -> Result<Option<PublicIdentity>, ToolError>;
    /// Pins the server identity of `remote_url` (trust on first use).
    fn pin_server(&self, remote_url: &str, key: &PublicIdentity) -> Result<(), ToolError>;
}

/// What the workflow is doing, for progress displays.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Generating a key set for a model.
    GeneratingKeys {
        /// Client.
        client_id: String,
        /// Model.
        model: String,
    },
    /// Step 0 upload progress.
    Provisioning(Transfer),
    /// Steps 1–2 done.
    Encrypted {
        /// Ciphertext bytes written.
        bytes: u64,
    },
    /// Step 3 upload progress.
    Uploading(Transfer),
    /// Step 3–4 remote evaluation progress.
    Inference(Progress),
    /// Steps 5–6 running.
    Decrypting,
}

/// Settings of a [`Workflow`].
#[derive(Clone, Debug)]
pub struct WorkflowOptions {
    /// Directory for session files (ciphertexts, results, exported bundles); must be one the
    /// local server may write.
    pub work_dir: PathBuf,
    /// Base of default client ids (`<base>-<model>`); random per key store.
    pub default_client_id: String,
    /// Upload chunk size; capped by the server's limit.
    pub chunk_bytes: u64,
    /// Enrollment token for servers that restrict enrollment.
    pub enrollment_token: Option<AuthToken>,
}

/// One classification request.
#[derive(Clone, Debug, Default)]
pub struct ClassifyRequest {
    /// Image on the trusted host.
    pub image_path: PathBuf,
    /// Served model; the server's default when absent.
    pub model: Option<String>,
    /// Client identity; `<default base>-<model>` when absent.
    pub client_id: Option<String>,
    /// Top classes to report.
    pub top_k: Option<u32>,
}

/// Steps 0–6 against one remote server.
#[derive(Debug)]
pub struct Workflow<'a, L, C> {
    local: &'a L,
    credentials: &'a C,
    remote: &'a RemoteClient,
    options: WorkflowOptions,
    capabilities: Option<Capabilities>,
}

struct Keys {
    credential: RemoteCredential,
    provisioned: bool,
    keygen_s: Option<f64>,
    provision_s: Option<f64>,
}

fn path_string(p: &Path) -> Result<String, ToolError> {
    p.to_str().map(str::to_string).ok_or_else(|| {
        ToolError::new(
            ErrorCode::PathNotAllowed,
            format!("path {} is not valid UTF-8", p.display()),
        )
    })
}

/// Codes meaning the remote server no longer accepts a stored credential: it lost
/// (`UnknownClient`) or revoked the client's keys, or it does not accept the token
/// (`Unauthorized`: e.g. an operator replaced the record). The workflow then enrolls the client
/// anew, which the server refuses with `ClientExists` if the id is registered under keys this
/// host holds no token for.
fn keys_gone(e: &ToolError) -> bool {
    matches!(
        e.error_code,
        ErrorCode::UnknownClient
            | ErrorCode::KeysNotProvisioned
            | ErrorCode::KeysRevoked
            | ErrorCode::Unauthorized
    )
}

impl<'a, L: LocalOps, C: Credentials> Workflow<'a, L, C> {
    /// A workflow using `local` for the trusted steps and `remote` for the untrusted ones.
    pub fn new(
        local: &'a L,
        credentials: &'a C,
        remote: &'a RemoteClient,
        options: WorkflowOptions,
    ) -> Self {
        Self {
            local,
            credentials,
            remote,
            options,
            capabilities: None,
        }
    }

    /// The remote's capabilities (fetched once).
    pub async fn capabilities(&mut self) -> Result<&Capabilities, ToolError> {
        if self.capabilities.is_none() {
            let caps = self.remote.capabilities().await?;
            let url = self.remote.url();
            match self.credentials.pinned_server(url)? {
                Some(pinned) if pinned != caps.server_identity => {
                    return Err(ToolError::new(
                        ErrorCode::IdentityMismatch,
                        format!(
                            "{url} presents server identity {}, but {pinned} is pinned for it; \
                             if the operator really replaced the server key, remove the pin",
                            caps.server_identity
                        ),
                    ));
                }
                Some(_) => {}
                None => self.credentials.pin_server(url, &caps.server_identity)?,
            }
            self.capabilities = Some(caps);
        }
        self.capabilities
            .as_ref()
            .ok_or_else(|| ToolError::new(ErrorCode::Internal, "capabilities missing"))
    }

    /// The served model called `name` (the default model when `None`).
    pub async fn model(&mut self, name: Option<&str>) -> Result<ModelInfo, ToolError> {
        let caps = self.capabilities().await?;
        let name = name.unwrap_or(&caps.default_model);
        caps.models
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .ok_or_else(|| {
                let served: Vec<&str> = caps.models.iter().map(|m| m.name.as_str()).collect();
                ToolError::new(
                    ErrorCode::UnknownModel,
                    format!(
                        "the remote server does not serve model {name:?}; it serves {}",
                        served.join(", ")
                    ),
                )
            })
    }

    /// The server identity pinned when the capabilities were fetched.
    fn pinned_server_key(&self) -> Result<PublicIdentity, ToolError> {
        self.capabilities
            .as_ref()
            .map(|c| c.server_identity)
            .ok_or_else(|| ToolError::new(ErrorCode::Internal, "capabilities missing"))
    }

    fn chunk_bytes(&self) -> u64 {
        let server = self
            .capabilities
            .as_ref()
            .map_or(DEFAULT_CHUNK_BYTES, |c| c.limits.max_chunk_bytes);
        self.options.chunk_bytes.clamp(1, server.max(1))
    }

    /// The client id used for `model` when none is given.
    pub fn default_client_id(&self, model: &str) -> String {
        let mut id = format!("{}-{model}", self.options.default_client_id);
        id.truncate(64);
        id
    }

    /// Makes sure the local key store holds keys of `client_id` that fit `model` (generating
    /// them when it holds none or others), exports the public bundle to the work directory and
    /// returns the export's description, the bundle, and the key generation time if keys were
    /// generated.
    pub async fn ensure_local_keys(
        &self,
        client_id: &str,
        model: &ModelInfo,
        on_event: &mut (impl FnMut(Event) + Send),
    ) -> Result<(ExportEvaluationKeysResult, Vec<u8>, Option<f64>), ToolError> {
        let bundle_path = self
            .options
            .work_dir
            .join(format!("{client_id}-evaluation-keys.bin"));
        let output_path = path_string(&bundle_path)?;
        let export = || {
            self.local.export_evaluation_keys(ExportEvaluationKeysArgs {
                client_id: client_id.to_string(),
                output_path: output_path.clone(),
                chunk_bytes: Some(self.chunk_bytes()),
            })
        };
        let fits = |e: &ExportEvaluationKeysResult| {
            e.parameter_id == model.parameter_id
                && (!model.relinearization || e.relinearization)
                && model
                    .galois_elements
                    .iter()
                    .all(|g| e.galois_elements.binary_search(g).is_ok())
        };
        let mut keygen_s = None;
        let exported = match export().await {
            Ok(e) if fits(&e) => e,
            Ok(_)
            | Err(ToolError {
                error_code: ErrorCode::UnknownClient,
                ..
            }) => {
                on_event(Event::GeneratingKeys {
                    client_id: client_id.to_string(),
                    model: model.name.clone(),
                });
                let started = Instant::now();
                self.local
                    .generate_keys(GenerateKeysArgs {
                        client_id: client_id.to_string(),
                        model: model.name.clone(),
                        client_spec: model.client_spec.clone(),
                        labels: Some(model.labels.clone()),
                        preprocessing: model.preprocessing.clone(),
                        overwrite: true,
                    })
                    .await?;
                keygen_s = Some(started.elapsed().as_secs_f64());
                let e = export().await?;
                if !fits(&e) {
                    return Err(ToolError::new(
                        ErrorCode::ParameterMismatch,
                        format!(
                            "the local server generated keys that do not fit model {}",
                            model.name
                        ),
                    ));
                }
                e
            }
            Err(e) => return Err(e),
        };
        let bundle = tokio::fs::read(&bundle_path).await.map_err(|e| {
            ToolError::new(
                ErrorCode::FileNotFound,
                format!("cannot read the exported key bundle: {e}"),
            )
        });
        let _ = tokio::fs::remove_file(&bundle_path).await;
        let bundle = bundle?;
        if sha256_hex(&bundle) != exported.sha256 {
            return Err(ToolError::new(
                ErrorCode::IntegrityMismatch,
                "the exported key bundle changed on disk",
            ));
        }
        Ok((exported, bundle, keygen_s))
    }

    /// Makes sure the remote holds keys of `client_id` for `model`: reuses the stored
    /// credential (unless `force`), or generates keys when the local set does not fit the
    /// model and runs Step 0. Returns the credential in use.
    pub async fn ensure_keys(
        &self,
        client_id: &str,
        model: &ModelInfo,
        force: bool,
        mut on_event: impl FnMut(Event) + Send,
    ) -> Result<RemoteCredential, ToolError> {
        Ok(self
            .keys(client_id, model, force, &mut on_event)
            .await?
            .credential)
    }

    async fn keys(
        &self,
        client_id: &str,
        model: &ModelInfo,
        force: bool,
        on_event: &mut (impl FnMut(Event) + Send),
    ) -> Result<Keys, ToolError> {
        let url = self.remote.url();
        let stored = self.credentials.load(client_id, url)?;
        if let Some(c) = &stored
            && !force
            && c.model == model.name
            && c.parameter_id == model.parameter_id
        {
            return Ok(Keys {
                credential: c.clone(),
                provisioned: false,
                keygen_s: None,
                provision_s: None,
            });
        }
        let (_, bundle, keygen_s) = self.ensure_local_keys(client_id, model, on_event).await?;
        let started = Instant::now();
        let signer = self.credentials.signer(client_id)?;
        let request = ProvisionRequest {
            client_id,
            model,
            rotate_with: stored.as_ref().map(|c| &c.auth_token),
            enrollment_token: self.options.enrollment_token.as_ref(),
            chunk_bytes: self.chunk_bytes(),
            signer: signer.as_ref(),
        };
        let provisioned = match self
            .remote
            .provision(&request, &bundle, |t| on_event(Event::Provisioning(t)))
            .await
        {
            // The server lost the client: enroll it anew.
            Err(e) if stored.is_some() && keys_gone(&e) => {
                let request = ProvisionRequest {
                    rotate_with: None,
                    ..request
                };
                self.remote
                    .provision(&request, &bundle, |t| on_event(Event::Provisioning(t)))
                    .await?
            }
            Err(e) if e.error_code == ErrorCode::ClientExists => {
                return Err(ToolError::new(
                    ErrorCode::ClientExists,
                    format!(
                        "client id {client_id:?} is already registered at {url} with keys this host holds no token for; use another client id"
                    ),
                ));
            }
            other => other?,
        };
        let credential = RemoteCredential {
            remote_url: url.to_string(),
            client_id: client_id.to_string(),
            key_ref: provisioned.key_ref,
            auth_token: provisioned.auth_token,
            model: model.name.clone(),
            parameter_id: provisioned.parameter_id,
            bundle_sha256: provisioned.bundle_sha256,
            bundle_bytes: provisioned.bundle_bytes,
        };
        self.credentials.save(&credential)?;
        Ok(Keys {
            credential,
            provisioned: true,
            keygen_s,
            provision_s: Some(started.elapsed().as_secs_f64()),
        })
    }

    /// Runs Steps 0–6 for one image.
    pub async fn classify(
        &mut self,
        request: &ClassifyRequest,
        mut on_event: impl FnMut(Event) + Send,
    ) -> Result<PrivateClassifyResult, ToolError> {
        let started = Instant::now();
        // Fail before any network traffic when the image is not there.
        if !tokio::fs::metadata(&request.image_path)
            .await
            .is_ok_and(|m| m.is_file())
        {
            return Err(ToolError::new(
                ErrorCode::FileNotFound,
                format!("{}: no such image file", request.image_path.display()),
            ));
        }
        let model = self.model(request.model.as_deref()).await?;
        let client_id = match &request.client_id {
            Some(c) => c.clone(),
            None => self.default_client_id(&model.name),
        };
        validate_client_id(&client_id)?;
        let mut keys = self.keys(&client_id, &model, false, &mut on_event).await?;

        // Steps 1–2.
        let session_id = new_session_id()?;
        let session_dir = self.options.work_dir.join(&session_id);
        let outcome = self
            .run_session(
                request,
                &model,
                &client_id,
                &session_id,
                &session_dir,
                &mut keys,
                &mut on_event,
            )
            .await;
        let _ = tokio::fs::remove_dir_all(&session_dir).await;
        if let Ok(signer) = self.credentials.signer(&client_id) {
            let _ = self
                .remote
                .delete_session(
                    &client_id,
                    &session_id,
                    &keys.credential.auth_token,
                    signer.as_ref(),
                )
                .await;
        }
        let (classification, bytes_uploaded, mut timings, image) = outcome?;
        timings.keygen_s = keys.keygen_s;
        timings.provision_s = keys.provision_s;
        timings.total_s = started.elapsed().as_secs_f64();
        Ok(PrivateClassifyResult {
            ok: true,
            model: model.name,
            client_id,
            remote_url: self.remote.url().to_string(),
            session_id,
            classification,
            provisioned: keys.provisioned,
            bytes_uploaded,
            evaluation_key_bytes: keys.credential.bundle_bytes,
            timings,
            image,
        })
    }

    #[allow(clippy::too_many_arguments, reason = "one session's whole context")]
    async fn run_session(
        &self,
        request: &ClassifyRequest,
        model: &ModelInfo,
        client_id: &str,
        session_id: &str,
        session_dir: &Path,
        keys: &mut Keys,
        on_event: &mut (impl FnMut(Event) + Send),
    ) -> Result<
        (
            cipherinfer_protocol::local::Classification,
            u64,
            ClassifyTimings,
            Option<cipherinfer_protocol::local::ImageFit>,
        ),
        ToolError,
    > {
        let mut timings = ClassifyTimings::default();
        let encrypted = self
            .local
            .fhe_encrypt(FheEncryptArgs {
                client_id: client_id.to_string(),
                image_path: path_string(&request.image_path)?,
                session_dir: path_string(session_dir)?,
                model: Some(model.name.clone()),
                chunk_bytes: Some(self.chunk_bytes()),
                inline_max_bytes: Some(0),
            })
            .await?;
        timings.encrypt_s = encrypted.encrypt_s;
        on_event(Event::Encrypted {
            bytes: encrypted.total_bytes,
        });
        let mut names: Vec<&str> = encrypted
            .objects
            .iter()
            .map(|o| o.file_name.as_str())
            .collect();
        names.sort_unstable();
        let mut wanted: Vec<&str> = model.input_objects.iter().map(String::as_str).collect();
        wanted.sort_unstable();
        if names != wanted {
            return Err(ToolError::new(
                ErrorCode::ParameterMismatch,
                format!("the local server wrote objects {names:?}, the model needs {wanted:?}"),
            ));
        }
        let mut objects = Vec::with_capacity(encrypted.objects.len());
        for o in &encrypted.objects {
            let bytes = tokio::fs::read(&o.path).await.map_err(|e| {
                ToolError::new(
                    ErrorCode::FileNotFound,
                    format!("cannot read ciphertext object {}: {e}", o.file_name),
                )
            })?;
            if bytes.len() as u64 != o.bytes || sha256_hex(&bytes) != o.sha256 {
                return Err(ToolError::new(
                    ErrorCode::IntegrityMismatch,
                    format!("ciphertext object {} changed on disk", o.file_name),
                ));
            }
            objects.push((o.file_name.clone(), bytes));
        }

        // Step 3: upload; re-provision once if the server lost the keys.
        let signer = self.credentials.signer(client_id)?;
        let server_key = self.pinned_server_key()?;
        let upload_started = Instant::now();
        let total: u64 = objects.iter().map(|(_, b)| b.len() as u64).sum();
        let mut attempt = 0;
        loop {
            match self
                .upload(
                    client_id,
                    session_id,
                    &keys.credential.auth_token,
                    &objects,
                    total,
                    signer.as_ref(),
                    on_event,
                )
                .await
            {
                Ok(()) => break,
                Err(e) if attempt == 0 && keys_gone(&e) => {
                    attempt += 1;
                    self.credentials.forget(client_id, self.remote.url())?;
                    *keys = self.keys(client_id, model, true, on_event).await?;
                }
                Err(e) => return Err(e),
            }
        }
        timings.upload_s = upload_started.elapsed().as_secs_f64();

        // Steps 3–4: evaluation.
        let remote_started = Instant::now();
        let args = RemoteInferenceArgs {
            client_id: client_id.to_string(),
            session_id: session_id.to_string(),
            auth_token: Some(keys.credential.auth_token.clone()),
            model: Some(model.name.clone()),
            key_ref: Some(keys.credential.key_ref.clone()),
            algorithm_id: Some(model.algorithm_id.to_string()),
            // The server evaluates only these exact objects (the request signature covers them).
            input_sha256: Some(
                objects
                    .iter()
                    .map(|(name, bytes)| (name.clone(), sha256_hex(bytes)))
                    .collect(),
            ),
            ..RemoteInferenceArgs::default()
        }
        .with_extended_parameters(model.parameters.clone());
        // A busy or rate-limiting server says when to come back; try three times.
        let mut attempt = 0;
        let (result, output) = loop {
            match self
                .remote
                .infer(&args, signer.as_ref(), &server_key, |p| {
                    on_event(Event::Inference(p));
                })
                .await
            {
                Err(e) if e.retryable && attempt < 2 && e.error_code != ErrorCode::Unavailable => {
                    attempt += 1;
                    let wait = e.retry_after_ms.unwrap_or(1_000).min(10_000);
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
                other => break other?,
            }
        };
        timings.infer_s = result.profile.infer_s;
        timings.remote_s = remote_started.elapsed().as_secs_f64();

        // Steps 5–6.
        on_event(Event::Decrypting);
        let result_path = session_dir.join("result.ct");
        tokio::fs::write(&result_path, &output).await.map_err(|e| {
            ToolError::new(
                ErrorCode::Internal,
                format!("cannot write the encrypted result: {e}"),
            )
        })?;
        let decrypted = self
            .local
            .fhe_decrypt(FheDecryptArgs {
                client_id: client_id.to_string(),
                encrypted_logit_path: path_string(&result_path)?,
                model: Some(model.name.clone()),
                top_k: request.top_k,
                result_attestation: result.result_signature.clone().map(|signature| {
                    cipherinfer_protocol::local::ResultAttestation {
                        remote_url: self.remote.url().to_string(),
                        claim: crate::remote::result_claim(client_id, &result),
                        signature,
                    }
                }),
            })
            .await?;
        timings.decrypt_s = decrypted.decrypt_s;
        Ok((decrypted.classification, total, timings, encrypted.image))
    }

    #[allow(clippy::too_many_arguments, reason = "one upload's whole context")]
    async fn upload(
        &self,
        client_id: &str,
        session_id: &str,
        token: &AuthToken,
        objects: &[(String, Vec<u8>)],
        total: u64,
        signer: &dyn RequestSigner,
        on_event: &mut (impl FnMut(Event) + Send),
    ) -> Result<(), ToolError> {
        let mut base = 0;
        for (name, bytes) in objects {
            self.remote
                .upload_object(
                    client_id,
                    session_id,
                    token,
                    name,
                    bytes,
                    self.chunk_bytes(),
                    signer,
                    |t| {
                        on_event(Event::Uploading(Transfer {
                            done: base + t.done,
                            total,
                        }));
                    },
                )
                .await?;
            base += bytes.len() as u64;
        }
        Ok(())
    }
}
