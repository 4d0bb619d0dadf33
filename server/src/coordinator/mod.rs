//! The round coordinator: the server's whole decision logic as a sans-IO state machine.
//!
//! The shell (QUIC endpoint, one task per agent) feeds in [`Event`]s with the current time and carries out the
//! [`Action`]s that come back; it makes no decision of its own. The coordinator decides who is in a cohort, when a
//! round's phase ends, who dropped, whether a round completes or aborts, and what to commit.
//!
//! A round goes Idle → Collecting → Committing → Idle. Collecting is one phase in plain mode; in secure mode
//! ([`Coordinator::with_secagg`], what the server runs by default) it runs the SecAgg+ phases (advertise keys →
//! share keys → masked input → consistency → unmask) in its place, each with its own deadline (see [`secure`]), behind the same
//! [`Phase`] and [`Aggregation`] types. Local training overlaps the two key phases; the masked-input phase ends at
//! the round's deadline. A plain round keeps one running sum of its updates, and also each update only when the
//! strategy aggregates from each (median, trimmed mean, Krum: see `crate::strategy::Input`), which secure rounds
//! refuse ([`Coordinator::with_secagg`], [`Coordinator::set_config`]). A round may fine-tune part of the model (`hyper.trainable`, see the `part` module): its
//! updates and masked vectors then cover that part only, and the frozen weights are never touched.
//!
//! The shell reports `AgentSilent` when an agent's connection has received nothing for longer than two keep-alive
//! intervals (and again when it does): selection skips such an agent. A round ends as soon as no member still owes
//! anything, so a round whose missing members' connections have all closed (`AgentDisconnected`) ends then.
//!
//! The shell's contract, action by action (carry them out in the order given):
//! - `SendPlan`: send the weights of `plan.model_version` first if `send_weights`, then the plan.
//! - `Reject`: send the agent `ServerMessage::Refused` with the reason; `CancelTraining`: send it `RoundEnd` (not
//!   completed). Nothing else changes.
//! - `RoundStarted`: `Store::reserve_round(round)` before any later action leaves, so the id is never reused, even
//!   after a crash. If that fails, carry out none of the round's `SendPlan`s and feed back
//!   `Event::RoundNotReserved` (the round is aborted; a failed write also stops new rounds via `Storage`).
//! - `Commit`: evaluate the new weights if there is a test set (fill `record.metrics.test_*`), then
//!   `Store::commit_round(&record, &new_weights, &strategy_state, unix_ms)` and feed back `Event::Committed`
//!   with the returned version, or `Event::CommitFailed` with the error.
//! - `Announce`: tell every connected agent that `version` exists.
//! - `RoundAborted`: `Store::record_aborted(&record)` (a failure there is only logged).
//! - `WakeAt(t)`: deliver `Event::Tick` at `t` (coordinator time, on a monotonic clock: see `crate::clock`); a
//!   later `WakeAt` replaces an earlier one, whether its time is earlier or later; an alarm is spent once it rings
//!   (after each `Tick` the coordinator asks again for the wake-up it still needs); spurious ticks are fine.
//! - `Log`: log it (and show it to the operator who sent a command).
//! - `SecAggKeys` / `SecAggShares` / `SecAggMaskWith` / `SecAggSurvivors` / `SecAggUnmask`: relay to the agents
//!   named (the keys with each owner's certificate); feed their answers back as `SecAggAdvertise`, `SecAggShares`,
//!   `SecAggReceipt`, `MaskedInput`, `SecAggSurvivorSignature`, `SecAggUnmask`.
//!
//! On start-up: `Store::resume_state()` (after `init_model` for a new store) → [`ResumeState`] →
//! [`Coordinator::new`], then feed `StartRounds` when the configuration or the operator says so.
//!
//! This module must never open a socket, read a clock (time only enters as `now_ms`), use global randomness
//! (selection is seeded by (seed, round)), or panic on anything an agent sends.

mod aggregation;
mod config;
mod event;
mod part;
mod plan;
mod privacy;
mod record;
pub mod secure;
mod selection;

pub use aggregation::{Aggregation, WeightedSum};
pub use config::{ConfigError, CoordinatorConfig, ResumeState, SecAggConfig};
pub use event::{Action, Event, FoldError, RejectReason};
pub use plan::{AggregationMode, OptimizerKind, RoundPlan, SecurePlan, TrainHyper};
pub use privacy::{PrivateRoundError, RoundPrivacy, RunPrivacy};
pub use record::{AbortReason, AgentId, Dropped, Outcome, Report, RoundMetrics, RoundRecord, SecAggMetrics};
pub use secure::SecurePhase;
pub use selection::{SelectionRule, round_rng, select};

use crate::strategy::{ClientUpdate, Input, RoundUpdates, Strategy};
use fedge_shared::fedeval::{EvalCounts, FederatedEval};
use rand::RngCore;
use std::collections::BTreeMap;

/// While the shell reports too little disk space, ask for a `Tick` this often so that it can look again.
pub const STORAGE_RECHECK_MS: u64 = 1_000;

