//! `fedge-agent`: the edge agent's command line.

use clap::{Parser, Subcommand};
use fedge_agent::offline;

#[derive(Debug, Parser)]
#[command(name = "fedge-agent", version, about = "fedge edge agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join the federation: connect to the server, take part in rounds, keep the newest model.
    Run {
        /// Configuration file (see configs/agent.toml).
        #[arg(long, short, env = "FEDGE_AGENT_CONFIG", default_value = "/etc/fedge/agent.toml")]
        config: std::path::PathBuf,
    },
    /// Train a model locally on a data set, without a server.
    Train(offline::TrainArgs),
    /// Evaluate a model on a test set.
    Eval(offline::EvalArgs),
    /// Write one of the example models as ONNX.
    MakeModel(offline::MakeModelArgs),
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use fedge_agent::client::{Agent, ClientSettings};
    use fedge_agent::config::AgentConfig;
    use fedge_shared::tls;
    use std::time::Duration;

    let cfg = AgentConfig::load(path)?;
    let (train, holdout) = cfg.load_data()?;
    tracing::info!(examples = train.len(), "local data loaded");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let server = tokio::net::lookup_host(&cfg.server.address)
            .await
            .with_context(|| format!("resolving {}", cfg.server.address))?
            .next()
            .with_context(|| format!("{} resolves to no address", cfg.server.address))?;
        let settings = ClientSettings {
            server,
            server_name: cfg.server.name.clone(),
            ca: tls::load_certs(&cfg.bundle.join(tls::files::CA_CERT))?,
            identity: tls::Identity::load_bundle(&cfg.bundle)?,
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
            backoff_initial: Duration::from_millis(cfg.backoff_initial_ms),
            backoff_max: Duration::from_millis(cfg.backoff_max_ms),
        };
        let state = fedge_agent::state::ModelState::open(&cfg.state_dir)?;
        let learner = Box::new(fedge_agent::trainer::TractLearner::new(train, holdout, cfg.seed));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let agent = tokio::spawn(Agent::new(settings, state, learner).run(stop_rx));
        tokio::signal::ctrl_c().await?;
        let _ = stop.send(true);
        agent.await?
    })
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Train(a) => offline::train(a),
        Command::Eval(a) => offline::eval(a),
        Command::MakeModel(a) => offline::make_model(a),
    }
}
