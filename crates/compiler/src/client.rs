//! What the client needs from a compiled model, and nothing of the server's plan: parameters,
//! input packing, the level and scale to encrypt at, the rotation keys to generate, and where the
//! outputs are. It travels from the server to the client, so [`ClientSpec::validate`] checks it
//! like any untrusted input before use.

use std::sync::Arc;

use cipherinfer_ckks::{
    Ciphertext, Decryptor, Encoder, Parameters, ParametersLiteral, SecretDistribution,
    SymmetricEncryptor,
};
use serde::{Deserialize, Serialize};

use crate::error::{CompileError, Result};
use crate::network::Shape;
use crate::plan::SlotMap;

/// Largest number of ciphertexts an input or output may span.
pub const MAX_CIPHERTEXTS: usize = 64;

/// The client's view of a compiled model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientSpec {
    /// CKKS parameters (explicit primes).
    pub parameters: ParametersLiteral,
    /// Hex SHA-256 parameter id, which must match `parameters`.
    pub parameter_id: String,
    /// Input shape (channels, height, width).
    pub input_shape: (usize, usize, usize),
    /// Where each input value goes, in the slots of one image (`slots / batch_size`).
    pub input: SlotMap,
    /// Images per ciphertext set: image `b`'s slot `i` is slot `i · batch_size + b`.
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Level to encrypt the input at.
    pub input_level: usize,
    /// Scale to encode the input at.
    pub input_scale: f64,
    /// Rotation steps to generate keys for.
    pub rotation_steps: Vec<i64>,
    /// Whether a relinearization key is needed.
    pub relinearization: bool,
    /// Where each output value is.
    pub output: SlotMap,
    /// Output shape.
    pub output_shape: Shape,
    /// Decrypted outputs are multiplied by this.
    pub output_multiplier: f64,
    /// Levels the evaluation consumes.
    pub depth: usize,
}

fn one() -> usize {
    1
}

fn bad(msg: impl Into<String>) -> CompileError {
    CompileError::Input(format!("client spec: {}", msg.into()))
}

fn check_map(map: &SlotMap, slots: usize, features: usize, what: &str) -> Result<()> {
    if map.num_cts == 0 || map.num_cts > MAX_CIPHERTEXTS {
        return Err(bad(format!("{what} spans {} ciphertexts", map.num_cts)));
    }
    if map.positions.len() != features {
        return Err(bad(format!(
            "{what} maps {} values, the shape has {features}",
            map.positions.len()
        )));
    }
    for ps in &map.positions {
        if ps.is_empty() || ps.len() > slots {
            return Err(bad(format!(
                "{what} has a value with {} positions",
                ps.len()
            )));
        }
        if ps.iter().any(|&(ct, s)| ct >= map.num_cts || s >= slots) {
            return Err(bad(format!(
                "{what} has a position outside the ciphertexts"
            )));
        }
    }
    Ok(())
}

impl ClientSpec {
    /// Rebuilds the parameters (refusing anything below 128-bit security) and checks every
    /// field against them.
    pub fn validate(&self) -> Result<Arc<Parameters>> {
        let params = self.parameters.build()?;
        if params.id_hex() != self.parameter_id {
            return Err(bad("parameter id does not match the parameters"));
        }
        let slots = params.slots();
        if self.batch_size == 0 || !self.batch_size.is_power_of_two() || self.batch_size > slots {
            return Err(bad(
                "batch size must be a power of two no larger than the slots",
            ));
        }
        let image_slots = slots / self.batch_size;
        let (c, h, w) = self.input_shape;
        let features = c
            .checked_mul(h)
            .and_then(|x| x.checked_mul(w))
            .ok_or_else(|| bad("input shape overflows"))?;
        check_map(&self.input, image_slots, features, "input")?;
        check_map(&self.output, image_slots, self.output_shape.len(), "output")?;
        if self.input_level > params.max_level() || self.depth > self.input_level {
            return Err(bad("levels out of range"));
        }
        if !(self.input_scale.is_finite()
            && self.input_scale >= 1.0
            && self.input_scale.log2() < params.log_q_at(0))
        {
            return Err(bad("input scale out of range"));
        }
        if !(self.output_multiplier.is_finite() && self.output_multiplier > 0.0) {
            return Err(bad("output multiplier out of range"));
        }
        if self.rotation_steps.len() > slots
            || self
                .rotation_steps
                .iter()
                .any(|s| s.unsigned_abs() as usize >= slots)
        {
            return Err(bad("rotation steps out of range"));
        }
        Ok(params)
    }

