//! The encrypted result of an inference, as the remote server returns it and a client saves it:
//! every output ciphertext of the evaluation, in output-map order.
//!
//! # Format
//!
//! A result of **one** output ciphertext (every vector output, so every classifier) is exactly
//! that ciphertext's `CIFR` encoding (type 1, formats.md §1). A result of **several** (an output
//! map spanning `num_cts > 1`) is the set container:
//!
//! ```text
//! "CIOUTSET"            8 bytes
//! count                 u32 little-endian, 2..=64
//! count × { length      u64 little-endian
//!           bytes }     one CIFR ciphertext encoding
//! ```
//!
//! with nothing after the last ciphertext. A result *file* (`fhe_decrypt`'s
//! `encrypted_logit_path`) holds these bytes, or, as the draft (6.5) has the client persist "the
//! Base64 ciphertext from the remote response", their Base64 text (`encrypted_logit_b64` as
//! received, surrounding whitespace allowed): see [`result_file_bytes`].
//!
//! Every ciphertext is decoded with a byte limit and checked against the client's parameter set
//! (parameter id, level, polynomial count, packed coefficients below their primes, a scale that
//! fits its level); a failure is `ERROR_MALFORMED_CIPHERTEXT` (`ERROR_OBJECT_TOO_LARGE` past the
//! limit).

use std::sync::Arc;

use cipherinfer_ckks::serialization::{FromBytes, ToBytes};
use cipherinfer_ckks::{Ciphertext, DecodeErrorCode, Parameters};
use cipherinfer_compiler::client::MAX_CIPHERTEXTS;

use crate::error::{ErrorCode, Result, ToolError};

/// Magic of the multi-ciphertext result container.
pub const OUTPUT_SET_MAGIC: [u8; 8] = *b"CIOUTSET";

fn malformed(why: impl std::fmt::Display) -> ToolError {
    ToolError::new(
        ErrorCode::MalformedCiphertext,
        format!("encrypted result: {why}"),
    )
}

fn ckks_malformed(e: &cipherinfer_ckks::Error) -> ToolError {
    match e {
        cipherinfer_ckks::Error::Decode {
            code: DecodeErrorCode::TooLarge,
            ..
        } => ToolError::new(ErrorCode::ObjectTooLarge, format!("encrypted result: {e}")),
        other => malformed(other),
    }
}

/// The result bytes a result file holds: the file itself when it starts with a result encoding's
/// magic (`CIFR` or `CIOUTSET`), otherwise its Base64 text decoded (standard alphabet, padded;
/// whitespace around it and line breaks inside are ignored). Neither →
/// `ERROR_MALFORMED_CIPHERTEXT`; decoded larger than `max_bytes` → `ERROR_OBJECT_TOO_LARGE`.
pub fn result_file_bytes(file: Vec<u8>, max_bytes: usize) -> Result<Vec<u8>> {
    if file.starts_with(b"CIFR") || file.starts_with(&OUTPUT_SET_MAGIC) {
        return Ok(file);
    }
    let text: String = std::str::from_utf8(&file)
        .map_err(|_| malformed("neither a result encoding nor Base64 text"))?
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let max = u64::try_from(max_bytes).unwrap_or(u64::MAX);
    crate::validate::decode_base64_limited(&text, max).map_err(|e| match e.error_code {
        ErrorCode::ChunkTooLarge => ToolError::new(
            ErrorCode::ObjectTooLarge,
            format!("encrypted result: Base64 text decodes to more than {max_bytes} bytes"),
        ),
        _ => malformed(format!(
            "neither a result encoding nor Base64 text ({})",
            e.message
        )),
    })
}

/// Encodes output ciphertexts as a result file: one ciphertext as its plain encoding, several
/// in the `CIOUTSET` container.
pub fn encode_output(cts: &[Ciphertext]) -> Vec<u8> {
    if let [one] = cts {
        return one.to_bytes();
    }
    let mut out = Vec::new();
    out.extend_from_slice(&OUTPUT_SET_MAGIC);
    out.extend_from_slice(&u32::try_from(cts.len()).unwrap_or(u32::MAX).to_le_bytes());
    for ct in cts {
        let b = ct.to_bytes();
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(&b);
    }
    out
}

/// Decodes a result file bound to `params` (see the module docs), at most `max_bytes` long.
pub fn decode_output(
    params: &Arc<Parameters>,
    bytes: &[u8],
    max_bytes: usize,
) -> Result<Vec<Ciphertext>> {
    if bytes.len() > max_bytes {
        return Err(ToolError::new(
            ErrorCode::ObjectTooLarge,
            format!("encrypted result larger than {max_bytes} bytes"),
        ));
    }
    let cts = match bytes.strip_prefix(&OUTPUT_SET_MAGIC[..]) {
        None => {
            vec![Ciphertext::from_bytes(params, bytes, max_bytes).map_err(|e| ckks_malformed(&e))?]
        }
        Some(rest) => {
            let (count, mut rest) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| malformed("truncated set header"))?;
            let count = u32::from_le_bytes(*count) as usize;
            if !(2..=MAX_CIPHERTEXTS).contains(&count) {
                return Err(malformed(format!(
                    "set of {count} ciphertexts (2..={MAX_CIPHERTEXTS})"
                )));
            }
            let mut cts = Vec::with_capacity(count);
            for i in 0..count {
                let (len, tail) = rest
                    .split_first_chunk::<8>()
                    .ok_or_else(|| malformed(format!("truncated before ciphertext {i}")))?;
                let len = usize::try_from(u64::from_le_bytes(*len))
                    .ok()
                    .filter(|&l| l <= tail.len())
                    .ok_or_else(|| malformed(format!("ciphertext {i} runs past the end")))?;
                let (ct, tail) = tail.split_at(len);
                cts.push(
                    Ciphertext::from_bytes(params, ct, max_bytes)
                        .map_err(|e| ckks_malformed(&e))?,
                );
                rest = tail;
            }
            if !rest.is_empty() {
                return Err(malformed(format!("{} trailing bytes", rest.len())));
            }
            cts
        }
    };
    for ct in &cts {
        let scale = ct.scale();
        let room = params.log_q_at(ct.level());
        if !(scale.is_finite() && scale >= 1.0 && scale.log2() < room - 1.0) {
            return Err(malformed(format!(
                "scale 2^{:.2} does not fit level {} (2^{room:.1})",
                scale.log2(),
                ct.level()
            )));
        }
        if ct.degree() > 2 {
            return Err(malformed(format!("degree {}", ct.degree())));
        }
    }
    Ok(cts)
}
