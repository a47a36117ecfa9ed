//! What the client needs from a compiled model, and nothing of the server's plan: parameters,
//! input packing, the level and scale to encrypt at, the rotation keys to generate, and where the
//! outputs are. It travels from the server to the client, so [`ClientSpec::validate`] checks it
//! like any untrusted input before use.
//!
//! It is typed wire data: the protocol's `ModelInfo.client_spec` and `generate_keys`'s
//! `client_spec` are this struct, and its JSON Schema (derived here, with a mirror of the CKKS
//! crate's [`ParametersLiteral`], which has no schema of its own) describes them field by field.

use std::sync::Arc;

use cipherinfer_ckks::{
    Ciphertext, Decryptor, Encoder, Parameters, ParametersLiteral, SecretDistribution,
    SymmetricEncryptor,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{CompileError, Result};
use crate::network::Shape;
use crate::plan::SlotMap;

/// Largest number of ciphertexts an input or output may span.
pub const MAX_CIPHERTEXTS: usize = 64;

/// The client's view of a compiled model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClientSpec {
    /// CKKS parameters (explicit primes).
    #[schemars(with = "ParametersLiteralSchema")]
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
    /// The highest level each rotation key serves, in the order of `rotation_steps` (empty:
    /// every level). A key for rotations that run only low in the circuit holds fewer primes
    /// and digits, so it is smaller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotation_key_levels: Vec<usize>,
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

/// The JSON Schema of a 64-bit integer (an RNS prime) on the wire: a decimal string, since JSON
/// numbers above 2^53 lose precision in JavaScript; readers also accept a JSON integer (see
/// [`cipherinfer_ckks::params::decimal`]). Used with `#[schemars(with = ...)]`.
#[derive(Debug)]
pub struct DecimalU64;

impl JsonSchema for DecimalU64 {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DecimalU64".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]{1,20}$",
            "description": "An unsigned 64-bit integer as a decimal string (a JSON integer is also accepted on input)."
        })
    }
}

/// The JSON Schema of [`ParametersLiteral`] (the CKKS crate has no schemars dependency): the
/// same fields with the same serde attributes, so the schema describes exactly the JSON the
/// literal reads and writes. A test checks both round trips.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    rename = "ParametersLiteral",
    description = "CKKS parameter set (the CKKS crate's ParametersLiteral): `log_q` (bit sizes) \
                   or `q` (explicit primes), likewise `log_p` or `p` for the special primes. In a \
                   client specification it is the canonical literal, with explicit primes."
)]
pub(crate) struct ParametersLiteralSchema {
    /// log2 of the ring degree N.
    log_n: u32,
    /// Bit sizes of the ciphertext primes q_0 (base) .. q_L.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    log_q: Vec<u32>,
    /// Explicit ciphertext primes (alternative to `log_q`), as decimal strings.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "cipherinfer_ckks::params::decimal"
    )]
    #[schemars(with = "Vec<DecimalU64>")]
    q: Vec<u64>,
    /// Bit sizes of the special primes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    log_p: Vec<u32>,
    /// Explicit special primes (alternative to `log_p`), as decimal strings.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "cipherinfer_ckks::params::decimal"
    )]
    #[schemars(with = "Vec<DecimalU64>")]
    p: Vec<u64>,
    /// log2 of the default encoding scale.
    log_scale: u32,
    /// Number of key-switching digits; defaults to ceil((L+1) / #special primes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dnum: Option<usize>,
    /// Secret key distribution (default uniform ternary).
    #[serde(default)]
    secret: SecretDistributionSchema,
    /// Targeted bit security: 128 (also when absent), 192 or 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 128, max = 256))]
    security_bits: Option<u32>,
}

