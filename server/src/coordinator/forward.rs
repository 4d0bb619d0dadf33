//! An aggregator's rounds ([`Coordinator::with_forwarding`]): the coordinator of a server with `role =
//! "aggregator"`, which runs no rounds of its own. Its root server asks for one round at a time (through the
//! aggregator's uplink, an agent of the root): [`Event::RootRound`] names the root's model version and training
//! settings. Once that version is installed ([`Event::Installed`]) and enough agents are available, the aggregator
//! runs one round over its own agents (secure, as any round of this server), with the root's training settings and
//! the root's seed (its agents receive the very seed the root's plan carries), and instead of committing, hands the
//! unmasked mean and its weight to the shell ([`Action::Forward`]), which uploads it to the root. The root weighs
//! each aggregator's mean by its weight, so its committed model is the example-weighted mean over every agent of
//! every aggregator that answered.
//!
//! The minimum group size: a partial aggregate of fewer than `min_group` agents is never forwarded (a sum of one
//! agent is that agent's update); such a round ends with `Forward(Err)` and the root goes without this aggregator.
//! A request that cannot start a round within the configured round time-out (too few agents, no such version) is
//! answered with an error too, so the root is never kept waiting by a silent aggregator.
//!
//! Part of the coordinator's sans-IO state machine: no socket, no clock (time enters as `now_ms`). It must never
//! commit a model (the root does) nor forward anything but a whole round's unmasked mean.

use super::{AbortReason, Action, ConfigError, Coordinator, Outcome, Round, Stage};
use crate::hyper::TrainHyper;
use fedge_shared::fedeval::EvalCounts;

/// One of the root's rounds, as the aggregator is asked to serve it.
#[derive(Debug, Clone, PartialEq)]
pub struct RootRequest {
    /// The root's model version the round trains from (installed with [`super::Event::Installed`]).
    pub model_version: u64,
    /// The root plan's training settings (its `seed` is ignored: see `wire_seed`).
    pub hyper: TrainHyper,
    /// The seed the root's plan gave its agents: the aggregator's agents receive exactly this one.
    pub wire_seed: u64,
}

/// What an aggregator forwards for one of the root's rounds: its agents' weighted mean, and the weight it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    /// `Σ w·Δ / Σ w` over the round's survivors (the part of the model the plan trains).
    pub mean: Vec<f32>,
    /// `Σ w` (whole examples, as capped by the round): the weight the root gives `mean`.
    pub weight: u64,
    /// The mean training loss over the survivors' examples, if known.
    pub train_loss: Option<f32>,
    /// The survivors' federated evaluation totals, if they sent any.
    pub eval: Option<EvalCounts>,
    /// How many agents' updates are in `mean` (at least the minimum group size).
    pub agents: usize,
}

#[derive(Debug)]
pub(super) struct Forwarding {
    min_group: usize,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    request: RootRequest,
    asked_ms: u64,
    /// The round started for it, once one has.
    round: Option<u64>,
}

impl Coordinator {
    /// Runs this coordinator as an aggregator's: rounds only when the root asks, forwarded instead of committed,
    /// never with fewer than `min_group` agents in a forwarded mean. Refused with buffering or privacy (neither
    /// is carried through an aggregator yet) and for `min_group` < 2.
    pub fn with_forwarding(mut self, min_group: usize) -> Result<Self, ConfigError> {
        if min_group < 2 {
            return Err(ConfigError::Invalid(format!(
                "aggregator min_group = {min_group}: a partial sum of one agent is that agent's update (at least 2)"
            )));
        }
        if min_group > self.config.max_agents {
            return Err(ConfigError::Invalid(format!(
                "aggregator min_group = {min_group} is above coordinator.max_agents = {}: no round could be forwarded",
                self.config.max_agents
            )));
        }
        if self.buffering.is_some() {
            return Err(ConfigError::Invalid("an aggregator cannot run buffered rounds ([buffered])".into()));
        }
        if self.privacy.is_some() {
            return Err(ConfigError::Invalid(
                "an aggregator cannot add differential privacy noise ([privacy]): the root's budget would not count it"
                    .into(),
            ));
        }
        self.forwarding = Some(Forwarding { min_group, pending: None });
        Ok(self)
    }

    /// Whether this coordinator is an aggregator's.
    pub fn is_forwarding(&self) -> bool {
        self.forwarding.is_some()
    }

    /// The root asked for a round: replaces any earlier request (its round in flight is aborted and answered).
    pub(super) fn on_root_round(&mut self, now_ms: u64, request: RootRequest, out: &mut Vec<Action>) {
        let Some(f) = &mut self.forwarding else {
            out.push(Action::Log { message: "a root round was asked of a server that is no aggregator".into() });
            return;
        };
        if let Some(old) = f.pending.take() {
            out.push(Action::Forward { result: Err("the root asked for another round".into()), record: None });
            if old.round.is_some() && self.collecting_round() == old.round {
                self.abort_round(now_ms, AbortReason::Superseded("the root asked for another round".into()), out);
            }
        }
        if request.model_version < self.model_version {
            out.push(Action::Forward {
                result: Err(format!(
                    "the root's plan is for version {}, this aggregator holds the newer {}",
                    request.model_version, self.model_version
                )),
                record: None,
            });
            return;
        }
        if let Some(f) = &mut self.forwarding {
            f.pending = Some(Pending { request, asked_ms: now_ms, round: None });
        }
    }

