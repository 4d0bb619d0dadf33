//! Buffered asynchronous aggregation (FedBuff: Nguyen et al., "Federated Learning with Buffered Asynchronous
//! Aggregation", AISTATS 2022) on the round machine; in secure mode see `buffered_secure` for how a buffer's ready
//! agents form a SecAgg+ group of their own.
//!
//! With [`Coordinator::with_buffering`] a round is a *buffer*: it completes as soon as `size` (K) updates are in it,
//! without waiting for the slowest agents. What it guarantees:
//! - Members still training when their buffer completes are not told to stop: they are *carried* into the next
//!   buffer, and their update, trained from an older model, is folded there with its example count discounted by
//!   `(1 + τ)^-staleness_exponent`, τ being how many versions were committed after the one it trained from. The sum
//!   is still divided by the plain example total, so a stale update moves the model less (the paper's `1/K` with
//!   example weights); an update of the current version is weighted as in FedAvg.
//! - Every agent idle when a buffer opens, or checking in while it collects, is sent the newest model to train from,
//!   up to `max_agents` agents training at once, carried ones included. An agent contributes at most once to a
//!   buffer; it trains again from the next committed version.
//! - An update from a carried agent that arrives while no buffer is collecting (its buffer is being committed, or
//!   the run is paused) is kept (one per agent, at most `size` in all, so the server holds at most one buffer's
//!   worth of deltas) and folded into the next buffer when it opens. Past `size`, it is refused and its agent freed
//!   for the next buffer.
//! - After each commit, a carried agent that has sent nothing (or, in secure mode, holds a delta for a group) and
//!   whose training started more than `max_staleness` versions ago is told to stop (`CancelTraining` naming the round
//!   its plan named); when the run ends, every carried agent is, and kept updates are discarded.
//! - A buffer that reaches its deadline with at least `min_agents` updates completes with them; with fewer it aborts,
//!   and every member still training, carried or not, is told to stop.
//! - Refused with a strategy that aggregates each update (median, trimmed mean, Krum): the staleness discount weighs
//!   a mean. Refused with `[privacy]` (a group is not charged to the budget), and in secure mode with settings whose
//!   stalest discount, `(1 + max_staleness)^-staleness_exponent`, is under [`HeldMember::MIN_SCALE`], which agents
//!   refuse.
//!
//! Part of the coordinator's sans-IO state machine: no socket, no clock, no panic on what an agent sends.

