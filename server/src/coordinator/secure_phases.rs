//! How a secure round moves on: a phase closes when every member still in it has answered or at its deadline,
//! members that missed it are dropped (and told), and the next phase's messages go out; too few members left
//! aborts the round with nothing revealed.
//!
//! Part of the coordinator's sans-IO state machine (see [`super::secure`]): no clock (time enters as `now_ms`).

use super::event::Action;
use super::record::{AbortReason, AgentId, Dropped};
use super::secure::SecurePhase;
use super::{Aggregation, Coordinator, MemberStatus, Stage};
use std::collections::BTreeSet;

impl Coordinator {
    /// Closes phases while every member still in the current one has answered; aborts when too few are left.
    pub(super) fn settle_secure(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        loop {
            let Stage::Collecting(round) = &self.stage else { return };
            let Aggregation::Secure(sec) = &round.aggregation else { return };
            // Called after every message of a phase. The check for answers still owed stops at the first member
            // owing one, so a phase of n answers costs O(n log n) name lookups in all rather than n². The count of
            // members left walks up to `min_agents` statuses without comparing names (a few milliseconds a round at
            // n = 1,000); a counter kept beside `members` would have to follow buffered rounds, which replace and
            // prune the map, and is not worth that.
            let min = self.config.min_agents;
            let alive = round.members.values().filter(|s| **s != MemberStatus::Dropped).take(min).count();
            let after_upload = matches!(sec.phase, SecurePhase::Consistency | SecurePhase::Unmask);
            if !after_upload && alive < min {
                let reason = AbortReason::TooFewReports { reported: round.reports.len(), min_agents: min };
                return self.abort_round(now_ms, reason, out);
            }
            let outstanding = sec.expected.iter().any(|a| {
                !sec.answered.contains(a)
                    && round.members.get(a) != Some(&MemberStatus::Dropped)
                    && self.agents.contains_key(a)
            });
            if outstanding {
                return;
            }
            let (id, phase) = (round.plan.round, sec.phase);
            self.close_secure_phase(now_ms, out);
            let same = match &self.stage {
                Stage::Collecting(r) => {
                    r.plan.round == id && matches!(&r.aggregation, Aggregation::Secure(s) if s.phase != phase)
                }
                _ => false,
            };
            if !same {
                return;
            }
        }
    }

    /// The current phase's deadline has passed: closes it.
    pub(super) fn secure_deadline(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Stage::Collecting(round) = &self.stage else { return };
        let Aggregation::Secure(sec) = &round.aggregation else { return };
        if now_ms < sec.phase_deadline_ms {
            return;
        }
        if sec.phase == SecurePhase::Masked {
            self.closed_at_deadline = Some(round.plan.round);
        }
        self.close_secure_phase(now_ms, out);
        // A phase closed by its deadline may leave the next one with nobody to wait for.
        self.settle_secure(now_ms, out);
    }

    /// Drops `agents` (still owing the current phase) with `reason`, telling the connected ones to stop.
    pub(super) fn drop_silently(&mut self, agents: &[AgentId], reason: &str, out: &mut Vec<Action>) {
        let Stage::Collecting(round) = &mut self.stage else { return };
        for a in agents {
            if let Some(status @ MemberStatus::Training) = round.members.get_mut(a) {
                *status = MemberStatus::Dropped;
                round.dropped.push(Dropped { agent: a.clone(), reason: reason.to_string() });
                if let Some(info) = self.agents.get_mut(a) {
                    info.in_round = false;
                    out.push(Action::CancelTraining { agent: a.clone(), round: round.plan.round });
                }
            }
        }
    }

