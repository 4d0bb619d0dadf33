//! Carrying out the coordinator's actions: sending plans, relaying the secure-aggregation messages (keys with
//! their owners' certificates, once per connection, and the operator's signed revocation list), pushing the model
//! to agents that lack it, reserving round ids, unmasking a secure round's sum and committing a round on the
//! blocking pool, and announcing the new version.
//!
//! It decides nothing: every choice here is the coordinator's. It must never block the runtime, and weights bytes
//! are encoded once per version and shared (`Arc`) by every connection that sends them.

use super::core_actor::Core;
use super::wire_plan::wire_plan;
use crate::clock::wall_ms;
use crate::coordinator::{Action, Outcome, RoundRecord};
use crate::core_msg::{CommittedModel, CoreMsg, Outbound, ServerEvent};
use fedge_shared::model::weights_to_bytes;
use fedge_shared::protocol::{BlobHeader, BlobKind, ModelAnnounce, ServerMessage};
use std::sync::Arc;
use tokio::sync::mpsc;

impl Core {
    /// The signed revocation list's bytes as the operator wrote them (empty when there is none or it cannot be
    /// read; agents then check against the newest list they verified before).
    fn signed_revocations(&self) -> Vec<u8> {
        let Some(path) = &self.signed_revocations else { return Vec::new() };
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() <= fedge_shared::revocation_list::LIMIT => bytes,
            Ok(bytes) => {
                tracing::error!(file = %path.display(), len = bytes.len(), "the signed revocation list is too large");
                Vec::new()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the signed revocation list");
                Vec::new()
            }
        }
    }

    pub(super) fn send(&self, agent: &str, mut m: Outbound) {
        if let (Some(hook), Outbound::Msg(msg)) = (&self.relay_hook, &mut m) {
            hook(agent, msg);
        }
        if let Some(c) = self.conns.get(agent) {
            match c.tx.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(agent, "connection queue full; the agent will be dropped if it misses the round")
                }
                Err(mpsc::error::TrySendError::Closed(_)) => tracing::debug!(agent, "connection already closed"),
            }
        }
    }

    /// Sends the graph and the current weights to `agent` unless it holds them.
    pub(super) fn push_model(&mut self, agent: &str) {
        let cur = &self.current;
        let Some(c) = self.conns.get_mut(agent) else { return };
        let diffs = &mut self.diffs;
        if !c.graph_sent {
            let h = BlobHeader { kind: BlobKind::Graph, len: cur.graph.len() as u64, digest: Some(cur.graph_digest) };
            let _ = c.tx.try_send(Outbound::blob(h, cur.graph.clone()));
            self.metrics.sent(cur.graph.len() as u64);
            c.graph_sent = true;
        }
        if c.version_held != Some(cur.version) {
            let announce = ModelAnnounce {
                version: cur.version,
                graph: cur.graph_digest,
                weights: cur.weights_digest,
                params: cur.params,
            };
            let _ = c.tx.try_send(Outbound::msg(ServerMessage::Model(announce)));
            // An agent a few versions behind gets the differences since its version when they are smaller.
            let chain =
                c.version_held.and_then(|held| Some((held, diffs.chain(held, cur.version, cur.weights.len())?)));
            let (h, body) = match chain {
                Some((from, (body, digest))) => {
                    let kind = BlobKind::WeightsDiff { from, version: cur.version, weights: cur.weights_digest };
                    (BlobHeader { kind, len: body.len() as u64, digest: Some(digest) }, body)
                }
                None => {
                    let kind = BlobKind::Weights { version: cur.version };
                    (
                        BlobHeader { kind, len: cur.weights.len() as u64, digest: Some(cur.weights_digest) },
                        cur.weights.clone(),
                    )
                }
            };
            self.metrics.sent(body.len() as u64);
            let _ = c.tx.try_send(Outbound::blob(h, body));
            c.version_held = Some(cur.version);
        }
    }

    pub(super) fn act(&mut self, action: Action) {
        match action {
            Action::SendPlan { agent, plan } => {
                if self.unreserved.as_ref().is_some_and(|(round, _)| *round == plan.round) {
                    return;
                }
                if plan.model_version != self.current.version {
                    tracing::error!(
                        round = plan.round,
                        planned = plan.model_version,
                        current = self.current.version,
                        "a plan for a model version the server no longer sends; not sent"
                    );
                    return;
                }
                self.push_model(&agent);
                let wire = wire_plan(&plan, self.current.graph_digest, self.current.weights_digest, &agent);
                self.send(&agent, Outbound::msg(ServerMessage::Plan(Box::new(wire))));
            }
            Action::SecAggKeys { agent, round, keys, owners } => {
                // Only the agent's own keys and its neighbours' (O(k)), each with its owner's certificate until the
                // agent has answered keys that carried it (`peer_certs`); empty when it holds that very certificate.
                let certificates: Vec<Vec<u8>> = match self.conns.get_mut(&agent) {
                    Some(c) => owners
                        .iter()
                        .map(|o| match self.certs.get(o) {
                            Some(cert) => c.certs.relay(round, o, cert),
                            None => Vec::new(),
                        })
                        .collect(),
                    None => Vec::new(),
                };
                // The operator's CA-signed revocation list, relayed as written: agents check their peers against it.
                let revocations = match &self.revocations_read {
                    Some((r, list)) if *r == round => list.clone(),
                    _ => {
                        let list = self.signed_revocations();
                        self.revocations_read = Some((round, list.clone()));
                        list
                    }
                };
                self.send(&agent, Outbound::msg(ServerMessage::SecAggKeys { round, keys, certificates, revocations }));
            }
            Action::SecAggShares { agent, round, shares } => {
                self.send(&agent, Outbound::msg(ServerMessage::SecAggShares { round, shares }));
            }
            Action::SecAggMaskWith { agent, mask_with } => {
                self.send(&agent, Outbound::msg(ServerMessage::SecAggMaskWith(mask_with)));
            }
            Action::SecAggSurvivors { to, set } => {
                let m = ServerMessage::SecAggSurvivors(set);
                for a in &to {
                    self.send(a, Outbound::msg(m.clone()));
                }
            }
            Action::SecAggUnmask { agent, request } => {
                self.send(&agent, Outbound::msg(ServerMessage::SecAggUnmask(request)));
            }
            Action::Unmask { round, job } => {
                // Seconds of CPU for a large cohort: never on the runtime's threads.
                let tx = self.core_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let outcome = job.run();
                    let _ = tx.blocking_send(CoreMsg::Unmasked { round, outcome });
                });
            }
            Action::Reject { agent, reason } => {
                tracing::warn!(%agent, %reason, "message refused");
                self.send(&agent, Outbound::msg(ServerMessage::Refused { reason: reason.to_string() }));
            }
            Action::CancelTraining { agent, round } => {
                let m = ServerMessage::RoundEnd {
                    round,
                    completed: false,
                    reason: Some("dropped from the round".into()),
                    new_version: None,
                };
                self.send(&agent, Outbound::msg(m));
            }
            Action::RoundStarted { round, model_version, selected } => {
                // The id is durable before the round's first message leaves: a crash never hands it out again.
                if let Err(e) = self.store.reserve_round(round) {
                    tracing::error!(round, error = %e, "cannot reserve the round's id: no plan is sent, the round is aborted");
                    self.unreserved = Some((round, e.to_string()));
                    return;
                }
                tracing::info!(round, model_version, selected, "round started");
                let _ = self.events.send(ServerEvent::RoundStarted { round, model_version, selected });
            }
            Action::Commit { record, new_weights, strategy_state, diff } => {
                self.commit(*record, new_weights, strategy_state, diff)
            }
            Action::Announce { version } => {
                if let Some(record) = self.committing.take() {
                    for r in &record.reported {
                        let m = ServerMessage::RoundEnd {
                            round: record.round,
                            completed: true,
                            reason: None,
                            new_version: Some(version),
                        };
                        self.send(&r.agent, Outbound::msg(m));
                    }
                }
                let agents: Vec<String> = self.conns.keys().cloned().collect();
                for a in agents {
                    self.push_model(&a);
                }
            }
            Action::RoundAborted { round, reason, record } => {
                tracing::warn!(round, %reason, "round aborted");
                if let Err(e) = self.store.record_aborted(&record) {
                    tracing::error!(round, error = %e, "could not record the aborted round");
                }
                for a in &record.selected {
                    let m = ServerMessage::RoundEnd {
                        round,
                        completed: false,
                        reason: Some(reason.to_string()),
                        new_version: None,
                    };
                    self.send(a, Outbound::msg(m));
                }
                let _ = self.events.send(ServerEvent::RoundAborted(record));
            }
            // A later wake-up replaces an earlier one (the coordinator's contract), never "the earlier of the two".
            Action::WakeAt(at) => self.alarm.set(at),
            Action::Forward { result, record } => self.forward(result, record),
            Action::Log { message } => tracing::info!("{message}"),
        }
    }

    fn commit(
        &mut self,
        mut record: RoundRecord,
        new_weights: Vec<f32>,
        strategy_state: Vec<u8>,
        diff: Option<Vec<u8>>,
    ) {
        let store = self.store.clone();
        let evaluator = self.evaluator.clone();
        let graph = self.current.graph.clone();
        let tx = self.core_tx.clone();
        let round = record.round;
        tokio::task::spawn_blocking(move || {
            if let Some(e) = evaluator {
                match e.evaluate(&graph, &new_weights) {
                    Ok(m) => {
                        // Regression has no accuracy; its test loss is the mean squared error.
                        record.metrics.test_accuracy = m.accuracy;
                        record.metrics.test_loss = Some(m.loss);
                    }
                    Err(err) => tracing::warn!(round, error = %format!("{err:#}"), "evaluation failed"),
                }
            }
            // The store encodes and hashes the weights once; the blob the agents receive is those same bytes
            // (little-endian f32), so its digest is read back from the version's metadata, not computed again.
            let result = store
                .commit_round(&record, &new_weights, &strategy_state, wall_ms())
                .and_then(|version| Ok((version, store.model(version)?.weights_digest)))
                .map(|(version, digest)| {
                    let blob = weights_to_bytes(&new_weights);
                    drop(new_weights);
                    record.new_version = Some(version);
                    record.outcome = Outcome::Completed;
                    let diff = diff.map(Arc::new);
                    Box::new(CommittedModel { version, record, digest, blob: Arc::new(blob), diff })
                })
                .map_err(|e| e.to_string());
            let _ = tx.blocking_send(CoreMsg::Committed { round, result });
        });
    }
}
