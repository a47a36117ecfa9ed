//! The one owner of the store's layout: every object path the server reads, writes, lists or
//! deletes is built here, and nowhere else, so the tree below is the whole truth about it.
//!
//! Every segment is validated by `cipherinfer-protocol` before it reaches a path (ids and names
//! are `[A-Za-z0-9._-]`), so no name can climb out of its prefix. The layout is a storage
//! format: stores written by earlier versions must keep working, so the `tests` module pins
//! concrete paths.
//!
//! ```text
//! clients/<client_id>/record.json                          client record (token hash, key version)
//! clients/<client_id>/keys/v<version>.bin                  evaluation-key bundle
//! provisioning/<provisioning_id>/meta.json                 a Step 0 upload in progress
//! provisioning/<provisioning_id>/chunks/<index:05>         its chunks
//! owners/<session_id>                                      the client that created the session
//! sessions/<client_id>/<session_id>/objects/<file_name>/total          total_chunks of the object
//! sessions/<client_id>/<session_id>/objects/<file_name>/<index:05>     one chunk
//! sessions/<client_id>/<session_id>/results/<result_id>    an output kept by reference
//! sessions/<client_id>/<session_id>/touched                last use (Unix milliseconds)
//! tombstones/sessions/<session_id>                         an expired session removed by GC (JSON)
//! tombstones/provisioning/<provisioning_id>                an expired Step 0 upload removed by GC
//! keystore/<segments...>                                   operator-placed bundles for `key_uri`
//! nonces/<window>/<digest>                                 a signed call's nonce, claimed once by
//!                                                          whichever replica gets it (shared
//!                                                          stores; window = timestamp / 60 s,
//!                                                          digest = SHA-256 of client id and nonce)
//! leases/gc                                                the replica collecting garbage and
//!                                                          until when (shared stores, JSON)
//! server-identity.key                                      the server's signing seed (not an object:
//!                                                          `server` writes it beside a local store)
//! ```
//!
//! The in-memory ledger (`usage`) keys a session's staged items by their place below the
//! session directory ([`object_key`], [`result_key`]), so a listing maps onto it directly
//! ([`staged_item`]).

use object_store::path::Path;

use crate::usage::SeedItem;

const CLIENTS: &str = "clients";
const RECORD: &str = "record.json";
const KEYS: &str = "keys";
const PROVISIONING: &str = "provisioning";
const META: &str = "meta.json";
const CHUNKS: &str = "chunks";
const OWNERS: &str = "owners";
const SESSIONS: &str = "sessions";
const OBJECTS: &str = "objects";
const TOTAL: &str = "total";
const RESULTS: &str = "results";
const TOUCHED: &str = "touched";
const TOMBSTONES: &str = "tombstones";
const KEYSTORE: &str = "keystore";
const NONCES: &str = "nonces";
const LEASES: &str = "leases";
const GC_LEASE: &str = "gc";

/// Width of a nonce window: nonces are grouped by their request's timestamp so that garbage
/// collection drops whole windows once no timestamp in them can be accepted.
pub(crate) const NONCE_WINDOW_MS: u64 = 60_000;

/// Builds a path from validated segments.
pub fn path(segments: &[&str]) -> Path {
    Path::from_iter(segments.iter().copied())
}

/// Zero-padded chunk index, so listings sort numerically.
pub fn chunk_name(index: u32) -> String {
    format!("{index:05}")
}

/// Chunk `index` of a chunked object whose chunks live directly under `dir`.
pub(crate) fn chunk(dir: &Path, index: u32) -> Path {
    dir.clone().join(chunk_name(index))
}

/// The chunk index a chunk's path names; `None` for anything else in a chunk directory (such as
/// an object's `total`).
pub(crate) fn chunk_index(chunk: &Path) -> Option<u32> {
    chunk.filename()?.parse().ok()
}

// ----------------------------------------------------------------------------------------------
// clients/

/// A client's record: token hash, active key version, pinned identity.
pub(crate) fn client_record(client_id: &str) -> Path {
    path(&[CLIENTS, client_id, RECORD])
}

/// Every evaluation-key bundle of a client.
pub(crate) fn client_keys_dir(client_id: &str) -> Path {
    path(&[CLIENTS, client_id, KEYS])
}

/// A client's evaluation-key bundle of one key version.
pub(crate) fn client_keys(client_id: &str, key_version: u32) -> Path {
    path(&[CLIENTS, client_id, KEYS, &format!("v{key_version}.bin")])
}

// ----------------------------------------------------------------------------------------------
// provisioning/ and keystore/

/// Every Step 0 upload in progress, one child per provisioning id.
pub(crate) fn provisioning_root() -> Path {
    path(&[PROVISIONING])
}