    /// Closes the current phase and opens the next (or finishes the round).
    pub(super) fn close_secure_phase(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Stage::Collecting(round) = &mut self.stage else { return };
        let round_id = round.plan.round;
        let Aggregation::Secure(sec) = &mut round.aggregation else { return };
        let Some(session) = sec.session.as_mut() else { return };
        let phase = sec.phase;
        let elapsed = now_ms.saturating_sub(sec.phase_started_ms);
        let missed: BTreeSet<AgentId> = sec.expected.iter().filter(|a| !sec.answered.contains(*a)).cloned().collect();
        let names = |ids: &mut dyn Iterator<Item = u32>| -> Vec<AgentId> {
            ids.filter_map(|i| sec.names.get(&i).cloned()).collect()
        };
        // Members the receipts leave out because their neighbours could not use their shares.
        let mut blamed: Vec<AgentId> = Vec::new();
        // Each arm yields the members of the next phase and the action that opens it.
        let next: Result<(Vec<AgentId>, Vec<Action>), String> = match phase {
            SecurePhase::Advertise => session.close_advertise().map_err(|e| e.to_string()).map(|relay| {
                sec.metrics.advertise_ms = elapsed;
                let mut to = Vec::new();
                let mut actions = Vec::new();
                for (idx, keys) in relay {
                    if let Some(agent) = sec.names.get(&idx) {
                        let owners = names(&mut keys.iter().map(|k| k.from));
                        to.push(agent.clone());
                        actions.push(Action::SecAggKeys { agent: agent.clone(), round: round_id, keys, owners });
                    }
                }
                (to, actions)
            }),
            SecurePhase::Shares => session.close_shares().map_err(|e| e.to_string()).map(|per_agent| {
                sec.metrics.share_ms = elapsed;
                let mut to = Vec::new();
                let mut actions = Vec::new();
                for (idx, shares) in per_agent {
                    if let Some(agent) = sec.names.get(&idx) {
                        to.push(agent.clone());
                        actions.push(Action::SecAggShares { agent: agent.clone(), round: round_id, shares });
                    }
                }
                (to, actions)
            }),
            SecurePhase::Receipts => session.close_receipts().map_err(|e| e.to_string()).map(|receipts| {
                // The receipts count as part of sharing in the record.
                sec.metrics.share_ms += elapsed;
                blamed = names(&mut receipts.blamed.iter().copied());
                let mut to = Vec::new();
                let mut actions = Vec::new();
                for (idx, mask_with) in receipts.mask_with {
                    if let Some(agent) = sec.names.get(&idx) {
                        to.push(agent.clone());
                        actions.push(Action::SecAggMaskWith { agent: agent.clone(), mask_with });
                    }
                }
                (to, actions)
            }),
            SecurePhase::Masked => {
                if round.reports.len() < self.config.min_agents {
                    Err(format!(
                        "only {} masked inputs arrived, at least {} are needed",
                        round.reports.len(),
                        self.config.min_agents
                    ))
                } else {
                    session.close_masked().map_err(|e| e.to_string()).map(|set| {
                        sec.metrics.masked_ms = elapsed;
                        let to = names(&mut set.survivors.iter().copied());
                        (to.clone(), vec![Action::SecAggSurvivors { to, set }])
                    })
                }
            }
            SecurePhase::Consistency => session.close_consistency().map_err(|e| e.to_string()).map(|requests| {
                // The consistency round counts as part of unmasking in the record.
                sec.metrics.unmask_ms = elapsed;
                let mut to = Vec::new();
                let mut actions = Vec::new();
                for (idx, request) in requests {
                    sec.metrics.dropped_after_sharing = request.dropped.len();
                    if let Some(agent) = sec.names.get(&idx) {
                        to.push(agent.clone());
                        actions.push(Action::SecAggUnmask { agent: agent.clone(), request });
                    }
                }
                (to, actions)
            }),
            SecurePhase::Unmask => {
                sec.metrics.unmask_ms += elapsed;
                return self.close_round(now_ms, out);
            }
        };
        let (members, actions) = match next {
            Ok(n) => n,
            Err(e) => {
                let reason = if phase == SecurePhase::Masked && round.reports.len() < self.config.min_agents {
                    AbortReason::TooFewReports { reported: round.reports.len(), min_agents: self.config.min_agents }
                } else {
                    AbortReason::SecureAggregation(format!("{} phase: {e}", phase.name()))
                };
                return self.abort_round(now_ms, reason, out);
            }
        };
        let next_members: BTreeSet<AgentId> = members.into_iter().collect();
        let left_out: Vec<AgentId> = sec.expected.iter().filter(|a| !next_members.contains(*a)).cloned().collect();
        let (late, pruned): (Vec<AgentId>, Vec<AgentId>) = left_out.into_iter().partition(|a| missed.contains(a));
        let (blamed, pruned): (Vec<AgentId>, Vec<AgentId>) = pruned.into_iter().partition(|a| blamed.contains(a));
        sec.phase = match phase {
            SecurePhase::Advertise => SecurePhase::Shares,
            SecurePhase::Shares => SecurePhase::Receipts,
            SecurePhase::Receipts => SecurePhase::Masked,
            SecurePhase::Masked => SecurePhase::Consistency,
            _ => SecurePhase::Unmask,
        };
        sec.phase_started_ms = now_ms;
        sec.phase_deadline_ms = match sec.phase {
            SecurePhase::Masked => sec.training_deadline_ms.max(now_ms.saturating_add(sec.phase_timeout_ms)),
            _ => now_ms.saturating_add(sec.phase_timeout_ms),
        };
        sec.expected = next_members;
        sec.answered.clear();
        tracing::info!(
            round = round_id,
            closed = phase.name(),
            next = sec.phase.name(),
            members = sec.expected.len(),
            "secure aggregation phase closed"
        );
        let missed_reason = format!("missed the {} deadline", phase.name());
        self.drop_silently(&late, &missed_reason, out);
        self.drop_silently(&pruned, "too few of its neighbours are left in the round", out);
        self.drop_silently(&blamed, "its neighbours could not use the shares it sent them", out);
        for agent in blamed {
            self.quarantine(agent, round_id, out);
        }
        out.extend(actions);
    }
}
