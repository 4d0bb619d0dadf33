//! The agent's side of the federation: connect with mutual TLS, check in, receive the graph and weights, take
//! part in rounds, upload updates, and reconnect with jittered exponential back-off when anything breaks.
//!
//! This is the async shell: it moves messages and bytes and hands learning to a [`Learner`] on a blocking
//! thread. It never panics on what the server sends: a malformed message ends the connection with a logged reason,
//! and the agent connects again.

use crate::learner::{LearnOutcome, Learner};
use crate::state::ModelState;
use anyhow::{Context, anyhow, bail};
use fedge_shared::model::{Digest, weights_from_bytes_checked, weights_to_bytes};
use fedge_shared::protocol::{
    AgentMessage, BlobHeader, BlobKind, CheckIn, DeviceInfo, Hello, PROTOCOL_VERSION, RoundPlan, ServerHello,
    ServerMessage, limits,
};
use fedge_shared::tls::Identity;
use fedge_shared::wire;
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How an agent reaches its server.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub server: SocketAddr,
    /// The name on the server's certificate.
    pub server_name: String,
    pub ca: Vec<CertificateDer<'static>>,
    pub identity: Identity,
    pub idle_timeout: Duration,
    /// First reconnect delay; doubled after each failure up to `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// Something the agent reports to whoever runs it (the demo, tests, the CLI's progress output).
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    Connected,
    Disconnected { reason: String },
    Refused { reason: String },
    ModelReceived { version: u64 },
    Trained { round: u64, examples: u64, train_loss: f32, holdout_accuracy: Option<f32> },
    RoundEnded { round: u64, completed: bool },
}

/// An edge agent's connection loop.
pub struct Agent {
    settings: ClientSettings,
    state: Arc<Mutex<ModelState>>,
    learner: Arc<Mutex<Box<dyn Learner>>>,
    events: Option<mpsc::UnboundedSender<AgentEvent>>,
    /// Each newly held model version, for inference.
    models: Option<watch::Sender<Option<crate::state::PublishedModel>>>,
}

enum Inbound {
    Control(ServerMessage),
    Blob(BlobHeader, Vec<u8>),
    Learned(u64, anyhow::Result<LearnOutcome>),
    Failed(String),
}

/// Why a session ended.
enum SessionEnd {
    /// Reconnect after back-off.
    Retry(String),
    /// The server refused us for good (bad protocol version, revoked); retrying later may still help an operator.
    Refused(String),
    Shutdown,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    pub fn new(settings: ClientSettings, state: ModelState, learner: Box<dyn Learner>) -> Self {
        Agent {
            settings,
            state: Arc::new(Mutex::new(state)),
            learner: Arc::new(Mutex::new(learner)),
            events: None,
            models: None,
        }
    }

