//! The key store: one directory per client under a private root.
//!
//! ```text
//! <root>/                              0700
//!   <client_id>/                       0700  (client_id is checked data, never a path)
//!     secret.key                       0600  SecretKey::export_bytes (CIFR envelope, type 7)
//!     client.json                      0600  ClientRecord: model, client_spec, labels, ...
//!     evaluation-keys.bin              0600  the public Step 0 bundle (EvaluationKeys::to_bytes)
//!     remote/                          0700
//!       <sha256(remote_url)[..32]>.json 0600 RemoteCredentials (key_ref, auth_token, ...)
//!   .identities/                       0700  (a dot name is never a client id)
//!     <client_id>.key                  0600  Ed25519 identity seed (32 bytes); outlives key sets
//!   .servers/                          0700
//!     <sha256(remote_url)[..32]>.json  0600  ServerPin: the pinned server identity of a URL
//! ```
//!
//! A key set is written into a staging directory beside the client's and renamed into place,
//! so a client directory is either complete or absent; every later file write is a temporary
//! file, fsync and rename. Files and directories get their modes at creation. Every load
//! re-validates what it reads: a corrupt or truncated file is `ERROR_MALFORMED_KEYS`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cipherinfer_ckks::{Decryptor, Parameters, SecretKey, SymmetricEncryptor, secret_key_pair};
use cipherinfer_compiler::{ClientSpec, Shape};
use cipherinfer_model::manifest::InputSpec;
use cipherinfer_protocol::error::{ErrorCode, Result, ToolError};
use cipherinfer_protocol::integrity::{IdentityKey, PublicIdentity};
use cipherinfer_protocol::validate::{sha256_hex, validate_client_id};
use cipherinfer_protocol::{AlgorithmId, AuthToken};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::fsutil::{
    self, DIR_MODE, FILE_MODE, create_private_dir_all, io_error, read_limited, read_secret,
    sibling_name, write_atomic, write_new,
};

/// File of the secret key inside a client directory.
pub const SECRET_KEY_FILE: &str = "secret.key";
/// File of the key-set record inside a client directory.
pub const CLIENT_FILE: &str = "client.json";
/// File of the public evaluation-key bundle inside a client directory.
pub const EVALUATION_KEYS_FILE: &str = "evaluation-keys.bin";
/// Directory of the remote credentials inside a client directory.
pub const REMOTE_DIR: &str = "remote";
/// Layout version written in `client.json`.
pub const RECORD_FORMAT: u32 = 1;

/// Largest `secret.key` read (N = 32768 needs about 8 KiB).
pub const MAX_SECRET_KEY_BYTES: u64 = 1024 * 1024;
/// Largest `client.json` read.
pub const MAX_CLIENT_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest evaluation-key bundle generated or read (8 GiB): a conventional CNN at N = 2^15
/// takes 1–3 GB; a client specification asking for more is refused before any key is made.
pub const MAX_EVALUATION_KEY_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// Largest memory key generation may take: the keys as held (both halves of every digit) plus
/// their serialized copy (16 GiB; by `ClientSpec::key_memory_bytes` and the bundle size, LeNet-5 at
/// N = 2^15 with 3.0 GB of keys needs about 11 GiB).
pub const MAX_KEY_GENERATION_MEMORY: u64 = 16 * 1024 * 1024 * 1024;
/// Largest credentials file read.
pub const MAX_CREDENTIALS_BYTES: u64 = 64 * 1024;
/// Directory of the clients' identity keys.
pub const IDENTITIES_DIR: &str = ".identities";
/// Directory of the pinned server identities.
pub const SERVERS_DIR: &str = ".servers";

/// The server identity pinned for a remote URL (trust on first use).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerPin {
    /// The remote MCP endpoint.
    pub remote_url: String,
    /// Its Ed25519 identity, as first seen.
    pub server_key: PublicIdentity,
    /// When it was pinned, Unix seconds.
    pub pinned_at: u64,
}

fn corrupt(client_id: &str, what: &str, why: impl std::fmt::Display) -> ToolError {
    ToolError::new(
        ErrorCode::MalformedKeys,
        format!("key store: {what} of client {client_id:?} is corrupt: {why}"),
    )
}

