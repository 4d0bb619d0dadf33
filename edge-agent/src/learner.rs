//! What an agent does with a round: start from the global weights, learn on local data, return the delta.
//!
//! [`Learner`] is the seam between the round protocol and the learning itself. The agent ships one real
//! implementation, [`crate::trainer::TractLearner`], which trains with tract on the device's data; benchmarks of the
//! federation machinery use [`NoiseLearner`], whose "training" is a seeded perturbation, so that only the
//! framework's own cost is measured.
//!
//! A learner runs on a blocking thread, never on the async runtime, and never touches the network.

use fedge_shared::fedeval::EvalCounts;
use fedge_shared::protocol::TrainPlan;

/// The outcome of local learning in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnOutcome {
    /// Local weights minus the global weights, in the model's parameter order: the whole model, or only the part
    /// the round's `trainable` patterns choose.
    pub delta: Vec<f32>,
    /// Examples trained on (the aggregation weight), the device's own labelled examples included.
    pub examples: u64,
    /// Of `examples`, how many were the device's own labelled examples (posted to its inference endpoint).
    pub device_examples: u64,
    /// Mean training loss of the last epoch.
    pub train_loss: f32,
    /// Accuracy on the agent's held-out split after training, if it has one.
    pub holdout_accuracy: Option<f32>,
    /// The federated evaluation: the round's starting (global) model on the held-out split, before training.
    pub eval: Option<EvalCounts>,
}

/// Local learning, as the agent's round protocol sees it.
pub trait Learner: Send {
    /// Training examples held (reported at check-in).
    fn examples(&self) -> u64;
    /// A new ONNX graph to learn with. Called before the first round and whenever the federation's graph changes.
    fn set_graph(&mut self, onnx: &[u8]) -> anyhow::Result<()>;
    /// Number of parameters of the current graph, if one is set.
    fn num_params(&self) -> Option<usize>;
    /// Whether this learner can carry out `plan` with the graph it holds: checked when the plan arrives, before
    /// the agent commits to the round (e.g. trainable patterns that match no weight of the model are refused).
    fn check_plan(&self, plan: &TrainPlan) -> anyhow::Result<()> {
        let _ = plan;
        Ok(())
    }
    /// Learns from `global` (the whole model's weights) under `plan`. The delta covers the weights the plan
    /// trains: all of them, or only those its `trainable` patterns choose, in the model's parameter order.
    fn learn(&mut self, global: &[f32], plan: &TrainPlan) -> anyhow::Result<LearnOutcome>;
}

/// A learner for benchmarks of the federation machinery: its delta is seeded uniform noise in [-scale, scale].
/// With [`NoiseLearner::with_dropout`] it fails a seeded fraction of its rounds, as a device that drops out after
/// the round's key exchange (the agent then abandons the round).
#[derive(Debug, Clone)]
pub struct NoiseLearner {
    pub examples: u64,
    pub seed: u64,
    pub scale: f32,
    dropout: f64,
    params: Option<usize>,
}

impl NoiseLearner {
    pub fn new(examples: u64, seed: u64, scale: f32) -> Self {
        NoiseLearner { examples, seed, scale, dropout: 0.0, params: None }
    }

    /// Fails each round with probability `fraction`, decided by this learner's seed and the round's, so that a run
    /// is repeatable and about `fraction` of a cohort drops out of every round.
    pub fn with_dropout(mut self, fraction: f64) -> Self {
        self.dropout = fraction;
        self
    }

    /// Whether the learner seeded `seed` drops out of the round seeded `round_seed` at drop-out rate `fraction`.
    pub fn drops_out(seed: u64, round_seed: u64, fraction: f64) -> bool {
        use rand::{Rng, SeedableRng};
        fraction > 0.0 && rand::rngs::StdRng::seed_from_u64(seed ^ round_seed.rotate_left(41)).r#gen::<f64>() < fraction
    }

    /// The delta this learner returns in `round` for `params` parameters (for checking an aggregate).
    pub fn delta_for(seed: u64, round_seed: u64, params: usize, scale: f32) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ round_seed.rotate_left(17));
        (0..params).map(|_| rng.gen_range(-scale..=scale)).collect()
    }
}

impl Learner for NoiseLearner {
    fn examples(&self) -> u64 {
        self.examples
    }

    fn set_graph(&mut self, onnx: &[u8]) -> anyhow::Result<()> {
        // The synthetic benchmark graph's parameter count travels with the weights; the graph itself is opaque here.
        let _ = onnx;
        Ok(())
    }

    fn num_params(&self) -> Option<usize> {
        self.params
    }

    fn check_plan(&self, plan: &TrainPlan) -> anyhow::Result<()> {
        if !plan.trainable.is_empty() {
            anyhow::bail!("the noise learner cannot train part of a model (trainable patterns {:?})", plan.trainable);
        }
        Ok(())
    }

    fn learn(&mut self, global: &[f32], plan: &TrainPlan) -> anyhow::Result<LearnOutcome> {
        self.check_plan(plan)?;
        self.params = Some(global.len());
        if Self::drops_out(self.seed, plan.seed, self.dropout) {
            anyhow::bail!("simulated drop-out (rate {})", self.dropout);
        }
        Ok(LearnOutcome {
            delta: Self::delta_for(self.seed, plan.seed, global.len(), self.scale),
            examples: self.examples,
            device_examples: 0,
            train_loss: 0.0,
            holdout_accuracy: None,
            eval: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::NoiseLearner;

    #[test]
    fn about_the_drop_out_fraction_of_a_cohort_drops_out_of_each_round_and_the_draw_repeats() {
        for round_seed in [1u64, 77, 123_456_789] {
            let out = (0..2_000u64).filter(|s| NoiseLearner::drops_out(1_000 + s, round_seed, 0.1)).count();
            assert!((150..=250).contains(&out), "{out} of 2,000 dropped out at a rate of 0.1");
            let again = (0..2_000u64).filter(|s| NoiseLearner::drops_out(1_000 + s, round_seed, 0.1)).count();
            assert_eq!(out, again, "the same seeds draw the same drop-outs");
        }
        assert!((0..2_000u64).all(|s| !NoiseLearner::drops_out(s, 5, 0.0)), "nobody drops out at a rate of 0");
    }
}
