//! Independent, deliberately simple restatements of the protocol's rules for untrusted input,
//! written from `docs/protocol.md` and the validators' documentation rather than from their
//! code. The targets compare `cipherinfer-protocol` against these (differential checks).

use serde_json::Value;

/// Whether `b` may appear in a `client_id`, `session_id` or result id: `[A-Za-z0-9_-]`.
fn id_char(b: u8) -> bool {
    b.is_ascii_digit() || b.is_ascii_lowercase() || b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

/// Whether `b` may appear in a `file_name` or model name: `[A-Za-z0-9._-]`.
fn name_char(b: u8) -> bool {
    id_char(b) || b == b'.'
}

fn id_of_len(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len()) && s.bytes().all(id_char)
}

/// `client_id`: 1..=64 of `[A-Za-z0-9_-]`.
pub fn client_id_ok(s: &str) -> bool {
    id_of_len(s, 64)
}

/// `session_id`: 1..=128 of `[A-Za-z0-9_-]`.
pub fn session_id_ok(s: &str) -> bool {
    id_of_len(s, 128)
}

/// Result id: 1..=64 of `[A-Za-z0-9_-]`.
pub fn result_id_ok(s: &str) -> bool {
    id_of_len(s, 64)
}

/// Model name: 1..=64 of `[A-Za-z0-9._-]`, the first a letter or digit.
pub fn model_name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=64).contains(&b.len()) && b[0].is_ascii_alphanumeric() && b.iter().all(|&c| name_char(c))
}

/// Whether `stem` is a device name Windows reserves (CON, PRN, AUX, NUL, COM1-9, LPT1-9), in
/// any case.
fn reserved_device(stem: &str) -> bool {
    let up = stem.to_ascii_uppercase();
    match up.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" => true,
        _ => {
            let b = up.as_bytes();
            b.len() == 4
                && (b.starts_with(b"COM") || b.starts_with(b"LPT"))
                && (b'1'..=b'9').contains(&b[3])
        }
    }
}

/// `file_name`: 1..=128 of `[A-Za-z0-9._-]`, first a letter or digit, not ending in `.`, and
/// no reserved device name before the first `.`.
pub fn file_name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 128 || !b.iter().all(|&c| name_char(c)) {
        return false;
    }
    if !b[0].is_ascii_alphanumeric() || b[b.len() - 1] == b'.' {
        return false;
    }
    let stem_len = b.iter().position(|&c| c == b'.').unwrap_or(b.len());
    !reserved_device(&s[..stem_len])
}

/// Lower-case hex of exactly `len` characters, or of a length in `min..=max`.
fn lower_hex(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// A SHA-256 in lower-case hex.
pub fn sha256_hex_ok(s: &str) -> bool {
    lower_hex(s, 64, 64)
}

/// A provisioning id: 32..=64 lower-case hex digits.
pub fn provisioning_id_ok(s: &str) -> bool {
    lower_hex(s, 32, 64)
}

/// A well-formed bearer token: `cit_` and 43 characters of URL-safe Base64 (no padding).
pub fn token_ok(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("cit_") else {
        return false;
    };
    rest.len() == 43 && rest.bytes().all(id_char)
}

/// `urn:cipherinfer:key:<client_id>:<version>` with a version in 1..=999_999_999 written
/// without leading zeros: the `(client_id, version)` it names.
pub fn key_ref(s: &str) -> Option<(String, u32)> {
    let rest = s.strip_prefix("urn:cipherinfer:key:")?;
    let colon = rest.bytes().rposition(|c| c == b':')?;
    let (client, version) = (&rest[..colon], &rest[colon + 1..]);
    if !client_id_ok(client) || version.is_empty() || version.len() > 9 {
        return None;
    }
    if !version.bytes().all(|c| c.is_ascii_digit()) || version.starts_with('0') {
        return None;
    }
    let v = version
        .bytes()
        .fold(0u32, |acc, c| acc * 10 + u32::from(c - b'0'));
    Some((client.to_string(), v))
}

/// `keystore:` and 1..=8 `/`-separated segments, each a valid `file_name`.
pub fn key_store_uri(s: &str) -> Option<Vec<String>> {
    let rest = s.strip_prefix("keystore:")?;
    let segments: Vec<String> = rest.split('/').map(str::to_string).collect();
    (segments.len() <= 8 && segments.iter().all(|p| file_name_ok(p))).then_some(segments)
}

/// Value of one character of the standard Base64 alphabet.
fn b64_value(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    }))
}

/// Strict decoding of canonical padded standard Base64 (RFC 4648, Section 4): non-empty,
/// a multiple of 4 characters, padding only at the end of the last quantum, and the unused
/// low bits before the padding all zero. `None` for anything else.
pub fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(4) {
        return None;
    }
    let quanta = s.len() / 4;
    let mut out = Vec::with_capacity(quanta * 3);
    for (q, quad) in s.chunks_exact(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && q + 1 != quanta) {
            return None;
        }
        let mut acc = 0u32;
        for &c in &quad[..4 - pad] {
            acc = (acc << 6) | b64_value(c)?;
        }
        match pad {
            0 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]),
            1 => {
                if acc & 0b11 != 0 {
                    return None;
                }
                out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]);
            }
            _ => {
                if acc & 0b1111 != 0 {
                    return None;
                }
                out.push((acc >> 4) as u8);
            }
        }
    }
    Some(out)
}

/// Canonical JSON as `docs/protocol.md` states it, built from serde_json's own printing of
/// scalars and strings (which escapes exactly `"`, `\` and the control characters, with
/// lower-case `\u00XX`) plus explicit sorting of keys by their UTF-8 bytes. `None` when a
/// value sits deeper than `max_depth` (the root is at depth 0).
pub fn canonical(value: &Value, max_depth: usize) -> Option<String> {
    fn go(v: &Value, depth: usize, max: usize, out: &mut String) -> Option<()> {
        if depth > max {
            return None;
        }
        match v {
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    go(item, depth + 1, max, out)?;
                }
                out.push(']');
            }
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                out.push('{');
                for (i, (k, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).ok()?);
                    out.push(':');
                    go(item, depth + 1, max, out)?;
                }
                out.push('}');
            }
            scalar => out.push_str(&serde_json::to_string(scalar).ok()?),
        }
        Some(())
    }
    let mut out = String::new();
    go(value, 0, max_depth, &mut out)?;
    Some(out)
}

/// The indices of `0..total` not in `received`, ascending.
pub fn missing(total: u32, received: &[u32]) -> Vec<u32> {
    let have: std::collections::BTreeSet<u32> = received.iter().copied().collect();
    (0..total).filter(|i| !have.contains(i)).collect()
}
