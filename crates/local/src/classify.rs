//! `private_classify`: Steps 0–6 run by the local server itself, so that an LLM host gets a
//! plaintext answer without any Base64 passing through its context. The orchestration is the
//! client crate's [`Workflow`]; this module gives it the in-process crypto ([`InProcess`]) and
//! the key store's credentials.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cipherinfer_client::workflow::{Credentials, LocalOps, RemoteCredential};
use cipherinfer_client::{ClassifyRequest, Event, RemoteClient, Workflow, WorkflowOptions};
use cipherinfer_protocol::local::{
    ExportEvaluationKeysArgs, ExportEvaluationKeysResult, FheDecryptArgs, FheDecryptResult,
    FheEncryptArgs, FheEncryptResult, GenerateKeysArgs, GenerateKeysResult, PrivateClassifyArgs,
    PrivateClassifyResult,
};
use cipherinfer_protocol::{AuthToken, ErrorCode, ToolError};

use crate::crypto::LocalCrypto;
use crate::fsutil::{create_private_dir_all, read_limited, write_new};
use crate::server::{BoxFuture, ClassifyContext, PrivateClassify};
use crate::store::{KeyStore, RemoteCredentials, now};

/// Name of the per-store file holding the base of default client ids (not a valid client id,
/// so it never collides with a key set).
const DEFAULT_CLIENT_ID_FILE: &str = ".default-client-id";
/// Name of the per-store directory for session files.
pub const WORK_DIR: &str = ".work";

/// The base of default client ids of a key store: random (`c` + 16 hex digits), created on
/// first use and kept in the store, so that two users of one server never collide.
pub fn default_client_id(store: &KeyStore) -> Result<String, ToolError> {
    let path = store.root().join(DEFAULT_CLIENT_ID_FILE);
    let read = |path: &Path| -> Option<String> {
        let bytes = read_limited(path, 64).ok()?;
        let id = String::from_utf8(bytes).ok()?.trim().to_string();
        (id.len() == 17 && id.starts_with('c') && id[1..].bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(id)
    };
    if let Some(id) = read(&path) {
        return Ok(id);
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| ToolError::new(ErrorCode::Internal, format!("randomness unavailable: {e}")))?;
    let id = format!("c{}", hex::encode(bytes));
    match write_new(&path, id.as_bytes(), 0o600) {
        Ok(()) => Ok(id),
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path).ok_or_else(|| {
            ToolError::new(
                ErrorCode::MalformedKeys,
                format!("{DEFAULT_CLIENT_ID_FILE} in the key store is corrupt"),
            )
        }),
        Err(e) => Err(ToolError::new(
            ErrorCode::Internal,
            format!("key store: writing {DEFAULT_CLIENT_ID_FILE}: {e}"),
        )),
    }
}

/// The local crypto tools called in-process (on the blocking thread pool).
#[derive(Clone, Debug)]
pub struct InProcess {
    crypto: Arc<LocalCrypto>,
}

impl InProcess {
    /// Wraps a [`LocalCrypto`].
    pub fn new(crypto: Arc<LocalCrypto>) -> Self {
        Self { crypto }
    }

    /// The key store (which also keeps the remote credentials).
    pub fn store(&self) -> &KeyStore {
        self.crypto.store()
    }

    async fn run<A: Send + 'static, R: Send + 'static>(
        &self,
        args: A,
        f: fn(&LocalCrypto, &A) -> Result<R, ToolError>,
    ) -> Result<R, ToolError> {
        let crypto = Arc::clone(&self.crypto);
        tokio::task::spawn_blocking(move || f(&crypto, &args))
            .await
            .map_err(|e| ToolError::new(ErrorCode::Internal, format!("worker failed: {e}")))?
    }
}

impl LocalOps for InProcess {
    async fn generate_keys(&self, args: GenerateKeysArgs) -> Result<GenerateKeysResult, ToolError> {
        self.run(args, LocalCrypto::generate_keys).await
    }

    async fn export_evaluation_keys(
        &self,
        args: ExportEvaluationKeysArgs,
    ) -> Result<ExportEvaluationKeysResult, ToolError> {
        self.run(args, LocalCrypto::export_evaluation_keys).await
    }

