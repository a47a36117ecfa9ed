//! The shipped `models/` directory travels inside the binary (embedded at build time by
//! `build.rs`) and is written out once, on first use, to a cache directory named by its content
//! hash: a built, installed or copied binary works from any directory, and never reads the
//! source tree.
//!
//! Location: `$CIPHERINFER_MODELS_DIR` as is when set (a directory in the same layout, e.g. a
//! working copy being edited); otherwise `<cache>/models/<hash>` with `<cache>` the first of
//! `$CIPHERINFER_HOME`, `$XDG_CACHE_HOME/cipherinfer`, `$HOME/.cache/cipherinfer` and the system
//! temporary directory's `cipherinfer`. The files are written to a fresh temporary directory and
//! renamed into place, so concurrent first runs never see a half-written copy.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

include!(concat!(env!("OUT_DIR"), "/shipped_files.rs"));

/// The marker written last into a complete copy.
const COMPLETE: &str = ".complete";

/// The embedded files: (path relative to `models/`, bytes).
pub fn shipped_files() -> &'static [(&'static str, &'static [u8])] {
    SHIPPED_FILES
}

/// Hex SHA-256 over the embedded files' names and bytes (the cache directory's name uses its
/// first 16 digits).
pub fn shipped_digest() -> &'static str {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIGEST.get_or_init(|| {
        let mut h = Sha256::new();
        for (name, bytes) in SHIPPED_FILES {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        hex::encode(h.finalize())
    })
}

fn cache_base() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(home) = var("CIPHERINFER_HOME") {
        return home;
    }
    if let Some(cache) = var("XDG_CACHE_HOME") {
        return cache.join("cipherinfer");
    }
    if let Some(home) = var("HOME") {
        return home.join(".cache").join("cipherinfer");
    }
    std::env::temp_dir().join("cipherinfer")
}

/// The directory holding the shipped models, written out from the binary on first use.
pub fn shipped_models_dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CIPHERINFER_MODELS_DIR").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let base = cache_base().join("models");
    let dir = base.join(&shipped_digest()[..16]);
    for _ in 0..2 {
        if dir.join(COMPLETE).is_file() {
            return Ok(dir);
        }
        fs::create_dir_all(&base)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = base.join(format!(".tmp-{}-{nanos}", std::process::id()));
        if let Err(e) = write_all(&tmp) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let renamed = fs::rename(&tmp, &dir);
        let _ = fs::remove_dir_all(&tmp);
        match renamed {
            Ok(()) => return Ok(dir),
            // Another process finished first: its copy holds the same bytes.
            Err(_) if dir.join(COMPLETE).is_file() => return Ok(dir),
            // A stale incomplete copy (an interrupted first run): remove it and try again.
            Err(_) if dir.exists() => fs::remove_dir_all(&dir)?,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "cannot write the shipped models to {}",
        dir.display()
    )))
}

fn write_all(root: &Path) -> io::Result<()> {
    fs::create_dir_all(root)?;
    for (name, bytes) in SHIPPED_FILES {
        let path = root.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, bytes)?;
    }
    fs::write(root.join(COMPLETE), shipped_digest())
}
