//! Properties of chunk reassembly, over the real `Service` (upload and session status) on an
//! in-memory object store: chunks in any order, with re-sends interleaved, reassemble to the
//! original bytes; a gap leaves the object incomplete with exactly the gap reported missing; a
//! re-send with other bytes is `ERROR_CHUNK_CONFLICT` and leaves the stored chunk; a changed
//! `total_chunks` is `ERROR_TOTAL_CHUNKS_MISMATCH`. The staged bytes are read back from the store
//! (its layout is documented in `store.rs`); one property also decodes them as a ciphertext of
//! the served model's parameters, as inference does when it loads its inputs.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use cipherinfer_ckks::serialization::{FromBytes, ToBytes};
use cipherinfer_ckks::{Ciphertext, Encoder, EvaluationKeys, KeyGenerator, SymmetricEncryptor};
use cipherinfer_protocol::ErrorCode;
use cipherinfer_remote::store::{chunk_name, path};
use cipherinfer_remote::{Registry, Store};
use object_store::memory::InMemory;
use proptest::prelude::*;
use proptest::sample::{Index, subsequence};

/// The served model (only its parameter set matters: keys are an empty bundle).
const MODEL: &str = "mnist-cnn";
const CLIENT: &str = "alice";
const SESSION: &str = "s1";
const OBJECT: &str = "input-0.ct";

/// Every call into the service, in one place: signatures of the `Service` methods change here
/// only. Arguments are built from JSON, so optional fields added later take their defaults.
mod api {
    use std::sync::Arc;

    use cipherinfer_protocol::remote::{SessionStatus, UploadChunkAck};
    use cipherinfer_protocol::validate::{encode_base64, sha256_hex};
    use cipherinfer_protocol::{AuthToken, ToolError, parse_arguments};
    use cipherinfer_remote::{Caller, Registry, Service, ServiceConfig, Store};
    use serde_json::{Value, json};

    fn args<T: serde::de::DeserializeOwned>(v: Value) -> T {
        parse_arguments(v).unwrap()
    }

    /// A service over `store` that accepts unsigned calls (signing is not what is tested).
    pub fn service(store: Store, registry: Arc<Registry>) -> Service {
        let config = ServiceConfig {
            require_signatures: false,
            max_eval_threads: 1,
            ..ServiceConfig::default()
        };
        Service::new(store, registry, config).unwrap()
    }

    /// Step 0 for `client` with `bundle` in one chunk; returns the bearer token.
    pub async fn enroll(
        service: &Service,
        client: &str,
        algorithm_id: &str,
        parameter_id: &str,
        bundle: &[u8],
    ) -> AuthToken {
        let begin = service
            .provision_begin(
                &args(json!({
                    "client_id": client, "algorithm_id": algorithm_id,
                    "parameter_id": parameter_id, "bundle_bytes": bundle.len(),
                    "bundle_sha256": sha256_hex(bundle), "total_chunks": 1,
                })),
                &Caller::unknown(),
            )
            .await
            .unwrap();
        let id = begin.provisioning_id;
        service
            .provision_chunk(
                &args(json!({
                    "client_id": client, "provisioning_id": id, "chunk_index": 0,
                    "total_chunks": 1, "chunk_b64": encode_base64(bundle),
                })),
                &Caller::unknown(),
            )
            .await
            .unwrap();
        service
            .provision_commit(
                &args(json!({"client_id": client, "provisioning_id": id})),
                &Caller::unknown(),
            )
            .await
            .unwrap()
            .auth_token
    }

    /// `upload_ciphertext_chunk` of `bytes` as chunk `index` of `total`.
    pub async fn upload(
        service: &Service,
        token: &AuthToken,
        (client, session, file_name): (&str, &str, &str),
        index: u32,
        total: u32,
        bytes: &[u8],
    ) -> Result<UploadChunkAck, ToolError> {
        let a = args(json!({
            "client_id": client, "session_id": session, "file_name": file_name,
            "chunk_index": index, "total_chunks": total, "chunk_b64": encode_base64(bytes),
            "auth_token": token.expose(),
        }));
        service.upload_chunk(&a, &Caller::unknown()).await
    }

