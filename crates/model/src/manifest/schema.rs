//! The serde types of `models/manifest.json` (layout in `models/README.md`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::MANIFEST_FORMAT;

/// `models/manifest.json`: the shipped datasets and models.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version of the manifest; this loader reads [`MANIFEST_FORMAT`].
    pub format_version: u32,
    /// Name of the model used when none is asked for.
    pub default_model: String,
    /// The datasets, with their labelled sample sets.
    pub datasets: Vec<DatasetEntry>,
    /// The models.
    pub models: Vec<ModelEntry>,
    /// Directory the manifest was read from; relative file names resolve against it.
    #[serde(skip)]
    pub(super) dir: PathBuf,
}

/// A dataset and the labelled samples shipped from its test split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetEntry {
    /// Dataset name, e.g. `mnist`.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// Where the data came from.
    pub source: String,
    /// Licence of the data.
    pub license: String,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// Shape of one image.
    pub image: ImageShape,
    /// The compact file of labelled test images.
    pub samples: SampleFileEntry,
    /// A few PNG images for people to try.
    pub images: Vec<SampleImage>,
}

/// Height, width and channel count of one image (pixels are u8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// Channels (1 = grey).
    pub channels: u32,
}

impl ImageShape {
    /// Number of u8 values in one image.
    pub fn len(&self) -> usize {
        self.height as usize * self.width as usize * self.channels as usize
    }

    /// Whether an image of this shape holds no pixel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Manifest entry of a sample-set file (format in `models/README.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleFileEntry {
    /// File name relative to the models directory.
    pub file: String,
    /// Format tag, `cisample-v1`.
    pub format: String,
    /// Number of images.
    pub count: usize,
    /// Index in the dataset's test split of the first image (the rest follow in order).
    pub first_test_index: usize,
    /// sha256 of the file (lowercase hex).
    pub sha256: String,
    /// Number of images per label.
    pub label_counts: Vec<usize>,
}

/// A PNG sample image with its true label.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleImage {
    /// File name relative to the models directory.
    pub file: String,
    /// True label.
    pub label: u8,
    /// Index in the dataset's test split.
    pub test_index: usize,
    /// sha256 of the file (lowercase hex).
    pub sha256: String,
}

/// A model: its ONNX file, input and output contract, accuracy and HE notes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEntry {
    /// Model name, e.g. `mnist-cnn`.
    pub name: String,
    /// One-line description of the architecture.
    pub description: String,
    /// Task, `image-classification`.
    pub task: String,
    /// Name of the dataset it was trained on (a [`DatasetEntry`]).
    pub dataset: String,
    /// ONNX file name relative to the models directory.
    pub file: String,
    /// sha256 of the ONNX file (lowercase hex).
    pub sha256: String,
    /// Size of the ONNX file in bytes.
    pub size_bytes: u64,
    /// Number of trained parameters.
    pub parameters: u64,
    /// Opset and operators of the ONNX graph.
    pub onnx: OnnxInfo,
    /// The input tensor and its preprocessing.
    pub input: InputSpec,
    /// The output tensor.
    pub output: OutputSpec,
    /// Class names, indexed by output position.
    pub classes: Vec<String>,
    /// Plaintext accuracy.
    pub accuracy: Accuracy,
    /// How the file was produced.
    pub training: Training,
    /// Multiplicative depth and rotation needs under CKKS.
    pub he: HeInfo,
    /// Largest |input| seen by each activation on the test set.
    #[serde(default)]
    pub activation_input_bounds: Vec<ActivationBound>,
    /// Plaintext logits of the first sample images.
    pub reference_logits: ReferenceLogits,
}

/// Opset and operators of an ONNX graph.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnnxInfo {
    /// Default-domain opset version.
    pub opset: u32,
    /// `op_type` of every node, in graph order.
    pub ops: Vec<String>,
}

/// Input tensor of a model and how pixels become its values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputSpec {
    /// Graph input name.
    pub name: String,
    /// Shape, NCHW.
    pub shape: Vec<usize>,
    /// Layout tag, `NCHW`.
    pub layout: String,
    /// Element type, `float32`.
    pub dtype: String,
    /// The preprocessing, in words.
    pub preprocess: String,
    /// Per-channel mean on the [0, 1] pixel scale.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation on the [0, 1] pixel scale.
    pub std: Vec<f64>,
}

impl InputSpec {
    /// Turns u8 pixels (channel-major) into model inputs: `(pixel / 255 - mean) / std`.
    pub fn normalize(&self, pixels: &[u8]) -> Vec<f32> {
        let channels = self.mean.len().max(1);
        let plane = pixels.len().div_ceil(channels).max(1);
        pixels
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let c = (i / plane).min(channels - 1);
                let mean = self.mean.get(c).copied().unwrap_or(0.0);
                let std = self.std.get(c).copied().unwrap_or(1.0);
                ((f64::from(p) / 255.0 - mean) / std) as f32
            })
            .collect()
    }
}

/// Output tensor of a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Graph output name.
    pub name: String,
    /// Shape, `[1, classes]`.
    pub shape: Vec<usize>,
    /// What the values mean.
    pub meaning: String,
}

/// Plaintext accuracy of a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accuracy {
    /// Which test set, in words.
    pub test_set: String,
    /// Top-1 accuracy on the full test set.
    pub plaintext: f64,
    /// Top-1 accuracy on the shipped sample set.
    pub samples: f64,
    /// The sample set that `samples` refers to.
    pub samples_file: String,
}

/// How a model file was produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Training {
    /// The exact command, run from the repository root.
    pub command: String,
    /// Everything else recorded (seed, epochs, optimizer, ...).
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// What running a model under CKKS costs, as designed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeInfo {
    /// Whether the graph uses only HE-friendly operations (linear layers and polynomials).
    pub friendly: bool,
    /// The activation function(s).
    pub activation: String,
    /// Multiplicative depth counting each Conv, Gemm, AveragePool and square as 1; `None` when
    /// the model is not HE-friendly as it stands.
    #[serde(default)]
    pub multiplicative_depth: Option<u32>,
    /// The depth once adjacent linear layers are merged (e.g. AveragePool into the next Gemm).
    #[serde(default)]
    pub multiplicative_depth_folded: Option<u32>,
    /// Depth contributed by each node, in order.
    #[serde(default)]
    pub depth_breakdown: Vec<String>,
    /// Rotation needs, in words.
    pub rotations: String,
    /// The ring the model was designed for.
    #[serde(default)]
    pub ring: String,
}

/// Largest |input| an activation saw on the test set: the interval a polynomial must cover.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActivationBound {
    /// Module name in the training script.
    pub module: String,
    /// Largest absolute input value.
    pub max_abs_input: f64,
}

/// Plaintext logits of the first images of the sample set, for reference checks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceLogits {
    /// How they were computed.
    pub note: String,
    /// Number of images (from the start of the sample set).
    pub first_samples: usize,
    /// One row of logits per image.
    pub logits: Vec<Vec<f32>>,
}
