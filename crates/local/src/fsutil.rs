//! File-system helpers of the trusted side: private directories, atomic writes with modes set
//! at creation, bounded reads, and confinement of tool paths to allowed directories.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use cipherinfer_protocol::error::{ErrorCode, Result, ToolError};
use zeroize::Zeroizing;

/// Mode of every directory the local server creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the local server writes.
pub const FILE_MODE: u32 = 0o600;

/// Maps an I/O error about `what` to a tool error: missing → `ERROR_FILE_NOT_FOUND`, permission
/// → `ERROR_PATH_NOT_ALLOWED`, anything else → `ERROR_INTERNAL`.
pub fn io_error(what: &str, e: &io::Error) -> ToolError {
    let code = match e.kind() {
        io::ErrorKind::NotFound => ErrorCode::FileNotFound,
        io::ErrorKind::PermissionDenied => ErrorCode::PathNotAllowed,
        _ => ErrorCode::Internal,
    };
    ToolError::new(code, format!("{what}: {e}"))
}

/// Creates `dir` and its missing parents with mode 0700. An existing directory that is open to
/// the group or others is narrowed to 0700.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// A random suffix for temporary names.
fn random_suffix() -> io::Result<String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(hex::encode(b))
}

/// Flushes a directory's entries (after a rename or create inside it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to a new file `path` (which must not exist) with `mode` set at creation,
/// and flushes it to disk.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Replaces `path` atomically: writes a temporary file in the same directory (mode set at
/// creation), flushes it, renames it over `path` and flushes the directory. A crash leaves
/// either the old file or the new one, never a torn one. A symbolic link at `path` is replaced,
/// not followed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        random_suffix()?
    ));
    if let Err(e) = write_new(&tmp, bytes, mode) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// A fresh, unused sibling name of `path` for staging or trash (`.name.<what>-<random>`).
pub fn sibling_name(path: &Path, what: &str) -> io::Result<PathBuf> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Ok(dir.join(format!(
        ".{}.{what}-{}",
        name.to_string_lossy(),
        random_suffix()?
    )))
}

/// Why a bounded read failed.
#[derive(Debug)]
pub enum ReadError {
    /// The file could not be opened or read.
    Io(io::Error),
    /// The file holds more than the limit.
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
}

impl ReadError {
    /// The tool error for reading `what`; `too_large` is the code for oversize files.
    pub fn into_tool(self, what: &str, too_large: ErrorCode) -> ToolError {
        match self {
            Self::Io(e) => io_error(what, &e),
            Self::TooLarge { limit } => {
                ToolError::new(too_large, format!("{what}: larger than {limit} bytes"))
            }
        }
    }
}

/// Reads at most `limit` bytes of a regular file; a longer file is refused without reading the
/// rest.
pub fn read_limited(path: &Path, limit: u64) -> std::result::Result<Vec<u8>, ReadError> {
    let f = File::open(path).map_err(ReadError::Io)?;
    let meta = f.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    f.take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(ReadError::Io)?;
    if out.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(out)
}

/// [`read_limited`] for secrets: the buffer is sized once from the file's length (so no
/// reallocation leaves copies behind) and zeroized when dropped.
pub fn read_secret(path: &Path, limit: u64) -> std::result::Result<Zeroizing<Vec<u8>>, ReadError> {
    let mut f = File::open(path).map_err(ReadError::Io)?;
    let len = f.metadata().map_err(ReadError::Io)?.len();
    if len > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let len = usize::try_from(len).map_err(|_| ReadError::TooLarge { limit })?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    f.read_exact(&mut out).map_err(ReadError::Io)?;
    // Anything past the length read above (a concurrent writer) makes the file suspect.
    let mut extra = [0u8; 1];
    if f.read(&mut extra).map_err(ReadError::Io)? != 0 {
        return Err(ReadError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "the file grew while being read",
        )));
    }
    Ok(out)
}

