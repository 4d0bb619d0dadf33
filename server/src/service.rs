//! The server's core task: it owns the [`Coordinator`] and the [`Store`], feeds the coordinator events from the
//! connection tasks and the clock, and carries out the actions it returns (send a plan, push weights, commit a
//! round on a blocking thread, announce a version).
//!
//! It makes no decision of its own about rounds: that is the coordinator's. It never blocks the runtime: commits
//! and evaluations run on the blocking pool. Weights bytes for a version are encoded and hashed once and shared
//! (`Arc`) by every connection that sends them.
//!
//! Secure rounds: the core relays the coordinator's key broadcast with each owner's certificate (kept from its
//! connection), the shares and the unmask request, and feeds masked vectors to the coordinator, which folds each
//! into its running masked sum on arrival; an upload's memory permit is released only once it is folded.

use crate::clock::{Alarm, Clock, wall_ms};
use crate::config::ServerConfig;
use crate::coordinator::{
    Action, AgentId, AggregationMode, Coordinator, Event, Outcome, RoundPlan, RoundRecord, Status,
};
pub use crate::core_msg::{CommittedModel, CoreMsg, Operator, Outbound, RelayHook, ServerEvent};
use crate::evaluator::Evaluator;
use crate::net;
use crate::store::Store;
use anyhow::Context;
use fedge_shared::model::{Digest, weights_to_bytes};
use fedge_shared::protocol::{self, BlobHeader, BlobKind, ModelAnnounce, SecAggPlan, ServerMessage, TrainPlan};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

struct Conn {
    id: u64,
    tx: mpsc::Sender<Outbound>,
    graph_sent: bool,
    version_held: Option<u64>,
    /// The peers' certificates this connection was already sent with secure-aggregation keys (each is sent once
    /// per connection, and again only if the peer's certificate changed).
    certs_sent: HashMap<AgentId, Arc<Vec<u8>>>,
}

/// The current global model as the connections send it.
struct CurrentModel {
    version: u64,
    graph: Arc<Vec<u8>>,
    graph_digest: Digest,
    weights: Arc<Vec<u8>>,
    weights_digest: Digest,
    params: u64,
}

/// A running server.
pub struct ServerHandle {
    pub local_addr: SocketAddr,
    core: mpsc::Sender<CoreMsg>,
    events: broadcast::Sender<ServerEvent>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoint: quinn::Endpoint,
    pub store: Arc<Store>,
    /// The server's Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where `GET /metrics` is served, when server.toml asks for it.
    pub metrics_addr: Option<SocketAddr>,
}

impl ServerHandle {
    /// Subscribes to server events.
    pub fn events(&self) -> broadcast::Receiver<ServerEvent> {
        self.events.subscribe()
    }

    /// Sends an operator command.
    pub async fn operator(&self, op: Operator) -> anyhow::Result<()> {
        self.core.send(CoreMsg::Operator(op)).await.map_err(|_| anyhow::anyhow!("server core stopped"))
    }

    /// The coordinator's status.
    pub async fn status(&self) -> anyhow::Result<Status> {
        let (tx, rx) = oneshot::channel();
        self.core.send(CoreMsg::Status(tx)).await.map_err(|_| anyhow::anyhow!("server core stopped"))?;
        rx.await.map_err(|_| anyhow::anyhow!("server core stopped"))
    }

    /// Stops accepting, closes every connection, flushes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.endpoint.close(quinn::VarInt::from_u32(0), b"server shutting down");
        for t in self.tasks {
            let _ = t.await;
        }
        self.store.flush()?;
        Ok(())
    }
}

/// Opens the store (creating version 0 from the configured ONNX graph if it is empty), binds the QUIC endpoint and
/// starts the core and the accept loop.
pub async fn start(config: ServerConfig, evaluator: Option<Arc<dyn Evaluator>>) -> anyhow::Result<ServerHandle> {
    start_with_hook(config, evaluator, None).await
}

