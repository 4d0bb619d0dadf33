//! Versions an aggregator installs from its root: the root's graph and weights stored under the root's version
//! number, so that the aggregator's agents, its restarts and the root all name a version the same way.
//!
//! Installed versions are written like committed ones (model, weights, newest version in ONE transaction, then a
//! flush; the retention window applies) but carry no round of this server. An installed version never replaces a
//! newer one, and nothing here may write a round record.

use super::db::Store;
use super::encoding::{
    META_LATEST, META_NEXT_ROUND, abort, check_finite, encode, key, tx_error, tx_meta_u64, tx_put_weights,
    tx_remove_weights,
};
use super::error::StoreError;
use super::models::ModelMeta;
use fedge_shared::model::weights_to_bytes;
use sled::Transactional;

impl Store {
    /// Stores the root's `version` (its ONNX `graph` and `weights`) as the newest model; returns its metadata.
    /// Refused (changing nothing) unless it is newer than the newest held, or when the weights are empty or not
    /// finite.
    pub fn install_version(
        &self,
        version: u64,
        graph: &[u8],
        weights: &[f32],
        created_ms: u64,
    ) -> Result<ModelMeta, StoreError> {
        self.writable()?;
        if weights.is_empty() {
            return Err(StoreError::WrongLength { expected: 1, got: 0 });
        }
        check_finite(weights)?;
        let graph_digest = self.put_graph(graph)?;
        let bytes = weights_to_bytes(weights);
        let meta = ModelMeta::unaggregated(version, graph_digest, &bytes, created_ms);
        let meta_bytes = encode(&meta)?;
        let keep = self.keep_weights;
        (&self.models, &self.weights, &self.meta)
            .transaction(|(models, wts, meta_tree)| {
                let latest = tx_meta_u64(meta_tree, META_LATEST)?;
                if let Some(latest) = latest
                    && latest >= version
                {
                    return abort(StoreError::NotNewer { version, latest });
                }
                models.insert(&key(version), meta_bytes.as_slice())?;
                tx_put_weights(wts, version, &bytes)?;
                // The versions that fall out of the retention window lose their weights in the same transaction.
                if keep > 0
                    && let Some(latest) = latest
                {
                    let first_kept = (version + 1).saturating_sub(keep);
                    for old in latest.saturating_sub(keep)..=latest {
                        if old < first_kept {
                            tx_remove_weights(wts, old, weights.len() as u64)?;
                        }
                    }
                }
                meta_tree.insert(META_LATEST, &key(version))?;
                if meta_tree.get(META_NEXT_ROUND)?.is_none() {
                    meta_tree.insert(META_NEXT_ROUND, &key(1))?;
                }
                Ok(())
            })
            .map_err(|e| self.failed_write(tx_error(e)))?;
        self.flush()?;
        Ok(meta)
    }
}
