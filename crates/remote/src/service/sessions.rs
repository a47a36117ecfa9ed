//! Sessions: claiming and touching them, their lifetime and tombstones, per-client quotas,
//! `get_session_status`, `delete_session`, and garbage collection.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use cipherinfer_protocol::ErrorCode;
use cipherinfer_protocol::remote::{DeleteSessionResult, SessionArgs, SessionStatus};

use super::{Result, Service, err, expired_error, millis, now_ms};
use crate::layout::{self, TombstoneKind};
use crate::ratelimit::Caller;
use crate::usage::{Admission, SeedItem};

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
    /// Windows of claimed nonces no signed call can reuse any more (shared stores).
    pub nonce_windows: usize,
    /// Whether this replica skipped the pass because another holds the garbage collector's
    /// lease (shared stores).
    pub skipped: bool,
}

/// How long a replica holds the garbage collector's lease once taken (it renews it on every
/// pass; another replica takes over this long after the holder stops).
const GC_LEASE_MS: u64 = 5 * 60 * 1000;

/// The garbage collector's lease on a shared store.
#[derive(Debug, Serialize, Deserialize)]
struct GcLease {
    holder: String,
    until_ms: u64,
}

impl GarbageCollected {
    /// Whether anything was removed.
    pub fn is_empty(&self) -> bool {
        Self {
            skipped: false,
            ..*self
        } == Self::default()
    }
}

/// Reads a session's `touched` record: Unix milliseconds (seconds in stores written before).
fn parse_touched(bytes: &[u8]) -> Option<u64> {
    let v: u64 = std::str::from_utf8(bytes).ok()?.trim().parse().ok()?;
    // 10^11 ms is 1973, 10^11 s is the year 5138: smaller values are seconds.
    Some(if v < 100_000_000_000 { v * 1000 } else { v })
}

