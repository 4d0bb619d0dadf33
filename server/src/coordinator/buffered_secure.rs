//! Buffered asynchronous aggregation with secure aggregation: a buffer's ready agents form a SecAgg+ group of their
//! own.
//!
//! With [`Coordinator::with_buffering`] and [`Coordinator::with_secagg`] a round runs in two steps:
//! - **Training.** Every idle agent is sent the newest model with a training plan ([`AggregationMode::Held`]), as
//!   in plain buffers (see `buffered`: up to `max_agents` training at once, carried agents included). An agent that
//!   has trained says so with `Event::Ready` (the round its plan named, the version it trained from, its example
//!   count) and keeps its delta: nothing is uploaded, and the server never holds an agent's delta.
//! - **The group.** As soon as K agents are ready (or at the round's deadline with at least `min_agents` ready, or
//!   when nobody else is training), the first K ready agents, in the order they said so, become the round's SecAgg+
//!   cohort ([`AggregationMode::HeldGroup`]): they run the secure phases (advertise → shares → receipts → masked →
//!   consistency → unmask) without training, each masking its held delta multiplied by its staleness discount
//!   `(1 + τ)^-staleness_exponent` (τ: versions committed since the one it trained from), which the group's plan
//!   gives every member. The weight under the masks stays the agent's example count (capped as in secure rounds),
//!   so the unmasked mean is `Σ dᵢ·wᵢ·Δᵢ / Σ wᵢ` over the survivors: plain FedBuff's discounted mean, the
//!   denominator from the unmasked weights, and no individual delta ever seen.
//! - Drop-outs during the group's phases are handled as in any secure round (a member lost after its masked input is
//!   recovered from its neighbours' shares; fewer than `min_agents` left aborts with nothing revealed). A group that
//!   aborts discards its members' deltas: they are freed and train again from the next buffer's model.
//! - Members still training, and ready agents beyond K, are carried to the next buffer; an agent that says it is
//!   ready while a group's phases run (or while its model is committed, or the run is paused) is counted toward the
//!   next group, which forms as soon as the next buffer opens if K are ready by then. Nothing is sent to idle agents
//!   while a group's phases run: they train from the next buffer's model. A held delta whose training started more
//!   than `max_staleness` versions ago is dropped (its agent told to stop) at a commit, so every scale a group's plan
//!   gives is at least `(1 + max_staleness)^-staleness_exponent`, which must be at least `HeldMember::MIN_SCALE`.
//! - A `Ready` that names another round, another version than its plan's, no examples, or an agent that is not
//!   training is refused with its reason; another version or no examples also drops its sender. A plain update in
//!   such a run is refused too.
//!
//! Part of the coordinator's sans-IO state machine: no socket, no clock, no panic on what an agent sends.

use super::buffered::ReadyDelta;
use super::event::{Action, FoldError, RejectReason};
use super::plan::{AggregationMode, HeldMember};
use super::record::{AbortReason, AgentId};
use super::{Aggregation, Coordinator, MemberStatus, Stage};

impl Coordinator {
    /// `Event::Ready`: `agent` holds the delta of its training for `round`.
    pub(super) fn on_ready(
        &mut self,
        now_ms: u64,
        agent: AgentId,
        round_id: u64,
        version: u64,
        examples: u64,
        out: &mut Vec<Action>,
    ) {
        let reject = |out: &mut Vec<Action>, agent: &AgentId, reason| {
            out.push(Action::Reject { agent: agent.clone(), reason });
        };
        let Some(info) = self.agents.get(&agent) else {
            return reject(out, &agent, RejectReason::NotConnected);
        };
        if self.buffering.is_none() || !self.secagg.enabled {
            return reject(out, &agent, RejectReason::SecAgg("a ready message outside buffered secure rounds".into()));
        }
        // Its weight is what the masks will carry; a count of zero could not weigh anything.
        let capped = examples.min(info.declared.unwrap_or(0)).min(self.config.max_examples.unwrap_or(u64::MAX));
        let origin = match &self.stage {
            Stage::Collecting(r) if matches!(r.aggregation, Aggregation::Held) && r.members.contains_key(&agent) => {
                match r.members.get(&agent) {
                    Some(MemberStatus::Training) => r.origin(&agent),
                    Some(MemberStatus::Dropped) => {
                        let why = r.dropped.iter().rev().find(|d| d.agent == agent).map(|d| d.reason.clone());
                        return reject(out, &agent, RejectReason::AlreadyDropped(why.unwrap_or_default()));
                    }
                    _ => return reject(out, &agent, RejectReason::Duplicate),
                }
            }
            // Between groups: a carried agent's readiness counts toward the next group.
            _ => match self.buffering.as_ref().and_then(|b| b.carried.get(&agent).map(|o| (b, *o))) {
                Some((b, _)) if b.ready.iter().any(|r| r.agent == agent) => {
                    return reject(out, &agent, RejectReason::Duplicate);
                }
                Some((_, o)) => o,
                None => {
                    let reason = match &self.stage {
                        Stage::Collecting(r) if r.members.contains_key(&agent) => {
                            RejectReason::SecAgg("a ready message during its group's secure phases".into())
                        }
                        Stage::Collecting(_) => RejectReason::NotSelected,
                        _ => RejectReason::NoRoundInFlight,
                    };
                    return reject(out, &agent, reason);
                }
            },
        };
        if origin.round != round_id {
            // As for a plain update of another round: refused, and its sender stays where it is.
            return reject(out, &agent, RejectReason::WrongRound { expected: origin.round, got: round_id });
        }
        let wrong = if origin.version != version {
            Some(RejectReason::SecAgg(format!(
                "trained from version {version}, its plan named version {}",
                origin.version
            )))
        } else if capped == 0 {
            Some(RejectReason::Invalid(FoldError::NoExamples))
        } else {
            None
        };
        if let Some(reason) = wrong {
            let why = reason.to_string();
            reject(out, &agent, reason);
            return self.drop_member(now_ms, &agent, &why, out);
        }
        if let Some(b) = &mut self.buffering {
            b.ready.push(ReadyDelta { agent: agent.clone(), origin });
        }
        if let Stage::Collecting(r) = &mut self.stage
            && matches!(r.aggregation, Aggregation::Held)
        {
            r.members.insert(agent, MemberStatus::Ready);
            self.close_if_settled(now_ms, out);
        }
    }