    async fn fhe_encrypt(&self, args: FheEncryptArgs) -> Result<FheEncryptResult, ToolError> {
        self.run(args, LocalCrypto::fhe_encrypt).await
    }

    async fn fhe_decrypt(&self, args: FheDecryptArgs) -> Result<FheDecryptResult, ToolError> {
        self.run(args, LocalCrypto::fhe_decrypt).await
    }
}

/// Settings of `private_classify`.
#[derive(Clone, Debug, Default)]
pub struct ClassifierOptions {
    /// Remote endpoint used when the call names none.
    pub default_remote: Option<String>,
    /// Enrollment token for servers that restrict enrollment.
    pub enrollment_token: Option<AuthToken>,
}

/// Runs `private_classify` calls.
#[derive(Debug)]
pub struct Classifier {
    local: InProcess,
    options: ClassifierOptions,
    work_dir: PathBuf,
}

impl Classifier {
    /// A classifier over `crypto`; session files go to `<key root>/.work`.
    pub fn new(crypto: Arc<LocalCrypto>, options: ClassifierOptions) -> Self {
        let work_dir = crypto.store().root().join(WORK_DIR);
        Self {
            local: InProcess::new(crypto),
            options,
            work_dir,
        }
    }

    /// Steps 0–6 for one image; `on_event` sees the workflow's progress.
    pub async fn classify(
        &self,
        args: &PrivateClassifyArgs,
        on_event: impl FnMut(Event) + Send,
    ) -> Result<PrivateClassifyResult, ToolError> {
        args.validate()?;
        // The image must be readable under the path policy before any key is made or sent.
        self.local
            .crypto
            .paths()
            .existing_file("image_path", &args.image_path)?;
        let url = args
            .remote_url
            .clone()
            .or_else(|| self.options.default_remote.clone())
            .ok_or_else(|| {
                ToolError::new(
                    ErrorCode::InvalidArgument,
                    "no remote_url given and no default remote configured (cipherinfer local --remote URL)",
                )
            })?;
        create_private_dir_all(&self.work_dir).map_err(|e| {
            ToolError::new(
                ErrorCode::Internal,
                format!("cannot create the work directory: {e}"),
            )
        })?;
        let remote = RemoteClient::connect(&url).await?;
        let store = self.local.store();
        let mut workflow = Workflow::new(
            &self.local,
            store,
            &remote,
            WorkflowOptions {
                work_dir: self.work_dir.clone(),
                default_client_id: default_client_id(store)?,
                chunk_bytes: cipherinfer_client::remote::DEFAULT_CHUNK_BYTES,
                enrollment_token: self.options.enrollment_token.clone(),
            },
        );
        let result = workflow
            .classify(
                &ClassifyRequest {
                    image_path: PathBuf::from(&args.image_path),
                    model: args.model.clone(),
                    client_id: args.client_id.clone(),
                    top_k: args.top_k,
                },
                on_event,
            )
            .await;
        remote.close().await;
        result
    }
}

/// Codes meaning "this key store has no such client": no credentials either.
fn absent(e: &ToolError) -> bool {
    e.error_code == ErrorCode::UnknownClient
}

impl Credentials for KeyStore {
    fn load(
        &self,
        client_id: &str,
        remote_url: &str,
    ) -> Result<Option<RemoteCredential>, ToolError> {
        let creds = match self.get_credentials(client_id, remote_url) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(None),
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let record = self.record(client_id)?;
        Ok(Some(RemoteCredential {
            remote_url: creds.remote_url,
            client_id: client_id.to_string(),
            key_ref: creds.key_ref,
            auth_token: creds.auth_token,
            model: creds.model,
            parameter_id: creds.parameter_id,
            bundle_sha256: creds.bundle_sha256,
            bundle_bytes: record.evaluation_key_bytes,
        }))
    }

    fn save(&self, credential: &RemoteCredential) -> Result<(), ToolError> {
        self.put_credentials(
            &credential.client_id,
            &RemoteCredentials {
                remote_url: credential.remote_url.clone(),
                key_ref: credential.key_ref.clone(),
                auth_token: credential.auth_token.clone(),
                model: credential.model.clone(),
                parameter_id: credential.parameter_id.clone(),
                bundle_sha256: credential.bundle_sha256.clone(),
                provisioned_at: now(),
            },
        )
    }

