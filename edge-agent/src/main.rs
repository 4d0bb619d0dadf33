//! `fedge-agent`: the edge agent's command line.

use clap::{Parser, Subcommand};
use fedge_agent::{offline, predict};

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
        /// Train on this data folder instead of the configuration's `[data] path` (format detected).
        #[arg(long)]
        data: Option<std::path::PathBuf>,
    },
    /// Train a model locally on a data set, without a server.
    Train(offline::TrainArgs),
    /// Evaluate a model on a test set.
    Eval(offline::EvalArgs),
    /// Write one of the example models as ONNX.
    MakeModel(offline::MakeModelArgs),
    /// Predict with a model file or a kept global version, for inputs in a file (JSON or raw f32).
    Predict(predict::PredictArgs),
    /// Serve the prediction endpoint for a fixed model, without joining a federation.
    Serve(predict::ServeArgs),
    /// Check this device's SIMD code against the portable code: the secure-aggregation masks (ChaCha20 against RFC
    /// 8439's test vector, the mask kernel this CPU uses) and the convolution kernel of training and inference.
    /// Exits non-zero on a mismatch.
    SelfTest,
}

fn run(path: &std::path::Path, data: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    use fedge_agent::client::{Agent, ClientSettings};
    use fedge_agent::config::AgentConfig;
    use fedge_shared::tls;
    use std::sync::Arc;
    use std::time::Duration;

    let mut cfg = AgentConfig::load(path)?;
    if let Some(dir) = data {
        cfg.data.path = Some(dir);
        cfg.data.mnist_dir = None;
        cfg.data.format = None;
    }
    let (train, holdout) = cfg.load_data()?;
    tracing::info!(examples = train.len(), "local data loaded");
    fedge_shared::alloc::return_large_blocks_to_the_os();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let servers = cfg.server.resolve().await?;
        let settings = ClientSettings {
            servers,
            server_name: cfg.server.name.clone(),
            ca: tls::load_certs(&cfg.bundle.join(tls::files::CA_CERT))?,
            identity: tls::Identity::load_bundle(&cfg.bundle)?,
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
            backoff_initial: Duration::from_millis(cfg.backoff_initial_ms),
            backoff_max: Duration::from_millis(cfg.backoff_max_ms),
            require_secure_aggregation: cfg.require_secure_aggregation,
            privacy: cfg.privacy,
            floor: cfg.secagg,
        };
        let state =
            fedge_agent::state::ModelState::open(&cfg.state_dir)?.with_keep_versions(cfg.inference.keep_versions);
        let initial = match (cfg.inference.pin_version, state.published(cfg.inference.pin_version)) {
            (_, Ok(m)) => Some(m),
            (Some(pin), Err(e)) => {
                return Err(e.context(format!("inference.pin_version = {pin} cannot be served")));
            }
            (None, Err(_)) => None,
        };
        let labels = if cfg.labels.enabled {
            let dir = fedge_agent::config::LabelsConfig::dir(&cfg.state_dir);
            Some(Arc::new(fedge_agent::examples_store::ExampleStore::open(&dir, cfg.labels.max_examples)?))
        } else {
            None
        };
        let mut learner = fedge_agent::trainer::TractLearner::from_sources(train, holdout, cfg.seed)
            .with_schedule(cfg.training.schedule()?)
            .with_micro_batch(cfg.training.micro_batch()?);
        if let Some(store) = &labels {
            learner = learner.with_device_examples(store.clone());
        }
        let learner = Box::new(learner);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (models, updates) = tokio::sync::watch::channel(initial);
        let inference = if cfg.inference.enabled {
            let mut settings = fedge_agent::inference::InferenceSettings::from_config(&cfg.inference)?;
            settings.labels = labels;
            settings.remember_predictions = cfg.labels.remember_predictions;
            Some(fedge_agent::inference::start(settings, updates, stop_rx.clone()).await?)
        } else {
            None
        };
        let agent = tokio::spawn(Agent::new(settings, state, learner).with_model_updates(models).run(stop_rx));
        tokio::signal::ctrl_c().await?;
        let _ = stop.send(true);
        let result = agent.await?;
        if let Some(i) = inference {
            i.join().await;
        }
        result
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
    // Crash points for the whole-system fault tests (nothing without the `failpoints` feature and FAILPOINTS).
    let _crash_points = fedge_agent::crash::setup();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, data } => run(&config, data),
        Command::Train(a) => offline::train(a),
        Command::Eval(a) => offline::eval(a),
        Command::MakeModel(a) => offline::make_model(a),
        Command::Predict(a) => predict::predict(a),
        Command::Serve(a) => predict::serve(a),
        Command::SelfTest => {
            let kernel = fedge_shared::secagg::prg::self_test().map_err(anyhow::Error::msg)?;
            println!(
                "secure-aggregation masks: ChaCha20 matches RFC 8439; the {kernel} kernel matches the portable one"
            );
            let conv = fedge_shared::train::convolution_self_test().map_err(anyhow::Error::msg)?;
            println!("training and inference: the {conv} convolution kernel matches the portable one");
            Ok(())
        }
    }
}