    /// `get_session_status`.
    pub async fn status(
        service: &Service,
        token: &AuthToken,
        client: &str,
        session: &str,
    ) -> Result<SessionStatus, ToolError> {
        let a = args(json!({
            "client_id": client, "session_id": session, "auth_token": token.expose(),
        }));
        service.session_status(&a, &Caller::unknown()).await
    }
}

/// The registry and what a client provisions for its parameters, made once per test binary.
struct Shared {
    registry: Arc<Registry>,
    algorithm_id: String,
    parameter_id: String,
    /// An empty (valid) evaluation-key bundle: staging needs a client, not keys.
    bundle: Vec<u8>,
    /// A real ciphertext of the model's parameters, serialized.
    ciphertext: Vec<u8>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let registry = Arc::new(Registry::shipped(&[MODEL.to_string()]).unwrap());
        let served = registry.get(MODEL).unwrap();
        let params = served.params().clone();
        let mut kg = KeyGenerator::new(params.clone()).unwrap();
        let mut encryptor = SymmetricEncryptor::new(kg.secret_key()).unwrap();
        let pt = Encoder::new(params.clone())
            .encode(
                &[0.25, -1.5, 3.0],
                params.max_level(),
                params.default_scale(),
            )
            .unwrap();
        Shared {
            algorithm_id: served.info.algorithm_id.to_string(),
            parameter_id: served.info.parameter_id.clone(),
            bundle: EvaluationKeys::new(params).to_bytes(),
            ciphertext: encryptor.encrypt(&pt).unwrap().to_bytes(),
            registry,
        }
    })
}

/// A fresh server (empty in-memory store) with one enrolled client.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    store: Store,
    service: cipherinfer_remote::Service,
    token: cipherinfer_protocol::AuthToken,
}

impl Fixture {
    fn new() -> Self {
        let sh = shared();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = Store::new(Arc::new(InMemory::new()));
        let service = api::service(store.clone(), sh.registry.clone());
        let token = runtime.block_on(api::enroll(
            &service,
            CLIENT,
            &sh.algorithm_id,
            &sh.parameter_id,
            &sh.bundle,
        ));
        Self {
            runtime,
            store,
            service,
            token,
        }
    }

    /// Uploads chunk `index` of `total` of the test object.
    fn upload(
        &self,
        index: u32,
        total: u32,
        bytes: &[u8],
    ) -> Result<cipherinfer_protocol::remote::UploadChunkAck, ErrorCode> {
        self.runtime
            .block_on(api::upload(
                &self.service,
                &self.token,
                (CLIENT, SESSION, OBJECT),
                index,
                total,
                bytes,
            ))
            .map_err(|e| e.error_code)
    }

    /// The test object's status: (total, received, missing, bytes).
    fn object(&self) -> (u32, u32, Vec<u32>, u64) {
        let status = self
            .runtime
            .block_on(api::status(&self.service, &self.token, CLIENT, SESSION))
            .unwrap();
        assert_eq!(status.objects.len(), 1, "{status:?}");
        let o = &status.objects[0];
        assert_eq!(o.file_name, OBJECT);
        (
            o.total_chunks,
            o.received_chunks,
            o.missing_chunks.clone(),
            o.bytes,
        )
    }

    /// The staged bytes of chunk `index`, read from the store.
    fn staged(&self, index: u32) -> Option<Vec<u8>> {
        let p = path(&[
            "sessions",
            CLIENT,
            SESSION,
            "objects",
            OBJECT,
            &chunk_name(index),
        ]);
        self.runtime.block_on(self.store.get(&p)).unwrap()
    }

    /// The object as inference assembles it: chunks 0..total concatenated.
    fn reassembled(&self, total: u32) -> Vec<u8> {
        (0..total)
            .flat_map(|i| self.staged(i).expect("every chunk is staged"))
            .collect()
    }
}

/// An object and the cut points that split it into `k` non-empty chunks (1 <= k <= `max_k`).
fn split_object(max_len: usize, max_k: usize) -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    (1..=max_len).prop_flat_map(move |len| {
        (
            proptest::collection::vec(any::<u8>(), len),
            subsequence((1..len).collect::<Vec<_>>(), 0..len.min(max_k)),
        )
    })
}

