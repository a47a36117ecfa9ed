//! Staging ciphertext objects chunk by chunk (`upload_ciphertext_chunk`), what a session's
//! objects hold, and reading chunked objects back.

use cipherinfer_protocol::ErrorCode;
use cipherinfer_protocol::remote::{ObjectStatus, UploadChunkAck, UploadCiphertextChunkArgs};
use cipherinfer_protocol::validate::decode_base64_limited;
use object_store::path::Path;

use super::{Result, Service, check_chunk_digest, err};
use crate::layout;
use crate::ratelimit::Caller;
use crate::store::ChunkWrite;
use crate::usage::Admission;

impl Service {
    /// Stages one ciphertext chunk (draft 6.3). Costs a constant number of store operations:
    /// counts and quotas come from the ledger, duplicates from the create-if-absent write.
    pub async fn upload_chunk(
        &self,
        args: &UploadCiphertextChunkArgs,
        caller: &Caller,
    ) -> Result<UploadChunkAck> {
        args.validate(&self.config.limits)?;
        let record = self
            .authenticate(&args.client_id, args.auth_token.as_ref(), caller)
            .await?;
        // Only objects a model of the client's keys takes are staged: a misnamed object is
        // refused now, not found missing at inference after the whole upload.
        let takes = self.registry.input_objects_for(&record.parameter_id);
        if !takes.contains(&args.file_name.as_str()) {
            return Err(err(
                ErrorCode::InvalidFileName,
                format!(
                    "file_name {:?} is not an input object of the models these keys serve",
                    args.file_name
                ),
            )
            .with_details(serde_json::json!({ "input_objects": takes })));
        }
        let bytes = decode_base64_limited(&args.chunk_b64, self.config.limits.max_chunk_bytes)?;
        check_chunk_digest(args.chunk_sha256.as_deref(), &bytes)?;
        let chunk_bytes = bytes.len() as u64;
        let object = layout::object_key(&args.file_name);
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
        if admission == Admission::New {
            let (c, s) = (&args.client_id, &args.session_id);
            match &result {
                Ok(_) => self.ledger.confirm_chunk(c, s, &object, args.chunk_index),
                Err(_) => self.ledger.release_chunk(c, s, &object, args.chunk_index),
            }
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
        let total_path = layout::object_total(&args.client_id, &args.session_id, &args.file_name);
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
                    .children(&layout::session_objects(&args.client_id, &args.session_id))
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
            .put_once(
                &layout::object_chunk(
                    &args.client_id,
                    &args.session_id,
                    &args.file_name,
                    args.chunk_index,
                ),
                bytes,
            )
            .await
    }

    /// What each object staged in a session holds, from a listing of the store.
    pub(super) async fn object_status(
        &self,
        client_id: &str,
        session_id: &str,
    ) -> Result<Vec<ObjectStatus>> {
        let objects = layout::session_objects(client_id, session_id);
        let mut out = Vec::new();
        for name in self.store.children(&objects).await? {
            let object = layout::session_object(client_id, session_id, &name);
            let total: u32 = self
                .store
                .get(&layout::object_total(client_id, session_id, &name))
                .await?
                .and_then(|t| String::from_utf8(t).ok()?.parse().ok())
                .unwrap_or(0);
            let mut received = Vec::new();
            let mut bytes = 0;
            for (p, size, _) in self.store.list(&object).await? {
                if let Some(i) = layout::chunk_index(&p) {
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

    /// Concatenates chunks `0..total` stored under `dir`; every absent one is listed in one
    /// `ERROR_INCOMPLETE_UPLOAD`.
    pub(super) async fn assemble(&self, dir: &Path, total: u32) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for i in 0..total {
            let p = layout::chunk(dir, i);
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
}