/// [`start`], with a [`RelayHook`] that rewrites control messages to agents (tests of a dishonest server).
pub async fn start_with_hook(
    config: ServerConfig,
    evaluator: Option<Arc<dyn Evaluator>>,
    relay_hook: Option<RelayHook>,
) -> anyhow::Result<ServerHandle> {
    let store = Arc::new(
        Store::open(&config.data_dir)
            .with_context(|| {
                let free = crate::disk::available_bytes(config.data_dir.parent().unwrap_or(&config.data_dir))
                    .map_or("unknown".into(), |b| format!("{b} bytes"));
                format!("opening the database in {} (free space on its disk: {free})", config.data_dir.display())
            })?
            .keeping_weights(config.keep_weights),
    );
    let current = {
        let store = store.clone();
        let config = config.clone();
        let evaluator = evaluator.clone();
        tokio::task::spawn_blocking(move || load_or_init_model(&store, &config, evaluator.as_deref())).await??
    };
    let resume = store.resume_state()?.context("the database has no model after initialisation")?;
    let stored_run = store.run().context("reading the run in force")?;
    let run = crate::run::at_start(stored_run, config.autostart, config.rounds, resume.model_version);
    if let Some(r) = run.filter(|r| Some(*r) != stored_run) {
        store.put_run(&r).context("keeping the run in the database")?;
    }
    let pruned = store.prune_weights().context("pruning old weights")?;
    if pruned > 0 {
        tracing::info!(pruned, keep = config.keep_weights, "removed the weights of old model versions");
    }
    let disk = crate::disk::DiskGuard::new(
        config.data_dir.clone(),
        config.min_free_disk_mb.map_or(crate::disk::DiskGuard::default_min_free(current.params * 4), |mb| mb << 20),
    );
    let tls = net::TlsSetup::load(&config)?;
    // The same stateless-reset key at every start: agents' connections to the previous process are reset at once.
    let endpoint_config = crate::reset_key::endpoint_config(&crate::reset_key::path_for(&config.data_dir))?;
    let endpoint = net::bind_endpoint(endpoint_config, tls.server_config()?, config.listen)?;
    let local_addr = endpoint.local_addr()?;
    let mut overrides = operator_overrides(&store)?;
    let coordinator_config = match crate::admin::settings::apply_all(&config.coordinator, &overrides) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "the operator's stored settings do not apply to this server.toml; ignored");
            overrides = toml::Table::new();
            config.coordinator.clone()
        }
    };
    let coordinator = match Coordinator::new(coordinator_config.clone(), resume.clone()) {
        Ok(c) => c,
        // An operator switched the strategy and the server restarted before the new one committed its state.
        Err(e) if overrides.keys().any(|k| k.starts_with("strategy")) => {
            tracing::warn!(error = %e, "the stored strategy state does not fit the operator's strategy; starting afresh");
            let resume = crate::coordinator::ResumeState { strategy_state: vec![], ..resume };
            Coordinator::new(coordinator_config, resume).context("[coordinator] in the config")?
        }
        Err(e) => return Err(e).context("[coordinator] in the config"),
    };
    // The model's weight names and places, so that rounds may train part of it (`hyper.trainable`).
    let layout = {
        let graph = current.graph.clone();
        tokio::task::spawn_blocking(move || crate::evaluator::layout(&graph)).await?
    };
    let coordinator = match layout {
        Ok(layout) => coordinator.with_layout(layout).context("[coordinator] in the config")?,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the model's weight names are unknown: no round can train part of it");
            coordinator
        }
    };
    let mut secagg = config.secagg.clone();
    if secagg.unmask_threads.is_none() {
        secagg.unmask_threads = Some(std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
    let coordinator = coordinator.with_secagg(secagg).context("[secagg] in the config")?;
    let coordinator = match config.privacy {
        Some(settings) => {
            // The budget already spent: every stored round that carried noise, oldest first.
            let spent: Vec<_> = store
                .rounds()?
                .into_iter()
                .filter_map(|r| match r.plan.aggregation {
                    crate::coordinator::AggregationMode::Secure(sp) => sp.privacy.map(|p| p.ddg),
                    crate::coordinator::AggregationMode::Plain => None,
                })
                .collect();
            let c = coordinator.with_privacy(settings, spent).context("[privacy] in the config")?;
            if let Some(p) = c.privacy() {
                tracing::info!(
                    rounds = p.rounds(),
                    epsilon = p.epsilon().unwrap_or(f64::NAN),
                    delta = settings.delta,
                    target_epsilon = settings.target_epsilon,
                    "distributed differential privacy is on"
                );
            }
            c
        }
        None => coordinator,
    };
    if config.secagg.enabled {
        tracing::info!(phase_timeout_ms = config.secagg.phase_timeout_ms, "secure aggregation is on");
    } else {
        tracing::warn!(
            "SECURE AGGREGATION IS OFF ([secagg] enabled = false): agents upload their updates in the clear and the \
             server sees every agent's delta (agents refuse such rounds unless require_secure_aggregation = false)"
        );
    }
    let (core_tx, core_rx) = mpsc::channel(1024);
    let (events, _) = broadcast::channel(1024);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    metrics.model_version.set(current.version as i64);
    let params = Arc::new(AtomicU64::new(current.params));
    tracing::info!(
        %local_addr, version = current.version, params = current.params, graph = %current.graph_digest.short(),
        "fedge-server listening"
    );
    let core = Core {
        coordinator,
        store: store.clone(),
        conns: HashMap::new(),
        current,
        events: events.clone(),
        evaluator,
        core_tx: core_tx.clone(),
        committing: None,
        clock: Clock::start(),
        alarm: Alarm::default(),
        unreserved: None,
        certs: HashMap::new(),
        relay_hook,
        signed_revocations: config.tls.revoked.as_ref().map(|p| p.with_file_name(fedge_shared::revocation_list::FILE)),
        revocations_read: None,
        run,
        config_rounds: config.rounds,
        admin: AdminState {
            started: std::time::Instant::now(),
            target_accuracy: None,
            base: config.coordinator.clone(),
            overrides,
        },
        metrics: metrics.clone(),
        disk,
        write_error_reported: false,
    };
    let mut tasks = vec![tokio::spawn(core.run(core_rx, shutdown_rx.clone()))];
    tasks.push(tokio::spawn(crate::metrics::follow(events.subscribe(), metrics.clone(), shutdown_rx.clone())));
    let metrics_addr = match config.metrics {
        Some(addr) => {
            let (bound, task) = crate::metrics::serve(addr, metrics.clone(), shutdown_rx.clone()).await?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };
    // Revoking a certificate closes its live connections too: the file is watched (see `crate::revocation`).
    let revocations = Arc::new(crate::revocation::Revocations::default());
    if let Some(path) = config.tls.revoked.clone() {
        tasks.push(tokio::spawn(crate::revocation::watch_file(path, revocations.clone(), shutdown_rx.clone())));
    }
    let shared = Arc::new(net::Shared {
        core: core_tx.clone(),
        events: events.clone(),
        params,
        tls,
        uploads: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_uploads)),
        downloads: Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_downloads.unwrap_or(tokio::sync::Semaphore::MAX_PERMITS),
        )),
        next_conn: AtomicU64::new(1),
        store: store.clone(),
        revocations: revocations.clone(),
        operators: crate::admin::service,
    });
    tasks.push(tokio::spawn(net::accept_loop(endpoint.clone(), shared, shutdown_rx)));
    Ok(ServerHandle { local_addr, core: core_tx, events, shutdown, tasks, endpoint, store, metrics, metrics_addr })
}