/// Where the coordinator is in the round cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No round in flight.
    Idle,
    /// Plans are out; updates are being folded in until the deadline.
    Collecting,
    /// The new model was handed to the store; waiting for `Committed` or `CommitFailed`.
    Committing,
}

/// A snapshot for the admin interface and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub phase: Phase,
    /// The round in flight, if any.
    pub round: Option<u64>,
    pub model_version: u64,
    pub next_round: u64,
    pub connected: usize,
    /// Checked-in agents that are not in the round in flight.
    pub available: usize,
    pub selected: usize,
    pub reported: usize,
    pub dropped: usize,
    pub running: bool,
    pub paused: bool,
    /// Why no round may start for lack of disk space, if so.
    pub storage_low: Option<String>,
    /// Completed rounds still to run (`None`: unlimited).
    pub remaining: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Holding {
    model_version: Option<u64>,
    examples: u64,
}

#[derive(Debug, Default)]
struct AgentInfo {
    holding: Option<Holding>,
    in_round: bool,
    /// Its connection has shown no sign of life lately (`Event::AgentSilent`).
    silent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberStatus {
    Training,
    Reported,
    Dropped,
}

#[derive(Debug)]
struct Round {
    plan: RoundPlan,
    started_ms: u64,
    deadline_at_ms: u64,
    selected: Vec<AgentId>,
    members: BTreeMap<AgentId, MemberStatus>,
    aggregation: Aggregation,
    reports: Vec<Report>,
    dropped: Vec<Dropped>,
    loss_sum: f64,
    /// Secure rounds: the survivors' training totals, unmasked with the sum.
    train_totals: Option<fedge_shared::round_counts::TrainTotals>,
    update_bytes: u64,
    /// The part of the model this round trains (`None`: all of it); updates cover only it.
    part: Option<fedge_shared::train::TrainablePart>,
    /// Plain rounds of a strategy that aggregates each update ([`Input::EachUpdate`]): every folded update, in
    /// arrival order (`None`: the running sum is all the round keeps).
    kept: Option<Vec<ClientUpdate>>,
    /// Plain rounds: evaluations sent with updates not yet folded in, by agent.
    pending_eval: BTreeMap<AgentId, EvalCounts>,
    /// The federated evaluation's totals (plain: of the folded reports; secure: the unmasked sum) and how many
    /// agents are in them.
    eval: Option<(EvalCounts, usize)>,
}

impl Round {
    fn outstanding(&self) -> usize {
        // Each member leaves Training exactly once, for a report or a drop.
        self.members.len().saturating_sub(self.reports.len() + self.dropped.len())
    }
}

#[derive(Debug)]
struct PendingCommit {
    round: u64,
    new_weights: Vec<f32>,
    strategy_before: Vec<u8>,
    record: RoundRecord,
}

#[derive(Debug)]
enum Stage {
    Idle,
    Collecting(Box<Round>),
    Committing(Box<PendingCommit>),
}

/// The round coordinator. See the module documentation.
pub struct Coordinator {
    config: CoordinatorConfig,
    strategy: Box<dyn Strategy>,
    model_version: u64,
    global: Vec<f32>,
    next_round: u64,
    agents: BTreeMap<AgentId, AgentInfo>,
    running: bool,
    paused: bool,
    /// Set while the shell reports too little disk space to commit a model.
    storage_low: Option<String>,
    remaining: Option<u64>,
    stage: Stage,
    not_before_ms: u64,
    wake: Option<u64>,
    /// The last round that closed at its deadline (to tell a straggler why it was refused).
    closed_at_deadline: Option<u64>,
    /// Secure aggregation (off unless [`Coordinator::with_secagg`] turns it on).
    secagg: SecAggConfig,
    /// The model's weight layout, for rounds that train part of it (empty unless [`Coordinator::with_layout`]).
    layout: Vec<fedge_shared::train::ParamInfo>,
    /// Distributed differential privacy and the run's budget (off unless [`Coordinator::with_privacy`]).
    privacy: Option<RunPrivacy>,
    /// Agents left out of cohorts until the round of the given id, for making a secure round abort
    /// (`secagg.quarantine_rounds`).
    quarantined: BTreeMap<AgentId, u64>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").field("status", &self.status()).finish()
    }
}

impl Coordinator {
    /// A coordinator resuming from `state`, with the strategy named in the configuration.
    pub fn new(config: CoordinatorConfig, state: ResumeState) -> Result<Self, ConfigError> {
        config.validate()?;
        let strategy = config.strategy.build()?;
        Self::with_strategy(config, state, strategy)
    }

    /// A coordinator with a strategy built elsewhere (its configuration's `strategy` field is then ignored).
    pub fn with_strategy(
        config: CoordinatorConfig,
        state: ResumeState,
        mut strategy: Box<dyn Strategy>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        if state.weights.is_empty() {
            return Err(ConfigError::Invalid("the global model has no parameters".into()));
        }
        strategy.restore(&state.strategy_state)?;
        Ok(Coordinator {
            config,
            strategy,
            model_version: state.model_version,
            global: state.weights,
            next_round: state.next_round,
            agents: BTreeMap::new(),
            running: false,
            paused: false,
            storage_low: None,
            remaining: None,
            stage: Stage::Idle,
            not_before_ms: 0,
            wake: None,
            closed_at_deadline: None,
            secagg: SecAggConfig::off(),
            layout: Vec::new(),
            privacy: None,
            quarantined: BTreeMap::new(),
        })
    }

