//! What this process knows about staged bytes and received chunks, so that accepting a chunk
//! costs a constant number of store operations instead of a listing of everything staged so far.
//!
//! The store stays the truth. A client's entry (or a Step 0 upload's) is seeded from one listing
//! the first time this process needs it, so a restart loses nothing; after that every chunk is
//! admitted here, under one lock, before its create-if-absent write, so concurrent chunks count
//! once and two of them cannot both squeeze under a quota. Deletions bump an epoch that makes a
//! seed listed before them start over.
//!
//! Replicas sharing one store each know their own writes plus their seed. So that N replicas do
//! not give a client N quotas, a replica's entry for a client is listed again once it is older
//! than the refresh interval ([`Ledger::with_refresh`]): a client can stage at most its quota
//! plus what the other replicas accepted for it within one interval. Chunks this process admitted
//! but has not written yet (pending until [`Ledger::confirm_chunk`] or
//! [`Ledger::release_chunk`]) are carried into the new listing, so a refresh never lets two of
//! this process's own chunks both squeeze under a quota. Acknowledgement counts may
//! lag another replica's chunks by as much, while `get_session_status` and inference list the
//! store and are exact everywhere.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cipherinfer_protocol::{ErrorCode, Limits, ToolError};

/// Most clients (and, separately, Step 0 uploads) kept; the least recently used is dropped and
/// seeded again from the store when it comes back.
const CAPACITY: usize = 4096;

/// Chunks of one object by index (a by-reference result is one object with chunk 0).
#[derive(Debug, Default)]
struct Chunks {
    sizes: HashMap<u32, u64>,
    bytes: u64,
}

impl Chunks {
    fn insert(&mut self, index: u32, size: u64) -> bool {
        if self.sizes.contains_key(&index) {
            return false;
        }
        self.sizes.insert(index, size);
        self.bytes += size;
        true
    }

    fn remove(&mut self, index: u32) -> u64 {
        let size = self.sizes.remove(&index).unwrap_or(0);
        self.bytes -= size;
        size
    }
}

/// A client's staged bytes: session → object key (`layout::object_key` or `layout::result_key`).
#[derive(Debug, Default)]
struct ClientUsage {
    sessions: HashMap<String, HashMap<String, Chunks>>,
    bytes: u64,
    last_use: u64,
    /// When the entry was listed from the store (`None`: in tests, never).
    seeded: Option<Instant>,
    /// Listed too long ago: list again, keeping `pending`.
    stale: bool,
    /// Admitted as new by this process, not yet written: (session, object, index) -> bytes.
    pending: HashMap<(String, String, u32), u64>,
}

#[derive(Debug, Default)]
struct Upload {
    chunks: Chunks,
    last_use: u64,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<String, ClientUsage>,
    uploads: HashMap<String, Upload>,
    epoch: u64,
    tick: u64,
}

/// What a chunk's admission found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The index was free: it is now reserved and counted; release it if the write fails.
    New,
    /// The index is already staged: the write decides between duplicate and conflict.
    Present,
    /// This process has no entry yet: seed it from the store and admit again.
    Unseeded,
}

/// One staged item found by a listing: (session, object key, chunk index, bytes).
pub(crate) type SeedItem = (String, String, u32, u64);

/// The ledger of staged bytes and received chunks.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    state: Mutex<State>,
    /// List a client's entry again once it is this old (replicas sharing a store).
    refresh: Option<Duration>,
}

fn evict_oldest<T>(map: &mut HashMap<String, T>, last_use: impl Fn(&T) -> u64) {
    if map.len() < CAPACITY {
        return;
    }
    if let Some(oldest) = map
        .iter()
        .min_by_key(|(_, v)| last_use(v))
        .map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
}

