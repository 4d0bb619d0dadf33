//! The agent's side of the federation: connect with mutual TLS, check in, receive the graph and weights, take
//! part in rounds, upload updates, and reconnect with jittered exponential back-off when anything breaks.
//!
//! This is the async shell: it moves messages and bytes and hands learning to a [`Learner`] on a blocking
//! thread. It never panics on what the server sends: a malformed message ends the connection with a logged reason,
//! and the agent connects again.
//!
//! In a secure round (the plan carries [`SecAggPlan`]) the agent runs a SecAgg+ [`ClientSession`] next to its
//! training: it signs its round keys with its certificate key, checks every relayed peer key against the peer's
//! certificate (which must chain to the federation CA, name the agent the cohort lists and carry the agent role),
//! signs into its keys the digest of the plan it trains from ([`RoundPlan::context`]: the graph and weights digests,
//! the training settings, the cohort) and refuses neighbours that signed another, trains only from a graph and
//! weights whose digests are the plan's, relays encrypted shares, masks its delta on a blocking thread and uploads only the masked vector — never the plain
//! delta — then signs the one survivor set it is sent and reveals shares only once its neighbours' signatures on the
//! same set check out (the consistency round, see `fedge_shared::secagg::consistency`). Any check that fails makes
//! the agent refuse the round ([`AgentEvent::SecureRoundRefused`]).
//!
//! A plan without secure aggregation is refused before anything is trained when
//! [`ClientSettings::require_secure_aggregation`] is set (agent.toml's default): the agent tells the server
//! [`PLAIN_ROUND_REFUSED`] and reports [`AgentEvent::PlanRefused`]; it never uploads a plain delta then.

use crate::learner::{LearnOutcome, Learner};
use crate::state::ModelState;
use anyhow::{Context, anyhow, bail};
use fedge_shared::delta_encoding::DeltaEncoding;
use fedge_shared::model::{Digest, weights_from_bytes, weights_to_bytes};
use fedge_shared::protocol::{
    AgentMessage, BlobHeader, BlobKind, CheckIn, DeviceInfo, Hello, PROTOCOL_VERSION, RoundPlan, SecAggPlan,
    ServerHello, ServerMessage, limits,
};
use fedge_shared::revocation_list::RevocationList;
use fedge_shared::round_counts::{self, SECURE_COUNTS};
use fedge_shared::secagg::{
    AdvertiseKeys, AgentRef, ClientSession, DEFAULT_CHUNK_VALUES, EcdsaP256Signer, EncryptedShare, MaskWith,
    MaskedStream, PeerKeyTable, RoundFloor, SecAggError, ShareReceipt, SurvivorSet, UnmaskRequest,
};
use fedge_shared::tls::{CertInfo, Identity, Role};
use fedge_shared::wire;
use rand::rngs::{OsRng, StdRng};
use rand::{Rng, SeedableRng};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use std::collections::HashMap;
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
    /// Refuse every round whose plan has no secure aggregation ([`PLAIN_ROUND_REFUSED`]).
    pub require_secure_aggregation: bool,
    /// This agent's own differential-privacy budget ([`crate::privacy_budget`]): with it, the agent refuses rounds
    /// without noise and rounds past its `max_epsilon`, whatever the server's budget says.
    pub privacy: Option<crate::privacy_budget::AgentPrivacy>,
    /// The least this agent accepts of a secure round ([`RoundFloor`]): smaller cohorts and lower thresholds are
    /// refused before any key is advertised.
    pub floor: RoundFloor,
}

/// Why an agent that requires secure aggregation refuses a plain round (sent to the server with the refusal).
pub const PLAIN_ROUND_REFUSED: &str = "this agent requires secure aggregation (require_secure_aggregation = true) \
     and the round's plan has none: its update would reach the server in the clear";

/// Something the agent reports to whoever runs it (the demo, tests, the CLI's progress output).
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    Connected,
    Disconnected {
        reason: String,
    },
    Refused {
        reason: String,
    },
    /// The server refused one of this agent's messages (the connection stays open).
    MessageRefused {
        reason: String,
    },
    ModelReceived {
        version: u64,
    },
    Trained {
        round: u64,
        examples: u64,
        /// Of `examples`, the device's own labelled examples.
        device_examples: u64,
        train_loss: f32,
        holdout_accuracy: Option<f32>,
    },
    RoundEnded {
        round: u64,
        completed: bool,
    },
    /// UDP bytes this connection has sent and received so far (reported at each round's end), and what the sent
    /// bytes are made of: packets, ACK frames, bytes declared lost (and so sent again).
    Traffic {
        sent: u64,
        received: u64,
        sent_packets: u64,
        sent_acks: u64,
        lost_bytes: u64,
    },
    /// This agent refused to take part in a secure round (a peer key failed its certificate or signature check, the
    /// server's request was inconsistent, too few neighbours were left...). It told the server and uploads nothing.
    SecureRoundRefused {
        round: u64,
        reason: String,
    },
    /// This agent refused a round's plan: it already trained for that round id (a server that lost track of its
    /// round ids), could not note that it trains for it, the plan has no secure aggregation and this agent
    /// requires it, or the plan's trainable patterns match no weight of its model. It told the server and trains
    /// nothing.
    PlanRefused {
        round: u64,
        reason: String,
    },
    /// The masked vector of a secure round is uploaded.
    MaskedUploaded {
        round: u64,
        values: usize,
    },
}

