//! The remote tools' logic, independent of MCP: every method takes the protocol's argument type
//! and returns its result type or a [`ToolError`] with a machine-readable code.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cipherinfer_ckks::serialization::{FromBytes, ToBytes};
use cipherinfer_ckks::{Ciphertext, EvaluationKeys, Evaluator};
use cipherinfer_compiler::CompileError;
use cipherinfer_protocol::integrity::{
    BundleClaim, DEFAULT_MAX_CLOCK_SKEW_MS, IdentityKey, PublicIdentity, ReplayGuard, ResultClaim,
};
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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::ratelimit::{AuthFailures, Caller, FailureKey};
use crate::registry::{Registry, ServedModel};
use crate::store::{ChunkWrite, Store, chunk_name, path};
use crate::threads::{EvalPools, available_threads};
use crate::usage::{Admission, Ledger, SeedItem, object_key, result_key};

type Result<T> = std::result::Result<T, ToolError>;

/// Server policy: limits, lifetimes, quotas.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Chunk and object limits announced to clients.
    pub limits: Limits,
    /// A session expires this long after its last use (upload, inference, fetch).
    pub session_ttl: Duration,
    /// An uncommitted Step 0 upload expires after this.
    pub provisioning_ttl: Duration,
    /// How long an expired session or Step 0 upload keeps answering `ERROR_EXPIRED` (instead of
    /// `ERROR_UNKNOWN_SESSION`) after garbage collection removed it.
    pub tombstone_ttl: Duration,
    /// Most live sessions per client.
    pub max_sessions_per_client: usize,
    /// Most bytes per client over all its sessions: staged chunks and results kept by reference.
    pub max_bytes_per_client: u64,
    /// Inferences evaluated at once.
    pub max_concurrent_inferences: usize,
    /// How long an inference waits for a free slot before `ERROR_BUSY`.
    pub queue_timeout: Duration,
    /// Most threads one evaluation uses; the draft's `omp_threads` hint can only lower it.
    pub max_eval_threads: usize,
    /// Hash of the operator's enrollment token; when set, new clients must present it.
    pub enrollment_token_hash: Option<TokenHash>,
    /// Failed authentications per client_id and minute before `ERROR_RATE_LIMITED`.
    pub auth_failures_per_minute: u32,
    /// Failed authentications and enrollments per peer address and minute before
    /// `ERROR_RATE_LIMITED` (0: no per-address limit, e.g. behind a proxy that hides addresses).
    pub auth_failures_per_minute_per_peer: u32,
    /// Evaluation-key sets kept decoded in memory.
    pub key_cache_entries: usize,
    /// Whether every call but `describe_capabilities` must carry a `request_signature` (and
    /// Step 0 a `bundle_signature`). A client whose identity is pinned must always sign.
    pub require_signatures: bool,
    /// Identities the operator registered for client ids before their first provisioning.
    pub registered_identities: HashMap<String, PublicIdentity>,
    /// Whether a client_id must be in `registered_identities` to provision (no trust on first
    /// use).
    pub require_registered_identity: bool,
    /// Largest accepted distance between a signed request's timestamp and the server's clock.
    pub max_clock_skew: Duration,
    /// Most nonces held in the replay window (beyond it, signed calls get `ERROR_BUSY`).
    pub max_replay_entries: usize,
    /// The server's identity, which signs inference results (a fresh one when `None`).
    pub server_identity: Option<Arc<IdentityKey>>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            session_ttl: Duration::from_secs(3600),
            provisioning_ttl: Duration::from_secs(3600),
            tombstone_ttl: Duration::from_secs(24 * 3600),
            max_sessions_per_client: 16,
            max_bytes_per_client: 512 * 1024 * 1024,
            max_concurrent_inferences: 1,
            queue_timeout: Duration::from_secs(60),
            max_eval_threads: available_threads(),
            enrollment_token_hash: None,
            auth_failures_per_minute: 10,
            auth_failures_per_minute_per_peer: 100,
            key_cache_entries: 8,
            require_signatures: true,
            registered_identities: HashMap::new(),
            require_registered_identity: false,
            max_clock_skew: Duration::from_millis(DEFAULT_MAX_CLOCK_SKEW_MS),
            max_replay_entries: 1_000_000,
            server_identity: None,
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
    /// The client's identity, pinned at first provisioning.
    #[serde(default)]
    identity_key: Option<PublicIdentity>,
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
    /// Unix seconds, as announced.
    expires_at: u64,
    /// Unix milliseconds (0 in uploads begun before it was kept).
    #[serde(default)]
    expires_at_ms: u64,
    /// The identity that signed the bundle; signs every later call of this upload.
    #[serde(default)]
    identity_key: Option<PublicIdentity>,
}

impl ProvisioningMeta {
    fn expires_at_ms(&self) -> u64 {
        if self.expires_at_ms > 0 {
            self.expires_at_ms
        } else {
            self.expires_at.saturating_mul(1000)
        }
    }

    fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms() < now_ms
    }
}

/// Left where an expired session or Step 0 upload was removed, so that its owner hears
/// `ERROR_EXPIRED` rather than `ERROR_UNKNOWN_SESSION` for a while.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tombstone {
    client_id: String,
    /// When the session or upload expired (Unix milliseconds).
    expired_at_ms: u64,
    /// When the tombstone stops counting (Unix milliseconds).
    keep_until_ms: u64,
}

