//! Starting the server: opens the store (creating version 0 from the configured ONNX graph when it is empty),
//! resumes the run in force, applies the operator's stored settings, builds the coordinator (layout, secure
//! aggregation, privacy budget already spent), binds the QUIC endpoint, and spawns the core, the metrics, the
//! revocation watcher and the accept loop.
//!
//! It runs once, before any agent is heard: it must never decide anything about rounds, and it refuses to start
//! (an error, never a panic) rather than run on a store or configuration it cannot read.

use super::core_actor::{AdminState, Core, CurrentModel};
use super::server_handle::ServerHandle;
use crate::clock::{Alarm, Clock, wall_ms};
use crate::config::ServerConfig;
use crate::coordinator::Coordinator;
use crate::core_msg::RelayHook;
use crate::evaluator::Evaluator;
use crate::net;
use crate::store::Store;
use anyhow::Context;
use fedge_shared::model::weights_to_bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

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
    let (core_tx, core_rx) = mpsc::channel(1024);
    let (shutdown, shutdown_rx) = watch::channel(false);
    // An aggregator holds its root's version before it serves anyone (see `crate::aggregator`).
    let uplink = match (&config.role, &config.aggregator) {
        (crate::config::Role::Aggregator, Some(agg)) => {
            // One of its rounds: the coordinator's deadlines bound it; the margin covers the unmasking.
            let c = &config.coordinator;
            let round_wait = Duration::from_millis(
                c.round_timeout_ms.saturating_mul(2).saturating_add(config.secagg.phase_timeout_ms.saturating_mul(4)),
            ) + Duration::from_secs(60);
            let idle = Duration::from_millis(config.idle_timeout_ms);
            let (core, stop) = (core_tx.clone(), shutdown_rx.clone());
            Some(
                crate::aggregator::start_uplink(agg, &config.data_dir, idle, round_wait, store.clone(), core, stop)
                    .await?,
            )
        }
        _ => None,
    };
    let current = {
        let store = store.clone();
        let config = config.clone();
        let evaluator = evaluator.clone();
        tokio::task::spawn_blocking(move || load_or_init_model(&store, &config, evaluator.as_deref())).await??
    };
    let resume = store.resume_state()?.context("the database has no model after initialisation")?;
    let stored_run = store.run().context("reading the run in force")?;
    // An aggregator's rounds are its root's: it runs none of its own accord.
    let run = crate::run::at_start(stored_run, config.autostart, config.rounds, resume.model_version)
        .filter(|_| uplink.is_none());
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
    let endpoint = net::bind_endpoint(endpoint_config, tls.server_config()?, config.listen, config.udp_send_batch)?;
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
    let coordinator =
        coordinator.with_secagg(secagg).context("[secagg] in the config")?.with_model_download(config.download);
    let coordinator = match config.buffered.clone() {
        Some(b) => coordinator.with_buffering(b).context("[buffered] in the config")?,
        None => coordinator,
    };
    let coordinator = match config.privacy {
        Some(settings) => {
            // The budget already spent: every stored round that carried noise, oldest first.
            let spent: Vec<_> = store
                .rounds()?
                .into_iter()
                .filter_map(|r| r.plan.aggregation.secure_plan().and_then(|sp| sp.privacy.map(|p| p.ddg)))
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
    let coordinator = match &config.aggregator {
        Some(agg) if uplink.is_some() => {
            coordinator.with_forwarding(agg.min_group).context("[aggregator] in the config")?
        }
        _ => coordinator,
    };
    if config.secagg.enabled {
        tracing::info!(phase_timeout_ms = config.secagg.phase_timeout_ms, "secure aggregation is on");
    } else {
        tracing::warn!(
            "SECURE AGGREGATION IS OFF ([secagg] enabled = false): agents upload their updates in the clear and the \
             server sees every agent's delta (agents refuse such rounds unless require_secure_aggregation = false)"
        );
    }
    let (events, _) = broadcast::channel(1024);
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
        diffs: Default::default(),
        forward_replies: Default::default(),
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
    if let Some(u) = uplink {
        let install =
            crate::aggregator::install_loop(u.models, u.first, store.clone(), core_tx.clone(), shutdown_rx.clone());
        tasks.push(tokio::spawn(install));
        tasks.push(u.task);
    }
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
        uploads: net::UploadBudget::new(config.max_concurrent_uploads, config.upload_memory_mb.saturating_mul(1 << 20)),
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
            Ok(mut t) => {
                if let Some(mu) = t.remove(crate::admin::settings::PROX_MU) {
                    tracing::warn!(
                        %mu,
                        "ignoring the stored operator setting hyper.prox_mu: {}",
                        crate::coordinator::PROX_MU_IS_THE_STRATEGYS
                    );
                }
                Ok(t)
            }
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
