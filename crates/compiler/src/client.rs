//! What the client needs from a compiled model, and nothing of the server's plan: parameters,
//! input packing, the level and scale to encrypt at, the rotation keys to generate, and where the
//! outputs are. It travels from the server to the client, so [`ClientSpec::validate`] checks it
//! like any untrusted input before use.

use std::sync::Arc;

use cipherinfer_ckks::{Ciphertext, Decryptor, Encoder, Parameters, ParametersLiteral};
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
        dec: &mut Decryptor,
        input: &[f64],
    ) -> Result<Vec<Ciphertext>> {
        self.encrypt_batch(encoder, dec, &[input])
    }

    /// Packs up to `batch_size` inputs into one ciphertext set and encrypts it.
    pub fn encrypt_batch(
        &self,
        encoder: &Encoder,
        dec: &mut Decryptor,
        inputs: &[&[f64]],
    ) -> Result<Vec<Ciphertext>> {
        pack_and_encrypt(
            &self.input,
            self.batch_size,
            self.input_level,
            self.input_scale,
            encoder,
            dec,
            inputs,
        )
    }

    /// Decrypts the outputs and reads the output values (of the first image of a batch).
    pub fn decrypt_output(
        &self,
        encoder: &Encoder,
        dec: &Decryptor,
        outputs: &[Ciphertext],
    ) -> Result<Vec<f64>> {
        let mut all = self.decrypt_batch(encoder, dec, outputs)?;
        Ok(all.swap_remove(0))
    }

    /// Decrypts the outputs and reads every image's output values.
    pub fn decrypt_batch(
        &self,
        encoder: &Encoder,
        dec: &Decryptor,
        outputs: &[Ciphertext],
    ) -> Result<Vec<Vec<f64>>> {
        decrypt_and_unpack(
            &self.output,
            self.batch_size,
            self.output_multiplier,
            encoder,
            dec,
            outputs,
        )
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
    dec: &mut Decryptor,
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
            Ok(dec.encrypt_symmetric(&pt)?)
        })
        .collect()
}

/// Decrypts output ciphertexts and reads, for each of the `batch` images, the values `map`
/// points at, times `multiplier`.
pub(crate) fn decrypt_and_unpack(
    map: &SlotMap,
    batch: usize,
    multiplier: f64,
    encoder: &Encoder,
    dec: &Decryptor,
    outputs: &[Ciphertext],
) -> Result<Vec<Vec<f64>>> {
    if outputs.len() < map.num_cts {
        return Err(CompileError::Input(format!(
            "{} output ciphertexts, the model produces {}",
            outputs.len(),
            map.num_cts
        )));
    }
    let slots = outputs
        .iter()
        .map(|c| Ok(encoder.decode(&dec.decrypt(c)?)?))
        .collect::<Result<Vec<_>>>()?;
    Ok((0..batch)
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
        .collect())
}
