#![no_main]
//! The remote server's chunk staging, driven through the real `Service` (its in-memory ledger of
//! received chunks is private, so it is exercised through the tools that use it) over an
//! in-memory object store, against a reference model of what the server must do.
//!
//! Each input is a server configuration (chunk, object, per-client byte, object and session
//! limits) and a sequence of operations by two provisioned clients: chunk uploads (any index,
//! including out of range; any `total_chunks`, including huge or changing ones; re-sends with the
//! same or different bytes; arbitrary Base64 text), session status queries, session deletions,
//! and restarts (a new `Service` over the same store, whose ledger must re-learn what is
//! staged). After every operation the outcome must be exactly the model's: the same error code,
//! or an acknowledgement with the same received count (never above `total_chunks`), completeness
//! and duplicate flag; status lists exactly the staged chunks, their bytes (duplicates counted
//! once) and the missing indices; limits and quotas hold.
//!
//! The models are compiled once per process (the shipped `mnist-cnn`; only its parameter set is
//! used, for Step 0 with an empty key bundle); both clients go through Step 0 once, and each
//! input starts from a fresh store holding a copy of what that left.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use cipherinfer_ckks::EvaluationKeys;
use cipherinfer_ckks::serialization::ToBytes;
use cipherinfer_ckks_fuzz::{Input, reference};
use cipherinfer_protocol::remote::{ObjectStatus, SessionStatus, UploadChunkAck};
use cipherinfer_protocol::validate::{
    MIN_CHUNK_BYTES, decode_base64_limited, encode_base64, sha256_hex,
};
use cipherinfer_protocol::{AuthToken, ErrorCode, Limits, ToolError};
use cipherinfer_remote::{Registry, ServiceConfig, Store};
use libfuzzer_sys::fuzz_target;
use object_store::memory::InMemory;
use object_store::path::Path;

/// The model whose parameter set the clients provision keys for.
const MODEL: &str = "mnist-cnn";
/// Most operations per input.
const MAX_OPS: usize = 48;
const CLIENTS: [&str; 2] = ["alice", "bob"];
const SESSIONS: [&str; 3] = ["s0", "s1", "s2"];
const OBJECTS: [&str; 3] = ["input-0.ct", "input-1.ct", "extra.bin"];

/// Every call into the service goes through here, so a change of the methods' signatures is
/// adapted in one place. Arguments are built from JSON, so new optional fields take defaults.
mod api {
    use cipherinfer_protocol::remote::{
        DeleteSessionResult, SessionStatus, UploadChunkAck, UploadCiphertextChunkArgs,
    };
    use cipherinfer_protocol::validate::{encode_base64, sha256_hex};
    use std::sync::{Arc, OnceLock};

    use cipherinfer_protocol::integrity::IdentityKey;
    use cipherinfer_protocol::{AuthToken, ToolError, parse_arguments};
    use cipherinfer_remote::{Caller, Registry, Service, ServiceConfig, Store};
    use serde_json::{Value, json};

    fn args<T: serde::de::DeserializeOwned>(v: Value) -> T {
        parse_arguments(v).expect("well-formed arguments")
    }

    /// Step 0 for `client` with `bundle` in chunks of at most `max_chunk` bytes; returns the
    /// bearer token.
    pub async fn enroll(
        service: &Service,
        client: &str,
        (algorithm_id, parameter_id): (&str, &str),
        bundle: &[u8],
        max_chunk: usize,
    ) -> AuthToken {
        let caller = Caller::unknown();
        let parts: Vec<&[u8]> = bundle.chunks(max_chunk).collect();
        let begin = service
            .provision_begin(
                &args(json!({
                    "client_id": client, "algorithm_id": algorithm_id,
                    "parameter_id": parameter_id, "bundle_bytes": bundle.len(),
                    "bundle_sha256": sha256_hex(bundle), "total_chunks": parts.len(),
                })),
                &caller,
            )
            .await
            .expect("provision_keys_begin");
        let id = begin.provisioning_id;
        for (i, part) in parts.iter().enumerate() {
            service
                .provision_chunk(
                    &args(json!({
                        "client_id": client, "provisioning_id": id, "chunk_index": i,
                        "total_chunks": parts.len(), "chunk_b64": encode_base64(part),
                    })),
                    &caller,
                )
                .await
                .expect("provision_keys_chunk");
        }
        service
            .provision_commit(
                &args(json!({"client_id": client, "provisioning_id": id})),
                &caller,
            )
            .await
            .expect("provision_keys_commit")
            .auth_token
    }

