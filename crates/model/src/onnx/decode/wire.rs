//! The protobuf wire format, as far as the decoder needs it: a reader of the fields of one message,
//! conversions of field values, and the readers of repeated numeric fields (one value per field or
//! a packed run), each bounded by a limit.

use super::malformed;
use crate::onnx::{OnnxError, Result};

/// One field value, by wire type.
pub(super) enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterates over the fields of one protobuf message held in a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        if i == 9 && b > 1 {
            return Err("varint overflows 64 bits".into());
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| format!("field of {n} bytes runs past the end of its message"))?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// The next field number and value, or `None` at the end of the message.
    fn next_field(&mut self) -> Result<Option<(u64, Wire<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = read_varint(self.buf, &mut self.pos)?;
        let number = key >> 3;
        if number == 0 || number > (1 << 29) {
            return Err(format!("invalid field number {number}"));
        }
        let value = match key & 7 {
            0 => Wire::Varint(read_varint(self.buf, &mut self.pos)?),
            1 => Wire::Fixed64(u64::from_le_bytes(self.array()?)),
            2 => {
                let len = read_varint(self.buf, &mut self.pos)?;
                let len = usize::try_from(len).map_err(|_| "length overflow")?;
                Wire::Bytes(self.take(len)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(self.array()?)),
            t => return Err(format!("unsupported wire type {t} (field {number})")),
        };
        Ok(Some((number, value)))
    }
}

/// Runs `f` on every field of the message `buf`, naming `at` in errors.
pub(super) fn for_each_field<'a>(
    buf: &'a [u8],
    at: &str,
    mut f: impl FnMut(u64, Wire<'a>) -> Result<()>,
) -> Result<()> {
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.next_field().map_err(|e| malformed(at, e))? {
        f(n, v)?;
    }
    Ok(())
}

pub(super) fn as_bytes<'a>(v: Wire<'a>, at: &str) -> Result<&'a [u8]> {
    match v {
        Wire::Bytes(b) => Ok(b),
        _ => Err(malformed(at, "expected a length-delimited field")),
    }
}

pub(super) fn as_int(v: Wire<'_>, at: &str) -> Result<i64> {
    match v {
        // int64 fields are two's complement varints.
        Wire::Varint(x) => Ok(x as i64),
        _ => Err(malformed(at, "expected a varint")),
    }
}

pub(super) fn as_i32(v: Wire<'_>, at: &str) -> Result<i32> {
    let x = as_int(v, at)?;
    i32::try_from(x).map_err(|_| malformed(at, format!("{x} does not fit an int32")))
}

fn too_many(limit: u64) -> OnnxError {
    OnnxError::TooLarge {
        what: "repeated field values",
        size: limit + 1,
        limit,
    }
}

/// Repeated int64: one varint per field or a packed run.
pub(super) fn push_i64(v: Wire<'_>, out: &mut Vec<i64>, limit: u64, at: &str) -> Result<()> {
    match v {
        Wire::Varint(x) => out.push(x as i64),
        Wire::Bytes(b) => {
            let mut pos = 0;
            while pos < b.len() {
                out.push(read_varint(b, &mut pos).map_err(|e| malformed(at, e))? as i64);
                if out.len() as u64 > limit {
                    return Err(too_many(limit));
                }
            }
        }
        _ => return Err(malformed(at, "expected integer values")),
    }
    if out.len() as u64 > limit {
        return Err(too_many(limit));
    }
    Ok(())
}

/// Repeated float: one fixed32 per field or a packed run.
pub(super) fn push_f32(v: Wire<'_>, out: &mut Vec<f32>, limit: u64, at: &str) -> Result<()> {
    match v {
        Wire::Fixed32(x) => out.push(f32::from_bits(x)),
        Wire::Bytes(b) => {
            if b.len() % 4 != 0 {
                return Err(malformed(at, "packed floats not a multiple of 4 bytes"));
            }
            if (out.len() + b.len() / 4) as u64 > limit {
                return Err(too_many(limit));
            }
            out.extend(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        _ => return Err(malformed(at, "expected float values")),
    }
    if out.len() as u64 > limit {
        return Err(too_many(limit));
    }
    Ok(())
}

/// Repeated double: one fixed64 per field or a packed run.
pub(super) fn push_f64(v: Wire<'_>, out: &mut Vec<f64>, limit: u64, at: &str) -> Result<()> {
    match v {
        Wire::Fixed64(x) => out.push(f64::from_bits(x)),
        Wire::Bytes(b) => {
            if b.len() % 8 != 0 {
                return Err(malformed(at, "packed doubles not a multiple of 8 bytes"));
            }
            if (out.len() + b.len() / 8) as u64 > limit {
                return Err(too_many(limit));
            }
            out.extend(b.chunks_exact(8).map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a)
            }));
        }
        _ => return Err(malformed(at, "expected double values")),
    }
    if out.len() as u64 > limit {
        return Err(too_many(limit));
    }
    Ok(())
}
