//! The secure mode of a round: the coordinator drives a SecAgg+ [`ServerSession`] through its six phases
//! (advertise keys → share keys → share receipts → masked input → consistency → unmask), each closed by its own
//! deadline or as soon as every
//! member still in it has answered. Agents that miss a phase are dropped (and told so); a phase that leaves fewer
//! than `min_agents` (or fewer than the threshold around any agent) aborts the round, and nothing is revealed. An
//! agent that the receipts leave out because its neighbours named its shares unusable is dropped from the round
//! and quarantined (`[secagg] quarantine_rounds`); the round goes on without it.
//!
//! The plain-mode bookkeeping (members, reports, drops, the record) is shared with [`super::Coordinator`]; what is
//! secure-only lives here. This module never holds an agent's vector: a masked vector is folded into the session's
//! running sum by [`ServerSession::fold_masked`] and forgotten, and the only unmasked value the session ever
//! produces is the cohort's sum, by consuming itself in [`ServerSession::finish`]. No clock, no randomness: the
//! graph seed comes from (configured seed, round).

use super::event::{Action, RejectReason};
use super::plan::SecurePlan;
use super::record::{AgentId, SecAggMetrics};
use super::unmask::UnmaskJob;
use super::{Aggregation, Coordinator, MemberStatus, Stage};
use fedge_shared::round_counts::SECURE_COUNTS;
use fedge_shared::secagg::{AgentRef, ServerSession};
use std::collections::{BTreeMap, BTreeSet};

/// The largest cohort a secure round may have (its key broadcast must fit one control frame).
pub const MAX_SECURE_COHORT: usize = fedge_shared::protocol::limits::SECAGG_COHORT;

/// Where a secure round is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurePhase {
    /// Plans are out; members send their signed keys.
    Advertise,
    /// Keys were relayed; members send their encrypted shares.
    Shares,
    /// Shares were relayed; members say whose shares they could not use (and train meanwhile).
    Receipts,
    /// Members were told whom to mask with; they train and send their masked vectors.
    Masked,
    /// The survivor set is out; survivors sign it.
    Consistency,
    /// The unmask requests are out; survivors whose neighbours signed the same set reveal shares.
    Unmask,
}

impl SecurePhase {
    /// The phase's name in logs and refusals.
    pub fn name(self) -> &'static str {
        match self {
            SecurePhase::Advertise => "advertise-keys",
            SecurePhase::Shares => "share-keys",
            SecurePhase::Receipts => "share-receipts",
            SecurePhase::Masked => "masked-input",
            SecurePhase::Consistency => "consistency",
            SecurePhase::Unmask => "unmask",
        }
    }
}

/// The secure-aggregation state of a round in flight.
pub struct SecureRound {
    /// `None` once the round has been finished or aborted.
    pub(super) session: Option<ServerSession>,
    pub(super) params_summary: String,
    pub(super) phase: SecurePhase,
    pub(super) phase_started_ms: u64,
    pub(super) phase_deadline_ms: u64,
    pub(super) phase_timeout_ms: u64,
    pub(super) training_deadline_ms: u64,
    pub(super) index: BTreeMap<AgentId, u32>,
    pub(super) names: BTreeMap<u32, AgentId>,
    /// Members taking part in the current phase, and those of them that answered.
    pub(super) expected: BTreeSet<AgentId>,
    pub(super) answered: BTreeSet<AgentId>,
    pub(super) metrics: SecAggMetrics,
}

impl std::fmt::Debug for SecureRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureRound")
            .field("phase", &self.phase)
            .field("params", &self.params_summary)
            .field("expected", &self.expected.len())
            .field("answered", &self.answered.len())
            .finish_non_exhaustive()
    }
}

impl SecureRound {
    /// The current phase.
    pub fn phase(&self) -> SecurePhase {
        self.phase
    }

    /// Hands the session over as the job that unmasks the round's sum ([`UnmaskJob::run`]). Unmasking is the heavy
    /// part of a round (the dropped agents' masks are regenerated, O(n · k · P) keystream), so the shell runs it off
    /// its event loop.
    pub(super) fn unmask_job(&mut self) -> Result<UnmaskJob, String> {
        let session = self.session.take().ok_or_else(|| "the secure session is gone".to_string())?;
        Ok(UnmaskJob::new(session))
    }
}

fn reject(out: &mut Vec<Action>, agent: &AgentId, reason: RejectReason) {
    out.push(Action::Reject { agent: agent.clone(), reason });
}

