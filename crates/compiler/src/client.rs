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
    /// Where each input value goes.
    pub input: SlotMap,
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
        let (c, h, w) = self.input_shape;
        let features = c
            .checked_mul(h)
            .and_then(|x| x.checked_mul(w))
            .ok_or_else(|| bad("input shape overflows"))?;
        check_map(&self.input, slots, features, "input")?;
        check_map(&self.output, slots, self.output_shape.len(), "output")?;
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
        pack_and_encrypt(
            &self.input,
            self.input_level,
            self.input_scale,
            encoder,
            dec,
            input,
        )
    }

    /// Decrypts the outputs and reads the output values.
    pub fn decrypt_output(
        &self,
        encoder: &Encoder,
        dec: &Decryptor,
        outputs: &[Ciphertext],
    ) -> Result<Vec<f64>> {
        decrypt_and_unpack(&self.output, self.output_multiplier, encoder, dec, outputs)
    }
}

/// Packs `input` by `map` and encrypts each ciphertext's slots with the secret key.
pub(crate) fn pack_and_encrypt(
    map: &SlotMap,
    level: usize,
    scale: f64,
    encoder: &Encoder,
    dec: &mut Decryptor,
    input: &[f64],
) -> Result<Vec<Ciphertext>> {
    map.pack(input, encoder.slots())?
        .iter()
        .map(|v| {
            let pt = encoder.encode(v, level, scale)?;
            Ok(dec.encrypt_symmetric(&pt)?)
        })
        .collect()
}

/// Decrypts output ciphertexts and reads the values `map` points at, times `multiplier`.
pub(crate) fn decrypt_and_unpack(
    map: &SlotMap,
    multiplier: f64,
    encoder: &Encoder,
    dec: &Decryptor,
    outputs: &[Ciphertext],
) -> Result<Vec<f64>> {
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
    Ok(map
        .unpack(&slots)
        .into_iter()
        .map(|v| v * multiplier)
        .collect())
}
