//! Typed calls to the remote inference server (`docs/protocol.md` §6): capabilities, Step 0,
//! chunked uploads, inference with progress, results by reference, sessions.

use cipherinfer_protocol::integrity::{
    BundleClaim, PublicIdentity, RequestSigner, ResultClaim, sign_call,
};
use cipherinfer_protocol::remote::{
    Capabilities, DeleteSessionResult, DescribeCapabilitiesArgs, FetchResultChunkArgs,
    FetchResultChunkResult, ModelInfo, ProvisionKeysBeginArgs, ProvisionKeysBeginResult,
    ProvisionKeysChunkAck, ProvisionKeysChunkArgs, ProvisionKeysCommitArgs, ProvisionKeysResult,
    RemoteInferenceArgs, RemoteInferenceResult, SessionArgs, TOOL_DELETE_SESSION,
    TOOL_DESCRIBE_CAPABILITIES, TOOL_FETCH_RESULT_CHUNK, TOOL_PROVISION_KEYS_BEGIN,
    TOOL_PROVISION_KEYS_CHUNK, TOOL_PROVISION_KEYS_COMMIT, TOOL_REMOTE_INFERENCE_CNN,
    TOOL_UPLOAD_CIPHERTEXT_CHUNK, UploadChunkAck, UploadCiphertextChunkArgs,
};
use cipherinfer_protocol::validate::{decode_base64_limited, encode_base64, sha256_hex};
use cipherinfer_protocol::{AuthToken, ErrorCode, ToolError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::mcp::{McpClient, Progress};

/// Default decoded chunk size of uploads (the server may announce a smaller maximum).
pub const DEFAULT_CHUNK_BYTES: u64 = 4 << 20;

/// A connection to a remote inference server.
#[derive(Debug)]
pub struct RemoteClient {
    mcp: McpClient,
    url: String,
}

/// What a Step 0 upload needs besides the bundle.
#[derive(Clone, Debug)]
pub struct ProvisionRequest<'a> {
    /// Client the keys are bound to.
    pub client_id: &'a str,
    /// The model the keys are for (from `describe_capabilities`).
    pub model: &'a ModelInfo,
    /// `Some(current token)` to rotate the key set of a known client; `None` for a new one.
    pub rotate_with: Option<&'a AuthToken>,
    /// Operator-issued enrollment token, when the server restricts enrollment.
    pub enrollment_token: Option<&'a AuthToken>,
    /// Decoded chunk size to send.
    pub chunk_bytes: u64,
    /// The client's identity: signs the bundle and every call.
    pub signer: &'a dyn RequestSigner,
}

/// An upload, a provisioning or a download in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

impl RemoteClient {
    /// Connects to the server's MCP endpoint.
    pub async fn connect(url: &str) -> Result<Self, ToolError> {
        cipherinfer_protocol::local::validate_remote_url(url)?;
        Ok(Self {
            mcp: McpClient::connect_http(url).await?,
            url: url.to_string(),
        })
    }

    /// The endpoint URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying MCP connection.
    pub fn mcp(&self) -> &McpClient {
        &self.mcp
    }

    fn signed_args(
        tool: &str,
        args: &impl Serialize,
        signer: &dyn RequestSigner,
    ) -> Result<(serde_json::Value, String), ToolError> {
        let mut value = serde_json::to_value(args)
            .map_err(|e| ToolError::new(ErrorCode::Internal, e.to_string()))?;
        let sig = sign_call(signer, tool, &mut value)?;
        Ok((value, sig.nonce))
    }

    /// Calls `tool` with `args` signed by `signer` (docs/security.md).
    pub async fn call_signed<R: DeserializeOwned>(
        &self,
        tool: &str,
        args: &impl Serialize,
        signer: &dyn RequestSigner,
    ) -> Result<R, ToolError> {
        let (value, _) = Self::signed_args(tool, args, signer)?;
        self.mcp.call(tool, &value).await
    }

    /// `describe_capabilities`.
    pub async fn capabilities(&self) -> Result<Capabilities, ToolError> {
        self.mcp
            .call(
                TOOL_DESCRIBE_CAPABILITIES,
                &DescribeCapabilitiesArgs::default(),
            )
            .await
    }

