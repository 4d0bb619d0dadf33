//! How a round starts: when one may (running, not paused, enough disk, enough available agents, past the back-off),
//! who is selected, what the plan says, and the wake-ups the coordinator asks the shell for.
//!
//! Part of the coordinator's sans-IO state machine: selection is seeded by (seed, round), never by a global random
//! source, and time only enters as `now_ms`.

use super::{
    Action, AgentId, AgentInfo, Aggregation, AggregationMode, Coordinator, MemberStatus, PrivateRoundError, Round,
    RoundPlan, STORAGE_RECHECK_MS, SecurePlan, Stage, WeightedSum, part, round_rng, select, wire_seed_for,
};
use crate::strategy::Input;
use rand::RngCore;
use std::collections::BTreeMap;

impl Coordinator {
    pub(super) fn is_available(info: &AgentInfo) -> bool {
        !info.in_round && !info.silent && info.declared.is_some_and(|e| e > 0)
    }

    pub(super) fn is_quarantined(&self, agent: &str) -> bool {
        self.quarantined.get(agent).is_some_and(|&until| self.next_round < until)
    }

    pub(super) fn available_count(&self) -> usize {
        self.agents.iter().filter(|(name, info)| Self::is_available(info) && !self.is_quarantined(name)).count()
    }

    pub(super) fn available(&self) -> Vec<AgentId> {
        self.agents
            .iter()
            .filter(|(name, info)| Self::is_available(info) && !self.is_quarantined(name))
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub(super) fn maybe_start_round(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        // An aggregator's rounds run when its root asks, whatever the run says.
        let forwarded = self.is_forwarding();
        if forwarded && self.root_request_ready().is_none() {
            return;
        }
        if !matches!(self.stage, Stage::Idle)
            || (!self.running && !forwarded)
            || self.paused
            || self.storage_low.is_some()
            || (self.remaining == Some(0) && !forwarded)
            || now_ms < self.not_before_ms
        {
            return;
        }
        let available = self.available_count();
        let size = if self.buffering().is_some() {
            // A buffer sends the newest model to every idle agent (up to max_agents training at once), and may open
            // with carried agents only.
            match self.buffer_cohort(available) {
                Some(n) => n,
                None => return,
            }
        } else {
            if available < self.config.min_available().max(self.min_group()) {
                return;
            }
            let n = self.config.selection().cohort_size(available);
            if n == 0 || (self.secagg.enabled && n < 2) {
                return;
            }
            n
        };
        let candidates = self.available();
        let round_id = self.next_round;
        // The root's training settings for an aggregator's round, else the configured ones.
        let base = self.root_request_ready().map(|r| (r.hyper.clone(), r.wire_seed));
        let trainable = base.as_ref().map_or(&self.config.hyper.trainable, |(h, _)| &h.trainable);
        let part = match part::resolve(trainable, &self.layout) {
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
        let (mode, aggregation) = if self.secagg.enabled && self.buffering.is_some() {
            // A buffered secure round trains first; its group's secure aggregation is set up once agents are ready.
            (AggregationMode::Held, Aggregation::Held)
        } else if self.secagg.enabled {
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
        let mut hyper = match base {
            // An aggregator's agents receive the root's seed itself (see `plan::wire_seed_for`).
            Some((mut hyper, wire_seed)) => {
                hyper.seed = wire_seed_for(wire_seed, round_id);
                self.root_round_started(round_id);
                hyper
            }
            None => {
                let mut hyper = self.strategy.configure_round(round_id, &self.config.hyper);
                // The plan names the part the round's sums were sized for, whatever the strategy configured.
                hyper.trainable = self.config.hyper.trainable.clone();
                // A separate stream from selection's, so the agents' seed says nothing about who was picked.
                hyper.seed = round_rng(self.config.seed ^ 0x7261_6e64_7365_6564, round_id).next_u64();
                hyper
            }
        };
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
            members.insert(agent.clone(), MemberStatus::Training);
            out.push(Action::SendPlan { agent: agent.clone(), plan: plan.clone() });
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
            weight_sum: None,
            update_bytes: 0,
            part,
            kept: (!self.secagg.enabled && self.strategy.input() == Input::EachUpdate).then(Vec::new),
            pending_eval: BTreeMap::new(),
            eval: None,
            origins: BTreeMap::new(),
        }));
        self.open_buffer(now_ms, out);
    }

    pub(super) fn request_wake(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let wanted = match &self.stage {
            Stage::Collecting(r) => Some(match &r.aggregation {
                Aggregation::Secure(s) => s.phase_deadline_ms,
                Aggregation::Plain(_) | Aggregation::Held => r.deadline_at_ms,
            }),
            // While the disk is short of space, wake now and then so that the shell can look again.
            Stage::Idle if self.running && !self.paused && self.storage_low.is_some() => {
                Some(now_ms.saturating_add(STORAGE_RECHECK_MS))
            }
            Stage::Idle if self.running && !self.paused && now_ms < self.not_before_ms => Some(self.not_before_ms),
            // An aggregator answers a request that started no round once the round time-out has passed.
            Stage::Idle if self.root_request_expiry().is_some() => {
                let expiry = self.root_request_expiry();
                match self.root_request_ready() {
                    Some(_) if now_ms < self.not_before_ms => expiry.map(|e| e.min(self.not_before_ms)),
                    _ => expiry,
                }
            }
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
