//! An aggregator's core: the root's requests for rounds (from the uplink's learner) fed to the coordinator and
//! answered in order, the root's versions installed as this server's model and pushed to its agents, and a forwarded
//! round kept in the history and announced to its reporters.
//!
//! It decides nothing (the coordinator does, see `coordinator::forward`) and never blocks the runtime: versions
//! arrive stored, encoded and hashed by the uplink's installer.

use super::core_actor::Core;
use crate::coordinator::{Event, Partial, RootRequest, RoundRecord};
use crate::core_msg::{ForwardReply, InstalledModel, Outbound};
use fedge_shared::protocol::ServerMessage;

impl Core {
    /// The root asked for a round: the coordinator answers every request once, in the order they came.
    pub(super) fn on_root_round(&mut self, request: RootRequest, reply: ForwardReply) {
        self.forward_replies.push_back(reply);
        self.feed(Event::RootRound { request });
    }

    /// The root's version `m` is stored: it becomes the model this server sends and trains from.
    pub(super) fn on_installed(&mut self, m: InstalledModel) {
        if m.version < self.current.version {
            tracing::warn!(version = m.version, current = self.current.version, "ignored an older root version");
            return;
        }
        if m.graph_digest != self.current.graph_digest {
            tracing::info!(graph = %m.graph_digest.short(), "the root's graph changed: every agent is sent it");
            self.current.graph = m.graph;
            self.current.graph_digest = m.graph_digest;
            for c in self.conns.values_mut() {
                c.graph_sent = false;
                c.version_held = None;
            }
        }
        self.diffs.committed(self.current.version, m.version, m.diff);
        self.current.version = m.version;
        self.current.weights = m.blob;
        self.current.weights_digest = m.digest;
        self.current.params = m.weights.len() as u64;
        self.metrics.model_version.set(m.version as i64);
        tracing::info!(version = m.version, "serving the root's version");
        self.feed(Event::Installed { version: m.version, weights: &m.weights });
        let agents: Vec<String> = self.conns.keys().cloned().collect();
        for a in agents {
            self.push_model(&a);
        }
    }

    /// Carries out `Action::Forward`: the round's record kept (a round that committed no model of its own), its
    /// reporters told it completed, and the answer handed to the uplink.
    pub(super) fn forward(&mut self, result: Result<Partial, String>, record: Option<Box<RoundRecord>>) {
        if let Some(record) = record {
            if let Err(e) = self.store.record_aborted(&record) {
                tracing::error!(round = record.round, error = %e, "could not record the forwarded round");
            }
            for r in &record.reported {
                let m =
                    ServerMessage::RoundEnd { round: record.round, completed: true, reason: None, new_version: None };
                self.send(&r.agent, Outbound::msg(m));
            }
        }
        if let Err(why) = &result {
            tracing::warn!(reason = %why, "nothing to forward to the root for its round");
        }
        match self.forward_replies.pop_front() {
            Some(reply) => {
                // The learner may have given up waiting (it then reports its own time-out to the root).
                let _ = reply.try_send(result);
            }
            None => tracing::warn!("an answer for the root with no request waiting; dropped"),
        }
    }
}
