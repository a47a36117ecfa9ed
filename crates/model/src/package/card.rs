//! `model.json`, the card of a model package: what the network is, what its outputs mean and
//! how an image becomes its input. JSON Schema: `docs/model-card.schema.json`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::PackageError;
use crate::manifest::InputSpec;

/// Version of the card format this build reads.
pub const CARD_FORMAT: u32 = 1;
/// Most classes a card may name.
pub const MAX_LABELS: usize = 4096;
/// Longest class name, description or model name (bytes).
pub const MAX_TEXT: usize = 1024;
/// Largest input height or width.
pub const MAX_INPUT_SIDE: usize = 512;

/// The card of a model package (`model.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Card format version; this build reads 1.
    pub format_version: u32,
    /// Model name: 1–64 characters of `a-z`, `0-9`, `.`, `_`, `-`, starting with a letter or
    /// digit. Clients ask for the model by this name.
    pub name: String,
    /// One line on what the model does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Class names; index `i` names output `i`. As many as the network has outputs.
    pub labels: Vec<String>,
    /// The input image and its normalization.
    pub input: CardInput,
    /// Directory (inside the package) of calibration images, PNG or JPEG: they set the input
    /// ranges of the polynomial approximations of ReLU-like activations and MaxPool. Default
    /// `calibration`; required for a network that is not HE-friendly as it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
    /// Directory (inside the package) of labelled test images: a `labels.txt` of `FILE LABEL`
    /// lines (LABEL a class index or name) beside the images. Default `test`; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
}

/// The input image: size, channels and per-channel normalization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CardInput {
    /// 1 (grey) or 3 (colour, RGB order).
    pub channels: usize,
    /// Rows of the network's input.
    pub height: usize,
    /// Columns of the network's input.
    pub width: usize,
    /// Per-channel mean subtracted from pixels scaled to [0, 1] (one value, or one per
    /// channel).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation the centred pixels are divided by (one value, or one per
    /// channel; each > 0).
    pub std: Vec<f64>,
}

/// Whether `name` is a valid model name (the rule the protocol applies to model names).
pub fn is_valid_model_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// Whether `name` is a plain file or directory name inside a package: no separators, no `..`,
/// no leading dot, printable ASCII.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_graphic() && c != b'/' && c != b'\\' && c != b':')
}

impl ModelCard {
    /// Checks the card on its own (the ONNX graph is checked against it by
    /// [`super::ModelPackage::load`]).
    pub fn validate(&self) -> Result<(), PackageError> {
        let bad = |why: String| Err(PackageError::CardInvalid(why));
        if self.format_version != CARD_FORMAT {
            return bad(format!(
                "format_version {} is not supported (this build reads {CARD_FORMAT})",
                self.format_version
            ));
        }
        if !is_valid_model_name(&self.name) {
            return bad(format!(
                "name {:?} must be 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
                self.name
            ));
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_TEXT)
        {
            return bad(format!("description is longer than {MAX_TEXT} bytes"));
        }
        if self.labels.is_empty() || self.labels.len() > MAX_LABELS {
            return bad(format!("labels must name 1..={MAX_LABELS} classes"));
        }
        if let Some(l) = self
            .labels
            .iter()
            .find(|l| l.trim().is_empty() || l.len() > MAX_TEXT || l.chars().any(char::is_control))
        {
            return bad(format!(
                "label {l:?} must be non-empty printable text of at most {MAX_TEXT} bytes"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(l) = self.labels.iter().find(|l| !seen.insert(l.as_str())) {
            return bad(format!("label {l:?} appears twice"));
        }
        let i = &self.input;
        if i.channels != 1 && i.channels != 3 {
            return bad(format!(
                "input.channels is {}; 1 (grey) or 3 (RGB) are supported",
                i.channels
            ));
        }
        if !(1..=MAX_INPUT_SIDE).contains(&i.height) || !(1..=MAX_INPUT_SIDE).contains(&i.width) {
            return bad(format!(
                "input is {}x{}; height and width must be in 1..={MAX_INPUT_SIDE}",
                i.height, i.width
            ));
        }
        for (what, v) in [("mean", &i.mean), ("std", &i.std)] {
            if v.len() != 1 && v.len() != i.channels {
                return bad(format!(
                    "input.{what} has {} values; give 1 or one per channel ({})",
                    v.len(),
                    i.channels
                ));
            }
            if v.iter().any(|x| !x.is_finite() || x.abs() > 1e6) {
                return bad(format!("input.{what} values must be finite"));
            }
        }
        if i.std.iter().any(|&s| s <= 1e-9) {
            return bad("input.std values must be positive".into());
        }
        for (what, dir) in [("calibration", &self.calibration), ("test", &self.test)] {
            if let Some(d) = dir
                && !is_plain_name(d)
            {
                return bad(format!(
                    "{what} {d:?} must be a directory name inside the package (no '/', '..' or leading '.')"
                ));
            }
        }
        Ok(())
    }

    /// The card a shipped model of the manifest would have (name, classes, input and its
    /// normalization), to read images for it the way a package's are read.
    pub fn for_shipped(entry: &crate::manifest::ModelEntry) -> Self {
        let dim = |i: usize| entry.input.shape.get(i).copied().unwrap_or(1);
        Self {
            format_version: CARD_FORMAT,
            name: entry.name.clone(),
            description: Some(entry.description.clone()),
            labels: entry.classes.clone(),
            input: CardInput {
                channels: dim(1),
                height: dim(2),
                width: dim(3),
                mean: entry.input.mean.clone(),
                std: entry.input.std.clone(),
            },
            calibration: None,
            test: None,
        }
    }

    /// Checks the card against the network it describes: the input shape, and one label per
    /// output.
    pub fn check_network(&self, model: &crate::ir::Model) -> Result<(), PackageError> {
        let (c, h, w) = self.input_shape();
        let input = model.input_shape();
        if (input.channels, input.height, input.width) != (c, h, w) {
            return Err(PackageError::InputMismatch(format!(
                "the card's input is {c}x{h}x{w} (channels x height x width), the network's is {}x{}x{}",
                input.channels, input.height, input.width
            )));
        }
        let outputs = model.output_shape().len();
        if outputs != self.labels.len() {
            return Err(PackageError::LabelMismatch {
                labels: self.labels.len(),
                outputs,
            });
        }
        Ok(())
    }

    /// (channels, height, width) of the input.
    pub fn input_shape(&self) -> (usize, usize, usize) {
        (self.input.channels, self.input.height, self.input.width)
    }

    /// The preprocessing as clients receive it (`ModelInfo.preprocessing`): NCHW float32,
    /// `(pixel / 255 − mean[c]) / std[c]`, RGB channel order.
    pub fn input_spec(&self, graph_input: &str) -> InputSpec {
        let (c, h, w) = self.input_shape();
        // One value stands for every channel.
        let expand = |v: &[f64]| -> Vec<f64> {
            match v {
                [x] => vec![*x; c],
                _ => v.to_vec(),
            }
        };
        InputSpec {
            name: graph_input.to_string(),
            shape: vec![1, c, h, w],
            layout: "NCHW".into(),
            dtype: "float32".into(),
            preprocess: if c == 3 {
                "x[c] = (pixel_u8[c] / 255 - mean[c]) / std[c], channels in RGB order".into()
            } else {
                "x = (pixel_u8 / 255 - mean) / std, 8-bit luma".into()
            },
            mean: expand(&self.input.mean),
            std: expand(&self.input.std),
        }
    }
}