    /// Adds distributed differential privacy to every secure round (see the `privacy` module), with the budget
    /// `spent` by the rounds already run (from the stored records, oldest first). Refused without secure
    /// aggregation: one agent's noise alone, seen by the server, protects nothing.
    pub fn with_privacy(
        mut self,
        settings: fedge_shared::privacy::PrivacySettings,
        spent: impl IntoIterator<Item = fedge_shared::privacy::DdgRound>,
    ) -> Result<Self, ConfigError> {
        if !self.secagg.enabled {
            return Err(ConfigError::Invalid(
                "[privacy] needs secure aggregation: the server would see each agent's noise and could remove it"
                    .into(),
            ));
        }
        self.privacy = Some(RunPrivacy::new(settings, self.config.min_agents, spent).map_err(ConfigError::Invalid)?);
        Ok(self)
    }

    /// The run's differential privacy, if on: its settings and budget.
    pub fn privacy(&self) -> Option<&RunPrivacy> {
        self.privacy.as_ref()
    }

    /// Runs every round with these secure-aggregation settings (validated for every cohort size the configuration
    /// allows; an error names the key). With `enabled = false` rounds stay plain.
    pub fn with_secagg(mut self, secagg: SecAggConfig) -> Result<Self, ConfigError> {
        secagg.validate(self.config.min_agents, self.config.max_agents)?;
        if secagg.enabled {
            check_secure_strategy(self.strategy.as_ref())?;
        }
        self.secagg = secagg;
        Ok(self)
    }

    /// The secure-aggregation settings in force.
    pub fn secagg(&self) -> &SecAggConfig {
        &self.secagg
    }

    /// The phase of the secure round in flight, if one is.
    pub fn secure_phase(&self) -> Option<SecurePhase> {
        match &self.stage {
            Stage::Collecting(r) => match &r.aggregation {
                Aggregation::Secure(s) => Some(s.phase()),
                Aggregation::Plain(_) => None,
            },
            _ => None,
        }
    }

    /// The newest committed global model version.
    pub fn model_version(&self) -> u64 {
        self.model_version
    }

    /// The newest committed global weights.
    pub fn global_weights(&self) -> &[f32] {
        &self.global
    }

    /// The configuration in force.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// Replaces the configuration from the next round on (the round in flight keeps its plan and deadline). A new
    /// strategy kind or new strategy parameters start that strategy afresh (its state is reset).
    pub fn set_config(&mut self, config: CoordinatorConfig) -> Result<(), ConfigError> {
        config.validate()?;
        part::check_trainable(&config, &self.layout)?;
        if config.strategy != self.config.strategy {
            let strategy = config.strategy.build()?;
            if self.secagg.enabled {
                check_secure_strategy(strategy.as_ref())?;
            }
            self.strategy = strategy;
        }
        self.config = config;
        Ok(())
    }

    /// When the round in flight stops accepting updates (coordinator time), if one is collecting.
    pub fn deadline_ms(&self) -> Option<u64> {
        match &self.stage {
            Stage::Collecting(r) => Some(r.deadline_at_ms),
            _ => None,
        }
    }

    /// A snapshot of where things stand.
    pub fn status(&self) -> Status {
        let (phase, round, selected, reported, dropped) = match &self.stage {
            Stage::Idle => (Phase::Idle, None, 0, 0, 0),
            Stage::Collecting(r) => {
                (Phase::Collecting, Some(r.plan.round), r.selected.len(), r.reports.len(), r.dropped.len())
            }
            Stage::Committing(p) => (
                Phase::Committing,
                Some(p.round),
                p.record.selected.len(),
                p.record.reported.len(),
                p.record.dropped.len(),
            ),
        };
        Status {
            phase,
            round,
            model_version: self.model_version,
            next_round: self.next_round,
            connected: self.agents.len(),
            available: self.available_count(),
            selected,
            reported,
            dropped,
            running: self.running,
            paused: self.paused,
            storage_low: self.storage_low.clone(),
            remaining: self.remaining,
        }
    }