    /// A service that accepts unsigned calls (request signing is not what this target tests),
    /// with one server identity for the whole process (generating one per input is slow).
    pub fn service(store: Store, registry: Arc<Registry>, mut config: ServiceConfig) -> Service {
        static IDENTITY: OnceLock<Arc<IdentityKey>> = OnceLock::new();
        let identity = IDENTITY.get_or_init(|| Arc::new(IdentityKey::generate().expect("key")));
        config.require_signatures = false;
        config.server_identity = Some(identity.clone());
        Service::new(store, registry, config).expect("service")
    }

    /// `upload_ciphertext_chunk`, with `chunk_sha256` when given.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload(
        service: &Service,
        client: &str,
        token: &AuthToken,
        session: &str,
        file_name: &str,
        index: u32,
        total: u32,
        chunk_b64: &str,
        chunk_sha256: Option<&str>,
    ) -> Result<UploadChunkAck, ToolError> {
        let mut v = json!({
            "client_id": client, "session_id": session, "file_name": file_name,
            "chunk_index": index, "total_chunks": total, "chunk_b64": chunk_b64,
            "auth_token": token.expose(),
        });
        if let Some(d) = chunk_sha256 {
            v["chunk_sha256"] = json!(d);
        }
        let a: UploadCiphertextChunkArgs = args(v);
        service.upload_chunk(&a, &Caller::unknown()).await
    }

    fn session_args(client: &str, token: &AuthToken, session: &str) -> Value {
        json!({"client_id": client, "session_id": session, "auth_token": token.expose()})
    }

    /// `get_session_status`.
    pub async fn status(
        service: &Service,
        client: &str,
        token: &AuthToken,
        session: &str,
    ) -> Result<SessionStatus, ToolError> {
        service
            .session_status(
                &args(session_args(client, token, session)),
                &Caller::unknown(),
            )
            .await
    }

    /// `delete_session`.
    pub async fn delete(
        service: &Service,
        client: &str,
        token: &AuthToken,
        session: &str,
    ) -> Result<DeleteSessionResult, ToolError> {
        service
            .delete_session(
                &args(session_args(client, token, session)),
                &Caller::unknown(),
            )
            .await
    }
}

/// What the whole process shares.
struct Shared {
    runtime: tokio::runtime::Runtime,
    registry: Arc<Registry>,
    /// Everything a store holds once both clients went through Step 0 (with an empty, valid
    /// key bundle for the model's parameters): copied into each input's fresh store.
    enrolled: Vec<(Path, Vec<u8>)>,
    /// The clients' bearer tokens.
    tokens: Vec<AuthToken>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let registry = Arc::new(Registry::shipped(&[MODEL.to_string()]).expect("model compiles"));
        let served = registry.get(MODEL).expect("served");
        let bundle = EvaluationKeys::new(served.params().clone()).to_bytes();
        let ids = (
            served.info.algorithm_id.to_string(),
            served.info.parameter_id.clone(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (enrolled, tokens) = runtime.block_on(async {
            let store = Store::new(Arc::new(InMemory::new()));
            let service = api::service(store.clone(), registry.clone(), ServiceConfig::default());
            let mut tokens = Vec::new();
            for c in CLIENTS {
                let ids = (ids.0.as_str(), ids.1.as_str());
                tokens.push(api::enroll(&service, c, ids, &bundle, bundle.len()).await);
            }
            let mut enrolled = Vec::new();
            for (p, ..) in store.list(&Path::default()).await.expect("list") {
                let bytes = store.get(&p).await.expect("get").expect("listed");
                enrolled.push((p, bytes));
            }
            (enrolled, tokens)
        });
        Shared {
            runtime,
            registry,
            enrolled,
            tokens,
        }
    })
}

/// One staged object in the model.
#[derive(Debug, Default)]
struct Object {
    total: u32,
    chunks: BTreeMap<u32, Vec<u8>>,
}

impl Object {
    fn bytes(&self) -> u64 {
        self.chunks.values().map(|c| c.len() as u64).sum()
    }
}

/// The fields of an upload acknowledgement the model predicts (compared field by field, so
/// fields added to `UploadChunkAck` later do not break the target).
#[derive(Debug, PartialEq, Eq)]
struct Ack {
    file_name: String,
    chunk_index: u32,
    chunk_bytes: u64,
    total_chunks: u32,
    received_chunks: u32,
    object_complete: bool,
    duplicate: bool,
}