    /// Step 0: announces, uploads (in chunks) and commits an evaluation-key bundle.
    pub async fn provision(
        &self,
        request: &ProvisionRequest<'_>,
        bundle: &[u8],
        mut on_chunk: impl FnMut(Transfer),
    ) -> Result<ProvisionKeysResult, ToolError> {
        let chunk = usize::try_from(request.chunk_bytes.max(1)).unwrap_or(usize::MAX);
        let total_chunks = chunk_count(bundle.len(), chunk)?;
        let bundle_sha256 = sha256_hex(bundle);
        let bundle_signature = BundleClaim {
            client_id: request.client_id,
            algorithm_id: &request.model.algorithm_id.to_string(),
            parameter_id: &request.model.parameter_id,
            bundle_sha256: &bundle_sha256,
            bundle_bytes: bundle.len() as u64,
        }
        .sign(request.signer)?;
        let begin: ProvisionKeysBeginResult = self
            .call_signed(
                TOOL_PROVISION_KEYS_BEGIN,
                &ProvisionKeysBeginArgs {
                    client_id: request.client_id.to_string(),
                    algorithm_id: request.model.algorithm_id.to_string(),
                    parameter_id: request.model.parameter_id.clone(),
                    model: Some(request.model.name.clone()),
                    mode: if request.rotate_with.is_some() {
                        cipherinfer_protocol::remote::ProvisionMode::Rotate
                    } else {
                        cipherinfer_protocol::remote::ProvisionMode::New
                    },
                    bundle_bytes: bundle.len() as u64,
                    bundle_sha256,
                    total_chunks,
                    key_uri: None,
                    auth_token: request.rotate_with.cloned(),
                    enrollment_token: request.enrollment_token.cloned(),
                    bundle_signature: Some(bundle_signature),
                },
                request.signer,
            )
            .await?;
        let mut done = 0u64;
        for (index, part) in (0u32..).zip(bundle.chunks(chunk)) {
            let _: ProvisionKeysChunkAck = self
                .call_signed(
                    TOOL_PROVISION_KEYS_CHUNK,
                    &ProvisionKeysChunkArgs {
                        client_id: request.client_id.to_string(),
                        provisioning_id: begin.provisioning_id.clone(),
                        chunk_index: index,
                        total_chunks,
                        chunk_b64: encode_base64(part),
                        chunk_sha256: Some(sha256_hex(part)),
                    },
                    request.signer,
                )
                .await?;
            done += part.len() as u64;
            on_chunk(Transfer {
                done,
                total: bundle.len() as u64,
            });
        }
        self.call_signed(
            TOOL_PROVISION_KEYS_COMMIT,
            &ProvisionKeysCommitArgs {
                client_id: request.client_id.to_string(),
                provisioning_id: begin.provisioning_id,
            },
            request.signer,
        )
        .await
    }

