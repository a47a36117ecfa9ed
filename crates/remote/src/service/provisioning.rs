//! Step 0, provisioning evaluation keys: `provision_keys_begin`, `_chunk` and `_commit`, key
//! rotation, revocation, and the expiry of uploads that were never committed.

use std::sync::Arc;

use cipherinfer_ckks::EvaluationKeys;
use cipherinfer_ckks::serialization::FromBytes;
use cipherinfer_protocol::integrity::{BundleClaim, PublicIdentity};
use cipherinfer_protocol::remote::{
    ProvisionKeysBeginArgs, ProvisionKeysBeginResult, ProvisionKeysChunkAck,
    ProvisionKeysChunkArgs, ProvisionKeysCommitArgs, ProvisionKeysResult, ProvisionMode,
    RevokeKeysArgs, RevokeKeysResult, format_key_ref, parse_key_store_uri,
};
use cipherinfer_protocol::validate::{decode_base64_limited, sha256_hex};
use cipherinfer_protocol::{AlgorithmId, AuthToken, ErrorCode, ToolError};
use serde::{Deserialize, Serialize};

use super::{
    ClientRecord, Result, Service, check_chunk_digest, check_model_keys, err, expired_error,
    millis, now, now_ms, random_hex,
};
use crate::layout::{self, TombstoneKind};
use crate::ratelimit::Caller;
use crate::store::ChunkWrite;
use crate::usage::Admission;

/// Bytes a key bundle may exceed the exact size of its parameter set's key set by (1 MiB).
pub(super) const KEY_BUNDLE_SLACK: u64 = 1 << 20;

/// What `provision_keys_begin` announced for a Step 0 upload, kept until commit or expiry.
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

impl Service {
    /// Starts a key-bundle upload.
    pub async fn provision_begin(
        &self,
        args: &ProvisionKeysBeginArgs,
        caller: &Caller,
    ) -> Result<ProvisionKeysBeginResult> {
        let alg = args.validate(&self.config.limits)?;
        self.registry.check_algorithm(&alg)?;
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
        // No more than every key of this parameter set's models (plus framing slack): a client
        // of a small model cannot fill the server with a bundle sized for the largest one.
        let most = self
            .registry
            .key_bundle_bytes_for(&args.parameter_id)
            .unwrap_or(0)
            .saturating_add(KEY_BUNDLE_SLACK);
        if args.bundle_bytes > most {
            return Err(err(
                ErrorCode::ObjectTooLarge,
                format!(
                    "bundle_bytes {} is more than the {most} bytes every key of this parameter \
                     set takes",
                    args.bundle_bytes
                ),
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
                self.verify_request(&args.client_id, identity.as_ref(), caller)
                    .await?;
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
            .put_json(&layout::provisioning_meta(&provisioning_id), &meta)
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
        let Some(meta) = self
            .store
            .get_json::<ProvisioningMeta>(&layout::provisioning_meta(id))
            .await?
        else {
            return Err(
                match self.tombstone(TombstoneKind::Provisioning, id).await? {
                    Some(t) if t.client_id == client_id => {
                        expired_error("key upload", t.expired_at_ms)
                    }
                    _ => err(ErrorCode::UnknownSession, "unknown provisioning_id"),
                },
            );
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
        let prefix = layout::provisioning_chunks(provisioning_id);
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
                .filter_map(|(p, size, _)| Some((layout::chunk_index(&p)?, size)));
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
        self.verify_request(&args.client_id, meta.identity_key.as_ref(), caller)
            .await?;
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
        let chunk_path = layout::provisioning_chunk(&args.provisioning_id, args.chunk_index);
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
        self.verify_request(&args.client_id, meta.identity_key.as_ref(), caller)
            .await?;
        let bundle = match &meta.key_uri {
            Some(uri) => {
                let segments = parse_key_store_uri(uri)?;
                self.store
                    .get(&layout::keystore_bundle(&segments))
                    .await?
                    .ok_or_else(|| {
                        err(
                            ErrorCode::KeyReferenceUnresolved,
                            "no bundle at key_uri in the key store",
                        )
                    })?
            }
            None => {
                self.assemble(
                    &layout::provisioning_chunks(&args.provisioning_id),
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
        let key_levels: std::collections::BTreeMap<u64, usize> = galois_elements
            .iter()
            .filter_map(|&g| keys.galois_key(g).map(|k| (g, k.max_level())))
            .collect();
        let relinearization = keys.relinearization_key().is_some();
        if keys
            .relinearization_key()
            .is_some_and(|k| k.max_level() < served.params().max_level())
        {
            return Err(err(
                ErrorCode::MalformedKeys,
                "the relinearization key must serve every level",
            ));
        }
        if let Some(m) = &meta.model {
            let model = self
                .registry
                .get(m)
                .ok_or_else(|| err(ErrorCode::UnknownModel, format!("no model {m:?}")))?;
            check_model_keys(model, relinearization, &galois_elements, Some(&key_levels))?;
        }
        let models = self
            .registry
            .all()
            .filter(|m| {
                m.info.parameter_id == meta.parameter_id
                    && check_model_keys(m, relinearization, &galois_elements, Some(&key_levels))
                        .is_ok()
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
        let key_path = layout::client_keys(&args.client_id, key_version);
        self.store.put(&key_path, bundle.to_vec()).await?;
        // The record switches the active version last: until then the old keys stay valid.
        self.store
            .put_json(&layout::client_record(&args.client_id), &record)
            .await?;
        if let Some(old) = previous {
            self.store
                .delete(&layout::client_keys(&args.client_id, old.key_version))
                .await?;
        }
        self.store
            .delete_prefix(&layout::provisioning(&args.provisioning_id))
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
            .children(&layout::client_sessions(&args.client_id))
            .await?
        {
            self.store
                .delete_prefix(&layout::session(&args.client_id, &sid))
                .await?;
            self.store.delete(&layout::session_owner(&sid)).await?;
            sessions_deleted += 1;
        }
        self.ledger.remove_client(&args.client_id);
        self.store
            .delete_prefix(&layout::client_keys_dir(&args.client_id))
            .await?;
        record.revoked = true;
        record.updated_at = now();
        self.store
            .put_json(&layout::client_record(&args.client_id), &record)
            .await?;
        self.forget_keys(&args.client_id);
        Ok(RevokeKeysResult {
            ok: true,
            client_id: args.client_id.clone(),
            revoked_key_ref: format_key_ref(&args.client_id, record.key_version),
            sessions_deleted,
        })
    }

    /// The Step 0 part of [`Service::collect_garbage`]: removes uploads expired at `now` (Unix
    /// milliseconds) or without readable metadata, leaving a tombstone for each that names its
    /// client; returns how many it removed.
    pub(super) async fn collect_expired_provisioning(&self, now: u64) -> Result<usize> {
        let mut removed = 0;
        for pid in self.store.children(&layout::provisioning_root()).await? {
            let meta: Option<ProvisioningMeta> = self
                .store
                .get_json(&layout::provisioning_meta(&pid))
                .await
                .unwrap_or(None);
            let expired = match &meta {
                Some(m) => m.expired(now),
                None => true,
            };
            if expired {
                if let Some(m) = &meta {
                    self.put_tombstone(
                        TombstoneKind::Provisioning,
                        &pid,
                        &m.client_id,
                        m.expires_at_ms(),
                    )
                    .await?;
                }
                self.store
                    .delete_prefix(&layout::provisioning(&pid))
                    .await?;
                self.ledger.remove_upload(&pid);
                removed += 1;
            }
        }
        Ok(removed)
    }
}