    /// Reports progress on `tx`.
    pub fn with_events(mut self, tx: mpsc::UnboundedSender<AgentEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    /// Publishes each newly held model version (graph and weights) on `tx`, e.g. for the inference endpoint.
    pub fn with_model_updates(mut self, tx: watch::Sender<Option<crate::state::PublishedModel>>) -> Self {
        self.models = Some(tx);
        self
    }

    fn publish_model(&self) {
        if let Some(tx) = &self.models
            && let Ok(m) = lock(&self.state).published(None)
        {
            tx.send_replace(Some(m));
        }
    }

    fn emit(&self, e: AgentEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// The global version currently held.
    pub fn held_version(&self) -> Option<u64> {
        lock(&self.state).version()
    }

    /// Runs until `shutdown` turns true, reconnecting as needed.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let client_cfg = fedge_shared::tls::client_config(
            &self.settings.ca,
            Some(&self.settings.identity),
            fedge_shared::protocol::ALPN_AGENT,
            self.settings.idle_timeout,
        )?;
        let bind: SocketAddr = if self.settings.server.is_ipv6() { "[::]:0".parse()? } else { "0.0.0.0:0".parse()? };
        let mut endpoint = quinn::Endpoint::client(bind).context("binding the agent's UDP socket")?;
        endpoint.set_default_client_config(client_cfg);
        let mut backoff = self.settings.backoff_initial;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let end = tokio::select! {
                end = self.session(&endpoint, &mut backoff) => end,
                _ = shutdown.changed() => SessionEnd::Shutdown,
            };
            match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Retry(reason) => {
                    tracing::info!(%reason, "disconnected; reconnecting");
                    self.emit(AgentEvent::Disconnected { reason });
                }
                SessionEnd::Refused(reason) => {
                    tracing::error!(%reason, "the server refused this agent");
                    self.emit(AgentEvent::Refused { reason });
                }
            }
            let jitter = rand::random::<f64>() * 0.5 + 0.75;
            let wait = backoff.mul_f64(jitter);
            backoff = (backoff * 2).min(self.settings.backoff_max);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
        endpoint.close(quinn::VarInt::from_u32(0), b"agent shutting down");
        endpoint.wait_idle().await;
        Ok(())
    }

    async fn session(&self, endpoint: &quinn::Endpoint, backoff: &mut Duration) -> SessionEnd {
        let conn = match endpoint.connect(self.settings.server, &self.settings.server_name) {
            Ok(c) => match c.await {
                Ok(c) => c,
                Err(e) => return SessionEnd::Retry(format!("connect: {e}")),
            },
            Err(e) => return SessionEnd::Retry(format!("connect: {e}")),
        };
        match self.serve(&conn, backoff).await {
            Ok(()) => SessionEnd::Retry("server closed the session".into()),
            Err(e) => {
                let msg = format!("{e:#}");
                if let Some(quinn::ConnectionError::ApplicationClosed(c)) = conn.close_reason() {
                    let reason = String::from_utf8_lossy(&c.reason).into_owned();
                    if c.error_code == quinn::VarInt::from_u32(crate::CLOSE_REFUSED) {
                        return SessionEnd::Refused(reason);
                    }
                    return SessionEnd::Retry(reason);
                }
                conn.close(quinn::VarInt::from_u32(1), msg.as_bytes());
                if msg.contains("refused") { SessionEnd::Refused(msg) } else { SessionEnd::Retry(msg) }
            }
        }
    }

    async fn serve(&self, conn: &quinn::Connection, backoff: &mut Duration) -> anyhow::Result<()> {
        let (mut send, mut recv) = conn.open_bi().await?;
        wire::write_msg(
            &mut send,
            &Hello { protocol: PROTOCOL_VERSION, software: crate::SOFTWARE.into() },
            limits::HELLO,
        )
        .await?;
        match wire::read_msg::<ServerHello>(&mut recv, limits::HELLO).await? {
            Some(ServerHello::Welcome { protocol, agent, .. }) if protocol == PROTOCOL_VERSION => {
                tracing::info!(%agent, "joined the federation");
            }
            Some(ServerHello::Welcome { protocol, .. }) => {
                bail!("refused: server speaks protocol {protocol}, this agent {PROTOCOL_VERSION}")
            }
            Some(ServerHello::Refused { protocol, reason }) => {
                bail!("refused by the server (its protocol {protocol}): {reason}")
            }
            None => bail!("server closed the control stream during the hello"),
        }
        *backoff = self.settings.backoff_initial;
        self.emit(AgentEvent::Connected);
        let checkin = {
            let state = lock(&self.state);
            CheckIn {
                model_version: state.version(),
                graph: state.graph_digest(),
                examples: lock(&self.learner).examples(),
                device: DeviceInfo {
                    arch: std::env::consts::ARCH.into(),
                    cores: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
                },
            }
        };
        wire::write_msg(&mut send, &AgentMessage::CheckIn(checkin), limits::CONTROL).await?;

        let (tx, mut rx) = mpsc::channel::<Inbound>(16);
        let reader = tokio::spawn(read_control(recv, tx.clone()));
        let blobs = tokio::spawn(read_blobs(conn.clone(), tx.clone()));
        let result = self.event_loop(conn, &mut send, &mut rx, tx).await;
        reader.abort();
        blobs.abort();
        result
    }

    async fn event_loop(
        &self,
        conn: &quinn::Connection,
        send: &mut quinn::SendStream,
        rx: &mut mpsc::Receiver<Inbound>,
        tx: mpsc::Sender<Inbound>,
    ) -> anyhow::Result<()> {
        let mut pending: Option<RoundPlan> = None;
        let mut training: Option<u64> = None;
        while let Some(msg) = rx.recv().await {
            match msg {
                Inbound::Failed(reason) => bail!(reason),
                Inbound::Control(ServerMessage::Model(a)) => {
                    tracing::debug!(version = a.version, "server announced a model");
                }
                Inbound::Control(ServerMessage::Plan(plan)) => {
                    tracing::info!(round = plan.round, version = plan.model_version, "selected for a round");
                    pending = Some(plan);
                }
                Inbound::Control(ServerMessage::RoundEnd { round, completed, reason, .. }) => {
                    tracing::info!(round, completed, reason = reason.as_deref().unwrap_or(""), "round ended");
                    if pending.as_ref().is_some_and(|p| p.round == round) {
                        pending = None;
                    }
                    self.emit(AgentEvent::RoundEnded { round, completed });
                }
                Inbound::Control(ServerMessage::Bye { reason }) => bail!("server said goodbye: {reason}"),
                Inbound::Blob(header, body) => self.take_blob(header, body).await?,
                Inbound::Learned(round, outcome) => {
                    training = None;
                    match outcome {
                        Ok(out) => self.upload(conn, round, out).await?,
                        Err(e) => {
                            tracing::error!(round, error = %format!("{e:#}"), "local training failed");
                            let m = AgentMessage::Abandon { round, reason: format!("{e:#}") };
                            wire::write_msg(send, &m, limits::CONTROL).await?;
                        }
                    }
                }
            }
            // Start training once the plan's model is held and nothing else is training.
            if training.is_none()
                && let Some(plan) = pending.as_ref()
                && self.ready_for(plan)
                && let Some(plan) = pending.take()
            {
                training = Some(plan.round);
                self.start_learning(plan, tx.clone());
            }
        }
        Err(anyhow!("connection lost"))
    }

    fn ready_for(&self, plan: &RoundPlan) -> bool {
        let state = lock(&self.state);
        state.graph.is_some() && state.version() == Some(plan.model_version)
    }

    fn start_learning(&self, plan: RoundPlan, tx: mpsc::Sender<Inbound>) {
        let learner = self.learner.clone();
        let global = lock(&self.state).weights.as_ref().map(|w| w.weights.clone());
        tokio::task::spawn_blocking(move || {
            let outcome = match global {
                Some(global) => lock(&learner).learn(&global, &plan.train),
                None => Err(anyhow!("no weights held")),
            };
            let _ = tx.blocking_send(Inbound::Learned(plan.round, outcome));
        });
    }

    async fn take_blob(&self, header: BlobHeader, body: Vec<u8>) -> anyhow::Result<()> {
        match header.kind {
            BlobKind::Graph => {
                let learner = self.learner.clone();
                let bytes = body.clone();
                tokio::task::spawn_blocking(move || lock(&learner).set_graph(&bytes))
                    .await
                    .map_err(|e| anyhow!("graph loading panicked: {e}"))?
                    .context("the server's ONNX graph cannot be trained here")?;
                lock(&self.state).set_graph(body)?;
                tracing::info!("received the federation's graph");
                self.publish_model();
            }
            BlobKind::Weights { version } => {
                let digest = header.digest.ok_or_else(|| anyhow!("weights blob without a digest"))?;
                let expected = lock(&self.learner).num_params();
                let weights = weights_from_bytes_checked(&body, expected, &digest)?;
                lock(&self.state).set_weights(version, digest, &body, weights)?;
                self.publish_model();
                self.emit(AgentEvent::ModelReceived { version });
                tracing::info!(version, "received global weights");
            }
            BlobKind::Update { .. } => bail!("protocol violation: the server sent an update blob"),
        }
        Ok(())
    }

    async fn upload(&self, conn: &quinn::Connection, round: u64, out: LearnOutcome) -> anyhow::Result<()> {
        let body = weights_to_bytes(&out.delta);
        let header = BlobHeader {
            kind: BlobKind::Update {
                round,
                examples: out.examples,
                train_loss: out.train_loss,
                holdout_accuracy: out.holdout_accuracy,
            },
            len: body.len() as u64,
            digest: None,
        };
        wire::send_blob(conn, &header, &body).await?;
        self.emit(AgentEvent::Trained {
            round,
            examples: out.examples,
            train_loss: out.train_loss,
            holdout_accuracy: out.holdout_accuracy,
        });
        tracing::info!(round, loss = out.train_loss, "uploaded update");
        Ok(())
    }
}

