//! Serving operator connections (ALPN `fedge-admin/1`, operator certificates only; `net` checks both before
//! handing a connection here): one bidirectional stream per [`AdminRequest`], answered with [`AdminResponse`]s.
//!
//! Reads (status, agents, history, models, export) go to the core or the store; commands (rounds, config, revoke)
//! go to the core as [`AdminCall`]s or `Operator` messages, so the coordinator stays the only one deciding about
//! rounds. This module never panics on what an operator's client sends, and never holds the core waiting on the
//! network: every reply channel is a oneshot the core fills at once.

pub mod settings;

pub use crate::core_msg::{AdminCall, Snapshot};
use crate::core_msg::{CoreMsg, Operator, ServerEvent};
use crate::net::Shared;
use crate::store::Store;
use anyhow::Context;
use fedge_shared::admin::{
    ADMIN_PROTOCOL_VERSION, AdminRequest, AdminResponse, AgentInfo, ModelInfo, Progress, RoundSummary, limits,
};
use fedge_shared::model::Digest;
use fedge_shared::tls::CertInfo;
use fedge_shared::wire;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot, watch};

/// How often `watch` sends a snapshot when nothing happens.
const WATCH_PERIOD: Duration = Duration::from_millis(500);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// [`serve`] as the connection layer calls it ([`crate::net::OperatorService`]).
pub fn service(
    conn: quinn::Connection,
    shared: Arc<Shared>,
    operator: CertInfo,
    shutdown: watch::Receiver<bool>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> {
    Box::pin(async move { serve(&conn, &shared, operator, shutdown).await })
}

/// Serves one operator connection until it closes or the server shuts down.
pub async fn serve(
    conn: &quinn::Connection,
    shared: &Arc<Shared>,
    operator: CertInfo,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (mut send, mut recv) =
        tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await.context("no hello within the time-out")??;
    let hello = wire::read_msg::<AdminRequest>(&mut recv, limits::REQUEST).await?.context("no hello")?;
    match hello {
        AdminRequest::Hello { protocol, software } if protocol == ADMIN_PROTOCOL_VERSION => {
            tracing::info!(operator = %operator.name, %software, remote = %conn.remote_address(), "operator connected");
            let welcome = AdminResponse::Welcome {
                protocol: ADMIN_PROTOCOL_VERSION,
                server: server_version(),
                operator: operator.name.clone(),
            };
            wire::write_msg(&mut send, &welcome, limits::RESPONSE).await?;
            let _ = send.finish();
        }
        other => {
            let reason = match other {
                AdminRequest::Hello { protocol, .. } => format!(
                    "admin protocol version {protocol} is not supported; this server speaks {ADMIN_PROTOCOL_VERSION}"
                ),
                _ => "the first request must be a hello".into(),
            };
            let _ = wire::write_msg(&mut send, &AdminResponse::Error(reason.clone()), limits::RESPONSE).await;
            let _ = send.finish();
            tokio::time::sleep(Duration::from_millis(100)).await;
            conn.close(quinn::VarInt::from_u32(crate::net::CLOSE_PROTOCOL), reason.as_bytes());
            anyhow::bail!(reason);
        }
    }
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => s.context("operator connection")?,
            _ = shutdown.changed() => {
                conn.close(quinn::VarInt::from_u32(0), b"server shutting down");
                return Ok(());
            }
        };
        let shared = shared.clone();
        let name = operator.name.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_stream(send, recv, &shared, &name, shutdown).await {
                tracing::debug!(operator = %name, error = %format!("{e:#}"), "admin request ended");
            }
        });
    }
}

fn server_version() -> String {
    concat!("fedge-server/", env!("CARGO_PKG_VERSION")).into()
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: &Arc<Shared>,
    operator: &str,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Some(request) = wire::read_msg::<AdminRequest>(&mut recv, limits::REQUEST).await? else { return Ok(()) };
    tracing::info!(operator, request = ?request, "admin request");
    match request {
        AdminRequest::Watch => return watch_progress(send, shared, shutdown).await,
        AdminRequest::Export { version } => {
            match export(&shared.store, version).await {
                Ok((model, bytes)) => {
                    let header = AdminResponse::Export { model, len: bytes.len() as u64, digest: Digest::of(&bytes) };
                    wire::write_msg(&mut send, &header, limits::RESPONSE).await?;
                    send.write_all(&bytes).await.map_err(|e| anyhow::anyhow!("write: {e}"))?;
                }
                Err(e) => wire::write_msg(&mut send, &AdminResponse::Error(format!("{e:#}")), limits::RESPONSE).await?,
            }
            let _ = send.finish();
            return Ok(());
        }
        _ => {}
    }
    let response = match answer(request, shared).await {
        Ok(r) => r,
        Err(e) => AdminResponse::Error(format!("{e:#}")),
    };
    wire::write_msg(&mut send, &response, limits::RESPONSE).await?;
    let _ = send.finish();
    Ok(())
}