/// The chunks between the cut points.
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(bytes.len());
    bounds
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

/// `order` with re-sends inserted: each `(at, which)` puts a copy of the chunk at position
/// `which` of `order` before position `at` of the sequence built so far.
fn with_resends(order: &[u32], resends: &[(Index, Index)]) -> Vec<u32> {
    let mut seq = order.to_vec();
    for (at, which) in resends {
        let chunk = order[which.index(order.len())];
        seq.insert(at.index(seq.len() + 1), chunk);
    }
    seq
}

/// Uploads `seq`, checking every acknowledgement: a re-send is flagged as a duplicate, the
/// received count is the number of distinct chunks so far (never above the total), and the
/// object is complete exactly when every chunk arrived.
fn upload_all(f: &Fixture, parts: &[Vec<u8>], seq: &[u32]) {
    let total = parts.len() as u32;
    let mut seen = BTreeSet::new();
    for &i in seq {
        let ack = f.upload(i, total, &parts[i as usize]).unwrap();
        let first = seen.insert(i);
        assert_eq!(ack.duplicate, !first, "chunk {i} of {seq:?}");
        assert_eq!(ack.chunk_index, i);
        assert_eq!(ack.chunk_bytes, parts[i as usize].len() as u64);
        assert_eq!(ack.total_chunks, total);
        assert_eq!(ack.received_chunks, seen.len() as u32);
        assert!(ack.received_chunks <= ack.total_chunks);
        assert_eq!(ack.object_complete, seen.len() == parts.len());
    }
}

