//! Inference: the cache of decoded evaluation keys, loading a session's inputs, the slots that
//! bound concurrent evaluations, and `remote_inference` itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use cipherinfer_ckks::serialization::FromBytes;
use cipherinfer_ckks::{Ciphertext, EvaluationKeys, Evaluator};
use cipherinfer_compiler::CompileError;
use cipherinfer_protocol::integrity::ResultClaim;
use cipherinfer_protocol::remote::{
    ObjectStatus, Profile, RemoteInferenceArgs, RemoteInferenceResult, ResultRef, parse_key_ref,
};
use cipherinfer_protocol::validate::{encode_base64, sha256_hex};
use cipherinfer_protocol::{ErrorCode, InferenceTelemetry, ToolError};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::{ClientRecord, Result, Service, check_model_keys, err, millis, now_ms, random_hex};
use crate::layout;
use crate::ratelimit::Caller;
use crate::registry::ServedModel;

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

/// An inference request in flight ([`Service::inference_request`]).
#[derive(Debug)]
pub struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a request for an inference slot gets once the server drains.
fn draining_error() -> ToolError {
    err(
        ErrorCode::Unavailable,
        "this server is shutting down and takes no new inference; retry (another replica, or \
         this one once restarted, will serve it)",
    )
    .with_retry_after_ms(1000)
}

/// The atomic counters behind [`InferenceStats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
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

impl Service {
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
            .map_err(|_| draining_error())?;
        Ok(InferenceSlot { _permit: permit })
    }

    /// Stops taking inferences and waits for the running ones, up to `deadline`: every request
    /// waiting for a slot, and every later one, gets `ERROR_UNAVAILABLE` (retryable: another
    /// replica, or this one restarted, will serve it), and `/readyz` answers 503 so a load
    /// balancer stops sending traffic. Returns whether every running inference finished in
    /// time. Other calls (uploads, results) are served until the process stops.
    pub async fn drain(&self, deadline: std::time::Duration) -> bool {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inference.close();
        let permits = self.config.max_concurrent_inferences.max(1);
        let until = tokio::time::Instant::now() + deadline;
        loop {
            // Every slot back, and every inference request answered: a result is stored and
            // its response handed to the transport after the slot is released.
            if self.inference.available_permits() >= permits
                && self.in_flight.load(Ordering::SeqCst) == 0
            {
                // The transport writes the last responses out before the server stops.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Marks an inference request in flight until the guard drops (the handler holds it until
    /// the call's response is made), so that [`Service::drain`] waits for it.
    pub fn inference_request(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.in_flight.clone())
    }

    /// Whether [`Service::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drops a client's decoded keys from the cache (after rotation or revocation).
    pub(super) fn forget_keys(&self, client_id: &str) {
        if let Ok(mut k) = self.keys.lock() {
            k.retain(|(c, ..)| c != client_id);
        }
    }

    /// The evaluator of a client's active keys: from the cache, or decoded from the store.
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
            .get(&layout::client_keys(&record.client_id, record.key_version))
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
                    &layout::session_object(client_id, session_id, name),
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

    /// Waits for an inference slot (`ERROR_UNAVAILABLE` once the server drains): `ERROR_BUSY` (retryable, with `retry_after_ms`) after the
    /// queue timeout, `ERROR_CANCELLED` as soon as `cancel` fires.
    async fn inference_slot(&self, cancel: &CancellationToken) -> Result<OwnedSemaphorePermit> {
        let _queued = self.metrics.queued();
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
                Ok(Err(_)) => Err(draining_error()),
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
    /// hears every step. A failure carries the draft 7.2 telemetry too (`details.telemetry`,
    /// see [`failure_telemetry`]).
    pub async fn infer(
        &self,
        args: &RemoteInferenceArgs,
        caller: &Caller,
        cancel: CancellationToken,
        progress: ProgressFn,
    ) -> Result<RemoteInferenceResult> {
        self.evaluate_session(args, caller, cancel, progress)
            .await
            .map_err(|e| self.failure_telemetry(e, args))
    }

    /// Adds to a failed inference's error the telemetry draft 7.2 asks for "upon completing or
    /// failing": `details.telemetry` with the error code, `requires_decryption: false` (there is
    /// no ciphertext to route to a decryption tool), no depth used (no output was made) and the
    /// output shape of the model asked for, when the name resolves to a served model.
    fn failure_telemetry(&self, e: ToolError, args: &RemoteInferenceArgs) -> ToolError {
        let name = args
            .model
            .clone()
            .unwrap_or_else(|| self.registry.default_model().to_string());
        let telemetry = InferenceTelemetry {
            remaining_level: None,
            current_scale: None,
            noise_budget_remaining: None,
            computation_depth_used: 0,
            output_shape: self
                .registry
                .get(&name)
                .map(|m| m.info.output_shape.clone())
                .unwrap_or_default(),
            requires_decryption: false,
            error_code: Some(e.error_code),
        };
        let Ok(telemetry) = serde_json::to_value(telemetry) else {
            return e;
        };
        let details = match e.details.clone() {
            Some(serde_json::Value::Object(mut m)) => {
                m.insert("telemetry".into(), telemetry);
                serde_json::Value::Object(m)
            }
            None => serde_json::json!({ "telemetry": telemetry }),
            Some(other) => serde_json::json!({ "detail": other, "telemetry": telemetry }),
        };
        e.with_details(details)
    }

    async fn evaluate_session(
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
        if let Some(a) = &alg {
            self.registry.check_algorithm(a)?;
            if *a != served.info.algorithm_id {
                return Err(err(
                    ErrorCode::ParameterMismatch,
                    "algorithm_id differs from the model's",
                ));
            }
        }
        let ext = args.extended_parameters();
        ext.check_served_profile(&served.info.parameters)?;
        ext.check_matches(&served.info.parameters)?;
        ext.check_depth_bound(served.info.multiplicative_depth)?;
        ext.check_galois_available(&record.galois_elements)?;
        check_model_keys(
            served,
            record.relinearization,
            &record.galois_elements,
            None,
        )?;

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
        if out.is_empty() {
            return Err(err(ErrorCode::Internal, "the model produced no ciphertext"));
        }
        // Every output ciphertext, in output-map order (one: its encoding; several: the set).
        let bytes = cipherinfer_protocol::output::encode_output(&out);
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
}
