//! Canonical bytes of a tool call, the input of future request MACs and signatures (draft
//! Section 8, "Payload Integrity Protection").
//!
//! ```text
//! canonical = "cipherinfer-call-v1" 0x00 tool_name 0x00 canonical_json(arguments)
//! ```
//!
//! `canonical_json` is JSON with object keys sorted by their UTF-8 bytes, no insignificant
//! whitespace, strings escaped minimally (`"`, `\`, and control characters; controls as
//! `\b \f \n \r \t` or `\u00XX` lower-case hex; everything else, including non-ASCII, verbatim
//! in UTF-8), integers in plain decimal, and other numbers in the shortest form that reads back
//! to the same 64-bit float. Fields named in `exclude` (e.g. the MAC itself) are left out at the
//! top level only.

use serde_json::{Map, Value};

use crate::error::{ErrorCode, Result, ToolError};

/// Domain-separation prefix of [`canonical_call_bytes`].
pub const CANONICAL_PREFIX: &[u8] = b"cipherinfer-call-v1";
/// Deepest nesting accepted (arguments are shallow; this bounds recursion).
pub const MAX_DEPTH: usize = 32;

/// The canonical bytes of a call to `tool_name` with `arguments`, leaving out the top-level
/// fields in `exclude`.
pub fn canonical_call_bytes(
    tool_name: &str,
    arguments: &Value,
    exclude: &[&str],
) -> Result<Vec<u8>> {
    let mut out = call_prefix(tool_name)?;
    match arguments {
        Value::Object(map) => write_object(map, exclude, &mut out, 0)?,
        other => write_value(other, &mut out, 0)?,
    }
    Ok(out)
}

/// [`canonical_call_bytes`] of an arguments object held as a map (no copy of it is made).
pub fn canonical_object_call_bytes(
    tool_name: &str,
    arguments: &Map<String, Value>,
    exclude: &[&str],
) -> Result<Vec<u8>> {
    let mut out = call_prefix(tool_name)?;
    write_object(arguments, exclude, &mut out, 0)?;
    Ok(out)
}

fn call_prefix(tool_name: &str) -> Result<Vec<u8>> {
    if tool_name.as_bytes().contains(&0) {
        return Err(ToolError::new(
            ErrorCode::InvalidArgument,
            "tool name contains NUL",
        ));
    }
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(CANONICAL_PREFIX);
    out.push(0);
    out.extend_from_slice(tool_name.as_bytes());
    out.push(0);
    Ok(out)
}

/// Canonical JSON text of a value (see the module documentation).
pub fn canonical_json(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_value(value, &mut out, 0)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(ToolError::new(
            ErrorCode::InvalidArgument,
            format!("arguments nest deeper than {MAX_DEPTH}"),
        ));
    }
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(f) = n.as_f64() {
                if !f.is_finite() {
                    return Err(ToolError::new(
                        ErrorCode::InvalidArgument,
                        "non-finite number",
                    ));
                }
                // serde_json prints the shortest representation that round-trips (ryu).
                let v = Value::from(f);
                out.extend_from_slice(v.to_string().as_bytes());
            } else {
                return Err(ToolError::new(
                    ErrorCode::InvalidArgument,
                    "unrepresentable number",
                ));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out, depth + 1)?;
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, &[], out, depth)?,
    }
    Ok(())
}

/// An object with sorted keys, leaving out the keys in `exclude` (without copying the values:
/// arguments may hold megabytes of Base64).
fn write_object(
    map: &Map<String, Value>,
    exclude: &[&str],
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<()> {
    let mut entries: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(k, _)| !exclude.contains(&k.as_str()))
        .collect();
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(k, out);
        out.push(b':');
        write_value(v, out, depth + 1)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\u{0c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}