    /// Feeds one event in at time `now_ms` (any monotonic millisecond clock, the same for every call) and returns
    /// what the shell must do, in order.
    pub fn handle(&mut self, now_ms: u64, event: Event<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        // A deadline that has passed is honoured before anything else, so a late update is refused even when the
        // shell's Tick comes late.
        self.check_deadline(now_ms, &mut out);
        match event {
            Event::AgentConnected { agent } => self.on_connected(now_ms, agent, &mut out),
            Event::CheckIn { agent, model_version, examples } => match self.agents.get_mut(&agent) {
                Some(info) => info.holding = Some(Holding { model_version, examples }),
                None => out.push(Action::Reject { agent, reason: RejectReason::NotConnected }),
            },
            Event::AgentSilent { agent, silent } => {
                if let Some(info) = self.agents.get_mut(&agent) {
                    info.silent = silent;
                }
            }
            Event::AgentDisconnected { agent } => {
                if self.agents.remove(&agent).is_some() {
                    self.drop_member(now_ms, &agent, "disconnected", &mut out);
                    // A secure round may have been waiting only for this agent's unmask answer.
                    self.close_if_settled(now_ms, &mut out);
                }
            }
            Event::SecAggAdvertise { agent, keys } => self.on_secagg_advertise(now_ms, agent, keys, &mut out),
            Event::SecAggShares { agent, round, shares } => {
                self.on_secagg_shares(now_ms, agent, round, shares, &mut out)
            }
            Event::SecAggReceipt { agent, receipt } => self.on_secagg_receipt(now_ms, agent, receipt, &mut out),
            Event::MaskedInput { agent, round, masked } => self.on_masked_input(now_ms, agent, round, masked, &mut out),
            Event::SecAggSurvivorSignature { agent, signature } => {
                self.on_secagg_survivor_signature(now_ms, agent, signature, &mut out)
            }
            Event::SecAggUnmask { agent, response } => self.on_secagg_unmask(now_ms, agent, response, &mut out),
            Event::Evaluated { agent, round, counts } => self.on_evaluated(agent, round, counts),
            Event::Update { agent, round, examples, train_loss, delta } => {
                self.on_update(now_ms, agent, round, examples, train_loss, delta, &mut out)
            }
            Event::UpdateFailed { agent, round, reason } => {
                if self.collecting_round() == Some(round) {
                    self.drop_member(now_ms, &agent, &format!("failed: {reason}"), &mut out);
                }
            }
            Event::Committed { round, version } => self.on_committed(now_ms, round, version, &mut out),
            Event::CommitFailed { round, error } => self.on_commit_failed(now_ms, round, error, &mut out),
            Event::RoundNotReserved { round, error } => {
                if self.collecting_round() == Some(round) {
                    self.abort_round(now_ms, AbortReason::NotReserved(error), &mut out);
                }
            }
            Event::StartRounds { count } => {
                self.running = true;
                self.paused = false;
                self.remaining = count;
                out.push(Action::Log {
                    message: match count {
                        Some(n) => format!("running {n} more rounds"),
                        None => "running rounds until stopped".into(),
                    },
                });
            }
            Event::Pause => {
                self.paused = true;
                out.push(Action::Log { message: "paused: no new round will start".into() });
            }
            Event::Resume => {
                self.paused = false;
                out.push(Action::Log { message: "resumed".into() });
            }
            Event::AbortRound => match &self.stage {
                Stage::Collecting(_) => self.abort_round(now_ms, AbortReason::Operator, &mut out),
                Stage::Committing(p) => out.push(Action::Log {
                    message: format!("round {} is being committed and cannot be aborted", p.round),
                }),
                Stage::Idle => out.push(Action::Log { message: "no round in flight to abort".into() }),
            },
            Event::Storage { low } => {
                match (&self.storage_low, &low) {
                    (None, Some(why)) => {
                        tracing::error!(reason = %why, "not starting rounds: too little disk space");
                        out.push(Action::Log { message: format!("not starting rounds: {why}") });
                    }
                    (Some(_), None) => out.push(Action::Log { message: "disk space is back: rounds may start".into() }),
                    _ => {}
                }
                self.storage_low = low;
            }
            // The shell's alarm is spent once it rings: ask again for whatever wake-up is still wanted.
            Event::Tick => self.wake = None,
        }
        self.maybe_start_round(now_ms, &mut out);
        self.request_wake(now_ms, &mut out);
        out
    }

    fn collecting_round(&self) -> Option<u64> {
        match &self.stage {
            Stage::Collecting(r) => Some(r.plan.round),
            _ => None,
        }
    }

    fn is_available(info: &AgentInfo) -> bool {
        !info.in_round && !info.silent && info.holding.is_some_and(|h| h.examples > 0)
    }

    fn is_quarantined(&self, agent: &AgentId) -> bool {
        self.quarantined.get(agent).is_some_and(|&until| self.next_round < until)
    }

    fn available_count(&self) -> usize {
        self.agents.iter().filter(|(name, info)| Self::is_available(info) && !self.is_quarantined(name)).count()
    }