/// The coordinator settings an operator set with `fedgectl config set` (kept in the store).
fn operator_overrides(store: &Store) -> anyhow::Result<toml::Table> {
    match store.server_config()? {
        None => Ok(toml::Table::new()),
        Some(text) => match crate::admin::settings::overrides_from_text(&text) {
            Ok(t) => Ok(t),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring unreadable stored operator settings");
                Ok(toml::Table::new())
            }
        },
    }
}

fn load_or_init_model(
    store: &Store,
    config: &ServerConfig,
    evaluator: Option<&dyn Evaluator>,
) -> anyhow::Result<CurrentModel> {
    let meta = match store.latest()? {
        Some(m) => m,
        None => {
            let path = &config.model.onnx;
            let onnx = std::fs::read(path).with_context(|| format!("reading the model {}", path.display()))?;
            let weights = crate::evaluator::initial_weights(&onnx).with_context(|| format!("{}", path.display()))?;
            let digest = store.put_graph(&onnx)?;
            if let Some(e) = evaluator
                && let Ok(m) = e.evaluate(&onnx, &weights)
            {
                tracing::info!(accuracy = ?m.accuracy, loss = m.loss, "initial model evaluated");
            }
            store.init_model(digest, &weights, wall_ms())?
        }
    };
    let graph = store.graph(&meta.graph_digest)?.context("the database lost the model's graph")?;
    let weights = store.weights(meta.version)?;
    let blob = weights_to_bytes(&weights);
    Ok(CurrentModel {
        version: meta.version,
        graph_digest: meta.graph_digest,
        graph: Arc::new(graph),
        // `Store::weights` checked these bytes against this digest.
        weights_digest: meta.weights_digest,
        weights: Arc::new(blob),
        params: weights.len() as u64,
    })
}

