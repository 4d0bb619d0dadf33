//! [`ModelRegistry`]: the model version being served, swapped atomically (arc-swap) when a newer global version
//! is compiled, unless an operator pinned a version.
//!
//! A request takes the current `Arc<LoadedModel>` once, when it is admitted, and keeps it to the end, so a swap
//! never changes the model under a request in flight; the old version is dropped when its last request ends.
//! [`follow`] compiles each published version on a blocking thread (never on the async runtime) before swapping.

use super::engine::LoadedModel;
use super::metrics::Metrics;
use crate::state::PublishedModel;
use arc_swap::ArcSwapOption;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

const NOT_PINNED: u64 = u64::MAX;

/// The served model and the operator's pin.
#[derive(Debug)]
pub struct ModelRegistry {
    current: ArcSwapOption<LoadedModel>,
    pin: AtomicU64,
}

impl ModelRegistry {
    pub fn new(pin: Option<u64>) -> Self {
        ModelRegistry { current: ArcSwapOption::empty(), pin: AtomicU64::new(pin.unwrap_or(NOT_PINNED)) }
    }

    /// The model new requests run on (`None` until one is loaded).
    pub fn current(&self) -> Option<Arc<LoadedModel>> {
        self.current.load_full()
    }

    /// The served version.
    pub fn version(&self) -> Option<u64> {
        self.current.load().as_ref().map(|m| m.version)
    }

    /// The pinned version, if any.
    pub fn pinned(&self) -> Option<u64> {
        Some(self.pin.load(Ordering::Acquire)).filter(|&v| v != NOT_PINNED)
    }

    /// Whether `version` should replace what is served: the pinned one if pinned, else only a newer one.
    pub fn wants(&self, version: u64) -> bool {
        match (self.pinned(), self.version()) {
            (Some(p), current) => p == version && current != Some(version),
            (None, Some(current)) => version > current,
            (None, None) => true,
        }
    }

    /// Serves `model` from the next request on.
    pub fn install(&self, model: Arc<LoadedModel>) {
        tracing::info!(version = model.version, "serving predictions with a new model version");
        self.current.store(Some(model));
    }
}

/// Compiles and swaps in each published version the registry wants, until `updates` closes or `stop` resolves.
pub async fn follow(
    registry: Arc<ModelRegistry>,
    updates: watch::Receiver<Option<PublishedModel>>,
    max_batch: usize,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        _ = follow_updates(registry, updates, max_batch, metrics) => {}
        _ = stop => {}
    }
}

async fn follow_updates(
    registry: Arc<ModelRegistry>,
    mut updates: watch::Receiver<Option<PublishedModel>>,
    max_batch: usize,
    metrics: Arc<Metrics>,
) {
    loop {
        let published = updates.borrow_and_update().clone();
        if let Some(p) = published {
            if registry.wants(p.version) {
                let version = p.version;
                match tokio::task::spawn_blocking(move || LoadedModel::build(&p, max_batch)).await {
                    Ok(Ok(m)) => {
                        // A newer version may have been installed while this one compiled.
                        if registry.wants(version) {
                            registry.install(Arc::new(m));
                            metrics.swapped(version);
                        }
                    }
                    Ok(Err(e)) => tracing::error!(version, error = %e, "cannot compile this version for inference"),
                    Err(e) => tracing::error!(version, error = %e, "compiling for inference panicked"),
                }
            } else if registry.pinned().is_some_and(|pin| pin != p.version) {
                tracing::info!(version = p.version, pinned = ?registry.pinned(), "inference is pinned; not swapping");
            }
        }
        if updates.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unpinned_registry_wants_only_newer_versions_and_a_pinned_one_only_its_pin() {
        let r = ModelRegistry::new(None);
        assert!(r.wants(0));
        let p = ModelRegistry::new(Some(3));
        assert!(p.wants(3) && !p.wants(4) && !p.wants(2));
        assert_eq!(p.pinned(), Some(3));
        assert_eq!(r.pinned(), None);
    }
}
