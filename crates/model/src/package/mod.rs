//! Model packages: a user's trained network, brought as a directory.
//!
//! ```text
//! my-model/
//!   model.json          the card (card.rs; JSON Schema in docs/model-card.schema.json)
//!   model.onnx          the network as exported by torch.onnx.export
//!   calibration/        optional: PNG/JPEG images that set activation input ranges
//!   test/labels.txt     optional: `FILE LABEL` lines, images beside it
//! ```
//!
//! [`ModelPackage::load`] reads everything with size limits, checks the card on its own and
//! against the ONNX graph (input shape, output count), and preprocesses the calibration and test
//! images exactly as a client will ([`crate::image`]). Every failure is a [`PackageError`] with
//! a machine-readable [`PackageError::code`].

mod card;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use card::{
    CARD_FORMAT, CardInput, MAX_INPUT_SIDE, MAX_LABELS, ModelCard, is_plain_name,
    is_valid_model_name,
};

use crate::image::{ImageError, MAX_IMAGE_FILE_BYTES};
use crate::ir::Model;
use crate::manifest::{InputSpec, MAX_MODEL_BYTES, sha256_hex};
use crate::onnx::OnnxError;
use crate::plain::Tensor;

/// The card's file name.
pub const CARD_FILE: &str = "model.json";
/// The network's file name.
pub const ONNX_FILE: &str = "model.onnx";
/// The test labels' file name inside the test directory.
pub const TEST_LABELS_FILE: &str = "labels.txt";
/// Default calibration directory.
pub const DEFAULT_CALIBRATION_DIR: &str = "calibration";
/// Default test directory.
pub const DEFAULT_TEST_DIR: &str = "test";
/// Largest card.
pub const MAX_CARD_BYTES: u64 = 1 << 20;
/// Largest `labels.txt`.
pub const MAX_TEST_LABELS_BYTES: u64 = 4 << 20;
/// Most calibration images read (the first ones by file name).
pub const MAX_CALIBRATION_IMAGES: usize = 1000;
/// Most test images read.
pub const MAX_TEST_IMAGES: usize = 10_000;

/// Why a model package cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// A required file or directory is missing.
    #[error("{path}: not found ({what})")]
    NotFound {
        /// The missing path.
        path: PathBuf,
        /// What it should have been.
        what: &'static str,
    },
    /// Reading failed.
    #[error("{path}: {message}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A file is larger than its limit.
    #[error("{path}: larger than {limit} bytes")]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// `model.json` is not valid JSON of the card's form.
    #[error("{path}: {message}")]
    CardMalformed {
        /// The card's path.
        path: PathBuf,
        /// The parser's message (field and position).
        message: String,
    },
    /// A value of the card is out of range.
    #[error("model.json: {0}")]
    CardInvalid(String),
    /// `model.onnx` cannot be imported.
    #[error("model.onnx: {0}")]
    Onnx(#[from] OnnxError),
    /// The card's input does not match the network's input.
    #[error("model.json disagrees with model.onnx: {0}")]
    InputMismatch(String),
    /// The card names a different number of classes than the network outputs.
    #[error("model.json names {labels} labels but model.onnx has {outputs} outputs")]
    LabelMismatch {
        /// Labels in the card.
        labels: usize,
        /// Outputs of the network.
        outputs: usize,
    },
    /// A calibration or test image cannot be read or fitted.
    #[error("{path}: {source}")]
    Image {
        /// The image.
        path: PathBuf,
        /// Why.
        source: ImageError,
    },
    /// A line of `labels.txt` is wrong.
    #[error("{path}:{line}: {message}")]
    TestLabels {
        /// The labels file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl PackageError {
    /// Machine-readable code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "package_not_found",
            Self::Io { .. } => "package_unreadable",
            Self::TooLarge { .. } => "package_file_too_large",
            Self::CardMalformed { .. } => "card_malformed",
            Self::CardInvalid(_) => "card_invalid",
            Self::Onnx(_) => "onnx_invalid",
            Self::InputMismatch(_) => "card_input_mismatch",
            Self::LabelMismatch { .. } => "card_label_mismatch",
            Self::Image { .. } => "package_image_invalid",
            Self::TestLabels { .. } => "test_labels_invalid",
        }
    }
}

