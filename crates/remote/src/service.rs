//! The remote tools' logic, independent of MCP: every method takes the protocol's argument type
//! and returns its result type or a [`ToolError`] with a machine-readable code.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cipherinfer_ckks::serialization::{FromBytes, ToBytes};
use cipherinfer_ckks::{Ciphertext, EvaluationKeys, Evaluator};
use cipherinfer_compiler::CompileError;
use cipherinfer_protocol::remote::{
    Capabilities, DeleteSessionResult, DescribeCapabilitiesArgs, FetchResultChunkArgs,
    FetchResultChunkResult, ObjectStatus, PROTOCOL_PROFILE, Profile, ProvisionKeysBeginArgs,
    ProvisionKeysBeginResult, ProvisionKeysChunkAck, ProvisionKeysChunkArgs,
    ProvisionKeysCommitArgs, ProvisionKeysResult, ProvisionMode, RemoteInferenceArgs,
    RemoteInferenceResult, ResultRef, RevokeKeysArgs, RevokeKeysResult, SessionArgs, SessionStatus,
    UploadChunkAck, UploadCiphertextChunkArgs, format_key_ref, parse_key_ref, parse_key_store_uri,
};
use cipherinfer_protocol::validate::{decode_base64_limited, encode_base64, sha256_hex};
use cipherinfer_protocol::{
    AlgorithmId, AuthToken, ErrorCode, InferenceTelemetry, Limits, TokenHash, ToolError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::registry::{Registry, ServedModel};
use crate::store::{ChunkWrite, Store, chunk_name, path};

type Result<T> = std::result::Result<T, ToolError>;

/// Server policy: limits, lifetimes, quotas.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Chunk and object limits announced to clients.
    pub limits: Limits,
    /// A session expires this long after its last use.
    pub session_ttl: Duration,
    /// An uncommitted Step 0 upload expires after this.
    pub provisioning_ttl: Duration,
    /// Most live sessions per client.
    pub max_sessions_per_client: usize,
    /// Most bytes staged per client over all its sessions.
    pub max_bytes_per_client: u64,
    /// Inferences evaluated at once (each uses every core).
    pub max_concurrent_inferences: usize,
    /// How long an inference waits for a free slot before `ERROR_BUSY`.
    pub queue_timeout: Duration,
    /// Hash of the operator's enrollment token; when set, new clients must present it.
    pub enrollment_token_hash: Option<TokenHash>,
    /// Failed authentications per client and minute before `ERROR_RATE_LIMITED`.
    pub auth_failures_per_minute: u32,
    /// Evaluation-key sets kept decoded in memory.
    pub key_cache_entries: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            session_ttl: Duration::from_secs(3600),
            provisioning_ttl: Duration::from_secs(3600),
            max_sessions_per_client: 16,
            max_bytes_per_client: 512 * 1024 * 1024,
            max_concurrent_inferences: 1,
            queue_timeout: Duration::from_secs(60),
            enrollment_token_hash: None,
            auth_failures_per_minute: 10,
            key_cache_entries: 8,
        }
    }
}

/// What the server keeps about a client (the token only as its hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClientRecord {
    client_id: String,
    key_version: u32,
    token_hash: TokenHash,
    algorithm_id: String,
    parameter_id: String,
    bundle_bytes: u64,
    bundle_sha256: String,
    relinearization: bool,
    galois_elements: Vec<u64>,
    revoked: bool,
    updated_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProvisioningMeta {
    client_id: String,
    mode: ProvisionMode,
    algorithm_id: String,
    parameter_id: String,
    model: Option<String>,
    bundle_bytes: u64,
    bundle_sha256: String,
    total_chunks: u32,
    key_uri: Option<String>,
    expires_at: u64,
}

/// Progress of an inference: (step, total, description).
pub type ProgressFn = Box<dyn FnMut(usize, usize, &str) + Send>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ToolError {
    ToolError::new(code, msg)
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| err(ErrorCode::Internal, format!("randomness: {e}")))?;
    Ok(hex::encode(b))
}

fn compile_error(e: &CompileError) -> ToolError {
    let code = match e {
        CompileError::DepthExceeded { .. } => ErrorCode::DepthExceeded,
        CompileError::MissingRotationKeys { .. } => ErrorCode::InvalidGaloisKey,
        CompileError::MissingRelinearizationKey => ErrorCode::MalformedKeys,
        CompileError::Cancelled => ErrorCode::Cancelled,
        CompileError::Ckks(c) => return ToolError::from_ckks(c, ErrorCode::MalformedCiphertext),
        CompileError::Input(_) => ErrorCode::MalformedCiphertext,
        _ => ErrorCode::Internal,
    };
    err(code, e.to_string())
}

/// The remote server's state and tools.
pub struct Service {
    store: Store,
    registry: Arc<Registry>,
    config: ServiceConfig,
    keys: Mutex<VecDeque<(String, u32, Arc<Evaluator>)>>,
    failures: Mutex<HashMap<String, (Instant, u32)>>,
    inference: Semaphore,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service over a store and compiled models.
    pub fn new(store: Store, registry: Arc<Registry>, config: ServiceConfig) -> Self {
        let permits = config.max_concurrent_inferences.max(1);
        Self {
            store,
            registry,
            config,
            keys: Mutex::new(VecDeque::new()),
            failures: Mutex::new(HashMap::new()),
            inference: Semaphore::new(permits),
        }
    }

