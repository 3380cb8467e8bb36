//! The `switchyard` binary: a thin CLI over the `gateway` library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::mock::{self, Fault, MockOptions, ReplayStore};
use gateway::{Application, Config};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "An OpenAI-compatible LLM gateway that learns where to send each request")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file; without one, a built-in demo config with an in-process mock upstream.
        #[arg(long, env = "SWITCHYARD_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides `[server] listen`).
        #[arg(long, env = "SWITCHYARD_LISTEN")]
        listen: Option<SocketAddr>,
    },
    /// Run the OpenAI-compatible mock upstream used by tests, benchmarks and demos.
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// Answer known prompts with recorded answers from a dataset folder
        /// (RouterBench CSVs or an Arena-Hard folder; searched one level deep).
        #[arg(long)]
        replay: Vec<PathBuf>,
        /// Delay before the first token, in ms.
        #[arg(long, default_value_t = 0)]
        first_token_ms: u64,
        /// Delay between tokens of a stream, in ms.
        #[arg(long, default_value_t = 0)]
        per_token_ms: u64,
        /// Fault for every request to a model: `MODEL=500`, `MODEL=429:5`, `MODEL=hang`, `MODEL=reset`.
        #[arg(long = "fault")]
        faults: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Serve { config, listen } => {
            let config = match config {
                Some(path) => Config::from_file(&path)?,
                None => {
                    tracing::info!("no config file given: using the built-in demo config (mock upstream)");
                    Config::builtin_default()
                }
            };
            let app = Application::build(&config, listen).await?;
            tracing::info!(addr = %app.addr(), "switchyard listening");
            app.run_until(shutdown_signal()).await?;
        }
        Command::MockUpstream { listen, replay, first_token_ms, per_token_ms, faults } => {
            let mut options = MockOptions { first_token_ms, per_token_ms, ..MockOptions::default() };
            for spec in faults {
                let (model, fault) = spec.split_once('=').context("--fault wants MODEL=FAULT")?;
                let fault: Fault = fault.parse().map_err(anyhow::Error::msg)?;
                options.faults.insert(model.to_owned(), fault);
            }
            if !replay.is_empty() {
                let mut store = ReplayStore::default();
                for dir in &replay {
                    store.merge(ReplayStore::load(dir)?);
                }
                tracing::info!(prompts = store.len(), "replaying recorded answers");
                options.replay = Some(store);
            }
            let addr = mock::spawn(listen, options).await?;
            tracing::info!(%addr, "mock upstream listening");
            shutdown_signal().await;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
