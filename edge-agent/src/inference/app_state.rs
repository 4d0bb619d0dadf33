//! What the inference endpoint's HTTP handlers share (the routes of [`super::http`] and [`super::labels_http`]):
//! the models, the batcher, the metrics, the limits, the device's labels and the recent predictions.
//!
//! Data only: this module must never handle a request or run the model.

use super::batcher::Batcher;
use super::metrics::Metrics;
use super::recent::RecentPredictions;
use super::registry::ModelRegistry;
use crate::examples_store::ExampleStore;
use std::sync::Arc;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<ModelRegistry>,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    pub max_examples: usize,
    /// The device's labelled examples (`None`: `/v1/examples` and `/v1/feedback` answer 503).
    pub labels: Option<Arc<ExampleStore>>,
    /// The inputs of the last predictions served, for corrections.
    pub recent: Arc<RecentPredictions>,
}
