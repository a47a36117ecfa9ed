//! Outputs kept by reference: storing them against the client's quota, and
//! `fetch_result_chunk`.

use cipherinfer_protocol::ErrorCode;
use cipherinfer_protocol::remote::{FetchResultChunkArgs, FetchResultChunkResult};
use cipherinfer_protocol::validate::encode_base64;

use super::{Result, Service, err};
use crate::layout;
use crate::ratelimit::Caller;
use crate::usage::Admission;

impl Service {
    pub(super) async fn store_result(
        &self,
        client_id: &str,
        session_id: &str,
        result_id: &str,
        bytes: &[u8],
    ) -> Result<()> {
        let key = layout::result_key(result_id);
        let size = bytes.len() as u64;
        let admission = self
            .admit(client_id, session_id, &key, 0, size, u64::MAX)
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
                &layout::session_result(client_id, session_id, result_id),
                bytes.to_vec(),
            )
            .await;
        if admission == Admission::New {
            match &stored {
                Ok(()) => self.ledger.confirm_chunk(client_id, session_id, &key, 0),
                Err(_) => self.ledger.release_chunk(client_id, session_id, &key, 0),
            }
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
            .get(&layout::session_result(
                &args.client_id,
                &args.session_id,
                &args.result_id,
            ))
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
