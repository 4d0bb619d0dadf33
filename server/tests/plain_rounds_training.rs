//! Plain rounds with real local training: ten agents train an MLP on their shares of the 8×8 digits (the data set
//! in the repository's `data/`) and the real coordinator aggregates what they upload.
//!
//! - Robust aggregation against poisoned updates: three agents (30%) upload their delta sign-flipped and ten times
//!   larger. Federated averaging follows them away from the task; the coordinate-wise median, the trimmed mean and
//!   (multi-)Krum keep the accuracy the same federation reaches without an attacker.
//! - 8-bit uploads: every delta travels through the wire encoding (`DeltaEncoding`), stochastically rounded to a
//!   byte a coordinate, and the federation learns as well as with exact f32 deltas.

use fedge_server::coordinator::{Action, Coordinator, CoordinatorConfig, Event, ResumeState, SecAggConfig, TrainHyper};
use fedge_server::strategy::StrategyConfig;
use fedge_shared::data::{Dataset, iid_partition, load_digits_dir};
use fedge_shared::delta_encoding::DeltaEncoding;
use fedge_shared::train::local::{LocalTrainConfig, LocalTrainer, evaluate};
use fedge_shared::train::optimizer::OptimizerConfig;
use fedge_shared::train::{Loss, TrainableModel, builder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::path::PathBuf;

const AGENTS: usize = 10;
const POISONED: usize = 3;
const ROUNDS: u64 = 8;
const BATCH: u32 = 16;

struct Federation {
    model: TrainableModel,
    trainer: LocalTrainer,
    shards: Vec<Dataset>,
    test: Dataset,
}

impl Federation {
    fn new() -> Federation {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/digits");
        let (train, test) = load_digits_dir(&dir).unwrap().split_holdout(0.2, 42).unwrap();
        let shards = iid_partition(train.len(), AGENTS, 7)
            .unwrap()
            .iter()
            .map(|indices| train.subset(indices).unwrap())
            .collect();
        let model = TrainableModel::from_onnx_bytes(&builder::mlp(&[64, 32, 10], 1)).unwrap();
        let trainer = LocalTrainer::new(model.clone(), Loss::SoftmaxCrossEntropy, BATCH as usize).unwrap();
        Federation { model, trainer, shards, test }
    }

    fn name(i: usize) -> String {
        format!("agent-{i:02}")
    }

    /// Runs `ROUNDS` plain rounds with `strategy`, the first `poisoned` agents attacking, every delta sent in
    /// `encoding`, and returns the final model's test accuracy.
    fn accuracy_after_rounds(&mut self, strategy: StrategyConfig, poisoned: usize, encoding: DeltaEncoding) -> f32 {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let config = CoordinatorConfig {
            min_agents: AGENTS,
            min_available: Some(AGENTS),
            max_agents: AGENTS,
            fraction: 1.0,
            overselect: 1.0,
            seed: 3,
            round_timeout_ms: 60_000,
            retry_backoff_ms: 0,
            max_examples: None,
            hyper: TrainHyper::default(),
            strategy,
        };
        let state = ResumeState {
            model_version: 0,
            weights: self.model.initial_weights(),
            next_round: 1,
            strategy_state: vec![],
        };
        let mut coord = Coordinator::new(config, state).unwrap().with_secagg(SecAggConfig::off()).unwrap();
        let mut events: VecDeque<Event<'static>> = VecDeque::new();
        for i in 0..AGENTS {
            events.push_back(Event::AgentConnected { agent: Self::name(i) });
            let examples = self.shards[i].len() as u64;
            events.push_back(Event::CheckIn { agent: Self::name(i), model_version: Some(0), examples });
        }
        events.push_back(Event::StartRounds { count: Some(ROUNDS) });
        let mut committed = 0;
        let mut updates: VecDeque<(String, u64, u64, f32, Vec<f32>)> = VecDeque::new();
        let mut now = 0;
        while committed < ROUNDS {
            now += 1;
            let actions = if let Some(e) = events.pop_front() {
                coord.handle(now, e)
            } else if let Some((agent, round, examples, loss, delta)) = updates.pop_front() {
                coord.handle(now, Event::Update { agent, round, examples, train_loss: loss, delta: &delta })
            } else {
                panic!("the federation stalled after {committed} rounds: {:?}", coord.status());
            };
            for action in actions {
                match action {
                    Action::SendPlan { agent, plan, .. } => {
                        let i: usize = agent.trim_start_matches("agent-").parse().unwrap();
                        let global = coord.global_weights().to_vec();
                        let mut local = global.clone();
                        let cfg = LocalTrainConfig {
                            optimizer: OptimizerConfig::sgd_momentum(0.05, 0.9),
                            seed: plan.hyper.seed ^ i as u64,
                            ..LocalTrainConfig::sgd(1, BATCH, 0.0)
                        };
                        let summary = self.trainer.train(&mut local, &self.shards[i], &cfg, &mut |_| {}).unwrap();
                        let scale = if i < poisoned { -10.0 } else { 1.0 };
                        let delta: Vec<f32> = local.iter().zip(&global).map(|(l, g)| scale * (l - g)).collect();
                        let bytes = encoding.encode(&delta, &mut || rng.r#gen::<f32>());
                        let delta = encoding.decode(&bytes, delta.len()).unwrap();
                        updates.push_back((agent, plan.round, summary.examples as u64, summary.last_epoch_loss, delta));
                    }
                    Action::Commit { record, .. } => {
                        committed += 1;
                        events.push_back(Event::Committed { round: record.round, version: committed });
                    }
                    Action::RoundAborted { reason, .. } => panic!("a round aborted: {reason}"),
                    _ => {}
                }
            }
        }
        evaluate(&self.model, coord.global_weights(), &self.test, 64).unwrap().accuracy
    }
}

#[test]
fn with_30_percent_of_agents_poisoning_median_trimmed_mean_and_krum_keep_the_accuracy_that_fedavg_loses() {
    let mut fed = Federation::new();
    let clean = fed.accuracy_after_rounds(StrategyConfig::FedAvg, 0, DeltaEncoding::F32);
    let fedavg = fed.accuracy_after_rounds(StrategyConfig::FedAvg, POISONED, DeltaEncoding::F32);
    let robust = [
        ("median", StrategyConfig::Median),
        ("trimmed mean", StrategyConfig::TrimmedMean { beta: 0.3 }),
        ("krum", StrategyConfig::Krum { byzantine: POISONED, keep: 1 }),
        ("multi-krum", StrategyConfig::Krum { byzantine: POISONED, keep: 4 }),
    ];
    let mut report =
        format!("without attackers, fedavg: {clean:.3}; with {POISONED} of {AGENTS} poisoning, fedavg: {fedavg:.3}");
    let mut kept = vec![];
    for (name, strategy) in robust {
        let accuracy = fed.accuracy_after_rounds(strategy, POISONED, DeltaEncoding::F32);
        report.push_str(&format!(", {name}: {accuracy:.3}"));
        kept.push((name, accuracy));
    }
    eprintln!("{report}");
    assert!(clean >= 0.85, "the clean federation must learn the task first: {report}");
    assert!(fedavg < 0.5, "federated averaging should lose the task to the poisoned updates: {report}");
    for (name, accuracy) in kept {
        assert!(accuracy >= clean - 0.1, "{name} should keep the clean accuracy: {report}");
    }
}

#[test]
fn eight_bit_uploads_learn_as_well_as_exact_f32_deltas() {
    let mut fed = Federation::new();
    let exact = fed.accuracy_after_rounds(StrategyConfig::FedAvg, 0, DeltaEncoding::F32);
    let int8 = fed.accuracy_after_rounds(StrategyConfig::FedAvg, 0, DeltaEncoding::Int8);
    eprintln!("fedavg after {ROUNDS} rounds: f32 uploads {exact:.4}, 8-bit uploads {int8:.4}");
    assert!(exact >= 0.85, "the federation must learn the task: {exact}");
    assert!((int8 - exact).abs() <= 0.01, "8-bit uploads changed the accuracy: {int8} against {exact}");
}