impl Ledger {
    /// A ledger whose client entries are listed from the store again once older than
    /// `refresh` (for replicas sharing a store; `None`: listed once per process).
    pub(crate) fn with_refresh(refresh: Option<Duration>) -> Self {
        Self {
            refresh,
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update keeps the sums consistent before it can panic, so a poisoned lock still
        // guards a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The deletion epoch: pass it to a seed listed after reading it.
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Whether this process has a current entry for the client (not one due for a refresh).
    pub(crate) fn client_seeded(&self, client_id: &str) -> bool {
        self.lock().clients.get(client_id).is_some_and(|c| !c.stale)
    }

    /// Installs a client's entry from a listing made after [`Ledger::epoch`] returned `epoch`;
    /// false if something was deleted meanwhile (list again).
    pub(crate) fn seed_client(&self, client_id: &str, epoch: u64, items: Vec<SeedItem>) -> bool {
        let mut s = self.lock();
        let pending = match s.clients.get_mut(client_id) {
            Some(c) if !c.stale => return true,
            Some(c) => std::mem::take(&mut c.pending),
            None => HashMap::new(),
        };
        if s.epoch != epoch {
            if let Some(c) = s.clients.get_mut(client_id) {
                c.pending = pending;
            }
            return false;
        }
        if !s.clients.contains_key(client_id) {
            evict_oldest(&mut s.clients, |c| c.last_use);
        }
        s.tick += 1;
        let mut usage = ClientUsage {
            last_use: s.tick,
            seeded: Some(Instant::now()),
            ..ClientUsage::default()
        };
        for (session, object, index, size) in items {
            if usage
                .sessions
                .entry(session)
                .or_default()
                .entry(object)
                .or_default()
                .insert(index, size)
            {
                usage.bytes += size;
            }
        }
        // Reservations the listing does not show yet stay counted; one it shows (written since,
        // by this process or another) is the store's now.
        for ((session, object, index), size) in pending {
            if usage
                .sessions
                .entry(session.clone())
                .or_default()
                .entry(object.clone())
                .or_default()
                .insert(index, size)
            {
                usage.bytes += size;
                usage.pending.insert((session, object, index), size);
            }
        }
        s.clients.insert(client_id.to_string(), usage);
        true
    }

    /// Admits one chunk of a client's object: an index already staged passes unchecked (the
    /// write tells a duplicate from a conflict); a new one must keep the object within
    /// `max_object_bytes` (`ERROR_OBJECT_TOO_LARGE`) and the client within `max_client_bytes`
    /// (`ERROR_QUOTA_EXCEEDED`), and is then counted. With `may_refresh`, an entry older than
    /// the refresh interval is [`Admission::Unseeded`] (list again).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn admit_chunk(
        &self,
        client_id: &str,
        session_id: &str,
        object: &str,
        index: u32,
        size: u64,
        max_object_bytes: u64,
        max_client_bytes: u64,
        may_refresh: bool,
    ) -> Result<Admission, ToolError> {
        let mut s = self.lock();
        s.tick += 1;
        let tick = s.tick;
        if let (Some(refresh), Some(client), true) =
            (self.refresh, s.clients.get_mut(client_id), may_refresh)
            && client.seeded.is_some_and(|t| t.elapsed() >= refresh)
        {
            client.stale = true;
        }
        let Some(client) = s.clients.get_mut(client_id).filter(|c| !c.stale) else {
            return Ok(Admission::Unseeded);
        };
        client.last_use = tick;
        let staged = client
            .sessions
            .get(session_id)
            .and_then(|objects| objects.get(object));
        if staged.is_some_and(|c| c.sizes.contains_key(&index)) {
            return Ok(Admission::Present);
        }
        Limits::check_object_size(staged.map_or(0, |c| c.bytes), size, max_object_bytes)?;
        if client.bytes.saturating_add(size) > max_client_bytes {
            return Err(ToolError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "at most {max_client_bytes} bytes staged per client ({} staged); delete a session",
                    client.bytes
                ),
            )
            .with_details(serde_json::json!({
                "max_bytes_per_client": max_client_bytes,
                "staged_bytes": client.bytes,
            })));
        }
        client
            .sessions
            .entry(session_id.to_string())
            .or_default()
            .entry(object.to_string())
            .or_default()
            .insert(index, size);
        client.bytes += size;
        client
            .pending
            .insert((session_id.to_string(), object.to_string(), index), size);
        Ok(Admission::New)
    }

    /// A chunk admitted as [`Admission::New`] was written: the store now shows it.
    pub(crate) fn confirm_chunk(
        &self,
        client_id: &str,
        session_id: &str,
        object: &str,
        index: u32,
    ) {
        if let Some(client) = self.lock().clients.get_mut(client_id) {
            client
                .pending
                .remove(&(session_id.to_string(), object.to_string(), index));
        }
    }

    /// Takes back a chunk admitted as [`Admission::New`] whose write failed (or was refused),
    /// dropping the entries it leaves empty.
    pub(crate) fn release_chunk(
        &self,
        client_id: &str,
        session_id: &str,
        object: &str,
        index: u32,
    ) {
        let mut s = self.lock();
        let Some(client) = s.clients.get_mut(client_id) else {
            return;
        };
        // Only this process's own reservation is taken back: after a refresh the index may
        // hold a chunk another writer stored.
        if client
            .pending
            .remove(&(session_id.to_string(), object.to_string(), index))
            .is_none()
        {
            return;
        }
        let Some(objects) = client.sessions.get_mut(session_id) else {
            return;
        };
        if let Some(chunks) = objects.get_mut(object) {
            client.bytes -= chunks.remove(index);
            if chunks.sizes.is_empty() {
                objects.remove(object);
            }
        }
        if objects.is_empty() {
            client.sessions.remove(session_id);
        }
    }

    /// Chunks of a client's object this process knows to be staged.
    pub(crate) fn received(&self, client_id: &str, session_id: &str, object: &str) -> u32 {
        let s = self.lock();
        s.clients
            .get(client_id)
            .and_then(|c| c.sessions.get(session_id))
            .and_then(|objects| objects.get(object))
            .map_or(0, |c| u32::try_from(c.sizes.len()).unwrap_or(u32::MAX))
    }

    /// Forgets a deleted session.
    pub(crate) fn remove_session(&self, client_id: &str, session_id: &str) {
        let mut s = self.lock();
        s.epoch += 1;
        if let Some(client) = s.clients.get_mut(client_id)
            && let Some(objects) = client.sessions.remove(session_id)
        {
            client.bytes -= objects.values().map(|c| c.bytes).sum::<u64>();
        }
    }

    /// Forgets a client whose sessions were all deleted.
    pub(crate) fn remove_client(&self, client_id: &str) {
        let mut s = self.lock();
        s.epoch += 1;
        s.clients.remove(client_id);
    }

    /// Whether this process has an entry for the Step 0 upload.
    pub(crate) fn upload_seeded(&self, provisioning_id: &str) -> bool {
        self.lock().uploads.contains_key(provisioning_id)
    }

    /// Installs a Step 0 upload's entry from a listing of its chunks (see
    /// [`Ledger::seed_client`]).
    pub(crate) fn seed_upload(
        &self,
        provisioning_id: &str,
        epoch: u64,
        chunks: impl IntoIterator<Item = (u32, u64)>,
    ) -> bool {
        let mut s = self.lock();
        if s.uploads.contains_key(provisioning_id) {
            return true;
        }
        if s.epoch != epoch {
            return false;
        }
        evict_oldest(&mut s.uploads, |u| u.last_use);
        s.tick += 1;
        let mut upload = Upload {
            last_use: s.tick,
            ..Upload::default()
        };
        for (index, size) in chunks {
            upload.chunks.insert(index, size);
        }
        s.uploads.insert(provisioning_id.to_string(), upload);
        true
    }

    /// Admits one chunk of a key bundle: a new index must keep the staged bytes within
    /// `bundle_bytes` (`ERROR_OBJECT_TOO_LARGE`).
    pub(crate) fn admit_upload_chunk(
        &self,
        provisioning_id: &str,
        index: u32,
        size: u64,
        bundle_bytes: u64,
    ) -> Result<Admission, ToolError> {
        let mut s = self.lock();
        s.tick += 1;
        let tick = s.tick;
        let Some(upload) = s.uploads.get_mut(provisioning_id) else {
            return Ok(Admission::Unseeded);
        };
        upload.last_use = tick;
        if upload.chunks.sizes.contains_key(&index) {
            return Ok(Admission::Present);
        }
        if upload.chunks.bytes.saturating_add(size) > bundle_bytes {
            return Err(ToolError::new(
                ErrorCode::ObjectTooLarge,
                format!("the chunks run past bundle_bytes = {bundle_bytes}"),
            ));
        }
        upload.chunks.insert(index, size);
        Ok(Admission::New)
    }

    /// Takes back a key-bundle chunk admitted as [`Admission::New`] whose write failed.
    pub(crate) fn release_upload_chunk(&self, provisioning_id: &str, index: u32) {
        if let Some(upload) = self.lock().uploads.get_mut(provisioning_id) {
            upload.chunks.remove(index);
        }
    }

    /// Chunks of a Step 0 upload this process knows to be staged.
    pub(crate) fn upload_received(&self, provisioning_id: &str) -> u32 {
        self.lock().uploads.get(provisioning_id).map_or(0, |u| {
            u32::try_from(u.chunks.sizes.len()).unwrap_or(u32::MAX)
        })
    }

    /// Forgets a committed or expired Step 0 upload.
    pub(crate) fn remove_upload(&self, provisioning_id: &str) {
        let mut s = self.lock();
        s.epoch += 1;
        s.uploads.remove(provisioning_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::object_key;

    #[test]
    fn chunks_count_once_and_quotas_hold() {
        let l = Ledger::default();
        let admit = |session: &str, index, size| {
            l.admit_chunk("c", session, &object_key("a"), index, size, 100, 150, true)
        };
        assert_eq!(admit("s", 0, 10).ok(), Some(Admission::Unseeded));
        assert!(l.seed_client("c", l.epoch(), vec![("s".into(), object_key("a"), 0, 40)]));
        assert_eq!(admit("s", 0, 40).ok(), Some(Admission::Present));
        assert_eq!(admit("s", 1, 50).ok(), Some(Admission::New));
        assert_eq!(l.received("c", "s", &object_key("a")), 2);
        assert_eq!(
            admit("s", 2, 11).map_err(|e| e.error_code),
            Err(ErrorCode::ObjectTooLarge)
        );
        assert_eq!(admit("t", 0, 60).ok(), Some(Admission::New));
        assert_eq!(
            admit("u", 0, 1).map_err(|e| e.error_code),
            Err(ErrorCode::QuotaExceeded)
        );
        l.release_chunk("c", "t", &object_key("a"), 0);
        assert!(!l.lock().clients["c"].sessions.contains_key("t"));
        assert_eq!(admit("u", 0, 60).ok(), Some(Admission::New));
        l.remove_session("c", "s");
        assert_eq!(l.received("c", "s", &object_key("a")), 0);
        assert_eq!(admit("v", 0, 90).ok(), Some(Admission::New));
    }

    #[test]
    fn a_seed_listed_before_a_deletion_is_refused() {
        let l = Ledger::default();
        let epoch = l.epoch();
        l.remove_session("c", "s");
        assert!(!l.seed_client("c", epoch, vec![("s".into(), object_key("a"), 0, 1)]));
        assert!(l.seed_client("c", l.epoch(), Vec::new()));
        assert!(l.seed_upload("p", l.epoch(), [(0, 5), (1, 5)]));
        assert_eq!(l.upload_received("p"), 2);
        assert_eq!(
            l.admit_upload_chunk("p", 2, 1, 10)
                .map_err(|e| e.error_code),
            Err(ErrorCode::ObjectTooLarge)
        );
        assert_eq!(
            l.admit_upload_chunk("p", 1, 5, 10).ok(),
            Some(Admission::Present)
        );
    }

    #[test]
    fn a_refresh_keeps_unwritten_chunks_and_releases_only_them() {
        let l = Ledger::with_refresh(Some(Duration::ZERO));
        let admit = |session: &str, index, size, refresh| {
            l.admit_chunk(
                "c",
                session,
                &object_key("a"),
                index,
                size,
                100,
                150,
                refresh,
            )
        };
        assert_eq!(admit("s", 0, 10, true).ok(), Some(Admission::Unseeded));
        assert!(l.seed_client("c", l.epoch(), Vec::new()));
        // Admitted, not written yet.
        assert_eq!(admit("s", 0, 60, false).ok(), Some(Admission::New));
        // Due for a refresh (interval 0): the next admission lists again, and the listing
        // shows another replica's chunk but not the one this process is still writing.
        assert_eq!(admit("s", 1, 60, true).ok(), Some(Admission::Unseeded));
        assert!(l.seed_client("c", l.epoch(), vec![("s".into(), object_key("a"), 2, 20)]));
        assert_eq!(l.received("c", "s", &object_key("a")), 2);
        // Both count against the quota: 60 + 20 staged, 80 more would pass 150.
        assert_eq!(
            admit("t", 0, 80, false).map_err(|e| e.error_code),
            Err(ErrorCode::QuotaExceeded)
        );
        // A failed write takes back only this process's own reservation.
        l.release_chunk("c", "s", &object_key("a"), 2);
        assert_eq!(l.received("c", "s", &object_key("a")), 2);
        l.release_chunk("c", "s", &object_key("a"), 0);
        assert_eq!(l.received("c", "s", &object_key("a")), 1);
        // A confirmed chunk is the store's: a later release of it is a no-op.
        assert_eq!(admit("t", 0, 80, false).ok(), Some(Admission::New));
        l.confirm_chunk("c", "t", &object_key("a"), 0);
        l.release_chunk("c", "t", &object_key("a"), 0);
        assert_eq!(l.received("c", "t", &object_key("a")), 1);
    }
}