    /// The served models.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The policy.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    // ------------------------------------------------------------------------------------------
    // Authentication

    fn rate_limit_check(&self, client_id: &str) -> Result<()> {
        let f = self
            .failures
            .lock()
            .map_err(|_| err(ErrorCode::Internal, "lock"))?;
        if let Some((start, count)) = f.get(client_id) {
            let elapsed = start.elapsed();
            if elapsed < Duration::from_secs(60) && *count >= self.config.auth_failures_per_minute {
                let wait = Duration::from_secs(60).saturating_sub(elapsed);
                return Err(err(
                    ErrorCode::RateLimited,
                    "too many failed authentications for this client_id",
                )
                .with_retry_after_ms(u64::try_from(wait.as_millis()).unwrap_or(60_000)));
            }
        }
        Ok(())
    }

    fn record_failure(&self, client_id: &str) {
        if let Ok(mut f) = self.failures.lock() {
            let e = f
                .entry(client_id.to_string())
                .or_insert((Instant::now(), 0));
            if e.0.elapsed() >= Duration::from_secs(60) {
                *e = (Instant::now(), 0);
            }
            e.1 += 1;
        }
    }

    async fn record(&self, client_id: &str) -> Result<Option<ClientRecord>> {
        self.store
            .get_json(&path(&["clients", client_id, "record.json"]))
            .await
    }

    /// Checks the bearer token of `client_id` (constant time, rate-limited); returns its record.
    async fn authenticate(
        &self,
        client_id: &str,
        token: Option<&AuthToken>,
    ) -> Result<ClientRecord> {
        self.rate_limit_check(client_id)?;
        let record = self.record(client_id).await?;
        let verdict = match &record {
            Some(r) => r.token_hash.verify(token),
            // Same error as a wrong token: no oracle for which client ids exist.
            None => Err(err(
                ErrorCode::Unauthorized,
                "missing or invalid auth_token for this client_id",
            )),
        };
        match (verdict, record) {
            (Ok(()), Some(r)) => {
                if r.revoked {
                    return Err(err(
                        ErrorCode::KeysRevoked,
                        "the keys of this client were revoked",
                    ));
                }
                Ok(r)
            }
            (Err(e), _) => {
                self.record_failure(client_id);
                Err(e)
            }
            (Ok(()), None) => Err(err(ErrorCode::Unauthorized, "unknown client")),
        }
    }

    // ------------------------------------------------------------------------------------------
    // describe_capabilities

    /// Capabilities and served models.
    pub fn describe_capabilities(&self, args: &DescribeCapabilitiesArgs) -> Result<Capabilities> {
        let models: Vec<_> = match &args.model {
            Some(name) => vec![
                self.registry
                    .get(name)
                    .ok_or_else(|| err(ErrorCode::UnknownModel, format!("no model {name:?}")))?
                    .info
                    .clone(),
            ],
            None => self.registry.all().map(|m| m.info.clone()).collect(),
        };
        let mut algorithm_ids: Vec<AlgorithmId> =
            self.registry.all().map(|m| m.info.algorithm_id).collect();
        algorithm_ids.sort_by_key(ToString::to_string);
        algorithm_ids.dedup();
        Ok(Capabilities {
            ok: true,
            protocol: PROTOCOL_PROFILE.to_string(),
            server: format!("cipherinfer-remote {}", env!("CARGO_PKG_VERSION")),
            algorithm_ids,
            limits: self.config.limits.clone(),
            session_ttl_s: self.config.session_ttl.as_secs(),
            result_ttl_s: self.config.session_ttl.as_secs(),
            enrollment_required: self.config.enrollment_token_hash.is_some(),
            default_model: self.registry.default_model().to_string(),
            models,
        })
    }

    // ------------------------------------------------------------------------------------------
    // Step 0

    /// Starts a key-bundle upload.
    pub async fn provision_begin(
        &self,
        args: &ProvisionKeysBeginArgs,
    ) -> Result<ProvisionKeysBeginResult> {
        let alg = args.validate(&self.config.limits)?;
        if !self
            .registry
            .all()
            .any(|m| m.info.parameter_id == args.parameter_id)
        {
            return Err(err(
                ErrorCode::ParameterMismatch,
                "parameter_id is not the parameter set of any served model",
            ));
        }
        if let Some(m) = &args.model {
            let served = self
                .registry
                .get(m)
                .ok_or_else(|| err(ErrorCode::UnknownModel, format!("no model {m:?}")))?;
            if served.info.parameter_id != args.parameter_id {
                return Err(err(
                    ErrorCode::ParameterMismatch,
                    "parameter_id differs from the model's",
                ));
            }
        }
        if alg.to_string()
            != AlgorithmId::for_ckks(self.params_of(&args.parameter_id)?)?.to_string()
        {
            return Err(err(
                ErrorCode::ParameterMismatch,
                "algorithm_id does not match the parameter set",
            ));
        }
        match args.mode {
            ProvisionMode::New => {
                if let Some(hash) = &self.config.enrollment_token_hash {
                    hash.verify(args.enrollment_token.as_ref())?;
                }
                if let Some(r) = self.record(&args.client_id).await? {
                    return Err(if r.revoked {
                        err(
                            ErrorCode::KeysRevoked,
                            "this client_id was revoked; choose a new one",
                        )
                    } else {
                        err(
                            ErrorCode::ClientExists,
                            "this client_id already has keys; use mode rotate",
                        )
                    });
                }
            }
            ProvisionMode::Rotate => {
                self.authenticate(&args.client_id, args.auth_token.as_ref())
                    .await?;
            }
        }
        let provisioning_id = random_hex(16)?;
        let expires_at = now() + self.config.provisioning_ttl.as_secs();
        let meta = ProvisioningMeta {
            client_id: args.client_id.clone(),
            mode: args.mode,
            algorithm_id: args.algorithm_id.clone(),
            parameter_id: args.parameter_id.clone(),
            model: args.model.clone(),
            bundle_bytes: args.bundle_bytes,
            bundle_sha256: args.bundle_sha256.clone(),
            total_chunks: args.total_chunks,
            key_uri: args.key_uri.clone(),
            expires_at,
        };
        self.store
            .put_json(
                &path(&["provisioning", &provisioning_id, "meta.json"]),
                &meta,
            )
            .await?;
        Ok(ProvisionKeysBeginResult {
            ok: true,
            provisioning_id,
            client_id: args.client_id.clone(),
            total_chunks: args.total_chunks,
            max_chunk_bytes: self.config.limits.max_chunk_bytes,
            expires_at,
        })
    }

