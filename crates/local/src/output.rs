//! Encrypted results: their file format, their decryption (through [`ClientSpec::decrypt`], the
//! one decrypt-decode-unpack of the client side), the plausibility checks that flag
//! a result not made for this key, and the Step 6 classification.
//!
//! # File format
//!
//! A result file holds exactly the bytes the remote server returns (`encrypted_logit_b64` or by
//! `fetch_result_chunk`): see [`cipherinfer_protocol::output`], which both sides share.

use cipherinfer_ckks::{Ciphertext, Decryptor, Encoder};
pub use cipherinfer_compiler::client::{estimate_precision_bits, noise_floor};
use cipherinfer_compiler::{ClientSpec, CompileError};
use cipherinfer_protocol::error::{ErrorCode, Result, ToolError};
use cipherinfer_protocol::local::{ClassScore, Classification};
pub use cipherinfer_protocol::output::{
    OUTPUT_SET_MAGIC, decode_output, encode_output, result_file_bytes,
};

/// Largest result file read by `fhe_decrypt`.
pub const MAX_RESULT_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// A decrypted output value larger than this in magnitude flags a result not made for this key
/// (the shipped models' logits stay below 100; a wrong key gives values near q/scale).
pub const MAX_PLAUSIBLE_VALUE: f64 = 1e6;
/// A result whose estimated precision is below this many bits (an estimated absolute error of
/// 1 or more) is refused as `ERROR_DECRYPTION_FAILED`.
pub const MIN_PRECISION_BITS: f64 = 0.0;

fn malformed(why: impl std::fmt::Display) -> ToolError {
    ToolError::new(
        ErrorCode::MalformedCiphertext,
        format!("encrypted result: {why}"),
    )
}

/// The decrypted output values (of the first image of a batch) and their error estimate.
#[derive(Clone, Debug, PartialEq)]
pub struct Decrypted {
    /// Output values, times the output multiplier.
    pub values: Vec<f64>,
    /// The estimated precision in bits (see [`estimate_precision_bits`]).
    pub precision_bits: f64,
    /// The a-priori noise floor term of the estimate (absolute, output units).
    pub noise_floor: f64,
    /// The a-posteriori measured term of the estimate (absolute, output units).
    pub measured_noise: f64,
}

/// Decrypts output ciphertexts with the client's key ([`ClientSpec::decrypt`]: decode, unpack,
/// precision estimate) and flags implausible results: a non-finite value, a value above
/// [`MAX_PLAUSIBLE_VALUE`], or an estimated precision below [`MIN_PRECISION_BITS`] (an error
/// of 1 or more) is `ERROR_DECRYPTION_FAILED`, the signature of a result made for another key
/// or corrupted in its coefficients.
pub fn decrypt_output(
    spec: &ClientSpec,
    encoder: &Encoder,
    dec: &Decryptor,
    cts: &[Ciphertext],
) -> Result<Decrypted> {
    // ClientSpec::decrypt refuses a count that does not match the output map (malformed).
    let out = spec.decrypt(encoder, dec, cts).map_err(|e| match e {
        CompileError::Ckks(e) => ToolError::from_ckks(&e, ErrorCode::MalformedCiphertext),
        other => malformed(other),
    })?;
    let values = out.images.into_iter().next().unwrap_or_default();
    let (floor, measured, precision_bits) =
        (out.noise_floor, out.measured_noise, out.precision_bits);
    let failed = |why: String| {
        Err(ToolError::new(
            ErrorCode::DecryptionFailed,
            format!("the result does not decrypt under this client's key ({why})"),
        ))
    };
    if values.iter().any(|v| !v.is_finite()) {
        return failed("non-finite values".into());
    }
    if let Some(v) = values.iter().find(|v| v.abs() > MAX_PLAUSIBLE_VALUE) {
        return failed(format!("value of magnitude {:.3e}", v.abs()));
    }
    if precision_bits.is_nan() || precision_bits < MIN_PRECISION_BITS {
        return failed(format!(
            "noise estimate {:.3e} exceeds 1",
            floor.max(measured)
        ));
    }
    Ok(Decrypted {
        values,
        precision_bits,
        noise_floor: floor,
        measured_noise: measured,
    })
}

/// Numerically stable softmax (shifted by the maximum).
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The Step 6 classification of decrypted logits: argmax (first on ties), softmax, the `top_k`
/// classes by logit (ties by index), with `labels` by index (the index as text when a label is
/// missing).
pub fn classify(
    logits: &[f64],
    labels: &[String],
    output_shape: Vec<u32>,
    top_k: usize,
    precision_bits: f64,
) -> Classification {
    let probabilities = softmax(logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let label = |i: usize| labels.get(i).cloned().unwrap_or_else(|| i.to_string());
    let index = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    let best = order.first().copied().unwrap_or(0);
    Classification {
        label: label(best),
        class_index: index(best),
        top_k: order
            .iter()
            .take(top_k)
            .map(|&i| ClassScore {
                class_index: index(i),
                label: label(i),
                probability: probabilities[i],
                logit: logits[i],
            })
            .collect(),
        probabilities,
        logits: logits.to_vec(),
        output_shape,
        precision_bits,
    }
}