impl From<UploadChunkAck> for Ack {
    fn from(a: UploadChunkAck) -> Self {
        assert!(a.ok);
        Self {
            file_name: a.file_name,
            chunk_index: a.chunk_index,
            chunk_bytes: a.chunk_bytes,
            total_chunks: a.total_chunks,
            received_chunks: a.received_chunks,
            object_complete: a.object_complete,
            duplicate: a.duplicate,
        }
    }
}

/// What the server must hold.
#[derive(Debug, Default)]
struct Model {
    /// Session → owning client (kept from the first chunk's ownership claim until deletion).
    owners: HashMap<&'static str, usize>,
    /// (client, session) → objects that got a `total_chunks`.
    staged: HashMap<(usize, &'static str), BTreeMap<&'static str, Object>>,
}

impl Model {
    fn client_bytes(&self, client: usize) -> u64 {
        self.staged
            .iter()
            .filter(|((c, _), _)| *c == client)
            .flat_map(|(_, objects)| objects.values())
            .map(Object::bytes)
            .sum()
    }

    /// Sessions of the client that hold something in the store.
    fn live_sessions(&self, client: usize) -> usize {
        self.staged
            .iter()
            .filter(|((c, _), objects)| *c == client && !objects.is_empty())
            .count()
    }

    /// The outcome `upload_ciphertext_chunk` must have; applies it.
    #[allow(clippy::too_many_arguments)]
    fn upload(
        &mut self,
        config: &ServiceConfig,
        client: usize,
        session: &'static str,
        file: &'static str,
        index: u32,
        total: u32,
        (text, digest): (&str, Option<&str>),
    ) -> Result<Ack, ErrorCode> {
        let limits = &config.limits;
        if digest.is_some_and(|d| !reference::sha256_hex_ok(d)) {
            return Err(ErrorCode::InvalidArgument);
        }
        let max_total = u32::try_from(
            u128::from(limits.max_object_bytes)
                .div_ceil(u128::from(MIN_CHUNK_BYTES))
                .max(1),
        )
        .unwrap_or(u32::MAX);
        if total == 0 || total > max_total || index >= total {
            return Err(ErrorCode::InvalidChunkIndex);
        }
        let bytes =
            decode_base64_limited(text, limits.max_chunk_bytes).map_err(|e| e.error_code)?;
        if digest.is_some_and(|d| d != sha256_hex(&bytes)) {
            return Err(ErrorCode::IntegrityMismatch);
        }
        let size = bytes.len() as u64;
        let existing = self
            .staged
            .get(&(client, session))
            .and_then(|o| o.get(file));
        let present = existing.and_then(|o| o.chunks.get(&index)).cloned();
        if present.is_none() {
            let object_bytes = existing.map_or(0, Object::bytes);
            if u128::from(object_bytes) + u128::from(size) > u128::from(limits.max_object_bytes) {
                return Err(ErrorCode::ObjectTooLarge);
            }
            if u128::from(self.client_bytes(client)) + u128::from(size)
                > u128::from(config.max_bytes_per_client)
            {
                return Err(ErrorCode::QuotaExceeded);
            }
        }
        match self.owners.get(session) {
            Some(&owner) if owner != client => return Err(ErrorCode::SessionForbidden),
            Some(_) => {}
            None => {
                if self.live_sessions(client) >= config.max_sessions_per_client {
                    return Err(ErrorCode::QuotaExceeded);
                }
                self.owners.insert(session, client);
            }
        }
        let objects = self.staged.entry((client, session)).or_default();
        match objects.get(file) {
            Some(o) if o.total != total => return Err(ErrorCode::TotalChunksMismatch),
            Some(_) => {}
            None => {
                if objects.len() >= limits.max_objects_per_session as usize {
                    return Err(ErrorCode::QuotaExceeded);
                }
                objects.insert(
                    file,
                    Object {
                        total,
                        chunks: BTreeMap::new(),
                    },
                );
            }
        }
        let object = objects.get_mut(file).expect("just ensured");
        let duplicate = match present {
            Some(stored) if stored == bytes => true,
            Some(_) => return Err(ErrorCode::ChunkConflict),
            None => {
                object.chunks.insert(index, bytes);
                false
            }
        };
        let received = object.chunks.len() as u32;
        Ok(Ack {
            file_name: file.to_string(),
            chunk_index: index,
            chunk_bytes: size,
            total_chunks: total,
            received_chunks: received,
            object_complete: received >= total,
            duplicate,
        })
    }