/// Everything of one Step 0 upload (deleted as a whole on commit or expiry).
pub(crate) fn provisioning(provisioning_id: &str) -> Path {
    path(&[PROVISIONING, provisioning_id])
}

/// What `provision_keys_begin` announced for a Step 0 upload (JSON).
pub(crate) fn provisioning_meta(provisioning_id: &str) -> Path {
    path(&[PROVISIONING, provisioning_id, META])
}

/// The staged chunks of a Step 0 upload's key bundle.
pub(crate) fn provisioning_chunks(provisioning_id: &str) -> Path {
    path(&[PROVISIONING, provisioning_id, CHUNKS])
}

/// One staged chunk of a Step 0 upload's key bundle.
pub(crate) fn provisioning_chunk(provisioning_id: &str, index: u32) -> Path {
    chunk(&provisioning_chunks(provisioning_id), index)
}

/// A key bundle the operator placed in the key store, named by a `key_uri`'s segments.
pub(crate) fn keystore_bundle(segments: &[String]) -> Path {
    Path::from_iter(std::iter::once(KEYSTORE).chain(segments.iter().map(String::as_str)))
}

// ----------------------------------------------------------------------------------------------
// owners/ and sessions/

/// Every session ownership record, one per session id.
pub(crate) fn owners_root() -> Path {
    path(&[OWNERS])
}

/// Which client created a session (its client id as bytes).
pub(crate) fn session_owner(session_id: &str) -> Path {
    path(&[OWNERS, session_id])
}

/// Every client with sessions, one child per client id.
pub(crate) fn sessions_root() -> Path {
    path(&[SESSIONS])
}

/// Every session of a client, one child per session id.
pub(crate) fn client_sessions(client_id: &str) -> Path {
    path(&[SESSIONS, client_id])
}

/// Everything of one session: staged objects, results, last use.
pub(crate) fn session(client_id: &str, session_id: &str) -> Path {
    path(&[SESSIONS, client_id, session_id])
}

/// When a session was last used (Unix milliseconds as text; seconds in older stores).
pub(crate) fn session_touched(client_id: &str, session_id: &str) -> Path {
    path(&[SESSIONS, client_id, session_id, TOUCHED])
}

/// A session's staged ciphertext objects, one child per file name.
pub(crate) fn session_objects(client_id: &str, session_id: &str) -> Path {
    path(&[SESSIONS, client_id, session_id, OBJECTS])
}

/// One staged ciphertext object: its `total` and its chunks.
pub(crate) fn session_object(client_id: &str, session_id: &str, file_name: &str) -> Path {
    path(&[SESSIONS, client_id, session_id, OBJECTS, file_name])
}

/// The `total_chunks` first declared for a staged object (decimal text).
pub(crate) fn object_total(client_id: &str, session_id: &str, file_name: &str) -> Path {
    path(&[SESSIONS, client_id, session_id, OBJECTS, file_name, TOTAL])
}

/// One chunk of a staged ciphertext object.
pub(crate) fn object_chunk(client_id: &str, session_id: &str, file_name: &str, index: u32) -> Path {
    chunk(&session_object(client_id, session_id, file_name), index)
}

/// A session's outputs kept by reference, one object per result id.
pub(crate) fn session_results(client_id: &str, session_id: &str) -> Path {
    path(&[SESSIONS, client_id, session_id, RESULTS])
}

/// One output kept by reference (the serialized ciphertext).
pub(crate) fn session_result(client_id: &str, session_id: &str, result_id: &str) -> Path {
    path(&[SESSIONS, client_id, session_id, RESULTS, result_id])
}

/// The ledger's key for a staged ciphertext object: its place below the session directory.
pub(crate) fn object_key(file_name: &str) -> String {
    format!("{OBJECTS}/{file_name}")
}

/// The ledger's key for a by-reference result: its place below the session directory.
pub(crate) fn result_key(result_id: &str) -> String {
    format!("{RESULTS}/{result_id}")
}

/// What a path listed under [`client_sessions`] holds, as the ledger counts it: (session id,
/// ledger key, chunk index, `size`); `None` for anything the ledger does not count (`touched`,
/// an object's `total`).
pub(crate) fn staged_item(client_sessions: &Path, item: &Path, size: u64) -> Option<SeedItem> {
    let parts: Vec<String> = item
        .prefix_match(client_sessions)?
        .map(|part| part.as_ref().to_string())
        .collect();
    match parts.as_slice() {
        [session, kind, name, index] if kind == OBJECTS => {
            Some((session.clone(), object_key(name), index.parse().ok()?, size))
        }
        [session, kind, id] if kind == RESULTS => Some((session.clone(), result_key(id), 0, size)),
        _ => None,
    }
}

// ----------------------------------------------------------------------------------------------
// nonces/ and leases/

/// Every nonce window, one child per window number.
pub(crate) fn nonces_root() -> Path {
    path(&[NONCES])
}