use super::{Action, AgentId, ConfigError, Coordinator, CoordinatorConfig, MemberStatus, Round, Stage};
use crate::strategy::{Input, Strategy};
use fedge_shared::protocol::HeldMember;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[buffered]` in `server.toml`: buffered asynchronous aggregation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferedConfig {
    /// K: a buffer completes once this many updates are in it (≥ `min_agents`, ≤ `max_agents`).
    pub size: usize,
    /// An update trained from a version τ commits old weighs `(1 + τ)^-staleness_exponent` times its examples
    /// (default 0.5, the paper's polynomial discount; 0 weighs stale updates fully).
    #[serde(default = "default_exponent")]
    pub staleness_exponent: f64,
    /// An agent still training from a version more than this many commits old is told to stop (default 50: its update
    /// would weigh under 1/7 of a fresh one's).
    #[serde(default = "default_max_staleness")]
    pub max_staleness: u64,
}

fn default_exponent() -> f64 {
    0.5
}
fn default_max_staleness() -> u64 {
    50
}

impl BufferedConfig {
    /// A buffer of `size` updates with the default discount and staleness bound.
    pub fn new(size: usize) -> Self {
        BufferedConfig { size, staleness_exponent: default_exponent(), max_staleness: default_max_staleness() }
    }

    /// Checks every field against the round settings, naming the first one that is wrong.
    pub fn validate(&self, rounds: &CoordinatorConfig) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("buffered: {m}")));
        if self.size < rounds.min_agents.max(1) {
            return bad(format!("size ({}) is below min_agents ({})", self.size, rounds.min_agents));
        }
        if self.size > rounds.max_agents {
            return bad(format!(
                "size ({}) is above max_agents ({}), the most agents training at once: no buffer could fill",
                self.size, rounds.max_agents
            ));
        }
        if !(self.staleness_exponent.is_finite() && (0.0..=8.0).contains(&self.staleness_exponent)) {
            return bad(format!("staleness_exponent must be in [0, 8], not {}", self.staleness_exponent));
        }
        if self.max_staleness == 0 {
            return bad(
                "max_staleness must be at least 1 (0 would stop every agent still training at each commit)".into()
            );
        }
        Ok(())
    }

    /// Secure mode: the stalest update's discount must be one agents accept ([`HeldMember::MIN_SCALE`]).
    pub fn check_secure(&self) -> Result<(), ConfigError> {
        let stalest = self.discount(self.max_staleness);
        if stalest < HeldMember::MIN_SCALE {
            return Err(ConfigError::Invalid(format!(
                "buffered: with secure aggregation, (1 + max_staleness)^-staleness_exponent = {stalest:.4} is under \
                 {}, the least scale agents mask a held delta with: lower max_staleness or staleness_exponent",
                HeldMember::MIN_SCALE
            )));
        }
        Ok(())
    }

    /// The factor an update's examples are multiplied by when it trained from a version `staleness` commits old.
    pub fn discount(&self, staleness: u64) -> f64 {
        (1.0 + staleness as f64).powf(-self.staleness_exponent)
    }
}

/// Where a member's training started: the round its plan named and the model version it trained from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Origin {
    pub round: u64,
    pub version: u64,
}

/// A carried agent's update that arrived while no buffer was collecting.
#[derive(Debug)]
struct Kept {
    agent: AgentId,
    round: u64,
    examples: u64,
    train_loss: f32,
    delta: Vec<f32>,
}

/// The buffering state between buffers.
#[derive(Debug)]
pub(super) struct Buffering {
    pub(super) config: BufferedConfig,
    /// Agents still training (or, in secure mode, holding a delta for a later group) when their buffer completed,
    /// and where their training started.
    pub(super) carried: BTreeMap<AgentId, Origin>,
    /// Updates of carried agents received while no buffer was collecting, in arrival order.
    kept: Vec<Kept>,
    /// Secure mode: the agents holding a delta for the next group, in the order they said so.
    pub(super) ready: Vec<ReadyDelta>,
}

/// Secure mode: an agent holding a delta for a group (see `buffered_secure`).
#[derive(Debug, Clone)]
pub(super) struct ReadyDelta {
    pub agent: AgentId,
    /// Where its training started.
    pub origin: Origin,
}

/// What became of an update that arrived while no buffer was collecting.
#[derive(Debug, PartialEq)]
pub(super) enum Arrival {
    /// Kept for the next buffer.
    Kept,
    /// Its agent already sent one for this training.
    Duplicate,
    /// A buffer's worth is kept already: refused, and its agent is free for the next buffer.
    Full,
    /// Not from a carried agent's training: the caller refuses it as it would without buffering.
    NotCarried,
}

impl Coordinator {
    /// Runs rounds as buffers of asynchronous updates (see the module documentation); in secure mode each buffer's
    /// ready agents form a secure-aggregation group (see `buffered_secure`). Refused with a strategy that aggregates
    /// each update, with `[privacy]`, and in secure mode with a discount agents would refuse.
    pub fn with_buffering(mut self, config: BufferedConfig) -> Result<Self, ConfigError> {
        config.validate(&self.config)?;
        if self.privacy.is_some() {
            return Err(ConfigError::Invalid("[buffered] is not supported with [privacy]".into()));
        }
        if self.secagg.enabled {
            config.check_secure()?;
        }
        check_buffered_strategy(self.strategy.as_ref(), true)?;
        self.buffering = Some(Buffering { config, carried: BTreeMap::new(), kept: Vec::new(), ready: Vec::new() });
        Ok(self)
    }

    /// The buffering settings, when rounds are buffers.
    pub fn buffering(&self) -> Option<&BufferedConfig> {
        self.buffering.as_ref().map(|b| &b.config)
    }

    /// Agents carried from a completed buffer, still training (none without buffering).
    pub fn carried(&self) -> usize {
        self.buffering.as_ref().map_or(0, |b| b.carried.len())
    }

    /// Buffered mode: how many of `available` idle agents to send a plan to, or `None` when no buffer may open
    /// (fewer than `min_available` agents idle and carried together, or nobody at all).
    pub(super) fn buffer_cohort(&self, available: usize) -> Option<usize> {
        let carried = self.carried();
        if available + carried < self.config.min_available().max(1) {
            return None;
        }
        Some(available.min(self.config.max_agents.saturating_sub(carried)))
    }

    /// Whether the round in flight holds its K updates.
    pub(super) fn buffer_full(&self, reported: usize) -> bool {
        self.buffering.as_ref().is_some_and(|b| reported >= b.config.size)
    }

    /// The discount of an update trained from `version`, 1 without buffering.
    pub(super) fn staleness_discount(&self, version: u64) -> f64 {
        self.buffering.as_ref().map_or(1.0, |b| b.config.discount(self.model_version.saturating_sub(version)))
    }

    /// A completing buffer's members still training are carried to the next one instead of being told to stop; the
    /// others are free for the next buffer. Returns whether it did (false without buffering: the caller releases
    /// them).
    pub(super) fn carry_members(&mut self, round: &mut Round) -> bool {
        let Some(b) = &mut self.buffering else { return false };
        for (agent, status) in &round.members {
            if *status == MemberStatus::Training {
                b.carried.insert(agent.clone(), round.origin(agent));
            } else if let Some(info) = self.agents.get_mut(agent) {
                // It reported (or dropped): free for the next buffer.
                info.in_round = false;
            }
        }
        round.members.retain(|_, s| *s != MemberStatus::Training);
        true
    }

    /// A buffer has just opened: the carried agents become its members, still training, and the updates kept for it
    /// are folded in (which may complete it at once).
    pub(super) fn open_buffer(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Some(b) = &mut self.buffering else { return };
        let carried = std::mem::take(&mut b.carried);
        let kept = std::mem::take(&mut b.kept);
        let held = !b.ready.is_empty();
        if let Stage::Collecting(round) = &mut self.stage {
            for (agent, origin) in carried {
                round.members.insert(agent.clone(), MemberStatus::Training);
                round.origins.insert(agent, origin);
            }
            // Secure mode: those that said they were ready between groups hold their delta for this buffer's group.
            for r in &b.ready {
                round.members.insert(r.agent.clone(), MemberStatus::Ready);
            }
        }
        for k in kept {
            self.on_update(now_ms, k.agent, k.round, k.examples, k.train_loss, &k.delta, out);
        }
        if held {
            // Enough agents may be ready already for this buffer's group.
            self.close_if_settled(now_ms, out);
        }
    }

    /// An agent that has just become available (checked in, or alive again) while a buffer collects joins it at
    /// once with the buffer's plan (the newest model), unless `max_agents` are training already or it is already a
    /// member. Without buffering, or between buffers, nothing happens: it waits for the next round.
    pub(super) fn join_buffer(&mut self, agent: &str, out: &mut Vec<Action>) {
        if self.buffering.is_none() || self.is_quarantined(agent) {
            return;
        }
        let Some(info) = self.agents.get_mut(agent) else { return };
        let Stage::Collecting(round) = &mut self.stage else { return };
        // Not while a buffered secure round's group runs its secure phases: its plan is the group's.
        if !Self::is_available(info)
            || round.members.contains_key(agent)
            || round.plan.aggregation.secure_plan().is_some()
        {
            return;
        }
        let training = round.members.values().filter(|s| **s == MemberStatus::Training).count();
        if training >= self.config.max_agents {
            return;
        }
        info.in_round = true;
        round.members.insert(agent.to_string(), MemberStatus::Training);
        round.selected.push(agent.to_string());
        out.push(Action::SendPlan { agent: agent.to_string(), plan: round.plan.clone() });
    }

    /// An update while no buffer is collecting: kept if it is a carried agent's (see [`Arrival`]).
    pub(super) fn keep_update(
        &mut self,
        agent: &str,
        round: u64,
        examples: u64,
        train_loss: f32,
        delta: &[f32],
    ) -> Arrival {
        let arrival = match &self.buffering {
            // Secure mode: a plain update is never kept (the caller refuses it).
            _ if self.secagg.enabled => Arrival::NotCarried,
            Some(b) if b.carried.get(agent).is_some_and(|o| o.round == round) => {
                if b.kept.iter().any(|k| k.agent == agent) {
                    Arrival::Duplicate
                } else if b.kept.len() >= b.config.size {
                    Arrival::Full
                } else {
                    Arrival::Kept
                }
            }
            _ => Arrival::NotCarried,
        };
        if arrival == Arrival::Full {
            self.forget_carried(agent);
        } else if arrival == Arrival::Kept
            && let Some(b) = &mut self.buffering
        {
            let delta = delta.to_vec();
            b.kept.push(Kept { agent: agent.to_string(), round, examples, train_loss, delta });
        }
        arrival
    }

    /// Whether `agent` is carried with a training its plan numbered `round`.
    pub(super) fn is_carried(&self, agent: &str, round: u64) -> bool {
        self.buffering.as_ref().and_then(|b| b.carried.get(agent)).is_some_and(|o| o.round == round)
    }

    /// A carried agent left, failed or reconnected while no buffer was collecting: it is forgotten with its kept
    /// update, and free for the next buffer.
    pub(super) fn forget_carried(&mut self, agent: &str) {
        let Some(b) = &mut self.buffering else { return };
        if b.carried.remove(agent).is_some() {
            b.kept.retain(|k| k.agent != agent);
            b.ready.retain(|r| r.agent != agent);
            if let Some(info) = self.agents.get_mut(agent) {
                info.in_round = false;
            }
        }
    }

    /// After a commit (or when the run ends): carried agents whose training is too stale to be worth finishing are
    /// told to stop; when no more rounds will run, all of them, and kept updates are dropped.
    pub(super) fn prune_carried(&mut self, out: &mut Vec<Action>) {
        let ended = !self.running;
        let version = self.model_version;
        let Some(b) = &mut self.buffering else { return };
        let max = b.config.max_staleness;
        // A kept update is folded whatever its staleness; a held delta (secure mode) is not, for agents refuse a
        // scale under `HeldMember::MIN_SCALE`: it is told to stop like one still training.
        let has_sent = |agent: &AgentId| b.kept.iter().any(|k| &k.agent == agent);
        let stop: Vec<(AgentId, Origin)> = b
            .carried
            .iter()
            .filter(|(agent, o)| ended || (version.saturating_sub(o.version) > max && !has_sent(agent)))
            .map(|(a, o)| (a.clone(), *o))
            .collect();
        for (agent, origin) in stop {
            b.carried.remove(&agent);
            b.kept.retain(|k| k.agent != agent);
            b.ready.retain(|r| r.agent != agent);
            if let Some(info) = self.agents.get_mut(&agent) {
                info.in_round = false;
                out.push(Action::CancelTraining { agent, round: origin.round });
            }
        }
    }
}

/// Refuses a strategy that aggregates each update when rounds are buffers: the staleness discount weighs a mean.
pub(super) fn check_buffered_strategy(strategy: &dyn Strategy, buffered: bool) -> Result<(), ConfigError> {
    if buffered && strategy.input() == Input::EachUpdate {
        return Err(ConfigError::Invalid(format!(
            "the strategy {} aggregates each update, which [buffered] does not support (its staleness discount \
             weighs a mean): choose fedavg, fedprox, fedavgm, fedadam, fedyogi or fedadagrad",
            strategy.name()
        )));
    }
    Ok(())
}
