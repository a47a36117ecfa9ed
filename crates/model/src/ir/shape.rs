//! [`Shape`], the shape of a CHW tensor, with its size checks.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::MAX_TENSOR_ELEMENTS;

/// Shape of a CHW tensor (batch 1). A flat vector of `n` values is `[n, 1, 1]`.
///
/// Serialized as `[channels, height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "[usize; 3]", into = "[usize; 3]")]
pub struct Shape {
    /// Channels (or features, for a flat vector).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl From<[usize; 3]> for Shape {
    fn from([channels, height, width]: [usize; 3]) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }
}

impl From<Shape> for [usize; 3] {
    fn from(s: Shape) -> Self {
        [s.channels, s.height, s.width]
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

impl Shape {
    /// `channels x height x width`.
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }

    /// A flat vector of `n` values: `[n, 1, 1]`.
    pub const fn flat(n: usize) -> Self {
        Self::new(n, 1, 1)
    }

    /// Number of values, or `None` on overflow.
    pub fn checked_len(&self) -> Option<usize> {
        self.channels
            .checked_mul(self.height)?
            .checked_mul(self.width)
    }

    /// Number of values (saturating; shapes inside a [`Model`](super::Model) never overflow).
    pub fn len(&self) -> usize {
        self.checked_len().unwrap_or(usize::MAX)
    }

    /// Whether the shape holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is a flat vector (`height == width == 1`).
    pub fn is_flat(&self) -> bool {
        self.height == 1 && self.width == 1
    }

    /// Values per channel (`height * width`).
    pub fn plane(&self) -> usize {
        self.height.saturating_mul(self.width)
    }

    /// The same values as a flat vector.
    pub fn flattened(&self) -> Self {
        Self::flat(self.len())
    }

    /// Checks the shape is not empty and holds at most [`MAX_TENSOR_ELEMENTS`] values.
    pub(super) fn check(&self) -> Result<(), String> {
        match self.checked_len() {
            Some(0) => Err(format!("empty shape {self}")),
            Some(n) if n <= MAX_TENSOR_ELEMENTS => Ok(()),
            _ => Err(format!(
                "shape {self} holds more than {MAX_TENSOR_ELEMENTS} values"
            )),
        }
    }
}
