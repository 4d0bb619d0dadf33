//! Whole system, the aggregation tier: one root server, three aggregator processes (`fedge-server` with `role =
//! "aggregator"`), 300 agents (in this process, each with its own QUIC connection and every aggregator's address),
//! secure rounds at the aggregators, plain rounds of the aggregators' means at the root.
//!
//! One aggregator is killed with SIGKILL in the middle of the second round, while its agents are training: that round
//! completes at the root with the two other groups, the dead aggregator's agents move to the others, and the third
//! round includes all 300 agents. Every model the root commits is checked against the agents' known updates: the
//! example-weighted mean over exactly the agents each answering aggregator's round forwarded (read back from the
//! aggregators' own round records), within the secure rounds' quantization and the root's 8-bit download rounding.

use fedge_agent::agent_event::AgentEvent;
use fedge_agent::client::{Agent, ClientSettings};
use fedge_agent::learner::NoiseLearner;
use fedge_agent::state::ModelState;
use fedge_server::config::{ModelSource, ServerConfig, TlsFiles};
use fedge_server::coordinator::{AggregationMode, CoordinatorConfig, Outcome, SecAggConfig};
use fedge_server::service::{Operator, ServerEvent};
use fedge_server::store::Store;
use fedge_shared::tls::{self, Identity, Role};
use fedge_system_tests::{
    HeldLearner, cohort_of, free_udp_port, init_logs, kill, plain_log, start_server, wait_server,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

const AGENTS: usize = 300;
const AGGREGATORS: usize = 3;
const MIN_GROUP: usize = 10;
const SCALE: f32 = 0.05;

fn examples_of(i: usize) -> u64 {
    10 + (i as u64 * 7) % 41
}

/// Holds every training while closed: the test closes it before the round in which it kills an aggregator, so the
/// kill lands while that aggregator's agents are still training.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = closed;
        self.opened.notify_all();
    }
    fn pass(&self) {
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        // Never forever: a stuck test should fail on its own deadlines, not hang here.
        let _ = self.opened.wait_timeout_while(closed, Duration::from_secs(120), |c| *c);
    }
}

