//! The agent's side of the round protocol as a state machine: what the server sends and what the shell's work
//! gave (a round trained, a round that could not begin, a masked upload the shell refused) go in, with the time and
//! a source of randomness; the messages to send, the work to do and the reports to make come out.
//!
//! It has no sockets, clocks, threads or files inside: the QUIC shell ([`crate::client`]) and the simulated network
//! of the tests only move its messages and carry out its [`Output`]s, and every decision about rounds is made here.
//! What it holds across connections (the newest verified revocation list, the example count last declared) lives
//! in it; what belongs to one connection is reset by [`Session::connected`].
//!
//! Its guarantees, each checked by a test (`edge-agent/tests/session_contract.rs`, and the simulated network in
//! `tests/simulated_network.rs`):
//! - a plan is checked before anything is advertised or trained: a round already trained for
//!   ([`Holdings::check_round`]), a plan the model cannot carry out ([`Holdings::check_plan`]), a secure plan below
//!   this agent's [`RoundFloor`], and a plain plan when secure aggregation is required ([`PLAIN_ROUND_REFUSED`])
//!   are refused with [`AgentMessage::Abandon`] and a report;
//! - a plan repeated on the same connection is ignored, and so is an exact repeat of a secure-aggregation message
//!   already answered (a different second message of the same phase is refused by the [`ClientSession`]);
//! - training starts ([`Output::Train`]) only once the plan's model is held ([`Holdings::holds`]) and nothing else
//!   is training;
//! - the delta of a round whose plan asked for secure aggregation is never uploaded in the clear
//!   ([`Output::UploadPlain`] is only for plain plans); it leaves only masked ([`Output::UploadMasked`]), once the
//!   shares are in and the neighbours to mask with are known;
//! - every relayed peer key is checked against its owner's certificate ([`crate::peer_check`]) before any share is
//!   made for it; a check that fails refuses the round;
//! - the unmasking shares are revealed once per round, and only for the survivor set this agent signed (the
//!   [`ClientSession`] refuses a second request, and never reveals both secrets of one neighbour);
//! - a round that ended (`RoundEnd`) is dropped: its delta, if it arrives later, is not uploaded.
//! - a training outcome is answered once: by an upload, or by [`AgentMessage::Abandon`] when training failed, or,
//!   for a plan with [`HeldPlan::Train`] (buffered secure rounds), by [`AgentMessage::Ready`]: the delta is held,
//!   never uploaded in the clear;
//! - a held delta leaves only masked, once, in the group whose plan ([`HeldPlan::Group`]) names this agent's
//!   training (round and version), multiplied by the scale the plan gives it; a group plan whose scales are not all
//!   in `[HeldMember::MIN_SCALE, 1]`, that does not name every cohort member, or that names a training this agent
//!   does not hold is refused; a held delta is discarded when its round ends, a new training plan comes, or it is
//!   masked.