    /// Packs and encrypts an input (seeded ciphertexts).
    pub fn encrypt_input(
        &self,
        encoder: &Encoder,
        enc: &mut SymmetricEncryptor,
        input: &[f64],
    ) -> Result<Vec<Ciphertext>> {
        self.encrypt_batch(encoder, enc, &[input])
    }

    /// Packs up to `batch_size` inputs into one ciphertext set and encrypts it.
    pub fn encrypt_batch(
        &self,
        encoder: &Encoder,
        enc: &mut SymmetricEncryptor,
        inputs: &[&[f64]],
    ) -> Result<Vec<Ciphertext>> {
        pack_and_encrypt(
            &self.input,
            self.batch_size,
            self.input_level,
            self.input_scale,
            encoder,
            enc,
            inputs,
        )
    }

    /// Decrypts the output ciphertexts of one result: every image's output values (times the
    /// output multiplier) and the precision estimate. The one place a client reads a result.
    pub fn decrypt(
        &self,
        encoder: &Encoder,
        dec: &Decryptor,
        outputs: &[Ciphertext],
    ) -> Result<DecryptedOutput> {
        decrypt_and_unpack(
            &self.output,
            self.batch_size,
            self.output_multiplier,
            encoder,
            dec,
            outputs,
        )
    }

    /// The output values of the first image of a batch (see [`ClientSpec::decrypt`]).
    pub fn decrypt_output(
        &self,
        encoder: &Encoder,
        dec: &Decryptor,
        outputs: &[Ciphertext],
    ) -> Result<Vec<f64>> {
        let mut images = self.decrypt(encoder, dec, outputs)?.images;
        Ok(images.swap_remove(0))
    }

    /// The output values of every image of a batch (see [`ClientSpec::decrypt`]).
    pub fn decrypt_batch(
        &self,
        encoder: &Encoder,
        dec: &Decryptor,
        outputs: &[Ciphertext],
    ) -> Result<Vec<Vec<f64>>> {
        Ok(self.decrypt(encoder, dec, outputs)?.images)
    }
}

/// Packs each of `inputs` (at most `batch`) by `map` into its interleaved image slots and
/// encrypts each ciphertext's slots with the secret key.
pub(crate) fn pack_and_encrypt(
    map: &SlotMap,
    batch: usize,
    level: usize,
    scale: f64,
    encoder: &Encoder,
    enc: &mut SymmetricEncryptor,
    inputs: &[&[f64]],
) -> Result<Vec<Ciphertext>> {
    if inputs.is_empty() || inputs.len() > batch {
        return Err(CompileError::Input(format!(
            "{} inputs for a batch of {batch}",
            inputs.len()
        )));
    }
    let slots = encoder.slots();
    let image_slots = slots / batch;
    let mut cts = vec![vec![0.0; slots]; map.num_cts];
    for (b, input) in inputs.iter().enumerate() {
        for (ct, packed) in cts.iter_mut().zip(map.pack(input, image_slots)?) {
            for (i, v) in packed.into_iter().enumerate() {
                ct[i * batch + b] = v;
            }
        }
    }
    cts.iter()
        .map(|v| {
            let pt = encoder.encode(v, level, scale)?;
            Ok(enc.encrypt(&pt)?)
        })
        .collect()
}

/// A decrypted result: the output values of each image of the batch and the error estimate.
#[derive(Clone, Debug, PartialEq)]
pub struct DecryptedOutput {
    /// Output values per image of the batch (image `b` at index `b`), times the output
    /// multiplier.
    pub images: Vec<Vec<f64>>,
    /// The estimated precision in bits (see [`estimate_precision_bits`]).
    pub precision_bits: f64,
    /// The a-priori noise floor term of the estimate (absolute, output units).
    pub noise_floor: f64,
    /// The a-posteriori measured term of the estimate (absolute, output units).
    pub measured_noise: f64,
}