async fn call<T>(shared: &Shared, make: impl FnOnce(oneshot::Sender<T>) -> AdminCall) -> anyhow::Result<T> {
    let (tx, rx) = oneshot::channel();
    shared.core.send(CoreMsg::Admin(make(tx))).await.map_err(|_| anyhow::anyhow!("server core stopped"))?;
    rx.await.map_err(|_| anyhow::anyhow!("server core stopped"))
}

async fn operator(shared: &Shared, op: Operator, done: &str) -> anyhow::Result<AdminResponse> {
    shared.core.send(CoreMsg::Operator(op)).await.map_err(|_| anyhow::anyhow!("server core stopped"))?;
    Ok(AdminResponse::Done(done.into()))
}

async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store)).await?
}

async fn answer(request: AdminRequest, shared: &Arc<Shared>) -> anyhow::Result<AdminResponse> {
    Ok(match request {
        AdminRequest::Hello { .. } => AdminResponse::Error("already greeted".into()),
        AdminRequest::Status => AdminResponse::Status(call(shared, AdminCall::Snapshot).await?.status),
        AdminRequest::Agents => {
            let snap = call(shared, AdminCall::Snapshot).await?;
            let records = blocking(&shared.store, |s| Ok(s.agents()?)).await?;
            let mut agents: Vec<AgentInfo> = records
                .into_iter()
                .map(|r| AgentInfo {
                    connected: snap.connected.contains(&r.name),
                    name: r.name,
                    fingerprint: r.fingerprint,
                    first_seen_ms: r.first_seen_ms,
                    last_seen_ms: r.last_seen_ms,
                    revoked: r.revoked,
                })
                .collect();
            agents.sort_by(|a, b| a.name.cmp(&b.name));
            AdminResponse::Agents(agents)
        }
        AdminRequest::Revoke { name } => {
            let result = call(shared, |reply| AdminCall::Revoke { name: name.clone(), reply }).await?;
            // Operator sessions under that name close too (the core closes only agent connections).
            shared.revocations.bump();
            match result {
                Ok(true) => AdminResponse::Done(format!("revoked {name}; its connection was closed")),
                Ok(false) => AdminResponse::Done(format!("revoked {name} (it was not connected)")),
                Err(e) => AdminResponse::Error(e),
            }
        }
        AdminRequest::RoundStart { count, target_accuracy } => {
            if let Some(t) = target_accuracy
                && !(t.is_finite() && (0.0..=1.0).contains(&t))
            {
                return Ok(AdminResponse::Error(format!("target accuracy must be in [0, 1], not {t}")));
            }
            AdminResponse::Done(call(shared, |reply| AdminCall::StartRounds { count, target_accuracy, reply }).await?)
        }
        AdminRequest::RoundPause => operator(shared, Operator::Pause, "paused: no new round will start").await?,
        AdminRequest::RoundResume => operator(shared, Operator::Resume, "resumed").await?,
        AdminRequest::RoundAbort => operator(shared, Operator::AbortRound, "the round in flight is aborted").await?,
        AdminRequest::ConfigShow => AdminResponse::Config(call(shared, AdminCall::ConfigShow).await?),
        AdminRequest::ConfigSet { key, value } => {
            match call(shared, |reply| AdminCall::ConfigSet { key, value, reply }).await? {
                Ok(m) => AdminResponse::Done(m),
                Err(e) => AdminResponse::Error(e),
            }
        }
        AdminRequest::History => {
            AdminResponse::History(blocking(&shared.store, |s| Ok(s.rounds()?.iter().map(summary).collect())).await?)
        }
        AdminRequest::Models => AdminResponse::Models(
            blocking(&shared.store, |s| Ok(s.versions()?.iter().map(model_info).collect())).await?,
        ),
        AdminRequest::Watch | AdminRequest::Export { .. } => AdminResponse::Error("not a single-answer request".into()),
    })
}

