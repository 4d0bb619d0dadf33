//! The agent's QUIC shell: connect with mutual TLS, say hello and check in, read the control stream and the blob
//! streams, and carry out what the round protocol ([`crate::session::Session`]) decides: send its messages, train
//! on a blocking thread, upload plain or masked updates, and reconnect with jittered exponential back-off when
//! anything breaks.
//!
//! It makes no decision about rounds (those are the session's, tested without sockets) and never panics on what
//! the server sends: a malformed message ends the connection with a logged reason, and the agent connects again.
//! Learning and masking run on blocking threads, never on the runtime; the masked vector streams out as it is
//! computed, at the pace QUIC's flow control allows. The failpoints of the fault tests (`crate::crash`) sit just
//! before each secure-aggregation message and each upload leaves.

use crate::learner::{LearnOutcome, Learner};
use crate::session::{Env, Holdings, Input, Output, Session, SessionConfig};
use crate::state::ModelState;
use anyhow::{Context, anyhow, bail};
use fedge_shared::delta_encoding::DeltaEncoding;
use fedge_shared::model::{Digest, weights_from_bytes, weights_to_bytes};
use fedge_shared::model_diff;
use fedge_shared::protocol::{
    AgentMessage, BlobHeader, BlobKind, CheckIn, DeviceInfo, Hello, PROTOCOL_VERSION, RoundPlan, ServerHello,
    ServerMessage, TrainPlan, limits,
};
use fedge_shared::secagg::{EcdsaP256Signer, MaskedStream, RoundFloor, SecAggParams};
use fedge_shared::tls::Identity;
use fedge_shared::wire;
use rand::rngs::{OsRng, StdRng};
use rand::{Rng, SeedableRng};
use rustls::pki_types::{CertificateDer, UnixTime};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub use crate::agent_event::AgentEvent;
pub use crate::peer_check::{peer_key_table, peer_key_table_of, peer_verifier};
pub use crate::session::PLAIN_ROUND_REFUSED;

/// How an agent reaches its server.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Where the federation is served: one server, or several aggregators of the same federation (or one DNS name
    /// with several records). The agent starts at a random one (so a fleet spreads over them) and moves on to the
    /// next whenever a connection cannot be made or ends; it waits longer between attempts only once it has tried
    /// every address.
    pub servers: Vec<SocketAddr>,
    /// The name on the server's certificate.
    pub server_name: String,
    pub ca: Vec<CertificateDer<'static>>,
    pub identity: Identity,
    pub idle_timeout: Duration,
    /// First reconnect delay; doubled after each failure up to `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Refuse every round whose plan has no secure aggregation ([`PLAIN_ROUND_REFUSED`]).
    pub require_secure_aggregation: bool,
    /// This agent's own differential-privacy budget ([`crate::privacy_budget`]): with it, the agent refuses rounds
    /// without noise and rounds past its `max_epsilon`, whatever the server's budget says.
    pub privacy: Option<crate::privacy_budget::AgentPrivacy>,
    /// The least this agent accepts of a secure round ([`RoundFloor`]): smaller cohorts and lower thresholds are
    /// refused before any key is advertised.
    pub floor: RoundFloor,
}

/// An edge agent's connection loop.
pub struct Agent {
    settings: ClientSettings,
    state: Arc<Mutex<ModelState>>,
    learner: Arc<Mutex<Box<dyn Learner>>>,
    events: Option<mpsc::UnboundedSender<AgentEvent>>,
    /// Each newly held model version, for inference.
    models: Option<watch::Sender<Option<crate::state::PublishedModel>>>,
    /// The byte length of a weights vector of the held graph (0 until a graph is held): a weights blob of another
    /// length is refused from its header, before its body is read.
    weights_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// This agent's own privacy budget ([`ClientSettings::privacy`]), opened when it starts running.
    budget: Mutex<Option<crate::privacy_budget::PrivacyBudget>>,
    /// Set when the server's differences could not be applied: the next check-in asks for the whole model.
    whole_model_next: std::sync::atomic::AtomicBool,
    /// Which of `settings.servers` the next connection goes to (counting up from a random start, modulo the length).
    tried: std::sync::atomic::AtomicUsize,
    /// The random start of `tried`.
    first: usize,
}

enum Inbound {
    Control(ServerMessage),
    Blob(BlobHeader, Vec<u8>),
    Learned(u64, Result<LearnOutcome, String>),
    Failed(String),
}

