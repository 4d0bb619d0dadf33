//! Whole system: one server and eight agents over real loopback QUIC with mutual TLS train a model on MNIST
//! with tract, and the global model gets better round over round.

use fedge_agent::learner::Learner;
use fedge_agent::trainer::TractLearner;
use fedge_ctl::demo::{FederationSpec, LocalFederation, split_for_agents};
use fedge_server::coordinator::CoordinatorConfig;
use fedge_server::evaluator::TractEvaluator;
use fedge_server::service::ServerEvent;
use fedge_system_tests::{cohort_of, init_logs, mnist_subset, wait_server};
use std::sync::Arc;
use std::time::Duration;

const AGENTS: usize = 8;
const ROUNDS: u64 = 3;

fn coordinator(agents: usize) -> CoordinatorConfig {
    cohort_of(agents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_agents_raise_global_test_accuracy_round_over_round() -> anyhow::Result<()> {
    init_logs();
    let (train, test) = mnist_subset(2_400, 1_000)?;
    let shards = split_for_agents(&train, AGENTS, 1.0, 11)?;
    let learners: Vec<Box<dyn Learner>> = shards
        .into_iter()
        .enumerate()
        .map(|(i, (tr, ho))| Box::new(TractLearner::new(tr, Some(ho), i as u64)) as Box<dyn Learner>)
        .collect();
    let spec = FederationSpec {
        onnx: fedge_shared::train::builder::mnist_2nn(5),
        coordinator: coordinator(AGENTS),
        rounds: Some(ROUNDS),
        evaluator: Some(Arc::new(TractEvaluator::new(test, 500))),
    };
    let fed = LocalFederation::start(spec, learners).await?;
    let mut events = fed.server.events();
    let mut accuracies = vec![];
    while (accuracies.len() as u64) < ROUNDS {
        let record = wait_server(&mut events, Duration::from_secs(600), |e| match e {
            ServerEvent::RoundCompleted(r) => Some(Ok(r.clone())),
            ServerEvent::RoundAborted(r) => Some(Err(format!("round {} aborted: {:?}", r.round, r.outcome))),
            _ => None,
        })
        .await?
        .map_err(anyhow::Error::msg)?;
        assert_eq!(record.reported.len(), AGENTS, "every agent reports in round {}", record.round);
        let acc = record.metrics.test_accuracy.expect("the server evaluates every new model");
        accuracies.push(acc);
    }
    // The store holds every committed version with its round.
    let versions = fed.server.store.versions()?;
    assert_eq!(versions.len() as u64, ROUNDS + 1, "version 0 and one per round");
    fed.stop().await?;
    assert!(accuracies.windows(2).all(|w| w[1] > w[0]), "test accuracy must rise round over round: {accuracies:?}");
    assert!(accuracies[0] > 0.5, "after one round of FedAvg on 2,400 examples the MLP beats chance: {accuracies:?}");
    Ok(())
}
