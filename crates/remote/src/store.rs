//! Durable state through `object_store`: the local filesystem by default, any store with atomic
//! conditional puts (S3-compatible) for several replicas.
//!
//! What lives where is owned by the `layout` module, which draws the whole tree; [`path`] and
//! [`chunk_name`] are re-exported from it for tests and fuzz targets that address the store
//! directly.
//!
//! Chunks are written with create-if-absent, so an acknowledged chunk is never overwritten and a
//! concurrent re-send of the same index is resolved by comparing bytes.

use std::sync::Arc;

use cipherinfer_protocol::{ErrorCode, ToolError};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

pub use crate::layout::{chunk_name, path};

/// What happened to a chunk write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkWrite {
    /// Stored now.
    Stored,
    /// The same bytes were already stored.
    Duplicate,
}

/// Typed access to the server's object store.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
}

fn internal(e: impl std::fmt::Display) -> ToolError {
    ToolError::new(ErrorCode::Internal, format!("storage: {e}"))
}

impl Store {
    /// A store over any `object_store` backend.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }

    /// The local filesystem under `root` (created if missing).
    pub fn local(root: &std::path::Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(root)
            .map_err(std::io::Error::other)?
            .with_automatic_cleanup(true);
        Ok(Self::new(Arc::new(fs)))
    }

    /// Reads an object; `None` if absent.
    pub async fn get(&self, path: &Path) -> Result<Option<Vec<u8>>, ToolError> {
        match self.inner.get(path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(internal)?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(internal(e)),
        }
    }

    /// Writes (replaces) an object atomically.
    pub async fn put(&self, path: &Path, bytes: Vec<u8>) -> Result<(), ToolError> {
        self.inner
            .put(path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(internal)
    }

    /// Writes an object only if absent; if present, compares: same bytes is a duplicate,
    /// different bytes is `ERROR_CHUNK_CONFLICT` (the stored bytes stay).
    pub async fn put_once(&self, path: &Path, bytes: Vec<u8>) -> Result<ChunkWrite, ToolError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(path, PutPayload::from(bytes.clone()), opts)
            .await
        {
            Ok(_) => Ok(ChunkWrite::Stored),
            Err(object_store::Error::AlreadyExists { .. }) => match self.get(path).await? {
                Some(existing) if existing == bytes => Ok(ChunkWrite::Duplicate),
                _ => Err(ToolError::new(
                    ErrorCode::ChunkConflict,
                    "a different chunk is already stored at this index; the stored one is kept",
                )),
            },
            Err(e) => Err(internal(e)),
        }
    }

    /// Reads a JSON object.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, ToolError> {
        match self.get(path).await? {
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(internal),
            None => Ok(None),
        }
    }

    /// Writes a JSON object.
    pub async fn put_json<T: serde::Serialize>(
        &self,
        path: &Path,
        value: &T,
    ) -> Result<(), ToolError> {
        self.put(path, serde_json::to_vec(value).map_err(internal)?)
            .await
    }

    /// Every object under a prefix: (location, size, last modified as Unix milliseconds).
    pub async fn list(&self, prefix: &Path) -> Result<Vec<(Path, u64, u64)>, ToolError> {
        let items: Vec<object_store::ObjectMeta> = self
            .inner
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(internal)?;
        Ok(items
            .into_iter()
            .map(|m| {
                let t = u64::try_from(m.last_modified.timestamp_millis()).unwrap_or(0);
                (m.location, m.size, t)
            })
            .collect())
    }

    /// The direct children (common prefixes) of a prefix.
    pub async fn children(&self, prefix: &Path) -> Result<Vec<String>, ToolError> {
        let r = self
            .inner
            .list_with_delimiter(Some(prefix))
            .await
            .map_err(internal)?;
        Ok(r.common_prefixes
            .into_iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Deletes one object (absent is fine).
    pub async fn delete(&self, path: &Path) -> Result<(), ToolError> {
        match self.inner.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(internal(e)),
        }
    }

    /// Deletes everything under a prefix; returns the bytes freed.
    pub async fn delete_prefix(&self, prefix: &Path) -> Result<u64, ToolError> {
        let mut freed = 0;
        for (path, size, _) in self.list(prefix).await? {
            self.delete(&path).await?;
            freed += size;
        }
        Ok(freed)
    }
}