    fn params_of(&self, parameter_id: &str) -> Result<&cipherinfer_ckks::Parameters> {
        self.registry
            .all()
            .find(|m| m.info.parameter_id == parameter_id)
            .map(|m| &**m.params())
            .ok_or_else(|| err(ErrorCode::ParameterMismatch, "unknown parameter set"))
    }

    async fn provisioning(&self, client_id: &str, id: &str) -> Result<ProvisioningMeta> {
        let meta: ProvisioningMeta = self
            .store
            .get_json(&path(&["provisioning", id, "meta.json"]))
            .await?
            .ok_or_else(|| err(ErrorCode::UnknownSession, "unknown provisioning_id"))?;
        if meta.client_id != client_id {
            return Err(err(
                ErrorCode::SessionForbidden,
                "this provisioning_id belongs to another client_id",
            ));
        }
        if meta.expires_at < now() {
            return Err(err(
                ErrorCode::Expired,
                "this key upload expired; begin again",
            ));
        }
        Ok(meta)
    }

    /// Stages one chunk of a key bundle.
    pub async fn provision_chunk(
        &self,
        args: &ProvisionKeysChunkArgs,
    ) -> Result<ProvisionKeysChunkAck> {
        args.validate(&self.config.limits)?;
        let meta = self
            .provisioning(&args.client_id, &args.provisioning_id)
            .await?;
        if args.total_chunks != meta.total_chunks {
            return Err(err(
                ErrorCode::TotalChunksMismatch,
                format!("total_chunks is {} for this upload", meta.total_chunks),
            ));
        }
        let bytes = decode_base64_limited(&args.chunk_b64, self.config.limits.max_chunk_bytes)?;
        let prefix = path(&["provisioning", &args.provisioning_id, "chunks"]);
        let staged: u64 = self.store.list(&prefix).await?.iter().map(|x| x.1).sum();
        if staged + bytes.len() as u64 > meta.bundle_bytes {
            // A duplicate of a stored chunk is still fine; anything else runs past the size.
            let existing = self
                .store
                .get(&path(&[
                    "provisioning",
                    &args.provisioning_id,
                    "chunks",
                    &chunk_name(args.chunk_index),
                ]))
                .await?;
            if existing.as_deref() != Some(&bytes[..]) {
                return Err(err(
                    ErrorCode::ObjectTooLarge,
                    format!("the chunks run past bundle_bytes = {}", meta.bundle_bytes),
                ));
            }
        }
        let chunk_bytes = bytes.len() as u64;
        let write = self
            .store
            .put_once(
                &path(&[
                    "provisioning",
                    &args.provisioning_id,
                    "chunks",
                    &chunk_name(args.chunk_index),
                ]),
                bytes,
            )
            .await?;
        let received = self.store.list(&prefix).await?.len();
        Ok(ProvisionKeysChunkAck {
            ok: true,
            provisioning_id: args.provisioning_id.clone(),
            chunk_index: args.chunk_index,
            chunk_bytes,
            received_chunks: u32::try_from(received).unwrap_or(u32::MAX),
            total_chunks: meta.total_chunks,
            duplicate: write == ChunkWrite::Duplicate,
        })
    }