    /// A buffered secure round's training: forms its group once K agents are ready, or once nobody else is training
    /// (then with at least `min_agents`, or aborts), or aborts when too few can still become ready.
    pub(super) fn settle_held(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Stage::Collecting(round) = &self.stage else { return };
        let training = round.members.values().filter(|s| **s == MemberStatus::Training).count();
        let ready = self.buffering.as_ref().map_or(0, |b| b.ready.len());
        let k = self.buffering.as_ref().map_or(usize::MAX, |b| b.config.size);
        if ready >= k || training == 0 || ready + training < self.config.min_agents {
            self.close_held(now_ms, out);
        }
    }

    /// A buffered secure round's deadline has passed while it trains: its group forms with whoever is ready.
    pub(super) fn held_deadline(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if let Stage::Collecting(r) = &self.stage
            && now_ms >= r.deadline_at_ms
        {
            self.closed_at_deadline = Some(r.plan.round);
            self.close_held(now_ms, out);
        }
    }

    /// Ends a buffered secure round's training: the group forms from the first K ready agents if at least
    /// `min_agents` (and two) are ready, else the round aborts and every member's delta is discarded.
    fn close_held(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let n = self.buffering.as_ref().map_or(0, |b| b.ready.len().min(b.config.size));
        if n < self.config.min_agents.max(2) {
            let reason = AbortReason::TooFewReports { reported: n, min_agents: self.config.min_agents };
            return self.abort_round(now_ms, reason, out);
        }
        let Some(b) = &mut self.buffering else { return };
        let group: Vec<ReadyDelta> = b.ready.drain(..n).collect();
        let Stage::Collecting(mut round) = std::mem::replace(&mut self.stage, Stage::Idle) else { return };
        // Whoever is not in the group (still training, or ready beyond K) is carried to the next buffer.
        for (agent, status) in std::mem::take(&mut round.members) {
            if group.iter().any(|g| g.agent == agent) {
                continue;
            }
            match status {
                MemberStatus::Training | MemberStatus::Ready => {
                    b.carried.insert(agent.clone(), round.origin(&agent));
                }
                MemberStatus::Reported | MemberStatus::Dropped => {
                    if let Some(info) = self.agents.get_mut(&agent) {
                        info.in_round = false;
                    }
                }
            }
        }
        let names: Vec<AgentId> = group.iter().map(|g| g.agent.clone()).collect();
        let len = round.part.as_ref().map_or(self.global.len(), |p| p.len());
        let setup = self.secure_round(round.plan.round, &names, len, now_ms);
        let held: Vec<HeldMember> = group
            .iter()
            .enumerate()
            .map(|(i, g)| HeldMember {
                index: i as u32,
                trained_round: g.origin.round,
                trained_version: g.origin.version,
                scale: self.staleness_discount(g.origin.version),
            })
            .collect();
        // The group's members answer for this round from now on, whatever round they trained for.
        round.origins.clear();
        round.selected = names.clone();
        round.members = names.iter().map(|a| (a.clone(), MemberStatus::Training)).collect();
        match setup {
            Ok((plan, mut sec)) => {
                // Nothing trains: the masked phase lasts one phase timeout.
                sec.training_deadline_ms = now_ms;
                round.plan.aggregation = AggregationMode::HeldGroup(plan, held);
                round.aggregation = Aggregation::Secure(Box::new(sec));
                tracing::info!(round = round.plan.round, group = names.len(), "buffered secure round: group formed");
                for agent in names {
                    out.push(Action::SendPlan { agent, plan: round.plan.clone() });
                }
                self.stage = Stage::Collecting(round);
            }
            Err(e) => {
                self.stage = Stage::Collecting(round);
                self.abort_round(now_ms, AbortReason::SecureAggregation(format!("forming the group: {e}")), out);
            }
        }
    }
}