fn internal(what: &str, e: &std::io::Error) -> ToolError {
    ToolError::new(ErrorCode::Internal, format!("key store: {what}: {e}"))
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `client.json`: what a key set is for. Public data only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRecord {
    /// Layout version ([`RECORD_FORMAT`]).
    pub format_version: u32,
    /// The client.
    pub client_id: String,
    /// Model the keys are for.
    pub model: String,
    /// The model's client specification as received (validated on every load). Stored in
    /// its wire form, so records written when it was untyped JSON read the same.
    pub client_spec: ClientSpec,
    /// Class names by output index.
    pub labels: Vec<String>,
    /// Image preprocessing: the manifest's `InputSpec` JSON.
    pub preprocessing: serde_json::Value,
    /// Algorithm ID of the key set.
    pub algorithm_id: AlgorithmId,
    /// Parameter id of the key set.
    pub parameter_id: String,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Galois elements of the rotation keys, ascending.
    pub galois_elements: Vec<u64>,
    /// Whether the bundle holds a relinearization key.
    pub relinearization: bool,
    /// Size of `evaluation-keys.bin`.
    pub evaluation_key_bytes: u64,
    /// SHA-256 of `evaluation-keys.bin`.
    pub evaluation_key_sha256: String,
}

/// Step 0 credentials of one remote server for one client (written by the orchestrator).
/// `Debug` shows the token redacted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteCredentials {
    /// The remote MCP endpoint.
    pub remote_url: String,
    /// Key reference returned by `provision_keys_commit`.
    pub key_ref: String,
    /// Bearer token returned by `provision_keys_commit`.
    pub auth_token: AuthToken,
    /// Model the keys were provisioned for.
    pub model: String,
    /// Parameter id of the provisioned keys.
    pub parameter_id: String,
    /// SHA-256 of the provisioned bundle.
    pub bundle_sha256: String,
    /// Provisioning time, Unix seconds.
    pub provisioned_at: u64,
}

/// A client's key set, loaded and re-validated; owns the secret key (inside the decryptor,
/// zeroized on drop). `Debug` shows no key material.
pub struct LoadedClient {
    /// The record.
    pub record: ClientRecord,
    /// The validated client specification.
    pub spec: ClientSpec,
    /// The parameters the spec validated to.
    pub params: Arc<Parameters>,
    /// The preprocessing.
    pub input: InputSpec,
    /// Encrypts inputs with the secret key (seeded ciphertexts).
    pub encryptor: SymmetricEncryptor,
    /// Decrypts results with the secret key.
    pub decryptor: Decryptor,
}

impl std::fmt::Debug for LoadedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedClient")
            .field("client_id", &self.record.client_id)
            .field("model", &self.record.model)
            .field("parameter_id", &self.record.parameter_id)
            .finish_non_exhaustive()
    }
}

/// The number of output values of a shape.
pub fn shape_len(shape: &Shape) -> usize {
    match *shape {
        Shape::Vector(n) => n,
        Shape::Chw(c, h, w) => c.saturating_mul(h).saturating_mul(w),
    }
}

/// Validates a client specification (untrusted, already parsed from its typed wire form): the
/// parameters are rebuilt with the 128-bit check, every field is checked against them.
pub fn validate_client_spec(spec: &ClientSpec) -> Result<Arc<Parameters>> {
    spec.validate().map_err(|e| match e {
        cipherinfer_compiler::CompileError::Ckks(c) => {
            let mut t = ToolError::from_ckks(&c, ErrorCode::InvalidParameters);
            t.message = format!("client_spec: {}", t.message);
            t
        }
        other => ToolError::new(ErrorCode::InvalidArgument, other.to_string()),
    })
}

/// Parses a preprocessing object (the manifest's `InputSpec`) and checks it against the model
/// input shape: `mean` and `std` have one entry or one per channel, finite, `std` positive; a
/// 4-element `shape` must be `[1, C, H, W]` of the model.
pub fn parse_preprocessing(
    value: &serde_json::Value,
    input_shape: (usize, usize, usize),
) -> Result<InputSpec> {
    let spec: InputSpec = serde_json::from_value(value.clone())
        .map_err(|e| ToolError::new(ErrorCode::InvalidArgument, format!("preprocessing: {e}")))?;
    let (c, h, w) = input_shape;
    let bad = |why: &str| {
        Err(ToolError::new(
            ErrorCode::InvalidArgument,
            format!("preprocessing: {why}"),
        ))
    };
    let counts_ok = |v: &[f64]| v.len() == 1 || v.len() == c;
    if !counts_ok(&spec.mean) || !counts_ok(&spec.std) {
        return bad("mean and std need 1 or one entry per input channel");
    }
    if spec.mean.iter().any(|m| !m.is_finite() || m.abs() > 1e6)
        || spec
            .std
            .iter()
            .any(|s| !s.is_finite() || *s <= 1e-9 || *s > 1e6)
    {
        return bad("mean must be finite and std positive");
    }
    if spec.shape.len() == 4 && spec.shape[1..] != [c, h, w] {
        return bad("shape differs from the model's input shape");
    }
    Ok(spec)
}

