//! The round coordinator: the server's whole decision logic as a sans-IO state machine.
//!
//! The shell (QUIC endpoint, one task per agent) feeds in [`Event`]s with the current time and carries out the
//! [`Action`]s that come back; it makes no decision of its own. The coordinator decides who is in a cohort, when a
//! round's phase ends, who dropped, whether a round completes or aborts, and what to commit.
//!
//! A round goes Idle → Collecting → Committing → Idle. Collecting is one phase in plain mode; in secure mode
//! ([`Coordinator::with_secagg`], what the server runs by default) it runs the SecAgg+ phases (advertise keys → share
//! keys → masked input → consistency → unmask) in its place, each with its own deadline (see [`secure`]), behind the
//! same [`Phase`] and [`Aggregation`] types. Local training overlaps the two key phases; the masked-input phase ends at
//! the round's deadline. A plain round keeps one running sum of its updates, and also each update only when the
//! strategy aggregates from each (median, trimmed mean, Krum: see `crate::strategy::Input`), which secure rounds refuse
//! ([`Coordinator::with_secagg`], [`Coordinator::set_config`]). A round may fine-tune part of the model
//! (`hyper.trainable`, see the `part` module): its updates and masked vectors then cover that part only, and the frozen
//! weights are never touched. With [`Coordinator::with_buffering`] a round is a buffer of asynchronous updates that
//! completes with its first K, carrying slower members into the next (see `buffered`); in secure mode its K ready
//! agents then mask their held deltas in a SecAgg+ group of their own (see `buffered_secure`).
//!
//! The shell reports `AgentSilent` when an agent's connection has received nothing for longer than two keep-alive
//! intervals (and again when it does): selection skips such an agent. A round ends as soon as no member still owes
//! anything, so a round whose missing members' connections have all closed (`AgentDisconnected`) ends then.
//!
//! The shell's contract, action by action (carry them out in the order given; the shell's `actions_contract` test
//! drives each [`Action`] through its executor and checks what is written here):
//! - `SendPlan`: send the plan, preceded by the graph and the weights of `plan.model_version` if that agent's
//!   connection does not hold them (the shell tracks what each connection was sent or checked in with); never a plan of
//!   a round whose id was not reserved, or for a version other than the newest committed one.
//! - `Reject`: send the agent `ServerMessage::Refused` with the reason; `CancelTraining`: `RoundEnd` (not completed).
//! - `RoundStarted`: `Store::reserve_round(round)` before any later action leaves, so the id is never reused, even
//!   after a crash; if that fails, carry out none of the round's `SendPlan`s and feed back `Event::RoundNotReserved`
//!   (the round is aborted; a failed write also stops new rounds via `Storage`).
//! - `Commit`: on a blocking thread, evaluate the new weights if there is a test set (fill `record.metrics.test_*`),
//!   then `Store::commit_round(&record, &new_weights, &strategy_state, unix_ms)`; feed back `Event::Committed` with the
//!   returned version, or `Event::CommitFailed` with the error.
//! - `Announce`: send the round's reporters `RoundEnd` (completed, `new_version`), and every connected agent the new
//!   version (`ServerMessage::Model` and its weights) unless its connection holds it.
//! - `RoundAborted`: `Store::record_aborted(&record)` (a failure there is only logged), then send each selected agent
//!   `RoundEnd` (not completed, with the reason).
//! - `WakeAt(t)`: deliver `Event::Tick` at `t` (coordinator time, on a monotonic clock: see `crate::clock`); a later
//!   `WakeAt` replaces an earlier one, whether its time is earlier or later; an alarm is spent once it rings (after
//!   each `Tick` the coordinator asks again for the wake-up it still needs); spurious ticks are fine.
//! - `Log`: log it at info level (the operator reads it in the server's log).
//! - `Forward` (an aggregator's coordinator only, [`Coordinator::with_forwarding`]): keep `record`, if any, with
//!   `Store::record_aborted` (a round that committed no model) and send its reporters `RoundEnd` (completed, no new
//!   version); hand `result` to the oldest of the root's requests still waiting (each request is answered exactly
//!   once, in order).
//! - `Unmask`: run `job.run()` on a blocking thread (never on the event loop) and feed back `Event::Unmasked` with the
//!   round and the result. Until then the round is closed (it takes no more messages) and no round starts.
//! - `SecAggKeys` / `SecAggShares` / `SecAggMaskWith` / `SecAggSurvivors` / `SecAggUnmask`: relay to the agents named
//!   (the keys with each owner's certificate, once per connection, and the operator's signed revocation list); feed
//!   their answers back as `SecAggAdvertise`, `SecAggShares`, `SecAggReceipt`, `MaskedInput`,
//!   `SecAggSurvivorSignature`, `SecAggUnmask`.
//!
//! On start-up: `Store::resume_state()` (after `init_model` for a new store) → [`ResumeState`] →
//! [`Coordinator::new`], then feed `StartRounds` when the configuration or the operator says so.
//!
//! This module must never open a socket, read a clock (time only enters as `now_ms`), use global randomness
//! (selection is seeded by (seed, round)), or panic on anything an agent sends.

