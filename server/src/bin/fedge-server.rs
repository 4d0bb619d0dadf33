//! `fedge-server`: the aggregation server.

use anyhow::Context;
use clap::Parser;
use fedge_server::config::ServerConfig;
use fedge_server::evaluator::{Evaluator, TractEvaluator};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(name = "fedge-server", version, about = "fedge aggregation server")]
struct Cli {
    /// Configuration file (see configs/server.toml).
    #[arg(long, short, env = "FEDGE_SERVER_CONFIG", default_value = "/etc/fedge/server.toml")]
    config: PathBuf,
    /// Log as JSON lines.
    #[arg(long)]
    json_logs: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
