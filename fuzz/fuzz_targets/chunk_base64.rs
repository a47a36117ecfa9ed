#![no_main]
//! The checks every chunk passes before it is staged, against independent statements of their
//! rules: bounded Base64 decoding (`decode_base64_limited`: the limit holds, accepted text is
//! canonical and re-encodes to itself, the error codes are the documented ones), chunk
//! coordinates and object sizes (no overflow), `missing_chunks`, the identifier and name
//! validators (and that an accepted name is one unescaped store path segment), and bearer
//! tokens (form, hashing, the `Authorization` header).
//!
//! Input: a selector byte (byte % 5 picks the check), then that check's fields.

use cipherinfer_ckks_fuzz::{Input, reference as r};
use cipherinfer_protocol::remote::{validate_provisioning_id, validate_result_id};
use cipherinfer_protocol::validate::{
    MIN_CHUNK_BYTES, decode_base64_limited, encode_base64, max_encoded_len, missing_chunks,
    validate_client_id, validate_file_name, validate_model_name, validate_session_id,
    validate_sha256_hex,
};
use cipherinfer_protocol::{AuthToken, ErrorCode, Limits, ToolError};
use cipherinfer_remote::store::path;
use libfuzzer_sys::fuzz_target;

fn code<T>(r: Result<T, ToolError>) -> Result<T, ErrorCode> {
    r.map_err(|e| e.error_code)
}

/// What `decode_base64_limited(text, limit)` must return.
fn expected_decode(text: &str, limit: u64) -> Result<Vec<u8>, ErrorCode> {
    let longest = u128::from(limit).div_ceil(3) * 4;
    if text.len() as u128 > longest {
        return Err(ErrorCode::ChunkTooLarge);
    }
    match r::base64_decode(text.as_bytes()) {
        None => Err(ErrorCode::InvalidBase64),
        Some(b) if b.len() as u64 > limit => Err(ErrorCode::ChunkTooLarge),
        Some(b) => Ok(b),
    }
}

fn base64(input: &mut Input<'_>) {
    let mode = input.u8();
    let limit = if mode & 0x80 != 0 {
        input.u64()
    } else {
        u64::from(input.u16())
    };
    let raw = input.rest();
    let text = String::from_utf8_lossy(raw);
    let got = code(decode_base64_limited(&text, limit));
    assert_eq!(got, expected_decode(&text, limit), "{text:?} limit {limit}");
    if let Ok(bytes) = &got {
        assert!(bytes.len() as u64 <= limit);
        assert_eq!(encode_base64(bytes), text, "accepted Base64 is canonical");
    }
    // The encoder's output decodes back under its exact size limit, and not under one less.
    if !raw.is_empty() {
        let enc = encode_base64(raw);
        assert_eq!(enc.len() as u64, max_encoded_len(raw.len() as u64));
        let n = raw.len() as u64;
        assert_eq!(code(decode_base64_limited(&enc, n)).as_deref(), Ok(raw));
        assert_eq!(
            code(decode_base64_limited(&enc, n - 1)),
            Err(ErrorCode::ChunkTooLarge)
        );
    }
}

fn names(input: &mut Input<'_>) {
    let s = String::from_utf8_lossy(input.rest()).into_owned();
    let check = |got: Result<(), ToolError>, ok: bool, err: ErrorCode| {
        assert_eq!(code(got), if ok { Ok(()) } else { Err(err) }, "{s:?}");
    };
    let bad = ErrorCode::InvalidArgument;
    check(validate_client_id(&s), r::client_id_ok(&s), bad);
    check(validate_session_id(&s), r::session_id_ok(&s), bad);
    check(
        validate_file_name(&s),
        r::file_name_ok(&s),
        ErrorCode::InvalidFileName,
    );
    check(
        validate_model_name(&s),
        r::model_name_ok(&s),
        ErrorCode::UnknownModel,
    );
    check(validate_sha256_hex("f", &s), r::sha256_hex_ok(&s), bad);
    check(
        validate_provisioning_id(&s),
        r::provisioning_id_ok(&s),
        ErrorCode::UnknownSession,
    );
    check(
        validate_result_id(&s),
        r::result_id_ok(&s),
        ErrorCode::ResultNotFound,
    );
    if r::file_name_ok(&s) {
        // Never a path: no separator, no `.`/`..`, no hidden or option-like name, and the
        // store keeps it as one segment, unescaped.
        assert!(!s.contains(['/', '\\', '\0']) && !s.starts_with(['.', '-']));
        let p = path(&["objects", &s]);
        assert_eq!(p.parts().count(), 2);
        assert_eq!(p.as_ref(), format!("objects/{s}"));
    }
}

