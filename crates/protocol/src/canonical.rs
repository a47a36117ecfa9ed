//! Canonical bytes of a tool call, the input of request signatures (draft Section 8, "Payload
//! Integrity Protection").
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

/// Where canonical bytes go: a buffer, or straight into a hash (a chunk's call holds megabytes
/// of Base64, which need not be copied to be digested).
pub trait CanonicalSink {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
}

impl CanonicalSink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// The canonical bytes of a call to `tool_name` with `arguments`, leaving out the top-level
/// fields in `exclude`.
pub fn canonical_call_bytes(
    tool_name: &str,
    arguments: &Value,
    exclude: &[&str],
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    write_canonical_call(tool_name, arguments, exclude, &mut out)?;
    Ok(out)
}

/// [`canonical_call_bytes`] of an arguments object held as a map (no copy of it is made).
pub fn canonical_object_call_bytes(
    tool_name: &str,
    arguments: &Map<String, Value>,
    exclude: &[&str],
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    write_canonical_object_call(tool_name, arguments, exclude, &mut out)?;
    Ok(out)
}

/// Writes [`canonical_call_bytes`] to `out`; on error, `out` holds a prefix of them.
pub fn write_canonical_call<S: CanonicalSink + ?Sized>(
    tool_name: &str,
    arguments: &Value,
    exclude: &[&str],
    out: &mut S,
) -> Result<()> {
    write_call_prefix(tool_name, out)?;
    match arguments {
        Value::Object(map) => write_object(map, exclude, out, 0),
        other => write_value(other, out, 0),
    }
}

/// Writes [`canonical_object_call_bytes`] to `out`; on error, `out` holds a prefix of them.
pub fn write_canonical_object_call<S: CanonicalSink + ?Sized>(
    tool_name: &str,
    arguments: &Map<String, Value>,
    exclude: &[&str],
    out: &mut S,
) -> Result<()> {
    write_call_prefix(tool_name, out)?;
    write_object(arguments, exclude, out, 0)
}

fn write_call_prefix<S: CanonicalSink + ?Sized>(tool_name: &str, out: &mut S) -> Result<()> {
    if tool_name.as_bytes().contains(&0) {
        return Err(ToolError::new(
            ErrorCode::InvalidArgument,
            "tool name contains NUL",
        ));
    }
    out.put(CANONICAL_PREFIX);
    out.put(&[0]);
    out.put(tool_name.as_bytes());
    out.put(&[0]);
    Ok(())
}

/// Canonical JSON text of a value (see the module documentation).
pub fn canonical_json(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_value(value, &mut out, 0)?;
    Ok(out)
}

fn write_value<S: CanonicalSink + ?Sized>(value: &Value, out: &mut S, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(ToolError::new(
            ErrorCode::InvalidArgument,
            format!("arguments nest deeper than {MAX_DEPTH}"),
        ));
    }
    match value {
        Value::Null => out.put(b"null"),
        Value::Bool(true) => out.put(b"true"),
        Value::Bool(false) => out.put(b"false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.put(u.to_string().as_bytes());
            } else if let Some(i) = n.as_i64() {
                out.put(i.to_string().as_bytes());
            } else if let Some(f) = n.as_f64() {
                if !f.is_finite() {
                    return Err(ToolError::new(
                        ErrorCode::InvalidArgument,
                        "non-finite number",
                    ));
                }
                // serde_json prints the shortest representation that round-trips (ryu).
                let v = Value::from(f);
                out.put(v.to_string().as_bytes());
            } else {
                return Err(ToolError::new(
                    ErrorCode::InvalidArgument,
                    "unrepresentable number",
                ));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.put(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.put(b",");
                }
                write_value(item, out, depth + 1)?;
            }
            out.put(b"]");
        }
        Value::Object(map) => write_object(map, &[], out, depth)?,
    }
    Ok(())
}

/// An object with sorted keys, leaving out the keys in `exclude` (without copying the values:
/// arguments may hold megabytes of Base64).
fn write_object<S: CanonicalSink + ?Sized>(
    map: &Map<String, Value>,
    exclude: &[&str],
    out: &mut S,
    depth: usize,
) -> Result<()> {
    let mut entries: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(k, _)| !exclude.contains(&k.as_str()))
        .collect();
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.put(b"{");
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        write_string(k, out);
        out.put(b":");
        write_value(v, out, depth + 1)?;
    }
    out.put(b"}");
    Ok(())
}

/// Whether canonical JSON escapes byte `b` of a string.
const fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// A string, escaped minimally. Bytes that need no escape (everything but `"`, `\\` and ASCII
/// controls, including every byte of a non-ASCII character) are passed on in runs between
/// escapes. Runs are found 64 bytes at a time with a check the compiler vectorizes (a Base64
/// chunk is one run); within a block that holds an escape, the scan stops at the first one and
/// resumes right after it, so every byte is looked at a bounded number of times.
fn write_string<S: CanonicalSink + ?Sized>(s: &str, out: &mut S) {
    const BLOCK: usize = 64;
    out.put(b"\"");
    let bytes = s.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        let block = &bytes[i..bytes.len().min(i + BLOCK)];
        if !block.iter().fold(false, |any, &b| any | needs_escape(b)) {
            i += block.len();
            continue;
        }
        let Some(offset) = block.iter().position(|&b| needs_escape(b)) else {
            i += block.len();
            continue;
        };
        let at = i + offset;
        out.put(&bytes[run..at]);
        match bytes[at] {
            b'"' => out.put(b"\\\""),
            b'\\' => out.put(b"\\\\"),
            0x08 => out.put(b"\\b"),
            0x0c => out.put(b"\\f"),
            b'\n' => out.put(b"\\n"),
            b'\r' => out.put(b"\\r"),
            b'\t' => out.put(b"\\t"),
            b => out.put(format!("\\u{b:04x}").as_bytes()),
        }
        i = at + 1;
        run = i;
    }
    out.put(&bytes[run..]);
    out.put(b"\"");
}