/// What the agent holds, as the session asks it.
struct Held<'a>(&'a Agent);

impl Holdings for Held<'_> {
    fn check_round(&self, round: u64, seed: u64) -> Result<(), String> {
        lock(&self.0.state).check_round(round, seed).map_err(|e| e.to_string())
    }

    fn check_plan(&self, plan: &TrainPlan) -> Result<(), String> {
        // A learner still training is checked when it learns.
        self.0.learner.try_lock().map_or(Ok(()), |l| l.check_plan(plan).map_err(|e| format!("{e:#}")))
    }

    fn holds(&self, plan: &RoundPlan) -> bool {
        self.0.ready_for(plan)
    }
}

/// Aborts a spawned task when dropped (so a cancelled session closes its connection).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        let first = rand::random::<u16>() as usize;
        let weights_bytes = learner.num_params().map_or(0, |p| 4 * p as u64);
        Agent {
            settings,
            state: Arc::new(Mutex::new(state)),
            learner: Arc::new(Mutex::new(learner)),
            events: None,
            models: None,
            weights_bytes: Arc::new(std::sync::atomic::AtomicU64::new(weights_bytes)),
            budget: Mutex::new(None),
            whole_model_next: std::sync::atomic::AtomicBool::new(false),
            tried: std::sync::atomic::AtomicUsize::new(first),
            first,
        }
    }

    /// The address the next connection goes to, and whether it closes a pass over every address (then the back-off
    /// grows).
    fn next_server(&self) -> Option<(SocketAddr, bool)> {
        let n = self.settings.servers.len();
        let tried = self.tried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let addr = *self.settings.servers.get(tried % n.max(1))?;
        Some((addr, (tried.wrapping_sub(self.first) + 1).is_multiple_of(n)))
    }

    /// Charges a secure round over `len` values to this agent's own privacy budget, if it keeps one
    /// ([`crate::privacy_budget`]); refuses a round without noise or clipping, or one past the budget.
    /// The budget file is written (and synced) on a blocking thread, never on the runtime.
    async fn charge_privacy(&self, params: &SecAggParams, len: usize) -> anyhow::Result<()> {
        let charge = {
            let budget = lock(&self.budget);
            let Some(b) = budget.as_ref() else { return Ok(()) };
            let cost = b.round_cost(params, len).map_err(anyhow::Error::msg)?;
            b.prepare(&cost)?
        };
        let charge = tokio::task::spawn_blocking(move || charge.write().map(|()| charge))
            .await
            .context("the privacy budget's writer")??;
        if let Some(b) = lock(&self.budget).as_mut() {
            b.commit(charge);
            tracing::info!(epsilon = b.epsilon().unwrap_or(f64::NAN), "this agent's privacy budget charged");
        }
        Ok(())
    }

    /// Notes the byte length of the held graph's weights (`params` values), which bounds every weights blob from now
    /// on.
    fn note_weights_len(&self, params: Option<usize>) {
        let bytes = params.map_or(0, |p| 4 * p as u64);
        self.weights_bytes.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The held graph's parameter count, as last noted (`None` until a graph is held). The event loop reads this,
    /// never the learner: a training holds the learner's lock for as long as it runs, and waiting for it there would
    /// stall the connection (keep-alives, the next plan, the new model) until the training ends.
    fn params(&self) -> Option<usize> {
        let bytes = self.weights_bytes.load(std::sync::atomic::Ordering::Relaxed);
        (bytes > 0).then_some((bytes / 4) as usize)
    }

    /// The learner's example count, or `fallback` (the count last declared) while a training holds the learner.
    fn examples_now(&self, fallback: u64) -> u64 {
        match self.learner.try_lock() {
            Ok(l) => l.examples(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().examples(),
            Err(std::sync::TryLockError::WouldBlock) => fallback,
        }
    }

    /// What this agent holds, as told to the server.
    fn check_in(&self, examples: u64) -> CheckIn {
        let state = lock(&self.state);
        // After differences that could not be applied, no version: the server sends the whole newest one.
        let whole = self.whole_model_next.load(std::sync::atomic::Ordering::Relaxed);
        CheckIn {
            model_version: state.version().filter(|_| !whole),
            graph: state.graph_digest(),
            examples,
            device: DeviceInfo {
                arch: std::env::consts::ARCH.into(),
                cores: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            },
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
        if self.settings.servers.is_empty() {
            bail!("no server address to connect to");
        }
        let ipv6 = self.settings.servers.iter().any(SocketAddr::is_ipv6);
        let bind: SocketAddr = if ipv6 { "[::]:0".parse()? } else { "0.0.0.0:0".parse()? };
        let mut endpoint = client_endpoint(bind).context("binding the agent's UDP socket")?;
        endpoint.set_default_client_config(client_cfg);
        if let Some(p) = self.settings.privacy {
            let dir = lock(&self.state).dir().map(std::path::Path::to_path_buf);
            let budget = crate::privacy_budget::PrivacyBudget::open(p, dir.as_deref())?;
            tracing::info!(spent = budget.epsilon().unwrap_or(f64::NAN), max = p.max_epsilon, "privacy budget");
            *lock(&self.budget) = Some(budget);
        }
        let signer = EcdsaP256Signer::from_pkcs8(self.settings.identity.key_pkcs8())
            .context("this agent's certificate key cannot sign secure-aggregation keys")?;
        let mut session = Session::new(SessionConfig {
            require_secure_aggregation: self.settings.require_secure_aggregation,
            floor: self.settings.floor,
            signer,
            verifier: crate::peer_check::peer_verifier(&self.settings.ca)?,
            ca: self.settings.ca.clone(),
        });
        self.restore_graph().await;
        let mut backoff = self.settings.backoff_initial;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let Some((server, pass_done)) = self.next_server() else { bail!("no server address to connect to") };
            let end = tokio::select! {
                end = self.connection(&endpoint, server, &mut backoff, &mut session) => end,
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
            // The next address is tried after the first delay; only a pass over every address makes the wait grow.
            let jitter = rand::random::<f64>() * 0.5 + 0.75;
            let wait = if pass_done { backoff } else { self.settings.backoff_initial }.mul_f64(jitter);
            if pass_done {
                backoff = (backoff * 2).min(self.settings.backoff_max);
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
        endpoint.close(quinn::VarInt::from_u32(0), b"agent shutting down");
        endpoint.wait_idle().await;
        Ok(())
    }

    /// A restarted agent holds the federation's graph on disk, and the server does not send it again: hand it to
    /// the learner before the first round. A graph the learner refuses is dropped, so that the server resends one.
    async fn restore_graph(&self) {
        let Some((_, graph)) = lock(&self.state).graph.clone() else { return };
        let learner = self.learner.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let mut l = lock(&learner);
            l.set_graph(&graph).map(|()| l.num_params())
        })
        .await;
        match loaded {
            Ok(Ok(params)) => {
                self.note_weights_len(params);
                tracing::info!("restored the federation's graph from the state directory")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "the stored graph cannot be trained here; asking for it again");
                lock(&self.state).graph = None;
            }
            Err(e) => tracing::warn!(error = %e, "restoring the stored graph panicked"),
        }
    }

    async fn connection(
        &self,
        endpoint: &quinn::Endpoint,
        server: SocketAddr,
        backoff: &mut Duration,
        session: &mut Session,
    ) -> SessionEnd {
        tracing::debug!(%server, "connecting");
        let conn = match endpoint.connect(server, &self.settings.server_name) {
            Ok(c) => match c.await {
                Ok(c) => c,
                Err(e) => {
                    return match handshake_refusal(&e) {
                        Some(why) => SessionEnd::Refused(why),
                        None => SessionEnd::Retry(format!("connect: {e}")),
                    };
                }
            },
            Err(e) => return SessionEnd::Retry(format!("connect: {e}")),
        };
        match self.serve(&conn, backoff, session).await {
            Ok(()) => SessionEnd::Retry("server closed the session".into()),
            Err(e) => {
                let msg = format!("{e:#}");
                match conn.close_reason() {
                    Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                        let reason = String::from_utf8_lossy(&c.reason).into_owned();
                        if c.error_code == quinn::VarInt::from_u32(crate::CLOSE_REFUSED) {
                            return SessionEnd::Refused(reason);
                        }
                        return SessionEnd::Retry(reason);
                    }
                    // TLS 1.3 lets the server check this agent's certificate after the agent considers the handshake
                    // done: its refusal arrives as the connection's close, with the alert and the server's reason.
                    Some(closed) => {
                        if let Some(why) = handshake_refusal(&closed) {
                            return SessionEnd::Refused(why);
                        }
                        if !msg.contains(&closed.to_string()) {
                            return SessionEnd::Retry(format!("{msg} ({closed})"));
                        }
                    }
                    None => {}
                }
                conn.close(quinn::VarInt::from_u32(1), msg.as_bytes());
                if msg.contains("refused") { SessionEnd::Refused(msg) } else { SessionEnd::Retry(msg) }
            }
        }
    }

    async fn serve(
        &self,
        conn: &quinn::Connection,
        backoff: &mut Duration,
        session: &mut Session,
    ) -> anyhow::Result<()> {
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
        self.emit(AgentEvent::Connected { server: conn.remote_address() });
        let examples = self.examples_now(session.declared());
        wire::write_msg(&mut send, &AgentMessage::CheckIn(self.check_in(examples)), limits::CONTROL).await?;
        session.connected(examples);

        let (tx, mut rx) = mpsc::channel::<Inbound>(16);
        let _reader = AbortOnDrop(tokio::spawn(read_control(recv, tx.clone())));
        let _blobs = AbortOnDrop(tokio::spawn(read_blobs(conn.clone(), tx.clone(), self.weights_bytes.clone())));
        let _probe =
            AbortOnDrop(tokio::spawn(crate::liveness::probe_while_silent(conn.clone(), crate::liveness::PROBE_AFTER)));
        self.event_loop(conn, &mut send, &mut rx, tx, session).await
    }

    /// Feeds the session what arrives and carries out what it decides, until the connection fails.
    async fn event_loop(
        &self,
        conn: &quinn::Connection,
        send: &mut quinn::SendStream,
        rx: &mut mpsc::Receiver<Inbound>,
        tx: mpsc::Sender<Inbound>,
        session: &mut Session,
    ) -> anyhow::Result<()> {
        while let Some(msg) = rx.recv().await {
            let input = match msg {
                Inbound::Failed(reason) => bail!(reason),
                Inbound::Control(ServerMessage::Bye { reason }) => bail!("server said goodbye: {reason}"),
                Inbound::Control(m) => Input::Server(m),
                Inbound::Blob(header, body) => {
                    self.take_blob(header, body).await?;
                    Input::ModelChanged
                }
                Inbound::Learned(round, outcome) => Input::Learned { round, outcome },
            };
            // What the shell's work answers goes back into the session before the next message is read.
            let mut inputs = VecDeque::from([input]);
            while let Some(input) = inputs.pop_front() {
                let outputs = {
                    let held = Held(self);
                    session.handle(input, &mut Env { now: UnixTime::now(), rng: &mut OsRng, held: &held })
                };
                for output in outputs {
                    if let Some(answer) = self.carry_out(conn, send, &tx, output).await? {
                        inputs.push_back(answer);
                    }
                }
            }
        }
        Err(anyhow!("connection lost"))
    }

    /// Carries out one of the session's outputs; returns what the session must be told of its result, if anything.
    async fn carry_out(
        &self,
        conn: &quinn::Connection,
        send: &mut quinn::SendStream,
        tx: &mpsc::Sender<Inbound>,
        output: Output,
    ) -> anyhow::Result<Option<Input>> {
        match output {
            Output::Send(m) => {
                match &m {
                    AgentMessage::SecAggAdvertise(_) => crate::crash::before_advertise(),
                    AgentMessage::SecAggShares { .. } => crate::crash::before_shares(),
                    AgentMessage::SecAggUnmask(_) => crate::crash::before_unmask(),
                    _ => {}
                }
                wire::write_msg(send, &m, limits::CONTROL).await?;
            }
            Output::Report(event) => {
                let round_ended = matches!(event, AgentEvent::RoundEnded { .. });
                self.emit(event);
                if round_ended {
                    let stats = conn.stats();
                    self.emit(AgentEvent::Traffic {
                        sent: stats.udp_tx.bytes,
                        received: stats.udp_rx.bytes,
                        sent_packets: stats.path.sent_packets,
                        sent_acks: stats.frame_tx.acks,
                        lost_bytes: stats.path.lost_bytes,
                    });
                }
            }
            Output::DeclareExamples(examples) => {
                let m = AgentMessage::CheckIn(self.check_in(examples));
                wire::write_msg(send, &m, limits::CONTROL).await?;
            }
            Output::Train(plan) => {
                let begun = lock(&self.state).begin_round(plan.round, plan.train.seed, &plan.graph, &plan.weights);
                match begun {
                    Ok(()) => self.start_learning(*plan, tx.clone()),
                    Err(e) => return Ok(Some(Input::NotBegun { round: plan.round, reason: e.to_string() })),
                }
            }
            Output::UploadPlain { round, encoding, outcome } => {
                crate::crash::before_upload();
                self.upload(conn, round, encoding, outcome).await?;
            }
            Output::UploadMasked { round, stream, params, values, outcome } => {
                // This agent's own privacy budget is charged (and written down) before anything leaves the device.
                if let Err(e) = self.charge_privacy(&params, values).await {
                    return Ok(Some(Input::MaskedRefused { round, reason: format!("{e:#}") }));
                }
                crate::crash::before_masked_input();
                self.upload_masked(conn, round, *stream, &outcome).await?;
            }
        }
        Ok(None)
    }

    /// Streams the masked vector to the server: a blocking thread computes it chunk by chunk (quantization and
    /// every mask, see [`MaskedStream`]) at most two chunks ahead of what QUIC has taken, so the server's flow
    /// control paces the computation and the agent holds the delta and a few chunks, not the whole masked vector.
    async fn upload_masked(
        &self,
        conn: &quinn::Connection,
        round: u64,
        stream: MaskedStream,
        out: &LearnOutcome,
    ) -> anyhow::Result<()> {
        let values = stream.len();
        let header = BlobHeader {
            // The example count and loss ride under the masks (`set_round_counts`); the header carries none.
            kind: BlobKind::Masked { round, examples: 0, train_loss: 0.0 },
            len: stream.wire_len(),
            digest: None,
        };
        let mut send = wire::open_blob(conn, &header).await?;
        let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(1);
        let producer = tokio::task::spawn_blocking(move || {
            for bytes in stream.into_wire_chunks() {
                if tx.blocking_send(bytes::Bytes::from(bytes)).is_err() {
                    break; // the upload failed; nobody takes the rest
                }
            }
        });
        while let Some(chunk) = rx.recv().await {
            wire::write_frame(&mut send, chunk).await?;
        }
        producer.await.map_err(|e| anyhow!("masking panicked: {e}"))?;
        wire::finish(&mut send)?;
        self.emit(AgentEvent::MaskedUploaded { round, values });
        self.emit(AgentEvent::Trained {
            round,
            examples: out.examples,
            device_examples: out.device_examples,
            train_loss: out.train_loss,
            holdout_accuracy: out.holdout_accuracy,
        });
        tracing::info!(
            round,
            examples = out.examples,
            device_examples = out.device_examples,
            loss = out.train_loss,
            "uploaded the masked update"
        );
        Ok(())
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
                Some(global) => lock(&learner).learn(&global, &plan.train).map_err(|e| format!("{e:#}")),
                None => Err("no weights held".to_string()),
            };
            let _ = tx.blocking_send(Inbound::Learned(plan.round, outcome));
        });
    }

    async fn take_blob(&self, header: BlobHeader, body: Vec<u8>) -> anyhow::Result<()> {
        match header.kind {
            BlobKind::Graph => {
                let learner = self.learner.clone();
                let bytes = body.clone();
                let params = tokio::task::spawn_blocking(move || {
                    let mut l = lock(&learner);
                    l.set_graph(&bytes).map(|()| l.num_params())
                })
                .await
                .map_err(|e| anyhow!("graph loading panicked: {e}"))?
                .context("the server's ONNX graph cannot be trained here")?;
                lock(&self.state).set_graph(body)?;
                self.note_weights_len(params);
                tracing::info!("received the federation's graph");
                self.publish_model();
            }
            BlobKind::Weights { version } => {
                let digest = header.digest.ok_or_else(|| anyhow!("weights blob without a digest"))?;
                let expected = self.params();
                // The wire layer checked the body against `digest` as it read it: hashed once, not twice.
                let weights = weights_from_bytes(&body, expected)?;
                lock(&self.state).set_weights(version, digest, &body, weights)?;
                self.publish_model();
                self.whole_model_next.store(false, std::sync::atomic::Ordering::Relaxed);
                self.emit(AgentEvent::ModelReceived { version });
                tracing::info!(version, "received global weights");
            }
            BlobKind::WeightsDiff { from, version, weights: digest } => {
                let expected = self.params();
                let held = lock(&self.state).weights.as_ref().map(|w| (w.version, w.weights.clone()));
                let rebuilt = match held {
                    Some((v, _)) if v != from => {
                        Err(anyhow!("differences from version {from}, but this agent holds version {v}"))
                    }
                    Some((_, old)) if expected.is_some_and(|p| p != old.len()) => {
                        Err(anyhow!("the held weights do not fit the held graph"))
                    }
                    // Rebuilding and hashing a version are milliseconds of CPU: never on the runtime's threads.
                    Some((_, old)) => tokio::task::spawn_blocking(move || rebuild(&old, &body, from, version, digest))
                        .await
                        .map_err(|e| anyhow!("rebuilding the version panicked: {e}"))
                        .and_then(|r| r),
                    None => Err(anyhow!("differences from version {from}, but this agent holds no weights")),
                };
                match rebuilt {
                    Ok((weights, bytes)) => {
                        lock(&self.state).set_weights(version, digest, &bytes, weights)?;
                        self.publish_model();
                        self.emit(AgentEvent::ModelReceived { version });
                        tracing::info!(version, from, "received global weights as differences");
                    }
                    Err(e) => {
                        // The next connection declares no version: the server then sends the whole one.
                        self.whole_model_next.store(true, std::sync::atomic::Ordering::Relaxed);
                        return Err(e.context("cannot apply the model's differences; reconnecting for the whole model"));
                    }
                }
            }
            BlobKind::Update { .. } | BlobKind::Masked { .. } => {
                bail!("protocol violation: the server sent an update blob")
            }
        }
        Ok(())
    }

    async fn upload(
        &self,
        conn: &quinn::Connection,
        round: u64,
        encoding: DeltaEncoding,
        mut out: LearnOutcome,
    ) -> anyhow::Result<()> {
        let values = out.delta.len() as u64;
        let mut rng = StdRng::from_entropy();
        let body = encoding.encode(&out.delta, &mut || rng.r#gen::<f32>());
        out.delta = Vec::new();
        let header = BlobHeader {
            kind: BlobKind::Update {
                round,
                values,
                encoding,
                examples: out.examples,
                train_loss: out.train_loss,
                holdout_accuracy: out.holdout_accuracy,
                eval: out.eval,
            },
            len: body.len() as u64,
            digest: None,
        };
        wire::send_blob_owned(conn, &header, body).await?;
        self.emit(AgentEvent::Trained {
            round,
            examples: out.examples,
            device_examples: out.device_examples,
            train_loss: out.train_loss,
            holdout_accuracy: out.holdout_accuracy,
        });
        tracing::info!(
            round,
            examples = out.examples,
            device_examples = out.device_examples,
            loss = out.train_loss,
            "uploaded update"
        );
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

/// Reads every blob the server opens a stream for. A weights blob whose length is not the held graph's
/// (`weights_bytes`, when known) is refused from its header, before any of its body is allocated.
async fn read_blobs(
    conn: quinn::Connection,
    tx: mpsc::Sender<Inbound>,
    weights_bytes: Arc<std::sync::atomic::AtomicU64>,
) {
    loop {
        let mut recv = match conn.accept_uni().await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Inbound::Failed(format!("connection: {e}"))).await;
                return;
            }
        };
        let tx = tx.clone();
        let expected = weights_bytes.load(std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let m = match wire::read_blob_header(&mut recv).await {
                Ok(h) if matches!(h.kind, BlobKind::Weights { .. }) && expected > 0 && h.len != expected => {
                    Inbound::Failed(format!(
                        "a weights blob of {} bytes, but the model has {} parameters ({expected} bytes)",
                        h.len,
                        expected / 4
                    ))
                }
                Ok(BlobHeader { kind: BlobKind::WeightsDiff { from, version, .. }, len, .. })
                    if expected > 0
                        && len != model_diff::chain_len((expected / 4) as usize, version.saturating_sub(from)) =>
                {
                    Inbound::Failed(format!(
                        "differences from version {from} to {version} of {len} bytes, which do not fit a model of {} \
                         parameters",
                        expected / 4
                    ))
                }
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

/// The reason given for ending a connection in its TLS handshake (a crypto error: the TLS alert, and the reason
/// text the peer's QUIC stack sends with it, e.g. "invalid peer certificate: UnknownIssuer"), if it ended so.
pub fn handshake_refusal(e: &quinn::ConnectionError) -> Option<String> {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::ConnectionClosed(c) if crypto(c.error_code) => {
            Some(format!("the server refused the TLS handshake: {c}"))
        }
        quinn::ConnectionError::TransportError(t) if crypto(t.code) => {
            Some(format!("this agent refused the server in the TLS handshake: {t}"))
        }
        _ => None,
    }
}

/// The UDP receive buffer an agent asks for: a model download arrives in bursts, and a datagram the kernel has no
/// room for is lost and sent again. The kernel caps it at `net.core.rmem_max`.
const UDP_RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// A client QUIC endpoint on `bind` with a [`UDP_RECEIVE_BUFFER`] receive buffer (a refusal is logged).
fn client_endpoint(bind: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(bind)?;
    let sized = quinn::udp::UdpSocketState::new((&socket).into())
        .and_then(|s| s.set_recv_buffer_size((&socket).into(), UDP_RECEIVE_BUFFER));
    if let Err(e) = sized {
        tracing::warn!(error = %e, "could not enlarge the UDP receive buffer");
    }
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    Ok(quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?)
}

/// Version `version` rebuilt from `old` (version `from`) and the chain of differences in `body`, with its bytes,
/// when they hash to `digest`.
fn rebuild(old: &[f32], body: &[u8], from: u64, version: u64, digest: Digest) -> anyhow::Result<(Vec<f32>, Vec<u8>)> {
    let weights = model_diff::apply(old, body, version.saturating_sub(from))?;
    let bytes = weights_to_bytes(&weights);
    anyhow::ensure!(
        Digest::of(&bytes) == digest,
        "the differences do not rebuild version {version}'s weights (digest)"
    );
    Ok((weights, bytes))
}

/// The digest an agent reports for weights it holds (for logs and tests).
pub fn digest_of(weights: &[f32]) -> Digest {
    Digest::of(&weights_to_bytes(weights))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(servers: Vec<SocketAddr>) -> ClientSettings {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let dir = tmp.path().to_path_buf();
        fedge_shared::tls::init_federation(&dir, &["localhost".into()], 1).expect("a CA");
        let bundle = fedge_shared::tls::issue_bundle(&dir, "a", fedge_shared::tls::Role::Agent, 1).expect("a bundle");
        ClientSettings {
            servers,
            server_name: "localhost".into(),
            ca: fedge_shared::tls::load_certs(&dir.join(fedge_shared::tls::files::CA_CERT)).expect("the CA"),
            identity: Identity::load_bundle(&bundle).expect("the bundle"),
            idle_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            require_secure_aggregation: true,
            privacy: None,
            floor: Default::default(),
        }
    }

    #[test]
    fn an_agent_tries_every_server_in_turn_and_a_pass_ends_after_the_last() {
        let servers: Vec<SocketAddr> =
            (1..=3).map(|p| SocketAddr::from(([127, 0, 0, 1], 4000 + p))).collect::<Vec<_>>();
        let learner = Box::new(crate::learner::NoiseLearner::new(1, 1, 0.1));
        let agent = Agent::new(settings(servers.clone()), ModelState::in_memory(), learner);
        let tries: Vec<(SocketAddr, bool)> = (0..6).filter_map(|_| agent.next_server()).collect();
        // Two passes: each visits every address once, in list order from a random start, and only its last try
        // makes the back-off grow.
        for pass in tries.chunks(3) {
            let mut seen: Vec<SocketAddr> = pass.iter().map(|(a, _)| *a).collect();
            assert_eq!(pass.iter().map(|(_, done)| *done).collect::<Vec<_>>(), [false, false, true]);
            let start = servers.iter().position(|s| *s == seen[0]).expect("a listed address");
            let expected: Vec<SocketAddr> = (0..3).map(|k| servers[(start + k) % 3]).collect();
            assert_eq!(seen, expected);
            seen.sort();
            assert_eq!(seen, servers);
        }
        assert_eq!(tries[0].0, tries[3].0);
        // One server: every try ends a pass, as before there were several.
        let single = Agent::new(
            settings(servers[..1].to_vec()),
            ModelState::in_memory(),
            Box::new(crate::learner::NoiseLearner::new(1, 1, 0.1)),
        );
        assert!((0..3).filter_map(|_| single.next_server()).all(|(a, done)| a == servers[0] && done));
    }
}
