//! Models for cipherinfer: the HE model IR, ONNX import, conversion to HE-friendly form and a
//! plaintext reference executor, beside the loader of the shipped `models/` directory.
//!
//! - [`manifest`]: the shipped manifest, sha256-verified model files, labelled sample sets.
//! - [`package`]: a user's model as a directory (`model.json` card, `model.onnx`, calibration
//!   and test images), loaded with limits and checked against the graph.
//! - [`image`]: PNG/JPEG → normalized CHW input, bounded (shared by client and server).
//! - [`ir`]: the model IR, a DAG of typed layers on CHW tensors with shapes checked at build time,
//!   multiplicative-depth accounting, BatchNorm folding and a JSON form.
//! - [`onnx`]: a bounded protobuf decoder for PyTorch-exported ONNX and its translation to the IR.
//! - [`convert`]: activations (ReLU, LeakyReLU, Clip/ReLU6, Sigmoid, Tanh) → polynomials fitted
//!   to them and MaxPool → AvgPool, calibrated on sample images, with a report of what it cost.
//! - [`plain`]: the plaintext f64 executor of the IR (the reference for everything encrypted).
//!
//! Typical use:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use cipherinfer_model::{Manifest, convert, onnx, plain};
//! let manifest = Manifest::shipped()?;
//! let entry = manifest.model("mnist-relu")?;
//! let model = onnx::import(&manifest.read_model("mnist-relu")?.bytes)?;
//! let samples = plain::sample_inputs(&manifest.load_samples(&entry.dataset)?, &entry.input)?;
//! let conversion = convert::convert_and_evaluate(&model, &samples, &Default::default())?;
//! println!("{}\n{}", conversion.model, conversion.report);
//! # Ok(()) }
//! ```

pub mod convert;
pub mod image;
pub mod ir;
pub mod manifest;
pub mod onnx;
pub mod package;
pub mod plain;

pub use convert::{ConversionReport, ConvertError, ConvertOptions, FitMethod};
pub use ir::{IrError, Model, ModelBuilder, Node, Op, Shape};
pub use manifest::{
    Accuracy, ActivationBound, DatasetEntry, HeInfo, ImageShape, InputSpec, Manifest, ModelEntry,
    ModelError, OnnxInfo, OutputSpec, ReferenceLogits, SampleFileEntry, SampleImage, SampleSet,
    Training, VerifiedModel, shipped_models_dir,
};
pub use onnx::OnnxError;
pub use package::{ModelCard, ModelPackage, PackageError};
pub use plain::Tensor;
