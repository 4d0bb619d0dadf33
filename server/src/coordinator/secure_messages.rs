//! A secure round's traffic: each member's signed keys, encrypted shares, share receipt, masked vector, survivor
//! signature and unmask answer, checked against the round and handed to the SecAgg+ server session.
//!
//! Part of the coordinator's sans-IO state machine (see [`super::secure`] for the phases and what is never held):
//! an answer from a stranger, for another round or out of phase is refused with its reason, never a panic.

use super::event::{Action, RejectReason};
use super::record::{AgentId, Report};
use super::secure::SecurePhase;
use super::{Aggregation, Coordinator, MemberStatus, Stage};
use fedge_shared::secagg::ServerSession;
use fedge_shared::secagg::{AdvertiseKeys, EncryptedShare, ShareReceipt, SurvivorSignature, UnmaskResponse};

fn reject(out: &mut Vec<Action>, agent: &AgentId, reason: RejectReason) {
    out.push(Action::Reject { agent: agent.clone(), reason });
}

impl Coordinator {
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
    pub(super) fn secure_step(
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
                Aggregation::Plain(_) | Aggregation::Held => Err("this round does not use secure aggregation".into()),
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
                    Some(session) if masked.len() != session.wire_words() => Err(format!(
                        "a masked vector of {} words, this round's is {} (weight, {} counts, {} parameters in {}-bit \
                         words)",
                        masked.len(),
                        session.wire_words(),
                        session.params().counts,
                        session.vector_len().saturating_sub(1 + session.params().counts as usize),
                        session.params().word_bits
                    )),
                    Some(session) => session.fold_wire(idx, masked).map_err(|e| e.to_string()).map(|()| {
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
                    }),
                    None => Err("the secure session is gone".into()),
                },
                Aggregation::Plain(_) | Aggregation::Held => Err("this round does not use secure aggregation".into()),
            },
            _ => Err("no round in flight".into()),
        };
        match result {
            Ok(()) => self.settle_secure(now_ms, out),
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
                Aggregation::Plain(_) | Aggregation::Held => Err("this round does not use secure aggregation".into()),
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
                Aggregation::Plain(_) | Aggregation::Held => Err("this round does not use secure aggregation".into()),
            },
            _ => Err("no round in flight".into()),
        };
        if let Err(e) = result {
            tracing::warn!(%agent, error = %e, "unmask answer refused");
            reject(out, &agent, RejectReason::SecAgg(e));
        }
        self.settle_secure(now_ms, out);
    }
}
