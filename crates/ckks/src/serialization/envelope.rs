//! The 40-byte envelope every encoding starts with: reading it ([`peek_header`]), opening an
//! encoding against the parameters and object type a decoder expects, and writing it.

use super::packing::Cursor;
use super::{FORMAT_VERSION, HEADER_LEN, Header, KNOWN_FLAGS, MAGIC, ObjectType};
use crate::error::{DecodeErrorCode, Error, Result};
use crate::params::Parameters;

pub(super) fn err(code: DecodeErrorCode, detail: impl Into<String>) -> Error {
    Error::decode(code, detail)
}

/// Reads and validates the envelope (magic, version, type, flags) without decoding the payload
/// and without checking the parameter id against any parameter set.
pub fn peek_header(bytes: &[u8]) -> Result<Header> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes.get(..magic_len) != MAGIC.get(..magic_len) {
        return Err(err(DecodeErrorCode::BadMagic, "not a cipherinfer object"));
    }
    if bytes.len() < HEADER_LEN {
        return Err(err(
            DecodeErrorCode::Truncated,
            format!(
                "{} bytes is shorter than the {HEADER_LEN}-byte envelope",
                bytes.len()
            ),
        ));
    }
    let mut c = Cursor::new(bytes);
    c.take(MAGIC.len())?;
    let version = c.u16()?;
    let ty = c.u8()?;
    let flags = c.u8()?;
    let parameter_id = c.array::<32>()?;
    if version != FORMAT_VERSION {
        return Err(err(
            DecodeErrorCode::UnsupportedVersion,
            format!("format version {version}; this build reads version {FORMAT_VERSION}"),
        ));
    }
    let object_type = ObjectType::from_code(ty).ok_or_else(|| {
        err(
            DecodeErrorCode::WrongType,
            format!("unknown object type {ty}"),
        )
    })?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!("unknown flag bits {:#04x}", flags & !KNOWN_FLAGS),
        ));
    }
    Ok(Header {
        version,
        object_type,
        flags,
        parameter_id,
    })
}

/// Checks size limit and envelope; returns the header and the payload.
pub(super) fn open<'a>(
    params: &Parameters,
    bytes: &'a [u8],
    max_bytes: usize,
    expected: ObjectType,
) -> Result<(Header, &'a [u8])> {
    if bytes.len() > max_bytes {
        return Err(err(
            DecodeErrorCode::TooLarge,
            format!("{} bytes exceeds the limit of {max_bytes}", bytes.len()),
        ));
    }
    let header = peek_header(bytes)?;
    if header.object_type != expected {
        return Err(err(
            DecodeErrorCode::WrongType,
            format!(
                "found a {}, expected a {}",
                header.object_type.as_str(),
                expected.as_str()
            ),
        ));
    }
    if header.parameter_id != params.id() {
        let found: String = header
            .parameter_id
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        return Err(err(
            DecodeErrorCode::WrongParameters,
            format!(
                "bound to parameters {found}…, expected {}…",
                &params.id_hex()[..16]
            ),
        ));
    }
    let payload = bytes
        .get(HEADER_LEN..)
        .ok_or_else(|| err(DecodeErrorCode::Truncated, "missing payload"))?;
    Ok((header, payload))
}

pub(super) fn unsupported(version: u16) -> Error {
    err(
        DecodeErrorCode::UnsupportedVersion,
        format!("format version {version}"),
    )
}

pub(super) fn require_flags(header: &Header, flags: u8) -> Result<()> {
    if header.flags != flags {
        return Err(err(
            DecodeErrorCode::NonConformant,
            format!(
                "flags {:#04x} invalid for a {} (expected {flags:#04x})",
                header.flags,
                header.object_type.as_str()
            ),
        ));
    }
    Ok(())
}

pub(super) fn write_header(out: &mut Vec<u8>, ty: ObjectType, flags: u8, params: &Parameters) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(ty.code());
    out.push(flags);
    out.extend_from_slice(&params.id());
}

/// A small count written as u8; values that do not fit saturate, and decoders reject them.
pub(super) fn small_u8(x: usize) -> u8 {
    u8::try_from(x).unwrap_or(u8::MAX)
}
