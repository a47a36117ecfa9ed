//! `cipherinfer serve`: the remote inference MCP server with its flags (built with the
//! `server` feature).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cipherinfer_protocol::AuthToken;
use cipherinfer_remote::server::check_bind;
use cipherinfer_remote::{S3Options, Server, ServerOptions, StoreLocation};
use cipherinfer_transport::{ConnectionLimits, body_limit_for_chunk, load_tls_config};
use tokio_util::sync::CancellationToken;

use crate::BoxErr;

/// `serve --log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of `cipherinfer serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback needs --tls-cert/--tls-key or
    /// --behind-tls-proxy.
    #[arg(long, default_value = "127.0.0.1:8750")]
    bind: SocketAddr,
    /// Serve HTTPS with this PEM certificate chain (end-entity certificate first); needs
    /// --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address: a TLS-terminating reverse proxy is the only
    /// way to reach it.
    #[arg(long)]
    behind_tls_proxy: bool,
    /// Directory of the local object store (keys, staged chunks, results) and of the server
    /// identity.
    #[arg(long, default_value = "cipherinfer-data")]
    data_dir: PathBuf,
    /// Keep the state in this object store instead of --data-dir: `s3://bucket/prefix` (an
    /// S3-compatible bucket several replicas share; credentials and region from the standard
    /// AWS environment variables) or a directory.
    #[arg(long, value_name = "URL", value_parser = parse_store)]
    store: Option<StoreLocation>,
    /// Endpoint of an S3-compatible server (MinIO, Ceph RGW, ...), e.g. http://127.0.0.1:9000;
    /// default: AWS (or AWS_ENDPOINT).
    #[arg(long, value_name = "URL", requires = "store")]
    s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, requires = "store")]
    s3_region: Option<String>,
    /// Address the bucket as ENDPOINT/BUCKET (path style) instead of BUCKET.ENDPOINT.
    #[arg(long, requires = "store")]
    s3_path_style: bool,
    /// Longest wait for one store request, and for the retries of one store operation, before
    /// a call fails with the retryable ERROR_UNAVAILABLE.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    store_timeout_s: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics, on a listener of their own (keep it
    /// private; off by default).
    #[arg(long, value_name = "ADDR")]
    metrics_bind: Option<SocketAddr>,
    /// Log format on stderr: text, or json (one object per line, with request ids; never
    /// tokens, keys or ciphertexts).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// On SIGTERM or Ctrl-C, how long running inferences may take to finish before the server
    /// stops anyway; new inferences are refused meanwhile with the retryable ERROR_UNAVAILABLE
    /// and /readyz answers 503.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    drain_timeout_s: u64,
    /// The server identity's seed file (created if missing; default:
    /// DATA_DIR/server-identity.key). Replicas behind one address must share one.
    #[arg(long, value_name = "FILE")]
    server_identity: Option<PathBuf>,
    /// Served models, the first is the default (repeat or comma-separate): a shipped model's
    /// name (mnist-cnn, fashion-cnn, mnist-relu, colour-shapes), a model package directory
    /// (model.json + model.onnx; served under the card's name) or a compiled model file
    /// (`cipherinfer compile`; loads without recompiling).
    #[arg(long, value_delimiter = ',', default_values_t = ["mnist-cnn".to_string(), "fashion-cnn".to_string()])]
    model: Vec<String>,
    /// Accepted Host header values (default: loopback names). Repeat for several.
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,
    /// Accepted Origin values (default: loopback origins). Repeat for several.
    #[arg(long = "allowed-origin")]
    allowed_origins: Vec<String>,
    /// Largest decoded chunk in MiB (the HTTP body limit follows from it).
    #[arg(long, default_value_t = 32)]
    max_chunk_mib: u64,
    /// Session lifetime after last use, in seconds.
    #[arg(long, default_value_t = 3600)]
    session_ttl_s: u64,
    /// Live sessions per client.
    #[arg(long, default_value_t = 16)]
    max_sessions_per_client: usize,
    /// Inferences evaluated at once.
    #[arg(long, default_value_t = 1)]
    max_concurrent_inferences: usize,
    /// Memory the server may plan for, in MiB: the models' masks, one client's keys and one
    /// evaluation's working memory per concurrent inference, and the key sets kept decoded.
    /// Start-up refuses more concurrent inferences than it holds and keeps fewer key sets when
    /// needed (default: 90% of the machine's memory; 0: no check).
    #[arg(long)]
    memory_budget_mib: Option<u64>,
    /// Keep each model's evaluation keys within this many MiB (models compiled at start-up:
    /// shipped names and package directories; a compiled model keeps the budget of its
    /// `compile --max-key-mib`): rotations beyond it are composed of power-of-two keys.
    #[arg(long, value_parser = crate::compile::parse_mib)]
    max_key_mib: Option<u64>,
    /// Most threads one evaluation uses (default: the machine's cores); a client's
    /// `omp_threads` can only lower it.
    #[arg(long)]
    max_eval_threads: Option<usize>,
    /// Failed authentications per peer address and minute before ERROR_RATE_LIMITED (0: off;
    /// use 0 behind a reverse proxy, where every client has the proxy's address).
    #[arg(long)]
    auth_failures_per_minute_per_peer: Option<u32>,
    /// How long a garbage-collected session keeps answering ERROR_EXPIRED, in seconds.
    #[arg(long)]
    tombstone_ttl_s: Option<u64>,
    /// File holding an enrollment token new clients must present (generated and printed if the
    /// file does not exist yet).
    #[arg(long)]
    enrollment_token_file: Option<PathBuf>,
    /// Register a client identity before its first provisioning: CLIENT_ID=HEX (the client's
    /// Ed25519 public key, 64 hex digits). Repeat for several.
    #[arg(long = "identity", value_name = "CLIENT_ID=HEX")]
    identities: Vec<String>,
    /// Provision only client ids registered with --identity (no trust on first use).
    #[arg(long)]
    require_registered_identity: bool,
    /// Accept unsigned calls from clients that have no pinned identity (for MCP hosts that
    /// cannot sign; clients with a pinned identity must always sign).
    #[arg(long)]
    allow_unsigned: bool,
    /// Largest accepted distance between a signed request's timestamp and this clock, seconds.
    #[arg(long, default_value_t = 300)]
    max_clock_skew_s: u64,
    /// Connections open at once; further clients wait until one closes. Raised file-descriptor
    /// limits permitting (the soft limit is raised to the hard one at start).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Connections open at once from one address (an IPv6 /64 counts as one), further ones are
    /// closed (0: no bound). Default 64, or no bound with --behind-tls-proxy, where all come
    /// from the proxy.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    max_connections_per_address: Option<u64>,
    /// Seconds to receive a request head; also how long an idle connection stays open.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_timeout_s: u64,
    /// Seconds to receive a whole request body.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    body_timeout_s: u64,
}

