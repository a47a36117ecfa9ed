#![no_main]
//! Canonical JSON of arbitrary JSON (the input of request MACs and signatures): never a panic;
//! an error exactly when the value nests deeper than `MAX_DEPTH`; otherwise the bytes equal an
//! independent rendering of the rules (sorted keys, no whitespace, minimal escapes, shortest
//! round-trip numbers), parse back to an equal value, and are a fixed point (canonical JSON of
//! the re-parsed value is byte-identical). `canonical_call_bytes` frames the same bytes.
//!
//! Input: a selector byte (which top-level field, if any, to exclude; whether the tool name gets
//! a NUL), then JSON text.

use cipherinfer_ckks_fuzz::reference as r;
use cipherinfer_protocol::canonical::{CANONICAL_PREFIX, MAX_DEPTH};
use cipherinfer_protocol::{canonical_call_bytes, canonical_json};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Depth of the deepest value (the root is at 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => items.iter().map(|i| depth(i) + 1).max().unwrap_or(0),
        Value::Object(map) => map.values().map(|i| depth(i) + 1).max().unwrap_or(0),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let Ok(value) = serde_json::from_slice::<Value>(text) else {
        return;
    };
    let got = canonical_json(&value);
    assert_eq!(got.is_err(), depth(&value) > MAX_DEPTH);
    let Ok(bytes) = got else {
        return;
    };
    let text = std::str::from_utf8(&bytes).expect("canonical JSON is UTF-8");
    assert_eq!(Some(text), r::canonical(&value, MAX_DEPTH).as_deref());

    let back: Value = serde_json::from_str(text).expect("canonical JSON parses");
    assert_eq!(back, value, "{text}");
    let again = canonical_json(&back).expect("same depth");
    assert_eq!(again, bytes, "canonical JSON is a fixed point");

    // The framed form: prefix, tool name, canonical arguments without the excluded field.
    let keys: Vec<String> = match &value {
        Value::Object(m) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let exclude = keys
        .get(usize::from(selector & 0x7f))
        .map(String::as_str)
        .unwrap_or("auth_token");
    let tool = if selector & 0x80 != 0 {
        "tool\0name"
    } else {
        "tool_name"
    };
    let framed = canonical_call_bytes(tool, &value, &[exclude]);
    if tool.contains('\0') {
        assert!(framed.is_err(), "a NUL in the tool name is refused");
        return;
    }
    let mut filtered = value.clone();
    if let Value::Object(m) = &mut filtered {
        m.remove(exclude);
    }
    let body = canonical_json(&filtered).expect("no deeper than the whole");
    let framed = framed.expect("framed");
    let head = [CANONICAL_PREFIX, b"\0", tool.as_bytes(), b"\0"].concat();
    assert_eq!(framed, [head, body].concat());
});
