//! Loader for `models/`: the manifest, sha256-verified model files and labelled sample sets.
//!
//! `models/manifest.json` is written by the training scripts (`training/common.py`); its layout is
//! described in `models/README.md`. Every file the manifest names is resolved relative to the
//! manifest's directory, may not leave it, and is checked against its recorded sha256 before use,
//! so a missing or corrupted file fails with an error that names it.
//!
//! Layout of this module:
//!
//! - `mod.rs` (here): the file name, format version and size limits.
//! - `error`: [`ModelError`] and the module's [`Result`].
//! - `schema`: the serde types of `manifest.json` ([`Manifest`], [`DatasetEntry`],
//!   [`ModelEntry`] and their parts), and [`InputSpec::normalize`].
//! - `loader`: [`Manifest::load`] and the lookups, sha256-verified reads ([`VerifiedModel`],
//!   [`sha256_hex`]), [`shipped_models_dir`].
//! - `checks`: the consistency checks [`Manifest::load`] runs on a parsed manifest (unique names,
//!   file names that stay inside the models directory, hex sha256s, classes and input shapes).
//! - `samples`: [`SampleSet`], the parser of sample-set files.
//! - `tests`: unit tests.

mod checks;
mod error;
mod loader;
mod samples;
mod schema;
mod shipped;
#[cfg(test)]
mod tests;

pub use error::{ModelError, Result};
pub use loader::{VerifiedModel, sha256_hex};
pub use samples::SampleSet;
pub use schema::{
    Accuracy, ActivationBound, DatasetEntry, HeInfo, ImageShape, InputSpec, Manifest, ModelEntry,
    OnnxInfo, OutputSpec, ReferenceLogits, SampleFileEntry, SampleImage, Training,
};
pub use shipped::{shipped_digest, shipped_files, shipped_models_dir};

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
