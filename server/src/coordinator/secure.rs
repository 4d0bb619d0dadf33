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

use super::aggregation::Aggregation;
use super::event::{Action, RejectReason};
use super::plan::SecurePlan;
use super::record::{AbortReason, AgentId, Dropped, Report, SecAggMetrics};
use super::{Coordinator, MemberStatus, Stage};
use fedge_shared::fedeval::EvalCounts;
use fedge_shared::round_counts::{self, SECURE_COUNTS, TrainTotals};
use fedge_shared::secagg::{
    AdvertiseKeys, AgentRef, EncryptedShare, ServerSession, ShareReceipt, SurvivorSignature, UnmaskResponse,
};
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

/// The federated evaluation's totals and how many agents are in them.
pub(super) type EvalTotals = (EvalCounts, usize);

/// The secure-aggregation state of a round in flight.
pub struct SecureRound {
    /// `None` once the round has been finished or aborted.
    session: Option<ServerSession>,
    params_summary: String,
    pub(super) phase: SecurePhase,
    phase_started_ms: u64,
    pub(super) phase_deadline_ms: u64,
    phase_timeout_ms: u64,
    training_deadline_ms: u64,
    index: BTreeMap<AgentId, u32>,
    names: BTreeMap<u32, AgentId>,
    /// Members taking part in the current phase, and those of them that answered.
    expected: BTreeSet<AgentId>,
    answered: BTreeSet<AgentId>,
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

    /// Ends the round: unmasks the sum and returns the weighted mean delta `Σ w·Δ / Σ w`, the federated
    /// evaluation's totals over the survivors (the only evaluation the server ever sees in a secure round) and
    /// their training totals (examples, loss sum; the server never sees one agent's).
    pub(super) fn finish(&mut self) -> Result<SecureOutcome, String> {
        let session = self.session.take().ok_or_else(|| "the secure session is gone".to_string())?;
        let sum = session.finish().map_err(|e| e.to_string())?;
        self.metrics.survivors = sum.survivors.len();
        if !(sum.weight_sum.is_finite() && sum.weight_sum > 0.0) {
            return Err(format!("the survivors' total weight is {}", sum.weight_sum));
        }
        let inv = 1.0 / sum.weight_sum;
        let mean = sum.weighted_delta_sum.iter().map(|&v| (f64::from(v) * inv) as f32).collect();
        // Each agent's counts are bounded but cannot be checked under the masks: a lying agent can spoil the totals
        // (never the model). Implausible totals are dropped, not recorded.
        let (eval, train) = round_counts::totals(&sum.counts);
        let eval = eval.filter(|c| {
            let ok = c.is_plausible();
            if !ok {
                tracing::warn!(?c, "the federated evaluation's totals are implausible; not recorded");
            }
            ok
        });
        let train = train.filter(|t| t.loss_sum.is_finite());
        Ok(SecureOutcome { mean, eval: eval.map(|c| (c, sum.survivors.len())), train })
    }
}

