//! `fedgectl demo`: a whole federation on this machine: a CA and certificates in a temporary directory, a real
//! server on loopback QUIC with mutual TLS and a sled database, and N agents (tasks in this process, each with its
//! own certificate and QUIC connection) training with tract on a non-IID split of the data: MNIST with an example
//! model by default, or the user's own model and data folder (`--model M.onnx --data DIR`, any format
//! `fedge_shared::data` reads; see [`crate::demo_data`]). Each round reports the server's test accuracy (or, with
//! `--loss mse`, the mean squared error).
//!
//! Every round uses secure aggregation unless `--secagg off` (for comparison; it says so loudly). The building
//! blocks ([`LocalFederation`]) are also what the whole-system tests use. Nothing here listens on anything but
//! 127.0.0.1.

use crate::demo_data::{SplitSpec, open_for_federation};
use crate::slow_learner::SlowLearner;
use anyhow::{Context, bail};
use fedge_agent::client::{Agent, AgentEvent, ClientSettings};
use fedge_agent::learner::Learner;
use fedge_agent::state::ModelState;
use fedge_agent::trainer::TractLearner;
use fedge_server::config::{ModelSource, ServerConfig, TlsFiles};
use fedge_server::coordinator::{
    AggregationMode, CoordinatorConfig, OptimizerKind, RunPrivacy, SecAggConfig, SecurePlan, TrainHyper,
};
use fedge_server::evaluator::{Evaluator, TractEvaluator};
use fedge_server::service::{self, RelayHook, ServerEvent, ServerHandle};
use fedge_server::strategy::StrategyConfig;
use fedge_shared::data::{self, Dataset, SourceSpec, Task};
use fedge_shared::tls::{self, Identity, Role};
use fedge_shared::train::{Loss, TrainableModel};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// `fedgectl demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Number of agents.
    #[arg(long, default_value_t = 10)]
    pub agents: usize,
    /// Rounds to run.
    #[arg(long, default_value_t = 10)]
    pub rounds: u64,
    /// The model: an ONNX file (with --data DIR), or an example model for MNIST: `mlp` (the 2NN, 784-200-200-10)
    /// or `cnn` (McMahan et al. 2017).
    #[arg(long, default_value = "mlp")]
    pub model: ModelChoice,
    /// The loss: cross_entropy (classification into the model's outputs) or mse (regression on the CSV target
    /// column or the NumPy float32 y).
    #[arg(long, default_value = "cross_entropy")]
    pub loss: Loss,
    /// The data format (csv, npz, images, idx); detected from the folder when not given.
    #[arg(long)]
    pub format: Option<data::Format>,
    /// CSV: the label (or target) column.
    #[arg(long)]
    pub label_column: Option<String>,
    /// CSV: the feature columns, comma-separated (default: every column but the label).
    #[arg(long, value_delimiter = ',')]
    pub feature_columns: Option<Vec<String>>,
    /// Image folders: per-channel means subtracted after scaling to [0, 1], comma-separated.
    #[arg(long, value_delimiter = ',', requires = "normalize_std")]
    pub normalize_mean: Option<Vec<f32>>,
    /// Image folders: per-channel standard deviations divided by, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "normalize_mean")]
    pub normalize_std: Option<Vec<f32>>,
    /// Text data (train.txt): characters per example (default 80).
    #[arg(long)]
    pub window: Option<usize>,
    /// Text data: characters between the starts of successive examples (default 1).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Seed of the data split, the model's initialisation and the cohort selection.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Dirichlet concentration of the non-IID label split (lower is more skewed).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// Local epochs per round.
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    #[arg(long, default_value_t = 32)]
    pub batch_size: u32,
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.5)]
    pub momentum: f32,
    /// Use at most this many training examples in all (0: all 60,000).
    #[arg(long, default_value_t = 0)]
    pub train_limit: usize,
    /// Evaluate on at most this many test examples (0: all 10,000).
    #[arg(long, default_value_t = 0)]
    pub test_limit: usize,
    /// The data folder (train.csv, train.npz, train/<class>/, or IDX files; see `fedge-agent train --help`).
    /// Default with an example model: MNIST in data/mnist in the repository.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// One JSON object per round and a last line {"final_accuracy": ...} ({"final_mse": ...} for regression).
    #[arg(long)]
    pub json: bool,
    /// How plain rounds' updates travel: int8 (a byte a coordinate, stochastically rounded) or f32 (exact).
    /// Secure rounds quantize on their own.
    #[arg(long, default_value = "int8")]
    pub upload: fedge_shared::delta_encoding::DeltaEncoding,
    /// How new versions reach agents that hold the previous one (the server's `download`): int8 (their 8-bit
    /// difference, which the server commits exactly as the agents rebuild it) or f32 (whole and exact).
    #[arg(long, default_value = "int8")]
    pub download: fedge_shared::delta_encoding::DeltaEncoding,
    /// Secure aggregation (SecAgg+). `off` runs plain rounds, for comparison only.
    #[arg(long, value_enum, default_value_t = Toggle::On)]
    pub secagg: Toggle,
    /// Quantization bits of secure rounds (the server's `secagg.quant_bits`); by default the server's rule: as many
    /// as let the cohort's sum fit 15-bit masked words, at least 11 (then wider words).
    #[arg(long)]
    pub secagg_quant_bits: Option<u32>,
    /// Distributed differential privacy: the noise multiplier z (each round's sum carries the noise of the
    /// Gaussian mechanism with standard deviation z times the L2 sensitivity). Off when not given.
    #[arg(long)]
    pub dp_noise: Option<f64>,
    /// Differential privacy: the L2 norm each agent's update is clipped to.
    #[arg(long, default_value_t = 1.0, requires = "dp_noise")]
    pub dp_clip: f64,
    /// Differential privacy: the ε budget of the whole run; the run stops before a round that would pass it.
    #[arg(long, default_value_t = 8.0, requires = "dp_noise")]
    pub dp_epsilon: f64,
    /// Differential privacy: the δ of the guarantee.
    #[arg(long, default_value_t = 1e-5, requires = "dp_noise")]
    pub dp_delta: f64,
    /// Buffered asynchronous aggregation (FedBuff) with buffers of K updates: a round completes with the first K,
    /// slower agents' updates count in a later round, discounted by their staleness. With secure aggregation on, each
    /// buffer's K ready agents mask their held deltas in a SecAgg+ group of their own.
    #[arg(long, value_name = "K")]
    pub buffered: Option<usize>,
    /// With --buffered: an agent training from a version more than this many commits old is told to stop.
    #[arg(long, default_value_t = 50, requires = "buffered")]
    pub max_staleness: u64,
    /// Make this many agents (the last ones) slower devices: each takes --slowdown times as long to train.
    #[arg(long, default_value_t = 0)]
    pub slow_agents: usize,
    /// How many times slower the --slow-agents are.
    #[arg(long, default_value_t = 10.0)]
    pub slowdown: f64,
    /// Stop as soon as a round's test accuracy reaches this (a fraction, e.g. 0.95), and say how long it took.
    #[arg(long)]
    pub target_accuracy: Option<f32>,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoModel {
    Mlp,
    Cnn,
}

