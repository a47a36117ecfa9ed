//! Why a manifest, model file or sample set could not be used.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

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