type Result<T> = std::result::Result<T, PackageError>;

/// A labelled test image of a package.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// File name inside the test directory.
    pub file: String,
    /// Class index.
    pub label: usize,
    /// The preprocessed input.
    pub input: Tensor,
}

/// A loaded, checked model package.
#[derive(Debug, Clone)]
pub struct ModelPackage {
    /// Directory it was read from.
    pub dir: PathBuf,
    /// The card.
    pub card: ModelCard,
    /// SHA-256 of `model.onnx` (lowercase hex).
    pub onnx_sha256: String,
    /// The imported network (as exported: ReLU and MaxPool not yet approximated).
    pub model: Model,
    /// What the import changed without changing the predicted class (a final Softmax
    /// dropped, ...), one sentence each.
    pub notes: Vec<String>,
    /// Preprocessed calibration images, in file-name order.
    pub calibration: Vec<Tensor>,
    /// Labelled test images, in `labels.txt` order.
    pub test: Vec<TestImage>,
}

fn read_limited(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>> {
    let file = fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PackageError::NotFound {
            path: path.to_path_buf(),
            what,
        },
        _ => PackageError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    })?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| PackageError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if bytes.len() as u64 > limit {
        return Err(PackageError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    is_plain_name(name)
        && (lower.ends_with(".png") || lower.ends_with(".jpg") || lower.ends_with(".jpeg"))
}

impl ModelPackage {
    /// Whether `dir` looks like a model package (holds a `model.json`).
    pub fn is_package(dir: &Path) -> bool {
        dir.join(CARD_FILE).is_file()
    }

    /// Reads and checks the card alone.
    pub fn read_card(dir: &Path) -> Result<ModelCard> {
        let path = dir.join(CARD_FILE);
        let bytes = read_limited(&path, MAX_CARD_BYTES, "the model card")?;
        let card: ModelCard =
            serde_json::from_slice(&bytes).map_err(|e| PackageError::CardMalformed {
                path: path.clone(),
                message: e.to_string(),
            })?;
        card.validate()?;
        Ok(card)
    }

    /// Reads, checks and preprocesses a package directory.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(PackageError::NotFound {
                path: dir.to_path_buf(),
                what: "a model package directory",
            });
        }
        let card = Self::read_card(dir)?;
        let onnx = read_limited(&dir.join(ONNX_FILE), MAX_MODEL_BYTES, "the ONNX network")?;
        let crate::onnx::Imported { model, notes } =
            crate::onnx::import_with_notes(&onnx, &crate::onnx::ImportOptions::default())?;
        card.check_network(&model)?;
        let spec = card.input_spec(model.input_name());
        let calibration_dir = dir.join(
            card.calibration
                .as_deref()
                .unwrap_or(DEFAULT_CALIBRATION_DIR),
        );
        let calibration = if calibration_dir.is_dir() {
            image_files(&calibration_dir)?
                .into_iter()
                .take(MAX_CALIBRATION_IMAGES)
                .map(|name| load_image(&calibration_dir.join(name), &spec))
                .collect::<Result<Vec<_>>>()?
        } else if card.calibration.is_some() {
            return Err(PackageError::NotFound {
                path: calibration_dir,
                what: "the calibration directory the card names",
            });
        } else {
            Vec::new()
        };
        let test_dir = dir.join(card.test.as_deref().unwrap_or(DEFAULT_TEST_DIR));
        let test = if test_dir.is_dir() {
            load_labelled_images(&test_dir, &card, &spec)?
        } else if card.test.is_some() {
            return Err(PackageError::NotFound {
                path: test_dir,
                what: "the test directory the card names",
            });
        } else {
            Vec::new()
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            card,
            onnx_sha256: sha256_hex(&onnx),
            model,
            notes,
            calibration,
            test,
        })
    }

    /// The preprocessing clients apply (`ModelInfo.preprocessing`).
    pub fn input_spec(&self) -> InputSpec {
        self.card.input_spec(self.model.input_name())
    }

    /// Labelled images of another directory laid out like the test directory.
    pub fn load_labelled_images(&self, dir: &Path) -> Result<Vec<TestImage>> {
        load_labelled_images(dir, &self.card, &self.input_spec())
    }

    /// Calibration inputs: the calibration images, or the test images when there are none.
    pub fn calibration_inputs(&self) -> Vec<Tensor> {
        if self.calibration.is_empty() {
            self.test.iter().map(|t| t.input.clone()).collect()
        } else {
            self.calibration.clone()
        }
    }
}