/// Confines tool paths to a set of directories. Paths are canonicalized (symbolic links
/// resolved) before the check, so a link inside an allowed directory cannot lead outside it.
#[derive(Clone, Debug)]
pub struct Confinement {
    allowed: Vec<PathBuf>,
}

fn not_allowed(field: &str, why: impl std::fmt::Display) -> ToolError {
    ToolError::new(ErrorCode::PathNotAllowed, format!("{field}: {why}"))
}

impl Confinement {
    /// Confinement to `dirs` (canonicalized now; each must exist). Empty allows any absolute
    /// path.
    pub fn new(dirs: &[PathBuf]) -> Result<Self> {
        let allowed = dirs
            .iter()
            .map(|d| {
                std::fs::canonicalize(d).map_err(|e| {
                    ToolError::new(
                        ErrorCode::InvalidArgument,
                        format!("allowed directory {}: {e}", d.display()),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { allowed })
    }

    /// The canonical allowed directories (empty: any path).
    pub fn allowed(&self) -> &[PathBuf] {
        &self.allowed
    }

    fn check_canonical(&self, field: &str, canonical: &Path) -> Result<()> {
        if self.allowed.is_empty() || self.allowed.iter().any(|a| canonical.starts_with(a)) {
            Ok(())
        } else {
            Err(not_allowed(field, "outside the allowed directories"))
        }
    }

    /// Checks the form of `path` (absolute, no `..`, no NUL) and returns it.
    fn form(field: &str, path: &str) -> Result<PathBuf> {
        cipherinfer_protocol::local::validate_local_path(field, path)?;
        let p = PathBuf::from(path);
        if p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(not_allowed(field, "must not contain '..'"));
        }
        Ok(p)
    }

    /// An existing regular file to read: its canonical path. Missing → `ERROR_FILE_NOT_FOUND`.
    pub fn existing_file(&self, field: &str, path: &str) -> Result<PathBuf> {
        let p = Self::form(field, path)?;
        let canonical = std::fs::canonicalize(&p).map_err(|e| io_error(field, &e))?;
        self.check_canonical(field, &canonical)?;
        let meta = std::fs::metadata(&canonical).map_err(|e| io_error(field, &e))?;
        if !meta.is_file() {
            return Err(not_allowed(field, "not a regular file"));
        }
        Ok(canonical)
    }

    /// A file to create or replace: its parent must exist inside the allowed directories; the
    /// returned path is the canonical parent joined with the file name.
    pub fn new_file(&self, field: &str, path: &str) -> Result<PathBuf> {
        let p = Self::form(field, path)?;
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return Err(not_allowed(field, "names no file"));
        };
        let parent = std::fs::canonicalize(parent)
            .map_err(|e| io_error(&format!("{field} (parent directory)"), &e))?;
        self.check_canonical(field, &parent)?;
        let target = parent.join(name);
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            return Err(not_allowed(field, "is a directory"));
        }
        Ok(target)
    }

    /// A directory to write into, created (mode 0700, with missing parents) when absent. The
    /// nearest existing ancestor must already be inside the allowed directories.
    pub fn directory(&self, field: &str, path: &str) -> Result<PathBuf> {
        let p = Self::form(field, path)?;
        let mut existing = p.as_path();
        while std::fs::symlink_metadata(existing).is_err() {
            existing = existing
                .parent()
                .ok_or_else(|| not_allowed(field, "no existing ancestor"))?;
        }
        let anchor = std::fs::canonicalize(existing).map_err(|e| io_error(field, &e))?;
        self.check_canonical(field, &anchor)?;
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&p)
            .map_err(|e| io_error(field, &e))?;
        let canonical = std::fs::canonicalize(&p).map_err(|e| io_error(field, &e))?;
        self.check_canonical(field, &canonical)?;
        if !std::fs::metadata(&canonical).is_ok_and(|m| m.is_dir()) {
            return Err(not_allowed(field, "not a directory"));
        }
        Ok(canonical)
    }
}