/// `--model`: an example model or an ONNX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelChoice {
    Example(DemoModel),
    File(PathBuf),
}

impl std::str::FromStr for ModelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "mlp" => ModelChoice::Example(DemoModel::Mlp),
            "cnn" => ModelChoice::Example(DemoModel::Cnn),
            path => ModelChoice::File(PathBuf::from(path)),
        })
    }
}

/// Finds the MNIST folder: `explicit` if given, else `data/mnist` in the working directory or any folder above it
/// (a checkout's top, from anywhere inside it), else beside the executable or any folder above it (an unpacked
/// release). It never looks at where the binary was compiled: a build tree may be gone or belong to another clone.
pub fn find_mnist(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        roots.push(exe_dir);
    }
    mnist_under(&roots)
}

/// The first `data/mnist` holding MNIST's labels in one of `roots` or the folders above it, in order.
fn mnist_under(roots: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = roots.iter().flat_map(|r| r.ancestors().map(|a| a.join("data/mnist"))).collect();
    candidates
        .iter()
        .find(|c| c.join("train-labels-idx1-ubyte.gz").exists() || c.join("train-labels-idx1-ubyte").exists())
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no MNIST folder found (looked for data/mnist in the working directory, beside the executable and \
                 in the folders above them); pass --data DIR"
            )
        })
}

