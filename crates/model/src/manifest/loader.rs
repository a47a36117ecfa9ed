//! Reading the manifest and the files it names: bounded reads, sha256 verification, lookups by
//! name and the sample-set consistency check against the manifest entry.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{
    DatasetEntry, MANIFEST_FILE, MAX_MANIFEST_BYTES, MAX_MODEL_BYTES, MAX_SAMPLES_BYTES, Manifest,
    ModelEntry, ModelError, Result, SampleSet,
};

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

    /// Reads the shipped manifest from the copy of `models/` the binary carries
    /// ([`super::shipped_models_dir`]).
    pub fn shipped() -> Result<Self> {
        let dir = super::shipped_models_dir().map_err(|source| ModelError::Io {
            path: "the shipped models directory".into(),
            source,
        })?;
        Self::load(dir)
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

fn join_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}