/// Expected Hamming weight of the secret: 2N/3 for uniform ternary, the weight for sparse.
fn hamming_weight(params: &Parameters) -> f64 {
    match params.secret_distribution() {
        SecretDistribution::SparseTernary { hamming_weight } => hamming_weight as f64,
        _ => 2.0 * params.n() as f64 / 3.0,
    }
}

/// The a-priori noise floor of a decrypted slot value of a ciphertext at `scale`, times
/// `multiplier`: six standard deviations of the rounding noise its last rescale leaves,
/// `6 · m · sqrt(N/2 · (1 + h)/12) / Δ` (`N` ring degree, `h` Hamming weight of the secret,
/// `Δ` scale, `m` output multiplier). No correctly evaluated output is more precise than this.
pub fn noise_floor(params: &Parameters, scale: f64, multiplier: f64) -> f64 {
    let n = params.n() as f64;
    let h = hamming_weight(params);
    6.0 * multiplier * (n / 2.0 * (1.0 + h) / 12.0).sqrt() / scale
}

/// The precision estimate in bits, `-log2(max(floor, measured))`:
///
/// * `floor` = [`noise_floor`] of the output ciphertext's scale (the worst over the result's
///   ciphertexts), from the ring degree, the secret's Hamming weight and the scale;
/// * `measured` = `m · max_k |Im z_k|` over every slot `k` of every output ciphertext. The
///   model's inputs, weights and activations are real, so the message's imaginary parts are
///   exactly zero and the decoded imaginary parts are pure noise, distributed like the noise
///   of the real parts (the noise polynomial is real, its slot values are complex with
///   independent, equally spread parts). Their maximum over all N/2 slots bounds the error of
///   the few output values from above with high probability. This term accounts for the noise
///   the whole evaluation accumulated (levels consumed, key switching, amplification by the
///   weights), which the floor alone does not see.
pub fn estimate_precision_bits(floor: f64, measured: f64) -> f64 {
    let err = floor.max(measured);
    if err.is_finite() && err > 0.0 {
        -err.log2()
    } else {
        f64::NEG_INFINITY
    }
}

/// Decrypts exactly `map.num_cts` output ciphertexts, reads for each of the `batch` images the
/// values `map` points at (times `multiplier`) and estimates the precision.
fn decrypt_and_unpack(
    map: &SlotMap,
    batch: usize,
    multiplier: f64,
    encoder: &Encoder,
    dec: &Decryptor,
    outputs: &[Ciphertext],
) -> Result<DecryptedOutput> {
    if outputs.len() != map.num_cts {
        return Err(CompileError::Input(format!(
            "{} output ciphertexts, the model's output spans {}",
            outputs.len(),
            map.num_cts
        )));
    }
    let params = encoder.parameters();
    let batch = batch.max(1);
    let mut slots = Vec::with_capacity(outputs.len());
    let mut max_imag = 0.0f64;
    let mut floor = 0.0f64;
    for ct in outputs {
        let z = encoder.decode_complex(&dec.decrypt(ct)?)?;
        for v in &z {
            // NaN counts as worse than anything.
            let im = v.im.abs();
            if im.is_nan() || im > max_imag {
                max_imag = if im.is_nan() { f64::INFINITY } else { im };
            }
        }
        slots.push(z.into_iter().map(|v| v.re).collect::<Vec<f64>>());
        floor = floor.max(noise_floor(params, ct.scale(), multiplier));
    }
    let images = (0..batch)
        .map(|b| {
            let image: Vec<Vec<f64>> = slots
                .iter()
                .map(|s| s.iter().skip(b).step_by(batch).copied().collect())
                .collect();
            map.unpack(&image)
                .into_iter()
                .map(|v| v * multiplier)
                .collect()
        })
        .collect();
    let measured = multiplier * max_imag;
    Ok(DecryptedOutput {
        images,
        precision_bits: estimate_precision_bits(floor, measured),
        noise_floor: floor,
        measured_noise: measured,
    })
}