/// A round record as the operator sees it.
pub fn summary(r: &crate::coordinator::RoundRecord) -> RoundSummary {
    use crate::coordinator::Outcome;
    let fed = r.metrics.federated_eval.as_ref();
    let privacy = r.plan.aggregation.secure_plan().and_then(|sp| sp.privacy);
    RoundSummary {
        round: r.round,
        completed: r.outcome == Outcome::Completed,
        abort_reason: match &r.outcome {
            Outcome::Completed => None,
            Outcome::Aborted(a) => Some(a.to_string()),
        },
        strategy: r.strategy.clone(),
        selected: r.selected.len(),
        participants: r.reported.len(),
        dropouts: r.dropped.len(),
        mean_train_loss: r.metrics.mean_train_loss,
        test_accuracy: r.metrics.test_accuracy,
        test_loss: r.metrics.test_loss,
        duration_ms: r.metrics.duration_ms,
        bytes: r.metrics.update_bytes,
        examples: r.metrics.total_examples,
        new_version: r.new_version,
        started_ms: r.started_ms,
        evaluated_version: r.plan.model_version,
        // A regression round's counts carry no correct answers: its federated metric is the loss (the MSE).
        federated_accuracy: fed
            .filter(|_| r.plan.hyper.loss != fedge_shared::train::Loss::MeanSquaredError)
            .and_then(|f| f.counts.accuracy())
            .map(|a| a as f32),
        federated_loss: fed.and_then(|f| f.counts.mean_loss()).map(|l| l as f32),
        federated_examples: fed.map_or(0, |f| f.counts.examples),
        epsilon: privacy.map(|p| p.epsilon),
        delta: privacy.map(|p| p.delta),
    }
}

fn model_info(m: &crate::store::ModelMeta) -> ModelInfo {
    ModelInfo {
        version: m.version,
        round: m.round,
        params: m.num_params,
        graph: m.graph_digest,
        weights: m.weights_digest,
        test_accuracy: m.metrics.as_ref().and_then(|x| x.test_accuracy),
        test_loss: m.metrics.as_ref().and_then(|x| x.test_loss),
        created_ms: m.created_ms,
    }
}

/// The standalone ONNX of `version` (default: the newest): the graph with the version's weights as initializers.
async fn export(store: &Arc<Store>, version: Option<u64>) -> anyhow::Result<(ModelInfo, Vec<u8>)> {
    blocking(store, move |s| {
        let meta = match version {
            Some(v) => s.model(v).with_context(|| format!("model version {v}"))?,
            None => s.latest()?.context("the store holds no model")?,
        };
        let graph = s.graph(&meta.graph_digest)?.context("the store lost the model's graph")?;
        let weights = s.weights(meta.version)?;
        let model = fedge_shared::train::TrainableModel::from_onnx_bytes(&graph)?;
        let bytes = model.export_with_weights(&weights)?;
        Ok((model_info(&meta), bytes))
    })
    .await
}

fn describe(e: &ServerEvent) -> String {
    match e {
        ServerEvent::AgentJoined { agent } => format!("{agent} joined"),
        ServerEvent::AgentLeft { agent } => format!("{agent} left"),
        ServerEvent::Refused { peer, reason } => format!("{peer} refused: {reason}"),
        ServerEvent::RoundStarted { round, model_version, selected } => {
            format!("round {round} started from version {model_version} with {selected} agents")
        }
        ServerEvent::RoundCompleted(r) => format!(
            "round {} completed: version {}, accuracy {}",
            r.round,
            r.new_version.map_or("-".into(), |v| v.to_string()),
            r.metrics.test_accuracy.map_or("-".into(), |a| format!("{a:.4}"))
        ),
        ServerEvent::RoundAborted(r) => format!("round {} aborted", r.round),
        ServerEvent::SecAggPhase { round, phase, members } => {
            format!("round {round}: secure aggregation phase {phase:?} with {members} agents")
        }
    }
}

/// Sends progress snapshots until the client stops reading or the server shuts down.
async fn watch_progress(
    mut send: quinn::SendStream,
    shared: &Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut events = shared.events.subscribe();
    let mut ticker = tokio::time::interval(WATCH_PERIOD);
    loop {
        let mut lines = vec![];
        let mut finished = vec![];
        tokio::select! {
            _ = ticker.tick() => {}
            e = events.recv() => match e {
                Ok(e) => {
                    lines.push(describe(&e));
                    if let ServerEvent::RoundCompleted(r) | ServerEvent::RoundAborted(r) = &e {
                        finished.push(summary(r));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => lines.push(format!("{n} events missed")),
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = send.stopped() => return Ok(()),
            _ = shutdown.changed() => return Ok(()),
        }
        // Take whatever else is queued, so a burst goes out in one snapshot.
        while let Ok(e) = events.try_recv() {
            lines.push(describe(&e));
            if let ServerEvent::RoundCompleted(r) | ServerEvent::RoundAborted(r) = &e {
                finished.push(summary(r));
            }
        }
        let status = call(shared, AdminCall::Snapshot).await?.status;
        let p = AdminResponse::Progress(Progress { status, events: lines, finished });
        wire::write_msg(&mut send, &p, limits::RESPONSE).await?;
    }
}
