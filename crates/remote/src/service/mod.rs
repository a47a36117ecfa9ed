//! The remote tools' logic, independent of MCP: every method takes the protocol's argument type
//! and returns its result type or a [`ToolError`] with a machine-readable code.
//!
//! [`Service`] is one struct whose methods are grouped by concern, one `impl` block per child
//! module: `capabilities`, `provisioning` (Step 0 and revocation), `uploads` (staging ciphertext
//! chunks), `sessions` (lifetimes, quotas, garbage collection), `inference` and `results`. This
//! module keeps the state, authentication and the helpers they share. Every object path comes
//! from the crate's `layout` module.

mod capabilities;
mod inference;
mod provisioning;
mod results;
mod sessions;
mod uploads;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cipherinfer_ckks::Evaluator;
use cipherinfer_protocol::integrity::{
    DEFAULT_MAX_CLOCK_SKEW_MS, IdentityKey, PublicIdentity, ReplayGuard,
};
use cipherinfer_protocol::validate::sha256_hex;
use cipherinfer_protocol::{AuthToken, ErrorCode, Limits, TokenHash, ToolError};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::layout::{self, TombstoneKind};
use crate::ratelimit::{AuthFailures, Caller, FailureKey};
use crate::registry::{Registry, ServedModel};
use crate::store::Store;
use crate::threads::{EvalPools, available_threads};
use crate::usage::Ledger;

use inference::Counters;
pub use inference::{InFlight, InferenceSlot, InferenceStats, ProgressFn};
pub use sessions::GarbageCollected;

type Result<T> = std::result::Result<T, ToolError>;