mod aggregation;
mod buffered;
mod buffered_secure;
mod config;
mod download;
mod event;
mod forward;
mod part;
mod plain;
mod plan;
mod privacy;
mod record;
mod round_end;
mod round_start;
pub mod secure;
mod secure_messages;
mod secure_phases;
mod selection;
mod status;
mod unmask;

pub use aggregation::WeightedSum;
pub use buffered::BufferedConfig;
pub use config::{ConfigError, CoordinatorConfig, PROX_MU_IS_THE_STRATEGYS, ResumeState, SecAggConfig};
pub use event::{Action, Event, FoldError, RejectReason};
pub use forward::{Partial, RootRequest};
pub use plan::{AggregationMode, HeldMember, OptimizerKind, RoundPlan, SecurePlan, TrainHyper, wire_seed_for};
pub use privacy::{PrivateRoundError, RoundPrivacy, RunPrivacy};
pub use record::{AbortReason, AgentId, Dropped, Outcome, Report, RoundMetrics, RoundRecord, SecAggMetrics};
pub use secure::SecurePhase;
pub use selection::{SelectionRule, round_rng, select};
pub use status::Status;
pub use unmask::{SecureOutcome, UnmaskJob};

use config::check_secure_strategy;

use crate::strategy::{ClientUpdate, Strategy};
use fedge_shared::fedeval::EvalCounts;
use std::collections::BTreeMap;

/// The aggregation state of a round in flight.
#[derive(Debug)]
pub enum Aggregation {
    /// Updates arrive in the clear and are folded into one running sum.
    Plain(WeightedSum),
    /// SecAgg+: masked vectors are folded into the session's running masked sum; only the cohort's sum is ever
    /// unmasked.
    Secure(Box<secure::SecureRound>),
    /// A buffered secure round's training: agents hold their deltas; nothing is summed until its group forms.
    Held,
}

impl Aggregation {
    /// The mean delta of everything aggregated so far; `None` for a secure round, whose mean exists only once the
    /// whole round is unmasked.
    pub fn mean(&self) -> Option<Vec<f32>> {
        match self {
            Aggregation::Plain(sum) => sum.mean(),
            Aggregation::Secure(_) | Aggregation::Held => None,
        }
    }
}

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

#[derive(Debug, Default)]
struct AgentInfo {
    /// The example count it declared at check-in (`None`: it has not checked in).
    declared: Option<u64>,
    in_round: bool,
    /// Its connection has shown no sign of life lately (`Event::AgentSilent`).
    silent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberStatus {
    Training,
    /// Buffered secure rounds: trained, holding its delta for a group.
    Ready,
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
    /// The total weight of the round's mean in examples: `Σ min(examples, cap)` over a secure round's survivors
    /// (unmasked with the sum), the folded examples in a plain round.
    weight_sum: Option<f64>,
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
    /// Buffered rounds: the members carried from an earlier buffer, and where their training started.
    origins: BTreeMap<AgentId, buffered::Origin>,
}

impl Round {
    fn outstanding(&self) -> usize {
        // Each member leaves Training exactly once, for a report or a drop.
        self.members.len().saturating_sub(self.reports.len() + self.dropped.len())
    }