/// An edge agent's connection loop.
pub struct Agent {
    settings: ClientSettings,
    state: Arc<Mutex<ModelState>>,
    learner: Arc<Mutex<Box<dyn Learner>>>,
    events: Option<mpsc::UnboundedSender<AgentEvent>>,
    /// Each newly held model version, for inference.
    models: Option<watch::Sender<Option<crate::state::PublishedModel>>>,
    /// The example count last declared to the server.
    declared: std::sync::atomic::AtomicU64,
    /// The byte length of a weights vector of the held graph (0 until a graph is held): a weights blob of another
    /// length is refused from its header, before its body is read.
    weights_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// The newest CA-signed revocation list this agent has verified (see [`fedge_shared::revocation_list`]).
    revocations: Mutex<Option<RevocationList>>,
    /// This agent's own privacy budget ([`ClientSettings::privacy`]), opened when it starts running.
    budget: Mutex<Option<crate::privacy_budget::PrivacyBudget>>,
}

enum Inbound {
    Control(ServerMessage),
    Blob(BlobHeader, Vec<u8>),
    Learned(u64, anyhow::Result<LearnOutcome>),
    Failed(String),
}

/// What a secure round needs from this agent's identity: its signing key and a verifier of peer certificates.
struct SecureTools {
    signer: EcdsaP256Signer,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl SecureTools {
    fn new(settings: &ClientSettings) -> anyhow::Result<SecureTools> {
        let signer = EcdsaP256Signer::from_pkcs8(settings.identity.key_pkcs8())
            .context("this agent's certificate key cannot sign secure-aggregation keys")?;
        Ok(SecureTools { signer, verifier: peer_verifier(&settings.ca)? })
    }

    /// The signing keys of this agent's neighbours among the peers whose keys the server relayed: each of their
    /// certificates must chain to the federation CA, be an agent certificate and name the agent the cohort lists at
    /// that index. Only neighbours' keys are ever used ([`ClientSession::on_keys`] skips the others), so only their
    /// certificates are verified: k per agent instead of the whole cohort (at n = 1,000 in one process, verifying
    /// every certificate took each agent longer than the share phase's deadline).
    fn peer_keys(
        &self,
        cohort: &[AgentRef],
        keys: &[AdvertiseKeys],
        certs: &[Vec<u8>],
        neighbours: &[u32],
        revoked: Option<&RevocationList>,
    ) -> anyhow::Result<PeerKeyTable> {
        peer_key_table_of(self.verifier.as_ref(), cohort, keys, certs, |i| neighbours.contains(&i), revoked)
    }
}

/// A verifier of agent certificates issued by the federation CA `ca` (webpki, as the server checks its clients).
pub fn peer_verifier(ca: &[CertificateDer<'static>]) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone()).context("federation CA certificate")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .context("building the peer certificate verifier")
}

/// Checks the certificates relayed with a key broadcast (`certs[i]` for `keys[i].from`) and returns the signing
/// keys they carry, by agent name. Refuses a certificate that does not chain to the CA `verifier` trusts, that is
/// not an agent's, or whose name is not the cohort's name for that index.
pub fn peer_key_table(
    verifier: &dyn ClientCertVerifier,
    cohort: &[AgentRef],
    keys: &[AdvertiseKeys],
    certs: &[Vec<u8>],
) -> anyhow::Result<PeerKeyTable> {
    peer_key_table_of(verifier, cohort, keys, certs, |_| true, None)
}

/// [`peer_key_table`] for the agents whose index `wanted` accepts (the other certificates are not looked at),
/// refusing any whose certificate the CA-signed list `revoked` names.
pub fn peer_key_table_of(
    verifier: &dyn ClientCertVerifier,
    cohort: &[AgentRef],
    keys: &[AdvertiseKeys],
    certs: &[Vec<u8>],
    wanted: impl Fn(u32) -> bool,
    revoked: Option<&RevocationList>,
) -> anyhow::Result<PeerKeyTable> {
    if certs.len() != keys.len() {
        bail!("{} certificates relayed for {} keys", certs.len(), keys.len());
    }
    let mut table = PeerKeyTable::new();
    for (k, der) in keys.iter().zip(certs).filter(|(k, _)| wanted(k.from)) {
        let name = cohort
            .iter()
            .find(|a| a.index == k.from)
            .map(|a| a.name.as_str())
            .ok_or_else(|| anyhow!("keys of agent {} who is not in the cohort", k.from))?;
        if der.len() > limits::CERTIFICATE {
            bail!("the certificate relayed for {name} has {} bytes", der.len());
        }
        let cert = CertificateDer::from(der.as_slice());
        verifier
            .verify_client_cert(&cert, &[], UnixTime::now())
            .map_err(|e| anyhow!("the certificate relayed for {name} is not valid in this federation: {e}"))?;
        let info = CertInfo::parse(&cert).map_err(|e| anyhow!("the certificate relayed for {name}: {e}"))?;
        if info.name != name {
            bail!("the certificate of {:?} was relayed for agent {name}", info.name);
        }
        if info.role != Role::Agent {
            bail!("the certificate relayed for {name} is not an agent certificate ({:?})", info.role);
        }
        if let Some(list) = revoked.filter(|l| l.revokes(&info.fingerprint)) {
            bail!(
                "the certificate of {name} is revoked by the federation CA (signed revocation list of {} unix time)",
                list.issued_at
            );
        }
        table.insert(name, info.public_key);
    }
    Ok(table)
}

/// Completes the certificates relayed with a round's keys (`certs[i]` for `keys[i].from`) from those this connection
/// was sent before: the server sends each peer's certificate once per connection and leaves it empty afterwards.
/// New ones are remembered (unverified: every certificate is verified each time it is used). Refuses an empty one
/// that was never sent.
fn with_known_certificates(
    cohort: &[AgentRef],
    keys: &[AdvertiseKeys],
    certs: Vec<Vec<u8>>,
    known: &mut HashMap<String, Vec<u8>>,
) -> anyhow::Result<Vec<Vec<u8>>> {
    if certs.len() != keys.len() {
        bail!("{} certificates relayed for {} keys", certs.len(), keys.len());
    }
    let mut out = Vec::with_capacity(certs.len());
    for (k, der) in keys.iter().zip(certs) {
        let name = cohort
            .iter()
            .find(|a| a.index == k.from)
            .map(|a| a.name.clone())
            .ok_or_else(|| anyhow!("keys of agent {} who is not in the cohort", k.from))?;
        if der.is_empty() {
            let cached = known.get(&name).ok_or_else(|| {
                anyhow!("the server sent no certificate for {name}, and none before on this connection")
            })?;
            out.push(cached.clone());
        } else {
            known.insert(name, der.clone());
            out.push(der);
        }
    }
    Ok(out)
}

/// This agent's part in the secure round in flight.
struct SecureState {
    round: u64,
    cohort: Vec<AgentRef>,
    /// `None` while the masking runs on a blocking thread.
    session: Option<ClientSession>,
    /// The shares are in and the server said whom to mask with: the session is ready for the masked input.
    ready: bool,
    /// The training outcome, waiting for the session to be ready.
    outcome: Option<LearnOutcome>,
    /// The neighbours' certificate keys, kept from the key broadcast to check their survivor-set signatures.
    peers: PeerKeyTable,
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
        let weights_bytes = learner.num_params().map_or(0, |p| 4 * p as u64);
        Agent {
            settings,
            state: Arc::new(Mutex::new(state)),
            learner: Arc::new(Mutex::new(learner)),
            events: None,
            models: None,
            declared: std::sync::atomic::AtomicU64::new(0),
            weights_bytes: Arc::new(std::sync::atomic::AtomicU64::new(weights_bytes)),
            revocations: Mutex::new(None),
            budget: Mutex::new(None),
        }
    }

    /// Charges a secure round over `len` values to this agent's own privacy budget, if it keeps one
    /// ([`crate::privacy_budget`]); refuses a round without noise or clipping, or one past the budget.
    /// The budget file is written (and synced) on a blocking thread, never on the runtime.
    async fn charge_privacy(&self, params: &fedge_shared::secagg::SecAggParams, len: usize) -> anyhow::Result<()> {
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

    /// Verifies a relayed signed revocation list (when there is one) against the federation CA, keeps it when it
    /// is newer than any verified before, and returns the newest this agent knows: a server cannot roll an agent
    /// back to an older list, nor forge one.
    fn newest_revocations(&self, bytes: &[u8]) -> anyhow::Result<Option<RevocationList>> {
        let mut newest = lock(&self.revocations);
        if !bytes.is_empty() {
            let list = RevocationList::verify(bytes, &self.settings.ca).context("the relayed revocation list")?;
            if newest.as_ref().is_none_or(|n| list.issued_at > n.issued_at) {
                *newest = Some(list);
            }
        }
        Ok(newest.clone())
    }

    /// Notes the byte length of the held graph's weights, which bounds every weights blob from now on.
    fn note_weights_len(&self) {
        let bytes = lock(&self.learner).num_params().map_or(0, |p| 4 * p as u64);
        self.weights_bytes.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// What this agent holds, as told to the server.
    fn check_in(&self, examples: u64) -> CheckIn {
        let state = lock(&self.state);
        CheckIn {
            model_version: state.version(),
            graph: state.graph_digest(),
            examples,
            device: DeviceInfo {
                arch: std::env::consts::ARCH.into(),
                cores: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            },
        }
    }

    /// Tells the server again what this agent holds when a round trained on more examples than it declared (the
    /// device's own labels grew): the server caps a round's weight by the declared count. Sent on the control
    /// stream before the update is uploaded.
    async fn declare_growth(&self, send: &mut quinn::SendStream, examples: u64) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering;
        if examples > self.declared.load(Ordering::Relaxed) {
            wire::write_msg(send, &AgentMessage::CheckIn(self.check_in(examples)), limits::CONTROL).await?;
            self.declared.store(examples, Ordering::Relaxed);
        }
        Ok(())
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
        let mut endpoint = client_endpoint(bind).context("binding the agent's UDP socket")?;
        endpoint.set_default_client_config(client_cfg);
        if let Some(p) = self.settings.privacy {
            let dir = lock(&self.state).dir().map(std::path::Path::to_path_buf);
            let budget = crate::privacy_budget::PrivacyBudget::open(p, dir.as_deref())?;
            tracing::info!(spent = budget.epsilon().unwrap_or(f64::NAN), max = p.max_epsilon, "privacy budget");
            *lock(&self.budget) = Some(budget);
        }
        self.restore_graph().await;
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

    /// A restarted agent holds the federation's graph on disk, and the server does not send it again: hand it to
    /// the learner before the first round. A graph the learner refuses is dropped, so that the server resends one.
    async fn restore_graph(&self) {
        let Some((_, graph)) = lock(&self.state).graph.clone() else { return };
        let learner = self.learner.clone();
        let loaded = tokio::task::spawn_blocking(move || lock(&learner).set_graph(&graph)).await;
        match loaded {
            Ok(Ok(())) => {
                self.note_weights_len();
                tracing::info!("restored the federation's graph from the state directory")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "the stored graph cannot be trained here; asking for it again");
                lock(&self.state).graph = None;
            }
            Err(e) => tracing::warn!(error = %e, "restoring the stored graph panicked"),
        }
    }

    async fn session(&self, endpoint: &quinn::Endpoint, backoff: &mut Duration) -> SessionEnd {
        let conn = match endpoint.connect(self.settings.server, &self.settings.server_name) {
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
        match self.serve(&conn, backoff).await {
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
        let examples = lock(&self.learner).examples();
        wire::write_msg(&mut send, &AgentMessage::CheckIn(self.check_in(examples)), limits::CONTROL).await?;
        self.declared.store(examples, std::sync::atomic::Ordering::Relaxed);

        let tools = SecureTools::new(&self.settings)?;
        let (tx, mut rx) = mpsc::channel::<Inbound>(16);
        let _reader = AbortOnDrop(tokio::spawn(read_control(recv, tx.clone())));
        let _blobs = AbortOnDrop(tokio::spawn(read_blobs(conn.clone(), tx.clone(), self.weights_bytes.clone())));
        let _probe =
            AbortOnDrop(tokio::spawn(crate::liveness::probe_while_silent(conn.clone(), crate::liveness::PROBE_AFTER)));
        self.event_loop(conn, &mut send, &mut rx, tx, &tools).await
    }

    async fn event_loop(
        &self,
        conn: &quinn::Connection,
        send: &mut quinn::SendStream,
        rx: &mut mpsc::Receiver<Inbound>,
        tx: mpsc::Sender<Inbound>,
        tools: &SecureTools,
    ) -> anyhow::Result<()> {
        let mut pending: Option<RoundPlan> = None;
        let mut training: Option<u64> = None;
        let mut secure: Option<SecureState> = None;
        // Peers' certificates as this connection was sent them (the server sends each once per connection).
        let mut peer_certs: HashMap<String, Vec<u8>> = HashMap::new();
        // The newest round whose plan asked for secure aggregation: its delta is never uploaded in the clear.
        let mut last_secure_round: Option<u64> = None;
        // The newest plain round's plan asks for its update in this encoding.
        let mut plain_encoding: Option<(u64, DeltaEncoding)> = None;
        while let Some(msg) = rx.recv().await {
            match msg {
                Inbound::Failed(reason) => bail!(reason),
                Inbound::Control(ServerMessage::Model(a)) => {
                    tracing::debug!(version = a.version, "server announced a model");
                }
                Inbound::Control(ServerMessage::Plan(plan)) => {
                    tracing::info!(
                        round = plan.round,
                        version = plan.model_version,
                        secure = plan.secagg.is_some(),
                        "selected for a round"
                    );
                    let fresh = lock(&self.state).check_round(plan.round);
                    if let Err(e) = fresh {
                        self.refuse_plan(send, plan.round, e.to_string()).await?;
                        continue;
                    }
                    // A plan this agent's model cannot carry out (trainable patterns that match none of its weights)
                    // is refused before any key is advertised. A learner still busy is checked when it learns.
                    let fits = self.learner.try_lock().map_or(Ok(()), |l| l.check_plan(&plan.train));
                    if let Err(e) = fits {
                        self.refuse_plan(send, plan.round, format!("{e:#}")).await?;
                        continue;
                    }
                    secure = None;
                    match &plan.secagg {
                        Some(sp) => {
                            last_secure_round = Some(plan.round);
                            crate::crash::before_advertise();
                            match self.start_secure(plan.round, sp, plan.context(), tools) {
                                Ok((state, keys)) => {
                                    wire::write_msg(send, &AgentMessage::SecAggAdvertise(keys), limits::CONTROL)
                                        .await?;
                                    secure = Some(state);
                                    pending = Some(*plan);
                                }
                                Err(e) => self.refuse_secure(send, plan.round, format!("{e:#}")).await?,
                            }
                        }
                        None if self.settings.require_secure_aggregation => {
                            self.refuse_plan(send, plan.round, PLAIN_ROUND_REFUSED.into()).await?;
                        }
                        None => {
                            tracing::warn!(round = plan.round, "this round is NOT securely aggregated");
                            plain_encoding = Some((plan.round, plan.train.upload));
                            pending = Some(*plan);
                        }
                    }
                }
                Inbound::Control(ServerMessage::RoundEnd { round, completed, reason, .. }) => {
                    tracing::info!(round, completed, reason = reason.as_deref().unwrap_or(""), "round ended");
                    if pending.as_ref().is_some_and(|p| p.round == round) {
                        pending = None;
                    }
                    if secure.as_ref().is_some_and(|s| s.round == round) {
                        secure = None;
                    }
                    self.emit(AgentEvent::RoundEnded { round, completed });
                    let stats = conn.stats();
                    self.emit(AgentEvent::Traffic {
                        sent: stats.udp_tx.bytes,
                        received: stats.udp_rx.bytes,
                        sent_packets: stats.path.sent_packets,
                        sent_acks: stats.frame_tx.acks,
                        lost_bytes: stats.path.lost_bytes,
                    });
                }
                Inbound::Control(ServerMessage::Bye { reason }) => bail!("server said goodbye: {reason}"),
                Inbound::Control(ServerMessage::Refused { reason }) => {
                    tracing::warn!(%reason, "the server refused a message of this agent's");
                    self.emit(AgentEvent::MessageRefused { reason });
                }
                Inbound::Control(ServerMessage::SecAggKeys { round, keys, certificates, revocations }) => {
                    let Some(st) = secure.as_mut().filter(|s| s.round == round) else {
                        tracing::debug!(round, "keys for a round this agent is not in");
                        continue;
                    };
                    crate::crash::before_shares();
                    let certificates = with_known_certificates(&st.cohort, &keys, certificates, &mut peer_certs);
                    match certificates.and_then(|c| self.on_keys(st, tools, &keys, &c, &revocations)) {
                        Ok(shares) => {
                            let m = AgentMessage::SecAggShares { round, shares };
                            wire::write_msg(send, &m, limits::CONTROL).await?;
                        }
                        Err(e) => {
                            secure = None;
                            pending = pending.filter(|p| p.round != round);
                            self.refuse_secure(send, round, format!("{e:#}")).await?;
                        }
                    }
                }
                Inbound::Control(ServerMessage::SecAggShares { round, shares }) => {
                    let Some(st) = secure.as_mut().filter(|s| s.round == round) else { continue };
                    match on_shares(st, &shares) {
                        Ok(receipt) => {
                            wire::write_msg(send, &AgentMessage::SecAggReceipt(receipt), limits::CONTROL).await?;
                        }
                        Err(e) => {
                            secure = None;
                            pending = pending.filter(|p| p.round != round);
                            self.refuse_secure(send, round, format!("{e:#}")).await?;
                        }
                    }
                }
                Inbound::Control(ServerMessage::SecAggMaskWith(mask_with)) => {
                    let round = mask_with.round;
                    let Some(st) = secure.as_mut().filter(|s| s.round == round) else { continue };
                    match on_mask_with(st, &mask_with) {
                        Ok(()) => st.ready = true,
                        Err(e) => {
                            secure = None;
                            pending = pending.filter(|p| p.round != round);
                            self.refuse_secure(send, round, format!("{e:#}")).await?;
                        }
                    }
                }
                Inbound::Control(ServerMessage::SecAggSurvivors(set)) => {
                    let round = set.round;
                    let Some(st) = secure.as_mut().filter(|s| s.round == round) else { continue };
                    match on_survivors(st, tools, &set) {
                        Ok(m) => wire::write_msg(send, &m, limits::CONTROL).await?,
                        Err(e) => {
                            secure = None;
                            self.refuse_secure(send, round, format!("{e:#}")).await?;
                        }
                    }
                }
                Inbound::Control(ServerMessage::SecAggUnmask(request)) => {
                    let round = request.round;
                    let Some(st) = secure.as_mut().filter(|s| s.round == round) else { continue };
                    crate::crash::before_unmask();
                    match on_unmask(st, &request) {
                        Ok(m) => {
                            wire::write_msg(send, &m, limits::CONTROL).await?;
                            tracing::info!(round, "revealed the unmasking shares");
                        }
                        Err(e) => self.refuse_secure(send, round, format!("{e:#}")).await?,
                    }
                    secure = None;
                }
                Inbound::Blob(header, body) => self.take_blob(header, body).await?,
                Inbound::Learned(round, outcome) => {
                    training = None;
                    if let Ok(out) = &outcome {
                        self.declare_growth(send, out.examples).await?;
                    }
                    match outcome {
                        Ok(out) => match secure.as_mut().filter(|s| s.round == round) {
                            Some(st) => st.outcome = Some(out),
                            None if last_secure_round == Some(round) => {
                                tracing::info!(round, "the secure round is over for this agent; the delta is dropped");
                            }
                            None => {
                                crate::crash::before_upload();
                                // A round whose plan this connection did not see is sent exact.
                                let encoding =
                                    plain_encoding.filter(|(r, _)| *r == round).map_or(DeltaEncoding::F32, |(_, e)| e);
                                self.upload(conn, round, encoding, out).await?
                            }
                        },
                        Err(e) => {
                            tracing::error!(round, error = %format!("{e:#}"), "local training failed");
                            if secure.as_ref().is_some_and(|s| s.round == round) {
                                secure = None;
                            }
                            let m = AgentMessage::Abandon { round, reason: format!("{e:#}") };
                            wire::write_msg(send, &m, limits::CONTROL).await?;
                        }
                    }
                }
            }
            // Mask and upload the delta once it exists and the shares are in. The masked vector streams out as it
            // is computed (see `upload_masked`), so masking overlaps the upload and the vector is never held whole.
            if let Some(st) = secure.as_mut()
                && st.ready
                && st.outcome.is_some()
                && let Some(session) = st.session.as_mut()
                && let Some(mut outcome) = st.outcome.take()
            {
                let round = st.round;
                // This agent's own privacy budget is charged (and written down) before anything leaves the device.
                if let Err(e) = self.charge_privacy(session.params(), outcome.delta.len()).await {
                    secure = None;
                    self.refuse_secure(send, round, format!("{e:#}")).await?;
                    continue;
                }
                // Stochastic rounding draws come from a ChaCha key drawn from a generator seeded by the OS.
                let stream = StdRng::from_rng(OsRng)
                    .map_err(|e| SecAggError::Abort(format!("no randomness from the OS: {e}")))
                    .and_then(|mut rng| {
                        let delta = std::mem::take(&mut outcome.delta);
                        set_round_counts(session, &outcome)?;
                        session.mask_stream(delta, outcome.examples, &mut rng, DEFAULT_CHUNK_VALUES)
                    });
                match stream {
                    Ok(stream) => {
                        crate::crash::before_masked_input();
                        self.upload_masked(conn, round, stream, &outcome).await?;
                    }
                    Err(e) => {
                        secure = None;
                        self.refuse_secure(send, round, format!("masking: {e}")).await?;
                    }
                }
            }
            // Start training once the plan's model is held and nothing else is training.
            if training.is_none()
                && let Some(plan) = pending.as_ref()
                && self.ready_for(plan)
                && let Some(plan) = pending.take()
            {
                let begun = lock(&self.state).begin_round(plan.round, &plan.graph, &plan.weights);
                match begun {
                    Ok(()) => {
                        training = Some(plan.round);
                        self.start_learning(plan, tx.clone());
                    }
                    Err(e) => {
                        if secure.as_ref().is_some_and(|s| s.round == plan.round) {
                            secure = None;
                        }
                        self.refuse_plan(send, plan.round, e.to_string()).await?;
                    }
                }
            }
        }
        Err(anyhow!("connection lost"))
    }

    /// Starts this agent's side of a secure round: the session and its signed keys.
    fn start_secure(
        &self,
        round: u64,
        plan: &SecAggPlan,
        context: [u8; 32],
        tools: &SecureTools,
    ) -> anyhow::Result<(SecureState, AdvertiseKeys)> {
        self.settings.floor.check(&plan.params, plan.cohort.len())?;
        let (session, keys) = ClientSession::new(
            plan.params.clone(),
            round,
            plan.me,
            &plan.cohort,
            plan.graph_seed,
            context,
            &tools.signer,
            &mut OsRng,
        )
        .context("secure-aggregation plan")?;
        tracing::info!(round, me = plan.me, neighbours = session.neighbours().len(), "secure round: keys advertised");
        let state = SecureState {
            round,
            cohort: plan.cohort.clone(),
            session: Some(session),
            ready: false,
            outcome: None,
            peers: PeerKeyTable::new(),
        };
        Ok((state, keys))
    }

    fn on_keys(
        &self,
        st: &mut SecureState,
        tools: &SecureTools,
        keys: &[AdvertiseKeys],
        certificates: &[Vec<u8>],
        revocations: &[u8],
    ) -> anyhow::Result<Vec<EncryptedShare>> {
        let revoked = self.newest_revocations(revocations)?;
        let session = st.session.as_mut().ok_or_else(|| anyhow!("keys arrived twice"))?;
        let table = tools.peer_keys(&st.cohort, keys, certificates, session.neighbours(), revoked.as_ref())?;
        let shares = session.on_keys(keys, &table, &mut OsRng)?;
        st.peers = table;
        Ok(shares)
    }

    /// Tells the server this agent will not train for `round` at all (see [`crate::state::RoundRefusal`]).
    async fn refuse_plan(&self, send: &mut quinn::SendStream, round: u64, reason: String) -> anyhow::Result<()> {
        tracing::error!(round, %reason, "refusing the round's plan");
        self.emit(AgentEvent::PlanRefused { round, reason: reason.clone() });
        wire::write_msg(send, &AgentMessage::Abandon { round, reason }, limits::CONTROL).await?;
        Ok(())
    }

    /// Tells the server this agent will not take part in `round`, and why.
    async fn refuse_secure(&self, send: &mut quinn::SendStream, round: u64, reason: String) -> anyhow::Result<()> {
        tracing::error!(round, %reason, "refusing the secure round");
        self.emit(AgentEvent::SecureRoundRefused { round, reason: reason.clone() });
        let m = AgentMessage::Abandon { round, reason: format!("secure aggregation refused: {reason}") };
        wire::write_msg(send, &m, limits::CONTROL).await?;
        Ok(())
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
                self.note_weights_len();
                tracing::info!("received the federation's graph");
                self.publish_model();
            }
            BlobKind::Weights { version } => {
                let digest = header.digest.ok_or_else(|| anyhow!("weights blob without a digest"))?;
                let expected = lock(&self.learner).num_params();
                // The wire layer checked the body against `digest` as it read it: hashed once, not twice.
                let weights = weights_from_bytes(&body, expected)?;
                lock(&self.state).set_weights(version, digest, &body, weights)?;
                self.publish_model();
                self.emit(AgentEvent::ModelReceived { version });
                tracing::info!(version, "received global weights");
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

/// Puts the federated evaluation's counts into a secure round's masked vector when the round carries them
/// (zeros when this agent has no held-out examples).
/// Puts the round's exact counts under the masks: the federated evaluation's and the training metadata (examples,
/// loss sum), so that the server learns only the survivors' totals. A private round carries none.
fn set_round_counts(session: &mut ClientSession, out: &LearnOutcome) -> Result<(), SecAggError> {
    if session.params().counts != SECURE_COUNTS {
        return Ok(());
    }
    let coords = round_counts::coords(out.eval.as_ref(), out.examples, out.train_loss, session.count_limit());
    session.set_counts(coords)
}

/// Opens the relayed shares and returns the receipt for them, naming the senders whose shares were unusable.
fn on_shares(st: &mut SecureState, shares: &[EncryptedShare]) -> anyhow::Result<ShareReceipt> {
    let session = st.session.as_mut().ok_or_else(|| anyhow!("shares arrived while masking"))?;
    let receipt = session.on_shares(shares)?;
    tracing::info!(round = st.round, shares = shares.len(), "secure round: shares received");
    if !receipt.bad.is_empty() {
        // Their senders are at fault, not the relay: the receipt names them, and the server leaves out any of them
        // of which too few neighbours hold a usable share.
        tracing::warn!(round = st.round, senders = ?receipt.bad, "shares that do not decrypt or lie outside the field");
    }
    Ok(receipt)
}

/// Takes the neighbours to mask with; the session is then ready for the masked input.
fn on_mask_with(st: &mut SecureState, mask_with: &MaskWith) -> anyhow::Result<()> {
    let session = st.session.as_mut().ok_or_else(|| anyhow!("the neighbours to mask with arrived while masking"))?;
    session.on_mask_with(mask_with)?;
    tracing::info!(round = st.round, neighbours = mask_with.neighbours.len(), "secure round: masking set received");
    Ok(())
}

/// The consistency round: signs the survivor set (once per round; the session refuses a second set).
fn on_survivors(st: &mut SecureState, tools: &SecureTools, set: &SurvivorSet) -> anyhow::Result<AgentMessage> {
    let session = st.session.as_mut().ok_or_else(|| anyhow!("the survivor set arrived before the masked input"))?;
    let signature = session.on_survivors(set, &tools.signer)?;
    tracing::info!(round = st.round, survivors = set.survivors.len(), "secure round: signed the survivor set");
    Ok(AgentMessage::SecAggSurvivorSignature(signature))
}

fn on_unmask(st: &mut SecureState, request: &UnmaskRequest) -> anyhow::Result<AgentMessage> {
    let session = st.session.as_mut().ok_or_else(|| anyhow!("the unmask request arrived before the masked input"))?;
    Ok(AgentMessage::SecAggUnmask(session.on_unmask_request(request, &st.peers)?))
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

/// The digest an agent reports for weights it holds (for logs and tests).
pub fn digest_of(weights: &[f32]) -> Digest {
    Digest::of(&weights_to_bytes(weights))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedge_shared::secagg::{KeySigner, PeerVerifier};
    use fedge_shared::tls::{self, files};

    #[test]
    fn a_certificate_sent_once_per_connection_is_taken_from_what_the_connection_was_sent_before() {
        let cohort: Vec<AgentRef> = (0..3).map(|i| AgentRef { index: i, name: format!("agent-{i}") }).collect();
        let keys: Vec<AdvertiseKeys> = (0..3).map(keys_from).collect();
        let mut known = HashMap::new();
        let first = vec![vec![10], vec![11], vec![12]];
        assert_eq!(with_known_certificates(&cohort, &keys, first.clone(), &mut known).unwrap(), first);
        // The next round: the server leaves the certificates it already sent empty, and sends a changed one.
        let next = vec![vec![], vec![21], vec![]];
        let got = with_known_certificates(&cohort, &keys, next, &mut known).unwrap();
        assert_eq!(got, vec![vec![10], vec![21], vec![12]]);
        // A certificate never sent cannot be left out, and the lists must match.
        let err = with_known_certificates(&cohort, &keys, vec![vec![], vec![], vec![]], &mut HashMap::new());
        assert!(err.unwrap_err().to_string().contains("no certificate for agent-0"));
        assert!(with_known_certificates(&cohort, &keys, vec![vec![1]], &mut known).is_err());
    }

    fn keys_from(from: u32) -> AdvertiseKeys {
        AdvertiseKeys {
            round: 1,
            from,
            enc_pk: [1; 32],
            mask_pk: [2; 32],
            seed_commitment: [3; 32],
            context: [4; 32],
            signature: vec![],
        }
    }

    #[test]
    fn relayed_certificates_must_chain_to_the_ca_name_the_cohort_member_and_be_agent_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        tls::init_federation(&pki, &["localhost".into()], 30).unwrap();
        let der = |bundle: &std::path::Path| Identity::load_bundle(bundle).unwrap().chain[0].as_ref().to_vec();
        let a0 = tls::issue_bundle(&pki, "a0", Role::Agent, 30).unwrap();
        let a1 = tls::issue_bundle(&pki, "a1", Role::Agent, 30).unwrap();
        let op = tls::issue_bundle(&pki, "op", Role::Operator, 30).unwrap();
        let other = dir.path().join("other");
        tls::init_federation(&other, &["localhost".into()], 30).unwrap();
        let foreign_a1 = tls::issue_bundle(&other, "a1", Role::Agent, 30).unwrap();
        let ca = tls::load_certs(&pki.join(files::CA_CERT)).unwrap();
        let verifier = peer_verifier(&ca).unwrap();
        let cohort = vec![AgentRef { index: 0, name: "a0".into() }, AgentRef { index: 1, name: "a1".into() }];
        let keys = vec![keys_from(0), keys_from(1)];

        let table = peer_key_table(verifier.as_ref(), &cohort, &keys, &[der(&a0), der(&a1)]).unwrap();
        let signer = EcdsaP256Signer::from_pkcs8(Identity::load_bundle(&a1).unwrap().key_pkcs8()).unwrap();
        let sig = signer.sign(b"m").unwrap();
        assert!(table.verify(&cohort[1], b"m", &sig), "a1's certificate key checks a1's signature");
        assert!(!table.verify(&cohort[0], b"m", &sig), "and not as a0's");

        let swapped = peer_key_table(verifier.as_ref(), &cohort, &keys, &[der(&a1), der(&a0)]).unwrap_err();
        assert!(format!("{swapped:#}").contains("was relayed for agent a0"), "{swapped:#}");
        let foreign = peer_key_table(verifier.as_ref(), &cohort, &keys, &[der(&a0), der(&foreign_a1)]).unwrap_err();
        assert!(format!("{foreign:#}").contains("not valid in this federation"), "{foreign:#}");
        let op_cohort = vec![cohort[0].clone(), AgentRef { index: 1, name: "op".into() }];
        let operator = peer_key_table(verifier.as_ref(), &op_cohort, &keys, &[der(&a0), der(&op)]).unwrap_err();
        assert!(format!("{operator:#}").contains("not an agent certificate"), "{operator:#}");
        let short = peer_key_table(verifier.as_ref(), &cohort, &keys, &[der(&a0)]).unwrap_err();
        assert!(format!("{short:#}").contains("1 certificates relayed for 2 keys"), "{short:#}");
    }
}