impl Service {
    /// When a session was last used (Unix milliseconds), from its `touched` record; `None` if it
    /// has none yet.
    async fn last_use_ms(&self, client_id: &str, session_id: &str) -> Result<Option<u64>> {
        Ok(self
            .store
            .get(&layout::session_touched(client_id, session_id))
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
        self.put_tombstone(TombstoneKind::Session, session_id, client_id, expired_at_ms)
            .await?;
        self.store
            .delete_prefix(&layout::session(client_id, session_id))
            .await?;
        self.ledger.remove_session(client_id, session_id);
        self.store.delete(&layout::session_owner(session_id)).await
    }

    /// Checks that `session_id` is a live session of `client_id`; with `create`, makes it one
    /// if nobody owns it (within the per-client session quota).
    pub(super) async fn claim_session(
        &self,
        client_id: &str,
        session_id: &str,
        create: bool,
    ) -> Result<()> {
        let owner_path = layout::session_owner(session_id);
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
                if let Some(t) = self.tombstone(TombstoneKind::Session, session_id).await?
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
        let mut live = self
            .store
            .children(&layout::client_sessions(client_id))
            .await?;
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

    /// Records that a session was used now, which restarts its lifetime.
    pub(super) async fn touch(&self, client_id: &str, session_id: &str) -> Result<()> {
        self.store
            .put(
                &layout::session_touched(client_id, session_id),
                now_ms().to_string().into_bytes(),
            )
            .await
    }

    /// Makes sure the ledger knows what the client already has in the store (one listing per
    /// client and process lifetime).
    async fn seed_client_usage(&self, client_id: &str) -> Result<()> {
        let prefix = layout::client_sessions(client_id);
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
                .filter_map(|(p, size, _)| layout::staged_item(&prefix, &p, size))
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
    pub(super) async fn admit(
        &self,
        client_id: &str,
        session_id: &str,
        object: &str,
        index: u32,
        size: u64,
        max_object_bytes: u64,
    ) -> Result<Admission> {
        // A refresh is asked for at most once per call: a store so slow that the new listing is
        // already due again must not keep the call listing forever.
        let mut refresh = true;
        loop {
            match self.ledger.admit_chunk(
                client_id,
                session_id,
                object,
                index,
                size,
                max_object_bytes,
                self.config.max_bytes_per_client,
                refresh,
            )? {
                Admission::Unseeded => {
                    self.seed_client_usage(client_id).await?;
                    refresh = false;
                }
                a => return Ok(a),
            }
        }
    }

    /// When a session expires unless used again (Unix seconds).
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
            .list(&layout::session_results(&args.client_id, &args.session_id))
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
                    .delete(&layout::tombstone(TombstoneKind::Session, &args.session_id))
                    .await?;
                return Ok(not_deleted());
            }
            Err(e) => return Err(e),
        }
        let freed = self
            .store
            .delete_prefix(&layout::session(&args.client_id, &args.session_id))
            .await?;
        self.ledger
            .remove_session(&args.client_id, &args.session_id);
        self.store
            .delete(&layout::session_owner(&args.session_id))
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
    ///
    /// On a store shared by replicas one replica at a time collects: the holder of a lease
    /// taken by compare-and-swap, renewed on every pass; the others return with `skipped`.
    pub async fn collect_garbage(&self) -> Result<GarbageCollected> {
        let mut done = GarbageCollected::default();
        let now = now_ms();
        if self.store.is_shared() {
            if !self.take_gc_lease(now).await? {
                done.skipped = true;
                return Ok(done);
            }
            done.nonce_windows = self.collect_nonce_windows(now).await?;
        }
        let ttl = millis(self.config.session_ttl);
        let mut known = HashSet::new();
        for client in self.store.children(&layout::sessions_root()).await? {
            for sid in self
                .store
                .children(&layout::client_sessions(&client))
                .await?
            {
                let prefix = layout::session(&client, &sid);
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
        for (owner, _, modified) in self.store.list(&layout::owners_root()).await? {
            if let Some(sid) = owner.filename()
                && !known.contains(sid)
                && modified.saturating_add(ttl) < now
            {
                self.store.delete(&owner).await?;
                done.orphans += 1;
            }
        }
        done.uploads += self.collect_expired_provisioning(now).await?;
        let keep = millis(self.config.tombstone_ttl);
        for (stone, _, modified) in self.store.list(&layout::tombstones_root()).await? {
            if modified.saturating_add(keep) < now {
                self.store.delete(&stone).await?;
                done.tombstones += 1;
            }
        }
        self.failures.sweep();
        Ok(done)
    }

    /// Takes or renews the garbage collector's lease; `false` if another replica holds it.
    async fn take_gc_lease(&self, now: u64) -> Result<bool> {
        let path = layout::gc_lease();
        let current = self.store.get_versioned(&path).await?;
        let version = match &current {
            Some((bytes, version)) => {
                match serde_json::from_slice::<GcLease>(bytes) {
                    Ok(l) if l.holder != self.replica && l.until_ms > now => return Ok(false),
                    // Ours, expired, or unreadable: replaced if nobody replaces it first.
                    _ => Some(version),
                }
            }
            None => None,
        };
        let lease = GcLease {
            holder: self.replica.clone(),
            until_ms: now.saturating_add(GC_LEASE_MS),
        };
        let bytes = serde_json::to_vec(&lease)
            .map_err(|e| err(ErrorCode::Internal, format!("lease: {e}")))?;
        self.store.put_if_version(&path, bytes, version).await
    }

    /// Deletes the nonce windows whose every timestamp is beyond the accepted clock skew, with
    /// the skew counted twice: a replica whose clock runs behind the collector's by up to one
    /// skew still finds every nonce it could accept.
    async fn collect_nonce_windows(&self, now: u64) -> Result<usize> {
        let skew = millis(self.config.max_clock_skew);
        let mut removed = 0;
        for window in self.store.children(&layout::nonces_root()).await? {
            let Ok(w) = window.parse::<u64>() else {
                continue;
            };
            let end = w.saturating_add(1).saturating_mul(layout::NONCE_WINDOW_MS);
            if end.saturating_add(skew.saturating_mul(2)) < now {
                self.store.delete_prefix(&layout::nonce_window(w)).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