use crate::agent_event::AgentEvent;
use crate::learner::LearnOutcome;
use crate::peer_check::{peer_key_table_of, with_known_certificates};
use crate::verified_certs::VerifiedCerts;
use anyhow::{Context, anyhow};
use fedge_shared::delta_encoding::DeltaEncoding;
use fedge_shared::protocol::{AgentMessage, HeldMember, HeldPlan, RoundPlan, SecAggPlan, ServerMessage, TrainPlan};
use fedge_shared::revocation_list::RevocationList;
use fedge_shared::round_counts::{self, SECURE_COUNTS};
use fedge_shared::secagg::{
    AgentRef, ClientSession, DEFAULT_CHUNK_VALUES, EcdsaP256Signer, MaskedStream, PeerKeyTable, RoundFloor,
    SecAggError, SecAggParams, SecureRng,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use std::collections::HashMap;
use std::sync::Arc;

/// Why an agent that requires secure aggregation refuses a plain round (sent to the server with the refusal).
pub const PLAIN_ROUND_REFUSED: &str = "this agent requires secure aggregation (require_secure_aggregation = true) \
     and the round's plan has none: its update would reach the server in the clear";

/// What the session asks of the agent it runs in: what it holds, read at the moment of a decision.
pub trait Holdings {
    /// Whether this agent may train for `round`, whose plan has the seed `seed` (it has not trained for that round,
    /// nor for the same round of the federation at another aggregator: see `ModelState::check_round`).
    fn check_round(&self, round: u64, seed: u64) -> Result<(), String>;
    /// Whether the model held can carry out `plan` (a learner busy training answers `Ok` and is checked later).
    fn check_plan(&self, plan: &TrainPlan) -> Result<(), String>;
    /// Whether the graph and the weights `plan` starts from are held.
    fn holds(&self, plan: &RoundPlan) -> bool;
}

/// The agent's identity and choices, fixed for its life.
pub struct SessionConfig {
    /// Refuse every plain round ([`PLAIN_ROUND_REFUSED`]).
    pub require_secure_aggregation: bool,
    /// The least this agent accepts of a secure round.
    pub floor: RoundFloor,
    /// This agent's certificate key: signs its round keys and the survivor set.
    pub signer: EcdsaP256Signer,
    /// Verifies peers' certificates against the federation CA.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The federation CA, which signs revocation lists.
    pub ca: Vec<CertificateDer<'static>>,
}

/// What a call into the session is given besides its input.
pub struct Env<'a> {
    /// The wall time, for certificate validity.
    pub now: UnixTime,
    /// Key pairs, shares and stochastic rounding draw from it.
    pub rng: &'a mut dyn SecureRng,
    pub held: &'a dyn Holdings,
}

/// Something for the session to take in.
pub enum Input {
    /// A message from the server's control stream.
    Server(ServerMessage),
    /// The shell took a graph or a weights blob: a plan waiting for its model may be ready.
    ModelChanged,
    /// The training the shell ran for `round` ([`Output::Train`]) ended.
    Learned { round: u64, outcome: Result<LearnOutcome, String> },
    /// The shell could not note that this agent trains for `round` (the state directory refused it).
    NotBegun { round: u64, reason: String },
    /// The shell did not upload the masked input of `round` (this agent's own privacy budget refused it).
    MaskedRefused { round: u64, reason: String },
}

/// Something for the shell to do.
pub enum Output {
    /// Send this message on the control stream.
    Send(AgentMessage),
    /// Report this to whoever runs the agent.
    Report(AgentEvent),
    /// Tell the server again what this agent holds, now with `examples` training examples (more than declared).
    DeclareExamples(u64),
    /// Note durably that this agent trains for the plan's round, then train from the held weights under the plan and
    /// answer [`Input::Learned`] (or [`Input::NotBegun`] when it cannot be noted).
    Train(Box<RoundPlan>),
    /// Upload this plain round's delta in `encoding`.
    UploadPlain { round: u64, encoding: DeltaEncoding, outcome: LearnOutcome },
    /// Charge `values` coordinates under `params` to this agent's privacy budget if it keeps one (answering
    /// [`Input::MaskedRefused`] if the budget refuses), then upload the masked stream. `outcome` is the round's
    /// outcome without its delta, for reports.
    UploadMasked { round: u64, stream: Box<MaskedStream>, params: SecAggParams, values: usize, outcome: LearnOutcome },
}

/// This agent's part in the secure round in flight.
struct SecureRound {
    round: u64,
    cohort: std::sync::Arc<[AgentRef]>,
    session: ClientSession,
    /// The shares are in and the server said whom to mask with: the session is ready for the masked input.
    ready: bool,
    /// The training outcome, waiting for the session to be ready.
    outcome: Option<LearnOutcome>,
    /// The neighbours' certificate keys, kept from the key broadcast to check their survivor-set signatures.
    peers: PeerKeyTable,
    /// The phase messages of this round already answered: an exact repeat is ignored (answering again could only
    /// be refused by the [`ClientSession`], which would end the round for a harmless duplicate).
    answered: Vec<ServerMessage>,
}