struct Core {
    coordinator: Coordinator,
    store: Arc<Store>,
    conns: HashMap<AgentId, Conn>,
    current: CurrentModel,
    events: broadcast::Sender<ServerEvent>,
    evaluator: Option<Arc<dyn Evaluator>>,
    core_tx: mpsc::Sender<CoreMsg>,
    /// The record of the round being committed (to tell its agents how it ended).
    committing: Option<RoundRecord>,
    /// The coordinator's time (monotonic; see [`crate::clock`]).
    clock: Clock,
    /// The wake-up the coordinator asked for last.
    alarm: Alarm,
    /// A round whose id the store could not reserve (none of its plans is sent), and why.
    unreserved: Option<(u64, String)>,
    /// The run in force (kept in the store, so that a restart finishes it).
    run: Option<crate::run::Run>,
    /// server.toml's `rounds`.
    config_rounds: Option<u64>,
    /// Each agent's certificate (DER) from its newest connection, relayed with its secure-aggregation keys.
    certs: HashMap<AgentId, Arc<Vec<u8>>>,
    relay_hook: Option<RelayHook>,
    admin: AdminState,
    metrics: Arc<crate::metrics::Metrics>,
    /// Free space under the database: no round starts without room to commit it.
    disk: crate::disk::DiskGuard,
    /// The store's write error has been told to the coordinator.
    write_error_reported: bool,
    /// Where the operator's CA-signed revocation list is (`revoked.sig` next to `tls.revoked`), if anywhere.
    signed_revocations: Option<std::path::PathBuf>,
    /// The list as read for the round whose keys are being relayed (read once per round, not once per agent).
    revocations_read: Option<(u64, Vec<u8>)>,
}

/// What the core keeps for the admin surface.
struct AdminState {
    started: std::time::Instant,
    /// Pause when a completed round reaches this test accuracy.
    target_accuracy: Option<f32>,
    /// The `[coordinator]` section of server.toml, and the operator's settings on top of it.
    base: crate::coordinator::CoordinatorConfig,
    overrides: toml::Table,
}