fn arithmetic(input: &mut Input<'_>) {
    let (index, total, max) = (input.u32(), input.u32(), input.u32());
    let ok = total >= 1 && total <= max && index < total;
    let got = code(Limits::check_chunk_coordinates(index, total, max));
    assert_eq!(
        got,
        if ok {
            Ok(())
        } else {
            Err(ErrorCode::InvalidChunkIndex)
        }
    );

    let (so_far, incoming, max_bytes) = (input.u64(), input.u64(), input.u64());
    let fits = u128::from(so_far) + u128::from(incoming) <= u128::from(max_bytes);
    let got = code(Limits::check_object_size(so_far, incoming, max_bytes));
    assert_eq!(
        got,
        if fits {
            Ok(())
        } else {
            Err(ErrorCode::ObjectTooLarge)
        }
    );

    let bytes = input.u64();
    let want = u128::from(bytes)
        .div_ceil(u128::from(MIN_CHUNK_BYTES))
        .clamp(1, u128::from(u32::MAX));
    assert_eq!(u128::from(Limits::max_total_chunks_for(bytes)), want);
    let limits = Limits {
        max_chunk_bytes: bytes,
        ..Limits::default()
    };
    let b64 = u128::from(bytes).div_ceil(3) * 4;
    assert_eq!(
        u128::from(limits.max_chunk_b64_len()),
        b64.min(u128::from(u64::MAX))
    );
}

fn missing(input: &mut Input<'_>) {
    // The server calls it with a stored total_chunks, at most the configured maximum.
    let total = u32::from(input.u16() % 4096);
    let mut received = Vec::new();
    while !input.is_empty() {
        let i = input.u16();
        // Mostly indices near the range, sometimes far outside it.
        received.push(if i & 0x8000 != 0 {
            u32::from(i) << 16
        } else {
            u32::from(i) % (total + 8)
        });
    }
    let got = missing_chunks(total, &received);
    assert_eq!(got, r::missing(total, &received));
}

fn tokens(input: &mut Input<'_>) {
    let s = String::from_utf8_lossy(input.rest()).into_owned();
    let token = AuthToken::from_string(s.clone());
    assert_eq!(token.is_well_formed(), r::token_ok(&s));
    match token.hash() {
        Ok(h) => {
            assert!(r::token_ok(&s));
            assert!(h.verify(Some(&token)).is_ok());
            assert!(h.verify(None).is_err());
            let mut other = s.clone().into_bytes();
            if let Some(last) = other.last_mut() {
                *last = if *last == b'A' { b'B' } else { b'A' };
            }
            let other = AuthToken::from_string(String::from_utf8(other).expect("ASCII"));
            assert!(h.verify(Some(&other)).is_err());
        }
        Err(e) => {
            assert!(!r::token_ok(&s));
            assert_eq!(e.error_code, ErrorCode::Unauthorized);
        }
    }
    if let Some(t) = AuthToken::from_authorization_header(&s) {
        let (scheme, rest) = s.trim().split_once(' ').expect("a scheme and a token");
        assert!(scheme.eq_ignore_ascii_case("bearer"));
        assert_eq!(t.expose(), rest.trim());
        assert!(!t.expose().is_empty() && t.expose().len() <= 256);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    match input.u8() % 5 {
        0 => base64(&mut input),
        1 => names(&mut input),
        2 => arithmetic(&mut input),
        3 => missing(&mut input),
        _ => tokens(&mut input),
    }
});