    /// Where `agent`'s training started: this round's plan, unless it was carried from an earlier buffer.
    fn origin(&self, agent: &str) -> buffered::Origin {
        let own = buffered::Origin { round: self.plan.round, version: self.plan.model_version };
        self.origins.get(agent).copied().unwrap_or(own)
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
    /// A secure round closed; its sum is being unmasked by the shell (`Action::Unmask`).
    Unmasking(Box<Round>),
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
    /// Buffered asynchronous aggregation (off unless [`Coordinator::with_buffering`]).
    buffering: Option<buffered::Buffering>,
    /// How committed versions travel ([`Coordinator::with_model_download`]; whole unless set).
    download: fedge_shared::delta_encoding::DeltaEncoding,
    /// An aggregator's coordinator: rounds on the root's request, forwarded instead of committed
    /// ([`Coordinator::with_forwarding`]).
    forwarding: Option<forward::Forwarding>,
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
            buffering: None,
            download: fedge_shared::delta_encoding::DeltaEncoding::F32,
            forwarding: None,
        })
    }

    /// Runs every round with these secure-aggregation settings (validated for every cohort size the configuration
    /// allows; an error names the key). With `enabled = false` rounds stay plain.
    pub fn with_secagg(mut self, secagg: SecAggConfig) -> Result<Self, ConfigError> {
        secagg.validate(self.config.min_agents, self.config.max_agents)?;
        if secagg.enabled {
            check_secure_strategy(self.strategy.as_ref())?;
            if let Some(b) = self.buffering() {
                b.check_secure()?;
            }
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
                Aggregation::Plain(_) | Aggregation::Held => None,
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
        if let Some(b) = self.buffering() {
            b.validate(&config)?;
        }
        if config.strategy != self.config.strategy {
            let strategy = config.strategy.build()?;
            if self.secagg.enabled {
                check_secure_strategy(strategy.as_ref())?;
            }
            buffered::check_buffered_strategy(strategy.as_ref(), self.buffering.is_some())?;
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

    /// Feeds one event in at time `now_ms` (any monotonic millisecond clock, the same for every call) and returns
    /// what the shell must do, in order.
    pub fn handle(&mut self, now_ms: u64, event: Event<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        // A deadline that has passed is honoured before anything else, so a late update is refused even when the
        // shell's Tick comes late.
        self.check_deadline(now_ms, &mut out);
        self.expire_root_request(now_ms, &mut out);
        match event {
            Event::AgentConnected { agent } => self.on_connected(now_ms, agent, &mut out),
            Event::CheckIn { agent, model_version: _, examples } => match self.agents.get_mut(&agent) {
                Some(info) => {
                    info.declared = Some(examples);
                    self.join_buffer(&agent, &mut out);
                }
                None => out.push(Action::Reject { agent, reason: RejectReason::NotConnected }),
            },
            Event::AgentSilent { agent, silent } => {
                if let Some(info) = self.agents.get_mut(&agent) {
                    info.silent = silent;
                    self.join_buffer(&agent, &mut out);
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
            Event::Ready { agent, round, model_version, examples } => {
                self.on_ready(now_ms, agent, round, model_version, examples, &mut out)
            }
            Event::Update { agent, round, examples, train_loss, delta } => {
                self.on_update(now_ms, agent, round, examples, train_loss, delta, &mut out)
            }
            Event::UpdateFailed { agent, round, reason } => {
                if self.trains_for(&agent, round) {
                    self.drop_member(now_ms, &agent, &format!("failed: {reason}"), &mut out);
                }
            }
            Event::Unmasked { round, outcome } => self.on_unmasked(now_ms, round, outcome, &mut out),
            Event::RootRound { request } => self.on_root_round(now_ms, request, &mut out),
            Event::Installed { version, weights } => self.on_installed(now_ms, version, weights, &mut out),
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
                Stage::Unmasking(r) => out.push(Action::Log {
                    message: format!("round {} is being unmasked and cannot be aborted", r.plan.round),
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

    fn on_connected(&mut self, now_ms: u64, agent: AgentId, out: &mut Vec<Action>) {
        if self.agents.contains_key(&agent) {
            // A new connection replaces the old one; whatever the old one was doing is lost.
            self.drop_member(now_ms, &agent, "reconnected", out);
        }
        self.agents.insert(agent, AgentInfo::default());
    }
}