/// File descriptors kept for everything but client connections (the object store, keys,
/// models, logs).
const RESERVED_FDS: u64 = 256;

/// Raises the soft file-descriptor limit to the hard one and returns how many connections it
/// leaves room for next to [`RESERVED_FDS`] (`None` where there is no such limit).
fn connection_room() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => Some(soft.saturating_sub(RESERVED_FDS).max(1)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the file-descriptor limit");
            None
        }
    }
}

impl ServeArgs {
    /// Whether the log is JSON lines.
    pub fn json_logs(&self) -> bool {
        self.log_format == LogFormat::Json
    }
}

/// Waits for SIGTERM (what service managers and container runtimes send) or Ctrl-C; names it.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => return "SIGTERM",
                _ = tokio::signal::ctrl_c() => return "interrupt",
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "interrupt"
}

/// Parses `--store URL`.
fn parse_store(s: &str) -> Result<StoreLocation, String> {
    StoreLocation::parse(s)
}

/// Parses `--identity CLIENT_ID=HEX`.
fn registered_identity(
    spec: &str,
) -> Result<(String, cipherinfer_protocol::integrity::PublicIdentity), BoxErr> {
    let (client, key) = spec
        .split_once('=')
        .ok_or_else(|| format!("--identity {spec:?}: expected CLIENT_ID=HEX"))?;
    cipherinfer_protocol::validate::validate_client_id(client)
        .map_err(|e| format!("--identity {spec:?}: {}", e.message))?;
    let key = key.parse().map_err(|e: cipherinfer_protocol::ToolError| {
        format!("--identity {spec:?}: {}", e.message)
    })?;
    Ok((client.to_string(), key))
}

fn enrollment_hash(path: &std::path::Path) -> Result<cipherinfer_protocol::TokenHash, BoxErr> {
    let token = match std::fs::read_to_string(path) {
        Ok(t) => AuthToken::from_string(t.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = AuthToken::generate()?;
            std::fs::write(path, t.expose())?;
            eprintln!("wrote a new enrollment token to {}", path.display());
            t
        }
        Err(e) => return Err(e.into()),
    };
    if !token.is_well_formed() {
        return Err(format!("{} does not hold a well-formed token", path.display()).into());
    }
    Ok(token.hash()?)
}

/// The machine's memory (`MemTotal` of /proc/meminfo), where the system says.
fn machine_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

