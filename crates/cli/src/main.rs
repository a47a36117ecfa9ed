//! `cipherinfer`: the command line of the system.
//!
//! - `cipherinfer demo` runs the whole workflow on the shipped sample images, with an
//!   in-process remote server on loopback and `cipherinfer local` as a child MCP server with a
//!   temporary key store.
//! - `cipherinfer serve` runs the remote inference MCP server with embedded defaults: the
//!   shipped models, a local object store under `./cipherinfer-data`, loopback only.
//! - `cipherinfer local` runs the local crypto MCP server over stdio.
//! - `cipherinfer keygen`, `provision` and `classify` are the client.
//! - `cipherinfer compile DIR` compiles a model package (a user's ONNX network) for serving,
//!   reports what it costs and writes the compiled model `serve` loads.
//! - `cipherinfer bench` measures encrypted inference and the server under load.
//!
//! Features (both on by default): `server` builds `serve` (the untrusted side: no key store, no
//! client); `client` builds `local`, `keygen`, `provision` and `classify` (the trusted side: no
//! server). `demo` and `bench load` need both; `compile` and `bench model` neither.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
#[cfg(feature = "client")]
mod client;
mod compile;
#[cfg(all(feature = "client", feature = "server"))]
mod demo;
#[cfg(all(feature = "client", feature = "server"))]
mod load;
#[cfg(feature = "server")]
mod serve;

/// Errors of the subcommands.
pub(crate) type BoxErr = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(
    name = "cipherinfer",
    version,
    about = "Private image classification over MCP with CKKS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per run; the server variant has the most flags"
)]
enum Command {
    /// Classify the shipped sample images under encryption, end to end, with no configuration
    /// (a remote server on loopback, the local crypto server as a child over stdio, a temporary
    /// key store).
    #[cfg(all(feature = "client", feature = "server"))]
    Demo(demo::DemoArgs),
    /// Classify images privately: encrypt locally, infer remotely on ciphertext, decrypt locally.
    #[cfg(feature = "client")]
    Classify(client::ClassifyArgs),
    /// Generate a key set for a served model in the local key store.
    #[cfg(feature = "client")]
    Keygen(client::ClientArgs),
    /// Generate keys if needed and provision the public evaluation keys (Step 0).
    #[cfg(feature = "client")]
    Provision(client::ClientArgs),
    /// Pin a remote server's identity before first contact (instead of trusting it on first use).
    #[cfg(feature = "client")]
    PinServer(client::PinServerArgs),
    /// Run the local crypto MCP server over stdio (holds the secret keys; for MCP hosts).
    #[cfg(feature = "client")]
    Local(client::LocalArgs),
    /// Run the remote inference MCP server (Streamable HTTP at /mcp, legacy SSE at /sse).
    #[cfg(feature = "server")]
    Serve(serve::ServeArgs),
    /// Compile a model package (model.json + model.onnx + calibration images) for serving:
    /// report layers, depth, parameters, keys, bytes, estimated latency and agreement, and write
    /// the compiled model that `serve --model FILE` loads.
    Compile(compile::CompileArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Encrypted inference of a shipped model in-process: latency, throughput, sizes, accuracy.
    Model(bench::ModelBenchArgs),
    /// Concurrent clients through provision, upload and inference against a loopback server.
    #[cfg(all(feature = "client", feature = "server"))]
    Load(load::LoadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Servers log what they do; the client commands only warnings (stdout is theirs).
    let default_level = match cli.command {
        #[cfg(feature = "server")]
        Command::Serve(_) => "info",
        #[cfg(feature = "client")]
        Command::Local(_) => "info",
        _ => "warn",
    };
    let json_logs = match &cli.command {
        #[cfg(feature = "server")]
        Command::Serve(a) => a.json_logs(),
        _ => false,
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if json_logs {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            #[cfg(all(feature = "client", feature = "server"))]
            Command::Demo(args) => demo::demo(args).await,
            #[cfg(feature = "client")]
            Command::Classify(args) => return tool_exit(client::classify(args).await),
            #[cfg(feature = "client")]
            Command::Keygen(args) => {
                return tool_exit(client::keygen_or_provision(args, false).await);
            }
            #[cfg(feature = "client")]
            Command::Provision(args) => {
                return tool_exit(client::keygen_or_provision(args, true).await);
            }
            #[cfg(feature = "client")]
            Command::PinServer(args) => client::pin_server(args),
            #[cfg(feature = "client")]
            Command::Local(args) => client::local(args).await,
            #[cfg(feature = "server")]
            Command::Serve(args) => serve::serve(args).await,
            Command::Compile(args) => {
                tokio::task::spawn_blocking(move || compile::compile(args)).await?
            }
            Command::Bench(BenchCommand::Model(args)) => {
                tokio::task::spawn_blocking(move || bench::model_bench(args)).await?
            }
            #[cfg(all(feature = "client", feature = "server"))]
            Command::Bench(BenchCommand::Load(args)) => load::load(args).await,
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a tool error with its code and maps it to the exit code of its class.
#[cfg(feature = "client")]
fn tool_exit(result: Result<(), cipherinfer_protocol::ToolError>) -> Result<ExitCode, BoxErr> {
    Ok(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error [{}]: {}", e.error_code, e.message);
            client::exit_code(&e)
        }
    })
}