impl Core {
    async fn run(mut self, mut rx: mpsc::Receiver<CoreMsg>, mut shutdown: watch::Receiver<bool>) {
        if let Some(run) = self.run {
            let latest = self.coordinator.model_version();
            match run.remaining(latest) {
                Some(0) => tracing::info!(
                    rounds = run.total(),
                    version = latest,
                    "the run is done: no round starts (`fedgectl round start N` runs more)"
                ),
                count => {
                    tracing::info!(done = run.done(latest), to_go = ?count, "resuming the run");
                    self.feed(Event::StartRounds { count });
                }
            }
        }
        loop {
            let sleep = crate::clock::sleep_until(self.alarm.deadline(&self.clock));
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => {
                        // A commit is what fills the disk: look right after one, before the next round may start.
                        self.check_disk(matches!(m, CoreMsg::Committed { .. }));
                        self.on_msg(m)
                    }
                    None => break,
                },
                _ = sleep => {
                    if self.alarm.ring(self.clock.now_ms()) {
                        self.check_disk(false);
                        self.feed(Event::Tick);
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        for c in self.conns.values() {
            let _ = c.tx.try_send(Outbound::Close("server shutting down".into()));
        }
    }

    /// Tells the coordinator when the database's disk runs short of space for a commit, or has room again.
    fn check_disk(&mut self, now: bool) {
        if let Some(e) = self.store.write_error() {
            if !self.write_error_reported {
                self.write_error_reported = true;
                let why = format!(
                    "the database failed to write ({e}); nothing more can be committed until the server is \
                     restarted with room on its disk"
                );
                tracing::error!(reason = %why, "no new round will start");
                self.feed(Event::Storage { low: Some(why) });
            }
            return;
        }
        let verdict =
            if now { self.disk.poll_now(std::time::Instant::now()) } else { self.disk.poll(std::time::Instant::now()) };
        if let Some(low) = verdict {
            if let Some(why) = &low {
                tracing::error!(reason = %why, "the database's disk is nearly full: no new round will start");
            }
            self.feed(Event::Storage { low });
        }
    }

    fn feed(&mut self, event: Event<'_>) {
        let before = (self.coordinator.status().round, self.coordinator.secure_phase());
        let actions = self.coordinator.handle(self.clock.now_ms(), event);
        let status = self.coordinator.status();
        let after = (status.round, self.coordinator.secure_phase());
        for a in actions {
            self.act(a);
        }
        if let Some((round, error)) = self.unreserved.take() {
            self.feed(Event::RoundNotReserved { round, error });
        }
        if let (Some(round), Some(phase)) = after
            && after != before
        {
            let members = status.selected.saturating_sub(status.dropped);
            tracing::info!(round, phase = phase.name(), members, "secure aggregation phase");
            let _ = self.events.send(ServerEvent::SecAggPhase { round, phase, members });
        }
    }

    fn on_msg(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Connected { agent, conn, tx, cert } => {
                self.certs.insert(agent.clone(), Arc::new(cert));
                if let Some(old) = self.conns.insert(
                    agent.clone(),
                    Conn { id: conn, tx, graph_sent: false, version_held: None, certs_sent: HashMap::new() },
                ) {
                    let _ = old.tx.try_send(Outbound::Close("replaced by a newer connection of the same agent".into()));
                }
                let _ = self.events.send(ServerEvent::AgentJoined { agent: agent.clone() });
                self.feed(Event::AgentConnected { agent });
            }
            CoreMsg::Disconnected { agent, conn } => {
                if self.conns.get(&agent).is_some_and(|c| c.id == conn) {
                    self.conns.remove(&agent);
                    let _ = self.events.send(ServerEvent::AgentLeft { agent: agent.clone() });
                    self.feed(Event::AgentDisconnected { agent });
                }
            }
            CoreMsg::Silent { agent, conn, silent } => {
                if self.conns.get(&agent).is_some_and(|c| c.id == conn) {
                    tracing::info!(%agent, silent, "connection liveness");
                    self.feed(Event::AgentSilent { agent, silent });
                }
            }
            CoreMsg::CheckIn { agent, conn, checkin } => {
                let Some(c) = self.conns.get_mut(&agent).filter(|c| c.id == conn) else { return };
                c.graph_sent = checkin.graph == Some(self.current.graph_digest);
                c.version_held = checkin.model_version.filter(|_| c.graph_sent);
                // Every connected agent gets the newest model: it trains from it and serves inference with it.
                self.push_model(&agent);
                self.feed(Event::CheckIn { agent, model_version: checkin.model_version, examples: checkin.examples });
            }
            CoreMsg::Update { agent, round, examples, train_loss, eval, delta } => {
                if let Some(counts) = eval {
                    self.feed(Event::Evaluated { agent: agent.clone(), round, counts });
                }
                self.feed(Event::Update { agent, round, examples, train_loss, delta: &delta });
            }
            CoreMsg::Abandon { agent, round, reason } => {
                // E.g. an agent that requires secure aggregation refusing a plain round: the reason is its own.
                tracing::warn!(%agent, round, %reason, "the agent abandoned the round");
                self.feed(Event::UpdateFailed { agent, round, reason });
            }
            CoreMsg::SecAggAdvertise { agent, keys } => self.feed(Event::SecAggAdvertise { agent, keys }),
            CoreMsg::SecAggShares { agent, round, shares } => self.feed(Event::SecAggShares { agent, round, shares }),
            CoreMsg::SecAggReceipt { agent, receipt } => self.feed(Event::SecAggReceipt { agent, receipt }),
            CoreMsg::SecAggSurvivorSignature { agent, signature } => {
                self.feed(Event::SecAggSurvivorSignature { agent, signature })
            }
            CoreMsg::SecAggUnmask { agent, response } => self.feed(Event::SecAggUnmask { agent, response }),
            CoreMsg::Masked { agent, round, masked, permit } => {
                self.feed(Event::MaskedInput { agent, round, masked: &masked });
                drop(masked);
                drop(permit);
            }
            CoreMsg::Operator(op) => {
                let e = match op {
                    Operator::StartRounds(count) => return self.begin_run(count),
                    Operator::Pause => Event::Pause,
                    Operator::Resume => Event::Resume,
                    Operator::AbortRound => Event::AbortRound,
                };
                self.feed(e);
            }
            CoreMsg::Committed { round, result } => match result {
                Ok(m) => {
                    self.current.version = m.version;
                    self.current.weights = m.blob;
                    self.current.weights_digest = m.digest;
                    let record = m.record;
                    tracing::info!(
                        round,
                        version = m.version,
                        accuracy = record.metrics.test_accuracy.unwrap_or(f32::NAN),
                        loss = record.metrics.mean_train_loss.unwrap_or(f32::NAN),
                        "round committed"
                    );
                    if let (Some(target), Some(acc)) = (self.admin.target_accuracy, record.metrics.test_accuracy)
                        && acc >= target
                    {
                        tracing::info!(round, accuracy = acc, target, "target accuracy reached: pausing");
                        self.admin.target_accuracy = None;
                        self.feed(Event::Pause);
                    }
                    self.committing = Some(record.clone());
                    let _ = self.events.send(ServerEvent::RoundCompleted(Box::new(record)));
                    self.feed(Event::Committed { round, version: m.version });
                }
                Err(error) => {
                    tracing::error!(round, %error, "commit failed; the round is aborted and the last model kept");
                    self.feed(Event::CommitFailed { round, error });
                }
            },
            CoreMsg::Status(tx) => {
                let _ = tx.send(self.coordinator.status());
            }
            CoreMsg::Admin(call) => self.on_admin(call),
        }
    }

    /// An operator's run of `count` more rounds (`None`: until stopped), kept in the store from now on.
    fn begin_run(&mut self, count: Option<u64>) {
        let run = crate::run::Run::new(self.coordinator.model_version(), count, self.config_rounds, true);
        if let Err(e) = self.store.put_run(&run) {
            tracing::error!(error = %e, "cannot keep the operator's run in the database: a restart will not resume it");
        }
        self.run = Some(run);
        self.feed(Event::StartRounds { count });
    }

    fn on_admin(&mut self, call: crate::admin::AdminCall) {
        use crate::admin::{AdminCall, Snapshot, settings};
        match call {
            AdminCall::Snapshot(tx) => {
                let s = self.coordinator.status();
                let now = self.clock.now_ms();
                let status = fedge_shared::admin::StatusInfo {
                    server: concat!("fedge-server/", env!("CARGO_PKG_VERSION")).into(),
                    uptime_ms: self.admin.started.elapsed().as_millis() as u64,
                    connected: self.conns.len(),
                    available: s.available,
                    phase: match s.phase {
                        crate::coordinator::Phase::Idle => fedge_shared::admin::PhaseInfo::Idle,
                        crate::coordinator::Phase::Collecting => fedge_shared::admin::PhaseInfo::Collecting,
                        crate::coordinator::Phase::Committing => fedge_shared::admin::PhaseInfo::Committing,
                    },
                    round: s.round,
                    model_version: s.model_version,
                    next_round: s.next_round,
                    selected: s.selected,
                    reported: s.reported,
                    dropped: s.dropped,
                    running: s.running,
                    paused: s.paused,
                    storage_low: s.storage_low.clone(),
                    remaining: self.run.map_or(s.remaining, |r| r.remaining(s.model_version)),
                    run_done: self.run.map(|r| r.done(s.model_version)),
                    deadline_in_ms: self.coordinator.deadline_ms().map(|d| d.saturating_sub(now)),
                    target_accuracy: self.admin.target_accuracy,
                };
                let mut connected: Vec<String> = self.conns.keys().cloned().collect();
                connected.sort();
                let _ = tx.send(Snapshot { status, connected });
            }
            AdminCall::StartRounds { count, target_accuracy, reply } => {
                self.admin.target_accuracy = target_accuracy;
                self.begin_run(count);
                let mut m = match count {
                    Some(n) => format!("running {n} more rounds"),
                    None => "running rounds until stopped".to_string(),
                };
                if let Some(t) = target_accuracy {
                    m.push_str(&format!(", pausing when the test accuracy reaches {t}"));
                }
                let _ = reply.send(m);
            }
            AdminCall::ConfigShow(tx) => {
                let _ = tx.send(settings::entries(self.coordinator.config(), &self.admin.overrides));
            }
            AdminCall::ConfigSet { key, value, reply } => {
                let result = settings::set(&self.admin.base, &self.admin.overrides, &key, &value)
                    .map_err(|e| e.to_string())
                    .and_then(|(config, overrides)| {
                        self.coordinator.set_config(config).map_err(|e| format!("{key} = {value} refused: {e}"))?;
                        self.store
                            .put_server_config(&settings::overrides_to_text(&overrides))
                            .map_err(|e| format!("{key} = {value} applied but not persisted: {e}"))?;
                        self.admin.overrides = overrides;
                        tracing::info!(%key, %value, "operator setting applied");
                        Ok(format!("{key} = {value} (from the next round on; kept across restarts)"))
                    });
                let _ = reply.send(result);
            }
            AdminCall::Revoke { name, reply } => {
                let result = self.store.revoke_agent(&name, wall_ms()).map_err(|e| e.to_string()).map(|_| {
                    tracing::warn!(agent = %name, "agent revoked by an operator");
                    match self.conns.get(&name) {
                        Some(c) => {
                            let _ = c.tx.try_send(Outbound::Close("certificate revoked".into()));
                            true
                        }
                        None => false,
                    }
                });
                let _ = reply.send(result);
            }
        }
    }

    /// The signed revocation list's bytes as the operator wrote them (empty when there is none or it cannot be
    /// read; agents then check against the newest list they verified before).
    fn signed_revocations(&self) -> Vec<u8> {
        let Some(path) = &self.signed_revocations else { return Vec::new() };
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() <= fedge_shared::revocation_list::LIMIT => bytes,
            Ok(bytes) => {
                tracing::error!(file = %path.display(), len = bytes.len(), "the signed revocation list is too large");
                Vec::new()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the signed revocation list");
                Vec::new()
            }
        }
    }