/// A server and agents on loopback, with their certificates in a temporary directory.
pub struct LocalFederation {
    pub dir: tempfile::TempDir,
    pub server: ServerHandle,
    pub agents: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub agent_events: mpsc::UnboundedReceiver<(usize, AgentEvent)>,
    shutdown: watch::Sender<bool>,
}

/// Settings of a [`LocalFederation`].
pub struct FederationSpec {
    pub onnx: Vec<u8>,
    pub coordinator: CoordinatorConfig,
    pub rounds: Option<u64>,
    pub evaluator: Option<Arc<dyn Evaluator>>,
}

/// Less common settings of a [`LocalFederation`].
#[derive(Default)]
pub struct FederationOptions {
    /// Secure aggregation (on by default).
    pub secagg: SecAggConfig,
    /// Rewrites messages to agents (tests of a dishonest server).
    pub relay_hook: Option<RelayHook>,
    /// Distributed differential privacy (`[privacy]`); off when `None`.
    pub privacy: Option<fedge_shared::privacy::PrivacySettings>,
    /// Each agent's own privacy budget (agent.toml's `[privacy]`); none when `None`.
    pub agent_privacy: Option<fedge_agent::privacy_budget::AgentPrivacy>,
    /// Each agent's floor for secure rounds (agent.toml's `[secagg]`); nothing by default.
    pub agent_floor: fedge_shared::secagg::RoundFloor,
    /// Buffered asynchronous aggregation (`[buffered]`; with `secagg` on, each buffer's ready agents mask their held
    /// deltas in a group of their own); synchronous rounds when `None`.
    pub buffered: Option<fedge_server::coordinator::BufferedConfig>,
    /// How new versions reach agents (server.toml's `download`): 8-bit differences by default.
    pub download: fedge_shared::delta_encoding::DeltaEncoding,
}

impl LocalFederation {
    /// Creates the PKI, starts the server (secure aggregation on), and starts one agent per learner.
    pub async fn start(spec: FederationSpec, learners: Vec<Box<dyn Learner>>) -> anyhow::Result<LocalFederation> {
        Self::start_with(spec, learners, FederationOptions::default()).await
    }

