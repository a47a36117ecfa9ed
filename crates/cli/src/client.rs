//! The client commands: `keygen`, `provision`, `classify`, and `local` (the local crypto MCP
//! server over stdio).
//!
//! `classify` is an MCP host of both servers, as the draft draws it: it spawns
//! `cipherinfer local` as a child process and talks MCP to it over stdio for every trusted step
//! (keys, encryption, decryption), and talks MCP over HTTP to the remote server for Step 0,
//! uploads and inference. Only ciphertexts and public keys leave the machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use cipherinfer_client::{
    ClassifyRequest, Event, McpLocal, RemoteClient, Workflow, WorkflowOptions,
};
use cipherinfer_local::{
    ClassifierOptions, KeyStore, LocalConfig, LocalCrypto, LocalServerOptions, default_client_id,
};
use cipherinfer_protocol::local::PrivateClassifyResult;
use cipherinfer_protocol::{AuthToken, ErrorCode, ToolError};
use indicatif::{ProgressBar, ProgressStyle};

use crate::BoxErr;

/// Options shared by the client commands.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// The remote inference server's MCP endpoint (https://host/mcp; http only for loopback).
    #[arg(
        long,
        env = "CIPHERINFER_REMOTE",
        default_value = "http://127.0.0.1:8750/mcp"
    )]
    remote: String,
    /// Served model (default: the server's default model).
    #[arg(long)]
    model: Option<String>,
    /// Client identity (default: `<random per key store>-<model>`).
    #[arg(long)]
    client_id: Option<String>,
    /// Key store directory (default: $CIPHERINFER_HOME/keys or the XDG data directory).
    #[arg(long)]
    key_dir: Option<PathBuf>,
    /// File holding an enrollment token, for servers that restrict enrollment.
    #[arg(long)]
    enrollment_token_file: Option<PathBuf>,
}

/// Options of `cipherinfer pin-server`.
#[derive(clap::Args, Debug)]
pub struct PinServerArgs {
    /// The remote inference server's MCP endpoint, exactly as the client will use it.
    #[arg(
        long,
        env = "CIPHERINFER_REMOTE",
        default_value = "http://127.0.0.1:8750/mcp"
    )]
    remote: String,
    /// The server's identity, 64 hex digits, obtained out of band (its operator publishes what
    /// `cipherinfer serve` prints as its identity, which `describe_capabilities` returns as
    /// `server_identity`).
    #[arg(long = "server-key", value_name = "HEX")]
    server_key: String,
    /// Key store directory (default: $CIPHERINFER_HOME/keys or the XDG data directory).
    #[arg(long)]
    key_dir: Option<PathBuf>,
    /// Replace another identity already pinned for this URL.
    #[arg(long)]
    replace: bool,
}

/// Runs `cipherinfer pin-server`: pins a remote server's identity in the key store before first
/// contact, so that every later call refuses a server that presents another one
/// (`ERROR_IDENTITY_MISMATCH`) instead of trusting the first it meets.
pub fn pin_server(args: PinServerArgs) -> Result<(), BoxErr> {
    let key: cipherinfer_protocol::integrity::PublicIdentity = args
        .server_key
        .trim()
        .parse()
        .map_err(|e: ToolError| format!("--server-key: {}", e.message))?;
    cipherinfer_protocol::local::validate_remote_url(&args.remote)
        .map_err(|e| format!("--remote: {}", e.message))?;
    let store = KeyStore::open(key_root(args.key_dir.as_deref())?)?;
    match store.pinned_server(&args.remote)? {
        Some(pinned) if pinned == key => {
            println!("{} is already pinned to {key}", args.remote);
            return Ok(());
        }
        Some(pinned) if !args.replace => {
            return Err(format!(
                "{} is pinned to another identity ({pinned}); pass --replace to change it",
                args.remote
            )
            .into());
        }
        _ => {}
    }
    store.pin_server(&args.remote, &key)?;
    println!("pinned {} to {key}", args.remote);
    Ok(())
}

/// Options of `cipherinfer classify`.
#[derive(clap::Args, Debug)]
pub struct ClassifyArgs {
    /// PNG or JPEG images to classify.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
    /// Top classes to show.
    #[arg(long, default_value_t = 3)]
    top_k: u32,
    /// Print one JSON result per image (the `private_classify` result) instead of text.
    #[arg(long)]
    json: bool,
}

