//! Edge inference: the agent answers predictions with the newest global model (or a pinned one) while it takes
//! part in rounds.
//!
//! - [`engine`]: a version compiled once with tract (weights baked in), single-example and full-batch plans.
//! - [`registry`]: the served version, swapped atomically; pinning; compiling new versions off the runtime.
//! - [`batcher`]: concurrent requests batched on a dedicated worker thread.
//! - [`request`]: JSON and raw f32 bodies, checked against the model's input shape.
//! - [`http`]: the axum routes; [`metrics`]: Prometheus counters and histograms.
//! - [`recent`]: the inputs of the last predictions by id; [`labelled`] and [`labels_http`]: labelled examples and
//!   corrections posted to the endpoint, kept in the agent's [`crate::examples_store::ExampleStore`].
//!
//! [`start`] wires them to a stream of published versions (`watch`, fed by the agent's client as weights
//! arrive). Nothing here talks to the federation server, and the endpoint is unauthenticated, so it listens on
//! loopback unless configured otherwise.

pub mod app_state;
pub mod batcher;
pub mod engine;
pub mod http;
pub mod labelled;
pub mod labels_http;
pub mod metrics;
pub mod recent;
pub mod registry;
pub mod request;

use crate::config::{DEFAULT_REMEMBER_PREDICTIONS, InferenceConfig};
use crate::state::PublishedModel;
use anyhow::Context;
use batcher::{BatchPolicy, Batcher};
use metrics::Metrics;
use registry::ModelRegistry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where and how the endpoint serves.
#[derive(Debug, Clone)]
pub struct InferenceSettings {
    /// TCP address (`None`: no TCP listener).
    pub listen: Option<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    pub pin_version: Option<u64>,
    pub policy: BatchPolicy,
    pub max_body_bytes: usize,
    pub max_examples: usize,
    /// Where labelled examples and corrections posted to the endpoint are kept (`None`: not accepted).
    pub labels: Option<Arc<crate::examples_store::ExampleStore>>,
    /// How many recent predictions' inputs are remembered for corrections.
    pub remember_predictions: usize,
}

impl InferenceSettings {
    pub fn from_config(c: &InferenceConfig) -> anyhow::Result<Self> {
        c.validate()?;
        let listen = if c.listen.is_empty() {
            None
        } else {
            Some(c.listen.parse().with_context(|| format!("inference.listen {:?} is not host:port", c.listen))?)
        };
        Ok(InferenceSettings {
            listen,
            unix_socket: c.unix_socket.clone(),
            pin_version: c.pin_version,
            policy: BatchPolicy {
                max_batch: c.max_batch,
                max_wait: Duration::from_micros(c.max_wait_us),
                queue: c.queue,
            },
            max_body_bytes: c.max_body_bytes,
            max_examples: c.max_examples,
            labels: None,
            remember_predictions: DEFAULT_REMEMBER_PREDICTIONS,
        })
    }

    /// Loopback on an ephemeral port with the default limits (tests, `serve`).
    pub fn loopback() -> Self {
        let mut s = Self::from_config(&InferenceConfig::default()).unwrap_or_else(|_| unreachable!());
        s.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        s
    }
}

/// A running endpoint.
pub struct InferenceService {
    pub registry: Arc<ModelRegistry>,
    pub metrics: Arc<Metrics>,
    /// The bound TCP address (with the real port when 0 was asked for).
    pub local_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl InferenceService {
    /// Waits until the servers stop (after the shutdown signal).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Waits until `version` or a newer one (any version when `None`) is served; an error after `limit`.
    pub async fn wait_for_version(&self, version: Option<u64>, limit: Duration) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(v) = self.registry.version()
                && version.is_none_or(|w| v >= w)
            {
                return Ok(v);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("no model version {version:?} served within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Starts the endpoint: follows `updates` (compiling and swapping versions) and serves until `shutdown` is true.
pub async fn start(
    settings: InferenceSettings,
    updates: watch::Receiver<Option<PublishedModel>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<InferenceService> {
    let registry = Arc::new(ModelRegistry::new(settings.pin_version));
    let metrics = Arc::new(Metrics::new());
    let m2 = metrics.clone();
    let batcher = Batcher::start(settings.policy, Some(Arc::new(move |n, t| m2.batch(n, t))))
        .context("starting the inference worker thread")?;
    let state = app_state::AppState {
        registry: registry.clone(),
        batcher,
        metrics: metrics.clone(),
        max_examples: settings.max_examples,
        labels: settings.labels.clone(),
        recent: Arc::new(recent::RecentPredictions::new(settings.remember_predictions, rand::random())),
    };
    let app = http::router(state, settings.max_body_bytes);
    let mut tasks = vec![tokio::spawn(registry::follow(
        registry.clone(),
        updates,
        settings.policy.max_batch,
        metrics.clone(),
        stopped(shutdown.clone()),
    ))];
    let mut local_addr = None;
    if let Some(addr) = settings.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the inference endpoint {addr}"))?;
        local_addr = Some(listener.local_addr()?);
        tracing::info!(addr = %listener.local_addr()?, "serving predictions over HTTP");
        let (app, stop) = (app.clone(), stopped(shutdown.clone()));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                tracing::error!(error = %e, "inference endpoint failed");
            }
        }));
    }
    #[cfg(unix)]
    if let Some(path) = &settings.unix_socket {
        if path.exists() {
            std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("binding the inference socket {}", path.display()))?;
        tracing::info!(path = %path.display(), "serving predictions on a Unix socket");
        let stop = stopped(shutdown.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                tracing::error!(error = %e, "inference socket failed");
            }
        }));
    }
    Ok(InferenceService { registry, metrics, local_addr, tasks })
}

async fn stopped(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            // The owner is gone: serve until the runtime stops.
            std::future::pending::<()>().await;
        }
    }
}
