//! `fedge-server`: the aggregation server, and `fedge-server probe`, its readiness check.

use anyhow::Context;
use clap::{Parser, Subcommand};
use fedge_server::config::ServerConfig;
use fedge_server::evaluator::{Evaluator, TractEvaluator};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "fedge-server", version, about = "fedge aggregation server")]
struct Cli {
    /// Configuration file (see configs/server.toml).
    #[arg(long, short, global = true, env = "FEDGE_SERVER_CONFIG", default_value = "/etc/fedge/server.toml")]
    config: PathBuf,
    /// Log as JSON lines.
    #[arg(long)]
    json_logs: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks that the server of this configuration is up and answering on its QUIC port: a TLS handshake that
    /// must show the configured server certificate (exit 0 when it does, 1 otherwise). For orchestrators without a
    /// UDP probe (a Kubernetes exec probe).
    Probe {
        /// Where to probe (default: the configuration's `listen` port on loopback).
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// How long to wait for the server's answer, in milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Probe { addr, timeout_ms }) = cli.command {
        return probe(&cli.config, addr, Duration::from_millis(timeout_ms));
    }
    fedge_shared::alloc::return_large_blocks_to_the_os();
    fedge_server::logging::init(cli.json_logs);
    let config = ServerConfig::load(&cli.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let evaluator: Option<Arc<dyn Evaluator>> = match &config.evaluation {
            Some(e) => {
                let evaluator = TractEvaluator::open(&e.source(), config.coordinator.hyper.loss, e.limit, 256)
                    .with_context(|| format!("[evaluation] test_data {}", e.test_data.display()))?;
                Some(Arc::new(evaluator))
            }
            None => None,
        };
        let server = fedge_server::service::start(config, evaluator).await?;
        tokio::signal::ctrl_c().await?;
        tracing::info!("shutting down");
        server.shutdown().await
    })
}

/// `fedge-server probe`: one handshake against the configured server, on a single-threaded runtime.
fn probe(config: &std::path::Path, addr: Option<SocketAddr>, timeout: Duration) -> anyhow::Result<()> {
    let config = ServerConfig::load(config)?;
    let cert = fedge_shared::tls::load_certs(&config.tls.cert)?
        .into_iter()
        .next()
        .with_context(|| format!("{}: no certificate", config.tls.cert.display()))?;
    let addr = addr.unwrap_or_else(|| fedge_server::net::local_address(config.listen));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(fedge_server::net::probe(addr, cert, timeout))?;
    println!("ready: the server at {addr} answered with its certificate");
    Ok(())
}