    /// [`LocalFederation::start`] with [`FederationOptions`].
    pub async fn start_with(
        spec: FederationSpec,
        learners: Vec<Box<dyn Learner>>,
        options: FederationOptions,
    ) -> anyhow::Result<LocalFederation> {
        let dir = tempfile::tempdir()?;
        let pki = dir.path().join("pki");
        tls::init_federation(&pki, &["localhost".into(), "127.0.0.1".into()], 30)?;
        let model = dir.path().join("model.onnx");
        std::fs::write(&model, &spec.onnx)?;
        let secure = options.secagg.enabled;
        let config = ServerConfig {
            role: Default::default(),
            aggregator: None,
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.path().join("db"),
            keep_weights: fedge_server::config::DEFAULT_KEEP_WEIGHTS,
            min_free_disk_mb: None,
            tls: TlsFiles {
                ca: pki.join(tls::files::CA_CERT),
                cert: pki.join(tls::files::SERVER_CERT),
                key: pki.join(tls::files::SERVER_KEY),
                revoked: Some(pki.join("revoked.txt")),
            },
            model: ModelSource { onnx: model },
            evaluation: None,
            coordinator: spec.coordinator,
            rounds: spec.rounds,
            autostart: true,
            idle_timeout_ms: 30_000,
            max_concurrent_uploads: 4,
            upload_memory_mb: 16,
            udp_send_batch: 3,
            max_concurrent_downloads: None,
            secagg: options.secagg,
            metrics: None,
            privacy: options.privacy,
            buffered: options.buffered,
            download: options.download,
        };
        config.validate()?;
        let server = service::start_with_hook(config, spec.evaluator, options.relay_hook).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (etx, agent_events) = mpsc::unbounded_channel();
        let mut agents = vec![];
        for (i, learner) in learners.into_iter().enumerate() {
            let name = format!("agent-{i:03}");
            let bundle = tls::issue_bundle(&pki, &name, Role::Agent, 30)?;
            let mut settings = agent_settings(&bundle, server.local_addr)?;
            // The agents take part in plain rounds only when this federation's server runs them.
            settings.require_secure_aggregation = secure;
            settings.privacy = options.agent_privacy;
            settings.floor = options.agent_floor;
            let (tx, mut rx) = mpsc::unbounded_channel();
            let etx = etx.clone();
            tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    if etx.send((i, e)).is_err() {
                        break;
                    }
                }
            });
            let agent = Agent::new(settings, ModelState::in_memory(), learner).with_events(tx);
            agents.push(tokio::spawn(agent.run(shutdown_rx.clone())));
        }
        Ok(LocalFederation { dir, server, agents, agent_events, shutdown })
    }

    /// The PKI directory (for issuing more certificates in tests).
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// Stops the agents and the server.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        for a in self.agents {
            let _ = tokio::time::timeout(Duration::from_secs(10), a).await;
        }
        self.server.shutdown().await
    }
}

/// Client settings for an agent bundle and a server address on loopback. The agent requires secure aggregation,
/// as agent.toml's default does: set `require_secure_aggregation = false` to take part in plain rounds.
pub fn agent_settings(bundle: &Path, server: std::net::SocketAddr) -> anyhow::Result<ClientSettings> {
    Ok(ClientSettings {
        servers: vec![server],
        server_name: "localhost".into(),
        ca: tls::load_certs(&bundle.join(tls::files::CA_CERT))?,
        identity: Identity::load_bundle(bundle)?,
        idle_timeout: Duration::from_secs(30),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(5),
        require_secure_aggregation: true,
        privacy: None,
        floor: Default::default(),
    })
}

/// Splits a training set over `n` agents (Dirichlet over labels), each with a 10% held-out split.
pub fn split_for_agents(train: &Dataset, n: usize, alpha: f64, seed: u64) -> anyhow::Result<Vec<(Dataset, Dataset)>> {
    let parts = data::dirichlet_partition(&train.labels, train.num_classes, n, alpha, seed)?;
    parts
        .iter()
        .enumerate()
        .map(|(i, idx)| {
            let d = train.subset(idx)?;
            if d.len() < 10 {
                return Ok((d.clone(), d.take(0)));
            }
            Ok(d.split_holdout(0.1, seed.wrapping_add(i as u64))?)
        })
        .collect()
}