/// What belongs to one connection.
#[derive(Default)]
struct Connection {
    /// The plan waiting for its model or for the learner.
    pending: Option<RoundPlan>,
    /// The round being trained.
    training: Option<u64>,
    secure: Option<SecureRound>,
    /// Peers' certificates as this connection was sent them (the server sends each once per connection).
    peer_certs: HashMap<String, Vec<u8>>,
    /// The newest round whose plan asked for secure aggregation: its delta is never uploaded in the clear.
    last_secure_round: Option<u64>,
    /// The newest plain round's plan asks for its update in this encoding.
    plain_encoding: Option<(u64, DeltaEncoding)>,
    /// The newest plan taken on this connection, and whether it was a group's (a repeat is ignored).
    last_plan: Option<(u64, bool)>,
    /// The newest round whose plan said to train and hold the delta, and the version it trains from.
    hold_round: Option<(u64, u64)>,
    /// The delta held for a group: the round and version it was trained for and from, and the training's outcome.
    held: Option<(u64, u64, LearnOutcome)>,
    /// The newest round the server said had ended.
    ended: Option<u64>,
}

/// The agent's round protocol.
pub struct Session {
    config: SessionConfig,
    /// The newest CA-signed revocation list this agent has verified.
    revocations: Option<RevocationList>,
    /// Peers' certificates that chained to the CA when first used (not chain-verified again).
    verified: VerifiedCerts,
    /// The example count last declared to the server.
    declared: u64,
    conn: Connection,
}

impl Session {
    pub fn new(config: SessionConfig) -> Session {
        Session {
            config,
            revocations: None,
            verified: VerifiedCerts::default(),
            declared: 0,
            conn: Connection::default(),
        }
    }

    /// A new connection checked in declaring `examples`: what the last one was doing is forgotten (the server
    /// forgot it too).
    pub fn connected(&mut self, examples: u64) {
        self.conn = Connection::default();
        self.declared = examples;
    }

    /// The example count last declared to the server.
    pub fn declared(&self) -> u64 {
        self.declared
    }

    /// The round being trained, if any.
    pub fn training(&self) -> Option<u64> {
        self.conn.training
    }