    /// The objects `get_session_status` must list (sorted by name), or its error.
    fn status(&self, client: usize, session: &str) -> Result<Vec<Listed>, ErrorCode> {
        match self.owners.get(session) {
            None => Err(ErrorCode::UnknownSession),
            Some(&owner) if owner != client => Err(ErrorCode::SessionForbidden),
            Some(_) => Ok(self
                .staged
                .get(&(client, session))
                .into_iter()
                .flatten()
                .map(|(name, o)| {
                    let received: Vec<u32> = o.chunks.keys().copied().collect();
                    (
                        name.to_string(),
                        o.total,
                        received.len() as u32,
                        reference::missing(o.total, &received),
                        o.bytes(),
                    )
                })
                .collect()),
        }
    }
}

/// One object of a session status: name, total chunks, received chunks, missing indices, bytes.
type Listed = (String, u32, u32, Vec<u32>, u64);

fn listed(o: &ObjectStatus) -> Listed {
    (
        o.file_name.clone(),
        o.total_chunks,
        o.received_chunks,
        o.missing_chunks.clone(),
        o.bytes,
    )
}

/// Deterministic chunk bytes: `variant` tells re-sends with equal bytes from conflicting ones.
fn payload(variant: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| variant.wrapping_add((i as u8).wrapping_mul(31)) ^ (i >> 8) as u8)
        .collect()
}

fn config(input: &mut Input<'_>) -> ServiceConfig {
    const CHUNK: [u64; 8] = [8, 16, 100, 1024, 4096, 40_000, 65_536, 100_000];
    let mut config = ServiceConfig::default();
    let c = input.u8();
    let object = input.u16();
    let client = input.u16();
    config.limits = Limits {
        max_chunk_bytes: CHUNK[usize::from(c & 7)],
        // Up to five 64 KiB units (so up to five or six chunks) plus a remainder: small limits
        // allow one chunk only, larger ones several.
        max_object_bytes: (u64::from(c >> 3 & 7) % 6) * MIN_CHUNK_BYTES + u64::from(object) + 1,
        max_objects_per_session: u32::from(c >> 6) + 1,
        ..Limits::default()
    };
    let sessions = input.u8();
    config.max_sessions_per_client = usize::from(sessions % 3) + 1;
    config.max_bytes_per_client = u64::from(sessions >> 2) * 16 * 1024 + u64::from(client);
    config.max_eval_threads = 1;
    config
}

/// `total_chunks` and `chunk_index`: mostly small, sometimes out of range or huge.
fn coordinates(input: &mut Input<'_>) -> (u32, u32) {
    let t = input.u8();
    let total = match t {
        0..=239 => u32::from(t % 7) + 1,
        240..=247 => 0,
        248..=251 => u32::from(input.u16()),
        _ => input.u32(),
    };
    let i = input.u8();
    let index = match i {
        0..=247 => u32::from(i) % total.saturating_add(2).min(9),
        _ => input.u32(),
    };
    (index, total)
}

/// A chunk's Base64 text and, sometimes, its `chunk_sha256` (right, wrong or malformed).
fn chunk(input: &mut Input<'_>) -> (String, Option<String>) {
    let kind = input.u8();
    let (text, bytes) = if kind >= 0xf0 {
        // Arbitrary text: invalid, empty or non-canonical Base64.
        let text = input.string();
        let bytes = decode_base64_limited(&text, u64::MAX).unwrap_or_default();
        (text, bytes)
    } else {
        let len_code = input.u8();
        let len = if len_code < 0xc0 {
            usize::from(len_code % 64) + 1
        } else {
            usize::from(len_code - 0xbf) * 1024
        };
        let bytes = payload(kind % 4, len);
        (encode_base64(&bytes), bytes)
    };
    let digest = match input.u8() % 8 {
        0..=4 => None,
        5 | 6 => Some(sha256_hex(&bytes)),
        _ if kind & 1 == 0 => Some(sha256_hex(b"other bytes")),
        _ => Some("not a digest".to_string()),
    };
    (text, digest)
}

/// Whether to print every upload's outcome (`CHUNK_REASSEMBLY_TRACE=1`, when replaying an
/// input).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("CHUNK_REASSEMBLY_TRACE").is_some())
}