/// The JSON Schema of [`SecretDistribution`] (see [`ParametersLiteralSchema`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[schemars(
    rename = "SecretDistribution",
    description = "Distribution of the secret key's coefficients."
)]
enum SecretDistributionSchema {
    /// Uniform over {-1, 0, 1}: the distribution the security standard's tables assume.
    #[default]
    Ternary,
    /// Ternary with exactly `hamming_weight` non-zero coefficients (at least 192 when secure).
    SparseTernary {
        /// Number of non-zero coefficients.
        hamming_weight: usize,
    },
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

/// Bytes a server holds for a set of evaluation keys: per rotation key (given by the highest
/// level it serves) and digit, two polynomials over its primes, 8 bytes per residue; a
/// relinearization key serves every level.
pub fn key_memory_bytes(
    params: &Parameters,
    rotation_key_levels: impl IntoIterator<Item = usize>,
    relinearization: bool,
) -> usize {
    let per_key = |level: usize| {
        let (digits, residues) = cipherinfer_ckks::keys::key_shape_for_level(params, level);
        digits * 2 * residues * params.n() * 8
    };
    rotation_key_levels.into_iter().map(per_key).sum::<usize>()
        + if relinearization {
            per_key(params.max_level())
        } else {
            0
        }
}

impl ClientSpec {
    /// Each rotation key to generate, by Galois element, with the highest level it serves.
    pub fn galois_key_levels(&self, params: &Parameters) -> std::collections::BTreeMap<u64, usize> {
        let mut out = std::collections::BTreeMap::new();
        for (i, &s) in self.rotation_steps.iter().enumerate() {
            let g = params.galois_element(s);
            if g == 1 {
                continue;
            }
            let level = self
                .rotation_key_levels
                .get(i)
                .copied()
                .unwrap_or(params.max_level())
                .min(params.max_level());
            let l = out.entry(g).or_insert(level);
            *l = (*l).max(level);
        }
        out
    }