/// Options of `cipherinfer local`.
#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    /// Key store directory (default: $CIPHERINFER_HOME/keys or the XDG data directory).
    #[arg(long)]
    key_dir: Option<PathBuf>,
    /// Directories tools may read images from and write ciphertexts to (default: any).
    #[arg(long = "allow-dir")]
    allow_dirs: Vec<PathBuf>,
    /// Default remote endpoint of `private_classify`.
    #[arg(long, env = "CIPHERINFER_REMOTE")]
    remote: Option<String>,
    /// File holding an enrollment token, for servers that restrict enrollment.
    #[arg(long)]
    enrollment_token_file: Option<PathBuf>,
    /// Serve Streamable HTTP at this loopback address (e.g. 127.0.0.1:8751) instead of stdio;
    /// any other address is refused.
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
}

/// The exit code of a failed command, by error class.
pub fn exit_code(e: &ToolError) -> ExitCode {
    ExitCode::from(match e.error_code {
        ErrorCode::Unavailable => 3,
        ErrorCode::Unauthorized
        | ErrorCode::ClientExists
        | ErrorCode::KeysRevoked
        | ErrorCode::RateLimited => 4,
        ErrorCode::UnknownModel => 5,
        ErrorCode::ImageUnreadable | ErrorCode::FileNotFound | ErrorCode::PathNotAllowed => 6,
        _ => 1,
    })
}

fn key_root(dir: Option<&Path>) -> Result<PathBuf, BoxErr> {
    match dir {
        Some(d) => Ok(absolute(d)?),
        None => KeyStore::default_root()
            .ok_or_else(|| "no key store: set CIPHERINFER_HOME or HOME, or pass --key-dir".into()),
    }
}

fn absolute(p: &Path) -> Result<PathBuf, BoxErr> {
    Ok(std::path::absolute(p)?)
}

