//! Consistency checks of a parsed manifest, run by [`Manifest::load`].

use std::collections::HashSet;
use std::path::{Component, Path};

use super::{MANIFEST_FORMAT, Manifest};

impl Manifest {
    /// Checks what the JSON shape cannot: the format version, unique names, the default model,
    /// file names and sha256s, class counts and labels, and each model against its dataset.
    pub(super) fn validate(&self) -> Result<(), String> {
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

/// A file named in the manifest must stay inside the models directory.
pub(super) fn check_file_name(file: &str) -> Result<(), String> {
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
