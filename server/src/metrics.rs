//! The server's Prometheus metrics (OpenMetrics text at `GET /metrics` on the `metrics` address of server.toml):
//! rounds completed and aborted, phase durations, agents connected, drop-outs, bytes in and out, aggregation
//! throughput, the last round's id, training loss and the new model's test accuracy and loss (one value per
//! round: a gauge that holds until the next round ends), and the federated evaluation (accuracy, loss and
//! examples of the agents' held-out data, with the model version they were measured on).
//! `configs/grafana/fedge.json` charts them; a test checks that every metric its queries name is exposed here or
//! by the agent.
//!
//! The numbers are derived from [`ServerEvent`]s (see [`follow`]) plus the bytes the core sends
//! ([`Metrics::sent`]). This module only observes: it never changes what the server does, and an HTTP failure
//! here never stops the server.

use crate::core_msg::ServerEvent;
use axum::Router;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::{broadcast, watch};

/// The label of a phase-duration observation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

fn phase_histogram() -> Histogram {
    // 10 ms to about 45 min.
    Histogram::new(exponential_buckets(0.01, 2.0, 18))
}

/// The registry and its metrics (cheap to clone handles; all atomics).
pub struct Metrics {
    registry: Registry,
    pub rounds_completed: Counter,
    pub rounds_aborted: Counter,
    pub phase_seconds: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    pub agents_connected: Gauge,
    pub dropouts: Counter,
    pub refused: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub aggregation_bytes_per_second: Gauge<f64, AtomicU64>,
    pub model_version: Gauge,
    pub test_accuracy: Gauge<f64, AtomicU64>,
    pub test_loss: Gauge<f64, AtomicU64>,
    pub train_loss: Gauge<f64, AtomicU64>,
    pub last_round: Gauge,
    pub federated_accuracy: Gauge<f64, AtomicU64>,
    pub federated_loss: Gauge<f64, AtomicU64>,
    pub federated_examples: Gauge,
    pub federated_version: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fedge");
        let m = Metrics {
            rounds_completed: Counter::default(),
            rounds_aborted: Counter::default(),
            phase_seconds: Family::new_with_constructor(phase_histogram as fn() -> Histogram),
            agents_connected: Gauge::default(),
            dropouts: Counter::default(),
            refused: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            aggregation_bytes_per_second: Gauge::default(),
            model_version: Gauge::default(),
            test_accuracy: Gauge::default(),
            test_loss: Gauge::default(),
            train_loss: Gauge::default(),
            last_round: Gauge::default(),
            federated_accuracy: Gauge::default(),
            federated_loss: Gauge::default(),
            federated_examples: Gauge::default(),
            federated_version: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("rounds_completed", "Rounds that produced a new model", m.rounds_completed.clone());
        registry.register("rounds_aborted", "Rounds that ended without a new model", m.rounds_aborted.clone());
        registry.register(
            "phase_duration_seconds",
            "Duration of round phases (collecting: plans out to the last update or the deadline; committing: \
             aggregation, evaluation and the durable commit)",
            m.phase_seconds.clone(),
        );
        registry.register("agents_connected", "Agents holding a connection", m.agents_connected.clone());
        registry.register("dropouts", "Selected agents that did not contribute to their round", m.dropouts.clone());
        registry.register("refused_connections", "Peers refused at connection time", m.refused.clone());
        registry.register("update_bytes_in", "Update bytes received in rounds", m.bytes_in.clone());
        registry.register("model_bytes_out", "Graph and weights bytes sent to agents", m.bytes_out.clone());
        registry.register(
            "aggregation_bytes_per_second",
            "Update bytes folded per second of the last completed round's collecting phase",
            m.aggregation_bytes_per_second.clone(),
        );
        registry.register("model_version", "The newest global model version", m.model_version.clone());
        registry.register("test_accuracy", "Test accuracy of the newest global model", m.test_accuracy.clone());
        registry.register("test_loss", "Test loss of the newest global model", m.test_loss.clone());
        registry.register(
            "train_loss",
            "Example-weighted mean training loss the agents reported in the last completed round",
            m.train_loss.clone(),
        );
        registry.register("last_round", "Id of the last round that ended (completed or aborted)", m.last_round.clone());
        registry.register(
            "federated_accuracy",
            "Accuracy of a global model on the agents' held-out examples (federated evaluation; the version is \
             fedge_federated_evaluated_version)",
            m.federated_accuracy.clone(),
        );
        registry.register("federated_loss", "Mean loss of the federated evaluation", m.federated_loss.clone());
        registry.register(
            "federated_examples",
            "Held-out examples in the federated evaluation",
            m.federated_examples.clone(),
        );
        registry.register(
            "federated_evaluated_version",
            "The global model version the federated evaluation measured",
            m.federated_version.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts bytes the server sends to agents.
    pub fn sent(&self, bytes: u64) {
        self.bytes_out.inc_by(bytes);
    }

    /// Updates the metrics from one server event; `now_ms` is unix milliseconds (the clock the round records use).
    pub fn observe(&self, event: &ServerEvent, now_ms: u64) {
        match event {
            ServerEvent::AgentJoined { .. } => {
                self.agents_connected.inc();
            }
            ServerEvent::AgentLeft { .. } => {
                self.agents_connected.dec();
            }
            ServerEvent::Refused { .. } => {
                self.refused.inc();
            }
            ServerEvent::RoundStarted { .. } | ServerEvent::SecAggPhase { .. } => {}
            ServerEvent::RoundCompleted(r) | ServerEvent::RoundAborted(r) => {
                let completed = matches!(event, ServerEvent::RoundCompleted(_));
                self.last_round.set(i64::try_from(r.round).unwrap_or(i64::MAX));
                if completed {
                    self.rounds_completed.inc();
                } else {
                    self.rounds_aborted.inc();
                }
                self.dropouts.inc_by(r.dropped.len() as u64);
                self.bytes_in.inc_by(r.metrics.update_bytes);
                let collecting = r.ended_ms.saturating_sub(r.started_ms) as f64 / 1000.0;
                self.phase_seconds.get_or_create(&PhaseLabel { phase: "collecting".into() }).observe(collecting);
                if let Some(m) = &r.metrics.secagg {
                    for (phase, ms) in [
                        ("secagg_advertise", m.advertise_ms),
                        ("secagg_share", m.share_ms),
                        ("secagg_masked_input", m.masked_ms),
                        ("secagg_unmask", m.unmask_ms),
                    ] {
                        self.phase_seconds
                            .get_or_create(&PhaseLabel { phase: phase.into() })
                            .observe(ms as f64 / 1000.0);
                    }
                }
                if completed {
                    let committing = now_ms.saturating_sub(r.ended_ms) as f64 / 1000.0;
                    self.phase_seconds.get_or_create(&PhaseLabel { phase: "committing".into() }).observe(committing);
                    if collecting > 0.0 {
                        self.aggregation_bytes_per_second.set(r.metrics.update_bytes as f64 / collecting);
                    }
                    if let Some(v) = r.new_version {
                        self.model_version.set(v as i64);
                    }
                    if let Some(a) = r.metrics.test_accuracy {
                        self.test_accuracy.set(a as f64);
                    }
                    if let Some(l) = r.metrics.test_loss {
                        self.test_loss.set(l as f64);
                    }
                    if let Some(l) = r.metrics.mean_train_loss {
                        self.train_loss.set(l as f64);
                    }
                    if let Some(f) = &r.metrics.federated_eval {
                        self.federated_accuracy.set(f.counts.accuracy().unwrap_or(0.0));
                        self.federated_loss.set(f.counts.mean_loss().unwrap_or(0.0));
                        self.federated_examples.set(i64::try_from(f.counts.examples).unwrap_or(i64::MAX));
                        self.federated_version.set(i64::try_from(f.model_version).unwrap_or(i64::MAX));
                    }
                }
            }
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("metrics encoding failed");
        }
        out
    }
}

/// Feeds server events into `metrics` until the server shuts down.
pub async fn follow(
    mut events: broadcast::Receiver<ServerEvent>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let e = tokio::select! {
            e = events.recv() => e,
            _ = shutdown.changed() => return,
        };
        match e {
            Ok(e) => metrics.observe(&e, crate::clock::wall_ms()),
            Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "metrics missed events"),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Binds `addr` and serves `GET /metrics` until shutdown. Returns the bound address and the serving task.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    metrics.encode(),
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
    tracing::info!(%local, "metrics at http://{local}/metrics");
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::{AggregationMode, Dropped, Outcome, RoundMetrics, RoundPlan, RoundRecord, TrainHyper};

    fn record(outcome: Outcome) -> RoundRecord {
        RoundRecord {
            round: 1,
            plan: RoundPlan {
                round: 1,
                model_version: 0,
                hyper: TrainHyper::default(),
                deadline_ms: 1000,
                aggregation: AggregationMode::Plain,
            },
            strategy: "fedavg".into(),
            selected: vec!["a".into(), "b".into()],
            reported: vec![],
            dropped: vec![Dropped { agent: "b".into(), reason: "gone".into() }],
            outcome,
            metrics: RoundMetrics {
                update_bytes: 4000,
                duration_ms: 2000,
                mean_train_loss: Some(0.75),
                test_accuracy: Some(0.5),
                test_loss: Some(1.25),
                federated_eval: Some(fedge_shared::fedeval::FederatedEval {
                    model_version: 0,
                    agents: 2,
                    counts: fedge_shared::fedeval::EvalCounts { correct: 30, examples: 40, loss_sum: 20.0 },
                }),
                ..Default::default()
            },
            started_ms: 10_000,
            ended_ms: 12_000,
            new_version: Some(1),
        }
    }

    fn value(text: &str, name: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    }

    #[test]
    fn round_events_become_counters_durations_and_throughput() {
        let m = Metrics::new();
        m.observe(&ServerEvent::AgentJoined { agent: "a".into() }, 0);
        m.observe(&ServerEvent::AgentJoined { agent: "b".into() }, 0);
        m.observe(&ServerEvent::AgentLeft { agent: "b".into() }, 0);
        m.observe(&ServerEvent::RoundCompleted(Box::new(record(Outcome::Completed))), 12_500);
        m.observe(
            &ServerEvent::RoundAborted(Box::new(record(Outcome::Aborted(crate::coordinator::AbortReason::Operator)))),
            13_000,
        );
        m.sent(123);
        let text = m.encode();
        assert_eq!(value(&text, "fedge_rounds_completed_total"), 1.0);
        assert_eq!(value(&text, "fedge_rounds_aborted_total"), 1.0);
        assert_eq!(value(&text, "fedge_agents_connected"), 1.0);
        assert_eq!(value(&text, "fedge_dropouts_total"), 2.0);
        assert_eq!(value(&text, "fedge_update_bytes_in_total"), 8000.0);
        assert_eq!(value(&text, "fedge_model_bytes_out_total"), 123.0);
        assert_eq!(value(&text, "fedge_aggregation_bytes_per_second"), 2000.0);
        assert_eq!(value(&text, "fedge_phase_duration_seconds_count{phase=\"collecting\"}"), 2.0);
        assert_eq!(value(&text, "fedge_phase_duration_seconds_sum{phase=\"committing\"}"), 0.5);
        // The completed round's numbers; the aborted one changes only the last round id.
        assert_eq!(value(&text, "fedge_train_loss"), 0.75);
        assert_eq!(value(&text, "fedge_test_accuracy"), 0.5);
        assert_eq!(value(&text, "fedge_test_loss"), 1.25);
        assert_eq!(value(&text, "fedge_last_round"), 1.0);
        assert_eq!(value(&text, "fedge_federated_accuracy"), 0.75);
        assert_eq!(value(&text, "fedge_federated_loss"), 0.5);
        assert_eq!(value(&text, "fedge_federated_examples"), 40.0);
        assert_eq!(value(&text, "fedge_federated_evaluated_version"), 0.0);
    }
}
