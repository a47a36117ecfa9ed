//! Image preprocessing: PNG or JPEG bytes → the model's normalized CHW input.
//!
//! Decoding is bounded: at most [`MAX_IMAGE_FILE_BYTES`] are read, the decoder refuses images
//! wider or taller than [`MAX_IMAGE_DIMENSION`] from their header and caps its allocations at
//! [`MAX_DECODE_ALLOC_BYTES`], so a decompression bomb is refused before it is inflated. The
//! image is converted to the model's channel count (1 → 8-bit luma, 3 → 8-bit RGB), resized to
//! the model's H×W with a triangle (bilinear) filter only when its size differs, and normalized
//! per channel by [`InputSpec::normalize`]: `(pixel / 255 - mean[c]) / std[c]`, channel-major.

use std::io::Cursor;
use std::path::Path;

use cipherinfer_model::manifest::InputSpec;
use cipherinfer_protocol::error::{ErrorCode, Result, ToolError};
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use crate::fsutil::read_limited;

/// Largest image file read.
pub const MAX_IMAGE_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// Largest width and height accepted.
pub const MAX_IMAGE_DIMENSION: u32 = 8192;
/// Most memory the decoder may allocate (an 8192×8192 RGBA8 image is 256 MiB).
pub const MAX_DECODE_ALLOC_BYTES: u64 = 320 * 1024 * 1024;

fn unreadable(why: impl std::fmt::Display) -> ToolError {
    ToolError::new(
        ErrorCode::ImageUnreadable,
        format!("image cannot be decoded: {why}"),
    )
}

/// Decodes PNG or JPEG bytes with the limits above.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(unreadable)?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(unreadable(format!(
                "{other:?} is not supported (PNG or JPEG)"
            )));
        }
        None => return Err(unreadable("not a PNG or JPEG file")),
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_DIMENSION);
    limits.max_image_height = Some(MAX_IMAGE_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_ALLOC_BYTES);
    reader.limits(limits);
    reader.decode().map_err(unreadable)
}

/// Converts a decoded image to the model input: `shape` is (C, H, W) with C = 1 or 3.
pub fn to_input(
    img: &DynamicImage,
    shape: (usize, usize, usize),
    spec: &InputSpec,
) -> Result<Vec<f64>> {
    let (c, h, w) = shape;
    let (Ok(h32), Ok(w32)) = (u32::try_from(h), u32::try_from(w)) else {
        return Err(ToolError::new(
            ErrorCode::InvalidArgument,
            "input shape too large",
        ));
    };
    if h == 0 || w == 0 || h32 > MAX_IMAGE_DIMENSION || w32 > MAX_IMAGE_DIMENSION {
        return Err(ToolError::new(
            ErrorCode::InvalidArgument,
            format!("model input {h}x{w} outside 1..={MAX_IMAGE_DIMENSION}"),
        ));
    }
    let plane = h * w;
    let pixels: Vec<u8> = match c {
        1 => {
            let mut g = img.to_luma8();
            if g.dimensions() != (w32, h32) {
                g = image::imageops::resize(&g, w32, h32, FilterType::Triangle);
            }
            g.into_raw()
        }
        3 => {
            let mut rgb = img.to_rgb8();
            if rgb.dimensions() != (w32, h32) {
                rgb = image::imageops::resize(&rgb, w32, h32, FilterType::Triangle);
            }
            // Interleaved HWC → channel-major CHW.
            let raw = rgb.into_raw();
            let mut chw = vec![0u8; 3 * plane];
            for (i, px) in raw.chunks_exact(3).enumerate() {
                for (ch, &v) in px.iter().enumerate() {
                    chw[ch * plane + i] = v;
                }
            }
            chw
        }
        other => {
            return Err(ToolError::new(
                ErrorCode::UnsupportedPacking,
                format!("models with {other} input channels take no image (1 or 3)"),
            ));
        }
    };
    if pixels.len() != c * plane {
        return Err(ToolError::new(
            ErrorCode::Internal,
            "resized image has an unexpected size",
        ));
    }
    Ok(spec.normalize(&pixels).into_iter().map(f64::from).collect())
}

/// Decodes `bytes` and converts them to the model input.
pub fn preprocess_bytes(
    bytes: &[u8],
    shape: (usize, usize, usize),
    spec: &InputSpec,
) -> Result<Vec<f64>> {
    to_input(&decode(bytes)?, shape, spec)
}

/// Reads (at most [`MAX_IMAGE_FILE_BYTES`]) and preprocesses an image file. A missing file is
/// `ERROR_FILE_NOT_FOUND`; a file that is too large or cannot be decoded is
/// `ERROR_IMAGE_UNREADABLE`.
pub fn preprocess_file(
    path: &Path,
    shape: (usize, usize, usize),
    spec: &InputSpec,
) -> Result<Vec<f64>> {
    let bytes = read_limited(path, MAX_IMAGE_FILE_BYTES)
        .map_err(|e| e.into_tool("image_path", ErrorCode::ImageUnreadable))?;
    preprocess_bytes(&bytes, shape, spec)
}