/// A permutation of `0..k` for the `k` chunks of a split object.
fn split_and_order(
    max_len: usize,
    max_k: usize,
) -> impl Strategy<Value = (Vec<u8>, Vec<Vec<u8>>, Vec<u32>)> {
    split_object(max_len, max_k).prop_flat_map(|(bytes, cuts)| {
        let parts = chunks(&bytes, &cuts);
        let order = Just((0..parts.len() as u32).collect::<Vec<_>>()).prop_shuffle();
        (Just(bytes), Just(parts), order)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Any order of the chunks, with re-sends anywhere, stages exactly the original bytes.
    #[test]
    fn any_order_with_resends_reassembles_the_original(
        (bytes, parts, order) in split_and_order(4096, 12),
        resends in proptest::collection::vec(any::<(Index, Index)>(), 0..8),
    ) {
        let f = Fixture::new();
        let seq = with_resends(&order, &resends);
        upload_all(&f, &parts, &seq);
        let k = parts.len() as u32;
        prop_assert_eq!(f.object(), (k, k, Vec::new(), bytes.len() as u64));
        prop_assert_eq!(f.reassembled(k), bytes);
    }

    /// Any strict subset of the chunks leaves the object incomplete, with exactly the others
    /// reported missing and only the received bytes counted; sending the rest completes it.
    #[test]
    fn a_gap_is_reported_exactly_and_can_be_filled(
        (bytes, parts, order) in split_and_order(4096, 12).prop_filter("two chunks or more", |(_, p, _)| p.len() >= 2),
        keep in any::<Index>(),
        resend in any::<Index>(),
    ) {
        let f = Fixture::new();
        let k = parts.len() as u32;
        // The first `n` chunks of the order, 1 <= n < k, one of them sent twice.
        let n = 1 + keep.index(parts.len() - 1);
        let (sent, rest) = order.split_at(n);
        let mut seq = sent.to_vec();
        seq.push(sent[resend.index(n)]);
        upload_all(&f, &parts, &seq);
        let have: BTreeSet<u32> = sent.iter().copied().collect();
        let missing: Vec<u32> = (0..k).filter(|i| !have.contains(i)).collect();
        let staged: u64 = have.iter().map(|&i| parts[i as usize].len() as u64).sum();
        prop_assert_eq!(f.object(), (k, n as u32, missing.clone(), staged));
        for &i in &missing {
            prop_assert_eq!(f.staged(i), None);
        }
        let mut seen = have.clone();
        for &i in rest {
            let ack = f.upload(i, k, &parts[i as usize]).unwrap();
            seen.insert(i);
            prop_assert_eq!(ack.object_complete, seen.len() == parts.len());
        }
        prop_assert_eq!(f.object(), (k, k, Vec::new(), bytes.len() as u64));
        prop_assert_eq!(f.reassembled(k), bytes);
    }

    /// A re-send with other bytes is refused and the stored chunk is kept; the original re-send
    /// is still an accepted duplicate.
    #[test]
    fn a_conflicting_resend_is_refused_and_the_stored_chunk_kept(
        (bytes, parts, order) in split_and_order(2048, 8),
        which in any::<Index>(),
        other in proptest::collection::vec(any::<u8>(), 1..256),
        complete in any::<bool>(),
    ) {
        let f = Fixture::new();
        let k = parts.len() as u32;
        let j = order[which.index(order.len())];
        // Everything, or just the conflicting index.
        let seq = if complete { order.clone() } else { vec![j] };
        upload_all(&f, &parts, &seq);
        let before = f.object();
        let mut other = other;
        if other == parts[j as usize] {
            other[0] ^= 1;
        }
        prop_assert_eq!(f.upload(j, k, &other).err(), Some(ErrorCode::ChunkConflict));
        prop_assert_eq!(f.object(), before);
        prop_assert_eq!(f.staged(j), Some(parts[j as usize].clone()));
        let again = f.upload(j, k, &parts[j as usize]).unwrap();
        prop_assert!(again.duplicate);
        if complete {
            prop_assert_eq!(f.reassembled(k), bytes);
        }
    }

    /// Once an object has chunks, a chunk claiming another `total_chunks` is refused (new index
    /// or re-sent one alike) and changes nothing.
    #[test]
    fn changing_total_chunks_is_refused(
        (_bytes, parts, order) in split_and_order(2048, 8),
        sent in 1usize..8,
        other_total in 1u32..40,
        index in any::<Index>(),
    ) {
        let f = Fixture::new();
        let k = parts.len() as u32;
        let n = sent.min(parts.len());
        upload_all(&f, &parts, &order[..n]);
        let before = f.object();
        let other_total = if other_total == k { k + 1 } else { other_total };
        let i = index.index(other_total as usize) as u32;
        let bytes = parts.get(i as usize).cloned().unwrap_or_else(|| vec![7; 3]);
        prop_assert_eq!(
            f.upload(i, other_total, &bytes).err(),
            Some(ErrorCode::TotalChunksMismatch)
        );
        prop_assert_eq!(f.object(), before);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// A real ciphertext split anywhere, uploaded in any order with re-sends, reassembles to
    /// bytes that decode as the same ciphertext under the model's parameters.
    #[test]
    fn a_ciphertext_reassembles_and_decodes(
        cuts in proptest::collection::btree_set(1usize..shared().ciphertext.len(), 0..16),
        shuffle in any::<u64>(),
        resends in proptest::collection::vec(any::<(Index, Index)>(), 0..6),
    ) {
        let sh = shared();
        let cuts: Vec<usize> = cuts.into_iter().collect();
        let parts = chunks(&sh.ciphertext, &cuts);
        let k = parts.len() as u32;
        // A permutation from the seed (Fisher-Yates over a small LCG).
        let mut order: Vec<u32> = (0..k).collect();
        let mut state = shuffle | 1;
        for i in (1..order.len()).rev() {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            order.swap(i, (state >> 33) as usize % (i + 1));
        }
        let f = Fixture::new();
        upload_all(&f, &parts, &with_resends(&order, &resends));
        prop_assert_eq!(f.object(), (k, k, Vec::new(), sh.ciphertext.len() as u64));
        let staged = f.reassembled(k);
        prop_assert_eq!(&staged, &sh.ciphertext);
        let params = sh.registry.get(MODEL).unwrap().params();
        let ct = Ciphertext::from_bytes(params, &staged, staged.len()).unwrap();
        prop_assert_eq!(ct.to_bytes(), staged);
    }
}