async fn read_control(mut recv: quinn::RecvStream, tx: mpsc::Sender<Inbound>) {
    loop {
        let m = match wire::read_msg::<ServerMessage>(&mut recv, limits::CONTROL).await {
            Ok(Some(m)) => Inbound::Control(m),
            Ok(None) => Inbound::Failed("server closed the control stream".into()),
            Err(e) => Inbound::Failed(format!("control stream: {e}")),
        };
        let stop = matches!(m, Inbound::Failed(_));
        if tx.send(m).await.is_err() || stop {
            return;
        }
    }
}

async fn read_blobs(conn: quinn::Connection, tx: mpsc::Sender<Inbound>) {
    loop {
        let mut recv = match conn.accept_uni().await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Inbound::Failed(format!("connection: {e}"))).await;
                return;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let m = match wire::read_blob_header(&mut recv).await {
                Ok(h) => match wire::read_blob_body(&mut recv, &h).await {
                    Ok(body) => Inbound::Blob(h, body),
                    Err(e) => Inbound::Failed(format!("blob: {e}")),
                },
                Err(e) => Inbound::Failed(format!("blob header: {e}")),
            };
            let _ = tx.send(m).await;
        });
    }
}

/// The digest an agent reports for weights it holds (for logs and tests).
pub fn digest_of(weights: &[f32]) -> Digest {
    Digest::of(&weights_to_bytes(weights))
}