/// What one garbage-collection pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GarbageCollected {
    /// Expired sessions (their staged chunks and results).
    pub sessions: usize,
    /// Expired or malformed Step 0 uploads.
    pub uploads: usize,
    /// Tombstones past their keeping time.
    pub tombstones: usize,
    /// Session ownership records without a session.
    pub orphans: usize,
}

impl GarbageCollected {
    /// Whether anything was removed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What became of inference requests since the service started, for monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InferenceStats {
    /// Evaluations that ran every step.
    pub evaluated: u64,
    /// Evaluations that failed, a cancellation excepted.
    pub failed: u64,
    /// Requests cancelled while they waited for a slot.
    pub cancelled_waiting: u64,
    /// Evaluations a cancellation stopped before their last step.
    pub cancelled_evaluating: u64,
    /// Requests refused with `ERROR_BUSY`.
    pub busy: u64,
}

#[derive(Debug, Default)]
struct Counters {
    evaluated: AtomicU64,
    failed: AtomicU64,
    cancelled_waiting: AtomicU64,
    cancelled_evaluating: AtomicU64,
    busy: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> InferenceStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        InferenceStats {
            evaluated: get(&self.evaluated),
            failed: get(&self.failed),
            cancelled_waiting: get(&self.cancelled_waiting),
            cancelled_evaluating: get(&self.cancelled_evaluating),
            busy: get(&self.busy),
        }
    }
}

/// An inference slot taken with [`Service::hold_inference_slot`], free again on drop.
#[derive(Debug)]
pub struct InferenceSlot {
    _permit: OwnedSemaphorePermit,
}

/// Progress of an inference: (step, total, description).
pub type ProgressFn = Box<dyn FnMut(usize, usize, &str) + Send>;

