//! The shell the contract test drives: a [`Core`] around a real store in a temporary directory and a real
//! coordinator, agents' connections as the real channels their connection tasks would read, and the samples the
//! checks feed it. No socket, no task but the blocking jobs the actions themselves spawn.

use crate::clock::{Alarm, Clock};
use crate::coordinator::{
    AggregationMode, Coordinator, CoordinatorConfig, Dropped, Outcome, Report, RoundMetrics, RoundPlan, RoundRecord,
    TrainHyper, UnmaskJob,
};
use crate::core_msg::{CoreMsg, Outbound, ServerEvent};
use crate::evaluator::{EvalMetrics, Evaluator};
use crate::service::core_actor::{AdminState, Conn, Core, CurrentModel};
use crate::store::Store;
use crate::strategy::StrategyConfig;
use fedge_shared::model::weights_to_bytes;
use fedge_shared::protocol::ServerMessage;
use fedge_shared::secagg::{AdvertiseKeys, AgentRef, SecAggParams, ServerSession};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

pub(super) const WEIGHTS: [f32; 4] = [0.5, -0.5, 0.25, 1.0];
pub(super) const GRAPH: &[u8] = b"the graph's bytes: the shell relays them and never parses them";
pub(super) const ACCURACY: f32 = 0.75;

/// A test set's evaluation that always gives [`ACCURACY`].
struct FixedEvaluator;

impl Evaluator for FixedEvaluator {
    fn evaluate(&self, onnx: &[u8], weights: &[f32]) -> anyhow::Result<EvalMetrics> {
        assert_eq!(onnx, GRAPH, "the new weights are evaluated on the current graph");
        assert_eq!(weights.len(), WEIGHTS.len());
        Ok(EvalMetrics { loss: 0.5, accuracy: Some(ACCURACY), mse: None })
    }
}

pub(super) struct Shell {
    pub(super) core: Core,
    /// What the core feeds itself (the blocking jobs' results).
    fed_back: mpsc::Receiver<CoreMsg>,
    pub(super) events: broadcast::Receiver<ServerEvent>,
    pub(super) dir: tempfile::TempDir,
}

pub(super) fn shell() -> Shell {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(Store::open(dir.path().join("db")).expect("a new store"));
    let graph_digest = store.put_graph(GRAPH).expect("the graph is stored");
    let meta = store.init_model(graph_digest, &WEIGHTS, 1).expect("version 0");
    let resume = store.resume_state().expect("readable").expect("a model");
    let config = CoordinatorConfig {
        min_agents: 2,
        min_available: None,
        max_agents: 10,
        fraction: 1.0,
        overselect: 1.0,
        seed: 7,
        round_timeout_ms: 60_000,
        retry_backoff_ms: 1_000,
        max_examples: None,
        hyper: TrainHyper::default(),
        strategy: StrategyConfig::FedAvg,
    };
    let coordinator = Coordinator::new(config.clone(), resume).expect("a valid configuration");
    let (core_tx, fed_back) = mpsc::channel(16);
    let (events_tx, events) = broadcast::channel(16);
    let core = Core {
        coordinator,
        store,
        conns: HashMap::new(),
        current: CurrentModel {
            version: meta.version,
            graph: Arc::new(GRAPH.to_vec()),
            graph_digest,
            weights: Arc::new(weights_to_bytes(&WEIGHTS)),
            weights_digest: meta.weights_digest,
            params: WEIGHTS.len() as u64,
        },
        events: events_tx,
        evaluator: Some(Arc::new(FixedEvaluator)),
        core_tx,
        committing: None,
        clock: Clock::start(),
        alarm: Alarm::default(),
        unreserved: None,
        run: None,
        config_rounds: None,
        certs: HashMap::new(),
        relay_hook: None,
        admin: AdminState {
            started: std::time::Instant::now(),
            target_accuracy: None,
            base: config,
            overrides: toml::Table::new(),
        },
        metrics: Arc::new(crate::metrics::Metrics::new()),
        disk: crate::disk::DiskGuard::new(dir.path(), 0),
        write_error_reported: false,
        signed_revocations: Some(dir.path().join(fedge_shared::revocation_list::FILE)),
        revocations_read: None,
        diffs: Default::default(),
        forward_replies: Default::default(),
    };
    Shell { core, fed_back, events, dir }
}