/// On a store shared by replicas, how old a replica's count of a client's staged bytes may get
/// before it is listed again (the bound on how far N replicas can overrun a quota).
const USAGE_REFRESH: Duration = Duration::from_secs(2);

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
    /// Failed authentications per client_id, address and minute before `ERROR_RATE_LIMITED`
    /// (per address: someone else's failures never lock a client out).
    pub auth_failures_per_minute: u32,
    /// Failed authentications and enrollments per peer address and minute before
    /// `ERROR_RATE_LIMITED` (0: no per-address limit, e.g. behind a proxy that hides addresses).
    pub auth_failures_per_minute_per_peer: u32,
    /// Evaluation-key sets kept decoded in memory.
    pub key_cache_entries: usize,
    /// Memory the server may plan for (masks, decoded key sets, evaluations): with a budget,
    /// [`Service::new`] lowers `key_cache_entries` to what fits and refuses a
    /// `max_concurrent_inferences` the budget cannot hold (`None`: no check).
    pub memory_budget_bytes: Option<u64>,
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
            memory_budget_bytes: None,
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
    /// This process's name among replicas sharing the store (random), for the GC lease.
    replica: String,
    /// Set by [`Service::drain`].
    draining: std::sync::atomic::AtomicBool,
    metrics: crate::metrics::Metrics,
    requests: AtomicU64,
    /// Inference requests between the handler's start and its response.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service over a store and compiled models. The key-bundle limit is raised, if needed,
    /// to the largest key set of a served parameter set (plus 1 MiB), so that every served model
    /// can be provisioned; each upload is still bounded by its own parameter set's key set.
    pub fn new(store: Store, registry: Arc<Registry>, mut config: ServiceConfig) -> Result<Self> {
        let needed = registry
            .max_key_bundle_bytes()
            .saturating_add(provisioning::KEY_BUNDLE_SLACK);
        if config.limits.max_key_bundle_bytes < needed {
            tracing::warn!(
                configured = config.limits.max_key_bundle_bytes,
                raised_to = needed,
                "key-bundle limit raised to the key set of the largest served parameter set"
            );
            config.limits.max_key_bundle_bytes = needed;
        }
        if let Some(budget) = config.memory_budget_bytes {
            fit_memory_budget(&registry.memory_needs(), budget, &mut config)?;
        }
        let permits = config.max_concurrent_inferences.max(1);
        let identity = match &config.server_identity {
            Some(k) => k.clone(),
            None => Arc::new(IdentityKey::generate()?),
        };
        // Alone on its store, the server refuses calls signed before it started (its window of
        // seen nonces starts empty); replicas sharing a store claim nonces there, which
        // survives restarts, so a call signed before this replica started is accepted once.
        let started = if store.is_shared() {
            now_ms().saturating_sub(millis(config.max_clock_skew))
        } else {
            now_ms()
        };
        let replay = ReplayGuard::new(
            millis(config.max_clock_skew),
            started,
            config.max_replay_entries,
        );
        let shared = store.is_shared();
        Ok(Self {
            replay: Mutex::new(replay),
            identity,
            store,
            registry,
            pools: EvalPools::new(config.max_eval_threads),
            config,
            keys: Mutex::new(VecDeque::new()),
            failures: AuthFailures::default(),
            ledger: Ledger::with_refresh(shared.then_some(USAGE_REFRESH)),
            replica: random_hex(8)?,
            draining: std::sync::atomic::AtomicBool::new(false),
            metrics: crate::metrics::Metrics::default(),
            requests: AtomicU64::new(0),
            in_flight: Arc::default(),
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

    /// A new request id, unique among this replica's (its random name and a sequence number)
    /// and so, in practice, among all replicas'.
    pub fn next_request_id(&self) -> String {
        let n = self
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n}", self.replica)
    }

    /// The replica's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The metrics in the Prometheus text format, gauges read now.
    pub fn metrics_text(&self) -> String {
        let permits = self.config.max_concurrent_inferences.max(1);
        let running = permits.saturating_sub(self.inference.available_permits());
        let cached = self.keys.lock().map(|k| k.len()).unwrap_or(0);
        self.metrics.encode(
            i64::try_from(running).unwrap_or(i64::MAX),
            i64::try_from(cached).unwrap_or(i64::MAX),
        )
    }

    /// Whether the server can take calls: not draining, the store answers (one read of an
    /// object that need not exist) and models are loaded. Returns the served model names.
    pub async fn readiness(&self) -> Result<Vec<String>> {
        if self.is_draining() {
            return Err(err(
                ErrorCode::Unavailable,
                "the server is draining before it stops",
            ));
        }
        self.store.get(&layout::gc_lease()).await?;
        let names: Vec<String> = self.registry.all().map(|m| m.info.name.clone()).collect();
        if names.is_empty() {
            return Err(err(ErrorCode::Unavailable, "no model is loaded"));
        }
        Ok(names)
    }

    // ------------------------------------------------------------------------------------------
    // Authentication

    // ------------------------------------------------------------------------------------------
    // Authentication

    fn rate_limit_check(&self, client_id: Option<&str>, caller: &Caller) -> Result<()> {
        if let Some(id) = client_id {
            self.failures.check(
                &FailureKey::Client(id.to_string(), caller.peer),
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
            self.failures
                .record(FailureKey::Client(id.to_string(), caller.peer));
        }
        if let Some(ip) = caller.peer {
            self.failures.record(FailureKey::Peer(ip));
        }
    }

    async fn record(&self, client_id: &str) -> Result<Option<ClientRecord>> {
        self.store.get_json(&layout::client_record(client_id)).await
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
            // Distinct from a wrong token, so that a client whose keys the server lost knows to
            // run Step 0 again. This tells no more than provision_keys_begin's
            // ERROR_CLIENT_EXISTS already does, and it counts as a failure for the rate limit
            // (enumeration is as slow as guessing tokens).
            None => Err(err(
                ErrorCode::UnknownClient,
                "no keys are provisioned for this client_id here: run Step 0 (provision_keys_*)",
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
                self.verify_request(client_id, r.identity_key.as_ref(), caller)
                    .await?;
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
    /// `identity`: signed by it, fresh, and never seen before — by this process, and, on a
    /// store shared by replicas, by any of them (the nonce is claimed in the store). A client
    /// with a pinned identity must sign every call; one without may call unsigned only if the
    /// server allows it.
    async fn verify_request(
        &self,
        client_id: &str,
        identity: Option<&PublicIdentity>,
        caller: &Caller,
    ) -> Result<()> {
        let outcome = match (&caller.signed, identity) {
            (Some(signed), Some(id)) => match signed.verify(id).and_then(|()| {
                self.replay
                    .lock()
                    .map_err(|_| err(ErrorCode::Internal, "replay window poisoned"))?
                    .check(
                        client_id,
                        &signed.signature.nonce,
                        signed.signature.timestamp_ms,
                        now_ms(),
                    )
            }) {
                Ok(()) => {
                    self.claim_nonce(
                        client_id,
                        &signed.signature.nonce,
                        signed.signature.timestamp_ms,
                    )
                    .await
                }
                Err(e) => Err(e),
            },
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

    /// On a store shared by replicas, claims a verified call's nonce there (create-if-absent),
    /// so that the same signed call sent to another replica, or to this one after a restart,
    /// is refused. Nothing to do on a store of one process (its replay window is in memory and
    /// it refuses calls signed before it started).
    async fn claim_nonce(&self, client_id: &str, nonce: &str, timestamp_ms: u64) -> Result<()> {
        if !self.store.is_shared() {
            return Ok(());
        }
        let digest = sha256_hex(format!("{client_id}\n{nonce}").as_bytes());
        let path = layout::nonce(timestamp_ms, &digest);
        // A claim of our own, so that a write the store's client retried after it had landed
        // is told apart from another replica's claim.
        let claim = format!("{} {timestamp_ms} {}", self.replica, random_hex(8)?).into_bytes();
        if self
            .store
            .put_if_version(&path, claim.clone(), None)
            .await?
            || self.store.get(&path).await?.as_deref() == Some(claim.as_slice())
        {
            return Ok(());
        }
        Err(err(
            ErrorCode::Replay,
            "this signed request was already received",
        ))
    }

    // ------------------------------------------------------------------------------------------
    // Tombstones

    /// The live tombstone of an expired session or Step 0 upload, if any.
    async fn tombstone(&self, kind: TombstoneKind, id: &str) -> Result<Option<Tombstone>> {
        Ok(self
            .store
            .get_json::<Tombstone>(&layout::tombstone(kind, id))
            .await?
            .filter(|t| t.keep_until_ms >= now_ms()))
    }

    /// Leaves a tombstone for `client_id`'s session or Step 0 upload that expired at
    /// `expired_at_ms`, kept for the tombstone lifetime.
    async fn put_tombstone(
        &self,
        kind: TombstoneKind,
        id: &str,
        client_id: &str,
        expired_at_ms: u64,
    ) -> Result<()> {
        let t = Tombstone {
            client_id: client_id.to_string(),
            expired_at_ms,
            keep_until_ms: now_ms().saturating_add(millis(self.config.tombstone_ttl)),
        };
        self.store.put_json(&layout::tombstone(kind, id), &t).await
    }
}

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

/// Whether a key set covers a model: relinearization if needed, and every Galois element.
/// Fits the server's memory plan into `budget`: every model's masks, plus per concurrent
/// inference one client's keys and one evaluation's working memory, plus the key sets the cache
/// keeps beyond those. Lowers the key cache when that suffices; refuses concurrency the budget
/// cannot hold with `ERROR_INVALID_ARGUMENT` naming what fits.
pub fn fit_memory_budget(
    needs: &crate::registry::MemoryNeeds,
    budget: u64,
    config: &mut ServiceConfig,
) -> Result<()> {
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let concurrent = config.max_concurrent_inferences.max(1) as u64;
    let per_inference = needs
        .keys_per_client
        .saturating_add(needs.working_per_inference);
    let fixed = needs
        .masks
        .saturating_add(concurrent.saturating_mul(per_inference));
    if fixed > budget {
        let fits = budget.saturating_sub(needs.masks) / per_inference.max(1);
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "a memory budget of {:.0} MiB holds {fits} concurrent inferences of the served                  models, not {concurrent}: the models' masks take {:.0} MiB, each inference                  {:.0} MiB (a client's keys {:.0} MiB, working memory {:.0} MiB); lower the                  concurrent inferences or raise the budget",
                mib(budget),
                mib(needs.masks),
                mib(per_inference),
                mib(needs.keys_per_client),
                mib(needs.working_per_inference),
            ),
        ));
    }
    // Key sets the cache may keep beyond those of running inferences.
    let spare = (budget - fixed) / needs.keys_per_client.max(1);
    let cache = usize::try_from(concurrent.saturating_add(spare)).unwrap_or(usize::MAX);
    if cache < config.key_cache_entries {
        tracing::warn!(
            configured = config.key_cache_entries,
            lowered_to = cache,
            budget_mib = mib(budget),
            "decoded key sets kept in memory lowered to fit the memory budget"
        );
        config.key_cache_entries = cache.max(1);
    }
    tracing::info!(
        budget_mib = mib(budget),
        masks_mib = mib(needs.masks),
        keys_per_client_mib = mib(needs.keys_per_client),
        working_per_inference_mib = mib(needs.working_per_inference),
        concurrent,
        key_cache_entries = config.key_cache_entries,
        "memory plan"
    );
    Ok(())
}

/// Checks that a key bundle's Galois elements (ascending) hold every rotation key the model
/// needs and, given the highest level each key serves (at provisioning, from the keys
/// themselves), that each serves the levels the model uses it at.
fn check_model_keys(
    model: &ServedModel,
    relin: bool,
    galois: &[u64],
    levels: Option<&std::collections::BTreeMap<u64, usize>>,
) -> Result<()> {
    let needed = model.info.client_spec.galois_key_levels(model.params());
    let missing: Vec<u64> = needed
        .keys()
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
    let too_low: Vec<u64> = needed
        .iter()
        .filter(|(g, level)| levels.is_some_and(|l| l.get(g).is_some_and(|have| have < level)))
        .map(|(g, _)| *g)
        .collect();
    if !too_low.is_empty() {
        return Err(err(
            ErrorCode::InvalidGaloisKey,
            format!(
                "{} rotation keys serve fewer levels than the model uses them at",
                too_low.len()
            ),
        )
        .with_details(serde_json::json!({ "low_level_galois_elements": too_low })));
    }
    if model.info.relinearization && !relin {
        return Err(err(
            ErrorCode::MalformedKeys,
            "the model needs a relinearization key",
        ));
    }
    Ok(())
}