    /// Takes `input` and returns what to do, in order.
    pub fn handle(&mut self, input: Input, env: &mut Env<'_>) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Server(m) => self.on_message(m, env, &mut out),
            Input::ModelChanged => {}
            Input::Learned { round, outcome } => self.on_learned(round, outcome, &mut out),
            Input::NotBegun { round, reason } => {
                self.drop_secure(round);
                refuse_plan(round, reason, &mut out);
            }
            Input::MaskedRefused { round, reason } => {
                self.drop_secure(round);
                refuse_secure(round, reason, &mut out);
            }
        }
        self.progress(env, &mut out);
        out
    }

    fn on_message(&mut self, m: ServerMessage, env: &mut Env<'_>, out: &mut Vec<Output>) {
        if let Some(round) = secure_phase_round(&m)
            && let Some(st) = self.conn.secure.as_mut().filter(|s| s.round == round)
        {
            if st.answered.contains(&m) {
                tracing::debug!(round, "a secure-aggregation message repeated; already answered");
                return;
            }
            st.answered.push(m.clone());
        }
        match m {
            ServerMessage::Model(a) => tracing::debug!(version = a.version, "server announced a model"),
            ServerMessage::Plan(plan) => self.on_plan(*plan, env, out),
            ServerMessage::RoundEnd { round, completed, reason, .. } => {
                tracing::info!(round, completed, reason = reason.as_deref().unwrap_or(""), "round ended");
                self.conn.pending = self.conn.pending.take().filter(|p| p.round != round);
                self.conn.ended = Some(round);
                self.drop_secure(round);
                self.conn.held = self.conn.held.take().filter(|(r, _, _)| *r != round);
                out.push(Output::Report(AgentEvent::RoundEnded { round, completed }));
            }
            // The shell ends the connection on a goodbye; nothing is left to decide here.
            ServerMessage::Bye { .. } => {}
            ServerMessage::Refused { reason } => {
                tracing::warn!(%reason, "the server refused a message of this agent's");
                out.push(Output::Report(AgentEvent::MessageRefused { reason }));
            }
            ServerMessage::SecAggKeys { round, keys, certificates, revocations } => {
                let Some(st) = self.conn.secure.as_mut().filter(|s| s.round == round) else {
                    tracing::debug!(round, "keys for a round this agent is not in");
                    return;
                };
                let known = &mut self.conn.peer_certs;
                let shares = with_known_certificates(&st.cohort, &keys, certificates, known).and_then(|certs| {
                    let revoked = newest_revocations(&mut self.revocations, &revocations, &self.config.ca)?;
                    let neighbours = st.session.neighbours();
                    let table = peer_key_table_of(
                        self.config.verifier.as_ref(),
                        &mut self.verified,
                        &st.cohort,
                        &keys,
                        &certs,
                        |i| neighbours.contains(&i),
                        revoked.as_ref(),
                        env.now,
                    )?;
                    let shares = st.session.on_keys(&keys, &table, &mut *env.rng)?;
                    st.peers = table;
                    Ok(shares)
                });
                match shares {
                    Ok(shares) => out.push(Output::Send(AgentMessage::SecAggShares { round, shares })),
                    Err(e) => self.fail_secure(round, format!("{e:#}"), out),
                }
            }
            ServerMessage::SecAggShares { round, shares } => {
                let Some(st) = self.conn.secure.as_mut().filter(|s| s.round == round) else { return };
                match st.session.on_shares(&shares) {
                    Ok(receipt) => {
                        tracing::info!(round, shares = shares.len(), "secure round: shares received");
                        if !receipt.bad.is_empty() {
                            // Their senders are at fault, not the relay: the receipt names them, and the server
                            // leaves out any of them of which too few neighbours hold a usable share.
                            let senders = &receipt.bad;
                            tracing::warn!(round, ?senders, "shares that do not decrypt or lie outside the field");
                        }
                        out.push(Output::Send(AgentMessage::SecAggReceipt(receipt)));
                    }
                    Err(e) => self.fail_secure(round, e.to_string(), out),
                }
            }
            ServerMessage::SecAggMaskWith(mask_with) => {
                let round = mask_with.round;
                let Some(st) = self.conn.secure.as_mut().filter(|s| s.round == round) else { return };
                match st.session.on_mask_with(&mask_with) {
                    Ok(()) => {
                        let neighbours = mask_with.neighbours.len();
                        tracing::info!(round, neighbours, "secure round: masking set received");
                        st.ready = true;
                    }
                    Err(e) => self.fail_secure(round, e.to_string(), out),
                }
            }
            ServerMessage::SecAggSurvivors(set) => {
                let round = set.round;
                let Some(st) = self.conn.secure.as_mut().filter(|s| s.round == round) else { return };
                match st.session.on_survivors(&set, &self.config.signer) {
                    Ok(signature) => {
                        let survivors = set.survivors.len();
                        tracing::info!(round, survivors, "secure round: signed the survivor set");
                        out.push(Output::Send(AgentMessage::SecAggSurvivorSignature(signature)));
                    }
                    Err(e) => {
                        self.conn.secure = None;
                        refuse_secure(round, e.to_string(), out);
                    }
                }
            }
            ServerMessage::SecAggUnmask(request) => {
                let round = request.round;
                let Some(mut st) = self.conn.secure.take_if(|s| s.round == round) else { return };
                // Whatever the answer, this round's secrets are never asked for again.
                match st.session.on_unmask_request(&request, &st.peers) {
                    Ok(response) => {
                        tracing::info!(round, "revealed the unmasking shares");
                        out.push(Output::Send(AgentMessage::SecAggUnmask(response)));
                    }
                    Err(e) => refuse_secure(round, e.to_string(), out),
                }
            }
        }
    }

    fn on_plan(&mut self, plan: RoundPlan, env: &mut Env<'_>, out: &mut Vec<Output>) {
        let round = plan.round;
        let group = matches!(plan.held, Some(HeldPlan::Group(_)));
        if self.conn.last_plan == Some((round, group)) {
            tracing::debug!(round, "the plan of a round this connection was sent already; ignored");
            return;
        }
        self.conn.last_plan = Some((round, group));
        tracing::info!(round, version = plan.model_version, secure = plan.secagg.is_some(), "selected for a round");
        if let Some(HeldPlan::Group(members)) = &plan.held {
            return self.on_group_plan(&plan, members, env, out);
        }
        if let Err(e) = env.held.check_round(round, plan.train.seed) {
            return refuse_plan(round, e, out);
        }
        // A plan this agent's model cannot carry out (trainable patterns that match none of its weights) is refused
        // before any key is advertised.
        if let Err(e) = env.held.check_plan(&plan.train) {
            return refuse_plan(round, e, out);
        }
        self.conn.secure = None;
        if let Some(HeldPlan::Train) = plan.held {
            if plan.secagg.is_some() {
                return refuse_plan(round, "a training plan with secure aggregation".into(), out);
            }
            // Train and hold: the delta never leaves in the clear. An older held delta is superseded.
            tracing::info!(round, "buffered secure round: training, the delta will be held for a group");
            self.conn.held = None;
            self.conn.hold_round = Some((round, plan.model_version));
            self.conn.last_secure_round = Some(round);
            self.conn.pending = Some(plan);
            return;
        }
        match &plan.secagg {
            Some(sp) => {
                self.conn.last_secure_round = Some(round);
                match self.start_secure(round, sp, plan.context(), env) {
                    Ok((secure, keys)) => {
                        out.push(Output::Send(AgentMessage::SecAggAdvertise(keys)));
                        self.conn.secure = Some(secure);
                        self.conn.pending = Some(plan);
                    }
                    Err(e) => refuse_secure(round, format!("{e:#}"), out),
                }
            }
            None if self.config.require_secure_aggregation => refuse_plan(round, PLAIN_ROUND_REFUSED.into(), out),
            None => {
                tracing::warn!(round, "this round is NOT securely aggregated");
                self.conn.plain_encoding = Some((round, plan.train.upload));
                self.conn.pending = Some(plan);
            }
        }
    }

    /// A group of held deltas: this agent masks the delta it holds, scaled, in the plan's secure round (no training).
    fn on_group_plan(&mut self, plan: &RoundPlan, members: &[HeldMember], env: &mut Env<'_>, out: &mut Vec<Output>) {
        let round = plan.round;
        let Some(sp) = &plan.secagg else {
            return refuse_secure(round, "a group plan without secure aggregation".into(), out);
        };
        let scales_ok = members.iter().all(|m| m.scale.is_finite() && (HeldMember::MIN_SCALE..=1.0).contains(&m.scale));
        let listed =
            members.len() == sp.cohort.len() && members.iter().zip(sp.cohort.iter()).all(|(m, a)| m.index == a.index);
        let mine = members.iter().find(|m| m.index == sp.me);
        let reason = match (mine, &self.conn.held) {
            _ if !scales_ok => Some(format!("a member's scale is outside [{}, 1]", HeldMember::MIN_SCALE)),
            _ if !listed => Some("the group's scales do not list its cohort".to_string()),
            (None, _) => Some("the group does not list this agent".to_string()),
            (Some(m), Some((r, v, _))) if (*r, *v) == (m.trained_round, m.trained_version) => None,
            (Some(m), _) => {
                Some(format!("this agent holds no delta of round {} (version {})", m.trained_round, m.trained_version))
            }
        };
        if let Some(reason) = reason {
            return refuse_secure(round, reason, out);
        }
        let (Some(me), Some((_, _, mut outcome))) = (mine, self.conn.held.take()) else { return };
        // The staleness discount applies under the masks: the server never sees the delta, only the group's sum.
        let scale = me.scale as f32;
        outcome.delta.iter_mut().for_each(|d| *d *= scale);
        self.conn.secure = None;
        self.conn.last_secure_round = Some(round);
        match self.start_secure(round, sp, plan.context(), env) {
            Ok((mut secure, keys)) => {
                tracing::info!(round, scale = me.scale, "buffered secure round: masking the held delta in a group");
                out.push(Output::Send(AgentMessage::SecAggAdvertise(keys)));
                secure.outcome = Some(outcome);
                self.conn.secure = Some(secure);
            }
            Err(e) => refuse_secure(round, format!("{e:#}"), out),
        }
    }

    /// Starts this agent's side of a secure round: the session and its signed keys.
    fn start_secure(
        &self,
        round: u64,
        plan: &SecAggPlan,
        context: [u8; 32],
        env: &mut Env<'_>,
    ) -> anyhow::Result<(SecureRound, fedge_shared::secagg::AdvertiseKeys)> {
        self.config.floor.check(&plan.params, plan.cohort.len())?;
        let (session, keys) = ClientSession::new(
            plan.params.clone(),
            round,
            plan.me,
            &plan.cohort,
            plan.graph_seed,
            context,
            &self.config.signer,
            &mut *env.rng,
        )
        .context("secure-aggregation plan")?;
        tracing::info!(round, me = plan.me, neighbours = session.neighbours().len(), "secure round: keys advertised");
        let secure = SecureRound {
            round,
            cohort: plan.cohort.clone(),
            session,
            ready: false,
            outcome: None,
            peers: PeerKeyTable::new(),
            answered: Vec::new(),
        };
        Ok((secure, keys))
    }

    fn on_learned(&mut self, round: u64, outcome: Result<LearnOutcome, String>, out: &mut Vec<Output>) {
        let c = &mut self.conn;
        if c.training == Some(round) {
            c.training = None;
        }
        let outcome = match outcome {
            Ok(o) => o,
            Err(reason) => {
                tracing::error!(round, %reason, "local training failed");
                self.drop_secure(round);
                out.push(Output::Send(AgentMessage::Abandon { round, reason }));
                return;
            }
        };
        // The server caps a round's weight by the declared count: tell it first when the device's labels grew.
        if outcome.examples > self.declared {
            self.declared = outcome.examples;
            out.push(Output::DeclareExamples(outcome.examples));
        }
        if c.ended == Some(round) {
            tracing::info!(round, "the round ended before this agent's update; the delta is dropped");
            return;
        }
        if let Some((r, version)) = c.hold_round.filter(|(r, _)| *r == round) {
            tracing::info!(round = r, examples = outcome.examples, "trained; holding the delta for a group");
            let examples = outcome.examples;
            c.held = Some((r, version, outcome));
            out.push(Output::Send(AgentMessage::Ready { round: r, model_version: version, examples }));
            return;
        }
        match c.secure.as_mut().filter(|s| s.round == round) {
            Some(st) => st.outcome = Some(outcome),
            None if c.last_secure_round == Some(round) => {
                tracing::info!(round, "the secure round is over for this agent; the delta is dropped");
            }
            None => {
                // A round whose plan this connection did not see is sent exact.
                let encoding = c.plain_encoding.filter(|(r, _)| *r == round).map_or(DeltaEncoding::F32, |(_, e)| e);
                out.push(Output::UploadPlain { round, encoding, outcome });
            }
        }
    }

    /// What follows from the state reached: mask once the delta and the shares are in, and start training once the
    /// plan's model is held and nothing else trains.
    fn progress(&mut self, env: &mut Env<'_>, out: &mut Vec<Output>) {
        let c = &mut self.conn;
        if let Some(st) = c.secure.as_mut()
            && st.ready
            && let Some(mut outcome) = st.outcome.take()
        {
            let round = st.round;
            let delta = std::mem::take(&mut outcome.delta);
            let values = delta.len();
            let stream = set_round_counts(&mut st.session, &outcome)
                .and_then(|()| st.session.mask_stream(delta, outcome.examples, &mut *env.rng, DEFAULT_CHUNK_VALUES));
            match stream {
                Ok(stream) => {
                    let params = st.session.params().clone();
                    out.push(Output::UploadMasked { round, stream: Box::new(stream), params, values, outcome });
                }
                Err(e) => {
                    c.secure = None;
                    refuse_secure(round, format!("masking: {e}"), out);
                }
            }
        }
        if c.training.is_none()
            && let Some(plan) = c.pending.take()
        {
            if env.held.holds(&plan) {
                c.training = Some(plan.round);
                out.push(Output::Train(Box::new(plan)));
            } else {
                c.pending = Some(plan);
            }
        }
    }

    /// Forgets the secure round `round` (and its waiting plan).
    fn drop_secure(&mut self, round: u64) {
        if self.conn.secure.as_ref().is_some_and(|s| s.round == round) {
            self.conn.secure = None;
        }
    }

    /// A secure round failed a check before the masked input: it is dropped with its plan, and refused.
    fn fail_secure(&mut self, round: u64, reason: String, out: &mut Vec<Output>) {
        self.drop_secure(round);
        self.conn.pending = self.conn.pending.take().filter(|p| p.round != round);
        refuse_secure(round, reason, out);
    }
}