fn enrollment(path: Option<&Path>) -> Result<Option<AuthToken>, BoxErr> {
    path.map(|p| {
        let t = std::fs::read_to_string(p)?;
        Ok(AuthToken::from_string(t.trim().to_string()))
    })
    .transpose()
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {bytes}/{total_bytes} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Shows workflow events on stderr: progress bars for transfers, a spinner for inference.
struct Display {
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl Display {
    fn event(&mut self, e: Event) {
        if self.quiet {
            return;
        }
        match e {
            Event::GeneratingKeys { client_id, model } => {
                self.finish();
                eprintln!("generating keys of {client_id} for {model} ...");
            }
            Event::Provisioning(t) | Event::Uploading(t) => {
                let what = if matches!(e, Event::Provisioning(_)) {
                    "Step 0 keys"
                } else {
                    "upload"
                };
                let bar = self.bar.get_or_insert_with(|| bar(t.total, what));
                bar.set_message(what);
                bar.set_length(t.total);
                bar.set_position(t.done);
                if t.done >= t.total {
                    self.finish();
                }
            }
            Event::Encrypted { bytes } => {
                self.finish();
                eprintln!("encrypted: {:.1} KB of ciphertext", bytes as f64 / 1e3);
            }
            Event::Inference(p) => {
                let bar = self.bar.get_or_insert_with(|| {
                    let b = ProgressBar::new(p.total.unwrap_or(0.0) as u64);
                    b.set_style(
                        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {wide_msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                    );
                    b.set_message("inference");
                    b
                });
                if let Some(total) = p.total {
                    bar.set_length(total as u64);
                }
                bar.set_position(p.progress as u64);
            }
            Event::Decrypting => self.finish(),
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// Prints one result as text.
fn print_result(image: &Path, r: &PrivateClassifyResult) {
    let c = &r.classification;
    println!(
        "{}: {} (class {}, p = {:.3}){}",
        image.display(),
        c.label,
        c.class_index,
        c.top_k.first().map_or(0.0, |s| s.probability),
        if r.provisioned {
            " [keys provisioned]"
        } else {
            ""
        }
    );
    if let Some(fit) = r.image.as_ref().filter(|f| f.changed()) {
        println!("    image {}", fit.describe());
    }
    for s in &c.top_k {
        println!(
            "    {:>3}  {:<16} p = {:.4}  logit = {:+.3}",
            s.class_index, s.label, s.probability, s.logit
        );
    }
    let t = &r.timings;
    println!(
        "    encrypt {:.0} ms, upload {:.0} ms ({:.1} KB), remote {:.0} ms (evaluation {:.0} ms), decrypt {:.0} ms, total {:.0} ms; precision ≈ {:.1} bits",
        t.encrypt_s * 1e3,
        t.upload_s * 1e3,
        r.bytes_uploaded as f64 / 1e3,
        t.remote_s * 1e3,
        t.infer_s * 1e3,
        t.decrypt_s * 1e3,
        t.total_s * 1e3,
        c.precision_bits
    );
}

/// The trusted side as the draft draws it: `cipherinfer local` (this binary) as a child MCP
/// server over stdio for every step that needs the secret key, the key store for the remote
/// credentials, and a private work directory for session files. `classify` and `demo` both
/// run the client workflow through it.
pub struct LocalServer {
    /// The child's MCP connection.
    pub mcp: McpLocal,
    /// The key store the child uses (credentials and server pins are read here).
    pub store: KeyStore,
    work: TempDir,
}

impl LocalServer {
    /// Spawns `cipherinfer local` on the key store at `root`, allowed to read images from
    /// `image_dirs` and to write its work directory.
    pub async fn spawn(root: &Path, image_dirs: &[PathBuf]) -> Result<Self, ToolError> {
        let err = |e: BoxErr| ToolError::new(ErrorCode::Internal, e.to_string());
        let store = KeyStore::open(root)?;
        let work = tempdir_in(root).map_err(err)?;
        let exe = std::env::current_exe()
            .map_err(|e| ToolError::new(ErrorCode::Internal, format!("cannot find myself: {e}")))?;
        let mut command = tokio::process::Command::new(exe);
        command.arg("local").arg("--key-dir").arg(root);
        command.arg("--allow-dir").arg(&work.0);
        for dir in image_dirs {
            command.arg("--allow-dir").arg(dir);
        }
        command.env("RUST_LOG", "warn");
        let mcp = McpLocal::spawn(command).await?;
        Ok(Self { mcp, store, work })
    }

    /// The Steps 0–6 workflow against `remote`, through this local server.
    pub fn workflow<'a>(
        &'a self,
        remote: &'a RemoteClient,
        default_client_id: Option<String>,
        enrollment_token: Option<AuthToken>,
    ) -> Result<Workflow<'a, McpLocal, KeyStore>, ToolError> {
        let default_client_id = match default_client_id {
            Some(id) => id,
            None => cipherinfer_local::default_client_id(&self.store)?,
        };
        Ok(Workflow::new(
            &self.mcp,
            &self.store,
            remote,
            WorkflowOptions {
                work_dir: self.work.0.clone(),
                default_client_id,
                chunk_bytes: cipherinfer_client::remote::DEFAULT_CHUNK_BYTES,
                enrollment_token,
            },
        ))
    }

    /// Closes the connection (the child exits) and removes the work directory.
    pub async fn close(self) {
        self.mcp.close().await;
        drop(self.work);
    }
}

/// The parent directories of `images` (absolute), without repeats.
pub fn parent_dirs(images: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = images
        .iter()
        .filter_map(|i| i.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Runs `cipherinfer classify`: the local server as a child process over stdio, the remote
/// over HTTP.
pub async fn classify(args: ClassifyArgs) -> Result<(), ToolError> {
    let err = |e: BoxErr| ToolError::new(ErrorCode::Internal, e.to_string());
    let root = key_root(args.client.key_dir.as_deref()).map_err(err)?;
    let images: Vec<PathBuf> = args
        .images
        .iter()
        .map(|p| absolute(p))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    for image in &images {
        if !image.is_file() {
            return Err(ToolError::new(
                ErrorCode::FileNotFound,
                format!("{}: no such image file", image.display()),
            ));
        }
    }
    let enrollment_token = enrollment(args.client.enrollment_token_file.as_deref()).map_err(err)?;
    let local = LocalServer::spawn(&root, &parent_dirs(&images)).await?;
    let remote = match RemoteClient::connect(&args.client.remote).await {
        Ok(r) => r,
        Err(e) => {
            local.close().await;
            return Err(e);
        }
    };
    let outcome = async {
        let mut workflow = local.workflow(&remote, None, enrollment_token)?;
        for image in &images {
            let mut display = Display {
                quiet: args.json,
                bar: None,
            };
            let r = workflow
                .classify(
                    &ClassifyRequest {
                        image_path: image.clone(),
                        model: args.client.model.clone(),
                        client_id: args.client.client_id.clone(),
                        top_k: Some(args.top_k),
                    },
                    |e| display.event(e),
                )
                .await;
            display.finish();
            let r = r?;
            if args.json {
                // One object per image: the image's path, then the result's fields.
                let internal =
                    |e: serde_json::Error| ToolError::new(ErrorCode::Internal, e.to_string());
                let mut object = serde_json::Map::new();
                object.insert("path".into(), image.to_string_lossy().into_owned().into());
                if let serde_json::Value::Object(fields) =
                    serde_json::to_value(&r).map_err(internal)?
                {
                    object.extend(fields);
                }
                println!("{}", serde_json::to_string(&object).map_err(internal)?);
            } else {
                print_result(image, &r);
            }
        }
        Ok(())
    }
    .await;
    remote.close().await;
    local.close().await;
    outcome
}

/// A private temporary directory under the key store, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir_in(root: &Path) -> Result<TempDir, BoxErr> {
    use std::os::unix::fs::DirBuilderExt;
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("randomness unavailable: {e}"))?;
    let dir = root
        .join(cipherinfer_local::classify::WORK_DIR)
        .join(hex::encode(bytes));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    Ok(TempDir(dir))
}

/// Runs `cipherinfer keygen` (in-process) or `cipherinfer provision` (keys + Step 0).
pub async fn keygen_or_provision(args: ClientArgs, provision: bool) -> Result<(), ToolError> {
    let err = |e: BoxErr| ToolError::new(ErrorCode::Internal, e.to_string());
    let root = key_root(args.key_dir.as_deref()).map_err(err)?;
    let crypto = Arc::new(LocalCrypto::new(LocalConfig {
        key_root: root.clone(),
        allowed_dirs: Vec::new(),
    })?);
    let local = cipherinfer_local::InProcess::new(Arc::clone(&crypto));
    let remote = RemoteClient::connect(&args.remote).await?;
    let work = tempdir_in(&root).map_err(err)?;
    let outcome = async {
        let mut workflow = Workflow::new(
            &local,
            local.store(),
            &remote,
            WorkflowOptions {
                work_dir: work.0.clone(),
                default_client_id: default_client_id(local.store())?,
                chunk_bytes: cipherinfer_client::remote::DEFAULT_CHUNK_BYTES,
                enrollment_token: enrollment(args.enrollment_token_file.as_deref())
                    .map_err(err)?,
            },
        );
        let model = workflow.model(args.model.as_deref()).await?;
        let client_id = args
            .client_id
            .clone()
            .unwrap_or_else(|| workflow.default_client_id(&model.name));
        let mut display = Display {
            quiet: false,
            bar: None,
        };
        if provision {
            let c = workflow
                .ensure_keys(&client_id, &model, false, |e| display.event(e))
                .await;
            display.finish();
            let c = c?;
            println!(
                "client {client_id}: {:.2} MB of evaluation keys for {} ({}) provisioned at {} as {}",
                c.bundle_bytes as f64 / 1e6,
                model.name,
                model.algorithm_id,
                remote.url(),
                c.key_ref
            );
        } else {
            let (e, _, generated) = workflow
                .ensure_local_keys(&client_id, &model, &mut |e| display.event(e))
                .await?;
            println!(
                "client {client_id}: keys for {} ({}) {}; {:.2} MB of evaluation keys, {} rotation keys",
                model.name,
                model.algorithm_id,
                match generated {
                    Some(s) => format!("generated in {s:.2} s"),
                    None => "already in the key store".to_string(),
                },
                e.bytes as f64 / 1e6,
                e.galois_elements.len()
            );
        }
        // The public half, for operators who register identities before first use.
        let identity = local.store().identity(&client_id)?.public();
        println!(
            "client {client_id}: identity {identity} (register it with `cipherinfer serve --identity {client_id}={identity}`)"
        );
        Ok(())
    }
    .await;
    remote.close().await;
    outcome
}

/// Runs `cipherinfer local`: the local crypto MCP server over stdio.
pub async fn local(args: LocalArgs) -> Result<(), BoxErr> {
    let root = key_root(args.key_dir.as_deref())?;
    let allowed_dirs = args
        .allow_dirs
        .iter()
        .map(|d| absolute(d))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(url) = &args.remote {
        cipherinfer_protocol::local::validate_remote_url(url)
            .map_err(|e| format!("--remote: {}", e.message))?;
    }
    let options = LocalServerOptions {
        config: LocalConfig {
            key_root: root,
            allowed_dirs,
        },
        classifier: ClassifierOptions {
            default_remote: args.remote,
            enrollment_token: enrollment(args.enrollment_token_file.as_deref())?,
        },
    };
    match args.http {
        None => cipherinfer_local::serve_local_stdio(options).await?,
        Some(addr) => {
            let handler = cipherinfer_local::local_handler(options)?;
            let shutdown = tokio_util::sync::CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stop.cancel();
            });
            // Port 0 picks a free port; the URL goes to stdout (not protocol in this mode).
            let listener = cipherinfer_local::server::bind_loopback(addr).await?;
            println!(
                "cipherinfer local server listening on http://{}/mcp",
                listener.local_addr()?
            );
            cipherinfer_local::server::serve_http_listener(handler, listener, shutdown).await?;
        }
    }
    Ok(())
}
