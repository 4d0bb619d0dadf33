//! Fine-tuning part of the model, as the coordinator sees it: the model's weight layout (each weight's name and
//! place in the flat global vector, handed over once by the shell with [`Coordinator::with_layout`]) and the part a
//! round trains, resolved from the configured `hyper.trainable` patterns.
//!
//! The patterns are checked against the layout whenever a configuration is taken (at start-up and at every
//! operator setting), so a pattern that matches nothing is refused to the operator before any agent is contacted.
//! A round with a part aggregates vectors of the part's length only (plain sums and the secure session alike) and
//! hands the strategy that sub-vector ([`crate::strategy::Strategy::aggregate_part`]); the frozen weights are never
//! touched. Pure: no I/O, no clock.

use super::Coordinator;
use super::config::{ConfigError, CoordinatorConfig};
use fedge_shared::train::{ParamInfo, TrainablePart};

/// Checks `config`'s trainable patterns against `layout` (a model's whole layout; empty when unknown).
pub(super) fn check_trainable(config: &CoordinatorConfig, layout: &[ParamInfo]) -> Result<(), ConfigError> {
    resolve(&config.hyper.trainable, layout).map(|_| ()).map_err(ConfigError::Invalid)
}

/// The part `patterns` choose in `layout`; `None` for the whole model (no patterns).
pub(super) fn resolve(patterns: &[String], layout: &[ParamInfo]) -> Result<Option<TrainablePart>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    if layout.is_empty() {
        return Err("hyper.trainable needs the model's weight names, and this coordinator was not given them".into());
    }
    TrainablePart::select(layout, patterns).map(Some).map_err(|e| format!("hyper.trainable: {e}"))
}

impl Coordinator {
    /// Tells the coordinator the model's weight layout (`TrainableModel::params` of the federation's graph), so
    /// that rounds may train part of the model. The layout must cover the global weights exactly, and the
    /// configured `hyper.trainable` patterns must each match one of its weights.
    pub fn with_layout(mut self, layout: Vec<ParamInfo>) -> Result<Self, ConfigError> {
        let total: usize = layout.iter().map(|p| p.len).sum();
        if total != self.global.len() {
            return Err(ConfigError::Invalid(format!(
                "the model's weights hold {total} parameters, the global weights {}",
                self.global.len()
            )));
        }
        check_trainable(&self.config, &layout)?;
        self.layout = layout;
        Ok(self)
    }

    /// The model's weight layout (empty when the shell did not give it).
    pub fn layout(&self) -> &[ParamInfo] {
        &self.layout
    }
}