/// Runs `fedgectl demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.agents == 0 || args.rounds == 0 {
        bail!("--agents and --rounds must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let onnx = match &args.model {
        ModelChoice::Example(DemoModel::Mlp) => fedge_shared::train::builder::mnist_2nn(args.seed),
        ModelChoice::Example(DemoModel::Cnn) => fedge_shared::train::builder::mnist_cnn(args.seed),
        ModelChoice::File(p) => std::fs::read(p).with_context(|| format!("reading the model {}", p.display()))?,
    };
    let model = TrainableModel::from_onnx_bytes(&onnx).context("loading the model")?;
    let dir = match (&args.model, &args.data) {
        (_, Some(d)) => d.clone(),
        (ModelChoice::Example(_), None) => find_mnist(None)?,
        (ModelChoice::File(p), None) => bail!("--model {} needs --data DIR (the data to train it on)", p.display()),
    };
    let source = SourceSpec {
        format: args.format,
        path: dir.clone(),
        label_column: args.label_column.clone(),
        feature_columns: args.feature_columns.clone(),
        normalize: match (&args.normalize_mean, &args.normalize_std) {
            (Some(mean), Some(std)) => Some(data::ChannelNorm { mean: mean.clone(), std: std.clone() }),
            _ => None,
        },
        window: args.window,
        stride: args.stride,
    };
    let split = SplitSpec {
        agents: args.agents,
        alpha: args.alpha,
        seed: args.seed,
        train_limit: args.train_limit,
        test_limit: args.test_limit,
    };
    let fed_data = tokio::task::spawn_blocking({
        let (model, loss) = (model.clone(), args.loss);
        move || open_for_federation(&source, &model, loss, &split)
    })
    .await??;
    let regression = matches!(fed_data.task, Task::Regression { .. });
    let test = fed_data.test.clone();
    let learners: Vec<Box<dyn Learner>> = fed_data
        .shards
        .into_iter()
        .enumerate()
        .map(|(i, (tr, ho))| {
            let holdout = ho.map(|h| Arc::new(h) as data::SharedExamples);
            let learner = TractLearner::from_sources(Arc::new(tr), holdout, args.seed ^ (i as u64 + 1));
            if i + args.slow_agents >= args.agents {
                Box::new(SlowLearner::new(Box::new(learner), args.slowdown)) as Box<dyn Learner>
            } else {
                Box::new(learner) as Box<dyn Learner>
            }
        })
        .collect();
    let coordinator = CoordinatorConfig {
        // A buffer of K completes with K updates at the latest at its deadline.
        min_agents: args.agents.div_ceil(2).min(args.buffered.unwrap_or(usize::MAX)).max(1),
        min_available: Some(args.agents),
        max_agents: args.agents,
        fraction: 1.0,
        overselect: 1.0,
        seed: args.seed,
        round_timeout_ms: 600_000,
        retry_backoff_ms: 1_000,
        max_examples: None,
        hyper: TrainHyper {
            epochs: args.epochs,
            batch_size: args.batch_size,
            learning_rate: args.lr,
            momentum: args.momentum,
            optimizer: OptimizerKind::Sgd,
            weight_decay: 0.0,
            prox_mu: 0.0,
            seed: args.seed,
            deadline_ms: 0,
            loss: args.loss,
            trainable: Vec::new(),
            upload: args.upload,
        },
        strategy: StrategyConfig::FedAvg,
    };
    let evaluator: Arc<dyn Evaluator> = Arc::new(TractEvaluator::new(test, 500));
    let privacy = args.dp_noise.map(|z| fedge_shared::privacy::PrivacySettings {
        noise_multiplier: z,
        clip_norm: args.dp_clip,
        delta: args.dp_delta,
        target_epsilon: args.dp_epsilon,
    });
    // With a privacy budget, the run has as many rounds as the budget allows (every started round is charged).
    let rounds = match privacy {
        Some(settings) => {
            if args.secagg == Toggle::Off {
                bail!("--dp-noise needs secure aggregation (--secagg on): the server would see every agent's noise");
            }
            let affordable = affordable_rounds(settings, &coordinator, model.num_params(), args.rounds)?;
            if affordable < args.rounds {
                eprintln!(
                    "the privacy budget (ε = {} at δ = {}) allows {affordable} of the {} rounds asked for",
                    settings.target_epsilon, settings.delta, args.rounds
                );
            }
            affordable
        }
        None => args.rounds,
    };
    let spec = FederationSpec { onnx, coordinator, rounds: Some(rounds), evaluator: Some(evaluator) };
    let secagg = match args.secagg {
        Toggle::On => SecAggConfig { quant_bits: args.secagg_quant_bits, ..SecAggConfig::default() },
        Toggle::Off => {
            eprintln!(
                "WARNING: secure aggregation is OFF (--secagg off): every agent's update reaches the server in the \
                 clear, and the demo's agents accept plain rounds (require_secure_aggregation = false). Use this only \
                 to measure what secure aggregation costs."
            );
            SecAggConfig::off()
        }
    };
    let buffered = args.buffered.map(|k| fedge_server::coordinator::BufferedConfig {
        max_staleness: args.max_staleness,
        ..fedge_server::coordinator::BufferedConfig::new(k)
    });
    let options = FederationOptions { secagg, privacy, buffered, download: args.download, ..Default::default() };
    let mut fed = LocalFederation::start_with(spec, learners, options).await?;
    let mut events = fed.server.events();
    let show = !args.json;
    if show {
        let task = match fed_data.task {
            Task::Classification { classes } => {
                format!("{classes} classes, non-IID split (Dirichlet alpha {})", args.alpha)
            }
            Task::Regression { outputs } => format!("regression on {outputs} targets (mse), IID split"),
        };
        eprintln!(
            "fedge demo: {} agents, {} rounds, model {}, {} {} training examples from {}, {task}, secure aggregation {}",
            args.agents,
            args.rounds,
            match &args.model {
                ModelChoice::Example(m) => format!("{m:?}"),
                ModelChoice::File(p) => p.display().to_string(),
            },
            fed_data.format,
            fed_data.train_examples,
            dir.display(),
            if args.secagg == Toggle::On { "on" } else { "OFF" }
        );
    }
    let bar = if show {
        let b = indicatif::ProgressBar::new(args.rounds);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} round {pos}/{len} [{bar:30}] {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        Some(b)
    } else {
        None
    };
    let mut done = 0u64;
    let mut aborted = 0u64;
    let mut last_metric = None;
    // The agents' accuracies on their own held-out part after local training, this round (examples, accuracy).
    let mut local: Vec<(u64, f32)> = vec![];
    let mut round_started = Instant::now();
    // With --target-accuracy: the round that reached it and the seconds since the start.
    let mut reached: Option<(u64, f64)> = None;
    // Aborted rounds are charged to a privacy budget too: a private run ends when its started rounds reach it.
    while done < rounds && !(privacy.is_some() && done + aborted >= rounds) {
        let ev = tokio::select! {
            e = events.recv() => e,
            Some((i, e)) = fed.agent_events.recv() => {
                match e {
                    AgentEvent::Refused { reason } => bail!("agent {i} was refused: {reason}"),
                    AgentEvent::Trained { examples, holdout_accuracy: Some(a), .. } => local.push((examples, a)),
                    _ => {}
                }
                continue;
            }
        };
        let ev = match ev {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(e) => bail!("server stopped: {e}"),
        };
        match ev {
            ServerEvent::RoundStarted { round, selected, .. } => {
                round_started = Instant::now();
                local.clear();
                if let Some(b) = &bar {
                    b.set_message(format!("round {round}: training on {selected} agents"));
                }
            }
            ServerEvent::RoundCompleted(r) => {
                done += 1;
                let secs = round_started.elapsed().as_secs_f64();
                last_metric = if regression { r.metrics.test_loss } else { r.metrics.test_accuracy };
                let weight: u64 = local.iter().map(|(n, _)| n).sum();
                let local_accuracy = (weight > 0)
                    .then(|| local.iter().map(|(n, a)| *n as f64 * f64::from(*a)).sum::<f64>() / weight as f64);
                let secure = r.plan.aggregation.is_secure();
                let phases = r.metrics.secagg.as_ref().map(|m| {
                    serde_json::json!({
                        "advertise_ms": m.advertise_ms,
                        "share_ms": m.share_ms,
                        "masked_input_ms": m.masked_ms,
                        "unmask_ms": m.unmask_ms,
                        "key_exchange_and_unmask_ms": m.advertise_ms + m.share_ms + m.unmask_ms,
                        "survivors": m.survivors,
                        "dropped_after_sharing": m.dropped_after_sharing,
                    })
                });
                let mut line = serde_json::json!({
                    "round": r.round,
                    "participants": r.reported.len(),
                    "dropped": r.dropped.len(),
                    "mean_train_loss": r.metrics.mean_train_loss,
                    "round_s": (secs * 1000.0).round() / 1000.0,
                    "model_version": r.new_version,
                    "secagg": secure,
                    "secagg_phases": phases,
                    "elapsed_s": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
                });
                // The federation's own evaluation (every agent's held-out part) of the model this round started from.
                let fed = r.metrics.federated_eval.as_ref();
                let fed_loss = fed.and_then(|f| f.counts.mean_loss());
                let fed_accuracy = fed.and_then(|f| f.counts.accuracy()).filter(|_| !regression);
                if let AggregationMode::Secure(SecurePlan { privacy: Some(p), .. }) = &r.plan.aggregation {
                    line["epsilon"] = serde_json::json!(p.epsilon);
                    line["delta"] = serde_json::json!(p.delta);
                }
                line["evaluated_version"] = serde_json::json!(r.plan.model_version);
                line["federated_examples"] = serde_json::json!(fed.map_or(0, |f| f.counts.examples));
                if regression {
                    line["test_mse"] = serde_json::json!(r.metrics.test_loss);
                    line["federated_mse"] = serde_json::json!(fed_loss);
                } else {
                    line["federated_accuracy"] = serde_json::json!(fed_accuracy);
                    line["federated_loss"] = serde_json::json!(fed_loss);
                    line["test_accuracy"] = serde_json::json!(r.metrics.test_accuracy);
                    line["test_loss"] = serde_json::json!(r.metrics.test_loss);
                    line["local_holdout_accuracy"] = serde_json::json!(local_accuracy);
                }
                if args.json {
                    println!("{line}");
                } else if let Some(b) = &bar {
                    // suspend() prints whether or not the bar is drawn (it is not when stderr is no terminal).
                    b.suspend(|| {
                        let metric = if regression {
                            format!(
                                "test mse {:.5}  federated mse {:.5} (v{})",
                                r.metrics.test_loss.unwrap_or(f32::NAN),
                                fed_loss.unwrap_or(f64::NAN),
                                r.plan.model_version
                            )
                        } else {
                            format!(
                                "test accuracy {:>6.2}%  federated {:>6.2}% (v{})  (agents' local held-out after \
                                 training {:>6.2}%)",
                                r.metrics.test_accuracy.unwrap_or(f32::NAN) * 100.0,
                                fed_accuracy.unwrap_or(f64::NAN) * 100.0,
                                r.plan.model_version,
                                local_accuracy.unwrap_or(f64::NAN) * 100.0
                            )
                        };
                        println!(
                            "round {:>3}  agents {:>3}  train loss {:.4}  {metric}  {:.2}s",
                            r.round,
                            r.reported.len(),
                            r.metrics.mean_train_loss.unwrap_or(f32::NAN),
                            secs
                        );
                        if let Some(m) = &r.metrics.secagg {
                            println!(
                                "          secure aggregation: keys {} ms, shares {} ms, masked input {} ms (includes \
                                 training), unmask {} ms",
                                m.advertise_ms, m.share_ms, m.masked_ms, m.unmask_ms
                            );
                        }
                    });
                    b.inc(1);
                }
                if let (Some(target), Some(accuracy)) = (args.target_accuracy, r.metrics.test_accuracy)
                    && accuracy >= target
                {
                    reached = Some((r.round, started.elapsed().as_secs_f64()));
                    break;
                }
            }
            ServerEvent::RoundAborted(r) => {
                aborted += 1;
                if let Some(b) = &bar {
                    b.suspend(|| println!("round {:>3}  aborted: {:?}", r.round, r.outcome));
                }
                if aborted > args.rounds + 3 {
                    bail!("too many aborted rounds");
                }
            }
            _ => {}
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    fed.stop().await?;
    let last = last_metric.unwrap_or(f32::NAN);
    let wall_s = started.elapsed().as_secs_f64();
    if let Some(target) = args.target_accuracy {
        match (reached, args.json) {
            (Some((round, s)), true) => {
                println!(
                    "{}",
                    serde_json::json!({ "target_accuracy": target, "reached_in_round": round, "reached_s": s })
                )
            }
            (Some((round, s)), false) => {
                println!("test accuracy reached {:.2}% in round {round}, {s:.1}s after the start", target * 100.0)
            }
            (None, true) => println!("{}", serde_json::json!({ "target_accuracy": target, "reached_s": null })),
            (None, false) => println!("test accuracy never reached {:.2}% in {done} rounds", target * 100.0),
        }
    }
    match (args.json, regression) {
        (true, false) => println!("{}", serde_json::json!({ "final_accuracy": last, "wall_s": wall_s })),
        (true, true) => println!("{}", serde_json::json!({ "final_mse": last, "wall_s": wall_s })),
        (false, false) => {
            println!("final test accuracy {:.2}% after {done} rounds in {wall_s:.1}s", last * 100.0)
        }
        (false, true) => println!("final test mse {last:.5} after {done} rounds in {wall_s:.1}s"),
    }
    Ok(())
}

/// How many rounds (at most `wanted`) a run with `settings` can start before its budget is spent, counted the way
/// the server counts them for this cohort and model.
fn affordable_rounds(
    settings: fedge_shared::privacy::PrivacySettings,
    coordinator: &CoordinatorConfig,
    params: usize,
    wanted: u64,
) -> anyhow::Result<u64> {
    let cohort = coordinator.max_agents;
    let mut run = RunPrivacy::new(settings, coordinator.min_agents, []).map_err(anyhow::Error::msg)?;
    let mut p = SecAggConfig::default().params_for(cohort);
    let ddg = run.configure(&mut p, cohort, params).map_err(anyhow::Error::msg)?;
    let mut rounds = 0;
    while rounds < wanted {
        let Ok(cost) = run.admit(ddg) else { break };
        run.charge(&cost).map_err(anyhow::Error::msg)?;
        rounds += 1;
    }
    if rounds == 0 {
        bail!(
            "the privacy budget (ε = {} at δ = {}) does not allow a single round with noise multiplier {}",
            settings.target_epsilon,
            settings.delta,
            settings.noise_multiplier
        );
    }
    Ok(rounds)
}

#[cfg(test)]
mod mnist_search {
    use super::*;

    #[test]
    fn mnist_is_found_in_a_folder_above_the_working_directory_and_not_where_the_binary_was_built() {
        let top = tempfile::tempdir().unwrap();
        let mnist = top.path().join("data/mnist");
        std::fs::create_dir_all(&mnist).unwrap();
        let deep = top.path().join("server/tests");
        std::fs::create_dir_all(&deep).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        // No labels yet: not found, and the error says how to name the folder.
        let err = mnist_under(&[deep.clone(), elsewhere.path().to_path_buf()]).unwrap_err();
        assert!(err.to_string().contains("--data DIR"), "{err}");
        std::fs::write(mnist.join("train-labels-idx1-ubyte.gz"), b"").unwrap();
        assert_eq!(mnist_under(&[elsewhere.path().to_path_buf(), deep]).unwrap(), mnist);
    }
}
