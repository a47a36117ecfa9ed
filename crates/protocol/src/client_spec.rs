//! The model's client specification on the wire (`ModelInfo.client_spec`, `generate_keys`'s
//! `client_spec`): the compiler's [`ClientSpec`], typed, with its JSON Schema (CKKS parameters,
//! slot maps, input level and scale, rotation steps, output map).
//!
//! Parsing only checks the JSON's form; the specification is untrusted and the local server
//! still runs [`ClientSpec::validate`] (parameters rebuilt at 128 bits, parameter id, every map
//! and level against them) before it makes any key.

use serde::{Deserialize, Deserializer};

pub use cipherinfer_compiler::ClientSpec;

/// Field name of the client specification, as it appears in error messages.
pub const FIELD: &str = "client_spec";

/// Deserializes a `client_spec` field, naming the field in any error: a wrong type deep inside
/// the specification otherwise reads as a bare `invalid type` with no hint where it was. The
/// JSON is read into a value first so the message carries no inner position.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<ClientSpec, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    ClientSpec::deserialize(value)
        .map_err(|e| serde::de::Error::custom(format_args!("{FIELD}: {e}")))
}