/// What a secure round's unmasked sum gives the coordinator.
pub(super) struct SecureOutcome {
    /// The weighted mean delta.
    pub mean: Vec<f32>,
    /// The federated evaluation's totals and how many agents they cover.
    pub eval: Option<EvalTotals>,
    /// The survivors' training totals (`None` in a private round, which carries no counts).
    pub train: Option<TrainTotals>,
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
            let declared = selected
                .iter()
                .filter_map(|a| self.agents.get(a).and_then(|i| i.holding).map(|h| h.examples))
                .max()
                .unwrap_or(1);
            params.weight_cap = declared.min(self.config.max_examples.unwrap_or(u64::MAX)).max(1);
        }
        // Distributed DP sets clipping, weights, quantization and noise (see the `privacy` module).
        let privacy = match &self.privacy {
            Some(p) => Some(p.plan_round(&mut params, n, len).map_err(|e| e.to_string())?),
            None => None,
        };
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
                "k={} t={} clip={} bits={} cap={} clip_norm={:?} noise_variance={}",
                params.neighbours,
                params.threshold,
                params.clip,
                params.quant_bits,
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
        let plan = SecurePlan { params, graph_seed, cohort, phase_timeout_ms: timeout, privacy };
        Ok((plan, round))
    }

    /// Checks that `agent`'s message for `round_id` belongs to the secure round in flight, in phase `want`, and
    /// returns the agent's cohort index; refuses it otherwise.
    fn secure_target(
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

    /// Phase 1: an agent's signed keys.
    pub(super) fn on_secagg_advertise(
        &mut self,
        now_ms: u64,
        agent: AgentId,
        keys: AdvertiseKeys,
        out: &mut Vec<Action>,
    ) {
        let Some(idx) = self.secure_target(&agent, keys.round, SecurePhase::Advertise, out) else { return };
        self.secure_step(now_ms, agent, out, |s| s.on_advertise(idx, keys));
    }

    /// Phase 2: an agent's encrypted shares.
    pub(super) fn on_secagg_shares(
        &mut self,
        now_ms: u64,
        agent: AgentId,
        round_id: u64,
        shares: Vec<EncryptedShare>,
        out: &mut Vec<Action>,
    ) {
        let Some(idx) = self.secure_target(&agent, round_id, SecurePhase::Shares, out) else { return };
        self.secure_step(now_ms, agent, out, |s| s.on_shares(idx, shares));
    }

    /// After the shares: an agent's receipt for the shares relayed to it.
    pub(super) fn on_secagg_receipt(
        &mut self,
        now_ms: u64,
        agent: AgentId,
        receipt: ShareReceipt,
        out: &mut Vec<Action>,
    ) {
        let Some(idx) = self.secure_target(&agent, receipt.round, SecurePhase::Receipts, out) else { return };
        self.secure_step(now_ms, agent, out, |s| s.on_receipt(idx, receipt));
    }

    /// Runs one session step for `agent`: on success it has answered this phase, on failure it is refused and
    /// dropped from the round.
    fn secure_step(
        &mut self,
        now_ms: u64,
        agent: AgentId,
        out: &mut Vec<Action>,
        step: impl FnOnce(&mut ServerSession) -> Result<(), fedge_shared::secagg::SecAggError>,
    ) {
        let result = match &mut self.stage {
            Stage::Collecting(round) => match &mut round.aggregation {
                Aggregation::Secure(sec) => match sec.session.as_mut() {
                    Some(session) => {
                        let r = step(session);
                        if r.is_ok() {
                            sec.answered.insert(agent.clone());
                        }
                        r.map_err(|e| e.to_string())
                    }
                    None => Err("the secure session is gone".into()),
                },
                Aggregation::Plain(_) => Err("this round does not use secure aggregation".into()),
            },
            _ => Err("no round in flight".into()),
        };
        match result {
            Ok(()) => self.settle_secure(now_ms, out),
            Err(e) => {
                reject(out, &agent, RejectReason::SecAgg(e.clone()));
                self.drop_member(now_ms, &agent, &format!("secure aggregation: {e}"), out);
            }
        }
    }

    /// Phase 3: an agent's whole masked vector, folded into the running sum at once.
    pub(super) fn on_masked_input(
        &mut self,
        now_ms: u64,
        agent: AgentId,
        round_id: u64,
        masked: &[u32],
        out: &mut Vec<Action>,
    ) {
        let Some(idx) = self.secure_target(&agent, round_id, SecurePhase::Masked, out) else { return };
        let result = match &mut self.stage {
            Stage::Collecting(round) => match &mut round.aggregation {
                Aggregation::Secure(sec) => match sec.session.as_mut() {
                    // The shell hands over whole vectors: one of another length (the whole model's in a round that
                    // trains part of it, say) is refused here, never staged as a partial upload.
                    Some(session) if masked.len() != session.vector_len() => Err(format!(
                        "a masked vector of {} values, this round's is {} (weight, {} counts, {} parameters)",
                        masked.len(),
                        session.vector_len(),
                        session.params().counts,
                        session.vector_len().saturating_sub(1 + session.params().counts as usize)
                    )),
                    Some(session) => session.fold_masked(idx, 0, masked).map_err(|e| e.to_string()).map(|()| {
                        sec.answered.insert(agent.clone());
                        round.members.insert(agent.clone(), MemberStatus::Reported);
                        round.update_bytes += (masked.len() * 4) as u64;
                        // The agent's example count and loss are under the masks: the record keeps none per agent.
                        round.reports.push(Report {
                            agent: agent.clone(),
                            examples: 0,
                            train_loss: 0.0,
                            after_ms: now_ms.saturating_sub(round.started_ms),
                            eval: None,
                        });
                        round.plan.model_version
                    }),
                    None => Err("the secure session is gone".into()),
                },
                Aggregation::Plain(_) => Err("this round does not use secure aggregation".into()),
            },
            _ => Err("no round in flight".into()),
        };
        match result {
            Ok(version) => {
                if let Some(h) = self.agents.get_mut(&agent).and_then(|i| i.holding.as_mut()) {
                    h.model_version = Some(version);
                }
                self.settle_secure(now_ms, out);
            }
            Err(e) => {
                reject(out, &agent, RejectReason::SecAgg(e.clone()));
                self.drop_member(now_ms, &agent, &format!("masked input refused: {e}"), out);
            }
        }
    }

    /// Consistency phase: a survivor's signature over the survivor set. A bad one is refused (the agent's input
    /// stays in the sum; it is simply not asked to unmask).
    pub(super) fn on_secagg_survivor_signature(
        &mut self,
        now_ms: u64,
        agent: AgentId,
        signature: SurvivorSignature,
        out: &mut Vec<Action>,
    ) {
        let Some(idx) = self.secure_target(&agent, signature.round, SecurePhase::Consistency, out) else { return };
        let result = match &mut self.stage {
            Stage::Collecting(round) => match &mut round.aggregation {
                Aggregation::Secure(sec) => {
                    sec.answered.insert(agent.clone());
                    match sec.session.as_mut() {
                        Some(session) => session.on_survivor_signature(idx, signature).map_err(|e| e.to_string()),
                        None => Err("the secure session is gone".into()),
                    }
                }
                Aggregation::Plain(_) => Err("this round does not use secure aggregation".into()),
            },
            _ => Err("no round in flight".into()),
        };
        if let Err(e) = result {
            tracing::warn!(%agent, error = %e, "survivor-set signature refused");
            reject(out, &agent, RejectReason::SecAgg(e));
        }
        self.settle_secure(now_ms, out);
    }

    /// Unmask phase: a survivor's revealed shares. A bad answer is refused (the agent's input stays in the sum; its
    /// shares are simply missing).
    pub(super) fn on_secagg_unmask(
        &mut self,
        now_ms: u64,
        agent: AgentId,
        response: UnmaskResponse,
        out: &mut Vec<Action>,
    ) {
        let Some(idx) = self.secure_target(&agent, response.round, SecurePhase::Unmask, out) else { return };
        let result = match &mut self.stage {
            Stage::Collecting(round) => match &mut round.aggregation {
                Aggregation::Secure(sec) => {
                    sec.answered.insert(agent.clone());
                    match sec.session.as_mut() {
                        Some(session) => session.on_unmask(idx, response).map_err(|e| e.to_string()),
                        None => Err("the secure session is gone".into()),
                    }
                }
                Aggregation::Plain(_) => Err("this round does not use secure aggregation".into()),
            },
            _ => Err("no round in flight".into()),
        };
        if let Err(e) = result {
            tracing::warn!(%agent, error = %e, "unmask answer refused");
            reject(out, &agent, RejectReason::SecAgg(e));
        }
        self.settle_secure(now_ms, out);
    }

    /// Closes phases while every member still in the current one has answered; aborts when too few are left.
    pub(super) fn settle_secure(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        loop {
            let Stage::Collecting(round) = &self.stage else { return };
            let Aggregation::Secure(sec) = &round.aggregation else { return };
            let alive = round.members.values().filter(|s| **s != MemberStatus::Dropped).count();
            let after_upload = matches!(sec.phase, SecurePhase::Consistency | SecurePhase::Unmask);
            if !after_upload && alive < self.config.min_agents {
                let reason =
                    AbortReason::TooFewReports { reported: round.reports.len(), min_agents: self.config.min_agents };
                return self.abort_round(now_ms, reason, out);
            }
            let outstanding = sec
                .expected
                .iter()
                .filter(|a| {
                    !sec.answered.contains(*a)
                        && round.members.get(*a) != Some(&MemberStatus::Dropped)
                        && self.agents.contains_key(*a)
                })
                .count();
            if outstanding > 0 {
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
    fn drop_silently(&mut self, agents: &[AgentId], reason: &str, out: &mut Vec<Action>) {
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
    fn close_secure_phase(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Stage::Collecting(round) = &mut self.stage else { return };
        let round_id = round.plan.round;
        let Aggregation::Secure(sec) = &mut round.aggregation else { return };
        let Some(session) = sec.session.as_mut() else { return };
        let phase = sec.phase;
        let elapsed = now_ms.saturating_sub(sec.phase_started_ms);
        let missed: Vec<AgentId> = sec.expected.iter().filter(|a| !sec.answered.contains(*a)).cloned().collect();
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
