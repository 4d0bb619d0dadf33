//! Shared pieces of the whole-system tests: data subsets, small models, waiting for events, finding binaries.
//!
//! Test support only: nothing here is part of a fedge deployment.

pub mod promql;

use anyhow::{Context, bail};
use fedge_agent::client::AgentEvent;
use fedge_server::service::ServerEvent;
use fedge_shared::data::{self, Dataset, Split};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The first `train` training and `test` test examples of MNIST.
pub fn mnist_subset(train: usize, test: usize) -> anyhow::Result<(Dataset, Dataset)> {
    let dir = fedge_ctl::demo::find_mnist(None)?;
    Ok((data::load_mnist_dir(&dir, Split::Train)?.take(train), data::load_mnist_dir(&dir, Split::Test)?.take(test)))
}

/// A small MNIST-style folder (both splits) of `n` synthetic 28x28 examples, varied by `seed`: for tests about
/// files and the protocol, not about learning.
pub fn tiny_mnist(dir: &std::path::Path, n: usize, seed: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for p in ["train", "t10k"] {
        let images: Vec<u8> = (0..n * 784).map(|i| ((i + seed * 13) % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| ((i + seed) % 10) as u8).collect();
        std::fs::write(dir.join(format!("{p}-images-idx3-ubyte")), data::idx::encode_idx(&[n, 28, 28], &images))?;
        std::fs::write(dir.join(format!("{p}-labels-idx1-ubyte")), data::idx::encode_idx(&[n], &labels))?;
    }
    Ok(())
}

/// Waits for the next server event matching `pick`, for at most `limit`.
pub async fn wait_server<T>(
    events: &mut broadcast::Receiver<ServerEvent>,
    limit: Duration,
    mut pick: impl FnMut(&ServerEvent) -> Option<T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(&e) {
                        return Ok(t);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => bail!("server events ended: {e}"),
            }
        }
    })
    .await
    .context("timed out waiting for a server event")?
}

/// Waits for the next agent event matching `pick`, for at most `limit`.
pub async fn wait_agent<T>(
    events: &mut mpsc::UnboundedReceiver<(usize, AgentEvent)>,
    limit: Duration,
    mut pick: impl FnMut(usize, &AgentEvent) -> Option<T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, async {
        loop {
            match events.recv().await {
                Some((i, e)) => {
                    if let Some(t) = pick(i, &e) {
                        return Ok(t);
                    }
                }
                None => bail!("agent events ended"),
            }
        }
    })
    .await
    .context("timed out waiting for an agent event")?
}

/// Waits until `count` distinct agents have refused a secure round (within `limit` for each), and returns each
/// one's index and reason.
pub async fn wait_refusals(
    events: &mut mpsc::UnboundedReceiver<(usize, AgentEvent)>,
    count: usize,
    limit: Duration,
) -> anyhow::Result<std::collections::BTreeMap<usize, String>> {
    let mut refused = std::collections::BTreeMap::new();
    while refused.len() < count {
        let (i, reason) = wait_agent(events, limit, |i, e| match e {
            AgentEvent::SecureRoundRefused { reason, .. } => Some((i, reason.clone())),
            _ => None,
        })
        .await?;
        refused.insert(i, reason);
    }
    Ok(refused)
}

/// A binary of the workspace, built by `cargo test --workspace` next to the test executables.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(|d| d.parent()).context("test executable has no target directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} not found: run the tests with `cargo test --workspace` so that it is built", path.display());
    }
    Ok(path)
}

