//! Image preprocessing shared by the client (inputs to encrypt) and the server (calibration
//! and test images of a model package): PNG or JPEG bytes → the model's normalized CHW input.
//!
//! Decoding is bounded: the decoder refuses images wider or taller than
//! [`MAX_IMAGE_DIMENSION`] from their header and caps its allocations at
//! [`MAX_DECODE_ALLOC_BYTES`], so a decompression bomb is refused before it is inflated. The
//! image (grey, grey+alpha, RGB, RGBA or palette) is converted to the model's channel count
//! (1 → 8-bit luma, 3 → 8-bit RGB; alpha is dropped), cropped around its centre to the model's
//! aspect ratio when it differs (as `torchvision`'s resize-then-centre-crop does: nothing is
//! stretched), resized to the model's H×W with a triangle (bilinear) filter only when its size
//! differs, and normalized per channel by
//! [`InputSpec::normalize`]: `(pixel / 255 - mean[c]) / std[c]`, channel-major.

use std::io::Cursor;

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use crate::manifest::InputSpec;

/// Largest image file read.
pub const MAX_IMAGE_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// Largest width and height accepted.
pub const MAX_IMAGE_DIMENSION: u32 = 8192;
/// Most memory the decoder may allocate (an 8192×8192 RGBA8 image is 256 MiB).
pub const MAX_DECODE_ALLOC_BYTES: u64 = 320 * 1024 * 1024;

/// Why an image could not become a model input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Not a PNG or JPEG, corrupt, or over the size limits.
    #[error("image cannot be decoded: {0}")]
    Unreadable(String),
    /// The model's input shape cannot be produced from an image.
    #[error("{0}")]
    Shape(String),
    /// The model takes neither 1 nor 3 channels.
    #[error("models with {0} input channels take no image (1 or 3)")]
    Channels(usize),
}

/// How an image was fitted to the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fitted {
    /// Width and height of the decoded image.
    pub original: (u32, u32),
    /// Channels of the decoded image (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).
    pub original_channels: u8,
    /// The centred region kept to match the model's aspect ratio, `(x, y, width, height)`,
    /// when the image's aspect ratio differs.
    pub cropped: Option<(u32, u32, u32, u32)>,
    /// Whether the image (after any crop) was resized to the model's input.
    pub resized: bool,
    /// Width and height given to the model.
    pub size: (u32, u32),
    /// Channels given to the model (1 grey, 3 RGB).
    pub channels: u8,
}

/// Name of a colour mode by channel count: `grey`, `grey+alpha`, `rgb`, `rgba`.
pub fn mode_name(channels: u8) -> &'static str {
    match channels {
        1 => "grey",
        2 => "grey+alpha",
        3 => "rgb",
        _ => "rgba",
    }
}

/// Decodes PNG or JPEG bytes with the limits above.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, ImageError> {
    let unreadable = |e: &dyn std::fmt::Display| ImageError::Unreadable(e.to_string());
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| unreadable(&e))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(ImageError::Unreadable(format!(
                "{other:?} is not supported (PNG or JPEG)"
            )));
        }
        None => return Err(ImageError::Unreadable("not a PNG or JPEG file".into())),
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_DIMENSION);
    limits.max_image_height = Some(MAX_IMAGE_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_ALLOC_BYTES);
    reader.limits(limits);
    reader.decode().map_err(|e| unreadable(&e))
}

/// The 8-bit pixels of `img` fitted to `shape` = (C, H, W), channel-major, and what was done.
pub fn to_pixels(
    img: &DynamicImage,
    shape: (usize, usize, usize),
) -> Result<(Vec<u8>, Fitted), ImageError> {
    let (c, h, w) = shape;
    let (Ok(h32), Ok(w32)) = (u32::try_from(h), u32::try_from(w)) else {
        return Err(ImageError::Shape("input shape too large".into()));
    };
    if h == 0 || w == 0 || h32 > MAX_IMAGE_DIMENSION || w32 > MAX_IMAGE_DIMENSION {
        return Err(ImageError::Shape(format!(
            "model input {h}x{w} outside 1..={MAX_IMAGE_DIMENSION}"
        )));
    }
    let (iw, ih) = (img.width(), img.height());
    let cropped = centre_crop((iw, ih), (w32, h32));
    let cropped_img;
    let img = match cropped {
        Some((x, y, cw, ch)) => {
            cropped_img = img.crop_imm(x, y, cw, ch);
            &cropped_img
        }
        None => img,
    };
    let fitted = Fitted {
        original: (iw, ih),
        original_channels: img.color().channel_count(),
        cropped,
        resized: (img.width(), img.height()) != (w32, h32),
        size: (w32, h32),
        channels: if c == 3 { 3 } else { 1 },
    };
    let plane = h * w;
    let pixels: Vec<u8> = match c {
        1 => {
            let mut g = img.to_luma8();
            if fitted.resized {
                g = image::imageops::resize(&g, w32, h32, FilterType::Triangle);
            }
            g.into_raw()
        }
        3 => {
            let mut rgb = img.to_rgb8();
            if fitted.resized {
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
        other => return Err(ImageError::Channels(other)),
    };
    if pixels.len() != c * plane {
        return Err(ImageError::Shape(
            "resized image has an unexpected size".into(),
        ));
    }
    Ok((pixels, fitted))
}

/// The centred region of an image of `size` (width, height) with the aspect ratio of `target`,
/// or `None` when the ratios agree to within a pixel.
pub fn centre_crop(size: (u32, u32), target: (u32, u32)) -> Option<(u32, u32, u32, u32)> {
    let (w, h) = (u64::from(size.0), u64::from(size.1));
    let (tw, th) = (u64::from(target.0.max(1)), u64::from(target.1.max(1)));
    // Width that height h would have at the target's ratio, and the other way round.
    let want_w = (h * tw + th / 2) / th;
    let want_h = (w * th + tw / 2) / tw;
    if want_w.abs_diff(w) <= 1 || want_h.abs_diff(h) <= 1 {
        return None;
    }
    let (cw, ch) = if want_w < w {
        (want_w.max(1), h)
    } else {
        (w, want_h.max(1))
    };
    let (x, y) = ((w - cw) / 2, (h - ch) / 2);
    Some((x as u32, y as u32, cw as u32, ch as u32))
}

/// Converts a decoded image to the model input: `shape` is (C, H, W) with C = 1 or 3.
pub fn to_input(
    img: &DynamicImage,
    shape: (usize, usize, usize),
    spec: &InputSpec,
) -> Result<Vec<f64>, ImageError> {
    let (pixels, _) = to_pixels(img, shape)?;
    Ok(spec.normalize(&pixels).into_iter().map(f64::from).collect())
}

/// [`preprocess_bytes`], also saying how the image was fitted.
pub fn preprocess_bytes_fitted(
    bytes: &[u8],
    shape: (usize, usize, usize),
    spec: &InputSpec,
) -> Result<(Vec<f64>, Fitted), ImageError> {
    let (pixels, fitted) = to_pixels(&decode(bytes)?, shape)?;
    let x = spec.normalize(&pixels).into_iter().map(f64::from).collect();
    Ok((x, fitted))
}

/// Decodes `bytes` and converts them to the model input.
pub fn preprocess_bytes(
    bytes: &[u8],
    shape: (usize, usize, usize),
    spec: &InputSpec,
) -> Result<Vec<f64>, ImageError> {
    to_input(&decode(bytes)?, shape, spec)
}