    fn signer(
        &self,
        client_id: &str,
    ) -> Result<Arc<dyn cipherinfer_protocol::integrity::RequestSigner>, ToolError> {
        Ok(Arc::new(self.identity(client_id)?))
    }

    fn pinned_server(
        &self,
        remote_url: &str,
    ) -> Result<Option<cipherinfer_protocol::integrity::PublicIdentity>, ToolError> {
        KeyStore::pinned_server(self, remote_url)
    }

    fn pin_server(
        &self,
        remote_url: &str,
        key: &cipherinfer_protocol::integrity::PublicIdentity,
    ) -> Result<(), ToolError> {
        KeyStore::pin_server(self, remote_url, key)
    }

    fn forget(&self, client_id: &str, remote_url: &str) -> Result<(), ToolError> {
        match self.delete_credentials(client_id, remote_url) {
            Ok(_) => Ok(()),
            Err(e) if absent(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl PrivateClassify for Classifier {
    fn private_classify(
        &self,
        args: PrivateClassifyArgs,
        ctx: ClassifyContext,
    ) -> BoxFuture<'_, Result<PrivateClassifyResult, ToolError>> {
        Box::pin(async move {
            let progress = ctx.progress.clone();
            // Percent of the whole call: each phase has its share, filled by its own progress
            // where it has one; never decreasing (a phase run again, as Step 0 after the server
            // lost the keys, only moves it on a little).
            let mut done: f64 = 0.0;
            let report = move |e: Event| {
                let fraction = |d: u64, t: u64| if t == 0 { 1.0 } else { d as f64 / t as f64 };
                let at = match &e {
                    Event::GeneratingKeys { .. } => 2.0,
                    Event::Provisioning(t) => 10.0 + 25.0 * fraction(t.done, t.total),
                    Event::Encrypted { .. } => 40.0,
                    Event::Uploading(t) => 40.0 + 10.0 * fraction(t.done, t.total),
                    Event::Inference(p) => {
                        50.0 + 45.0 * p.total.map_or(0.0, |t| (p.progress / t).clamp(0.0, 1.0))
                    }
                    Event::Decrypting => 97.0,
                };
                done = at.max(done + 0.01).min(99.99);
                let message = match &e {
                    Event::GeneratingKeys { model, .. } => format!("generating keys for {model}"),
                    Event::Provisioning(t) => {
                        format!("Step 0: {} of {} key bytes", t.done, t.total)
                    }
                    Event::Encrypted { bytes } => format!("encrypted: {bytes} ciphertext bytes"),
                    Event::Uploading(t) => format!("upload: {} of {} bytes", t.done, t.total),
                    Event::Inference(p) => format!(
                        "remote inference: {}",
                        p.message.clone().unwrap_or_default()
                    ),
                    Event::Decrypting => "decrypting".to_string(),
                };
                progress.report(done, Some(100.0), &message);
            };
            tokio::select! {
                r = self.classify(&args, report) => r,
                () = ctx.cancel.cancelled() => Err(ToolError::new(
                    ErrorCode::Cancelled,
                    "private_classify was cancelled by the caller",
                )),
            }
        })
    }
}

/// Settings of the local server binary.
#[derive(Clone, Debug)]
pub struct LocalServerOptions {
    /// Key store and path confinement.
    pub config: crate::crypto::LocalConfig,
    /// `private_classify` settings.
    pub classifier: ClassifierOptions,
}

/// The local server's handler with `private_classify`.
pub fn local_handler(options: LocalServerOptions) -> std::io::Result<crate::server::LocalHandler> {
    let crypto = Arc::new(
        LocalCrypto::new(options.config)
            .map_err(|e| std::io::Error::other(format!("{}: {}", e.error_code, e.message)))?,
    );
    let classifier = Classifier::new(Arc::clone(&crypto), options.classifier);
    Ok(crate::server::LocalHandler::new(crypto).with_private_classify(Arc::new(classifier)))
}

/// Serves the local crypto server, `private_classify` included, on stdin/stdout.
pub async fn serve_local_stdio(options: LocalServerOptions) -> std::io::Result<()> {
    crate::server::serve_stdio(local_handler(options)?).await
}