fn aggregator_config(dir: &Path, k: usize, port: u16, root: SocketAddr) -> anyhow::Result<std::path::PathBuf> {
    let pki = dir.join("pki");
    let bundle = tls::issue_bundle(&pki, &format!("aggregator-{k}"), Role::Agent, 30)?;
    let text = format!(
        r#"
role = "aggregator"
listen = "127.0.0.1:{port}"
data_dir = "{db}"
idle_timeout_ms = 10000

[aggregator]
root = "{root}"
root_name = "localhost"
bundle = "{bundle}"
min_group = {MIN_GROUP}

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/server.pem"
key = "{pki}/server.key"

[coordinator]
min_agents = {MIN_GROUP}
max_agents = {AGENTS}
fraction = 1.0
overselect = 1.0
round_timeout_ms = 60000
retry_backoff_ms = 200

[coordinator.hyper]
epochs = 1
batch_size = 8
learning_rate = 0.1
optimizer = "sgd"

[secagg]
phase_timeout_ms = 20000
quant_bits = 22
"#,
        db = dir.join(format!("aggregator-{k}")).join("db").display(),
        bundle = bundle.display(),
        pki = pki.display(),
    );
    let path = dir.join(format!("aggregator-{k}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The root: plain rounds over the aggregators (their means in f32), at least two of the three per round.
fn root_config(dir: &Path) -> ServerConfig {
    let pki = dir.join("pki");
    let mut coordinator: CoordinatorConfig = cohort_of(AGGREGATORS);
    coordinator.min_agents = 2;
    coordinator.min_available = Some(2);
    coordinator.round_timeout_ms = 120_000;
    coordinator.hyper.upload = fedge_shared::delta_encoding::DeltaEncoding::F32;
    ServerConfig {
        role: Default::default(),
        aggregator: None,
        listen: "127.0.0.1:0".parse().expect("an address"),
        data_dir: dir.join("root-db"),
        keep_weights: 0,
        min_free_disk_mb: None,
        tls: TlsFiles {
            ca: pki.join(tls::files::CA_CERT),
            cert: pki.join(tls::files::SERVER_CERT),
            key: pki.join(tls::files::SERVER_KEY),
            revoked: None,
        },
        model: ModelSource { onnx: dir.join("model.onnx") },
        evaluation: None,
        coordinator,
        rounds: None,
        autostart: false,
        idle_timeout_ms: 10_000,
        max_concurrent_uploads: 4,
        upload_memory_mb: 16,
        udp_send_batch: 3,
        max_concurrent_downloads: None,
        secagg: SecAggConfig::off(),
        metrics: None,
        privacy: None,
        buffered: None,
        download: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_and_three_aggregators_lose_one_mid_round_and_the_next_round_includes_every_agent() -> anyhow::Result<()>
{
    init_logs();
    let dir = tempfile::tempdir()?;
    let mut children = Vec::new();
    let result = tier(dir.path(), &mut children).await;
    for c in &mut children {
        kill(c);
    }
    if result.is_err() {
        for k in 0..AGGREGATORS {
            let log = plain_log(&dir.path().join(format!("aggregator-{k}.log")));
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- aggregator-{k} log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    result
}

async fn tier(dir: &Path, children: &mut Vec<std::process::Child>) -> anyhow::Result<()> {
    let pki = dir.join("pki");
    tls::init_federation(&pki, &["localhost".into()], 30)?;
    std::fs::write(dir.join("model.onnx"), fedge_shared::train::builder::mlp(&[16, 8, 4], 5))?;
    let root = fedge_server::service::start(root_config(dir), None).await?;
    let mut root_events = root.events();

    let ports: Vec<u16> = (0..AGGREGATORS).map(|_| free_udp_port()).collect::<Result<_, _>>()?;
    let addrs: Vec<SocketAddr> = ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect();
    for (k, port) in ports.iter().enumerate() {
        let config = aggregator_config(dir, k, *port, root.local_addr)?;
        children.push(start_server(&config, &dir.join(format!("aggregator-{k}.log")))?);
    }
    let mut joined = BTreeSet::new();
    wait_server(&mut root_events, Duration::from_secs(120), |e| match e {
        ServerEvent::AgentJoined { agent } => {
            joined.insert(agent.clone());
            (joined.len() == AGGREGATORS).then_some(())
        }
        _ => None,
    })
    .await?;

    // 300 agents, each listing the three aggregators (each starts at a random one).
    let gate = Arc::new(Gate::default());
    let (training_tx, mut training) = mpsc::unbounded_channel();
    let (etx, mut events) = mpsc::unbounded_channel::<(usize, AgentEvent)>();
    let (stop, stop_rx) = watch::channel(false);
    let ca = tls::load_certs(&pki.join(tls::files::CA_CERT))?;
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let bundle = tls::issue_bundle(&pki, &format!("agent-{i}"), Role::Agent, 30)?;
        let settings = ClientSettings {
            servers: addrs.clone(),
            server_name: "localhost".into(),
            ca: ca.clone(),
            identity: Identity::load_bundle(&bundle)?,
            idle_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            require_secure_aggregation: true,
            privacy: None,
            floor: Default::default(),
        };
        // Says when it starts training, then waits at the gate.
        let (gate, training) = (gate.clone(), training_tx.clone());
        let learner = HeldLearner {
            inner: NoiseLearner::new(examples_of(i), 1000 + i as u64, SCALE),
            before: Box::new(move || {
                let _ = training.send(i);
                gate.pass();
            }),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let etx = etx.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let _ = etx.send((i, e));
            }
        });
        let agent = Agent::new(settings, ModelState::in_memory(), Box::new(learner)).with_events(tx);
        agents.push(tokio::spawn(agent.run(stop_rx.clone())));
    }
    // Where each agent is connected now.
    let mut at: BTreeMap<usize, SocketAddr> = BTreeMap::new();
    let all_connected = |at: &BTreeMap<usize, SocketAddr>, alive: &[SocketAddr]| {
        at.len() == AGENTS && at.values().all(|a| alive.contains(a))
    };
    fedge_system_tests::wait_agent(&mut events, Duration::from_secs(180), |i, e| {
        if let AgentEvent::Connected { server } = e {
            at.insert(i, *server);
        }
        all_connected(&at, &addrs).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Round 1: all three aggregators.
    root.operator(Operator::StartRounds(Some(1))).await?;
    wait_completed(&mut root_events, 1).await?;

    // Round 2: training is held; the aggregator of the first agent to start training is killed.
    gate.set(true);
    while training.try_recv().is_ok() {}
    drain(&mut events, &mut at);
    root.operator(Operator::StartRounds(Some(1))).await?;
    let first = tokio::time::timeout(Duration::from_secs(120), training.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no agent trained"))?;
    drain(&mut events, &mut at);
    let victim = at[&first];
    let k = addrs.iter().position(|a| *a == victim).ok_or_else(|| anyhow::anyhow!("agent {first} at {victim}"))?;
    kill(&mut children[k]);
    let dead_group: BTreeSet<usize> = at.iter().filter(|(_, a)| **a == victim).map(|(i, _)| *i).collect();
    eprintln!("killed aggregator-{k} ({victim}) with {} agents, mid-round", dead_group.len());
    gate.set(false);
    let record = wait_completed(&mut root_events, 2).await?;
    let reporters: BTreeSet<&str> = record.reported.iter().map(|r| r.agent.as_str()).collect();
    assert_eq!(reporters.len(), 2, "round 2 completes with the two live aggregators: {reporters:?}");
    assert!(!reporters.contains(format!("aggregator-{k}").as_str()));

    // The dead aggregator's agents move to the others.
    let alive: Vec<SocketAddr> = addrs.iter().copied().filter(|a| *a != victim).collect();
    fedge_system_tests::wait_agent(&mut events, Duration::from_secs(120), |i, e| {
        if let AgentEvent::Connected { server } = e {
            at.insert(i, *server);
        }
        all_connected(&at, &alive).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Round 3: every agent, through the two live aggregators.
    root.operator(Operator::StartRounds(Some(1))).await?;
    wait_completed(&mut root_events, 3).await?;

    let _ = stop.send(true);
    for a in agents {
        let _ = a.await;
    }
    for c in children.iter_mut() {
        kill(c);
    }
    let root_store = root.store.clone();
    root.shutdown().await?;
    check_models(dir, &root_store, k)
}

/// Waits for the root's round `round` to complete (failing on an abort) and returns its record.
async fn wait_completed(
    events: &mut tokio::sync::broadcast::Receiver<ServerEvent>,
    round: u64,
) -> anyhow::Result<fedge_server::coordinator::RoundRecord> {
    wait_server(events, Duration::from_secs(240), |e| match e {
        ServerEvent::RoundCompleted(r) if r.round == round => Some(Ok((**r).clone())),
        ServerEvent::RoundAborted(r) if r.round == round => {
            Some(Err(anyhow::anyhow!("root round {round} aborted: {:?}", r.outcome)))
        }
        _ => None,
    })
    .await?
}

/// Takes the agents' connection changes seen so far.
fn drain(events: &mut mpsc::UnboundedReceiver<(usize, AgentEvent)>, at: &mut BTreeMap<usize, SocketAddr>) {
    while let Ok((i, e)) = events.try_recv() {
        if let AgentEvent::Connected { server } = e {
            at.insert(i, server);
        }
    }
}

/// Every committed version against the known updates of the agents behind the aggregators that answered.
fn check_models(dir: &Path, root: &Store, killed: usize) -> anyhow::Result<()> {
    // Each aggregator's forwarded rounds: the seed its agents trained with, and who is in the mean.
    let mut forwarded: BTreeMap<(String, u64), (Vec<usize>, u64)> = BTreeMap::new();
    let mut quantum = 0f64;
    for k in 0..AGGREGATORS {
        let store = Store::open(dir.join(format!("aggregator-{k}")).join("db"))?;
        for r in store.rounds()? {
            if r.outcome != Outcome::Completed {
                continue;
            }
            assert_eq!(r.new_version, None, "an aggregator committed a model of its own");
            let AggregationMode::Secure(plan) = &r.plan.aggregation else {
                anyhow::bail!("aggregator-{k} ran a round that was not secure");
            };
            quantum = quantum.max(fedge_shared::secagg::quant::quantum(&plan.params));
            let agents = r
                .reported
                .iter()
                .map(|rep| rep.agent.trim_start_matches("agent-").parse::<usize>())
                .collect::<Result<Vec<_>, _>>()?;
            assert!(agents.len() >= MIN_GROUP);
            let reasons: BTreeSet<&str> = r.dropped.iter().map(|d| d.reason.as_str()).collect();
            eprintln!(
                "aggregator-{k} round {}: {} selected, {} in the mean, {} dropped {reasons:?}",
                r.round,
                r.selected.len(),
                agents.len(),
                r.dropped.len()
            );
            let key = (format!("aggregator-{k}"), fedge_server::service::round_seed(&r.plan));
            forwarded.insert(key, (agents, plan.params.weight_cap));
        }
    }
    let mut checked = 0;
    for r in root.rounds()? {
        let Some(v) = r.new_version else { continue };
        let seed = fedge_server::service::round_seed(&r.plan);
        let before = root.weights(v - 1)?;
        let after = root.weights(v)?;
        // Each agent weighs min(examples, its aggregator's cap) in the mean.
        let mut included = BTreeMap::new();
        for rep in &r.reported {
            let (group, cap) = forwarded.get(&(rep.agent.clone(), seed)).ok_or_else(|| {
                anyhow::anyhow!("{} reported round {} but recorded no such round", rep.agent, r.round)
            })?;
            included.extend(group.iter().map(|i| (*i, *cap)));
        }
        if r.round == 2 {
            assert!(r.reported.iter().all(|rep| rep.agent != format!("aggregator-{killed}")));
        }
        if r.round == 3 {
            assert_eq!(included.len(), AGENTS, "round 3 includes every agent, the moved ones too");
        }
        let mut sum = vec![0f64; before.len()];
        let mut total = 0f64;
        for (&i, &cap) in &included {
            let w = examples_of(i).min(cap) as f64;
            total += w;
            for (s, d) in sum.iter_mut().zip(NoiseLearner::delta_for(1000 + i as u64, seed, before.len(), SCALE)) {
                *s += w * f64::from(d);
            }
        }
        // The root commits within half an 8-bit step of the strategy's result (its downloads are differences).
        let change = before.iter().zip(&after).fold(0f64, |m, (b, a)| m.max(f64::from((a - b).abs())));
        let tolerance = 2.0 * quantum + change / 254.0 * 1.01 + 1e-6;
        let err = before
            .iter()
            .zip(&after)
            .zip(&sum)
            .map(|((b, a), s)| (f64::from(*b) + s / total - f64::from(*a)).abs())
            .fold(0f64, f64::max);
        eprintln!("round {}: {} agents, max error {err:.2e} (allowed {tolerance:.2e})", r.round, included.len());
        assert!(err <= tolerance, "round {}: the committed model is off by {err} > {tolerance}", r.round);
        checked += 1;
    }
    assert_eq!(checked, 3, "three rounds committed at the root");
    Ok(())
}