/// The default preprocessing of a model without one: pixels scaled to [0, 1].
pub fn identity_preprocessing(input_shape: (usize, usize, usize)) -> InputSpec {
    let (c, h, w) = input_shape;
    InputSpec {
        name: "input".into(),
        shape: vec![1, c, h, w],
        layout: "NCHW".into(),
        dtype: "float32".into(),
        preprocess: "x = pixel_u8 / 255".into(),
        mean: vec![0.0],
        std: vec![1.0],
    }
}

/// The key store (see the module docs for the layout).
#[derive(Debug, Clone)]
pub struct KeyStore {
    root: PathBuf,
}

impl KeyStore {
    /// The default root: `$CIPHERINFER_HOME/keys`, else `$XDG_DATA_HOME/cipherinfer/keys`,
    /// else `$HOME/.local/share/cipherinfer/keys`; `None` when none of them is set (or set to
    /// a relative path).
    pub fn default_root() -> Option<PathBuf> {
        Self::default_root_from(|name| std::env::var_os(name))
    }

    /// [`KeyStore::default_root`] with the environment given by `var` (for tests and callers
    /// that resolve the environment themselves).
    pub fn default_root_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
        let var = |name: &str| var(name).map(PathBuf::from).filter(|p| p.is_absolute());
        if let Some(home) = var("CIPHERINFER_HOME") {
            return Some(home.join("keys"));
        }
        if let Some(data) = var("XDG_DATA_HOME") {
            return Some(data.join("cipherinfer").join("keys"));
        }
        var("HOME").map(|h| {
            h.join(".local")
                .join("share")
                .join("cipherinfer")
                .join("keys")
        })
    }

    /// Opens (creating with mode 0700 when missing) a key store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        create_private_dir_all(&root).map_err(|e| internal("creating the root", &e))?;
        Ok(Self { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a client (the id is validated first).
    pub fn client_dir(&self, client_id: &str) -> Result<PathBuf> {
        validate_client_id(client_id)?;
        Ok(self.root.join(client_id))
    }

    /// Whether the client has a key set.
    pub fn exists(&self, client_id: &str) -> Result<bool> {
        let dir = self.client_dir(client_id)?;
        Ok(dir.exists())
    }

    /// The clients with a key set, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(|e| internal("listing", &e))? {
            let entry = entry.map_err(|e| internal("listing", &e))?;
            if let Some(name) = entry.file_name().to_str()
                && validate_client_id(name).is_ok()
                && entry.path().join(CLIENT_FILE).is_file()
            {
                out.push(name.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Stores a new key set atomically: the files are written into a staging directory and
    /// renamed into place. An existing key set is `ERROR_CLIENT_EXISTS` unless `overwrite`, in
    /// which case it is replaced whole (its remote credentials go with it: they belong to the
    /// old keys).
    pub fn create(
        &self,
        record: &ClientRecord,
        secret: &SecretKey,
        bundle: &[u8],
        overwrite: bool,
    ) -> Result<()> {
        let dir = self.client_dir(&record.client_id)?;
        if !overwrite && dir.exists() {
            return Err(exists(&record.client_id));
        }
        let staging = sibling_name(&dir, "staging").map_err(|e| internal("staging", &e))?;
        let result = self
            .stage(&staging, record, secret, bundle)
            .and_then(|()| self.swap_in(&staging, &dir, &record.client_id, overwrite));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    fn stage(
        &self,
        staging: &Path,
        record: &ClientRecord,
        secret: &SecretKey,
        bundle: &[u8],
    ) -> Result<()> {
        std::fs::DirBuilder::new()
            .mode_private()
            .create(staging)
            .map_err(|e| internal("creating the staging directory", &e))?;
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| ToolError::new(ErrorCode::Internal, e.to_string()))?;
        let sk = secret.export_bytes();
        write_new(&staging.join(SECRET_KEY_FILE), &sk, FILE_MODE)
            .map_err(|e| internal("writing the secret key", &e))?;
        write_new(&staging.join(EVALUATION_KEYS_FILE), bundle, FILE_MODE)
            .map_err(|e| internal("writing the evaluation keys", &e))?;
        write_new(&staging.join(CLIENT_FILE), &json, FILE_MODE)
            .map_err(|e| internal("writing the record", &e))?;
        fsutil::sync_dir(staging).map_err(|e| internal("syncing the staging directory", &e))
    }

    fn swap_in(&self, staging: &Path, dir: &Path, client_id: &str, overwrite: bool) -> Result<()> {
        let mut trash = None;
        if overwrite && dir.exists() {
            let t = sibling_name(dir, "trash").map_err(|e| internal("trash", &e))?;
            std::fs::rename(dir, &t).map_err(|e| internal("moving the old key set", &e))?;
            trash = Some(t);
        }
        // Renaming onto an existing non-empty directory fails: a concurrent creation of the
        // same client loses the race cleanly instead of mixing two key sets.
        if let Err(e) = std::fs::rename(staging, dir) {
            if let Some(t) = &trash {
                let _ = std::fs::rename(t, dir);
            }
            return Err(if dir.exists() {
                exists(client_id)
            } else {
                internal("installing the key set", &e)
            });
        }
        fsutil::sync_dir(&self.root).map_err(|e| internal("syncing the root", &e))?;
        if let Some(t) = trash {
            let _ = std::fs::remove_dir_all(t);
        }
        Ok(())
    }

    /// Deletes a client's key set; `false` if there was none.
    pub fn delete(&self, client_id: &str) -> Result<bool> {
        let dir = self.client_dir(client_id)?;
        if !dir.exists() {
            return Ok(false);
        }
        let trash = sibling_name(&dir, "trash").map_err(|e| internal("trash", &e))?;
        std::fs::rename(&dir, &trash).map_err(|e| internal("deleting", &e))?;
        std::fs::remove_dir_all(&trash).map_err(|e| internal("deleting", &e))?;
        Ok(true)
    }

    /// The client's record, parsed and checked (`ERROR_UNKNOWN_CLIENT` when there is none).
    pub fn record(&self, client_id: &str) -> Result<ClientRecord> {
        let dir = self.client_dir(client_id)?;
        if !dir.is_dir() {
            return Err(ToolError::new(
                ErrorCode::UnknownClient,
                format!("no key set for client {client_id:?}; run generate_keys first"),
            ));
        }
        let bytes = read_limited(&dir.join(CLIENT_FILE), MAX_CLIENT_FILE_BYTES).map_err(|e| {
            corrupt(
                client_id,
                CLIENT_FILE,
                e.into_tool(CLIENT_FILE, ErrorCode::MalformedKeys),
            )
        })?;
        let record: ClientRecord =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(client_id, CLIENT_FILE, e))?;
        if record.format_version != RECORD_FORMAT {
            return Err(corrupt(
                client_id,
                CLIENT_FILE,
                format!("format version {}", record.format_version),
            ));
        }
        if record.client_id != client_id {
            return Err(corrupt(client_id, CLIENT_FILE, "names another client"));
        }
        Ok(record)
    }

    /// Loads and re-validates a whole key set: record, client specification (parameters
    /// rebuilt with the security check), preprocessing, labels and the secret key.
    pub fn load(&self, client_id: &str) -> Result<LoadedClient> {
        let record = self.record(client_id)?;
        let params = validate_client_spec(&record.client_spec)
            .map_err(|e| corrupt(client_id, CLIENT_FILE, e))?;
        let spec = record.client_spec.clone();
        if params.id_hex() != record.parameter_id {
            return Err(corrupt(client_id, CLIENT_FILE, "parameter id mismatch"));
        }
        if record.labels.len() != shape_len(&spec.output_shape) {
            return Err(corrupt(
                client_id,
                CLIENT_FILE,
                "label count differs from the output",
            ));
        }
        let input = parse_preprocessing(&record.preprocessing, spec.input_shape)
            .map_err(|e| corrupt(client_id, CLIENT_FILE, e))?;
        let dir = self.client_dir(client_id)?;
        let bytes: Zeroizing<Vec<u8>> =
            read_secret(&dir.join(SECRET_KEY_FILE), MAX_SECRET_KEY_BYTES).map_err(|e| {
                corrupt(
                    client_id,
                    SECRET_KEY_FILE,
                    e.into_tool(SECRET_KEY_FILE, ErrorCode::MalformedKeys)
                        .message,
                )
            })?;
        let limit = usize::try_from(MAX_SECRET_KEY_BYTES).unwrap_or(usize::MAX);
        let sk = SecretKey::import_bytes(&params, &bytes, limit)
            .map_err(|e| corrupt(client_id, SECRET_KEY_FILE, e))?;
        drop(bytes);
        let (encryptor, decryptor) =
            secret_key_pair(sk).map_err(|e| ToolError::new(ErrorCode::Internal, e.to_string()))?;
        Ok(LoadedClient {
            record,
            spec,
            params,
            input,
            encryptor,
            decryptor,
        })
    }

    /// The public evaluation-key bundle, checked against the size and SHA-256 in the record.
    pub fn evaluation_keys(&self, client_id: &str) -> Result<(ClientRecord, Vec<u8>)> {
        let record = self.record(client_id)?;
        let dir = self.client_dir(client_id)?;
        // No more than the record says (a longer file is corrupt either way).
        let limit = record.evaluation_key_bytes.min(MAX_EVALUATION_KEY_BYTES);
        let bytes = read_limited(&dir.join(EVALUATION_KEYS_FILE), limit).map_err(|e| {
            corrupt(
                client_id,
                EVALUATION_KEYS_FILE,
                e.into_tool(EVALUATION_KEYS_FILE, ErrorCode::MalformedKeys)
                    .message,
            )
        })?;
        if bytes.len() as u64 != record.evaluation_key_bytes
            || sha256_hex(&bytes) != record.evaluation_key_sha256
        {
            return Err(corrupt(
                client_id,
                EVALUATION_KEYS_FILE,
                "size or SHA-256 differs from the record",
            ));
        }
        Ok((record, bytes))
    }

    /// The Ed25519 identity of `client_id`, created (mode 0600) on first use. It is kept apart
    /// from the key set, so regenerating keys keeps the identity the remote server pinned.
    pub fn identity(&self, client_id: &str) -> Result<IdentityKey> {
        validate_client_id(client_id)?;
        let dir = self.root.join(IDENTITIES_DIR);
        let path = dir.join(format!("{client_id}.key"));
        match read_secret(&path, 64) {
            Ok(seed) => IdentityKey::from_seed_bytes(&seed)
                .map_err(|e| corrupt(client_id, "identity key", e.message)),
            Err(fsutil::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                create_private_dir_all(&dir).map_err(|e| internal("creating .identities", &e))?;
                let key = IdentityKey::generate()?;
                match write_new(&path, key.seed_bytes().as_ref(), FILE_MODE) {
                    Ok(()) => Ok(key),
                    // Another process made it first: use that one.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        self.identity(client_id)
                    }
                    Err(e) => Err(internal("writing the identity key", &e)),
                }
            }
            Err(e) => Err(corrupt(
                client_id,
                "identity key",
                e.into_tool("identity key", ErrorCode::MalformedKeys)
                    .message,
            )),
        }
    }

    fn server_pin_path(&self, remote_url: &str) -> PathBuf {
        let digest = sha256_hex(remote_url.as_bytes());
        self.root
            .join(SERVERS_DIR)
            .join(format!("{}.json", &digest[..32]))
    }

    /// The server identity pinned for `remote_url`, if any.
    pub fn pinned_server(&self, remote_url: &str) -> Result<Option<PublicIdentity>> {
        let path = self.server_pin_path(remote_url);
        let bytes = match read_limited(&path, MAX_CREDENTIALS_BYTES) {
            Ok(b) => b,
            Err(fsutil::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => {
                return Err(ToolError::new(
                    ErrorCode::MalformedKeys,
                    format!(
                        "key store: the server pin of {remote_url} is unreadable: {}",
                        e.into_tool("server pin", ErrorCode::MalformedKeys).message
                    ),
                ));
            }
        };
        let pin: ServerPin = serde_json::from_slice(&bytes).map_err(|e| {
            ToolError::new(
                ErrorCode::MalformedKeys,
                format!("key store: the server pin of {remote_url} is corrupt: {e}"),
            )
        })?;
        if pin.remote_url != remote_url {
            return Err(ToolError::new(
                ErrorCode::MalformedKeys,
                "key store: a server pin is stored under another URL's name",
            ));
        }
        Ok(Some(pin.server_key))
    }

    /// Pins `key` as the server identity of `remote_url` (replacing an earlier pin: callers
    /// decide when that is right).
    pub fn pin_server(&self, remote_url: &str, key: &PublicIdentity) -> Result<()> {
        cipherinfer_protocol::local::validate_remote_url(remote_url)?;
        let path = self.server_pin_path(remote_url);
        if let Some(dir) = path.parent() {
            create_private_dir_all(dir).map_err(|e| internal("creating .servers", &e))?;
        }
        let json = serde_json::to_vec_pretty(&ServerPin {
            remote_url: remote_url.to_string(),
            server_key: *key,
            pinned_at: now(),
        })
        .map_err(|e| ToolError::new(ErrorCode::Internal, e.to_string()))?;
        write_atomic(&path, &json, FILE_MODE).map_err(|e| internal("writing a server pin", &e))
    }

    fn credentials_path(&self, client_id: &str, remote_url: &str) -> Result<PathBuf> {
        let digest = sha256_hex(remote_url.as_bytes());
        Ok(self
            .client_dir(client_id)?
            .join(REMOTE_DIR)
            .join(format!("{}.json", &digest[..32])))
    }

    fn require_client(&self, client_id: &str) -> Result<()> {
        if self.client_dir(client_id)?.is_dir() {
            Ok(())
        } else {
            Err(ToolError::new(
                ErrorCode::UnknownClient,
                format!("no key set for client {client_id:?}"),
            ))
        }
    }

    /// Stores (replacing) the credentials of `creds.remote_url` for a client, mode 0600.
    pub fn put_credentials(&self, client_id: &str, creds: &RemoteCredentials) -> Result<()> {
        self.require_client(client_id)?;
        cipherinfer_protocol::local::validate_remote_url(&creds.remote_url)?;
        let path = self.credentials_path(client_id, &creds.remote_url)?;
        if let Some(dir) = path.parent() {
            create_private_dir_all(dir).map_err(|e| internal("creating remote/", &e))?;
        }
        let json = serde_json::to_vec_pretty(creds)
            .map_err(|e| ToolError::new(ErrorCode::Internal, e.to_string()))?;
        write_atomic(&path, &json, FILE_MODE).map_err(|e| internal("writing credentials", &e))
    }

    /// The stored credentials of `remote_url` for a client, if any.
    pub fn get_credentials(
        &self,
        client_id: &str,
        remote_url: &str,
    ) -> Result<Option<RemoteCredentials>> {
        self.require_client(client_id)?;
        let path = self.credentials_path(client_id, remote_url)?;
        let bytes = match read_limited(&path, MAX_CREDENTIALS_BYTES) {
            Ok(b) => b,
            Err(fsutil::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => {
                return Err(corrupt(
                    client_id,
                    "remote credentials",
                    e.into_tool("credentials", ErrorCode::MalformedKeys).message,
                ));
            }
        };
        let creds: RemoteCredentials = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(client_id, "remote credentials", e))?;
        if creds.remote_url != remote_url {
            return Err(corrupt(
                client_id,
                "remote credentials",
                "stored for another URL",
            ));
        }
        Ok(Some(creds))
    }

    /// Deletes the credentials of `remote_url` for a client; `false` if there were none.
    pub fn delete_credentials(&self, client_id: &str, remote_url: &str) -> Result<bool> {
        self.require_client(client_id)?;
        let path = self.credentials_path(client_id, remote_url)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("credentials", &e)),
        }
    }
}

fn exists(client_id: &str) -> ToolError {
    ToolError::new(
        ErrorCode::ClientExists,
        format!("client {client_id:?} already has a key set (pass overwrite: true to replace it)"),
    )
}

/// `DirBuilder` with the private mode.
trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for std::fs::DirBuilder {
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, DIR_MODE)
    }
}
