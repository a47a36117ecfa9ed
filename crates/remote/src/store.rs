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
use std::time::Duration;

use cipherinfer_protocol::{ErrorCode, ToolError};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};

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
    shared: bool,
}

/// Where the server keeps its state, as `serve --store` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// A directory on the local filesystem (one server process).
    Local(std::path::PathBuf),
    /// An S3-compatible bucket, with every object under `prefix` (several replicas may share
    /// it).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket (empty: the bucket's root).
        prefix: String,
    },
}

impl StoreLocation {
    /// Parses `s3://bucket[/prefix]`, `file:///path` or a plain directory path.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                })
                && !bucket.starts_with(['-', '.'])
                && !bucket.ends_with(['-', '.']);
            if !bucket_ok {
                return Err(format!(
                    "{s:?}: an S3 bucket name is 3 to 63 lower-case letters, digits, dots and hyphens"
                ));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|seg| {
                !prefix.is_empty()
                    && (seg.is_empty()
                        || seg == "."
                        || seg == ".."
                        || !seg
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
            }) {
                return Err(format!(
                    "{s:?}: the prefix must be segments of letters, digits, '-', '_' and '.'"
                ));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(Self::Local(path.into()));
        }
        if s.contains("://") {
            return Err(format!(
                "{s:?}: a store is a directory, file:///path or s3://bucket/prefix"
            ));
        }
        Ok(Self::Local(s.into()))
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// How the S3 client reaches the store, beyond what the standard AWS environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
/// `AWS_ENDPOINT`, ...) say; a field set here wins over the environment.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible server (`http://127.0.0.1:9000`); `None`: AWS, or
    /// `AWS_ENDPOINT`.
    pub endpoint: Option<String>,
    /// Region (`None`: `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// Bucket addressed as `endpoint/bucket` (path style, what most self-hosted servers want)
    /// rather than `bucket.endpoint`.
    pub path_style: bool,
    /// Longest wait for one store request; a store that does not answer within it gets
    /// `ERROR_UNAVAILABLE` (retryable) instead of a hanging call.
    pub request_timeout: Option<Duration>,
    /// Static credentials, over the environment's (e.g. read from a secrets file).
    pub credentials: Option<S3Credentials>,
}

/// An S3 access key pair. `Debug` shows the key id only.
#[derive(Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Most time one store request may take, retries included, unless configured.
const STORE_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// What a failed store operation means to a caller: a store that does not answer (or answers
/// with an error) is `ERROR_UNAVAILABLE`, retryable; nothing was acknowledged.
/// The store's own message (addresses, paths) goes to the operator's log, not to the caller.
fn unavailable(e: impl std::fmt::Display) -> ToolError {
    tracing::warn!(error = %e, "object store operation failed");
    ToolError::new(
        ErrorCode::Unavailable,
        "the server's storage did not complete the operation; retry shortly",
    )
    .with_retry_after_ms(1000)
}

/// A stored object that does not decode, or an operation the store does not implement: not a
/// passing condition, so not retryable.
fn corrupt(e: impl std::fmt::Display) -> ToolError {
    tracing::error!(error = %e, "object store content or capability problem");
    ToolError::new(
        ErrorCode::Internal,
        "the server's storage holds an unreadable object or lacks a needed operation",
    )
}

/// Maps a store error: what the store itself cannot do is internal, anything else (network,
/// timeouts, the store's own errors) retryable.
fn store_error(e: object_store::Error) -> ToolError {
    match e {
        object_store::Error::NotImplemented { .. }
        | object_store::Error::NotSupported { .. }
        | object_store::Error::InvalidPath { .. }
        | object_store::Error::UnknownConfigurationKey { .. } => corrupt(e),
        e => unavailable(e),
    }
}

/// A stored object's version, for [`Store::put_if_version`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(UpdateVersion);

impl Store {
    /// A store over any `object_store` backend, used by this process alone.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            shared: false,
        }
    }

    /// A store over any `object_store` backend with atomic conditional puts (create-if-absent
    /// and compare-and-swap), shared by several server replicas.
    pub fn shared(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            shared: true,
        }
    }

    /// Whether other replicas may use the store at the same time.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Opens `location`: a local directory (created if missing) for one process, or an S3
    /// bucket shared by replicas (credentials and region from the AWS environment, `options`
    /// over them).
    pub fn open(location: &StoreLocation, options: &S3Options) -> std::io::Result<Self> {
        match location {
            StoreLocation::Local(root) => Self::local(root),
            StoreLocation::S3 { bucket, prefix } => {
                Self::s3(bucket, prefix, options).map_err(std::io::Error::other)
            }
        }
    }

    /// An S3-compatible bucket, every object under `prefix`.
    pub fn s3(bucket: &str, prefix: &str, options: &S3Options) -> object_store::Result<Self> {
        use object_store::aws::AmazonS3Builder;
        let timeout = options.request_timeout.unwrap_or(STORE_REQUEST_TIMEOUT);
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5).min(timeout))
                    .with_timeout(timeout),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: timeout,
                ..RetryConfig::default()
            });
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            b = b.with_region("us-east-1");
        }
        if let Some(region) = &options.region {
            b = b.with_region(region);
        }
        if let Some(endpoint) = &options.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(c) = &options.credentials {
            b = b
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(&c.secret_access_key);
        }
        if options.path_style {
            b = b.with_virtual_hosted_style_request(false);
        }
        let s3: Arc<dyn ObjectStore> = Arc::new(b.build()?);
        let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
            s3
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        };
        Ok(Self::shared(inner))
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
            Ok(r) => Ok(Some(r.bytes().await.map_err(store_error)?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Writes (replaces) an object atomically.
    pub async fn put(&self, path: &Path, bytes: Vec<u8>) -> Result<(), ToolError> {
        self.inner
            .put(path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(store_error)
    }

    /// Reads an object with its version; `None` if absent.
    pub async fn get_versioned(
        &self,
        path: &Path,
    ) -> Result<Option<(Vec<u8>, Version)>, ToolError> {
        match self.inner.get_opts(path, GetOptions::default()).await {
            Ok(r) => {
                let version = Version(UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                });
                Ok(Some((
                    r.bytes().await.map_err(store_error)?.to_vec(),
                    version,
                )))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Replaces an object only if it is still at `version` (`None`: only if absent); `false`
    /// if another writer got there first.
    pub async fn put_if_version(
        &self,
        path: &Path,
        bytes: Vec<u8>,
        version: Option<&Version>,
    ) -> Result<bool, ToolError> {
        let mode = match version {
            None => PutMode::Create,
            Some(v) => PutMode::Update(v.0.clone()),
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(store_error(e)),
        }
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
            Err(e) => Err(store_error(e)),
        }
    }

    /// Reads a JSON object.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, ToolError> {
        match self.get(path).await? {
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(corrupt),
            None => Ok(None),
        }
    }

    /// Writes a JSON object.
    pub async fn put_json<T: serde::Serialize>(
        &self,
        path: &Path,
        value: &T,
    ) -> Result<(), ToolError> {
        self.put(path, serde_json::to_vec(value).map_err(corrupt)?)
            .await
    }

    /// Every object under a prefix: (location, size, last modified as Unix milliseconds).
    pub async fn list(&self, prefix: &Path) -> Result<Vec<(Path, u64, u64)>, ToolError> {
        let items: Vec<object_store::ObjectMeta> = self
            .inner
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(store_error)?;
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
            .map_err(store_error)?;
        Ok(r.common_prefixes
            .into_iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Deletes one object (absent is fine).
    pub async fn delete(&self, path: &Path) -> Result<(), ToolError> {
        match self.inner.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(e)),
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
