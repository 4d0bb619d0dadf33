//! How a round ends: members dropping out, the deadline, completing a round (the strategy turns its updates into
//! the new weights, handed to the shell to commit) or aborting it, and what the store's answer does.
//!
//! Part of the coordinator's sans-IO state machine: no socket, no clock (time enters as `now_ms`). A failed
//! aggregation or commit leaves no trace: the strategy's state is restored and the model stays as it was.

use super::SecureOutcome;
use super::{
    AbortReason, Action, AgentId, Aggregation, Coordinator, Dropped, MemberStatus, Outcome, PendingCommit, Round,
    RoundMetrics, RoundRecord, Stage,
};
use crate::strategy::RoundUpdates;
use fedge_shared::fedeval::FederatedEval;

impl Coordinator {
    /// Marks `agent` dropped from the round in flight if it still owed an update.
    pub(super) fn drop_member(&mut self, now_ms: u64, agent: &str, reason: &str, out: &mut Vec<Action>) {
        let Stage::Collecting(round) = &mut self.stage else {
            // Between buffers, a carried agent is only forgotten.
            return self.forget_carried(agent);
        };
        match round.members.get_mut(agent) {
            Some(status @ (MemberStatus::Training | MemberStatus::Ready)) => *status = MemberStatus::Dropped,
            // While a buffered secure round's group runs, the carried agents are not its members.
            _ => return self.forget_carried(agent),
        }
        if let Some(b) = &mut self.buffering {
            // A held delta of an agent that left is gone with it.
            b.ready.retain(|r| r.agent != agent);
        }
        round.dropped.push(Dropped { agent: agent.to_string(), reason: reason.to_string() });
        if let Some(info) = self.agents.get_mut(agent) {
            info.in_round = false;
        }
        self.close_if_settled(now_ms, out);
    }

    /// Whether `agent` still trains for the round its plan numbered `round`: a member of the round in flight (its own
    /// plan's round, or the earlier buffer's it was carried from), or carried between buffers.
    pub(super) fn trains_for(&self, agent: &str, round: u64) -> bool {
        match &self.stage {
            // Carried agents are not members while a buffered secure round's group runs.
            Stage::Collecting(r) => {
                (r.members.get(agent) == Some(&MemberStatus::Training) && r.origin(agent).round == round)
                    || self.is_carried(agent, round)
            }
            _ => self.is_carried(agent, round),
        }
    }

    /// Ends the round early when nobody is still training, or when too few can still report.
    pub(super) fn close_if_settled(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Stage::Collecting(round) = &self.stage else { return };
        if matches!(round.aggregation, Aggregation::Held) {
            return self.settle_held(now_ms, out);
        }
        if round.plan.aggregation.is_secure() {
            return self.settle_secure(now_ms, out);
        }
        let outstanding = round.outstanding();
        let reported = round.reports.len();
        if outstanding == 0 || reported + outstanding < self.config.min_agents || self.buffer_full(reported) {
            self.close_round(now_ms, out);
        }
    }

