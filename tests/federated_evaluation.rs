//! Whole system: federated evaluation over real loopback QUIC with secure aggregation. Four agents train an MLP on
//! MNIST shards; at the start of each round every agent evaluates the global model it received on its held-out
//! examples and hides the counts in its masked vector.
//!
//! Specification: the second round's record carries the federation's totals for version 1 (the version it started
//! from, which the first round made) — exactly as many held-out examples as the agents hold, and an accuracy that
//! agrees with evaluating version 1 on the union of the held-out sets; `fedgectl history` (its client and its
//! table) shows that federated accuracy beside the server's own test accuracy of version 1.

use fedge_agent::learner::Learner;
use fedge_agent::trainer::TractLearner;
use fedge_ctl::demo::{FederationSpec, LocalFederation, split_for_agents};
use fedge_ctl::{AdminClient, Target};
use fedge_server::evaluator::TractEvaluator;
use fedge_server::service::ServerEvent;
use fedge_shared::data::Dataset;
use fedge_shared::tls::{self, Role};
use fedge_shared::train::TrainableModel;
use fedge_shared::train::local::evaluate;
use fedge_system_tests::{cohort_of, init_logs, mnist_subset, wait_server};
use std::sync::Arc;
use std::time::Duration;

const AGENTS: usize = 4;

fn union(parts: &[Dataset]) -> Dataset {
    let mut all = parts[0].clone();
    for p in &parts[1..] {
        all.features.extend_from_slice(&p.features);
        all.labels.extend_from_slice(&p.labels);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_the_federated_accuracy_of_each_version_beside_the_servers_evaluation() -> anyhow::Result<()> {
    init_logs();
    let (train, test) = mnist_subset(800, 200)?;
    let shards = split_for_agents(&train, AGENTS, 1.0, 5)?;
    let holdouts: Vec<Dataset> = shards.iter().map(|(_, h)| h.clone()).collect();
    let learners: Vec<Box<dyn Learner>> = shards
        .into_iter()
        .enumerate()
        .map(|(i, (tr, ho))| Box::new(TractLearner::new(tr, Some(ho), i as u64)) as Box<dyn Learner>)
        .collect();
    let graph = fedge_shared::train::builder::mlp(&[784, 16, 10], 3);
    let spec = FederationSpec {
        onnx: graph.clone(),
        coordinator: cohort_of(AGENTS),
        rounds: Some(2),
        evaluator: Some(Arc::new(TractEvaluator::new(test, 100))),
    };
    // Default options: secure aggregation on.
    let fed = LocalFederation::start(spec, learners).await?;
    let mut events = fed.server.events();
    let mut records = vec![];
    while records.len() < 2 {
        let r = wait_server(&mut events, Duration::from_secs(600), |e| match e {
            ServerEvent::RoundCompleted(r) => Some(Ok(r.clone())),
            ServerEvent::RoundAborted(r) => Some(Err(format!("round {} aborted: {:?}", r.round, r.outcome))),
            _ => None,
        })
        .await?
        .map_err(anyhow::Error::msg)?;
        records.push(r);
    }
    let second = &records[1];
    assert!(second.plan.aggregation.is_secure(), "a secure round");
    assert!(second.reported.iter().all(|r| r.eval.is_none()), "no agent's own counts reach the server");
    let fed_eval = second.metrics.federated_eval.expect("the second round measured version 1");
    assert_eq!((fed_eval.model_version, fed_eval.agents), (1, AGENTS));
    let held_out = union(&holdouts);
    assert_eq!(fed_eval.counts.examples, held_out.len() as u64, "every held-out example is counted once");

    // The totals agree with evaluating version 1 on all the held-out examples at once.
    let model = TrainableModel::from_onnx_bytes(&graph)?;
    let v1 = fed.server.store.weights(1)?;
    let direct = evaluate(&model, &v1, &held_out, 100)?;
    assert_eq!(fed_eval.counts.correct, direct.correct as u64, "bit-exact through the masks");
    let mean_loss = fed_eval.counts.mean_loss().unwrap();
    assert!((mean_loss - f64::from(direct.loss)).abs() < 1e-3, "{mean_loss} vs {}", direct.loss);

    // fedgectl history: the client and the table it prints.
    let bundle = tls::issue_bundle(&fed.pki(), "operator", Role::Operator, 30)?;
    let mut target = Target::new(fed.server.local_addr.to_string(), bundle);
    target.server_name = Some("localhost".into());
    let client = AdminClient::connect(&target).await?;
    let history = client.history().await?;
    let row2 = history.iter().find(|r| r.round == second.round).expect("round 2 in the history");
    assert_eq!(row2.evaluated_version, 1);
    let accuracy = row2.federated_accuracy.expect("a federated accuracy in the history");
    assert!((accuracy - direct.correct as f32 / held_out.len() as f32).abs() < 1e-6, "{accuracy}");
    let table = fedge_ctl::render::history(&history);
    assert!(table.lines().next().unwrap().contains("FED ACC"), "{table}");
    let row1 = table.lines().find(|l| l.split_whitespace().next() == Some(&records[0].round.to_string())).unwrap();
    let server_accuracy = records[0].metrics.test_accuracy.expect("the server evaluates version 1");
    let cells: Vec<&str> = row1.split_whitespace().collect();
    assert_eq!(cells[5], format!("{server_accuracy:.4}"), "TEST ACC of version 1: {table}");
    assert_eq!(cells[6], format!("{accuracy:.4}"), "FED ACC of version 1 beside it: {table}");
    drop(client);
    fed.stop().await
}
