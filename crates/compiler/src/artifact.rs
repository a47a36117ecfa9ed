//! The compiled-model artifact that `cipherinfer compile` writes and `serve` loads: a model
//! package's card, its network after conversion to HE-friendly form, the chosen CKKS parameters
//! and the output divisor — everything needed to rebuild the encrypted executor without the
//! ONNX file, the calibration images or a new parameter search.
//!
//! # File layout, version 1
//!
//! All integers little-endian.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | magic `b"CIMODEL\n"` |
//! | 8 | 4 | format version, u32 (= 1) |
//! | 12 | 8 | payload length in bytes, u64 |
//! | 20 | 32 | SHA-256 of the payload |
//! | 52 | … | payload: UTF-8 JSON of [`Artifact`] (unknown fields refused) |
//!
//! Reading checks, in order: the file size against [`MAX_ARTIFACT_BYTES`], the magic, the
//! version, the length (exactly the rest of the file), the checksum, the JSON (the model goes
//! through the IR's own checks), then the card against the network (input shape, label count),
//! the parameters (at the security level they declare) and the plan against the parameters.
//! Each failure has its own [`ArtifactError::code`].

use std::path::{Path, PathBuf};

use cipherinfer_ckks::ParametersLiteral;
use cipherinfer_model::convert::ConversionReport;
use cipherinfer_model::ir::Model;
use cipherinfer_model::package::ModelCard;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::error::CompileError;
use crate::exec::HeModel;
use crate::network::Network;
use crate::plan::{CompileOptions, compile_with};

/// Magic bytes opening an artifact.
pub const ARTIFACT_MAGIC: [u8; 8] = *b"CIMODEL\n";
/// Version of the artifact layout this build writes and reads.
pub const ARTIFACT_VERSION: u32 = 1;
/// Bytes before the payload.
pub const ARTIFACT_HEADER_LEN: usize = 52;
/// Largest artifact accepted (and written).
pub const MAX_ARTIFACT_BYTES: u64 = 256 << 20;
/// File name extension `compile` gives artifacts.
pub const ARTIFACT_EXTENSION: &str = "cimodel";

/// Why an artifact could not be written, read or used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Larger than [`MAX_ARTIFACT_BYTES`].
    #[error("{path}: {bytes} bytes, the limit for a compiled model is {limit}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// [`MAX_ARTIFACT_BYTES`].
        limit: u64,
    },
    /// Not a compiled model (wrong magic).
    #[error("{0}: not a compiled cipherinfer model (run `cipherinfer compile` on a model package)")]
    NotAnArtifact(PathBuf),
    /// Written by another layout version.
    #[error(
        "{path}: compiled-model format version {found}, this build reads {ARTIFACT_VERSION}; compile the package again"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u32,
    },
    /// Shorter or longer than its header says.
    #[error(
        "{path}: truncated or padded: the header announces {announced} payload bytes, {found} follow"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Payload length in the header.
        announced: u64,
        /// Bytes after the header.
        found: u64,
    },
    /// The payload does not match its checksum.
    #[error("{0}: checksum mismatch, the file is corrupt; compile the package again")]
    Checksum(PathBuf),
    /// The payload is not a well-formed artifact.
    #[error("{path}: malformed compiled model: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Well formed, but unusable: card and network disagree, insecure parameters, a plan that
    /// does not fit them.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ArtifactError {
    /// Machine-readable code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "artifact_unreadable",
            Self::TooLarge { .. } => "artifact_too_large",
            Self::NotAnArtifact(_) => "artifact_not_compiled_model",
            Self::Version { .. } => "artifact_version",
            Self::Truncated { .. } => "artifact_truncated",
            Self::Checksum(_) => "artifact_checksum",
            Self::Malformed { .. } => "artifact_malformed",
            Self::Invalid { .. } => "artifact_invalid",
        }
    }
}

/// Where an artifact came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSource {
    /// SHA-256 (hex) of the package's `model.onnx`.
    pub onnx_sha256: String,
    /// The cipherinfer version that compiled it.
    pub compiler_version: String,
}

/// A compiled model: what `serve` needs to run a package's network under encryption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// The package's card (name, labels, input and its normalization).
    pub card: ModelCard,
    /// Provenance.
    pub source: ArtifactSource,
    /// The network after conversion (HE-friendly).
    pub model: Model,
    /// The CKKS parameters, with their security level.
    pub parameters: ParametersLiteral,
    /// The final linear layer is divided by this so outputs fit the base prime; decrypted
    /// outputs are multiplied back.
    pub output_divisor: f64,
    /// What the conversion did (`None` when the network was HE-friendly as given).
    pub conversion: Option<ConversionReport>,
    /// The budget (bytes of the evaluation-key bundle) the rotation keys were chosen against
    /// (`compile --max-key-mib`); absent: one key per rotation step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_key_bytes: Option<u64>,
}