    /// Generates the evaluation keys the model needs, each rotation key serving only the
    /// levels it is used at.
    pub fn evaluation_keys(
        &self,
        kg: &mut cipherinfer_ckks::KeyGenerator,
        sk: &cipherinfer_ckks::SecretKey,
    ) -> Result<cipherinfer_ckks::EvaluationKeys> {
        let params = kg.parameters().clone();
        let steps: Vec<(i64, usize)> = self
            .rotation_steps
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                (
                    s,
                    self.rotation_key_levels
                        .get(i)
                        .copied()
                        .unwrap_or(params.max_level()),
                )
            })
            .collect();
        Ok(kg.evaluation_keys_to_levels(sk, self.relinearization, &steps, false)?)
    }

    /// Bytes of the evaluation keys as uploaded (seeded).
    pub fn evaluation_keys_bytes(&self, params: &Parameters) -> usize {
        let levels: Vec<usize> = self.galois_key_levels(params).into_values().collect();
        cipherinfer_ckks::serialization::evaluation_keys_bytes_to_levels(
            params,
            &levels,
            self.relinearization,
        )
    }

    /// Bytes a server holds for the evaluation keys (see [`key_memory_bytes`]).
    pub fn key_memory_bytes(&self, params: &Parameters) -> usize {
        key_memory_bytes(
            params,
            self.galois_key_levels(params).into_values(),
            self.relinearization,
        )
    }

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
        if !(self.rotation_key_levels.is_empty()
            || self.rotation_key_levels.len() == self.rotation_steps.len())
            || self
                .rotation_key_levels
                .iter()
                .any(|&l| l > params.max_level())
        {
            return Err(bad("rotation key levels out of range"));
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

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    /// Every literal reads as the mirror and writes back the same JSON, and the other way round:
    /// the schema mirror cannot drift from the CKKS crate's serde form unnoticed.
    #[test]
    fn the_parameters_schema_mirrors_the_literal() {
        let full = ParametersLiteral {
            log_n: 13,
            log_q: vec![30, 26],
            q: vec![1_073_643_521, 67_731_457],
            log_p: vec![58],
            p: vec![288_230_376_151_130_113],
            log_scale: 26,
            dnum: Some(2),
            secret: SecretDistribution::SparseTernary {
                hamming_weight: 192,
            },
            security_bits: Some(192),
        };
        let minimal = ParametersLiteral {
            log_n: 14,
            log_q: vec![],
            q: vec![],
            log_p: vec![],
            p: vec![],
            log_scale: 40,
            dnum: None,
            secret: SecretDistribution::Ternary,
            security_bits: None,
        };
        for lit in [
            full,
            minimal,
            cipherinfer_ckks::Preset::Pn13Depth5.literal(),
        ] {
            let json = serde_json::to_value(&lit).unwrap();
            let mirror: ParametersLiteralSchema = serde_json::from_value(json.clone()).unwrap();
            let back = serde_json::to_value(&mirror).unwrap();
            assert_eq!(back, json);
            // Primes travel as decimal strings, exact beyond 2^53.
            for (key, primes) in [("q", &lit.q), ("p", &lit.p)] {
                let wire: Vec<String> = primes.iter().map(u64::to_string).collect();
                if !primes.is_empty() {
                    assert_eq!(json[key], serde_json::json!(wire));
                }
            }
            let again: ParametersLiteral = serde_json::from_value(back).unwrap();
            assert_eq!(again, lit);
        }
        // Integers are read as well as strings; anything else is refused.
        let numbers = serde_json::json!({"log_n": 13, "log_scale": 26,
            "q": [1_073_643_521_u64], "p": [288_230_376_151_130_113_u64]});
        let lit: ParametersLiteral = serde_json::from_value(numbers).unwrap();
        assert_eq!(lit.p, vec![288_230_376_151_130_113]);
        for bad in [
            serde_json::json!(["+5"]),
            serde_json::json!([" 5"]),
            serde_json::json!(["5e3"]),
            serde_json::json!(["18446744073709551616"]),
            serde_json::json!([-1]),
            serde_json::json!([1.5]),
            serde_json::json!([""]),
            serde_json::json!("5"),
        ] {
            let v = serde_json::json!({"log_n": 13, "log_scale": 26, "q": bad});
            assert!(
                serde_json::from_value::<ParametersLiteral>(v.clone()).is_err(),
                "{v}"
            );
            assert!(serde_json::from_value::<ParametersLiteralSchema>(v).is_err());
        }
        // Omitted optional fields read the same way on both sides.
        let sparse = serde_json::json!({"log_n": 12, "log_scale": 30});
        let lit: ParametersLiteral = serde_json::from_value(sparse.clone()).unwrap();
        let mirror: ParametersLiteralSchema = serde_json::from_value(sparse).unwrap();
        assert_eq!(
            serde_json::to_value(&lit).unwrap(),
            serde_json::to_value(&mirror).unwrap()
        );
    }

    #[test]
    fn the_client_spec_schema_describes_its_fields() {
        let schema = serde_json::to_value(schemars::schema_for!(ClientSpec)).unwrap();
        let props = schema["properties"].as_object().unwrap();
        for f in [
            "parameters",
            "parameter_id",
            "input_shape",
            "input",
            "batch_size",
            "input_level",
            "input_scale",
            "rotation_steps",
            "relinearization",
            "output",
            "output_shape",
            "output_multiplier",
            "depth",
        ] {
            assert!(props.contains_key(f), "{f}");
        }
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(serde_json::Value::as_str)
            .collect();
        required.sort_unstable();
        // batch_size has a default.
        assert!(!required.contains(&"batch_size"));
        assert_eq!(required.len(), 12);
        let defs = &schema["$defs"];
        let params = &defs["ParametersLiteral"];
        assert_eq!(params["additionalProperties"], serde_json::json!(false));
        assert_eq!(
            params["required"],
            serde_json::json!(["log_n", "log_scale"])
        );
        assert_eq!(params["properties"]["q"]["items"]["type"], "string");
        assert_eq!(params["properties"]["p"]["items"]["type"], "string");
        assert!(defs["SlotMap"]["properties"]["positions"].is_object());
        assert!(defs["Shape"].is_object());
    }
}
