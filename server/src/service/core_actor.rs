//! The core's state and its loop: it owns the coordinator and the store, takes messages from the connection
//! tasks, the operators and the blocking commits, turns them into the coordinator's events, and wakes the
//! coordinator when its alarm rings. What the coordinator answers is carried out by [`super::actions`].
//!
//! One task, so the coordinator needs no lock. It must never block the runtime (commits and evaluations run on the
//! blocking pool) and never decide anything about rounds itself.

use super::peer_certs::PeerCerts;
use crate::clock::{Alarm, Clock};
use crate::coordinator::{AgentId, Coordinator, Event, RoundRecord};
use crate::core_msg::{CoreMsg, Operator, Outbound, RelayHook, ServerEvent};
use crate::evaluator::Evaluator;
use crate::store::Store;
use fedge_shared::model::Digest;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, watch};

pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) tx: mpsc::Sender<Outbound>,
    pub(super) graph_sent: bool,
    pub(super) version_held: Option<u64>,
    /// The peers' certificates this connection's agent holds (each is relayed once per connection, again if it
    /// changed or the agent never answered the keys that carried it).
    pub(super) certs: PeerCerts,
}

/// The current global model as the connections send it.
pub(super) struct CurrentModel {
    pub(super) version: u64,
    pub(super) graph: Arc<Vec<u8>>,
    pub(super) graph_digest: Digest,
    pub(super) weights: Arc<Vec<u8>>,
    pub(super) weights_digest: Digest,
    pub(super) params: u64,
}

pub(super) struct Core {
    pub(super) coordinator: Coordinator,
    pub(super) store: Arc<Store>,
    pub(super) conns: HashMap<AgentId, Conn>,
    pub(super) current: CurrentModel,
    pub(super) events: broadcast::Sender<ServerEvent>,
    pub(super) evaluator: Option<Arc<dyn Evaluator>>,
    pub(super) core_tx: mpsc::Sender<CoreMsg>,
    /// The record of the round being committed (to tell its agents how it ended).
    pub(super) committing: Option<RoundRecord>,
    /// The coordinator's time (monotonic; see [`crate::clock`]).
    pub(super) clock: Clock,
    /// The wake-up the coordinator asked for last.
    pub(super) alarm: Alarm,
    /// A round whose id the store could not reserve (none of its plans is sent), and why.
    pub(super) unreserved: Option<(u64, String)>,
    /// The run in force (kept in the store, so that a restart finishes it).
    pub(super) run: Option<crate::run::Run>,
    /// server.toml's `rounds`.
    pub(super) config_rounds: Option<u64>,
    /// Each agent's certificate (DER) from its newest connection, relayed with its secure-aggregation keys.
    pub(super) certs: HashMap<AgentId, Arc<Vec<u8>>>,
    pub(super) relay_hook: Option<RelayHook>,
    pub(super) admin: AdminState,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    /// Free space under the database: no round starts without room to commit it.
    pub(super) disk: crate::disk::DiskGuard,
    /// The store's write error has been told to the coordinator.
    pub(super) write_error_reported: bool,
    /// Where the operator's CA-signed revocation list is (`revoked.sig` next to `tls.revoked`), if anywhere.
    pub(super) signed_revocations: Option<std::path::PathBuf>,
    /// The list as read for the round whose keys are being relayed (read once per round, not once per agent).
    pub(super) revocations_read: Option<(u64, Vec<u8>)>,
    /// The newest versions' differences, for agents a few versions behind.
    pub(super) diffs: super::model_diffs::ModelDiffs,
    /// An aggregator: where the answers to the root's waiting requests go, oldest first.
    pub(super) forward_replies: std::collections::VecDeque<crate::core_msg::ForwardReply>,
}

/// What the core keeps for the admin surface.
pub(super) struct AdminState {
    pub(super) started: std::time::Instant,
    /// Pause when a completed round reaches this test accuracy.
    pub(super) target_accuracy: Option<f32>,
    /// The `[coordinator]` section of server.toml, and the operator's settings on top of it.
    pub(super) base: crate::coordinator::CoordinatorConfig,
    pub(super) overrides: toml::Table,
}