    fn available(&self) -> Vec<AgentId> {
        self.agents
            .iter()
            .filter(|(name, info)| Self::is_available(info) && !self.is_quarantined(name))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn on_connected(&mut self, now_ms: u64, agent: AgentId, out: &mut Vec<Action>) {
        if self.agents.contains_key(&agent) {
            // A new connection replaces the old one; whatever the old one was doing is lost.
            self.drop_member(now_ms, &agent, "reconnected", out);
        }
        self.agents.insert(agent, AgentInfo::default());
    }

    #[allow(clippy::too_many_arguments)]
    fn on_update(
        &mut self,
        now_ms: u64,
        agent: AgentId,
        round_id: u64,
        examples: u64,
        train_loss: f32,
        delta: &[f32],
        out: &mut Vec<Action>,
    ) {
        let reject = |out: &mut Vec<Action>, agent: AgentId, reason| out.push(Action::Reject { agent, reason });
        let Some(info) = self.agents.get(&agent) else {
            return reject(out, agent, RejectReason::NotConnected);
        };
        // An agent's weight is what it claims now, capped by what it declared at check-in and by the configured
        // maximum, so a single agent cannot dominate the average by claiming more.
        let declared = info.holding.map_or(0, |h| h.examples);
        let examples = examples.min(declared).min(self.config.max_examples.unwrap_or(u64::MAX));
        let Stage::Collecting(round) = &mut self.stage else {
            let reason = if self.closed_at_deadline == Some(round_id) {
                RejectReason::AfterDeadline
            } else {
                RejectReason::NoRoundInFlight
            };
            return reject(out, agent, reason);
        };
        if round.plan.round != round_id {
            let reason = if self.closed_at_deadline == Some(round_id) {
                RejectReason::AfterDeadline
            } else {
                RejectReason::WrongRound { expected: round.plan.round, got: round_id }
            };
            return reject(out, agent, reason);
        }
        match round.members.get(&agent) {
            None => return reject(out, agent, RejectReason::NotSelected),
            Some(MemberStatus::Reported) => return reject(out, agent, RejectReason::Duplicate),
            Some(MemberStatus::Dropped) => {
                let why = round.dropped.iter().rev().find(|d| d.agent == agent).map(|d| d.reason.clone());
                return reject(out, agent, RejectReason::AlreadyDropped(why.unwrap_or_default()));
            }
            Some(MemberStatus::Training) => {}
        }
        if round.plan.aggregation.is_secure() {
            // Never fold a plain delta into a secure round: the agent should not have sent it in the clear.
            reject(out, agent.clone(), RejectReason::SecAgg("a plain update in a secure round".into()));
            return self.drop_member(now_ms, &agent, "sent a plain update in a secure round", out);
        }
        if !train_loss.is_finite() {
            reject(out, agent.clone(), RejectReason::NonFiniteLoss);
            return self.drop_member(now_ms, &agent, "non-finite training loss", out);
        }
        let folded = match &mut round.aggregation {
            Aggregation::Plain(sum) => sum.fold(examples, delta),
            Aggregation::Secure(_) => return,
        };
        if let Err(e) = folded {
            let why = format!("invalid update: {e}");
            reject(out, agent.clone(), RejectReason::Invalid(e));
            return self.drop_member(now_ms, &agent, &why, out);
        }
        if let Some(kept) = &mut round.kept {
            kept.push(ClientUpdate { agent: agent.clone(), examples, delta: delta.to_vec() });
        }
        round.members.insert(agent.clone(), MemberStatus::Reported);
        round.loss_sum += examples as f64 * f64::from(train_loss);
        round.update_bytes += (delta.len() * 4) as u64;
        let eval = round.pending_eval.remove(&agent);
        if let Some(e) = &eval {
            let (total, agents) = round.eval.get_or_insert((EvalCounts::default(), 0));
            total.add(e);
            *agents += 1;
        }
        round.reports.push(Report {
            agent: agent.clone(),
            examples,
            train_loss,
            after_ms: now_ms.saturating_sub(round.started_ms),
            eval,
        });
        let version = round.plan.model_version;
        if let Some(Holding { model_version, .. }) = self.agents.get_mut(&agent).and_then(|i| i.holding.as_mut()) {
            *model_version = Some(version);
        }
        self.close_if_settled(now_ms, out);
    }

    /// Keeps a plain round member's federated evaluation until its update is folded in; implausible counts (more
    /// correct than examples, a non-finite or negative loss) are ignored.
    fn on_evaluated(&mut self, agent: AgentId, round_id: u64, counts: EvalCounts) {
        let Stage::Collecting(round) = &mut self.stage else { return };
        if round.plan.round != round_id || round.members.get(&agent) != Some(&MemberStatus::Training) {
            return;
        }
        if !counts.is_plausible() {
            tracing::warn!(%agent, ?counts, "ignoring implausible federated-evaluation counts");
            return;
        }
        round.pending_eval.insert(agent, counts);
    }

    /// Marks `agent` dropped from the round in flight if it still owed an update.
    fn drop_member(&mut self, now_ms: u64, agent: &str, reason: &str, out: &mut Vec<Action>) {
        let Stage::Collecting(round) = &mut self.stage else { return };
        match round.members.get_mut(agent) {
            Some(status @ MemberStatus::Training) => *status = MemberStatus::Dropped,
            _ => return,
        }
        round.dropped.push(Dropped { agent: agent.to_string(), reason: reason.to_string() });
        if let Some(info) = self.agents.get_mut(agent) {
            info.in_round = false;
        }
        self.close_if_settled(now_ms, out);
    }

    /// Ends the round early when nobody is still training, or when too few can still report.
    fn close_if_settled(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Stage::Collecting(round) = &self.stage else { return };
        if round.plan.aggregation.is_secure() {
            return self.settle_secure(now_ms, out);
        }
        let outstanding = round.outstanding();
        let reported = round.reports.len();
        if outstanding == 0 || reported + outstanding < self.config.min_agents {
            self.close_round(now_ms, out);
        }
    }

    fn check_deadline(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if let Stage::Collecting(round) = &self.stage
            && round.plan.aggregation.is_secure()
        {
            return self.secure_deadline(now_ms, out);
        }
        if let Stage::Collecting(round) = &self.stage
            && now_ms >= round.deadline_at_ms
        {
            self.closed_at_deadline = Some(round.plan.round);
            self.close_round(now_ms, out);
        }
    }

    /// Closes the round in flight: completes it with the reporters if there are enough, else aborts it.
    fn close_round(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Stage::Collecting(round) = &self.stage else { return };
        if round.reports.len() < self.config.min_agents {
            let reason =
                AbortReason::TooFewReports { reported: round.reports.len(), min_agents: self.config.min_agents };
            return self.abort_round(now_ms, reason, out);
        }
        let Stage::Collecting(mut round) = std::mem::replace(&mut self.stage, Stage::Idle) else { return };
        self.release_members(&mut round, "no update before the deadline", out);
        let mean = match &mut round.aggregation {
            Aggregation::Plain(sum) => sum.mean(),
            Aggregation::Secure(sec) => match sec.finish() {
                Ok(outcome) => {
                    round.eval = outcome.eval;
                    round.train_totals = outcome.train;
                    Some(outcome.mean)
                }
                Err(failure) => {
                    let reason = AbortReason::SecureAggregation(format!("unmasking: {failure}"));
                    return self.finish_aborted(now_ms, *round, reason, out);
                }
            },
        };
        let Some(mean) = mean else {
            // Unreachable with min_agents ≥ 1, but never a panic.
            let reason = AbortReason::Strategy("nothing was aggregated".into());
            return self.finish_aborted(now_ms, *round, reason, out);
        };
        let updates = match &round.kept {
            Some(kept) => RoundUpdates::Each(kept),
            None => RoundUpdates::Mean(&mean),
        };
        let before = self.strategy.state();
        let aggregated = match &round.part {
            None => self.strategy.aggregate(&self.global, updates, round.plan.round),
            Some(part) => self.strategy.aggregate_part(&self.global, part, updates, round.plan.round),
        };
        let new_weights = match aggregated {
            Ok(w) => w,
            Err(e) => {
                if let Err(e) = self.strategy.restore(&before) {
                    tracing::error!(error = %e, "cannot restore the strategy state after a failed aggregation");
                }
                return self.finish_aborted(now_ms, *round, AbortReason::Strategy(e.to_string()), out);
            }
        };
        let record = self.record(&round, now_ms, Outcome::Completed);
        let strategy_state = self.strategy.state();
        tracing::info!(round = record.round, reported = record.reported.len(), "round complete, committing");
        out.push(Action::Commit { record: Box::new(record.clone()), new_weights: new_weights.clone(), strategy_state });
        self.stage = Stage::Committing(Box::new(PendingCommit {
            round: record.round,
            new_weights,
            strategy_before: before,
            record,
        }));
    }

    /// Leaves `agent` out of the cohorts of the next `secagg.quarantine_rounds` rounds after `round`, in which its
    /// neighbours could not use its shares (it was left out of that round too), and says so in the log.
    pub(super) fn quarantine(&mut self, agent: AgentId, round: u64, out: &mut Vec<Action>) {
        let rounds = self.secagg.quarantine_rounds;
        if rounds == 0 {
            return;
        }
        let until = round.saturating_add(1).saturating_add(rounds);
        tracing::warn!(round, %agent, rounds, "agent sent unusable shares; left out of this round and the next cohorts");
        out.push(Action::Log {
            message: format!(
                "agent {agent} sent its neighbours shares they could not use and was left out of round {round}; it \
                 is left out of the next {rounds} rounds too (revoke it if it does so again)"
            ),
        });
        self.quarantined.insert(agent, until);
    }

    fn abort_round(&mut self, now_ms: u64, reason: AbortReason, out: &mut Vec<Action>) {
        let Stage::Collecting(mut round) = std::mem::replace(&mut self.stage, Stage::Idle) else { return };
        let why = format!("round aborted: {reason}");
        self.release_members(&mut round, &why, out);
        self.finish_aborted(now_ms, *round, reason, out);
    }

    /// Drops whoever still owes an update (telling them to stop) and frees every member for the next round.
    fn release_members(&mut self, round: &mut Round, reason: &str, out: &mut Vec<Action>) {
        for (agent, status) in round.members.iter_mut() {
            if *status == MemberStatus::Training {
                *status = MemberStatus::Dropped;
                round.dropped.push(Dropped { agent: agent.clone(), reason: reason.to_string() });
                if self.agents.contains_key(agent) {
                    out.push(Action::CancelTraining { agent: agent.clone(), round: round.plan.round });
                }
            }
            if let Some(info) = self.agents.get_mut(agent) {
                info.in_round = false;
            }
        }
    }

    fn finish_aborted(&mut self, now_ms: u64, round: Round, reason: AbortReason, out: &mut Vec<Action>) {
        let record = self.record(&round, now_ms, Outcome::Aborted(reason.clone()));
        tracing::warn!(round = record.round, %reason, "round aborted");
        out.push(Action::RoundAborted { round: record.round, reason, record: Box::new(record) });
        self.stage = Stage::Idle;
        self.not_before_ms = now_ms.saturating_add(self.config.retry_backoff_ms);
    }

    fn record(&self, round: &Round, now_ms: u64, outcome: Outcome) -> RoundRecord {
        // Secure rounds: the survivors' totals from under the masks (none in a private round); plain: the reports.
        let (total_examples, mean_train_loss) = match (&round.aggregation, round.train_totals) {
            (_, Some(t)) => (t.examples, t.mean_loss().map(|l| l as f32)),
            (Aggregation::Secure(_), None) => (0, None),
            (Aggregation::Plain(_), None) => {
                let total: u64 = round.reports.iter().map(|r| r.examples).sum();
                (total, (total > 0).then(|| (round.loss_sum / total as f64) as f32))
            }
        };
        RoundRecord {
            round: round.plan.round,
            plan: round.plan.clone(),
            strategy: self.strategy.name().to_string(),
            selected: round.selected.clone(),
            reported: round.reports.clone(),
            dropped: round.dropped.clone(),
            outcome,
            metrics: RoundMetrics {
                mean_train_loss,
                total_examples,
                test_accuracy: None,
                test_loss: None,
                update_bytes: round.update_bytes,
                duration_ms: now_ms.saturating_sub(round.started_ms),
                secagg: match &round.aggregation {
                    Aggregation::Secure(s) => Some(s.metrics.clone()),
                    Aggregation::Plain(_) => None,
                },
                federated_eval: round.eval.filter(|(c, _)| c.examples > 0).map(|(counts, agents)| FederatedEval {
                    model_version: round.plan.model_version,
                    agents,
                    counts,
                }),
            },
            started_ms: round.started_ms,
            ended_ms: now_ms,
            new_version: None,
        }
    }

    fn on_committed(&mut self, now_ms: u64, round: u64, version: u64, out: &mut Vec<Action>) {
        let pending = match std::mem::replace(&mut self.stage, Stage::Idle) {
            Stage::Committing(p) if p.round == round => p,
            other => {
                self.stage = other;
                out.push(Action::Log { message: format!("ignored a commit confirmation for round {round}") });
                return;
            }
        };
        if version <= self.model_version {
            tracing::warn!(version, current = self.model_version, "the store reported a version that is not newer");
        }
        self.global = pending.new_weights;
        self.model_version = version;
        self.remaining = self.remaining.map(|n| n.saturating_sub(1));
        if self.remaining == Some(0) {
            self.running = false;
            out.push(Action::Log { message: "the requested rounds are done".into() });
        }
        self.not_before_ms = now_ms;
        tracing::info!(round, version, "round committed");
        out.push(Action::Announce { version });
    }

    fn on_commit_failed(&mut self, now_ms: u64, round: u64, error: String, out: &mut Vec<Action>) {
        let pending = match std::mem::replace(&mut self.stage, Stage::Idle) {
            Stage::Committing(p) if p.round == round => p,
            other => {
                self.stage = other;
                out.push(Action::Log { message: format!("ignored a commit failure for round {round}") });
                return;
            }
        };
        if let Err(e) = self.strategy.restore(&pending.strategy_before) {
            tracing::error!(error = %e, "cannot restore the strategy state after a failed commit");
        }
        let reason = AbortReason::CommitFailed(error);
        let mut record = pending.record;
        record.outcome = Outcome::Aborted(reason.clone());
        record.ended_ms = now_ms;
        tracing::error!(round, %reason, "commit failed, round aborted");
        out.push(Action::RoundAborted { round, reason, record: Box::new(record) });
        self.not_before_ms = now_ms.saturating_add(self.config.retry_backoff_ms);
    }

    fn maybe_start_round(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if !matches!(self.stage, Stage::Idle)
            || !self.running
            || self.paused
            || self.storage_low.is_some()
            || self.remaining == Some(0)
            || now_ms < self.not_before_ms
        {
            return;
        }
        if self.available_count() < self.config.min_available() {
            return;
        }
        let candidates = self.available();
        let size = self.config.selection().cohort_size(candidates.len());
        if size == 0 || (self.secagg.enabled && size < 2) {
            return;
        }
        let round_id = self.next_round;
        let part = match part::resolve(&self.config.hyper.trainable, &self.layout) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(round = round_id, error = %e, "cannot start a round");
                out.push(Action::Log { message: format!("cannot start round {round_id}: {e}") });
                self.not_before_ms = now_ms.saturating_add(self.config.retry_backoff_ms);
                return;
            }
        };
        // The length of every update this round: the trained part only.
        let len = part.as_ref().map_or(self.global.len(), |p| p.len());
        if let Some(p) = &part {
            tracing::info!(
                round = round_id,
                trained = p.len(),
                of = self.global.len(),
                "fine-tuning part of the model"
            );
        }
        if let Some(p) = &self.privacy {
            let mut params = self.secagg.params_for(size);
            // A spent budget stops the run; a round that cannot be set up waits like any other.
            match p.plan_round(&mut params, size, len) {
                Ok(_) => {}
                Err(PrivateRoundError::BudgetSpent(why)) => {
                    self.running = false;
                    tracing::warn!(round = round_id, %why, "no more rounds");
                    out.push(Action::Log { message: why });
                    return;
                }
                Err(PrivateRoundError::Setup(why)) => {
                    tracing::error!(round = round_id, %why, "cannot start a private round");
                    out.push(Action::Log { message: format!("cannot start round {round_id}: {why}") });
                    self.not_before_ms = now_ms.saturating_add(self.config.retry_backoff_ms);
                    return;
                }
            }
        }
        let selected = select(&candidates, size, self.config.seed, round_id);
        let (mode, aggregation) = if self.secagg.enabled {
            match self.secure_round(round_id, &selected, len, now_ms) {
                Ok((plan, sec)) => (AggregationMode::Secure(plan), Aggregation::Secure(Box::new(sec))),
                Err(e) => {
                    tracing::error!(round = round_id, error = %e, "cannot start a secure round");
                    out.push(Action::Log { message: format!("cannot start secure round {round_id}: {e}") });
                    self.not_before_ms = now_ms.saturating_add(self.config.retry_backoff_ms);
                    return;
                }
            }
        } else {
            (AggregationMode::Plain, Aggregation::Plain(WeightedSum::new(len)))
        };
        self.next_round = self.next_round.saturating_add(1);
        if let (Some(p), AggregationMode::Secure(SecurePlan { privacy: Some(cost), .. })) = (&mut self.privacy, &mode) {
            if let Err(e) = p.charge(cost) {
                tracing::error!(round = round_id, error = %e, "cannot charge the round to the privacy budget");
            }
            let message = format!(
                "round {round_id} is differentially private: ε = {:.4} at δ = {} over the run once it is counted \
                 (budget {})",
                cost.epsilon, cost.delta, cost.target_epsilon
            );
            tracing::info!(round = round_id, epsilon = cost.epsilon, delta = cost.delta, "privacy charged");
            out.push(Action::Log { message });
        }
        let mut hyper = self.strategy.configure_round(round_id, &self.config.hyper);
        // The plan names the part the round's sums were sized for, whatever the strategy configured.
        hyper.trainable = self.config.hyper.trainable.clone();
        // A separate stream from selection's, so the agents' seed says nothing about who was picked.
        hyper.seed = round_rng(self.config.seed ^ 0x7261_6e64_7365_6564, round_id).next_u64();
        hyper.deadline_ms = self.config.round_timeout_ms;
        let plan = RoundPlan {
            round: round_id,
            model_version: self.model_version,
            hyper,
            deadline_ms: self.config.round_timeout_ms,
            aggregation: mode,
        };
        out.push(Action::RoundStarted { round: round_id, model_version: self.model_version, selected: selected.len() });
        let mut members = BTreeMap::new();
        for agent in &selected {
            let Some(info) = self.agents.get_mut(agent) else { continue };
            info.in_round = true;
            let send_weights = info.holding.and_then(|h| h.model_version) != Some(self.model_version);
            members.insert(agent.clone(), MemberStatus::Training);
            out.push(Action::SendPlan { agent: agent.clone(), plan: plan.clone(), send_weights });
        }
        tracing::info!(round = round_id, selected = selected.len(), available = candidates.len(), "round started");
        self.stage = Stage::Collecting(Box::new(Round {
            plan,
            started_ms: now_ms,
            deadline_at_ms: now_ms.saturating_add(self.config.round_timeout_ms),
            selected,
            members,
            aggregation,
            reports: Vec::new(),
            dropped: Vec::new(),
            loss_sum: 0.0,
            train_totals: None,
            update_bytes: 0,
            part,
            kept: (!self.secagg.enabled && self.strategy.input() == Input::EachUpdate).then(Vec::new),
            pending_eval: BTreeMap::new(),
            eval: None,
        }));
    }

    fn request_wake(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let wanted = match &self.stage {
            Stage::Collecting(r) => Some(match &r.aggregation {
                Aggregation::Secure(s) => s.phase_deadline_ms,
                Aggregation::Plain(_) => r.deadline_at_ms,
            }),
            // While the disk is short of space, wake now and then so that the shell can look again.
            Stage::Idle if self.running && !self.paused && self.storage_low.is_some() => {
                Some(now_ms.saturating_add(STORAGE_RECHECK_MS))
            }
            Stage::Idle if self.running && !self.paused && now_ms < self.not_before_ms => Some(self.not_before_ms),
            _ => None,
        };
        if let Some(at) = wanted
            && wanted != self.wake
        {
            out.push(Action::WakeAt(at));
        }
        self.wake = wanted;
    }
}

/// Refuses a strategy that needs each agent's update when rounds are secure: secure aggregation exists so that the
/// server never sees one.
fn check_secure_strategy(strategy: &dyn Strategy) -> Result<(), ConfigError> {
    if strategy.input() == Input::EachUpdate {
        return Err(ConfigError::Invalid(format!(
            "the strategy {} needs each agent's update, which secure aggregation hides from the server: turn [secagg] \
             off to use it (robust aggregation defends against poisoned updates in plain rounds), or choose fedavg, \
             fedprox, fedavgm, fedadam, fedyogi or fedadagrad",
            strategy.name()
        )));
    }
    Ok(())
}
