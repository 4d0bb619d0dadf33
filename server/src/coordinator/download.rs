//! How a committed version reaches the agents that hold the one before it: whole (exact f32 weights), or as its
//! 8-bit difference to that version ([`fedge_shared::model_diff`]), about a quarter of the bytes.
//!
//! With differences on, the weights the coordinator commits are not the strategy's output but what the difference
//! rebuilds from the previous version ([`fedge_shared::model_diff::settle`]): the server, and every agent that
//! applies the difference, hold the same bits, and the next round trains from them. The difference goes to the shell
//! with the commit ([`super::Action::Commit`]'s `diff`); which agent receives it, and which the whole version, is the
//! shell's choice (it knows what each connection holds). A version whose difference is not finite is committed as
//! the strategy made it, with no difference.
//!
//! Part of the coordinator's sans-IO state machine: no socket, no clock, no randomness (the rounding is to the
//! nearest level, a function of the two versions alone).

use super::Coordinator;
use fedge_shared::delta_encoding::DeltaEncoding;
use fedge_shared::model_diff;

impl Coordinator {
    /// Commits versions as differences (`Int8`) or whole (`F32`, the default of a coordinator built in code; the
    /// server's configuration defaults to `Int8`).
    pub fn with_model_download(mut self, encoding: DeltaEncoding) -> Self {
        self.download = encoding;
        self
    }

    /// How committed versions travel.
    pub fn model_download(&self) -> DeltaEncoding {
        self.download
    }

    /// The weights to commit in place of the strategy's `new`, and the difference that rebuilds them from the
    /// current global model (none when versions travel whole, or the difference is not finite).
    pub(super) fn settle_download(&self, new: Vec<f32>) -> (Vec<f32>, Option<Vec<u8>>) {
        if self.download != DeltaEncoding::Int8 {
            return (new, None);
        }
        match model_diff::settle(&self.global, &new) {
            Some((settled, diff)) => (settled, Some(diff)),
            None => {
                tracing::warn!(
                    version = self.model_version + 1,
                    "the new version differs by a value that is not finite: it travels whole"
                );
                (new, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::{CoordinatorConfig, ResumeState};

    fn coordinator(weights: Vec<f32>) -> Coordinator {
        let config = CoordinatorConfig {
            min_agents: 1,
            min_available: None,
            max_agents: 2,
            fraction: 1.0,
            overselect: 1.0,
            seed: 0,
            round_timeout_ms: 1000,
            retry_backoff_ms: 0,
            max_examples: None,
            hyper: crate::hyper::TrainHyper::default(),
            strategy: Default::default(),
        };
        let state = ResumeState { model_version: 0, weights, next_round: 1, strategy_state: vec![] };
        Coordinator::new(config, state).unwrap()
    }

    #[test]
    fn whole_versions_are_committed_as_the_strategy_made_them() {
        let c = coordinator(vec![0.0; 4]);
        let new = vec![0.1, 0.2, 0.3, 0.123_456_7];
        assert_eq!(c.settle_download(new.clone()), (new, None));
    }

    #[test]
    fn with_differences_the_committed_weights_are_what_the_difference_rebuilds() {
        let c = coordinator(vec![1.0, 2.0, 3.0, 4.0]).with_model_download(DeltaEncoding::Int8);
        let (settled, diff) = c.settle_download(vec![1.1, 2.0, 2.95, 4.001_234]);
        let diff = diff.unwrap();
        assert_eq!(model_diff::apply(&[1.0, 2.0, 3.0, 4.0], &diff, 1).unwrap(), settled);
        assert_ne!(settled[3], 4.001_234, "rounded to a level of the block's scale");
        assert!((settled[3] - 4.001_234).abs() <= 0.1 / 127.0 / 2.0 + 1e-6);
        let (whole, none) = c.settle_download(vec![f32::NAN, 2.0, 3.0, 4.0]);
        assert!(none.is_none() && whole[0].is_nan());
    }
}