impl Core {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<CoreMsg>, mut shutdown: watch::Receiver<bool>) {
        if let Some(run) = self.run {
            let latest = self.coordinator.model_version();
            match run.remaining(latest) {
                Some(0) => tracing::info!(
                    rounds = run.total(),
                    version = latest,
                    "the run is done: no round starts (`fedgectl round start N` runs more)"
                ),
                count => {
                    tracing::info!(done = run.done(latest), to_go = ?count, "resuming the run");
                    self.feed(Event::StartRounds { count });
                }
            }
        }
        loop {
            let sleep = crate::clock::sleep_until(self.alarm.deadline(&self.clock));
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => {
                        // A commit is what fills the disk: look right after one, before the next round may start.
                        self.check_disk(matches!(m, CoreMsg::Committed { .. }));
                        self.on_msg(m)
                    }
                    None => break,
                },
                _ = sleep => {
                    if self.alarm.ring(self.clock.now_ms()) {
                        self.check_disk(false);
                        self.feed(Event::Tick);
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        for c in self.conns.values() {
            let _ = c.tx.try_send(Outbound::Close("server shutting down".into()));
        }
    }

    /// Tells the coordinator when the database's disk runs short of space for a commit, or has room again.
    fn check_disk(&mut self, now: bool) {
        if let Some(e) = self.store.write_error() {
            if !self.write_error_reported {
                self.write_error_reported = true;
                let why = format!(
                    "the database failed to write ({e}); nothing more can be committed until the server is \
                     restarted with room on its disk"
                );
                tracing::error!(reason = %why, "no new round will start");
                self.feed(Event::Storage { low: Some(why) });
            }
            return;
        }
        let verdict =
            if now { self.disk.poll_now(std::time::Instant::now()) } else { self.disk.poll(std::time::Instant::now()) };
        if let Some(low) = verdict {
            if let Some(why) = &low {
                tracing::error!(reason = %why, "the database's disk is nearly full: no new round will start");
            }
            self.feed(Event::Storage { low });
        }
    }

    pub(super) fn feed(&mut self, event: Event<'_>) {
        // Every message passes here: only the O(1) round number and phase are read each time, the whole status
        // (O(agents)) only when the secure phase changed.
        let before = (self.coordinator.round_in_flight(), self.coordinator.secure_phase());
        let actions = self.coordinator.handle(self.clock.now_ms(), event);
        let after = (self.coordinator.round_in_flight(), self.coordinator.secure_phase());
        let status = (after != before).then(|| self.coordinator.status());
        for a in actions {
            self.act(a);
        }
        if let Some((round, error)) = self.unreserved.take() {
            self.feed(Event::RoundNotReserved { round, error });
        }
        if let (Some(round), Some(phase), Some(status)) = (after.0, after.1, status) {
            let members = status.selected.saturating_sub(status.dropped);
            tracing::info!(round, phase = phase.name(), members, "secure aggregation phase");
            let _ = self.events.send(ServerEvent::SecAggPhase { round, phase, members });
        }
    }

    pub(super) fn on_msg(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Connected { agent, conn, tx, cert } => {
                self.certs.insert(agent.clone(), Arc::new(cert));
                if let Some(old) = self.conns.insert(
                    agent.clone(),
                    Conn { id: conn, tx, graph_sent: false, version_held: None, certs: PeerCerts::default() },
                ) {
                    let _ = old.tx.try_send(Outbound::Close("replaced by a newer connection of the same agent".into()));
                }
                let _ = self.events.send(ServerEvent::AgentJoined { agent: agent.clone() });
                self.feed(Event::AgentConnected { agent });
            }
            CoreMsg::Disconnected { agent, conn } => {
                if self.conns.get(&agent).is_some_and(|c| c.id == conn) {
                    self.conns.remove(&agent);
                    let _ = self.events.send(ServerEvent::AgentLeft { agent: agent.clone() });
                    self.feed(Event::AgentDisconnected { agent });
                }
            }
            CoreMsg::Silent { agent, conn, silent } => {
                if self.conns.get(&agent).is_some_and(|c| c.id == conn) {
                    tracing::info!(%agent, silent, "connection liveness");
                    self.feed(Event::AgentSilent { agent, silent });
                }
            }
            CoreMsg::CheckIn { agent, conn, checkin } => {
                let Some(c) = self.conns.get_mut(&agent).filter(|c| c.id == conn) else { return };
                c.graph_sent = checkin.graph == Some(self.current.graph_digest);
                c.version_held = checkin.model_version.filter(|_| c.graph_sent);
                // Every connected agent gets the newest model: it trains from it and serves inference with it.
                self.push_model(&agent);
                self.feed(Event::CheckIn { agent, model_version: checkin.model_version, examples: checkin.examples });
            }
            CoreMsg::Update { agent, round, examples, train_loss, eval, delta } => {
                if let Some(counts) = eval {
                    self.feed(Event::Evaluated { agent: agent.clone(), round, counts });
                }
                self.feed(Event::Update { agent, round, examples, train_loss, delta: &delta });
            }
            CoreMsg::Abandon { agent, round, reason } => {
                // E.g. an agent that requires secure aggregation refusing a plain round: the reason is its own.
                tracing::warn!(%agent, round, %reason, "the agent abandoned the round");
                self.feed(Event::UpdateFailed { agent, round, reason });
            }
            CoreMsg::Ready { agent, round, model_version, examples } => {
                self.feed(Event::Ready { agent, round, model_version, examples })
            }
            CoreMsg::SecAggAdvertise { agent, keys } => self.feed(Event::SecAggAdvertise { agent, keys }),
            CoreMsg::SecAggShares { agent, round, shares } => {
                // Shares answer the round's keys: the agent read the certificates relayed with them.
                if let Some(c) = self.conns.get_mut(&agent) {
                    c.certs.confirm(round);
                }
                self.feed(Event::SecAggShares { agent, round, shares })
            }
            CoreMsg::SecAggReceipt { agent, receipt } => self.feed(Event::SecAggReceipt { agent, receipt }),
            CoreMsg::SecAggSurvivorSignature { agent, signature } => {
                self.feed(Event::SecAggSurvivorSignature { agent, signature })
            }
            CoreMsg::SecAggUnmask { agent, response } => self.feed(Event::SecAggUnmask { agent, response }),
            CoreMsg::Masked { agent, round, masked, permit } => {
                self.feed(Event::MaskedInput { agent, round, masked: &masked });
                drop(masked);
                drop(permit);
            }
            CoreMsg::Operator(op) => {
                let e = match op {
                    Operator::StartRounds(count) => return self.begin_run(count),
                    Operator::Pause => Event::Pause,
                    Operator::Resume => Event::Resume,
                    Operator::AbortRound => Event::AbortRound,
                };
                self.feed(e);
            }
            CoreMsg::Unmasked { round, outcome } => self.feed(Event::Unmasked { round, outcome }),
            CoreMsg::Committed { round, result } => match result {
                Ok(m) => {
                    self.diffs.committed(self.current.version, m.version, m.diff);
                    self.current.version = m.version;
                    self.current.weights = m.blob;
                    self.current.weights_digest = m.digest;
                    let record = m.record;
                    tracing::info!(
                        round,
                        version = m.version,
                        accuracy = record.metrics.test_accuracy.unwrap_or(f32::NAN),
                        loss = record.metrics.mean_train_loss.unwrap_or(f32::NAN),
                        "round committed"
                    );
                    if let (Some(target), Some(acc)) = (self.admin.target_accuracy, record.metrics.test_accuracy)
                        && acc >= target
                    {
                        tracing::info!(round, accuracy = acc, target, "target accuracy reached: pausing");
                        self.admin.target_accuracy = None;
                        self.feed(Event::Pause);
                    }
                    self.committing = Some(record.clone());
                    let _ = self.events.send(ServerEvent::RoundCompleted(Box::new(record)));
                    self.feed(Event::Committed { round, version: m.version });
                }
                Err(error) => {
                    tracing::error!(round, %error, "commit failed; the round is aborted and the last model kept");
                    self.feed(Event::CommitFailed { round, error });
                }
            },
            CoreMsg::Status(tx) => {
                let _ = tx.send(self.coordinator.status());
            }
            CoreMsg::Admin(call) => self.on_admin(call),
            CoreMsg::RootRound { request, reply } => self.on_root_round(request, reply),
            CoreMsg::Installed(m) => self.on_installed(*m),
        }
    }

    /// An operator's run of `count` more rounds (`None`: until stopped), kept in the store from now on.
    pub(super) fn begin_run(&mut self, count: Option<u64>) {
        let run = crate::run::Run::new(self.coordinator.model_version(), count, self.config_rounds, true);
        if let Err(e) = self.store.put_run(&run) {
            tracing::error!(error = %e, "cannot keep the operator's run in the database: a restart will not resume it");
        }
        self.run = Some(run);
        self.feed(Event::StartRounds { count });
    }
}
