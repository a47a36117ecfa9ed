//! [`SampleSet`]: labelled u8 images parsed from a sample-set file (layout in
//! `models/README.md`).

use std::fmt;
use std::path::Path;

use super::{ImageShape, ModelError, Result, SAMPLES_HEADER_LEN, SAMPLES_MAGIC, SAMPLES_VERSION};

/// Labelled u8 images loaded from a sample-set file.
#[derive(Clone, PartialEq, Eq)]
pub struct SampleSet {
    shape: ImageShape,
    num_classes: usize,
    labels: Vec<u8>,
    pixels: Vec<u8>,
}

impl fmt::Debug for SampleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SampleSet")
            .field("shape", &self.shape)
            .field("num_classes", &self.num_classes)
            .field("len", &self.labels.len())
            .finish()
    }
}

impl SampleSet {
    /// Parses a sample-set file (layout in `models/README.md`); `path` only names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let invalid = |reason: String| ModelError::InvalidSamples {
            path: path.to_path_buf(),
            reason,
        };
        let header = bytes.get(..SAMPLES_HEADER_LEN).ok_or_else(|| {
            invalid(format!(
                "{} bytes, shorter than the {SAMPLES_HEADER_LEN}-byte header",
                bytes.len()
            ))
        })?;
        if &header[..8] != SAMPLES_MAGIC {
            return Err(invalid("wrong magic (not a CISAMPLE file)".into()));
        }
        let u16_at = |i: usize| u16::from_le_bytes([header[i], header[i + 1]]);
        let version = u16_at(8);
        if version != SAMPLES_VERSION {
            return Err(invalid(format!(
                "version {version}, this loader reads {SAMPLES_VERSION}"
            )));
        }
        let num_classes = usize::from(u16_at(10));
        let count = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        let shape = ImageShape {
            height: u32::from(u16_at(16)),
            width: u32::from(u16_at(18)),
            channels: u32::from(u16_at(20)),
        };
        if num_classes == 0 || num_classes > 256 {
            return Err(invalid(format!(
                "{num_classes} classes (u8 labels allow 1 to 256)"
            )));
        }
        if count == 0 || shape.is_empty() {
            return Err(invalid(format!("empty: {count} images of shape {shape:?}")));
        }
        let count = count as usize;
        let expected = count
            .checked_mul(shape.len())
            .and_then(|p| p.checked_add(count))
            .and_then(|b| b.checked_add(SAMPLES_HEADER_LEN))
            .ok_or_else(|| invalid("sizes overflow".into()))?;
        if bytes.len() != expected {
            return Err(invalid(format!(
                "{} bytes, the header announces {expected} ({count} images of {}x{}x{})",
                bytes.len(),
                shape.channels,
                shape.height,
                shape.width
            )));
        }
        let labels = bytes[SAMPLES_HEADER_LEN..SAMPLES_HEADER_LEN + count].to_vec();
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| usize::from(l) >= num_classes)
        {
            return Err(invalid(format!(
                "image {i} has label {l}, only {num_classes} classes"
            )));
        }
        let pixels = bytes[SAMPLES_HEADER_LEN + count..].to_vec();
        Ok(Self {
            shape,
            num_classes,
            labels,
            pixels,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image (never true for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Shape of each image.
    pub fn shape(&self) -> ImageShape {
        self.shape
    }

    /// Number of classes labels are drawn from.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// All labels, in image order.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Label of image `i`.
    pub fn label(&self, i: usize) -> Option<u8> {
        self.labels.get(i).copied()
    }

    /// Pixels of image `i` (channel-major, row-major, u8).
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let n = self.shape.len();
        self.pixels
            .get(i.checked_mul(n)?..i.checked_add(1)?.checked_mul(n)?)
    }

    /// Images with their labels, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u8)> + '_ {
        self.pixels
            .chunks_exact(self.shape.len())
            .zip(self.labels.iter().copied())
    }
}
