//! Starting an aggregator's uplink to its root, and installing the versions the root sends.
//!
//! The uplink is fedge-agent's client ([`fedge_agent::client::Agent`]) with the aggregator's certificate bundle and
//! a [`ForwardingLearner`]; it keeps the root's graph and newest weights in its own state folder, so a restarted
//! aggregator asks the root only for what changed. Each version it holds is stored (`Store::install_version`, under
//! the root's number) and only then handed to the core, so an aggregator never serves a version it could lose.
//!
//! The installer runs the store's writes and the encoding on the blocking pool, never on the runtime, and refuses
//! nothing silently: a version it cannot store is logged and the aggregator keeps serving the one before.

use super::{AggregatorConfig, ForwardingLearner};
use crate::clock::wall_ms;
use crate::core_msg::{CoreMsg, InstalledModel};
use crate::store::Store;
use anyhow::Context;
use fedge_agent::client::{Agent, ClientSettings};
use fedge_agent::state::{ModelState, PublishedModel};
use fedge_shared::model::{Digest, weights_to_bytes};
use fedge_shared::tls;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A running uplink: the versions it holds, and its task.
pub struct Uplink {
    pub models: watch::Receiver<Option<PublishedModel>>,
    /// The version installed before the server started.
    pub first: PublishedModel,
    pub task: tokio::task::JoinHandle<()>,
}

/// Connects to the root as its agent and waits until this aggregator holds a version of the root's model (from
/// its state folder, or downloaded), stored in `store`. `idle_timeout` is the uplink connection's, `round_wait` the
/// longest one of this aggregator's rounds may take. Fails on a bundle or address it cannot use; waits as long as
/// the root is unreachable (saying so every 10 s), until `shutdown`.
pub async fn start_uplink(
    agg: &AggregatorConfig,
    data_dir: &std::path::Path,
    idle_timeout: Duration,
    round_wait: Duration,
    store: Arc<Store>,
    core: mpsc::Sender<CoreMsg>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Uplink> {
    let mut roots = Vec::new();
    for a in tokio::net::lookup_host(&agg.root).await.with_context(|| format!("resolving the root {}", agg.root))? {
        if !roots.contains(&a) {
            roots.push(a);
        }
    }
    anyhow::ensure!(!roots.is_empty(), "the root {} resolves to no address", agg.root);
    let settings = ClientSettings {
        servers: roots,
        server_name: agg.root_name.clone(),
        ca: tls::load_certs(&agg.bundle.join(tls::files::CA_CERT))
            .with_context(|| format!("[aggregator] bundle {}", agg.bundle.display()))?,
        identity: tls::Identity::load_bundle(&agg.bundle)
            .with_context(|| format!("[aggregator] bundle {}", agg.bundle.display()))?,
        idle_timeout,
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(5),
        // The root runs plain rounds over its aggregators: what it sees is each group's mean.
        require_secure_aggregation: false,
        privacy: None,
        floor: Default::default(),
    };
    let dir = agg.state_dir.clone().unwrap_or_else(|| {
        let mut beside = data_dir.as_os_str().to_owned();
        beside.push("-uplink");
        beside.into()
    });
    let state = ModelState::open(&dir)?.with_keep_versions(2);
    let (tx, mut models) = watch::channel(state.published(None).ok());
    let learner = ForwardingLearner::new(core, models.clone(), round_wait);
    let agent = Agent::new(settings, state, Box::new(learner)).with_model_updates(tx);
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = agent.run(stop).await {
            tracing::error!(error = %format!("{e:#}"), "the uplink to the root stopped");
        }
    });
    tracing::info!(root = %agg.root, "aggregator: joining the root");
    let first = loop {
        if let Some(m) = models.borrow_and_update().clone() {
            break m;
        }
        tokio::select! {
            changed = models.changed() => changed.context("the uplink stopped before the root sent a model")?,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {
                tracing::warn!(root = %agg.root, "aggregator: still waiting for the root's model")
            }
            _ = shutdown.changed() => anyhow::bail!("shut down before the root sent a model"),
        }
    };
    let held = first.clone();
    let installed = tokio::task::spawn_blocking(move || install(&store, &held, None)).await??;
    tracing::info!(version = installed.version, "aggregator: holding the root's version");
    Ok(Uplink { models, first, task })
}

/// Stores `m` unless the store holds it or a newer one, and encodes it for the connections; `before` (the version
/// installed before it) gives its 8-bit difference when that rebuilds `m` bit for bit.
fn install(store: &Store, m: &PublishedModel, before: Option<&PublishedModel>) -> anyhow::Result<InstalledModel> {
    let held = store.latest()?.map(|meta| meta.version);
    if held.is_none_or(|v| v < m.version) {
        store.install_version(m.version, &m.graph, &m.weights, wall_ms())?;
    }
    let blob = weights_to_bytes(&m.weights);
    let digest = Digest::of(&blob);
    // The root's difference travels as the agents apply it; re-deriving it is exact in practice, and checked.
    let diff = before.filter(|b| b.version + 1 == m.version && b.weights.len() == m.weights.len()).and_then(|b| {
        let (rebuilt, diff) = fedge_shared::model_diff::settle(&b.weights, &m.weights)?;
        (rebuilt.iter().zip(m.weights.iter()).all(|(r, w)| r.to_bits() == w.to_bits())).then(|| Arc::new(diff))
    });
    Ok(InstalledModel {
        version: m.version,
        graph_digest: Digest::of(&m.graph),
        graph: m.graph.clone(),
        weights: m.weights.clone(),
        blob: Arc::new(blob),
        digest,
        diff,
    })
}

/// Installs every version the uplink holds after `first` and hands it to the core, until `shutdown`.
pub async fn install_loop(
    mut models: watch::Receiver<Option<PublishedModel>>,
    first: PublishedModel,
    store: Arc<Store>,
    core: mpsc::Sender<CoreMsg>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut before = first;
    loop {
        let newest = models.borrow_and_update().clone();
        if let Some(m) = newest.filter(|m| m.version > before.version) {
            let (s, prev, next) = (store.clone(), before.clone(), m.clone());
            match tokio::task::spawn_blocking(move || install(&s, &next, Some(&prev))).await {
                Ok(Ok(installed)) => {
                    before = m;
                    if core.send(CoreMsg::Installed(Box::new(installed))).await.is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(version = m.version, error = %format!("{e:#}"), "cannot store the root's version")
                }
                Err(e) => tracing::error!(version = m.version, error = %e, "storing the root's version panicked"),
            }
        }
        tokio::select! {
            changed = models.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