fn now() -> u64 {
    now_ms() / 1000
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads a session's `touched` record: Unix milliseconds (seconds in stores written before).
fn parse_touched(bytes: &[u8]) -> Option<u64> {
    let v: u64 = std::str::from_utf8(bytes).ok()?.trim().parse().ok()?;
    // 10^11 ms is 1973, 10^11 s is the year 5138: smaller values are seconds.
    Some(if v < 100_000_000_000 { v * 1000 } else { v })
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ToolError {
    ToolError::new(code, msg)
}

/// `ERROR_EXPIRED` for a session or Step 0 upload, with `details.expired_at` (Unix seconds).
fn expired_error(what: &str, expired_at_ms: u64) -> ToolError {
    err(
        ErrorCode::Expired,
        format!("this {what} expired and was removed; start a new one"),
    )
    .with_details(serde_json::json!({ "expired_at": expired_at_ms.div_ceil(1000) }))
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

fn cancelled() -> ToolError {
    err(ErrorCode::Cancelled, "the client cancelled the inference")
}

/// Sets the evaluation's cancel flag when dropped: the evaluation stops at its next step once
/// the request is cancelled, finished, or its handler dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The remote server's state and tools.
pub struct Service {
    store: Store,
    registry: Arc<Registry>,
    config: ServiceConfig,
    keys: Mutex<VecDeque<(String, u32, Arc<Evaluator>)>>,
    failures: AuthFailures,
    ledger: Ledger,
    pools: EvalPools,
    inference: Arc<Semaphore>,
    /// Moving average of evaluation time, for `retry_after_ms` of `ERROR_BUSY` (0: none yet).
    eval_ms: AtomicU64,
    counters: Arc<Counters>,
    replay: Mutex<ReplayGuard>,
    identity: Arc<IdentityKey>,
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
    pub fn new(store: Store, registry: Arc<Registry>, config: ServiceConfig) -> Result<Self> {
        let permits = config.max_concurrent_inferences.max(1);
        let identity = match &config.server_identity {
            Some(k) => k.clone(),
            None => Arc::new(IdentityKey::generate()?),
        };
        let replay = ReplayGuard::new(
            millis(config.max_clock_skew),
            now_ms(),
            config.max_replay_entries,
        );
        Ok(Self {
            replay: Mutex::new(replay),
            identity,
            store,
            registry,
            pools: EvalPools::new(config.max_eval_threads),
            config,
            keys: Mutex::new(VecDeque::new()),
            failures: AuthFailures::default(),
            ledger: Ledger::default(),
            inference: Arc::new(Semaphore::new(permits)),
            eval_ms: AtomicU64::new(0),
            counters: Arc::new(Counters::default()),
        })
    }

    /// The server's public identity (signs inference results).
    pub fn server_identity(&self) -> PublicIdentity {
        self.identity.public()
    }

    /// The served models.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The policy.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// What became of inference requests so far. An evaluation is counted before its slot is
    /// released.
    pub fn inference_stats(&self) -> InferenceStats {
        self.counters.snapshot()
    }

    /// Takes one inference slot (waiting for one to free up) until the returned guard drops:
    /// lets an operator hold capacity back, or wait for running evaluations before maintenance.
    pub async fn hold_inference_slot(&self) -> Result<InferenceSlot> {
        let permit = self
            .inference
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| err(ErrorCode::Unavailable, "the server is shutting down"))?;
        Ok(InferenceSlot { _permit: permit })
    }

    // ------------------------------------------------------------------------------------------
    // Authentication

    fn rate_limit_check(&self, client_id: Option<&str>, caller: &Caller) -> Result<()> {
        if let Some(id) = client_id {
            self.failures.check(
                &FailureKey::Client(id.to_string()),
                self.config.auth_failures_per_minute,
            )?;
        }
        if let Some(ip) = caller.peer {
            self.failures.check(
                &FailureKey::Peer(ip),
                self.config.auth_failures_per_minute_per_peer,
            )?;
        }
        Ok(())
    }

    fn record_failure(&self, client_id: Option<&str>, caller: &Caller) {
        if let Some(id) = client_id {
            self.failures.record(FailureKey::Client(id.to_string()));
        }
        if let Some(ip) = caller.peer {
            self.failures.record(FailureKey::Peer(ip));
        }
    }

    async fn record(&self, client_id: &str) -> Result<Option<ClientRecord>> {
        self.store
            .get_json(&path(&["clients", client_id, "record.json"]))
            .await
    }

    /// Checks the bearer token of `client_id` (constant time, rate-limited per client id and
    /// per peer address); returns its record.
    async fn authenticate(
        &self,
        client_id: &str,
        token: Option<&AuthToken>,
        caller: &Caller,
    ) -> Result<ClientRecord> {
        self.rate_limit_check(Some(client_id), caller)?;
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
                self.verify_request(client_id, r.identity_key.as_ref(), caller)?;
                Ok(r)
            }
            (Err(e), _) => {
                self.record_failure(Some(client_id), caller);
                Err(e)
            }
            (Ok(()), None) => Err(err(ErrorCode::Unauthorized, "unknown client")),
        }
    }

    /// Checks the request signature of a call by `client_id`, whose pinned identity is
    /// `identity`: signed by it, fresh, and never seen before. A client with a pinned identity
    /// must sign every call; one without may call unsigned only if the server allows it.
    fn verify_request(
        &self,
        client_id: &str,
        identity: Option<&PublicIdentity>,
        caller: &Caller,
    ) -> Result<()> {
        let outcome = match (&caller.signed, identity) {
            (Some(signed), Some(id)) => signed.verify(id).and_then(|()| {
                self.replay
                    .lock()
                    .map_err(|_| err(ErrorCode::Internal, "replay window poisoned"))?
                    .check(
                        client_id,
                        &signed.signature.nonce,
                        signed.signature.timestamp_ms,
                        now_ms(),
                    )
            }),
            (Some(_), None) => Err(err(
                ErrorCode::BadSignature,
                "no identity is pinned for this client_id, so its signature cannot be checked",
            )),
            (None, Some(_)) => Err(err(
                ErrorCode::BadSignature,
                "this client_id has a pinned identity: every call needs a request_signature",
            )),
            (None, None) if self.config.require_signatures => Err(err(
                ErrorCode::BadSignature,
                "this server requires a request_signature on every call",
            )),
            (None, None) => Ok(()),
        };
        if let Err(e) = &outcome
            && e.error_code == ErrorCode::BadSignature
        {
            self.record_failure(Some(client_id), caller);
        }
        outcome
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
            server_identity: self.identity.public(),
            signatures_required: self.config.require_signatures,
            identity_registration_required: self.config.require_registered_identity,
            max_clock_skew_ms: millis(self.config.max_clock_skew),
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
        caller: &Caller,
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
        let identity = match &args.bundle_signature {
            Some(sig) => {
                let claim = BundleClaim {
                    client_id: &args.client_id,
                    algorithm_id: &args.algorithm_id,
                    parameter_id: &args.parameter_id,
                    bundle_sha256: &args.bundle_sha256,
                    bundle_bytes: args.bundle_bytes,
                };
                if let Err(e) = claim.verify(sig, now_ms(), millis(self.config.max_clock_skew)) {
                    self.record_failure(Some(&args.client_id), caller);
                    return Err(e);
                }
                Some(sig.identity_key)
            }
            None if self.config.require_signatures => {
                return Err(err(
                    ErrorCode::BadSignature,
                    "this server requires a bundle_signature on provision_keys_begin",
                ));
            }
            None => None,
        };
        match args.mode {
            ProvisionMode::New => {
                if let Some(hash) = &self.config.enrollment_token_hash {
                    // Every new client id is fresh, so enrollment guesses count per address.
                    self.rate_limit_check(None, caller)?;
                    if let Err(e) = hash.verify(args.enrollment_token.as_ref()) {
                        self.record_failure(None, caller);
                        return Err(e);
                    }
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
                match self.config.registered_identities.get(&args.client_id) {
                    Some(registered) if Some(registered) != identity.as_ref() => {
                        return Err(err(
                            ErrorCode::IdentityMismatch,
                            "the bundle is not signed by the identity registered for this client_id",
                        ));
                    }
                    None if self.config.require_registered_identity => {
                        return Err(err(
                            ErrorCode::IdentityMismatch,
                            "this server provisions only client ids with a registered identity",
                        ));
                    }
                    _ => {}
                }
                self.verify_request(&args.client_id, identity.as_ref(), caller)?;
            }
            ProvisionMode::Rotate => {
                let record = self
                    .authenticate(&args.client_id, args.auth_token.as_ref(), caller)
                    .await?;
                if record.identity_key.is_some() && record.identity_key != identity {
                    return Err(err(
                        ErrorCode::IdentityMismatch,
                        "the new bundle is signed by another identity than the one pinned for this client_id",
                    ));
                }
            }
        }
        let provisioning_id = random_hex(16)?;
        let expires_at_ms = now_ms().saturating_add(millis(self.config.provisioning_ttl));
        let expires_at = expires_at_ms.div_ceil(1000);
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
            expires_at_ms,
            identity_key: identity,
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

    async fn tombstone(&self, kind: &str, id: &str) -> Result<Option<Tombstone>> {
        Ok(self
            .store
            .get_json::<Tombstone>(&path(&["tombstones", kind, id]))
            .await?
            .filter(|t| t.keep_until_ms >= now_ms()))
    }

    async fn put_tombstone(
        &self,
        kind: &str,
        id: &str,
        client_id: &str,
        expired_at_ms: u64,
    ) -> Result<()> {
        let t = Tombstone {
            client_id: client_id.to_string(),
            expired_at_ms,
            keep_until_ms: now_ms().saturating_add(millis(self.config.tombstone_ttl)),
        };
        self.store
            .put_json(&path(&["tombstones", kind, id]), &t)
            .await
    }

    async fn provisioning(&self, client_id: &str, id: &str) -> Result<ProvisioningMeta> {
        let Some(meta) = self
            .store
            .get_json::<ProvisioningMeta>(&path(&["provisioning", id, "meta.json"]))
            .await?
        else {
            return Err(match self.tombstone("provisioning", id).await? {
                Some(t) if t.client_id == client_id => expired_error("key upload", t.expired_at_ms),
                _ => err(ErrorCode::UnknownSession, "unknown provisioning_id"),
            });
        };
        if meta.client_id != client_id {
            return Err(err(
                ErrorCode::SessionForbidden,
                "this provisioning_id belongs to another client_id",
            ));
        }
        if meta.expired(now_ms()) {
            return Err(expired_error("key upload", meta.expires_at_ms()));
        }
        Ok(meta)
    }

    /// Makes sure the ledger knows the chunks a Step 0 upload already has in the store.
    async fn seed_upload(&self, provisioning_id: &str) -> Result<()> {
        let prefix = path(&["provisioning", provisioning_id, "chunks"]);
        for _ in 0..4 {
            if self.ledger.upload_seeded(provisioning_id) {
                return Ok(());
            }
            let epoch = self.ledger.epoch();
            let chunks = self
                .store
                .list(&prefix)
                .await?
                .into_iter()
                .filter_map(|(p, size, _)| Some((p.filename()?.parse::<u32>().ok()?, size)));
            if self.ledger.seed_upload(provisioning_id, epoch, chunks) {
                return Ok(());
            }
        }
        Err(err(
            ErrorCode::Unavailable,
            "staged data kept changing while it was counted; retry",
        ))
    }

    /// Stages one chunk of a key bundle.
    pub async fn provision_chunk(
        &self,
        args: &ProvisionKeysChunkArgs,
        caller: &Caller,
    ) -> Result<ProvisionKeysChunkAck> {
        args.validate(&self.config.limits)?;
        let meta = self
            .provisioning(&args.client_id, &args.provisioning_id)
            .await?;
        self.rate_limit_check(Some(&args.client_id), caller)?;
        self.verify_request(&args.client_id, meta.identity_key.as_ref(), caller)?;
        if args.total_chunks != meta.total_chunks {
            return Err(err(
                ErrorCode::TotalChunksMismatch,
                format!("total_chunks is {} for this upload", meta.total_chunks),
            ));
        }
        let bytes = decode_base64_limited(&args.chunk_b64, self.config.limits.max_chunk_bytes)?;
        check_chunk_digest(args.chunk_sha256.as_deref(), &bytes)?;
        let chunk_bytes = bytes.len() as u64;
        let admission = loop {
            match self.ledger.admit_upload_chunk(
                &args.provisioning_id,
                args.chunk_index,
                chunk_bytes,
                meta.bundle_bytes,
            )? {
                Admission::Unseeded => self.seed_upload(&args.provisioning_id).await?,
                a => break a,
            }
        };
        let chunk_path = path(&[
            "provisioning",
            &args.provisioning_id,
            "chunks",
            &chunk_name(args.chunk_index),
        ]);
        let write = match self.store.put_once(&chunk_path, bytes).await {
            Ok(w) => w,
            Err(e) => {
                if admission == Admission::New {
                    self.ledger
                        .release_upload_chunk(&args.provisioning_id, args.chunk_index);
                }
                return Err(e);
            }
        };
        Ok(ProvisionKeysChunkAck {
            ok: true,
            provisioning_id: args.provisioning_id.clone(),
            chunk_index: args.chunk_index,
            chunk_bytes,
            received_chunks: self.ledger.upload_received(&args.provisioning_id),
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
        caller: &Caller,
    ) -> Result<ProvisionKeysResult> {
        args.validate()?;
        let meta = self
            .provisioning(&args.client_id, &args.provisioning_id)
            .await?;
        self.rate_limit_check(Some(&args.client_id), caller)?;
        self.verify_request(&args.client_id, meta.identity_key.as_ref(), caller)?;
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
            (ProvisionMode::Rotate, Some(r))
                if r.identity_key.is_some() && r.identity_key != meta.identity_key =>
            {
                return Err(err(
                    ErrorCode::IdentityMismatch,
                    "the bundle is signed by another identity than the one pinned for this client_id",
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
            identity_key: meta.identity_key,
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
        self.ledger.remove_upload(&args.provisioning_id);
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
            identity_key: meta.identity_key,
        })
    }

    /// Revokes a client's keys and deletes its sessions.
    pub async fn revoke(&self, args: &RevokeKeysArgs, caller: &Caller) -> Result<RevokeKeysResult> {
        args.validate()?;
        let mut record = self
            .authenticate(&args.client_id, args.auth_token.as_ref(), caller)
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
        self.ledger.remove_client(&args.client_id);
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

    /// When a session was last used (Unix milliseconds), from its `touched` record; `None` if it
    /// has none yet.
    async fn last_use_ms(&self, client_id: &str, session_id: &str) -> Result<Option<u64>> {
        Ok(self
            .store
            .get(&path(&["sessions", client_id, session_id, "touched"]))
            .await?
            .and_then(|t| parse_touched(&t)))
    }

    /// When a session last used at `last_use_ms` expires.
    fn expiry_of(&self, last_use_ms: u64) -> u64 {
        last_use_ms.saturating_add(millis(self.config.session_ttl))
    }

    fn is_stale(&self, last_use_ms: u64, now_ms: u64) -> bool {
        self.expiry_of(last_use_ms) < now_ms
    }

    /// Removes a session that expired at `expired_at_ms`: the tombstone first, so that no call
    /// in between hears `ERROR_UNKNOWN_SESSION`, then its objects and results, then its owner.
    async fn expire_session(
        &self,
        client_id: &str,
        session_id: &str,
        expired_at_ms: u64,
    ) -> Result<()> {
        self.put_tombstone("sessions", session_id, client_id, expired_at_ms)
            .await?;
        self.store
            .delete_prefix(&path(&["sessions", client_id, session_id]))
            .await?;
        self.ledger.remove_session(client_id, session_id);
        self.store.delete(&path(&["owners", session_id])).await
    }

    /// Checks that `session_id` is a live session of `client_id`; with `create`, makes it one
    /// if nobody owns it (within the per-client session quota).
    async fn claim_session(&self, client_id: &str, session_id: &str, create: bool) -> Result<()> {
        let owner_path = path(&["owners", session_id]);
        match self.store.get(&owner_path).await? {
            Some(owner) if owner == client_id.as_bytes() => {
                if let Some(last) = self.last_use_ms(client_id, session_id).await?
                    && self.is_stale(last, now_ms())
                {
                    let expired_at = self.expiry_of(last);
                    self.expire_session(client_id, session_id, expired_at)
                        .await?;
                    return Err(expired_error("session", expired_at));
                }
                Ok(())
            }
            Some(_) => Err(err(
                ErrorCode::SessionForbidden,
                "this session belongs to another client",
            )),
            None => {
                if let Some(t) = self.tombstone("sessions", session_id).await?
                    && t.client_id == client_id
                {
                    return Err(expired_error("session", t.expired_at_ms));
                }
                if !create {
                    return Err(err(ErrorCode::UnknownSession, "unknown session"));
                }
                self.check_session_quota(client_id).await?;
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
        }
    }

    /// `ERROR_QUOTA_EXCEEDED` if the client has as many live sessions as it may; sessions that
    /// expired but were not collected yet are removed first and do not count.
    async fn check_session_quota(&self, client_id: &str) -> Result<()> {
        let max = self.config.max_sessions_per_client;
        let mut live = self.store.children(&path(&["sessions", client_id])).await?;
        if live.len() >= max {
            let now = now_ms();
            let mut kept = Vec::new();
            for sid in live {
                match self.last_use_ms(client_id, &sid).await? {
                    Some(last) if self.is_stale(last, now) => {
                        self.expire_session(client_id, &sid, self.expiry_of(last))
                            .await?;
                    }
                    _ => kept.push(sid),
                }
            }
            live = kept;
        }
        if live.len() >= max {
            return Err(err(
                ErrorCode::QuotaExceeded,
                format!("at most {max} live sessions per client; delete one first"),
            )
            .with_details(serde_json::json!({ "max_sessions_per_client": max })));
        }
        Ok(())
    }

    async fn touch(&self, client_id: &str, session_id: &str) -> Result<()> {
        self.store
            .put(
                &path(&["sessions", client_id, session_id, "touched"]),
                now_ms().to_string().into_bytes(),
            )
            .await
    }

    /// Makes sure the ledger knows what the client already has in the store (one listing per
    /// client and process lifetime).
    async fn seed_client_usage(&self, client_id: &str) -> Result<()> {
        let prefix = path(&["sessions", client_id]);
        for _ in 0..4 {
            if self.ledger.client_seeded(client_id) {
                return Ok(());
            }
            let epoch = self.ledger.epoch();
            let items: Vec<SeedItem> = self
                .store
                .list(&prefix)
                .await?
                .into_iter()
                .filter_map(|(p, size, _)| {
                    let parts: Vec<String> = p
                        .prefix_match(&prefix)?
                        .map(|part| part.as_ref().to_string())
                        .collect();
                    match parts.as_slice() {
                        [session, kind, name, index] if kind == "objects" => {
                            Some((session.clone(), object_key(name), index.parse().ok()?, size))
                        }
                        [session, kind, id] if kind == "results" => {
                            Some((session.clone(), result_key(id), 0, size))
                        }
                        _ => None,
                    }
                })
                .collect();
            if self.ledger.seed_client(client_id, epoch, items) {
                return Ok(());
            }
        }
        Err(err(
            ErrorCode::Unavailable,
            "staged data kept changing while it was counted; retry",
        ))
    }

    /// Counts `size` bytes of `object` chunk `index` against the object and client limits.
    async fn admit(
        &self,
        client_id: &str,
        session_id: &str,
        object: &str,
        index: u32,
        size: u64,
        max_object_bytes: u64,
    ) -> Result<Admission> {
        loop {
            match self.ledger.admit_chunk(
                client_id,
                session_id,
                object,
                index,
                size,
                max_object_bytes,
                self.config.max_bytes_per_client,
            )? {
                Admission::Unseeded => self.seed_client_usage(client_id).await?,
                a => return Ok(a),
            }
        }
    }

    /// Stages one ciphertext chunk (draft 6.3). Costs a constant number of store operations:
    /// counts and quotas come from the ledger, duplicates from the create-if-absent write.
    pub async fn upload_chunk(
        &self,
        args: &UploadCiphertextChunkArgs,
        caller: &Caller,
    ) -> Result<UploadChunkAck> {
        args.validate(&self.config.limits)?;
        self.authenticate(&args.client_id, args.auth_token.as_ref(), caller)
            .await?;
        let bytes = decode_base64_limited(&args.chunk_b64, self.config.limits.max_chunk_bytes)?;
        check_chunk_digest(args.chunk_sha256.as_deref(), &bytes)?;
        let chunk_bytes = bytes.len() as u64;
        let object = object_key(&args.file_name);
        // Sizes and quotas first, so a refused chunk leaves nothing behind, not even a session.
        let admission = self
            .admit(
                &args.client_id,
                &args.session_id,
                &object,
                args.chunk_index,
                chunk_bytes,
                self.config.limits.max_object_bytes,
            )
            .await?;
        let result = self.stage_chunk(args, bytes).await;
        if result.is_err() && admission == Admission::New {
            self.ledger
                .release_chunk(&args.client_id, &args.session_id, &object, args.chunk_index);
        }
        let write = result?;
        self.touch(&args.client_id, &args.session_id).await?;
        let received = self
            .ledger
            .received(&args.client_id, &args.session_id, &object);
        Ok(UploadChunkAck {
            ok: true,
            file_name: args.file_name.clone(),
            chunk_index: args.chunk_index,
            chunk_bytes,
            total_chunks: args.total_chunks,
            received_chunks: received,
            object_complete: received >= args.total_chunks,
            duplicate: write == ChunkWrite::Duplicate,
        })
    }

    /// The store side of [`Service::upload_chunk`]: session, `total_chunks`, the chunk.
    async fn stage_chunk(
        &self,
        args: &UploadCiphertextChunkArgs,
        bytes: Vec<u8>,
    ) -> Result<ChunkWrite> {
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
        self.store
            .put_once(&object.join(chunk_name(args.chunk_index)), bytes)
            .await
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
        let last = self
            .last_use_ms(client_id, session_id)
            .await?
            .unwrap_or_else(now_ms);
        Ok(self.expiry_of(last).div_ceil(1000))
    }

    /// What a session holds (to resume an interrupted upload).
    pub async fn session_status(
        &self,
        args: &SessionArgs,
        caller: &Caller,
    ) -> Result<SessionStatus> {
        args.validate()?;
        self.authenticate(&args.client_id, args.auth_token.as_ref(), caller)
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

    /// Deletes a session's objects and results. On an expired session it also drops the
    /// tombstone, so the client may use the session id again.
    pub async fn delete_session(
        &self,
        args: &SessionArgs,
        caller: &Caller,
    ) -> Result<DeleteSessionResult> {
        args.validate()?;
        self.authenticate(&args.client_id, args.auth_token.as_ref(), caller)
            .await?;
        let not_deleted = || DeleteSessionResult {
            ok: true,
            session_id: args.session_id.clone(),
            deleted: false,
            bytes_freed: 0,
        };
        match self
            .claim_session(&args.client_id, &args.session_id, false)
            .await
        {
            Ok(()) => {}
            Err(e) if e.error_code == ErrorCode::UnknownSession => return Ok(not_deleted()),
            Err(e) if e.error_code == ErrorCode::Expired => {
                self.store
                    .delete(&path(&["tombstones", "sessions", &args.session_id]))
                    .await?;
                return Ok(not_deleted());
            }
            Err(e) => return Err(e),
        }
        let freed = self
            .store
            .delete_prefix(&path(&["sessions", &args.client_id, &args.session_id]))
            .await?;
        self.ledger
            .remove_session(&args.client_id, &args.session_id);
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

    /// One garbage-collection pass: removes sessions unused for longer than the session
    /// lifetime (staged chunks and results with them) and expired Step 0 uploads, leaving a
    /// tombstone for each; removes tombstones past their keeping time and ownership records
    /// whose session never got content. Client records and keys are never touched.
    pub async fn collect_garbage(&self) -> Result<GarbageCollected> {
        let mut done = GarbageCollected::default();
        let now = now_ms();
        let ttl = millis(self.config.session_ttl);
        let mut known = HashSet::new();
        for client in self.store.children(&path(&["sessions"])).await? {
            for sid in self.store.children(&path(&["sessions", &client])).await? {
                let prefix = path(&["sessions", &client, &sid]);
                // Without a `touched` record (a write cut short), the newest object tells.
                let last = match self.last_use_ms(&client, &sid).await? {
                    Some(t) => t,
                    None => self
                        .store
                        .list(&prefix)
                        .await?
                        .iter()
                        .map(|x| x.2)
                        .max()
                        .unwrap_or(0),
                };
                if self.is_stale(last, now) {
                    self.expire_session(&client, &sid, self.expiry_of(last))
                        .await?;
                    done.sessions += 1;
                } else {
                    known.insert(sid);
                }
            }
        }
        // An owner record is written before the session's first object: one older than the
        // session lifetime without a session is left over from a refused or interrupted upload.
        for (owner, _, modified) in self.store.list(&path(&["owners"])).await? {
            if let Some(sid) = owner.filename()
                && !known.contains(sid)
                && modified.saturating_add(ttl) < now
            {
                self.store.delete(&owner).await?;
                done.orphans += 1;
            }
        }
        for pid in self.store.children(&path(&["provisioning"])).await? {
            let meta: Option<ProvisioningMeta> = self
                .store
                .get_json(&path(&["provisioning", &pid, "meta.json"]))
                .await
                .unwrap_or(None);
            let expired = match &meta {
                Some(m) => m.expired(now),
                None => true,
            };
            if expired {
                if let Some(m) = &meta {
                    self.put_tombstone("provisioning", &pid, &m.client_id, m.expires_at_ms())
                        .await?;
                }
                self.store
                    .delete_prefix(&path(&["provisioning", &pid]))
                    .await?;
                self.ledger.remove_upload(&pid);
                done.uploads += 1;
            }
        }
        let keep = millis(self.config.tombstone_ttl);
        for (stone, _, modified) in self.store.list(&path(&["tombstones"])).await? {
            if modified.saturating_add(keep) < now {
                self.store.delete(&stone).await?;
                done.tombstones += 1;
            }
        }
        self.failures.sweep();
        Ok(done)
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

    /// Loads the model's input objects from a session, looked up by name; every object that is
    /// absent or lacks chunks is listed in one `ERROR_INCOMPLETE_UPLOAD`.
    async fn load_inputs(
        &self,
        client_id: &str,
        session_id: &str,
        served: &ServedModel,
        expected: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<(Vec<Ciphertext>, u64)> {
        if let Some(expected) = expected
            && let Some(extra) = expected
                .keys()
                .find(|k| !served.info.input_objects.contains(k))
        {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("input_sha256 names {extra:?}, which the model does not take"),
            ));
        }
        let status: HashMap<String, ObjectStatus> = self
            .object_status(client_id, session_id)
            .await?
            .into_iter()
            .map(|o| (o.file_name.clone(), o))
            .collect();
        let mut ready = Vec::new();
        let mut missing = Vec::new();
        for name in &served.info.input_objects {
            match status.get(name) {
                Some(o) if o.total_chunks > 0 && o.missing_chunks.is_empty() => {
                    ready.push((name, o.total_chunks));
                }
                Some(o) => missing.push(serde_json::json!({
                    "file_name": name,
                    "missing_chunks": o.missing_chunks,
                })),
                None => missing.push(serde_json::json!({"file_name": name, "absent": true})),
            }
        }
        if !missing.is_empty() {
            let names: Vec<&str> = missing
                .iter()
                .filter_map(|m| m["file_name"].as_str())
                .collect();
            return Err(err(
                ErrorCode::IncompleteUpload,
                format!("the session lacks input chunks of {}", names.join(", ")),
            )
            .with_details(serde_json::json!({ "missing": missing })));
        }
        let limit = usize::try_from(self.config.limits.max_object_bytes).unwrap_or(usize::MAX);
        let mut cts = Vec::with_capacity(ready.len());
        let mut input_bytes = 0u64;
        for (name, total_chunks) in ready {
            let bytes = self
                .assemble(
                    &path(&["sessions", client_id, session_id, "objects", name]),
                    total_chunks,
                )
                .await?;
            input_bytes += bytes.len() as u64;
            if let Some(want) = expected.and_then(|e| e.get(name.as_str()))
                && sha256_hex(&bytes) != *want
            {
                return Err(err(
                    ErrorCode::IntegrityMismatch,
                    format!("{name}: the staged object is not the one the request names"),
                ));
            }
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
        Ok((cts, input_bytes))
    }

    /// The wait to suggest with `ERROR_BUSY`: about one evaluation.
    fn busy_retry_ms(&self) -> u64 {
        match self.eval_ms.load(Ordering::Relaxed) {
            0 => 1_000,
            ms => ms.clamp(100, 60_000),
        }
    }

    fn note_eval_time(&self, seconds: f64) {
        let ms = (seconds * 1000.0).clamp(1.0, 3_600_000.0) as u64;
        let old = self.eval_ms.load(Ordering::Relaxed);
        let new = if old == 0 { ms } else { (3 * old + ms) / 4 };
        self.eval_ms.store(new, Ordering::Relaxed);
    }

    /// Waits for an inference slot: `ERROR_BUSY` (retryable, with `retry_after_ms`) after the
    /// queue timeout, `ERROR_CANCELLED` as soon as `cancel` fires.
    async fn inference_slot(&self, cancel: &CancellationToken) -> Result<OwnedSemaphorePermit> {
        let acquire = tokio::time::timeout(
            self.config.queue_timeout,
            self.inference.clone().acquire_owned(),
        );
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                Counters::bump(&self.counters.cancelled_waiting);
                Err(cancelled())
            }
            waited = acquire => match waited {
                Ok(Ok(permit)) => Ok(permit),
                Ok(Err(_)) => Err(err(ErrorCode::Unavailable, "the server is shutting down")),
                Err(_) => {
                    Counters::bump(&self.counters.busy);
                    Err(err(
                        ErrorCode::Busy,
                        format!(
                            "all {} inference slots stayed busy for {} ms",
                            self.config.max_concurrent_inferences.max(1),
                            millis(self.config.queue_timeout)
                        ),
                    )
                    .with_retry_after_ms(self.busy_retry_ms()))
                }
            },
        }
    }

    /// Evaluates the model on a staged session (draft 6.3/6.4, 7.1, 7.2), in a pool of at most
    /// `omp_threads` threads (capped at the server's maximum). `cancel` stops the wait for a
    /// slot at once and the evaluation at its next step, and no result is kept; `progress`
    /// hears every step.
    pub async fn infer(
        &self,
        args: &RemoteInferenceArgs,
        caller: &Caller,
        cancel: CancellationToken,
        progress: ProgressFn,
    ) -> Result<RemoteInferenceResult> {
        let t_total = Instant::now();
        let alg = args.validate()?;
        let record = self
            .authenticate(&args.client_id, args.auth_token.as_ref(), caller)
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
        let (cts, input_bytes) = self
            .load_inputs(
                &args.client_id,
                &args.session_id,
                served,
                args.input_sha256.as_ref(),
            )
            .await?;
        let ev = self.evaluator(&record, served).await?;
        served
            .model
            .check_keys(&ev)
            .map_err(|e| compile_error(&e))?;
        let threads = self.pools.threads_for(args.omp_threads);
        let pool = self.pools.pool(threads)?;
        let load_s = t_load.elapsed().as_secs_f64();

        let t_queue = Instant::now();
        let permit = self.inference_slot(&cancel).await?;
        let queue_s = t_queue.elapsed().as_secs_f64();
        let t_infer = Instant::now();
        let flag = Arc::new(AtomicBool::new(false));
        let _stop = CancelOnDrop(flag.clone());
        let watcher = {
            let flag = flag.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                cancel.cancelled().await;
                flag.store(true, Ordering::Relaxed);
            })
        };
        let registry = self.registry.clone();
        let model_name = name.clone();
        let counters = self.counters.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            // The slot stays taken until the evaluation really ends, even if this request's
            // future is dropped meanwhile.
            let _permit = permit;
            let mut progress = progress;
            let served = registry
                .get(&model_name)
                .ok_or_else(|| err(ErrorCode::UnknownModel, "model vanished"))?;
            let result = pool.install(|| {
                served
                    .model
                    .evaluate(&ev, &cts, &flag, |i, n, d| progress(i, n, d))
            });
            Counters::bump(match &result {
                Ok(_) => &counters.evaluated,
                Err(CompileError::Cancelled) => &counters.cancelled_evaluating,
                Err(_) => &counters.failed,
            });
            result.map_err(|e| compile_error(&e))
        })
        .await
        .map_err(|e| err(ErrorCode::Internal, e.to_string()));
        watcher.abort();
        let (out, report) = outcome??;
        let infer_s = t_infer.elapsed().as_secs_f64();
        self.note_eval_time(infer_s);
        // Cancelled after the last step: nobody waits for this output, so none is kept.
        if cancel.is_cancelled() {
            return Err(cancelled());
        }

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
            self.store_result(&args.client_id, &args.session_id, &result_id, &bytes)
                .await?;
            (
                None,
                Some(ResultRef {
                    result_id,
                    total_bytes: bytes.len() as u64,
                    total_chunks,
                    chunk_bytes: chunk,
                    sha256: sha.clone(),
                    expires_at: (now_ms().saturating_add(millis(self.config.session_ttl)))
                        .div_ceil(1000),
                }),
            )
        };
        self.touch(&args.client_id, &args.session_id).await?;
        let result_signature = caller.signed.as_ref().map(|s| {
            ResultClaim {
                client_id: args.client_id.clone(),
                session_id: args.session_id.clone(),
                model: name.clone(),
                algorithm_id: served.info.algorithm_id.to_string(),
                parameter_id: served.info.parameter_id.clone(),
                encrypted_logit_sha256: sha.clone(),
                encrypted_logit_bytes: bytes.len() as u64,
            }
            .sign(&self.identity, &s.signature.nonce)
        });
        let serialize_s = t_ser.elapsed().as_secs_f64();
        Ok(RemoteInferenceResult {
            result_signature,
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
                threads: u32::try_from(threads).ok(),
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

    /// Keeps an output by reference, counted against the client's byte quota.
    async fn store_result(
        &self,
        client_id: &str,
        session_id: &str,
        result_id: &str,
        bytes: &[u8],
    ) -> Result<()> {
        let key = result_key(result_id);
        let size = bytes.len() as u64;
        self.admit(client_id, session_id, &key, 0, size, u64::MAX)
            .await
            .map_err(|e| {
                if e.error_code == ErrorCode::QuotaExceeded {
                    err(
                        ErrorCode::QuotaExceeded,
                        format!(
                            "no room for a {size}-byte result by reference: {}; delete sessions, or accept the result inline",
                            e.message
                        ),
                    )
                } else {
                    e
                }
            })?;
        let stored = self
            .store
            .put(
                &path(&["sessions", client_id, session_id, "results", result_id]),
                bytes.to_vec(),
            )
            .await;
        if stored.is_err() {
            self.ledger.release_chunk(client_id, session_id, &key, 0);
        }
        stored
    }

    /// One chunk of an output kept by reference.
    pub async fn fetch_result_chunk(
        &self,
        args: &FetchResultChunkArgs,
        caller: &Caller,
    ) -> Result<FetchResultChunkResult> {
        args.validate()?;
        self.authenticate(&args.client_id, args.auth_token.as_ref(), caller)
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
        self.touch(&args.client_id, &args.session_id).await?;
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
/// Refuses a chunk whose bytes do not hash to the digest the caller declared.
fn check_chunk_digest(declared: Option<&str>, bytes: &[u8]) -> Result<()> {
    match declared {
        Some(d) if sha256_hex(bytes) != d => Err(err(
            ErrorCode::IntegrityMismatch,
            "the chunk's bytes do not match its chunk_sha256",
        )),
        _ => Ok(()),
    }
}

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
