//! Embeds the repository's `models/` directory (shipped models, samples and model packages) in
//! the crate, so that a built or installed binary carries them and never reads the source tree:
//! writes `$OUT_DIR/shipped_files.rs` with one `include_bytes!` per file.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

fn walk(root: &Path, dir: &Path, files: &mut Vec<String>) -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(
                format!("{}: a file name that is not UTF-8", entry.path().display()).into(),
            );
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(root, &path, files)?;
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
            let rel = path.strip_prefix(root)?.components();
            let rel: Vec<&str> = rel
                .map(|c| c.as_os_str().to_str().unwrap_or_default())
                .collect();
            files.push(rel.join("/"));
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let models = crate_dir.join("../../models").canonicalize()?;
    let mut files = Vec::new();
    walk(&models, &models, &mut files)?;
    let mut out = String::from(
        "/// Every file of the repository's `models/` when this crate was built: (path relative to\n\
         /// it, with `/` separators; bytes).\n\
         pub(crate) static SHIPPED_FILES: &[(&str, &[u8])] = &[\n",
    );
    for rel in &files {
        out.push_str(&format!(
            "    ({rel:?}, include_bytes!({:?})),\n",
            models.join(rel)
        ));
    }
    out.push_str("];\n");
    fs::write(
        PathBuf::from(std::env::var("OUT_DIR")?).join("shipped_files.rs"),
        out,
    )?;
    Ok(())
}