    fn send(&self, agent: &str, mut m: Outbound) {
        if let (Some(hook), Outbound::Msg(msg)) = (&self.relay_hook, &mut m) {
            hook(agent, msg);
        }
        if let Some(c) = self.conns.get(agent) {
            match c.tx.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(agent, "connection queue full; the agent will be dropped if it misses the round")
                }
                Err(mpsc::error::TrySendError::Closed(_)) => tracing::debug!(agent, "connection already closed"),
            }
        }
    }

    /// Sends the graph and the current weights to `agent` unless it holds them.
    fn push_model(&mut self, agent: &str) {
        let cur = &self.current;
        let Some(c) = self.conns.get_mut(agent) else { return };
        if !c.graph_sent {
            let h = BlobHeader { kind: BlobKind::Graph, len: cur.graph.len() as u64, digest: Some(cur.graph_digest) };
            let _ = c.tx.try_send(Outbound::Blob(h, cur.graph.clone()));
            self.metrics.sent(cur.graph.len() as u64);
            c.graph_sent = true;
        }
        if c.version_held != Some(cur.version) {
            let announce = ModelAnnounce {
                version: cur.version,
                graph: cur.graph_digest,
                weights: cur.weights_digest,
                params: cur.params,
            };
            let _ = c.tx.try_send(Outbound::Msg(ServerMessage::Model(announce)));
            let h = BlobHeader {
                kind: BlobKind::Weights { version: cur.version },
                len: cur.weights.len() as u64,
                digest: Some(cur.weights_digest),
            };
            let _ = c.tx.try_send(Outbound::Blob(h, cur.weights.clone()));
            self.metrics.sent(cur.weights.len() as u64);
            c.version_held = Some(cur.version);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::SendPlan { agent, plan, send_weights: _ } => {
                if self.unreserved.as_ref().is_some_and(|(round, _)| *round == plan.round) {
                    return;
                }
                if plan.model_version != self.current.version {
                    tracing::error!(
                        round = plan.round,
                        planned = plan.model_version,
                        current = self.current.version,
                        "a plan for a model version the server no longer sends; not sent"
                    );
                    return;
                }
                self.push_model(&agent);
                let wire = wire_plan(&plan, &self.current, &agent);
                self.send(&agent, Outbound::Msg(ServerMessage::Plan(Box::new(wire))));
            }
            Action::SecAggKeys { agent, round, keys, owners } => {
                // Only the agent's own keys and its neighbours' (O(k)), each with its owner's certificate the first
                // time this connection needs it; empty when the connection was already sent that very certificate.
                let certificates: Vec<Vec<u8>> = match self.conns.get_mut(&agent) {
                    Some(c) => owners
                        .iter()
                        .map(|o| match self.certs.get(o) {
                            Some(cert) if c.certs_sent.get(o).is_some_and(|sent| sent == cert) => Vec::new(),
                            Some(cert) => {
                                c.certs_sent.insert(o.clone(), cert.clone());
                                cert.as_ref().clone()
                            }
                            None => Vec::new(),
                        })
                        .collect(),
                    None => Vec::new(),
                };
                // The operator's CA-signed revocation list, relayed as written: agents check their peers against it.
                let revocations = match &self.revocations_read {
                    Some((r, list)) if *r == round => list.clone(),
                    _ => {
                        let list = self.signed_revocations();
                        self.revocations_read = Some((round, list.clone()));
                        list
                    }
                };
                self.send(&agent, Outbound::Msg(ServerMessage::SecAggKeys { round, keys, certificates, revocations }));
            }
            Action::SecAggShares { agent, round, shares } => {
                self.send(&agent, Outbound::Msg(ServerMessage::SecAggShares { round, shares }));
            }
            Action::SecAggMaskWith { agent, mask_with } => {
                self.send(&agent, Outbound::Msg(ServerMessage::SecAggMaskWith(mask_with)));
            }
            Action::SecAggSurvivors { to, set } => {
                let m = ServerMessage::SecAggSurvivors(set);
                for a in &to {
                    self.send(a, Outbound::Msg(m.clone()));
                }
            }
            Action::SecAggUnmask { agent, request } => {
                self.send(&agent, Outbound::Msg(ServerMessage::SecAggUnmask(request)));
            }
            Action::Reject { agent, reason } => {
                tracing::warn!(%agent, %reason, "message refused");
                self.send(&agent, Outbound::Msg(ServerMessage::Refused { reason: reason.to_string() }));
            }
            Action::CancelTraining { agent, round } => {
                let m = ServerMessage::RoundEnd {
                    round,
                    completed: false,
                    reason: Some("dropped from the round".into()),
                    new_version: None,
                };
                self.send(&agent, Outbound::Msg(m));
            }
            Action::RoundStarted { round, model_version, selected } => {
                // The id is durable before the round's first message leaves: a crash never hands it out again.
                if let Err(e) = self.store.reserve_round(round) {
                    tracing::error!(round, error = %e, "cannot reserve the round's id: no plan is sent, the round is aborted");
                    self.unreserved = Some((round, e.to_string()));
                    return;
                }
                tracing::info!(round, model_version, selected, "round started");
                let _ = self.events.send(ServerEvent::RoundStarted { round, model_version, selected });
            }
            Action::Commit { record, new_weights, strategy_state } => self.commit(*record, new_weights, strategy_state),
            Action::Announce { version } => {
                if let Some(record) = self.committing.take() {
                    for r in &record.reported {
                        let m = ServerMessage::RoundEnd {
                            round: record.round,
                            completed: true,
                            reason: None,
                            new_version: Some(version),
                        };
                        self.send(&r.agent, Outbound::Msg(m));
                    }
                }
                let agents: Vec<String> = self.conns.keys().cloned().collect();
                for a in agents {
                    self.push_model(&a);
                }
            }
            Action::RoundAborted { round, reason, record } => {
                tracing::warn!(round, %reason, "round aborted");
                if let Err(e) = self.store.record_aborted(&record) {
                    tracing::error!(round, error = %e, "could not record the aborted round");
                }
                for a in &record.selected {
                    let m = ServerMessage::RoundEnd {
                        round,
                        completed: false,
                        reason: Some(reason.to_string()),
                        new_version: None,
                    };
                    self.send(a, Outbound::Msg(m));
                }
                let _ = self.events.send(ServerEvent::RoundAborted(record));
            }
            // A later wake-up replaces an earlier one (the coordinator's contract), never "the earlier of the two".
            Action::WakeAt(at) => self.alarm.set(at),
            Action::Log { message } => tracing::info!("{message}"),
        }
    }

    fn commit(&mut self, mut record: RoundRecord, new_weights: Vec<f32>, strategy_state: Vec<u8>) {
        let store = self.store.clone();
        let evaluator = self.evaluator.clone();
        let graph = self.current.graph.clone();
        let tx = self.core_tx.clone();
        let round = record.round;
        tokio::task::spawn_blocking(move || {
            if let Some(e) = evaluator {
                match e.evaluate(&graph, &new_weights) {
                    Ok(m) => {
                        // Regression has no accuracy; its test loss is the mean squared error.
                        record.metrics.test_accuracy = m.accuracy;
                        record.metrics.test_loss = Some(m.loss);
                    }
                    Err(err) => tracing::warn!(round, error = %format!("{err:#}"), "evaluation failed"),
                }
            }
            // The store encodes and hashes the weights once; the blob the agents receive is those same bytes
            // (little-endian f32), so its digest is read back from the version's metadata, not computed again.
            let result = store
                .commit_round(&record, &new_weights, &strategy_state, wall_ms())
                .and_then(|version| Ok((version, store.model(version)?.weights_digest)))
                .map(|(version, digest)| {
                    let blob = weights_to_bytes(&new_weights);
                    drop(new_weights);
                    record.new_version = Some(version);
                    record.outcome = Outcome::Completed;
                    Box::new(CommittedModel { version, record, digest, blob: Arc::new(blob) })
                })
                .map_err(|e| e.to_string());
            let _ = tx.blocking_send(CoreMsg::Committed { round, result });
        });
    }
}