/// The round of a secure-aggregation phase message (one the session answers once per round).
fn secure_phase_round(m: &ServerMessage) -> Option<u64> {
    match m {
        ServerMessage::SecAggKeys { round, .. } | ServerMessage::SecAggShares { round, .. } => Some(*round),
        ServerMessage::SecAggMaskWith(m) => Some(m.round),
        ServerMessage::SecAggSurvivors(s) => Some(s.round),
        ServerMessage::SecAggUnmask(r) => Some(r.round),
        _ => None,
    }
}

/// Verifies a relayed signed revocation list (when there is one) against the federation CA, keeps it when it is
/// newer than any verified before, and returns the newest this agent knows: a server cannot roll an agent back to
/// an older list, nor forge one.
fn newest_revocations(
    newest: &mut Option<RevocationList>,
    bytes: &[u8],
    ca: &[CertificateDer<'static>],
) -> anyhow::Result<Option<RevocationList>> {
    if !bytes.is_empty() {
        let list = RevocationList::verify(bytes, ca).map_err(|e| anyhow!("the relayed revocation list: {e}"))?;
        if newest.as_ref().is_none_or(|n| list.issued_at > n.issued_at) {
            *newest = Some(list);
        }
    }
    Ok(newest.clone())
}

/// Puts the round's exact counts under the masks: the federated evaluation's and the training metadata (examples,
/// loss sum), so that the server learns only the survivors' totals. A private round carries none.
fn set_round_counts(session: &mut ClientSession, out: &LearnOutcome) -> Result<(), SecAggError> {
    if session.params().counts != SECURE_COUNTS {
        return Ok(());
    }
    let coords = round_counts::coords(out.eval.as_ref(), out.examples, out.train_loss, session.count_limit());
    session.set_counts(coords)
}

/// This agent will not train for `round` at all.
fn refuse_plan(round: u64, reason: String, out: &mut Vec<Output>) {
    tracing::error!(round, %reason, "refusing the round's plan");
    out.push(Output::Report(AgentEvent::PlanRefused { round, reason: reason.clone() }));
    out.push(Output::Send(AgentMessage::Abandon { round, reason }));
}

/// This agent will not take part in the secure round `round`.
fn refuse_secure(round: u64, reason: String, out: &mut Vec<Output>) {
    tracing::error!(round, %reason, "refusing the secure round");
    out.push(Output::Report(AgentEvent::SecureRoundRefused { round, reason: reason.clone() }));
    out.push(Output::Send(AgentMessage::Abandon { round, reason: format!("secure aggregation refused: {reason}") }));
}
