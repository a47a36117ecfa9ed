//! Loader for `models/`: the manifest, sha256-verified model files and labelled sample sets.
//!
//! `models/manifest.json` is written by the training scripts (`training/common.py`); its layout is
//! described in `models/README.md`. Every file the manifest names is resolved relative to the
//! manifest's directory, may not leave it, and is checked against its recorded sha256 before use,
//! so a missing or corrupted file fails with an error that names it.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// File name of the manifest inside a models directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The manifest `format_version` this loader understands.
pub const MANIFEST_FORMAT: u32 = 1;
/// Largest manifest read, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest model file read, in bytes (HE-friendly models are far smaller: plaintext weights cost
/// server time per value).
pub const MAX_MODEL_BYTES: u64 = 64 << 20;
/// Largest sample-set file read, in bytes.
pub const MAX_SAMPLES_BYTES: u64 = 64 << 20;
/// Magic bytes opening a sample-set file.
pub const SAMPLES_MAGIC: &[u8; 8] = b"CISAMPLE";
/// The sample-set file version this loader understands.
pub const SAMPLES_VERSION: u16 = 1;
/// Length of a sample-set file header in bytes.
pub const SAMPLES_HEADER_LEN: usize = 24;

/// Why a manifest, model file or sample set could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The file does not exist.
    #[error("missing file {path}")]
    Missing {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// The file exists but its bytes are not the ones the manifest recorded.
    #[error("corrupted file {path}: its sha256 is {actual}, the manifest expects {expected}")]
    HashMismatch {
        /// The corrupted file.
        path: PathBuf,
        /// sha256 recorded in the manifest (lowercase hex).
        expected: String,
        /// sha256 of the bytes read (lowercase hex).
        actual: String,
    },
    /// The file is larger than the loader accepts.
    #[error("file {path} is too large: {size} bytes, limit {limit}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// Reading the file failed for another reason.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("manifest {path} is not valid: {source}")]
    ManifestJson {
        /// The manifest file.
        path: PathBuf,
        /// The JSON error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// The manifest parsed but is inconsistent.
    #[error("manifest {path} is not valid: {reason}")]
    ManifestInvalid {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No model of that name in the manifest.
    #[error("no model named {name:?} in the manifest (it lists: {known})")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The names the manifest lists, comma-separated.
        known: String,
    },
    /// No dataset of that name in the manifest.
    #[error("no dataset named {name:?} in the manifest (it lists: {known})")]
    UnknownDataset {
        /// The name asked for.
        name: String,
        /// The names the manifest lists, comma-separated.
        known: String,
    },
    /// A sample-set file is malformed or disagrees with its manifest entry.
    #[error("sample file {path} is not valid: {reason}")]
    InvalidSamples {
        /// The sample file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Result type of this module.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// The repository's `models/` directory, as located when this crate was built.
pub fn shipped_models_dir() -> PathBuf {
    // `crates/model` → the repository root, without `..` components (paths built from it pass
    // the local server's path checks).
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().and_then(Path::parent).map_or_else(
        || crate_dir.join("../../models"),
        |root| root.join("models"),
    )
}

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
    dir: PathBuf,
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

/// A model file whose bytes matched the manifest's sha256.
#[derive(Clone)]
pub struct VerifiedModel {
    /// Model name.
    pub name: String,
    /// Path the bytes were read from.
    pub path: PathBuf,
    /// The ONNX bytes.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for VerifiedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedModel")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("bytes", &format_args!("{} bytes", self.bytes.len()))
            .finish()
    }
}

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

impl Manifest {
    /// Reads and validates `dir/manifest.json`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join(MANIFEST_FILE);
        let bytes = read_limited(&path, MAX_MANIFEST_BYTES)?;
        let mut manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| ModelError::ManifestJson {
                path: path.clone(),
                source,
            })?;
        manifest.dir = dir.to_path_buf();
        manifest
            .validate()
            .map_err(|reason| ModelError::ManifestInvalid { path, reason })?;
        Ok(manifest)
    }

    /// Reads the repository's shipped manifest ([`shipped_models_dir`]).
    pub fn shipped() -> Result<Self> {
        Self::load(shipped_models_dir())
    }

    /// Directory the manifest was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model of that name.
    pub fn model(&self, name: &str) -> Result<&ModelEntry> {
        self.models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| ModelError::UnknownModel {
                name: name.to_owned(),
                known: join_names(self.models.iter().map(|m| m.name.as_str())),
            })
    }

    /// The model used when none is named.
    pub fn default_model(&self) -> Result<&ModelEntry> {
        self.model(&self.default_model)
    }

    /// The dataset of that name.
    pub fn dataset(&self, name: &str) -> Result<&DatasetEntry> {
        self.datasets
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| ModelError::UnknownDataset {
                name: name.to_owned(),
                known: join_names(self.datasets.iter().map(|d| d.name.as_str())),
            })
    }

    /// Path of a file named relative to the models directory.
    pub fn path_of(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Reads a file named in the manifest and checks it against `expected_sha256`.
    pub fn read_verified(&self, file: &str, expected_sha256: &str, limit: u64) -> Result<Vec<u8>> {
        let path = self.path_of(file);
        let bytes = read_limited(&path, limit)?;
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(expected_sha256) {
            return Err(ModelError::HashMismatch {
                path,
                expected: expected_sha256.to_owned(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Reads the named model's ONNX file, verifying its sha256.
    pub fn read_model(&self, name: &str) -> Result<VerifiedModel> {
        let entry = self.model(name)?;
        let bytes = self.read_verified(&entry.file, &entry.sha256, MAX_MODEL_BYTES)?;
        Ok(VerifiedModel {
            name: entry.name.clone(),
            path: self.path_of(&entry.file),
            bytes,
        })
    }

    /// Loads a dataset's sample set, verifying its sha256 and that it matches the manifest entry.
    pub fn load_samples(&self, dataset: &str) -> Result<SampleSet> {
        let entry = self.dataset(dataset)?;
        let path = self.path_of(&entry.samples.file);
        let bytes = self.read_verified(
            &entry.samples.file,
            &entry.samples.sha256,
            MAX_SAMPLES_BYTES,
        )?;
        let set = SampleSet::parse(&bytes, &path)?;
        let mut counts = vec![0usize; set.num_classes()];
        for &l in set.labels() {
            counts[usize::from(l)] += 1;
        }
        let mismatch = if set.len() != entry.samples.count {
            Some(format!(
                "{} images, the manifest says {}",
                set.len(),
                entry.samples.count
            ))
        } else if set.num_classes() != entry.classes.len() {
            Some(format!(
                "{} classes, the manifest lists {}",
                set.num_classes(),
                entry.classes.len()
            ))
        } else if set.shape() != entry.image {
            Some(format!(
                "image shape {:?}, the manifest says {:?}",
                set.shape(),
                entry.image
            ))
        } else if counts != entry.samples.label_counts {
            Some(format!(
                "label counts {counts:?}, the manifest says {:?}",
                entry.samples.label_counts
            ))
        } else {
            None
        };
        match mismatch {
            Some(reason) => Err(ModelError::InvalidSamples { path, reason }),
            None => Ok(set),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.format_version != MANIFEST_FORMAT {
            return Err(format!(
                "format_version {}, this loader reads {MANIFEST_FORMAT}",
                self.format_version
            ));
        }
        unique(self.datasets.iter().map(|d| d.name.as_str()), "dataset")?;
        unique(self.models.iter().map(|m| m.name.as_str()), "model")?;
        if !self.models.iter().any(|m| m.name == self.default_model) {
            return Err(format!(
                "default_model {:?} is not a listed model",
                self.default_model
            ));
        }
        for d in &self.datasets {
            let ctx = |e: String| format!("dataset {:?}: {e}", d.name);
            check_file_name(&d.samples.file).map_err(ctx)?;
            check_sha256(&d.samples.sha256).map_err(ctx)?;
            if d.classes.is_empty() || d.classes.len() > 256 {
                return Err(ctx(format!("{} classes", d.classes.len())));
            }
            if d.samples.label_counts.len() != d.classes.len() {
                return Err(ctx("label_counts does not have one count per class".into()));
            }
            for img in &d.images {
                check_file_name(&img.file).map_err(ctx)?;
                check_sha256(&img.sha256).map_err(ctx)?;
                if usize::from(img.label) >= d.classes.len() {
                    return Err(ctx(format!("{} has label {}", img.file, img.label)));
                }
            }
        }
        for m in &self.models {
            let ctx = |e: String| format!("model {:?}: {e}", m.name);
            check_file_name(&m.file).map_err(ctx)?;
            check_sha256(&m.sha256).map_err(ctx)?;
            let dataset = self
                .datasets
                .iter()
                .find(|d| d.name == m.dataset)
                .ok_or_else(|| ctx(format!("unknown dataset {:?}", m.dataset)))?;
            if m.classes != dataset.classes {
                return Err(ctx("classes differ from its dataset's".into()));
            }
            if m.output.shape.last() != Some(&m.classes.len()) {
                return Err(ctx(format!(
                    "output shape {:?} does not end in the {} classes",
                    m.output.shape,
                    m.classes.len()
                )));
            }
            let channels = m.input.shape.get(1).copied().unwrap_or(0);
            if m.input.shape.len() != 4
                || m.input.mean.len() != channels
                || m.input.std.len() != channels
            {
                return Err(ctx(
                    "input needs an NCHW shape and one mean and std per channel".into(),
                ));
            }
            if m.input.std.iter().any(|&s| s.is_nan() || s <= 0.0) {
                return Err(ctx("std must be positive".into()));
            }
        }
        Ok(())
    }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads a whole file, refusing one larger than `limit` before allocating for it.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let io_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            ModelError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            ModelError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if size > limit {
        return Err(ModelError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // The file may grow between the size check and the read: never take more than the limit.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > limit {
        return Err(ModelError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// A file named in the manifest must stay inside the models directory.
fn check_file_name(file: &str) -> Result<(), String> {
    let p = Path::new(file);
    let ok = !file.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "file name {file:?} must be relative and stay inside the models directory"
        ))
    }
}

fn check_sha256(s: &str) -> Result<(), String> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a hex sha256"))
    }
}

fn unique<'a>(names: impl Iterator<Item = &'a str>, what: &str) -> Result<(), String> {
    let mut seen = HashSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(format!("{what} {n:?} is listed twice"));
        }
    }
    Ok(())
}

fn join_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_bytes(labels: &[u8], shape: (u16, u16, u16), classes: u16) -> Vec<u8> {
        let (h, w, c) = shape;
        let mut b = SAMPLES_MAGIC.to_vec();
        b.extend(SAMPLES_VERSION.to_le_bytes());
        b.extend(classes.to_le_bytes());
        b.extend((labels.len() as u32).to_le_bytes());
        for v in [h, w, c, 0] {
            b.extend(v.to_le_bytes());
        }
        b.extend(labels);
        let n = labels.len() * usize::from(h) * usize::from(w) * usize::from(c);
        b.extend((0..n).map(|i| (i % 251) as u8));
        b
    }

    #[test]
    fn parses_a_well_formed_sample_set() {
        let bytes = sample_bytes(&[3, 0, 9], (2, 3, 1), 10);
        let set = SampleSet::parse(&bytes, Path::new("s.bin")).expect("valid");
        assert_eq!(set.len(), 3);
        assert_eq!(set.labels(), &[3, 0, 9]);
        assert_eq!(set.image(1), Some(&[6u8, 7, 8, 9, 10, 11][..]));
        assert_eq!(set.image(3), None);
        assert_eq!(set.iter().count(), 3);
    }

    #[test]
    fn rejects_malformed_sample_sets_without_panicking() {
        let good = sample_bytes(&[1, 2], (2, 2, 1), 10);
        let mut cases: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        let mut longer = good.clone();
        longer.push(0);
        cases.push(longer);
        let mut magic = good.clone();
        magic[0] ^= 1;
        cases.push(magic);
        cases.push(sample_bytes(&[1, 10], (2, 2, 1), 10)); // label out of range
        cases.push(sample_bytes(&[], (2, 2, 1), 10)); // empty
        cases.push(sample_bytes(&[0], (2, 2, 1), 0)); // no classes
        let mut huge = good.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        huge[16..22].copy_from_slice(&[0xff; 6]);
        cases.push(huge);
        for bytes in cases {
            let r = SampleSet::parse(&bytes, Path::new("bad.bin"));
            assert!(
                matches!(&r, Err(ModelError::InvalidSamples { path, .. }) if path == Path::new("bad.bin")),
                "accepted or wrong error: {r:?}"
            );
        }
    }

    #[test]
    fn file_names_may_not_leave_the_models_directory() {
        assert!(check_file_name("mnist-cnn.onnx").is_ok());
        assert!(check_file_name("samples/mnist/a.png").is_ok());
        for bad in ["", "/etc/passwd", "../x.onnx", "samples/../../x", "./x"] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn normalizes_pixels_per_channel() {
        let spec = InputSpec {
            name: "input".into(),
            shape: vec![1, 1, 1, 2],
            layout: "NCHW".into(),
            dtype: "float32".into(),
            preprocess: String::new(),
            mean: vec![0.5],
            std: vec![0.25],
        };
        assert_eq!(spec.normalize(&[0, 255]), vec![-2.0, 2.0]);
    }
}
