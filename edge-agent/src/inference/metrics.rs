//! Request metrics of the prediction endpoint in the Prometheus text format: requests by outcome, request
//! latency, examples per batch run, batch run time, and the model version served.
//!
//! Counting only: this module never decides anything about a request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// How a request ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    BadRequest,
    TooLarge,
    Unsupported,
    Unavailable,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::Unsupported => "unsupported_media_type",
            Outcome::Unavailable => "unavailable",
            Outcome::Error => "error",
        }
    }
}

/// The endpoint's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<OutcomeLabel, Counter>,
    latency: Histogram,
    batch_examples: Histogram,
    batch_seconds: Histogram,
    examples: Counter,
    version: Gauge,
    swaps: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fedge_inference");
        let requests = Family::<OutcomeLabel, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        let batch_examples = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        let batch_seconds = Histogram::new(exponential_buckets(0.000_02, 2.0, 18));
        let examples = Counter::default();
        let version = Gauge::default();
        let swaps = Counter::default();
        registry.register("requests", "Prediction requests by outcome", requests.clone());
        registry.register("request_duration_seconds", "Prediction request latency", latency.clone());
        registry.register("batch_examples", "Examples run together in one batch", batch_examples.clone());
        registry.register("batch_duration_seconds", "Time of one batch run", batch_seconds.clone());
        registry.register("examples", "Examples predicted", examples.clone());
        registry.register("model_version", "Global model version served (-1: none)", version.clone());
        registry.register("model_swaps", "Model versions swapped in", swaps.clone());
        version.set(-1);
        Metrics { registry, requests, latency, batch_examples, batch_seconds, examples, version, swaps }
    }

    /// Counts a finished request.
    pub fn request(&self, outcome: Outcome, took: Duration, examples: usize) {
        self.requests.get_or_create(&OutcomeLabel { outcome: outcome.label().into() }).inc();
        self.latency.observe(took.as_secs_f64());
        if outcome == Outcome::Ok {
            self.examples.inc_by(examples as u64);
        }
    }

    /// Counts a batch run.
    pub fn batch(&self, examples: usize, took: Duration) {
        self.batch_examples.observe(examples as f64);
        self.batch_seconds.observe(took.as_secs_f64());
    }

    /// Records a swapped-in version.
    pub fn swapped(&self, version: u64) {
        self.version.set(i64::try_from(version).unwrap_or(i64::MAX));
        self.swaps.inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_requests_and_the_served_version_appear_in_the_text_exposition() {
        let m = Metrics::new();
        m.request(Outcome::Ok, Duration::from_millis(2), 3);
        m.request(Outcome::Ok, Duration::from_millis(1), 1);
        m.request(Outcome::TooLarge, Duration::from_micros(10), 0);
        m.batch(4, Duration::from_millis(1));
        m.swapped(9);
        let text = m.encode();
        assert!(text.contains(r#"fedge_inference_requests_total{outcome="ok"} 2"#), "{text}");
        assert!(text.contains(r#"fedge_inference_requests_total{outcome="too_large"} 1"#), "{text}");
        assert!(text.contains("fedge_inference_request_duration_seconds_count 3"), "{text}");
        assert!(text.contains("fedge_inference_examples_total 4"), "{text}");
        assert!(text.contains("fedge_inference_model_version 9"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