/// The seed an agent receives for a round (the configured seed mixed with the round id).
pub fn round_seed(plan: &RoundPlan) -> u64 {
    plan.hyper.seed ^ plan.round.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The plan as `agent` receives it (its own cohort index in a secure round).
fn wire_plan(plan: &RoundPlan, model: &CurrentModel, agent: &str) -> protocol::RoundPlan {
    let h = &plan.hyper;
    let secagg = match &plan.aggregation {
        AggregationMode::Plain => None,
        AggregationMode::Secure(sp) => sp.cohort.iter().find(|a| a.name == agent).map(|me| SecAggPlan {
            params: sp.params.clone(),
            graph_seed: sp.graph_seed,
            me: me.index,
            cohort: sp.cohort.clone(),
            phase_timeout_ms: sp.phase_timeout_ms,
        }),
    };
    protocol::RoundPlan {
        round: plan.round,
        model_version: plan.model_version,
        graph: model.graph_digest,
        weights: model.weights_digest,
        train: TrainPlan {
            epochs: h.epochs,
            batch_size: h.batch_size,
            learning_rate: h.learning_rate,
            momentum: h.momentum,
            weight_decay: h.weight_decay,
            optimizer: match h.optimizer {
                crate::coordinator::OptimizerKind::Sgd => "sgd".into(),
                crate::coordinator::OptimizerKind::Adam => "adam".into(),
            },
            prox_mu: (h.prox_mu > 0.0).then_some(h.prox_mu),
            seed: round_seed(plan),
            loss: h.loss.name().into(),
            trainable: h.trainable.clone(),
        },
        deadline_ms: plan.deadline_ms,
        secagg,
    }
}
