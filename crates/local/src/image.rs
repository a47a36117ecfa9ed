//! Image preprocessing on the client: a file → the model's normalized CHW input, by the shared
//! bounded pipeline of [`cipherinfer_model::image`] (decode with size limits, convert to the
//! model's channel count, resize when the size differs, normalize per channel), with its errors
//! mapped to the protocol's error codes.

use std::path::Path;

use cipherinfer_model::image::{self as shared, ImageError};
use cipherinfer_model::manifest::InputSpec;
use cipherinfer_protocol::error::{ErrorCode, Result, ToolError};
use cipherinfer_protocol::local::ImageFit;
use image::DynamicImage;

pub use cipherinfer_model::image::{
    MAX_DECODE_ALLOC_BYTES, MAX_IMAGE_DIMENSION, MAX_IMAGE_FILE_BYTES,
};

use crate::fsutil::read_limited;

fn tool_error(e: ImageError) -> ToolError {
    let code = match e {
        ImageError::Unreadable(_) => ErrorCode::ImageUnreadable,
        ImageError::Shape(_) => ErrorCode::InvalidArgument,
        ImageError::Channels(_) => ErrorCode::UnsupportedPacking,
    };
    ToolError::new(code, e.to_string())
}

/// Decodes PNG or JPEG bytes with the shared limits.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage> {
    shared::decode(bytes).map_err(tool_error)
}

/// Converts a decoded image to the model input: `shape` is (C, H, W) with C = 1 or 3.
pub fn to_input(
    img: &DynamicImage,
    shape: (usize, usize, usize),
    spec: &InputSpec,
) -> Result<Vec<f64>> {
    shared::to_input(img, shape, spec).map_err(tool_error)
}

/// Decodes `bytes` and converts them to the model input.
pub fn preprocess_bytes(
    bytes: &[u8],
    shape: (usize, usize, usize),
    spec: &InputSpec,
) -> Result<Vec<f64>> {
    shared::preprocess_bytes(bytes, shape, spec).map_err(tool_error)
}

/// [`preprocess_file`], also saying how the image was fitted to the model's input.
pub fn preprocess_file_fitted(
    path: &Path,
    shape: (usize, usize, usize),
    spec: &InputSpec,
) -> Result<(Vec<f64>, ImageFit)> {
    let bytes = read_limited(path, MAX_IMAGE_FILE_BYTES)
        .map_err(|e| e.into_tool("image_path", ErrorCode::ImageUnreadable))?;
    let (x, f) = shared::preprocess_bytes_fitted(&bytes, shape, spec).map_err(tool_error)?;
    Ok((
        x,
        ImageFit {
            original_width: f.original.0,
            original_height: f.original.1,
            original_mode: shared::mode_name(f.original_channels).into(),
            mode: shared::mode_name(f.channels).into(),
            width: f.size.0,
            height: f.size.1,
            cropped: f.cropped.map(|(x, y, w, h)| [x, y, w, h]),
            resized: f.resized,
        },
    ))
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
