//! `fedgectl demo`: a whole federation on this machine: a CA and certificates in a temporary directory, a real
//! server on loopback QUIC with mutual TLS and a sled database, and N agents (tasks in this process, each with its
//! own certificate and QUIC connection) training with tract on a non-IID split of MNIST.
//!
//! Every round uses secure aggregation unless `--secagg off` (for comparison; it says so loudly). The building
//! blocks ([`LocalFederation`]) are also what the whole-system tests use. Nothing here listens on anything but
//! 127.0.0.1.

use crate::config::{ModelSource, ServerConfig, TlsFiles};
use crate::coordinator::{CoordinatorConfig, OptimizerKind, SecAggConfig, TrainHyper};
use crate::evaluator::{Evaluator, TractEvaluator};
use crate::service::{self, RelayHook, ServerEvent, ServerHandle};
use crate::strategy::StrategyConfig;
use anyhow::{Context, bail};
use fedge_agent::client::{Agent, AgentEvent, ClientSettings};
use fedge_agent::learner::Learner;
use fedge_agent::state::ModelState;
use fedge_agent::trainer::TractLearner;
use fedge_shared::data::{self, Dataset, Split};
use fedge_shared::tls::{self, Identity, Role};
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
    /// Example model: the 2NN MLP (784-200-200-10) or the CNN of McMahan et al. 2017.
    #[arg(long, value_enum, default_value_t = DemoModel::Mlp)]
    pub model: DemoModel,
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
    /// Folder with the MNIST IDX files (default: data/mnist in the repository).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// One JSON object per round and a last line {"final_accuracy": ...}.
    #[arg(long)]
    pub json: bool,
    /// Secure aggregation (SecAgg+). `off` runs plain rounds, for comparison only.
    #[arg(long, value_enum, default_value_t = Toggle::On)]
    pub secagg: Toggle,
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

/// Finds the MNIST folder.
pub fn find_mnist(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    // The working directory's data/mnist (a checkout's top), then the one beside the crate that was built.
    let candidates = [PathBuf::from("data/mnist"), Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist")];
    for c in &candidates {
        if c.join("train-labels-idx1-ubyte.gz").exists() || c.join("train-labels-idx1-ubyte").exists() {
            return Ok(c.clone());
        }
    }
    bail!("no MNIST folder found (looked in {candidates:?}); pass --data DIR")
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
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.path().join("db"),
            keep_weights: crate::config::DEFAULT_KEEP_WEIGHTS,
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
            max_concurrent_downloads: None,
            secagg: options.secagg,
            metrics: None,
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
        server,
        server_name: "localhost".into(),
        ca: tls::load_certs(&bundle.join(tls::files::CA_CERT))?,
        identity: Identity::load_bundle(bundle)?,
        idle_timeout: Duration::from_secs(30),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(5),
        require_secure_aggregation: true,
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
    let dir = find_mnist(args.data.as_deref())?;
    let (train, test) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || -> anyhow::Result<(Dataset, Dataset)> {
            Ok((data::load_mnist_dir(&dir, Split::Train)?, data::load_mnist_dir(&dir, Split::Test)?))
        }
    })
    .await?
    .with_context(|| format!("loading MNIST from {}", dir.display()))?;
    let train = if args.train_limit > 0 { train.take(args.train_limit) } else { train };
    let test = if args.test_limit > 0 { test.take(args.test_limit) } else { test };
    let onnx = match args.model {
        DemoModel::Mlp => fedge_shared::train::builder::mnist_2nn(args.seed),
        DemoModel::Cnn => fedge_shared::train::builder::mnist_cnn(args.seed),
    };
    let shards = split_for_agents(&train, args.agents, args.alpha, args.seed)?;
    let learners: Vec<Box<dyn Learner>> = shards
        .into_iter()
        .enumerate()
        .map(|(i, (tr, ho))| Box::new(TractLearner::new(tr, Some(ho), args.seed ^ (i as u64 + 1))) as Box<dyn Learner>)
        .collect();
    let coordinator = CoordinatorConfig {
        min_agents: args.agents.div_ceil(2),
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
        },
        strategy: StrategyConfig::FedAvg,
    };
    let evaluator: Arc<dyn Evaluator> = Arc::new(TractEvaluator { data: test, batch: 500 });
    let spec = FederationSpec { onnx, coordinator, rounds: Some(args.rounds), evaluator: Some(evaluator) };
    let secagg = match args.secagg {
        Toggle::On => SecAggConfig::default(),
        Toggle::Off => {
            eprintln!(
                "WARNING: secure aggregation is OFF (--secagg off): every agent's update reaches the server in the \
                 clear, and the demo's agents accept plain rounds (require_secure_aggregation = false). Use this only \
                 to measure what secure aggregation costs."
            );
            SecAggConfig::off()
        }
    };
    let mut fed = LocalFederation::start_with(spec, learners, FederationOptions { secagg, relay_hook: None }).await?;
    let mut events = fed.server.events();
    let show = !args.json;
    if show {
        eprintln!(
            "fedge demo: {} agents, {} rounds, model {:?}, MNIST {} train / test from {}, Dirichlet alpha {}, \
             secure aggregation {}",
            args.agents,
            args.rounds,
            args.model,
            train.len(),
            dir.display(),
            args.alpha,
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
    let mut last_accuracy = None;
    let mut round_started = Instant::now();
    while done < args.rounds {
        let ev = tokio::select! {
            e = events.recv() => e,
            Some((i, e)) = fed.agent_events.recv() => {
                if let AgentEvent::Refused { reason } = e {
                    bail!("agent {i} was refused: {reason}");
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
                if let Some(b) = &bar {
                    b.set_message(format!("round {round}: training on {selected} agents"));
                }
            }
            ServerEvent::RoundCompleted(r) => {
                done += 1;
                let secs = round_started.elapsed().as_secs_f64();
                last_accuracy = r.metrics.test_accuracy;
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
                let line = serde_json::json!({
                    "round": r.round,
                    "participants": r.reported.len(),
                    "dropped": r.dropped.len(),
                    "mean_train_loss": r.metrics.mean_train_loss,
                    "test_accuracy": r.metrics.test_accuracy,
                    "test_loss": r.metrics.test_loss,
                    "round_s": (secs * 1000.0).round() / 1000.0,
                    "model_version": r.new_version,
                    "secagg": secure,
                    "secagg_phases": phases,
                });
                if args.json {
                    println!("{line}");
                } else if let Some(b) = &bar {
                    // suspend() prints whether or not the bar is drawn (it is not when stderr is no terminal).
                    b.suspend(|| {
                        println!(
                            "round {:>3}  agents {:>3}  train loss {:.4}  test accuracy {:>6.2}%  {:.2}s",
                            r.round,
                            r.reported.len(),
                            r.metrics.mean_train_loss.unwrap_or(f32::NAN),
                            r.metrics.test_accuracy.unwrap_or(f32::NAN) * 100.0,
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
    let acc = last_accuracy.unwrap_or(f32::NAN);
    if args.json {
        println!("{}", serde_json::json!({ "final_accuracy": acc, "wall_s": started.elapsed().as_secs_f64() }));
    } else {
        println!(
            "final test accuracy {:.2}% after {} rounds in {:.1}s",
            acc * 100.0,
            args.rounds,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