/// Image files of a directory (PNG/JPEG by extension, plain names only), sorted by name.
fn image_files(dir: &Path) -> Result<Vec<String>> {
    let io = |e: std::io::Error| PackageError::Io {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if let Some(name) = entry.file_name().to_str()
            && is_image_name(name)
            && entry.file_type().map_err(io)?.is_file()
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn load_image(path: &Path, spec: &InputSpec) -> Result<Tensor> {
    let bytes = read_limited(path, MAX_IMAGE_FILE_BYTES, "an image")?;
    let image_err = |source| PackageError::Image {
        path: path.to_path_buf(),
        source,
    };
    let shape = match spec.shape.as_slice() {
        [_, c, h, w] => (*c, *h, *w),
        _ => {
            return Err(image_err(ImageError::Shape(
                "input shape is not NCHW".into(),
            )));
        }
    };
    let data = crate::image::preprocess_bytes(&bytes, shape, spec).map_err(image_err)?;
    Tensor::new(crate::ir::Shape::new(shape.0, shape.1, shape.2), data)
        .map_err(|e| image_err(ImageError::Shape(e.to_string())))
}

/// Labelled images of a directory with a `labels.txt` of `FILE LABEL` lines (LABEL a class
/// index or one of `card.labels`), preprocessed by `spec`.
pub fn load_labelled_images(
    dir: &Path,
    card: &ModelCard,
    spec: &InputSpec,
) -> Result<Vec<TestImage>> {
    let path = dir.join(TEST_LABELS_FILE);
    let bytes = read_limited(&path, MAX_TEST_LABELS_BYTES, "the test labels")?;
    let bad = |line: usize, message: String| PackageError::TestLabels {
        path: path.clone(),
        line,
        message,
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| bad(0, "not UTF-8 text".into()))?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if out.len() == MAX_TEST_IMAGES {
            return Err(bad(
                i + 1,
                format!("more than {MAX_TEST_IMAGES} test images"),
            ));
        }
        let Some((file, label)) = line.split_once(char::is_whitespace) else {
            return Err(bad(i + 1, "expected `FILE LABEL`".into()));
        };
        let label = label.trim();
        if !is_image_name(file) {
            return Err(bad(
                i + 1,
                format!("{file:?} must be a PNG or JPEG file name in the test directory"),
            ));
        }
        let index = match label.parse::<usize>() {
            Ok(n) if n < card.labels.len() => n,
            Ok(n) => {
                return Err(bad(
                    i + 1,
                    format!("label {n} is not below the {} classes", card.labels.len()),
                ));
            }
            Err(_) => card.labels.iter().position(|l| l == label).ok_or_else(|| {
                bad(
                    i + 1,
                    format!("label {label:?} is neither a class index nor a class name"),
                )
            })?,
        };
        out.push(TestImage {
            file: file.to_string(),
            label: index,
            input: load_image(&dir.join(file), spec)?,
        });
    }
    Ok(out)
}