/// The nonces of one window (timestamps `window · NONCE_WINDOW_MS` onwards).
pub(crate) fn nonce_window(window: u64) -> Path {
    path(&[NONCES, &window.to_string()])
}

/// A signed call's nonce, claimed with create-if-absent.
pub(crate) fn nonce(timestamp_ms: u64, digest: &str) -> Path {
    nonce_window(timestamp_ms / NONCE_WINDOW_MS).join(digest)
}

/// The garbage collector's lease.
pub(crate) fn gc_lease() -> Path {
    path(&[LEASES, GC_LEASE])
}

// ----------------------------------------------------------------------------------------------
// tombstones/

/// What an expired-and-removed tombstone stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TombstoneKind {
    /// A session.
    Session,
    /// A Step 0 upload.
    Provisioning,
}

/// Every tombstone, of both kinds.
pub(crate) fn tombstones_root() -> Path {
    path(&[TOMBSTONES])
}

/// The tombstone of an expired session or Step 0 upload (JSON).
pub(crate) fn tombstone(kind: TombstoneKind, id: &str) -> Path {
    let kind = match kind {
        TombstoneKind::Session => SESSIONS,
        TombstoneKind::Provisioning => PROVISIONING,
    };
    path(&[TOMBSTONES, kind, id])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout is a storage format: these paths must not change.
    #[test]
    fn layout_is_pinned() {
        let pinned = [
            (client_record("alice"), "clients/alice/record.json"),
            (client_keys_dir("alice"), "clients/alice/keys"),
            (client_keys("alice", 3), "clients/alice/keys/v3.bin"),
            (provisioning_root(), "provisioning"),
            (provisioning("p1"), "provisioning/p1"),
            (provisioning_meta("p1"), "provisioning/p1/meta.json"),
            (provisioning_chunks("p1"), "provisioning/p1/chunks"),
            (provisioning_chunk("p1", 7), "provisioning/p1/chunks/00007"),
            (
                keystore_bundle(&["team".into(), "k.bin".into()]),
                "keystore/team/k.bin",
            ),
            (owners_root(), "owners"),
            (session_owner("s1"), "owners/s1"),
            (sessions_root(), "sessions"),
            (client_sessions("alice"), "sessions/alice"),
            (session("alice", "s1"), "sessions/alice/s1"),
            (session_touched("alice", "s1"), "sessions/alice/s1/touched"),
            (session_objects("alice", "s1"), "sessions/alice/s1/objects"),
            (
                session_object("alice", "s1", "input-0.ct"),
                "sessions/alice/s1/objects/input-0.ct",
            ),
            (
                object_total("alice", "s1", "input-0.ct"),
                "sessions/alice/s1/objects/input-0.ct/total",
            ),
            (
                object_chunk("alice", "s1", "input-0.ct", 12),
                "sessions/alice/s1/objects/input-0.ct/00012",
            ),
            (session_results("alice", "s1"), "sessions/alice/s1/results"),
            (
                session_result("alice", "s1", "r1"),
                "sessions/alice/s1/results/r1",
            ),
            (nonces_root(), "nonces"),
            (nonce_window(3), "nonces/3"),
            (nonce(180_001, "ab12"), "nonces/3/ab12"),
            (gc_lease(), "leases/gc"),
            (tombstones_root(), "tombstones"),
            (
                tombstone(TombstoneKind::Session, "s1"),
                "tombstones/sessions/s1",
            ),
            (
                tombstone(TombstoneKind::Provisioning, "p1"),
                "tombstones/provisioning/p1",
            ),
        ];
        for (built, want) in pinned {
            assert_eq!(built.as_ref(), want);
        }
        assert_eq!(chunk_name(123_456), "123456");
        assert_eq!(chunk_index(&provisioning_chunk("p1", 42)), Some(42));
        assert_eq!(chunk_index(&object_total("alice", "s1", "x")), None);
    }

    #[test]
    fn listings_map_onto_ledger_keys() {
        let base = client_sessions("alice");
        let chunk = object_chunk("alice", "s1", "input-0.ct", 2);
        assert_eq!(
            staged_item(&base, &chunk, 10),
            Some(("s1".into(), object_key("input-0.ct"), 2, 10))
        );
        let result = session_result("alice", "s1", "r1");
        assert_eq!(
            staged_item(&base, &result, 5),
            Some(("s1".into(), result_key("r1"), 0, 5))
        );
        assert_eq!(object_key("input-0.ct"), "objects/input-0.ct");
        assert_eq!(result_key("r1"), "results/r1");
        for uncounted in [
            object_total("alice", "s1", "input-0.ct"),
            session_touched("alice", "s1"),
            client_record("alice"),
        ] {
            assert_eq!(staged_item(&base, &uncounted, 1), None);
        }
    }
}
