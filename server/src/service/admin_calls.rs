//! The core's answers to the operator's calls ([`crate::admin::AdminCall`]): the status snapshot, starting rounds
//! with a target accuracy, showing and setting the coordinator's settings (kept in the store across restarts), and
//! revoking an agent (which closes its live connection).
//!
//! It runs inside the core's task: it must never block, and a setting the coordinator refuses is never kept.

use super::core_actor::Core;
use crate::clock::wall_ms;
use crate::core_msg::Outbound;

impl Core {
    pub(super) fn on_admin(&mut self, call: crate::admin::AdminCall) {
        use crate::admin::{AdminCall, Snapshot, settings};
        match call {
            AdminCall::Snapshot(tx) => {
                let s = self.coordinator.status();
                let now = self.clock.now_ms();
                let status = fedge_shared::admin::StatusInfo {
                    server: concat!("fedge-server/", env!("CARGO_PKG_VERSION")).into(),
                    uptime_ms: self.admin.started.elapsed().as_millis() as u64,
                    connected: self.conns.len(),
                    available: s.available,
                    phase: match s.phase {
                        crate::coordinator::Phase::Idle => fedge_shared::admin::PhaseInfo::Idle,
                        crate::coordinator::Phase::Collecting => fedge_shared::admin::PhaseInfo::Collecting,
                        crate::coordinator::Phase::Committing => fedge_shared::admin::PhaseInfo::Committing,
                    },
                    round: s.round,
                    model_version: s.model_version,
                    next_round: s.next_round,
                    selected: s.selected,
                    reported: s.reported,
                    dropped: s.dropped,
                    running: s.running,
                    paused: s.paused,
                    storage_low: s.storage_low.clone(),
                    remaining: self.run.map_or(s.remaining, |r| r.remaining(s.model_version)),
                    run_done: self.run.map(|r| r.done(s.model_version)),
                    deadline_in_ms: self.coordinator.deadline_ms().map(|d| d.saturating_sub(now)),
                    target_accuracy: self.admin.target_accuracy,
                };
                let mut connected: Vec<String> = self.conns.keys().cloned().collect();
                connected.sort();
                let _ = tx.send(Snapshot { status, connected });
            }
            AdminCall::StartRounds { count, target_accuracy, reply } => {
                self.admin.target_accuracy = target_accuracy;
                self.begin_run(count);
                let mut m = match count {
                    Some(n) => format!("running {n} more rounds"),
                    None => "running rounds until stopped".to_string(),
                };
                if let Some(t) = target_accuracy {
                    m.push_str(&format!(", pausing when the test accuracy reaches {t}"));
                }
                let _ = reply.send(m);
            }
            AdminCall::ConfigShow(tx) => {
                let _ = tx.send(settings::entries(self.coordinator.config(), &self.admin.overrides));
            }
            AdminCall::ConfigSet { key, value, reply } => {
                let result = settings::set(&self.admin.base, &self.admin.overrides, &key, &value)
                    .map_err(|e| e.to_string())
                    .and_then(|(config, overrides)| {
                        self.coordinator.set_config(config).map_err(|e| format!("{key} = {value} refused: {e}"))?;
                        self.store
                            .put_server_config(&settings::overrides_to_text(&overrides))
                            .map_err(|e| format!("{key} = {value} applied but not persisted: {e}"))?;
                        self.admin.overrides = overrides;
                        tracing::info!(%key, %value, "operator setting applied");
                        Ok(format!("{key} = {value} (from the next round on; kept across restarts)"))
                    });
                let _ = reply.send(result);
            }
            AdminCall::Revoke { name, reply } => {
                let result = self.store.revoke_agent(&name, wall_ms()).map_err(|e| e.to_string()).map(|_| {
                    tracing::warn!(agent = %name, "agent revoked by an operator");
                    match self.conns.get(&name) {
                        Some(c) => {
                            let _ = c.tx.try_send(Outbound::Close("certificate revoked".into()));
                            true
                        }
                        None => false,
                    }
                });
                let _ = reply.send(result);
            }
        }
    }
}
