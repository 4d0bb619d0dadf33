//! Whole system on the committed samples of every data format (tests/fixtures/data): a server and three agents over
//! real loopback QUIC train a model whose input and output shapes come from its ONNX graph, on a CSV file (the
//! agents' data read through their `[data]` section), NumPy arrays, an image folder decoded per batch, and a CSV
//! regression target with the mean squared error, and a char-LSTM on text under secure aggregation to the accuracy
//! one device reaches with all the text; the server evaluates every new model on the test part.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fedge_agent::config::LocalData;
use fedge_agent::learner::Learner;
use fedge_agent::trainer::TractLearner;
use fedge_ctl::demo::{FederationSpec, LocalFederation};
use fedge_ctl::demo_data::{SplitSpec, open_for_federation, split_sources};
use fedge_server::evaluator::TractEvaluator;
use fedge_server::service::ServerEvent;
use fedge_shared::data::{SharedExamples, SourceSpec};
use fedge_shared::train::builder::mlp_for;
use fedge_shared::train::{Loss, TrainableModel};
use fedge_system_tests::{cohort_of, init_logs, wait_server};

const AGENTS: usize = 3;
const ROUNDS: u64 = 3;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

/// Runs `ROUNDS` rounds and returns each round's (test accuracy, test loss).
async fn federate(
    onnx: Vec<u8>,
    learners: Vec<Box<dyn Learner>>,
    test: SharedExamples,
    loss: Loss,
) -> anyhow::Result<Vec<(Option<f32>, f32)>> {
    let mut coordinator = cohort_of(AGENTS);
    coordinator.hyper.epochs = 3;
    coordinator.hyper.batch_size = 8;
    coordinator.hyper.learning_rate = 0.1;
    coordinator.hyper.loss = loss;
    let records = run_rounds(onnx, learners, test, coordinator, ROUNDS).await?;
    Ok(records
        .iter()
        .map(|r| (r.metrics.test_accuracy, r.metrics.test_loss.expect("the server evaluates every new model")))
        .collect())
}

/// Runs `rounds` rounds in which every agent reports, and returns their records.
async fn run_rounds(
    onnx: Vec<u8>,
    learners: Vec<Box<dyn Learner>>,
    test: SharedExamples,
    coordinator: fedge_server::coordinator::CoordinatorConfig,
    rounds: u64,
) -> anyhow::Result<Vec<Box<fedge_server::coordinator::RoundRecord>>> {
    let spec = FederationSpec {
        onnx,
        coordinator,
        rounds: Some(rounds),
        evaluator: Some(Arc::new(TractEvaluator { data: test, batch: 32 })),
    };
    let fed = LocalFederation::start(spec, learners).await?;
    let mut events = fed.server.events();
    let mut out = vec![];
    while (out.len() as u64) < rounds {
        let r = wait_server(&mut events, Duration::from_secs(300), |e| match e {
            ServerEvent::RoundCompleted(r) => Some(Ok(r.clone())),
            ServerEvent::RoundAborted(r) => Some(Err(format!("round {} aborted: {:?}", r.round, r.outcome))),
            _ => None,
        })
        .await?
        .map_err(anyhow::Error::msg)?;
        assert_eq!(r.reported.len(), AGENTS, "every agent reports in round {}", r.round);
        out.push(r);
    }
    fed.stop().await?;
    Ok(out)
}

/// One tract learner per share (its training part and held-out part).
fn learners_of(shards: Vec<fedge_ctl::demo_data::Shard>) -> Vec<Box<dyn Learner>> {
    shards
        .into_iter()
        .enumerate()
        .map(|(i, (train, held))| {
            let held = held.map(|h| Arc::new(h) as SharedExamples);
            Box::new(TractLearner::from_sources(Arc::new(train), held, i as u64)) as Box<dyn Learner>
        })
        .collect()
}

/// Opens `source` for the model, splits it over the agents, and federates.
async fn federate_folder(source: SourceSpec, onnx: Vec<u8>, loss: Loss) -> anyhow::Result<Vec<(Option<f32>, f32)>> {
    let model = TrainableModel::from_onnx_bytes(&onnx)?;
    let split = SplitSpec { agents: AGENTS, alpha: 1.0, seed: 4, train_limit: 0, test_limit: 0 };
    let data = open_for_federation(&source, &model, loss, &split)?;
    let learners = learners_of(data.shards);
    federate(onnx, learners, Arc::new(data.test), loss).await
}