impl Coordinator {
    /// Builds the secure part of round `round_id` over `selected` (index `i` is the `i`-th agent): parameters for
    /// this cohort and the `len` parameters the round trains (the whole model or its trained part), validated, and
    /// a fresh server session expecting masked vectors of that length.
    pub(super) fn secure_round(
        &self,
        round_id: u64,
        selected: &[AgentId],
        len: usize,
        now_ms: u64,
    ) -> Result<(SecurePlan, SecureRound), String> {
        let n = selected.len();
        if n > MAX_SECURE_COHORT {
            return Err(format!("a secure cohort of {n} agents exceeds {MAX_SECURE_COHORT}"));
        }
        let mut params = self.secagg.params_for(n);
        // The federated evaluation's counts and the training metadata ride in every masked vector, after the weight.
        params.counts = SECURE_COUNTS;
        if self.secagg.weight_cap.is_none() {
            // Weigh agents as plain FedAvg does: by examples, capped by max_examples. The cap is the largest count
            // declared in the cohort, so no weight saturates (the server knows these counts from the check-ins).
            let declared =
                selected.iter().filter_map(|a| self.agents.get(a).and_then(|i| i.declared)).max().unwrap_or(1);
            params.weight_cap = declared.min(self.config.max_examples.unwrap_or(u64::MAX)).max(1);
        }
        // Distributed DP sets clipping, weights, quantization and noise (see the `privacy` module).
        let privacy = match &self.privacy {
            Some(p) => Some(p.plan_round(&mut params, n, len).map_err(|e| e.to_string())?),
            None => None,
        };
        // The narrowest masked word for this cohort and quantization (see `SecAggParams::narrow`): configured
        // quantization bits are kept, and so are a private round's.
        params.narrow(n, self.secagg.quant_bits.is_some());
        params.validate(n, len).map_err(|e| format!("secagg parameters for {n} agents: {e}"))?;
        let cohort: Vec<AgentRef> =
            selected.iter().enumerate().map(|(i, a)| AgentRef { index: i as u32, name: a.clone() }).collect();
        let graph_seed = {
            use rand::RngCore;
            super::round_rng(self.config.seed ^ 0x5345_4341_4747_2b2b, round_id).next_u64()
        };
        let mut session =
            ServerSession::new(params.clone(), round_id, &cohort, graph_seed, len).map_err(|e| e.to_string())?;
        // The shell hands over whole vectors only, so nothing is ever staged.
        session.set_max_staged_uploads(1);
        // The shell fills in the core count; the sans-IO core never asks the machine.
        session.set_unmask_threads(self.secagg.unmask_threads.unwrap_or(1));
        let timeout = self.secagg.phase_timeout_ms;
        let round = SecureRound {
            session: Some(session),
            params_summary: format!(
                "k={} t={} clip={} bits={} word={} cap={} clip_norm={:?} noise_variance={}",
                params.neighbours,
                params.threshold,
                params.clip,
                params.quant_bits,
                params.word_bits,
                params.weight_cap,
                params.clip_norm,
                params.noise_variance
            ),
            phase: SecurePhase::Advertise,
            phase_started_ms: now_ms,
            phase_deadline_ms: now_ms.saturating_add(timeout),
            phase_timeout_ms: timeout,
            training_deadline_ms: now_ms.saturating_add(self.config.round_timeout_ms),
            index: cohort.iter().map(|a| (a.name.clone(), a.index)).collect(),
            names: cohort.iter().map(|a| (a.index, a.name.clone())).collect(),
            expected: selected.iter().cloned().collect(),
            answered: BTreeSet::new(),
            metrics: SecAggMetrics::default(),
        };
        let plan = SecurePlan { params, graph_seed, cohort: cohort.into(), phase_timeout_ms: timeout, privacy };
        Ok((plan, round))
    }

    /// Checks that `agent`'s message for `round_id` belongs to the secure round in flight, in phase `want`, and
    /// returns the agent's cohort index; refuses it otherwise.
    pub(super) fn secure_target(
        &mut self,
        agent: &AgentId,
        round_id: u64,
        want: SecurePhase,
        out: &mut Vec<Action>,
    ) -> Option<u32> {
        if !self.agents.contains_key(agent) {
            reject(out, agent, RejectReason::NotConnected);
            return None;
        }
        let Stage::Collecting(round) = &self.stage else {
            let reason = if self.closed_at_deadline == Some(round_id) {
                RejectReason::AfterDeadline
            } else {
                RejectReason::NoRoundInFlight
            };
            reject(out, agent, reason);
            return None;
        };
        if round.plan.round != round_id {
            reject(out, agent, RejectReason::WrongRound { expected: round.plan.round, got: round_id });
            return None;
        }
        let Aggregation::Secure(sec) = &round.aggregation else {
            reject(out, agent, RejectReason::SecAgg("this round does not use secure aggregation".into()));
            return None;
        };
        let after_upload = matches!(want, SecurePhase::Consistency | SecurePhase::Unmask);
        let wanted_status = if after_upload { MemberStatus::Reported } else { MemberStatus::Training };
        match round.members.get(agent) {
            None => {
                reject(out, agent, RejectReason::NotSelected);
                return None;
            }
            Some(MemberStatus::Dropped) => {
                let why = round.dropped.iter().rev().find(|d| d.agent == *agent).map(|d| d.reason.clone());
                reject(out, agent, RejectReason::AlreadyDropped(why.unwrap_or_default()));
                return None;
            }
            Some(s) if *s != wanted_status => {
                let reason = if *s == MemberStatus::Reported {
                    RejectReason::Duplicate
                } else {
                    RejectReason::SecAgg(format!("{} message from an agent that sent no masked input", want.name()))
                };
                reject(out, agent, reason);
                return None;
            }
            Some(_) => {}
        }
        if sec.phase != want || sec.answered.contains(agent) {
            let why = if sec.phase == want {
                format!("a second {} message", want.name())
            } else {
                format!("a {} message in the {} phase", want.name(), sec.phase.name())
            };
            reject(out, agent, RejectReason::SecAgg(why));
            return None;
        }
        sec.index.get(agent).copied()
    }
}