    async fn assemble(&self, prefix: &object_store::path::Path, total: u32) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for i in 0..total {
            let p = prefix.clone().join(chunk_name(i));
            match self.store.get(&p).await? {
                Some(b) => out.extend_from_slice(&b),
                None => missing.push(i),
            }
        }
        if !missing.is_empty() {
            return Err(err(ErrorCode::IncompleteUpload, "chunks are missing")
                .with_details(serde_json::json!({ "missing_chunks": missing })));
        }
        Ok(out)
    }

    /// Assembles, verifies and stores a key bundle; issues a fresh token.
    pub async fn provision_commit(
        &self,
        args: &ProvisionKeysCommitArgs,
    ) -> Result<ProvisionKeysResult> {
        args.validate()?;
        let meta = self
            .provisioning(&args.client_id, &args.provisioning_id)
            .await?;
        let bundle = match &meta.key_uri {
            Some(uri) => {
                let segments = parse_key_store_uri(uri)?;
                let mut all = vec!["keystore"];
                all.extend(segments.iter().map(String::as_str));
                self.store.get(&path(&all)).await?.ok_or_else(|| {
                    err(
                        ErrorCode::KeyReferenceUnresolved,
                        "no bundle at key_uri in the key store",
                    )
                })?
            }
            None => {
                self.assemble(
                    &path(&["provisioning", &args.provisioning_id, "chunks"]),
                    meta.total_chunks,
                )
                .await?
            }
        };
        if bundle.len() as u64 != meta.bundle_bytes || sha256_hex(&bundle) != meta.bundle_sha256 {
            return Err(err(
                ErrorCode::IntegrityMismatch,
                "the bundle's size or SHA-256 differs from what begin announced",
            ));
        }
        let served = self
            .registry
            .all()
            .find(|m| m.info.parameter_id == meta.parameter_id)
            .ok_or_else(|| err(ErrorCode::ParameterMismatch, "unknown parameter set"))?;
        let params = served.params().clone();
        let limit = usize::try_from(self.config.limits.max_key_bundle_bytes).unwrap_or(usize::MAX);
        let bundle = Arc::new(bundle);
        let to_decode = bundle.clone();
        let keys = tokio::task::spawn_blocking(move || {
            EvaluationKeys::from_bytes(&params, &to_decode, limit)
        })
        .await
        .map_err(|e| err(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| ToolError::from_ckks(&e, ErrorCode::MalformedKeys))?;
        let mut galois_elements = keys.galois_elements();
        galois_elements.sort_unstable();
        let relinearization = keys.relinearization_key().is_some();
        if let Some(m) = &meta.model {
            let model = self
                .registry
                .get(m)
                .ok_or_else(|| err(ErrorCode::UnknownModel, format!("no model {m:?}")))?;
            check_model_keys(model, relinearization, &galois_elements)?;
        }
        let models = self
            .registry
            .all()
            .filter(|m| {
                m.info.parameter_id == meta.parameter_id
                    && check_model_keys(m, relinearization, &galois_elements).is_ok()
            })
            .map(|m| m.info.name.clone())
            .collect();
        let previous = self.record(&args.client_id).await?;
        let key_version = match (meta.mode, &previous) {
            (ProvisionMode::New, None) => 1,
            (ProvisionMode::New, Some(_)) => {
                return Err(err(
                    ErrorCode::ClientExists,
                    "this client_id already has keys",
                ));
            }
            (ProvisionMode::Rotate, Some(r)) if !r.revoked => r.key_version + 1,
            (ProvisionMode::Rotate, _) => {
                return Err(err(ErrorCode::KeysRevoked, "no active key set to rotate"));
            }
        };
        let token = AuthToken::generate()?;
        let record = ClientRecord {
            client_id: args.client_id.clone(),
            key_version,
            token_hash: token.hash()?,
            algorithm_id: meta.algorithm_id.clone(),
            parameter_id: meta.parameter_id.clone(),
            bundle_bytes: meta.bundle_bytes,
            bundle_sha256: meta.bundle_sha256.clone(),
            relinearization,
            galois_elements: galois_elements.clone(),
            revoked: false,
            updated_at: now(),
        };
        let key_path = path(&[
            "clients",
            &args.client_id,
            "keys",
            &format!("v{key_version}.bin"),
        ]);
        self.store.put(&key_path, bundle.to_vec()).await?;
        // The record switches the active version last: until then the old keys stay valid.
        self.store
            .put_json(&path(&["clients", &args.client_id, "record.json"]), &record)
            .await?;
        if let Some(old) = previous {
            self.store
                .delete(&path(&[
                    "clients",
                    &args.client_id,
                    "keys",
                    &format!("v{}.bin", old.key_version),
                ]))
                .await?;
        }
        self.store
            .delete_prefix(&path(&["provisioning", &args.provisioning_id]))
            .await?;
        self.forget_keys(&args.client_id);
        Ok(ProvisionKeysResult {
            ok: true,
            client_id: args.client_id.clone(),
            key_ref: format_key_ref(&args.client_id, key_version),
            key_version,
            algorithm_id: meta.algorithm_id.parse()?,
            parameter_id: meta.parameter_id,
            auth_token: token,
            bundle_bytes: meta.bundle_bytes,
            bundle_sha256: meta.bundle_sha256,
            relinearization,
            galois_elements,
            models,
        })
    }

    /// Revokes a client's keys and deletes its sessions.
    pub async fn revoke(&self, args: &RevokeKeysArgs) -> Result<RevokeKeysResult> {
        args.validate()?;
        let mut record = self
            .authenticate(&args.client_id, args.auth_token.as_ref())
            .await?;
        let mut sessions_deleted = 0u32;
        for sid in self
            .store
            .children(&path(&["sessions", &args.client_id]))
            .await?
        {
            self.store
                .delete_prefix(&path(&["sessions", &args.client_id, &sid]))
                .await?;
            self.store.delete(&path(&["owners", &sid])).await?;
            sessions_deleted += 1;
        }
        self.store
            .delete_prefix(&path(&["clients", &args.client_id, "keys"]))
            .await?;
        record.revoked = true;
        record.updated_at = now();
        self.store
            .put_json(&path(&["clients", &args.client_id, "record.json"]), &record)
            .await?;
        self.forget_keys(&args.client_id);
        Ok(RevokeKeysResult {
            ok: true,
            client_id: args.client_id.clone(),
            revoked_key_ref: format_key_ref(&args.client_id, record.key_version),
            sessions_deleted,
        })
    }

    // ------------------------------------------------------------------------------------------
    // Sessions

    async fn claim_session(&self, client_id: &str, session_id: &str, create: bool) -> Result<()> {
        let owner_path = path(&["owners", session_id]);
        match self.store.get(&owner_path).await? {
            Some(owner) if owner == client_id.as_bytes() => Ok(()),
            Some(_) => Err(err(
                ErrorCode::SessionForbidden,
                "this session belongs to another client",
            )),
            None if create => {
                let live = self.store.children(&path(&["sessions", client_id])).await?;
                if live.len() >= self.config.max_sessions_per_client {
                    return Err(err(
                        ErrorCode::QuotaExceeded,
                        format!(
                            "at most {} live sessions per client",
                            self.config.max_sessions_per_client
                        ),
                    ));
                }
                match self
                    .store
                    .put_once(&owner_path, client_id.as_bytes().to_vec())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if e.error_code == ErrorCode::ChunkConflict => Err(err(
                        ErrorCode::SessionForbidden,
                        "this session belongs to another client",
                    )),
                    Err(e) => Err(e),
                }
            }
            None => Err(err(ErrorCode::UnknownSession, "unknown session")),
        }
    }

    async fn touch(&self, client_id: &str, session_id: &str) -> Result<()> {
        self.store
            .put(
                &path(&["sessions", client_id, session_id, "touched"]),
                now().to_string().into_bytes(),
            )
            .await
    }

    /// Stages one ciphertext chunk (draft 6.3).
    pub async fn upload_chunk(&self, args: &UploadCiphertextChunkArgs) -> Result<UploadChunkAck> {
        args.validate(&self.config.limits)?;
        self.authenticate(&args.client_id, args.auth_token.as_ref())
            .await?;
        let bytes = decode_base64_limited(&args.chunk_b64, self.config.limits.max_chunk_bytes)?;
        self.claim_session(&args.client_id, &args.session_id, true)
            .await?;
        let object = path(&[
            "sessions",
            &args.client_id,
            &args.session_id,
            "objects",
            &args.file_name,
        ]);
        let total_path = object.clone().join("total");
        match self.store.get(&total_path).await? {
            Some(t) if t == args.total_chunks.to_string().as_bytes() => {}
            Some(t) => {
                return Err(err(
                    ErrorCode::TotalChunksMismatch,
                    format!(
                        "total_chunks is {} for this object",
                        String::from_utf8_lossy(&t)
                    ),
                ));
            }
            None => {
                let objects = self
                    .store
                    .children(&path(&[
                        "sessions",
                        &args.client_id,
                        &args.session_id,
                        "objects",
                    ]))
                    .await?;
                if objects.len() as u32 >= self.config.limits.max_objects_per_session {
                    return Err(err(
                        ErrorCode::QuotaExceeded,
                        format!(
                            "at most {} objects per session",
                            self.config.limits.max_objects_per_session
                        ),
                    ));
                }
                if let Err(e) = self
                    .store
                    .put_once(&total_path, args.total_chunks.to_string().into_bytes())
                    .await
                {
                    return Err(if e.error_code == ErrorCode::ChunkConflict {
                        err(
                            ErrorCode::TotalChunksMismatch,
                            "another total_chunks was set first",
                        )
                    } else {
                        e
                    });
                }
            }
        }
        let chunks: Vec<(object_store::path::Path, u64, u64)> = self
            .store
            .list(&object)
            .await?
            .into_iter()
            .filter(|(p, ..)| p.filename() != Some("total"))
            .collect();
        let chunk_path = object.clone().join(chunk_name(args.chunk_index));
        let already = chunks.iter().any(|(p, ..)| *p == chunk_path);
        if !already {
            let object_bytes: u64 = chunks.iter().map(|c| c.1).sum();
            Limits::check_object_size(
                object_bytes,
                bytes.len() as u64,
                self.config.limits.max_object_bytes,
            )?;
            let client_bytes: u64 = self
                .store
                .list(&path(&["sessions", &args.client_id]))
                .await?
                .iter()
                .map(|c| c.1)
                .sum();
            if client_bytes + bytes.len() as u64 > self.config.max_bytes_per_client {
                return Err(err(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "at most {} bytes staged per client",
                        self.config.max_bytes_per_client
                    ),
                ));
            }
        }
        let chunk_bytes = bytes.len() as u64;
        let write = self.store.put_once(&chunk_path, bytes).await?;
        self.touch(&args.client_id, &args.session_id).await?;
        let received = chunks.len() as u32 + u32::from(!already);
        Ok(UploadChunkAck {
            ok: true,
            file_name: args.file_name.clone(),
            chunk_index: args.chunk_index,
            chunk_bytes,
            total_chunks: args.total_chunks,
            received_chunks: received,
            object_complete: received == args.total_chunks,
            duplicate: write == ChunkWrite::Duplicate,
        })
    }

    async fn object_status(&self, client_id: &str, session_id: &str) -> Result<Vec<ObjectStatus>> {
        let base = path(&["sessions", client_id, session_id, "objects"]);
        let mut out = Vec::new();
        for name in self.store.children(&base).await? {
            let object = base.clone().join(name.as_str());
            let total: u32 = self
                .store
                .get(&object.clone().join("total"))
                .await?
                .and_then(|t| String::from_utf8(t).ok()?.parse().ok())
                .unwrap_or(0);
            let mut received = Vec::new();
            let mut bytes = 0;
            for (p, size, _) in self.store.list(&object).await? {
                if let Some(i) = p.filename().and_then(|f| f.parse::<u32>().ok()) {
                    received.push(i);
                    bytes += size;
                }
            }
            out.push(ObjectStatus {
                file_name: name,
                total_chunks: total,
                received_chunks: received.len() as u32,
                missing_chunks: cipherinfer_protocol::validate::missing_chunks(total, &received),
                bytes,
            });
        }
        Ok(out)
    }

    async fn session_expires_at(&self, client_id: &str, session_id: &str) -> Result<u64> {
        let touched: u64 = self
            .store
            .get(&path(&["sessions", client_id, session_id, "touched"]))
            .await?
            .and_then(|t| String::from_utf8(t).ok()?.parse().ok())
            .unwrap_or_else(now);
        Ok(touched + self.config.session_ttl.as_secs())
    }

    /// What a session holds (to resume an interrupted upload).
    pub async fn session_status(&self, args: &SessionArgs) -> Result<SessionStatus> {
        args.validate()?;
        self.authenticate(&args.client_id, args.auth_token.as_ref())
            .await?;
        self.claim_session(&args.client_id, &args.session_id, false)
            .await?;
        let results = self
            .store
            .list(&path(&[
                "sessions",
                &args.client_id,
                &args.session_id,
                "results",
            ]))
            .await?
            .into_iter()
            .filter_map(|(p, ..)| p.filename().map(str::to_string))
            .collect();
        Ok(SessionStatus {
            ok: true,
            session_id: args.session_id.clone(),
            objects: self
                .object_status(&args.client_id, &args.session_id)
                .await?,
            results,
            expires_at: self
                .session_expires_at(&args.client_id, &args.session_id)
                .await?,
        })
    }

    /// Deletes a session's objects and results.
    pub async fn delete_session(&self, args: &SessionArgs) -> Result<DeleteSessionResult> {
        args.validate()?;
        self.authenticate(&args.client_id, args.auth_token.as_ref())
            .await?;
        match self
            .claim_session(&args.client_id, &args.session_id, false)
            .await
        {
            Ok(()) => {}
            Err(e) if e.error_code == ErrorCode::UnknownSession => {
                return Ok(DeleteSessionResult {
                    ok: true,
                    session_id: args.session_id.clone(),
                    deleted: false,
                    bytes_freed: 0,
                });
            }
            Err(e) => return Err(e),
        }
        let freed = self
            .store
            .delete_prefix(&path(&["sessions", &args.client_id, &args.session_id]))
            .await?;
        self.store
            .delete(&path(&["owners", &args.session_id]))
            .await?;
        Ok(DeleteSessionResult {
            ok: true,
            session_id: args.session_id.clone(),
            deleted: true,
            bytes_freed: freed,
        })
    }

    /// Deletes sessions unused for longer than the session lifetime and expired Step 0
    /// uploads; returns how many of each.
    pub async fn collect_garbage(&self) -> Result<(usize, usize)> {
        let cutoff = now().saturating_sub(self.config.session_ttl.as_secs());
        let mut sessions = 0;
        for client in self.store.children(&path(&["sessions"])).await? {
            for sid in self.store.children(&path(&["sessions", &client])).await? {
                let prefix = path(&["sessions", &client, &sid]);
                let newest = self
                    .store
                    .list(&prefix)
                    .await?
                    .iter()
                    .map(|x| x.2)
                    .max()
                    .unwrap_or(0);
                if newest < cutoff {
                    self.store.delete_prefix(&prefix).await?;
                    self.store.delete(&path(&["owners", &sid])).await?;
                    sessions += 1;
                }
            }
        }
        let mut uploads = 0;
        for pid in self.store.children(&path(&["provisioning"])).await? {
            let meta: Option<ProvisioningMeta> = self
                .store
                .get_json(&path(&["provisioning", &pid, "meta.json"]))
                .await
                .unwrap_or(None);
            if meta.is_none_or(|m| m.expires_at < now()) {
                self.store
                    .delete_prefix(&path(&["provisioning", &pid]))
                    .await?;
                uploads += 1;
            }
        }
        Ok((sessions, uploads))
    }

    // ------------------------------------------------------------------------------------------
    // Inference

    fn forget_keys(&self, client_id: &str) {
        if let Ok(mut k) = self.keys.lock() {
            k.retain(|(c, ..)| c != client_id);
        }
    }

    async fn evaluator(
        &self,
        record: &ClientRecord,
        served: &ServedModel,
    ) -> Result<Arc<Evaluator>> {
        if let Ok(k) = self.keys.lock()
            && let Some((.., ev)) = k
                .iter()
                .find(|(c, v, _)| *c == record.client_id && *v == record.key_version)
        {
            return Ok(ev.clone());
        }
        let bytes = self
            .store
            .get(&path(&[
                "clients",
                &record.client_id,
                "keys",
                &format!("v{}.bin", record.key_version),
            ]))
            .await?
            .ok_or_else(|| {
                err(
                    ErrorCode::KeysNotProvisioned,
                    "no stored keys; provision again",
                )
            })?;
        let params = served.params().clone();
        let limit = usize::try_from(self.config.limits.max_key_bundle_bytes).unwrap_or(usize::MAX);
        let ev = tokio::task::spawn_blocking(move || {
            EvaluationKeys::from_bytes(&params, &bytes, limit).map(|k| Arc::new(Evaluator::new(k)))
        })
        .await
        .map_err(|e| err(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| ToolError::from_ckks(&e, ErrorCode::MalformedKeys))?;
        if let Ok(mut k) = self.keys.lock() {
            k.push_back((record.client_id.clone(), record.key_version, ev.clone()));
            while k.len() > self.config.key_cache_entries.max(1) {
                k.pop_front();
            }
        }
        Ok(ev)
    }

    /// Evaluates the model on a staged session (draft 6.3/6.4, 7.1, 7.2). `cancel` is polled
    /// between steps; `progress` hears every step.
    pub async fn infer(
        &self,
        args: &RemoteInferenceArgs,
        cancel: Arc<AtomicBool>,
        progress: ProgressFn,
    ) -> Result<RemoteInferenceResult> {
        let t_total = Instant::now();
        let alg = args.validate()?;
        let record = self
            .authenticate(&args.client_id, args.auth_token.as_ref())
            .await?;
        if let Some(k) = &args.key_ref {
            let (_, version) = parse_key_ref(k)?;
            if version != record.key_version {
                return Err(err(
                    ErrorCode::KeysRevoked,
                    "key_ref is not the active key set",
                ));
            }
        }
        self.claim_session(&args.client_id, &args.session_id, false)
            .await?;
        let name = args
            .model
            .clone()
            .unwrap_or_else(|| self.registry.default_model().to_string());
        let served = self
            .registry
            .get(&name)
            .ok_or_else(|| err(ErrorCode::UnknownModel, format!("no model {name:?}")))?;
        if served.info.parameter_id != record.parameter_id {
            return Err(err(
                ErrorCode::ParameterMismatch,
                "the client's keys belong to another parameter set than the model's",
            ));
        }
        if let Some(a) = &alg
            && *a != served.info.algorithm_id
        {
            return Err(err(
                ErrorCode::ParameterMismatch,
                "algorithm_id differs from the model's",
            ));
        }
        let ext = args.extended_parameters();
        ext.check_matches(&served.info.parameters)?;
        ext.check_depth_bound(served.info.multiplicative_depth)?;
        ext.check_galois_available(&record.galois_elements)?;
        check_model_keys(served, record.relinearization, &record.galois_elements)?;

        // Inputs: complete objects, then decoded with a size limit and conformance checks.
        let t_load = Instant::now();
        let status = self
            .object_status(&args.client_id, &args.session_id)
            .await?;
        let mut missing = Vec::new();
        for name in &served.info.input_objects {
            match status.iter().find(|o| &o.file_name == name) {
                Some(o) if o.missing_chunks.is_empty() && o.total_chunks > 0 => {}
                Some(o) => missing.push(
                    serde_json::json!({"file_name": name, "missing_chunks": o.missing_chunks}),
                ),
                None => missing.push(serde_json::json!({"file_name": name, "absent": true})),
            }
        }
        if !missing.is_empty() {
            return Err(err(
                ErrorCode::IncompleteUpload,
                "the session lacks input chunks",
            )
            .with_details(serde_json::json!({ "missing": missing })));
        }
        let mut cts = Vec::new();
        let mut input_bytes = 0u64;
        let limit = usize::try_from(self.config.limits.max_object_bytes).unwrap_or(usize::MAX);
        for (name, o) in served.info.input_objects.iter().zip(
            served
                .info
                .input_objects
                .iter()
                .filter_map(|n| status.iter().find(|o| &o.file_name == n)),
        ) {
            let bytes = self
                .assemble(
                    &path(&[
                        "sessions",
                        &args.client_id,
                        &args.session_id,
                        "objects",
                        name,
                    ]),
                    o.total_chunks,
                )
                .await?;
            input_bytes += bytes.len() as u64;
            let ct = Ciphertext::from_bytes(served.params(), &bytes, limit)
                .map_err(|e| ToolError::from_ckks(&e, ErrorCode::MalformedCiphertext))?;
            if ct.level() < served.model.input_level() || ct.degree() != 1 {
                return Err(err(
                    ErrorCode::MalformedCiphertext,
                    format!(
                        "{name}: level {} (the model needs {}), degree {}",
                        ct.level(),
                        served.model.input_level(),
                        ct.degree()
                    ),
                ));
            }
            cts.push(ct);
        }
        let ev = self.evaluator(&record, served).await?;
        served
            .model
            .check_keys(&ev)
            .map_err(|e| compile_error(&e))?;
        let load_s = t_load.elapsed().as_secs_f64();

        let t_queue = Instant::now();
        let permit = tokio::time::timeout(self.config.queue_timeout, self.inference.acquire())
            .await
            .map_err(|_| {
                err(ErrorCode::Busy, "all inference slots are busy").with_retry_after_ms(5_000)
            })?
            .map_err(|_| err(ErrorCode::Unavailable, "the server is shutting down"))?;
        let queue_s = t_queue.elapsed().as_secs_f64();
        let t_infer = Instant::now();
        let registry = self.registry.clone();
        let model_name = name.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut progress = progress;
            let served = registry
                .get(&model_name)
                .ok_or_else(|| err(ErrorCode::UnknownModel, "model vanished"))?;
            served
                .model
                .evaluate(&ev, &cts, &cancel, |i, n, d| progress(i, n, d))
                .map_err(|e| compile_error(&e))
        })
        .await
        .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        drop(permit);
        let (out, report) = outcome?;
        let infer_s = t_infer.elapsed().as_secs_f64();

        let t_ser = Instant::now();
        let first = out
            .first()
            .ok_or_else(|| err(ErrorCode::Internal, "the model produced no ciphertext"))?;
        let bytes = first.to_bytes();
        let sha = sha256_hex(&bytes);
        let inline_limit = args
            .max_inline_bytes
            .unwrap_or(u64::MAX)
            .min(self.config.limits.max_inline_result_bytes);
        let (b64, result_ref) = if bytes.len() as u64 <= inline_limit {
            (Some(encode_base64(&bytes)), None)
        } else {
            let result_id = random_hex(12)?;
            let chunk = self.config.limits.result_chunk_bytes.max(1);
            let total_chunks = u32::try_from((bytes.len() as u64).div_ceil(chunk))
                .map_err(|_| err(ErrorCode::Internal, "result too large"))?;
            self.store
                .put(
                    &path(&[
                        "sessions",
                        &args.client_id,
                        &args.session_id,
                        "results",
                        &result_id,
                    ]),
                    bytes.clone(),
                )
                .await?;
            (
                None,
                Some(ResultRef {
                    result_id,
                    total_bytes: bytes.len() as u64,
                    total_chunks,
                    chunk_bytes: chunk,
                    sha256: sha.clone(),
                    expires_at: now() + self.config.session_ttl.as_secs(),
                }),
            )
        };
        self.touch(&args.client_id, &args.session_id).await?;
        let serialize_s = t_ser.elapsed().as_secs_f64();
        Ok(RemoteInferenceResult {
            ok: true,
            session_id: args.session_id.clone(),
            model: name,
            algorithm_id: served.info.algorithm_id,
            parameter_id: served.info.parameter_id.clone(),
            encrypted_logit_b64: b64,
            encrypted_logit_bytes: bytes.len() as u64,
            encrypted_logit_sha256: sha,
            result_ref,
            profile: Profile {
                infer_s,
                load_s: Some(load_s),
                queue_s: Some(queue_s),
                serialize_s: Some(serialize_s),
                total_s: Some(t_total.elapsed().as_secs_f64()),
                threads: u32::try_from(rayon::current_num_threads()).ok(),
                input_bytes: Some(input_bytes),
                step_s: report.step_seconds.clone(),
            },
            telemetry: InferenceTelemetry {
                remaining_level: u32::try_from(report.output_level).ok(),
                current_scale: Some(report.output_scale),
                noise_budget_remaining: None,
                computation_depth_used: u32::try_from(report.depth_used).unwrap_or(u32::MAX),
                output_shape: served.info.output_shape.clone(),
                requires_decryption: true,
                error_code: None,
            },
        })
    }

    /// One chunk of an output kept by reference.
    pub async fn fetch_result_chunk(
        &self,
        args: &FetchResultChunkArgs,
    ) -> Result<FetchResultChunkResult> {
        args.validate()?;
        self.authenticate(&args.client_id, args.auth_token.as_ref())
            .await?;
        self.claim_session(&args.client_id, &args.session_id, false)
            .await?;
        let bytes = self
            .store
            .get(&path(&[
                "sessions",
                &args.client_id,
                &args.session_id,
                "results",
                &args.result_id,
            ]))
            .await?
            .ok_or_else(|| err(ErrorCode::ResultNotFound, "unknown result_id"))?;
        let chunk = self.config.limits.result_chunk_bytes.max(1) as usize;
        let total_chunks = u32::try_from(bytes.len().div_ceil(chunk)).unwrap_or(u32::MAX);
        if args.chunk_index >= total_chunks {
            return Err(err(
                ErrorCode::InvalidChunkIndex,
                format!("chunk_index {} outside 0..{total_chunks}", args.chunk_index),
            ));
        }
        let start = args.chunk_index as usize * chunk;
        let piece = &bytes[start..(start + chunk).min(bytes.len())];
        Ok(FetchResultChunkResult {
            ok: true,
            result_id: args.result_id.clone(),
            chunk_index: args.chunk_index,
            total_chunks,
            chunk_b64: encode_base64(piece),
            chunk_bytes: piece.len() as u64,
        })
    }
}

/// Whether a key set covers a model: relinearization if needed, and every Galois element.
fn check_model_keys(model: &ServedModel, relin: bool, galois: &[u64]) -> Result<()> {
    let missing: Vec<u64> = model
        .info
        .galois_elements
        .iter()
        .copied()
        .filter(|g| galois.binary_search(g).is_err())
        .collect();
    if !missing.is_empty() {
        return Err(err(
            ErrorCode::InvalidGaloisKey,
            format!(
                "{} rotation keys the model needs are missing",
                missing.len()
            ),
        )
        .with_details(serde_json::json!({ "missing_galois_elements": missing })));
    }
    if model.info.relinearization && !relin {
        return Err(err(
            ErrorCode::MalformedKeys,
            "the model needs a relinearization key",
        ));
    }
    Ok(())
}