pub async fn serve(args: ServeArgs) -> Result<(), BoxErr> {
    // Refuse a bad channel before anything slow (compiling models) or lasting (token files).
    // clap makes each of --tls-cert and --tls-key require the other.
    let tls = match args.tls_cert.as_deref().zip(args.tls_key.as_deref()) {
        Some((cert, key)) => Some(Arc::new(load_tls_config(cert, key)?)),
        None => None,
    };
    check_bind(args.bind, tls.is_some(), args.behind_tls_proxy)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut options = ServerOptions {
        bind: args.bind,
        data_dir: args.data_dir,
        store: args.store,
        metrics_bind: args.metrics_bind,
        s3: S3Options {
            endpoint: args.s3_endpoint,
            region: args.s3_region,
            path_style: args.s3_path_style,
            request_timeout: Some(Duration::from_secs(args.store_timeout_s)),
            credentials: None,
        },
        identity_file: args.server_identity,
        models: args.model,
        max_key_bytes: args.max_key_mib,
        tls,
        behind_tls_proxy: args.behind_tls_proxy,
        ..ServerOptions::default()
    };
    let chunk = args.max_chunk_mib.clamp(1, 32) * 1024 * 1024;
    options.service.limits.max_chunk_bytes = chunk;
    options.http.max_body_bytes = body_limit_for_chunk(usize::try_from(chunk)?);
    options.service.session_ttl = Duration::from_secs(args.session_ttl_s);
    options.service.max_sessions_per_client = args.max_sessions_per_client;
    options.service.max_concurrent_inferences = args.max_concurrent_inferences;
    options.service.memory_budget_bytes = match args.memory_budget_mib {
        Some(0) => None,
        Some(mib) => Some(mib.saturating_mul(1 << 20)),
        None => machine_memory_bytes().map(|b| b / 10 * 9),
    };
    if let Some(t) = args.max_eval_threads {
        options.service.max_eval_threads = t.max(1);
    }
    if let Some(n) = args.auth_failures_per_minute_per_peer {
        options.service.auth_failures_per_minute_per_peer = n;
    }
    if let Some(s) = args.tombstone_ttl_s {
        options.service.tombstone_ttl = Duration::from_secs(s);
    }
    for spec in &args.identities {
        let (client, key) = registered_identity(spec)?;
        options.service.registered_identities.insert(client, key);
    }
    options.service.require_registered_identity = args.require_registered_identity;
    options.service.require_signatures = !args.allow_unsigned;
    options.service.max_clock_skew = Duration::from_secs(args.max_clock_skew_s.max(1));
    if let Some(path) = &args.enrollment_token_file {
        options.service.enrollment_token_hash = Some(enrollment_hash(path)?);
    }
    let mut max_connections = args.max_connections;
    if let Some(room) = connection_room()
        && room < max_connections
    {
        eprintln!(
            "the file-descriptor limit leaves room for {room} connections; --max-connections {max_connections} lowered to it"
        );
        max_connections = room;
    }
    options.connections = ConnectionLimits {
        max_connections: usize::try_from(max_connections)?,
        max_connections_per_address: match args.max_connections_per_address {
            Some(0) => None,
            Some(n) => Some(usize::try_from(n)?),
            None if args.behind_tls_proxy => None,
            None => ConnectionLimits::default().max_connections_per_address,
        },
        header_read_timeout: Duration::from_secs(args.header_timeout_s.max(1)),
        body_read_timeout: Duration::from_secs(args.body_timeout_s.max(1)),
    };
    if !args.allowed_hosts.is_empty() {
        options.http.allowed_hosts = args.allowed_hosts;
    }
    if !args.allowed_origins.is_empty() {
        options.http.allowed_origins = args.allowed_origins;
    }
    eprintln!("compiling models {:?} ...", options.models);
    let server = Server::build(options)?;
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        let service = server.service.clone();
        let deadline = Duration::from_secs(args.drain_timeout_s);
        tokio::spawn(async move {
            let signal = stop_signal().await;
            eprintln!(
                "{signal}: draining (no new inference; at most {} s for the running ones)",
                deadline.as_secs()
            );
            if !service.drain(deadline).await {
                eprintln!("inferences still running at the drain deadline are cut off");
            }
            shutdown.cancel();
        });
    }
    // The identity clients pin; publish it so that they can pin it before first contact
    // (`cipherinfer pin-server --server-key HEX`) instead of trusting it on first use.
    eprintln!(
        "server identity (Ed25519, signs results): {}",
        server.service.server_identity()
    );
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    // The one line on stdout: where to connect (useful with --bind 127.0.0.1:0).
    println!(
        "cipherinfer remote server listening on {scheme}://{}/mcp",
        listener.local_addr()?
    );
    server.run(listener, shutdown).await?;
    Ok(())
}