fn check_status(got: Result<SessionStatus, ToolError>, want: Result<Vec<Listed>, ErrorCode>) {
    match (got, want) {
        (Ok(s), Ok(objects)) => {
            assert!(s.ok && s.results.is_empty());
            let mut got: Vec<Listed> = s.objects.iter().map(listed).collect();
            got.sort();
            for o in &got {
                assert!(o.2 <= o.1, "more chunks received than announced: {o:?}");
            }
            assert_eq!(got, objects);
        }
        (Err(e), Err(code)) => assert_eq!(e.error_code, code, "{e:?}"),
        (got, want) => panic!("get_session_status: got {got:?}, want {want:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let sh = shared();
    let mut input = Input::new(data);
    let config = config(&mut input);
    sh.runtime.block_on(async {
        let store = Store::new(Arc::new(InMemory::new()));
        for (p, bytes) in &sh.enrolled {
            store.put(p, bytes.clone()).await.expect("put");
        }
        let mut service = api::service(store.clone(), sh.registry.clone(), config.clone());
        let tokens = &sh.tokens;
        let mut model = Model::default();
        for _ in 0..MAX_OPS {
            if input.is_empty() {
                break;
            }
            let op = input.u8();
            let client = usize::from(op >> 7);
            let session = SESSIONS[usize::from(op >> 4 & 3) % SESSIONS.len()];
            let (name, token) = (CLIENTS[client], &tokens[client]);
            match op & 0xf {
                0..=11 => {
                    let file = OBJECTS[usize::from(op & 3) % OBJECTS.len()];
                    let (index, total) = coordinates(&mut input);
                    let (text, digest) = chunk(&mut input);
                    let digest = digest.as_deref();
                    let got = api::upload(
                        &service, name, token, session, file, index, total, &text, digest,
                    )
                    .await
                    .map(Ack::from)
                    .map_err(|e| e.error_code);
                    let want = model.upload(
                        &config,
                        client,
                        session,
                        file,
                        index,
                        total,
                        (&text, digest),
                    );
                    if trace() {
                        eprintln!("{name} {session}/{file} chunk {index}/{total}: {got:?}");
                    }
                    assert_eq!(got, want, "{name} {session}/{file} chunk {index}/{total}");
                    if let Ok(ack) = got {
                        assert!(ack.received_chunks <= ack.total_chunks);
                        assert!(ack.chunk_bytes <= config.limits.max_chunk_bytes);
                    }
                }
                12 | 13 => {
                    let got = api::status(&service, name, token, session).await;
                    check_status(got, model.status(client, session));
                }
                14 => {
                    let got = api::delete(&service, name, token, session).await;
                    match model.owners.get(session) {
                        Some(&owner) if owner != client => {
                            assert_eq!(
                                got.map_err(|e| e.error_code).err(),
                                Some(ErrorCode::SessionForbidden)
                            );
                        }
                        None => {
                            let r = got.expect("deleting an unknown session is a no-op");
                            assert!(!r.deleted && r.bytes_freed == 0);
                        }
                        Some(_) => {
                            let r = got.expect("delete_session");
                            let objects =
                                model.staged.remove(&(client, session)).unwrap_or_default();
                            let chunks: u64 = objects.values().map(Object::bytes).sum();
                            // Chunks, plus the objects' total_chunks records and the session's
                            // last-use record (a millisecond timestamp).
                            let records: u64 = objects
                                .values()
                                .map(|o| o.total.to_string().len() as u64)
                                .sum::<u64>()
                                + if objects.is_empty() { 0 } else { 20 };
                            assert!(r.deleted);
                            assert!(
                                (chunks..=chunks + records).contains(&r.bytes_freed),
                                "freed {} for {chunks} chunk bytes",
                                r.bytes_freed
                            );
                            model.owners.remove(session);
                        }
                    }
                }
                _ => {
                    // A restart: the new process knows nothing until it lists the store.
                    service = api::service(store.clone(), sh.registry.clone(), config.clone());
                }
            }
        }
        // Finally every session of every client is exactly what the model holds.
        for (client, token) in tokens.iter().enumerate() {
            for session in SESSIONS {
                let got = api::status(&service, CLIENTS[client], token, session).await;
                check_status(got, model.status(client, session));
            }
            assert!(model.client_bytes(client) <= config.max_bytes_per_client);
            assert!(model.live_sessions(client) <= config.max_sessions_per_client);
        }
    });
});