impl Shell {
    /// Connects `agent` as its connection task would (a fresh connection: it holds nothing yet).
    pub(super) fn connect(&mut self, agent: &str) -> mpsc::Receiver<Outbound> {
        let (tx, rx) = mpsc::channel(64);
        let id = self.core.conns.len() as u64 + 1;
        let conn = Conn { id, tx, graph_sent: false, version_held: None, certs: Default::default() };
        self.core.conns.insert(agent.to_string(), conn);
        rx
    }

    /// Connects `agent` holding the graph and the current weights (as after a check-in with them).
    pub(super) fn connect_holding(&mut self, agent: &str) -> mpsc::Receiver<Outbound> {
        let rx = self.connect(agent);
        let version = self.core.current.version;
        let conn = self.core.conns.get_mut(agent).expect("just connected");
        conn.graph_sent = true;
        conn.version_held = Some(version);
        rx
    }

    /// The next message the core fed itself (a blocking job's result), waiting for the job.
    pub(super) async fn fed_back(&mut self) -> CoreMsg {
        tokio::time::timeout(Duration::from_secs(30), self.fed_back.recv())
            .await
            .expect("the blocking job answers")
            .expect("the core's channel is open")
    }
}

/// Everything queued on one agent's connection.
pub(super) fn sent(rx: &mut mpsc::Receiver<Outbound>) -> Vec<Outbound> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// The control messages queued on one agent's connection.
pub(super) fn messages(rx: &mut mpsc::Receiver<Outbound>) -> Vec<ServerMessage> {
    sent(rx)
        .into_iter()
        .filter_map(|o| match o {
            Outbound::Msg(m) => Some(*m),
            _ => None,
        })
        .collect()
}

pub(super) fn plan(round: u64, model_version: u64) -> RoundPlan {
    RoundPlan {
        round,
        model_version,
        hyper: TrainHyper::default(),
        deadline_ms: 60_000,
        aggregation: AggregationMode::Plain,
    }
}

pub(super) fn record(round: u64) -> RoundRecord {
    RoundRecord {
        round,
        plan: plan(round, 0),
        strategy: "fedavg".into(),
        selected: vec!["a".into(), "b".into()],
        reported: vec![Report { agent: "a".into(), examples: 10, train_loss: 0.5, after_ms: 20, eval: None }],
        dropped: vec![Dropped { agent: "b".into(), reason: "timed out".into() }],
        outcome: Outcome::Completed,
        metrics: RoundMetrics { mean_train_loss: Some(0.5), total_examples: 10, ..RoundMetrics::default() },
        started_ms: 100,
        ended_ms: 200,
        new_version: None,
    }
}

pub(super) fn keys(from: u32) -> AdvertiseKeys {
    AdvertiseKeys {
        round: 2,
        from,
        enc_pk: [from as u8; 32],
        mask_pk: [from as u8 + 1; 32],
        seed_commitment: [3; 32],
        context: [4; 32],
        signature: vec![5; 64],
    }
}

/// An unmask job over a session that never got to the masked phase: running it fails, which the shell reports
/// like any other outcome.
pub(super) fn unmask_job(round: u64) -> UnmaskJob {
    let cohort = [AgentRef { index: 0, name: "a".into() }, AgentRef { index: 1, name: "b".into() }];
    let session =
        ServerSession::new(SecAggParams::default_for(2), round, &cohort, 9, WEIGHTS.len()).expect("a valid session");
    UnmaskJob::new(session)
}