    /// The root's version `version` is now this server's model: a round in flight from an older one is aborted.
    pub(super) fn on_installed(&mut self, now_ms: u64, version: u64, weights: &[f32], out: &mut Vec<Action>) {
        if version < self.model_version || weights.is_empty() {
            out.push(Action::Log { message: format!("ignored the installation of version {version}") });
            return;
        }
        if let Stage::Collecting(r) = &self.stage
            && r.plan.model_version < version
        {
            let reason = AbortReason::Superseded(format!("the root's version {version} arrived during the round"));
            self.abort_round(now_ms, reason, out);
        }
        // A request for an older version that started no round can no longer start one.
        let stale = |p: &Pending| p.round.is_none() && p.request.model_version < version;
        if let Some(p) = self.forwarding.as_mut().and_then(|f| f.pending.take_if(|p| stale(p))) {
            let why = format!(
                "the root's version {version} arrived before a round for version {} could start",
                p.request.model_version
            );
            out.push(Action::Forward { result: Err(why), record: None });
        }
        self.model_version = version;
        self.global = weights.to_vec();
    }

    /// The root's request that a round may start for now, if any: its version is installed and none started.
    pub(super) fn root_request_ready(&self) -> Option<&RootRequest> {
        let p = self.forwarding.as_ref()?.pending.as_ref()?;
        (p.round.is_none() && p.request.model_version == self.model_version).then_some(&p.request)
    }

    /// The fewest available agents a forwarded round starts with.
    pub(super) fn min_group(&self) -> usize {
        self.forwarding.as_ref().map_or(0, |f| f.min_group)
    }

    /// Notes that `round` serves the pending request.
    pub(super) fn root_round_started(&mut self, round: u64) {
        if let Some(p) = self.forwarding.as_mut().and_then(|f| f.pending.as_mut()) {
            p.round = Some(round);
        }
    }

    /// When a request that started no round expires (coordinator time).
    pub(super) fn root_request_expiry(&self) -> Option<u64> {
        let p = self.forwarding.as_ref()?.pending.as_ref()?;
        p.round.is_none().then(|| p.asked_ms.saturating_add(self.config.round_timeout_ms))
    }

    /// Answers a request that could not start a round within the round time-out.
    pub(super) fn expire_root_request(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if self.root_request_expiry().is_none_or(|at| now_ms < at) {
            return;
        }
        let available = self.available_count();
        let min = self.config.min_available().max(self.min_group());
        let Some(p) = self.forwarding.as_mut().and_then(|f| f.pending.take()) else { return };
        let why = if p.request.model_version != self.model_version {
            format!("version {} never arrived (this aggregator holds {})", p.request.model_version, self.model_version)
        } else {
            format!("{available} agents available, a round needs {min}")
        };
        tracing::warn!(%why, "no round could start for the root");
        out.push(Action::Forward { result: Err(format!("no round could start: {why}")), record: None });
    }

    /// A forwarded round completed with `mean` and its `weight`: forwarded if it has at least `min_group` agents.
    /// Returns the round back when this coordinator is no aggregator's (the caller commits it as usual).
    pub(super) fn forward_round(
        &mut self,
        now_ms: u64,
        round: Box<Round>,
        mean: Vec<f32>,
        weight: u64,
        out: &mut Vec<Action>,
    ) -> Option<(Box<Round>, Vec<f32>)> {
        let Some(f) = &mut self.forwarding else { return Some((round, mean)) };
        let min_group = f.min_group;
        let agents = round.reports.len();
        if agents < min_group {
            // Answered as an aborted round (`forward_abort`).
            let reason = AbortReason::TooFewReports { reported: agents, min_agents: min_group };
            self.finish_aborted(now_ms, *round, reason, out);
            return None;
        }
        f.pending = None;
        let record = self.record(&round, now_ms, Outcome::Completed);
        let partial = Partial {
            mean,
            weight,
            train_loss: record.metrics.mean_train_loss,
            eval: record.metrics.federated_eval.as_ref().map(|e| e.counts),
            agents,
        };
        tracing::info!(round = record.round, agents, weight, "round aggregated, forwarding to the root");
        out.push(Action::Forward { result: Ok(partial), record: Some(Box::new(record)) });
        self.stage = Stage::Idle;
        self.not_before_ms = now_ms;
        None
    }

    /// An aborted round that served the root's request answers it.
    pub(super) fn forward_abort(&mut self, round: u64, reason: &AbortReason, out: &mut Vec<Action>) {
        let Some(f) = &mut self.forwarding else { return };
        if f.pending.as_ref().is_some_and(|p| p.round == Some(round)) {
            f.pending = None;
            out.push(Action::Forward { result: Err(format!("round {round} aborted: {reason}")), record: None });
        }
    }
}