fn invalid(path: &Path, message: impl Into<String>) -> ArtifactError {
    ArtifactError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl Artifact {
    /// The file bytes: header, then the JSON payload.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let payload = serde_json::to_vec(self)?;
        let mut out = Vec::with_capacity(ARTIFACT_HEADER_LEN + payload.len());
        out.extend_from_slice(&ARTIFACT_MAGIC);
        out.extend_from_slice(&ARTIFACT_VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&payload));
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Writes the artifact to `path` atomically (a temporary file beside it, then a rename), so
    /// a reader never sees a partial file and an existing one stays intact on failure.
    pub fn write(&self, path: &Path) -> Result<(), ArtifactError> {
        let io = |source| ArtifactError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = self.to_bytes().map_err(|e| invalid(path, e.to_string()))?;
        if bytes.len() as u64 > MAX_ARTIFACT_BYTES {
            return Err(ArtifactError::TooLarge {
                path: path.to_path_buf(),
                bytes: bytes.len() as u64,
                limit: MAX_ARTIFACT_BYTES,
            });
        }
        let file_name = path
            .file_name()
            .ok_or_else(|| invalid(path, "the output path names no file"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let written = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        Ok(())
    }

    /// Whether `path` is a file that starts with the artifact magic.
    pub fn is_artifact(path: &Path) -> bool {
        use std::io::Read;
        let mut magic = [0u8; 8];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok_and(|()| magic == ARTIFACT_MAGIC)
    }

    /// Reads and checks an artifact file (see the module documentation for the order).
    pub fn read(path: &Path) -> Result<Self, ArtifactError> {
        use std::io::Read;
        let io = |source| ArtifactError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if size > MAX_ARTIFACT_BYTES {
            return Err(ArtifactError::TooLarge {
                path: path.to_path_buf(),
                bytes: size,
                limit: MAX_ARTIFACT_BYTES,
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(MAX_ARTIFACT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Self::from_bytes(path, &bytes)
    }

    /// Checks and parses artifact bytes; `path` only names the source in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, ArtifactError> {
        let p = || path.to_path_buf();
        if bytes.len() as u64 > MAX_ARTIFACT_BYTES {
            return Err(ArtifactError::TooLarge {
                path: p(),
                bytes: bytes.len() as u64,
                limit: MAX_ARTIFACT_BYTES,
            });
        }
        if bytes.len() < ARTIFACT_MAGIC.len() || bytes[..8] != ARTIFACT_MAGIC {
            return Err(ArtifactError::NotAnArtifact(p()));
        }
        let header = bytes
            .get(..ARTIFACT_HEADER_LEN)
            .ok_or(ArtifactError::Truncated {
                path: p(),
                announced: 0,
                found: 0,
            })?;
        let word = |at: usize, len: usize| {
            let mut b = [0u8; 8];
            b[..len].copy_from_slice(&header[at..at + len]);
            u64::from_le_bytes(b)
        };
        let version = word(8, 4) as u32;
        if version != ARTIFACT_VERSION {
            return Err(ArtifactError::Version {
                path: p(),
                found: version,
            });
        }
        let announced = word(12, 8);
        let payload = &bytes[ARTIFACT_HEADER_LEN..];
        if announced != payload.len() as u64 {
            return Err(ArtifactError::Truncated {
                path: p(),
                announced,
                found: payload.len() as u64,
            });
        }
        if Sha256::digest(payload).as_slice() != &header[20..52] {
            return Err(ArtifactError::Checksum(p()));
        }
        let artifact: Artifact =
            serde_json::from_slice(payload).map_err(|e| ArtifactError::Malformed {
                path: p(),
                message: e.to_string(),
            })?;
        artifact.check(path)?;
        Ok(artifact)
    }

    /// Checks what parsing alone does not: the card on its own and against the network, and
    /// that the network is HE-friendly.
    fn check(&self, path: &Path) -> Result<(), ArtifactError> {
        self.card
            .validate()
            .map_err(|e| invalid(path, format!("{e} [{}]", e.code())))?;
        self.card
            .check_network(&self.model)
            .map_err(|e| invalid(path, format!("{e} [{}]", e.code())))?;
        if let Some(node) = self.model.nodes().iter().find(|n| !n.op.is_he_friendly()) {
            return Err(invalid(
                path,
                format!(
                    "node {:?} ({}) is not HE-friendly; the artifact was not written by `compile`",
                    node.name,
                    node.op.kind()
                ),
            ));
        }
        if !(self.output_divisor.is_finite() && self.output_divisor >= 1.0) {
            return Err(invalid(
                path,
                format!(
                    "output_divisor {} is not a finite value ≥ 1",
                    self.output_divisor
                ),
            ));
        }
        Ok(())
    }

    /// Rebuilds the encrypted executor: the parameters (checked at their declared security
    /// level), the layer chain, the plan for the parameters' slots and the encoded masks.
    pub fn instantiate(&self, path: &Path) -> Result<(Network, HeModel), ArtifactError> {
        let wrap = |e: CompileError| invalid(path, format!("{e} [{}]", e.code()));
        let params = self
            .parameters
            .build()
            .map_err(|e| invalid(path, format!("parameters: {e} [{}]", e.code())))?;
        let net = Network::from_ir(&self.model).map_err(wrap)?;
        let options = CompileOptions {
            output_divisor: self.output_divisor,
        };
        let plan = compile_with(&net, params.slots(), options).map_err(wrap)?;
        let he = HeModel::new(plan, params)
            .and_then(|he| he.with_key_budget(self.max_key_bytes))
            .map_err(wrap)?;
        Ok((net, he))
    }
}
