//! A plain round's traffic: each member's update, checked and folded into the round's running sum (and kept
//! whole for a strategy that aggregates each update), and the federated evaluation it sends with it.
//!
//! Part of the coordinator's sans-IO state machine: never a socket, a clock or a panic on what an agent sends; an
//! update that cannot be folded is refused with its reason and drops its sender from the round.

use super::buffered::Arrival;
use super::{Action, AgentId, Aggregation, Coordinator, MemberStatus, RejectReason, Report, Stage};
use crate::strategy::ClientUpdate;
use fedge_shared::fedeval::EvalCounts;

impl Coordinator {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_update(
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
        let declared = info.declared.unwrap_or(0);
        let examples = examples.min(declared).min(self.config.max_examples.unwrap_or(u64::MAX));
        if !matches!(self.stage, Stage::Collecting(_)) {
            // Between buffers, a carried agent's update waits for the next one.
            match self.keep_update(&agent, round_id, examples, train_loss, delta) {
                Arrival::Kept => return,
                Arrival::Duplicate => return reject(out, agent, RejectReason::Duplicate),
                Arrival::Full => return reject(out, agent, RejectReason::NoRoundInFlight),
                Arrival::NotCarried => {}
            }
        }
        let discount = match &self.stage {
            Stage::Collecting(round) => self.staleness_discount(round.origin(&agent).version),
            _ => 1.0,
        };
        let Stage::Collecting(round) = &mut self.stage else {
            let reason = if self.closed_at_deadline == Some(round_id) {
                RejectReason::AfterDeadline
            } else {
                RejectReason::NoRoundInFlight
            };
            return reject(out, agent, reason);
        };
        if round.origin(&agent).round != round_id {
            let reason = if self.closed_at_deadline == Some(round_id) {
                RejectReason::AfterDeadline
            } else {
                RejectReason::WrongRound { expected: round.plan.round, got: round_id }
            };
            return reject(out, agent, reason);
        }
        match round.members.get(&agent) {
            None => return reject(out, agent, RejectReason::NotSelected),
            Some(MemberStatus::Reported | MemberStatus::Ready) => return reject(out, agent, RejectReason::Duplicate),
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
            Aggregation::Plain(sum) => sum.fold_discounted(examples, discount, delta),
            Aggregation::Secure(_) | Aggregation::Held => return,
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
        // What the upload carried: the plan says how plain updates are encoded (8 bits a coordinate by default).
        round.update_bytes += round.plan.hyper.upload.encoded_len(delta.len()) as u64;
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
        self.close_if_settled(now_ms, out);
    }

    /// Keeps a plain round member's federated evaluation until its update is folded in; implausible counts (more
    /// correct than examples, a non-finite or negative loss) are ignored.
    pub(super) fn on_evaluated(&mut self, agent: AgentId, round_id: u64, counts: EvalCounts) {
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
}
