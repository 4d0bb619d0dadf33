//! A learner that stands for a slower device (`fedgectl demo --slow-agents N --slowdown F`): it trains as the learner
//! it wraps, then waits `F − 1` times as long as that took before handing the result over, so that the agent takes
//! `F` times as long per round while leaving the cores to the others, as a separate slower device would.
//!
//! For benchmarks of straggler handling (synchronous rounds against buffered asynchronous aggregation) on one
//! machine; it must never change what is learned, only when it is delivered.

use fedge_agent::learner::{LearnOutcome, Learner};
use fedge_shared::protocol::TrainPlan;
use std::time::{Duration, Instant};

/// `inner`, `factor` times slower.
pub struct SlowLearner {
    inner: Box<dyn Learner>,
    factor: f64,
}

impl SlowLearner {
    /// `factor` ≥ 1 (a smaller one is taken as 1).
    pub fn new(inner: Box<dyn Learner>, factor: f64) -> Self {
        SlowLearner { inner, factor: if factor.is_finite() { factor.max(1.0) } else { 1.0 } }
    }

    /// How long to wait after training that took `took`.
    fn wait_after(&self, took: Duration) -> Duration {
        took.mul_f64(self.factor - 1.0)
    }
}

impl Learner for SlowLearner {
    fn examples(&self) -> u64 {
        self.inner.examples()
    }

    fn set_graph(&mut self, onnx: &[u8]) -> anyhow::Result<()> {
        self.inner.set_graph(onnx)
    }

    fn num_params(&self) -> Option<usize> {
        self.inner.num_params()
    }

    fn check_plan(&self, plan: &TrainPlan) -> anyhow::Result<()> {
        self.inner.check_plan(plan)
    }

    fn learn(&mut self, global: &[f32], plan: &TrainPlan) -> anyhow::Result<LearnOutcome> {
        let start = Instant::now();
        let outcome = self.inner.learn(global, plan);
        // The agent runs learning on a blocking thread: sleeping here holds no core and no runtime thread.
        std::thread::sleep(self.wait_after(start.elapsed()));
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedge_agent::learner::NoiseLearner;

    #[test]
    fn it_learns_what_the_wrapped_learner_learns_and_takes_factor_times_as_long() {
        let plan = TrainPlan {
            epochs: 1,
            batch_size: 8,
            learning_rate: 0.1,
            momentum: 0.0,
            weight_decay: 0.0,
            optimizer: fedge_shared::protocol::OptimizerKind::Sgd,
            prox_mu: None,
            seed: 5,
            loss: Default::default(),
            trainable: vec![],
            upload: Default::default(),
        };
        let mut plain = NoiseLearner::new(100, 3, 0.1);
        plain.set_graph(&[]).ok();
        let want = plain.learn(&[0.0; 16], &plan).unwrap();
        let mut slow = SlowLearner::new(Box::new(NoiseLearner::new(100, 3, 0.1)), 4.0);
        slow.set_graph(&[]).ok();
        assert_eq!(slow.examples(), 100);
        let got = slow.learn(&[0.0; 16], &plan).unwrap();
        assert_eq!(got.delta, want.delta);
        assert_eq!(slow.wait_after(Duration::from_millis(10)), Duration::from_millis(30));
        assert_eq!(SlowLearner::new(Box::new(NoiseLearner::new(1, 1, 0.1)), 0.5).factor, 1.0);
    }
}
