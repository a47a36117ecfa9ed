//! Models for cipherinfer.
//!
//! For now this crate only loads what `models/` ships: the manifest, the ONNX files (each checked
//! against the sha256 the manifest records) and the labelled sample sets. The ONNX importer, the
//! HE compiler and the executors will live beside the loader in their own modules.

pub mod manifest;

pub use manifest::{
    Accuracy, ActivationBound, DatasetEntry, HeInfo, ImageShape, InputSpec, Manifest, ModelEntry,
    ModelError, OnnxInfo, OutputSpec, ReferenceLogits, SampleFileEntry, SampleImage, SampleSet,
    Training, VerifiedModel, shipped_models_dir,
};