    /// Stages one ciphertext object in `session_id`, in chunks of `chunk_bytes`.
    #[allow(
        clippy::too_many_arguments,
        reason = "mirrors the draft's tool arguments"
    )]
    pub async fn upload_object(
        &self,
        client_id: &str,
        session_id: &str,
        token: &AuthToken,
        file_name: &str,
        bytes: &[u8],
        chunk_bytes: u64,
        signer: &dyn RequestSigner,
        mut on_chunk: impl FnMut(Transfer),
    ) -> Result<(), ToolError> {
        let chunk = usize::try_from(chunk_bytes.max(1)).unwrap_or(usize::MAX);
        let total_chunks = chunk_count(bytes.len(), chunk)?;
        let mut done = 0u64;
        for (index, part) in (0u32..).zip(bytes.chunks(chunk)) {
            let ack: UploadChunkAck = self
                .call_signed(
                    TOOL_UPLOAD_CIPHERTEXT_CHUNK,
                    &UploadCiphertextChunkArgs {
                        client_id: client_id.to_string(),
                        session_id: session_id.to_string(),
                        file_name: file_name.to_string(),
                        chunk_index: index,
                        total_chunks,
                        chunk_b64: encode_base64(part),
                        auth_token: Some(token.clone()),
                        chunk_sha256: Some(sha256_hex(part)),
                    },
                    signer,
                )
                .await?;
            if ack.chunk_bytes != part.len() as u64 {
                return Err(ToolError::new(
                    ErrorCode::IntegrityMismatch,
                    format!(
                        "the server acknowledged {} bytes of chunk {index} of {file_name}, {} were sent",
                        ack.chunk_bytes,
                        part.len()
                    ),
                ));
            }
            done += part.len() as u64;
            on_chunk(Transfer {
                done,
                total: bytes.len() as u64,
            });
        }
        Ok(())
    }

    /// `remote_inference_cnn` signed by `signer`, then the output's bytes: inline, or fetched
    /// chunk by chunk when offered by reference. Before the bytes are returned, the server's
    /// result signature is checked against `server_key` (the pinned server identity) and the
    /// request's nonce, and the bytes against the signed size and SHA-256.
    pub async fn infer(
        &self,
        args: &RemoteInferenceArgs,
        signer: &dyn RequestSigner,
        server_key: &PublicIdentity,
        on_progress: impl FnMut(Progress),
    ) -> Result<(RemoteInferenceResult, Vec<u8>), ToolError> {
        let (value, nonce) = Self::signed_args(TOOL_REMOTE_INFERENCE_CNN, args, signer)?;
        let result: RemoteInferenceResult = self
            .mcp
            .call_with_progress(TOOL_REMOTE_INFERENCE_CNN, &value, on_progress)
            .await?;
        let expected = result.encrypted_logit_bytes;
        let bytes = match (&result.encrypted_logit_b64, &result.result_ref) {
            (Some(b64), _) => decode_base64_limited(b64, expected)?,
            (None, Some(r)) => {
                let mut out = Vec::with_capacity(usize::try_from(r.total_bytes).unwrap_or(0));
                for index in 0..r.total_chunks {
                    let c: FetchResultChunkResult = self
                        .call_signed(
                            TOOL_FETCH_RESULT_CHUNK,
                            &FetchResultChunkArgs {
                                client_id: args.client_id.clone(),
                                session_id: args.session_id.clone(),
                                result_id: r.result_id.clone(),
                                chunk_index: index,
                                auth_token: args.auth_token.clone(),
                            },
                            signer,
                        )
                        .await?;
                    let part = decode_base64_limited(&c.chunk_b64, r.chunk_bytes)?;
                    if out.len() as u64 + part.len() as u64 > expected {
                        return Err(ToolError::new(
                            ErrorCode::IntegrityMismatch,
                            "the result's chunks exceed its announced size",
                        ));
                    }
                    out.extend_from_slice(&part);
                }
                out
            }
            (None, None) => {
                return Err(ToolError::new(
                    ErrorCode::Internal,
                    "the inference result carries neither the output nor a reference to it",
                ));
            }
        };
        let signature = result.result_signature.as_ref().ok_or_else(|| {
            ToolError::new(
                ErrorCode::BadSignature,
                "the server did not sign the inference result",
            )
        })?;
        result_claim(&args.client_id, &result).verify(signature, server_key, &nonce, &bytes)?;
        Ok((result, bytes))
    }

    /// `delete_session`.
    pub async fn delete_session(
        &self,
        client_id: &str,
        session_id: &str,
        token: &AuthToken,
        signer: &dyn RequestSigner,
    ) -> Result<DeleteSessionResult, ToolError> {
        self.call_signed(
            TOOL_DELETE_SESSION,
            &SessionArgs {
                client_id: client_id.to_string(),
                session_id: session_id.to_string(),
                auth_token: Some(token.clone()),
            },
            signer,
        )
        .await
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.mcp.close().await;
    }
}

/// What the server's result signature covers, read off a result for `client_id`.
pub fn result_claim(client_id: &str, result: &RemoteInferenceResult) -> ResultClaim {
    ResultClaim {
        client_id: client_id.to_string(),
        session_id: result.session_id.clone(),
        model: result.model.clone(),
        algorithm_id: result.algorithm_id.to_string(),
        parameter_id: result.parameter_id.clone(),
        encrypted_logit_sha256: result.encrypted_logit_sha256.clone(),
        encrypted_logit_bytes: result.encrypted_logit_bytes,
    }
}

fn chunk_count(len: usize, chunk: usize) -> Result<u32, ToolError> {
    u32::try_from(len.div_ceil(chunk).max(1)).map_err(|_| {
        ToolError::new(
            ErrorCode::ObjectTooLarge,
            format!("{len} bytes need too many chunks"),
        )
    })
}

/// A fresh random session id (128 bits, hex).
pub fn new_session_id() -> Result<String, ToolError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| ToolError::new(ErrorCode::Internal, format!("randomness unavailable: {e}")))?;
    Ok(format!("s-{}", hex::encode(bytes)))
}