    pub(super) fn check_deadline(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if let Stage::Collecting(round) = &self.stage
            && matches!(round.aggregation, Aggregation::Held)
        {
            return self.held_deadline(now_ms, out);
        }
        if let Stage::Collecting(round) = &self.stage
            && round.plan.aggregation.secure_plan().is_some()
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
    pub(super) fn close_round(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Stage::Collecting(round) = &self.stage else { return };
        if round.reports.len() < self.config.min_agents {
            let reason =
                AbortReason::TooFewReports { reported: round.reports.len(), min_agents: self.config.min_agents };
            return self.abort_round(now_ms, reason, out);
        }
        let Stage::Collecting(mut round) = std::mem::replace(&mut self.stage, Stage::Idle) else { return };
        if !self.carry_members(&mut round) {
            self.release_members(&mut round, "no update before the deadline", out);
        }
        let mean = match &mut round.aggregation {
            Aggregation::Plain(sum) => {
                round.weight_sum = Some(sum.examples() as f64);
                sum.mean()
            }
            // Never here (a buffered secure round's training closes by forming its group), but never a panic.
            Aggregation::Held => None,
            Aggregation::Secure(sec) => {
                return match sec.unmask_job() {
                    Ok(job) => {
                        sec.phase_started_ms = now_ms;
                        out.push(Action::Unmask { round: round.plan.round, job });
                        self.stage = Stage::Unmasking(round);
                    }
                    Err(failure) => {
                        let reason = AbortReason::SecureAggregation(format!("unmasking: {failure}"));
                        self.finish_aborted(now_ms, *round, reason, out)
                    }
                };
            }
        };
        self.complete_round(now_ms, round, mean, out);
    }

    /// A secure round's unmasked sum is back from the shell: the round completes with it, or aborts.
    pub(super) fn on_unmasked(
        &mut self,
        now_ms: u64,
        round_id: u64,
        outcome: Result<SecureOutcome, String>,
        out: &mut Vec<Action>,
    ) {
        let mut round = match std::mem::replace(&mut self.stage, Stage::Idle) {
            Stage::Unmasking(r) if r.plan.round == round_id => r,
            other => {
                self.stage = other;
                tracing::warn!(round = round_id, "an unmasked sum for a round that is not being unmasked; ignored");
                return;
            }
        };
        if let Aggregation::Secure(sec) = &mut round.aggregation {
            sec.metrics.unmask_ms += now_ms.saturating_sub(sec.phase_started_ms);
            if let Ok(o) = &outcome {
                sec.metrics.survivors = o.survivors;
            }
        }
        match outcome {
            Ok(o) => {
                round.eval = o.eval;
                round.train_totals = o.train;
                // In examples: each survivor's weight is min(examples, cap) / cap.
                let cap = round.plan.aggregation.secure_plan().map_or(1, |sp| sp.params.weight_cap.max(1));
                round.weight_sum = Some(o.weight * cap as f64);
                self.complete_round(now_ms, round, Some(o.mean), out);
            }
            Err(failure) => {
                let reason = AbortReason::SecureAggregation(format!("unmasking: {failure}"));
                self.finish_aborted(now_ms, *round, reason, out);
            }
        }
    }

    /// Completes a closed round with its mean delta: the strategy makes the new weights, handed to the shell to
    /// commit; a failed aggregation aborts the round and leaves the strategy's state as it was.
    fn complete_round(&mut self, now_ms: u64, round: Box<Round>, mean: Option<Vec<f32>>, out: &mut Vec<Action>) {
        let Some(mean) = mean else {
            // Unreachable with min_agents ≥ 1, but never a panic.
            let reason = AbortReason::Strategy("nothing was aggregated".into());
            return self.finish_aborted(now_ms, *round, reason, out);
        };
        // An aggregator forwards the mean to its root instead.
        let weight = round.weight_sum.unwrap_or(0.0).round() as u64;
        let Some((round, mean)) = self.forward_round(now_ms, round, mean, weight, out) else { return };
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
        let (new_weights, diff) = self.settle_download(new_weights);
        let record = self.record(&round, now_ms, Outcome::Completed);
        let strategy_state = self.strategy.state();
        tracing::info!(round = record.round, reported = record.reported.len(), "round complete, committing");
        out.push(Action::Commit {
            record: Box::new(record.clone()),
            new_weights: new_weights.clone(),
            strategy_state,
            diff,
        });
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

    pub(super) fn abort_round(&mut self, now_ms: u64, reason: AbortReason, out: &mut Vec<Action>) {
        let Stage::Collecting(mut round) = std::mem::replace(&mut self.stage, Stage::Idle) else { return };
        let why = format!("round aborted: {reason}");
        self.release_members(&mut round, &why, out);
        self.finish_aborted(now_ms, *round, reason, out);
    }

    /// Drops whoever still owes an update (telling them to stop) and frees every member for the next round.
    pub(super) fn release_members(&mut self, round: &mut Round, reason: &str, out: &mut Vec<Action>) {
        if let Some(b) = &mut self.buffering {
            // Held deltas of the round's members are discarded with it: they train again.
            b.ready.retain(|r| !round.members.contains_key(&r.agent));
        }
        for (agent, status) in round.members.iter_mut() {
            if matches!(*status, MemberStatus::Training | MemberStatus::Ready) {
                *status = MemberStatus::Dropped;
                round.dropped.push(Dropped { agent: agent.clone(), reason: reason.to_string() });
                if self.agents.contains_key(agent) {
                    // The round its plan named (a buffer's carried members trained for an earlier one).
                    let planned = round.origins.get(agent).map_or(round.plan.round, |o| o.round);
                    out.push(Action::CancelTraining { agent: agent.clone(), round: planned });
                }
            }
            if let Some(info) = self.agents.get_mut(agent) {
                info.in_round = false;
            }
        }
    }

    pub(super) fn finish_aborted(&mut self, now_ms: u64, round: Round, reason: AbortReason, out: &mut Vec<Action>) {
        let record = self.record(&round, now_ms, Outcome::Aborted(reason.clone()));
        tracing::warn!(round = record.round, %reason, "round aborted");
        self.forward_abort(record.round, &reason, out);
        out.push(Action::RoundAborted { round: record.round, reason, record: Box::new(record) });
        self.stage = Stage::Idle;
        self.not_before_ms = now_ms.saturating_add(self.config.retry_backoff_ms);
    }

    pub(super) fn record(&self, round: &Round, now_ms: u64, outcome: Outcome) -> RoundRecord {
        // Secure rounds: the survivors' totals from under the masks (none in a private round); plain: the reports.
        let (total_examples, mean_train_loss) = match (&round.aggregation, round.train_totals) {
            (_, Some(t)) => (t.examples, t.mean_loss().map(|l| l as f32)),
            (Aggregation::Secure(_) | Aggregation::Held, None) => (0, None),
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
                    Aggregation::Plain(_) | Aggregation::Held => None,
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

    pub(super) fn on_committed(&mut self, now_ms: u64, round: u64, version: u64, out: &mut Vec<Action>) {
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
        self.prune_carried(out);
    }

    pub(super) fn on_commit_failed(&mut self, now_ms: u64, round: u64, error: String, out: &mut Vec<Action>) {
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
}