fn final_accuracy(rounds: &[(Option<f32>, f32)]) -> f32 {
    rounds.last().and_then(|r| r.0).expect("classification rounds carry an accuracy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_learn_the_csv_sample_read_through_their_data_section() -> anyhow::Result<()> {
    init_logs();
    let dir = fixtures().join("csv");
    // Each agent reads the folder as its agent.toml says, then keeps its share (a Dirichlet split by label).
    let section: LocalData = toml::from_str(&format!(
        "format = \"csv\"\npath = {:?}\nfeature_columns = [\"x0\", \"x1\", \"x2\", \"x3\"]\nholdout = 0.1\n",
        dir.display()
    ))?;
    let (train, test) = section.open(1)?;
    let test = test.expect("the folder has a test part");
    let learners = split_sources(train, AGENTS, 1.0, 2)?
        .into_iter()
        .enumerate()
        .map(|(i, (tr, ho))| {
            let ho = ho.map(|h| Arc::new(h) as SharedExamples);
            Box::new(TractLearner::from_sources(Arc::new(tr), ho, i as u64)) as Box<dyn Learner>
        })
        .collect();
    let rounds = federate(mlp_for(&[4], &[8], 3, 1), learners, test, Loss::SoftmaxCrossEntropy).await?;
    assert!(final_accuracy(&rounds) >= 0.8, "{rounds:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_learn_the_npz_sample_shaped_by_the_model() -> anyhow::Result<()> {
    init_logs();
    let source = SourceSpec::at(fixtures().join("npz"));
    let rounds = federate_folder(source, mlp_for(&[2, 3], &[8], 3, 1), Loss::SoftmaxCrossEntropy).await?;
    assert!(final_accuracy(&rounds) >= 0.8, "{rounds:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_learn_the_image_folder_decoded_per_batch() -> anyhow::Result<()> {
    init_logs();
    // Centred pixels: raw ones near 0.8 on 192 inputs can kill every ReLU of a small layer in one step.
    let source = SourceSpec {
        normalize: Some(fedge_shared::data::ChannelNorm { mean: vec![0.5], std: vec![0.5] }),
        ..SourceSpec::at(fixtures().join("images"))
    };
    let rounds = federate_folder(source, mlp_for(&[3, 8, 8], &[16], 3, 1), Loss::SoftmaxCrossEntropy).await?;
    assert!(final_accuracy(&rounds) >= 0.8, "{rounds:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_fit_a_csv_regression_target_with_the_mean_squared_error() -> anyhow::Result<()> {
    init_logs();
    let source =
        SourceSpec { label_column: Some("target".into()), ..SourceSpec::at(fixtures().join("csv-regression")) };
    let onnx = mlp_for(&[3], &[8], 1, 1);
    let model = TrainableModel::from_onnx_bytes(&onnx)?;
    let before = {
        let split = SplitSpec { agents: AGENTS, alpha: 1.0, seed: 4, train_limit: 0, test_limit: 0 };
        let data = open_for_federation(&source, &model, Loss::MeanSquaredError, &split)?;
        fedge_shared::train::local::evaluate(&model, &model.initial_weights(), &data.test, 32)?.loss
    };
    let rounds = federate_folder(source, onnx, Loss::MeanSquaredError).await?;
    assert!(rounds.iter().all(|r| r.0.is_none()), "regression has no accuracy: {rounds:?}");
    let last = rounds.last().map_or(f32::NAN, |r| r.1);
    assert!(last < before / 4.0, "test mse {before} before, then {rounds:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_train_a_char_lstm_on_text_with_secure_aggregation_to_the_local_accuracy() -> anyhow::Result<()> {
    use fedge_server::coordinator::OptimizerKind;
    use fedge_shared::train::local::{LocalTrainConfig, LocalTrainer, evaluate};
    use fedge_shared::train::optimizer::OptimizerConfig;
    init_logs();
    // Genesis 1-4 in 16-byte windows, every second one; byte-level ids, so the agents share no vocabulary.
    let source = SourceSpec { window: Some(16), stride: Some(2), ..SourceSpec::at(fixtures().join("text")) };
    let onnx = fedge_shared::train::builder::char_lstm(256, 16, 16, 32, 1);
    let model = TrainableModel::from_onnx_bytes(&onnx)?;
    let (batch, lr) = (16, 0.01);

    // One device with all the text: two epochs of Adam.
    let split = SplitSpec { agents: 1, alpha: 1.0, seed: 4, train_limit: 0, test_limit: 0 };
    let all = open_for_federation(&source, &model, Loss::SoftmaxCrossEntropy, &split)?;
    let whole = fedge_shared::data::open_part(
        &source,
        fedge_shared::data::Part::Train,
        fedge_shared::data::TargetKind::Classes { num_classes: Some(256) },
    )?
    .expect("the folder has a train part");
    let mut weights = model.initial_weights();
    let mut trainer = LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, batch)?;
    let cfg = LocalTrainConfig {
        optimizer: OptimizerConfig::adam(lr),
        seed: 3,
        ..LocalTrainConfig::sgd(2, batch as u32, lr)
    };
    trainer.train(&mut weights, whole.as_ref(), &cfg, &mut |_| {})?;
    let local = evaluate(&model, &weights, &all.test, 32)?.accuracy().expect("classification");

    // Three agents, a third of the windows each, one epoch a round, secure aggregation on (the default).
    let split = SplitSpec { agents: AGENTS, alpha: 100.0, seed: 4, train_limit: 0, test_limit: 0 };
    let data = open_for_federation(&source, &model, Loss::SoftmaxCrossEntropy, &split)?;
    let learners = learners_of(data.shards);
    let mut coordinator = cohort_of(AGENTS);
    coordinator.hyper.epochs = 1;
    coordinator.hyper.batch_size = batch as u32;
    coordinator.hyper.learning_rate = lr;
    coordinator.hyper.optimizer = OptimizerKind::Adam;
    let records = run_rounds(onnx, learners, Arc::new(data.test), coordinator, 7).await?;
    let mut accuracies = vec![];
    for r in &records {
        assert!(r.plan.aggregation.is_secure() && r.metrics.secagg.is_some(), "round {} is secure", r.round);
        accuracies.push(r.metrics.test_accuracy.expect("the server evaluates every new model"));
    }
    let best = accuracies.iter().copied().fold(0f32, f32::max);
    eprintln!("char-LSTM test accuracy: local {local}, federated by round {accuracies:?}");
    assert!(local > 0.3, "the local run learns: {local}");
    assert!(best >= local - 0.02, "federated {accuracies:?} against local {local}");
    Ok(())
}