/// A free UDP port on 127.0.0.1 (for a server process that must come back on the same address after a kill).
pub fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes `dir/server.toml` for a `fedge-server` process whose PKI is `dir/pki` and model `dir/model.onnx`:
/// `agents` agents per round, a quick retry back-off, and plain SGD hyper-parameters.
pub fn write_server_config(
    dir: &std::path::Path,
    listen: &str,
    db: &std::path::Path,
    agents: usize,
    retry_backoff_ms: u64,
) -> anyhow::Result<PathBuf> {
    let pki = dir.join("pki");
    let text = format!(
        r#"
listen = "{listen}"
data_dir = "{db}"
autostart = true
idle_timeout_ms = 10000

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/server.pem"
key = "{pki}/server.key"

[model]
onnx = "{model}"

[coordinator]
min_agents = {agents}
max_agents = {agents}
fraction = 1.0
overselect = 1.0
round_timeout_ms = 20000
retry_backoff_ms = {retry_backoff_ms}

[coordinator.hyper]
epochs = 1
batch_size = 8
learning_rate = 0.1
optimizer = "sgd"
"#,
        db = db.display(),
        pki = pki.display(),
        model = dir.join("model.onnx").display(),
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts the `fedge-server` binary on `config`, its log appended to `log`.
pub fn start_server(config: &std::path::Path, log: &std::path::Path) -> anyhow::Result<std::process::Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Ok(std::process::Command::new(workspace_bin("fedge-server")?)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// Waits (up to a minute) until some agent receives a global version newer than `above`; returns it.
pub async fn wait_version(
    events: &mut mpsc::UnboundedReceiver<(usize, AgentEvent)>,
    above: u64,
) -> anyhow::Result<u64> {
    wait_agent(events, Duration::from_secs(60), |_, e| match e {
        AgentEvent::ModelReceived { version } if *version > above => Some(*version),
        _ => None,
    })
    .await
}

/// A coordinator that takes every one of `agents` agents into each round (FedAvg; local SGD at batch 32, lr 0.05,
/// momentum 0.5, the settings the MNIST tests train with; learners that do not train ignore them).
pub fn cohort_of(agents: usize) -> fedge_server::coordinator::CoordinatorConfig {
    use fedge_server::coordinator::{CoordinatorConfig, OptimizerKind, TrainHyper};
    CoordinatorConfig {
        min_agents: agents,
        min_available: Some(agents),
        max_agents: agents,
        fraction: 1.0,
        overselect: 1.0,
        seed: 7,
        round_timeout_ms: 300_000,
        retry_backoff_ms: 500,
        max_examples: None,
        hyper: TrainHyper {
            epochs: 1,
            batch_size: 32,
            learning_rate: 0.05,
            momentum: 0.5,
            optimizer: OptimizerKind::Sgd,
            weight_decay: 0.0,
            prox_mu: 0.0,
            seed: 3,
            deadline_ms: 0,
            loss: fedge_shared::train::Loss::SoftmaxCrossEntropy,
            trainable: Vec::new(),
            upload: fedge_shared::delta_encoding::DeltaEncoding::Int8,
        },
        strategy: fedge_server::strategy::StrategyConfig::FedAvg,
    }
}

/// Writes agent `i`'s certificate bundle (from `dir/pki`), a tiny synthetic MNIST folder and its `agent.toml` (for a
/// server on 127.0.0.1:`port`) under `dir/agent-i`; `extra` is added to the top level of the file (e.g. time-outs
/// and back-off). Returns the config's path.
pub fn write_agent_config(dir: &std::path::Path, i: usize, port: u16, extra: &str) -> anyhow::Result<PathBuf> {
    let name = format!("agent-{i}");
    let bundle = fedge_shared::tls::issue_bundle(&dir.join("pki"), &name, fedge_shared::tls::Role::Agent, 30)?;
    let home = dir.join(&name);
    tiny_mnist(&home.join("data"), 64, i)?;
    let text = format!(
        r#"
bundle = "{bundle}"
state_dir = "{state}"
seed = {i}
{extra}

[server]
address = "127.0.0.1:{port}"
name = "localhost"

[data]
mnist_dir = "{data}"
holdout = 0.0

[inference]
enabled = false
"#,
        bundle = bundle.display(),
        state = home.join("state").display(),
        data = home.join("data").display(),
    );
    let path = home.join("agent.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts `fedge-agent run --config <config>`, its log appended to `log`; with `crash_point`, the process aborts
/// there (see `edge-agent/src/crash.rs`).
pub fn start_agent(
    config: &std::path::Path,
    log: &std::path::Path,
    crash_point: Option<&str>,
) -> anyhow::Result<std::process::Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = std::process::Command::new(workspace_bin("fedge-agent")?);
    cmd.arg("run").arg("--config").arg(config).env("RUST_LOG", "info").stdout(std::process::Stdio::null()).stderr(log);
    match crash_point {
        Some(point) => cmd.env("FAILPOINTS", format!("{point}=return")),
        None => cmd.env_remove("FAILPOINTS"),
    };
    Ok(cmd.spawn()?)
}

/// A log file's text without terminal colour codes.
pub fn plain_log(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits (up to `secs`) until `check` holds for the text of `log`.
pub async fn wait_log(
    log: &std::path::Path,
    secs: u64,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            if check(&plain_log(log)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out after {secs} s waiting for {what}"))
}

/// Kills a child process (SIGKILL) and reaps it; one already gone is fine.
pub fn kill(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A noise learner that runs `before` ahead of each training: a delay (a slow device) or a gate the test opens (an
/// agent kept training), for tests of slow and stalled agents.
pub struct HeldLearner {
    pub inner: fedge_agent::learner::NoiseLearner,
    pub before: Box<dyn FnMut() + Send>,
}

impl HeldLearner {
    /// `inner`, taking `delay` longer to train.
    pub fn delayed(inner: fedge_agent::learner::NoiseLearner, delay: Duration) -> Self {
        HeldLearner { inner, before: Box::new(move || std::thread::sleep(delay)) }
    }
}

impl fedge_agent::learner::Learner for HeldLearner {
    fn examples(&self) -> u64 {
        self.inner.examples()
    }
    fn set_graph(&mut self, onnx: &[u8]) -> anyhow::Result<()> {
        self.inner.set_graph(onnx)
    }
    fn num_params(&self) -> Option<usize> {
        self.inner.num_params()
    }
    fn learn(
        &mut self,
        global: &[f32],
        plan: &fedge_shared::protocol::TrainPlan,
    ) -> anyhow::Result<fedge_agent::learner::LearnOutcome> {
        (self.before)();
        self.inner.learn(global, plan)
    }
}
