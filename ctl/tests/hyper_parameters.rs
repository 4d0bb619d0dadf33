//! The local training hyper-parameters an agent receives in its round plan are the ones the operator configured:
//! from `[coordinator.hyper]` of server.toml, and from `fedgectl config set hyper.*` for the rounds after the set.
//! A real server and agents over loopback QUIC; the agents' learners record the plans they are handed.

use fedge_agent::learner::{LearnOutcome, Learner, NoiseLearner};
use fedge_ctl::demo::{FederationSpec, LocalFederation};
use fedge_ctl::{AdminClient, RoundCmd, Target};
use fedge_server::coordinator::{CoordinatorConfig, OptimizerKind, TrainHyper};
use fedge_server::service::ServerEvent;
use fedge_shared::protocol::TrainPlan;
use fedge_shared::tls::{self, Role};
use std::sync::mpsc;
use std::time::Duration;

/// A noise learner that hands every plan it receives to the test.
struct Recording {
    inner: NoiseLearner,
    plans: mpsc::Sender<TrainPlan>,
}

impl Learner for Recording {
    fn examples(&self) -> u64 {
        self.inner.examples()
    }
    fn set_graph(&mut self, onnx: &[u8]) -> anyhow::Result<()> {
        self.inner.set_graph(onnx)
    }
    fn num_params(&self) -> Option<usize> {
        self.inner.num_params()
    }
    fn learn(&mut self, global: &[f32], plan: &TrainPlan) -> anyhow::Result<LearnOutcome> {
        let _ = self.plans.send(plan.clone());
        self.inner.learn(global, plan)
    }
}

async fn completed_round(events: &mut tokio::sync::broadcast::Receiver<ServerEvent>) -> u64 {
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match events.recv().await {
                Ok(ServerEvent::RoundCompleted(r)) => return r.round,
                Ok(ServerEvent::RoundAborted(r)) => panic!("round {} aborted: {:?}", r.round, r.outcome),
                _ => {}
            }
        }
    })
    .await
    .expect("a round completes in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_train_with_the_configured_weight_decay_and_with_the_one_an_operator_sets_later() {
    const AGENTS: usize = 2;
    let coordinator = CoordinatorConfig {
        min_agents: AGENTS,
        min_available: None,
        max_agents: AGENTS,
        fraction: 1.0,
        overselect: 1.0,
        seed: 5,
        round_timeout_ms: 60_000,
        retry_backoff_ms: 200,
        max_examples: None,
        hyper: TrainHyper {
            epochs: 2,
            batch_size: 16,
            learning_rate: 0.02,
            momentum: 0.9,
            optimizer: OptimizerKind::Sgd,
            weight_decay: 1e-3,
            ..TrainHyper::default()
        },
        strategy: Default::default(),
    };
    let (tx, plans) = mpsc::channel();
    let learners: Vec<Box<dyn Learner>> = (0..AGENTS)
        .map(|i| {
            Box::new(Recording { inner: NoiseLearner::new(50, i as u64, 0.01), plans: tx.clone() }) as Box<dyn Learner>
        })
        .collect();
    let spec = FederationSpec {
        onnx: fedge_shared::train::builder::mlp(&[784, 8, 10], 3),
        coordinator,
        rounds: Some(1),
        evaluator: None,
    };
    let fed = LocalFederation::start(spec, learners).await.unwrap();
    let mut events = fed.server.events();

    // Round 1 runs with server.toml's settings.
    let first = completed_round(&mut events).await;
    let received: Vec<TrainPlan> = plans.try_iter().collect();
    assert_eq!(received.len(), AGENTS, "{received:?}");
    for p in &received {
        assert_eq!((p.weight_decay, p.learning_rate, p.momentum, p.epochs, p.batch_size), (1e-3, 0.02, 0.9, 2, 16));
        assert_eq!(p.optimizer, OptimizerKind::Sgd);
    }

    // An operator changes it; the next round's plans carry the new value.
    let bundle = tls::issue_bundle(&fed.pki(), "olivia", Role::Operator, 30).unwrap();
    let mut target = Target::new(fed.server.local_addr.to_string(), bundle);
    target.server_name = Some("localhost".into());
    let client = AdminClient::connect(&target).await.unwrap();
    let err = client.config_set("hyper.weight_decay", "-1").await.unwrap_err().to_string();
    assert!(err.contains("hyper.weight_decay") && err.contains(">= 0"), "{err}");
    client.config_set("hyper.weight_decay", "0.0005").await.unwrap();
    let shown = client.config_show().await.unwrap();
    let wd = shown.iter().find(|e| e.key == "hyper.weight_decay").expect("config show lists hyper.weight_decay");
    assert!(wd.overridden && wd.value.parse::<f32>().unwrap() == 5e-4, "{wd:?}");
    client.round(RoundCmd::Start { count: Some(1), target_accuracy: None }).await.unwrap();
    let second = completed_round(&mut events).await;
    assert!(second > first);
    let received: Vec<TrainPlan> = plans.try_iter().collect();
    assert_eq!(received.len(), AGENTS, "{received:?}");
    assert!(received.iter().all(|p| p.weight_decay == 5e-4 && p.learning_rate == 0.02), "{received:?}");

    // The round records keep the plan's hyper-parameters.
    let records = fed.server.store.rounds().unwrap();
    let decays: Vec<f32> = records.iter().map(|r| r.plan.hyper.weight_decay).collect();
    assert_eq!(decays, vec![1e-3, 5e-4]);
    client.close().await;
    fed.stop().await.unwrap();
}
