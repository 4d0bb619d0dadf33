//! The global models in the store: each version's metadata ([`ModelMeta`]), its weights (in pieces, only the
//! newest `keep_weights` versions' kept) and the ONNX graphs by digest.
//!
//! Weights and graphs are checked against their digests when read back: this module must never hand out bytes
//! that do not match what was recorded, and never panic on a corrupt record.

use super::db::Store;
use super::encoding::{
    META_LATEST, META_NEXT_ROUND, abort, check_finite, chunk_key, decode, encode, key, read_u64, tx_error,
    tx_put_weights,
};
use super::error::StoreError;
use fedge_shared::model::{Digest, weights_from_bytes, weights_to_bytes};
use serde::{Deserialize, Serialize};
use sled::Transactional;

/// Metadata of one global model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub version: u64,
    pub graph_digest: Digest,
    pub weights_digest: Digest,
    pub num_params: u64,
    /// The version this one was aggregated from (`None` for version 0).
    pub parent: Option<u64>,
    /// The round that produced it (`None` for version 0).
    pub round: Option<u64>,
    /// The producing round's metrics.
    pub metrics: Option<crate::coordinator::RoundMetrics>,
    /// Creation time as given by the caller (Unix milliseconds by convention).
    pub created_ms: u64,
}

impl ModelMeta {
    /// A version that no round of this server produced (version 0, or a root's version an aggregator installs), of
    /// the weights whose little-endian bytes are `bytes`.
    pub(super) fn unaggregated(version: u64, graph_digest: Digest, bytes: &[u8], created_ms: u64) -> ModelMeta {
        ModelMeta {
            version,
            graph_digest,
            weights_digest: Digest::of(bytes),
            num_params: (bytes.len() / 4) as u64,
            parent: None,
            round: None,
            metrics: None,
            created_ms,
        }
    }
}

impl Store {
    /// Removes the weights of every version older than the newest `keep_weights`; returns how many versions lost them.
    /// Metadata and round records are kept.
    pub fn prune_weights(&self) -> Result<usize, StoreError> {
        self.writable()?;
        let Some(latest) = self.latest_version()? else { return Ok(0) };
        let Some(cutoff) = self.prune_cutoff(latest) else { return Ok(0) };
        // Counted in versions; a version's weights may be several pieces.
        let mut removed = 0;
        let mut last = None;
        for k in self.weights.range(..key(cutoff)).keys() {
            let k = k?;
            let version = k.get(..8).map(<[u8]>::to_vec);
            if version != last {
                removed += 1;
                last = version;
            }
            self.weights.remove(k)?;
        }
        if removed > 0 {
            self.flush()?;
        }
        Ok(removed)
    }

    /// The oldest version whose weights are kept when `latest` is the newest, or `None` when all are kept.
    fn prune_cutoff(&self, latest: u64) -> Option<u64> {
        (self.keep_weights > 0 && latest + 1 > self.keep_weights).then(|| latest + 1 - self.keep_weights)
    }

    /// Whether the weights of `version` are still stored.
    pub fn has_weights(&self, version: u64) -> Result<bool, StoreError> {
        Ok(self.weights.scan_prefix(key(version)).next().transpose()?.is_some())
    }

    /// The stored bytes of `version`'s weights (its pieces, joined), or `None` when none are stored.
    fn weight_bytes(&self, version: u64, num_params: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(whole) = self.weights.get(key(version))? {
            return Ok(Some(whole.to_vec()));
        }
        // The metadata's size is only a hint (it may be corrupt): reserve at most 1 GiB ahead.
        let hint = usize::try_from(num_params).unwrap_or(usize::MAX).saturating_mul(4).min(1 << 30);
        let mut bytes = Vec::with_capacity(hint);
        let mut pieces = 0;
        for kv in self.weights.scan_prefix(key(version)) {
            let (k, v) = kv?;
            if k.as_ref() != chunk_key(version, pieces) {
                return Err(StoreError::Corrupt {
                    tree: "weights",
                    key: version.to_string(),
                    detail: format!("piece {pieces} is missing or out of place"),
                });
            }
            bytes.extend_from_slice(&v);
            pieces += 1;
        }
        Ok((pieces > 0).then_some(bytes))
    }

    fn latest_version(&self) -> Result<Option<u64>, StoreError> {
        match self.meta.get(META_LATEST)? {
            None => Ok(None),
            Some(v) => read_u64("meta", META_LATEST, &v).map(Some),
        }
    }

    /// Stores an ONNX graph under its SHA-256 digest (idempotent) and returns the digest.
    pub fn put_graph(&self, onnx: &[u8]) -> Result<Digest, StoreError> {
        self.writable()?;
        let digest = Digest::of(onnx);
        self.graphs.insert(digest.0, onnx)?;
        self.flush()?;
        Ok(digest)
    }

    /// The ONNX graph with `digest`, checked against it.
    pub fn graph(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(bytes) = self.graphs.get(digest.0)? else { return Ok(None) };
        if Digest::of(&bytes) != *digest {
            return Err(StoreError::Corrupt {
                tree: "graphs",
                key: digest.to_hex(),
                detail: "the bytes do not match their digest".into(),
            });
        }
        Ok(Some(bytes.to_vec()))
    }

    /// Creates model version 0 from `weights` for the stored graph `graph_digest`. Refused once a model exists.
    pub fn init_model(&self, graph_digest: Digest, weights: &[f32], created_ms: u64) -> Result<ModelMeta, StoreError> {
        self.writable()?;
        if !self.graphs.contains_key(graph_digest.0)? {
            return Err(StoreError::UnknownGraph(graph_digest.to_hex()));
        }
        if weights.is_empty() {
            return Err(StoreError::WrongLength { expected: 1, got: 0 });
        }
        check_finite(weights)?;
        let bytes = weights_to_bytes(weights);
        let meta = ModelMeta::unaggregated(0, graph_digest, &bytes, created_ms);
        let meta_bytes = encode(&meta)?;
        (&self.models, &self.weights, &self.meta)
            .transaction(|(models, wts, meta_tree)| {
                if meta_tree.get(META_LATEST)?.is_some() {
                    return abort(StoreError::AlreadyInitialised);
                }
                models.insert(&key(0), meta_bytes.as_slice())?;
                tx_put_weights(wts, 0, &bytes)?;
                meta_tree.insert(META_LATEST, &key(0))?;
                if meta_tree.get(META_NEXT_ROUND)?.is_none() {
                    meta_tree.insert(META_NEXT_ROUND, &key(1))?;
                }
                Ok(())
            })
            .map_err(|e| self.failed_write(tx_error(e)))?;
        self.flush()?;
        Ok(meta)
    }

    /// The newest committed version's metadata, or `None` for an empty store.
    pub fn latest(&self) -> Result<Option<ModelMeta>, StoreError> {
        match self.latest_version()? {
            None => Ok(None),
            Some(v) => self.model(v).map(Some),
        }
    }

    /// The metadata of `version`.
    pub fn model(&self, version: u64) -> Result<ModelMeta, StoreError> {
        let bytes = self.models.get(key(version))?.ok_or(StoreError::UnknownVersion(version))?;
        decode("models", version, &bytes)
    }

    /// The weights of `version`, checked against the digest and length in its metadata.
    pub fn weights(&self, version: u64) -> Result<Vec<f32>, StoreError> {
        let meta = self.model(version)?;
        let Some(bytes) = self.weight_bytes(version, meta.num_params)? else {
            if let Some(latest) = self.latest_version()?
                && self.prune_cutoff(latest).is_some_and(|cutoff| version < cutoff)
            {
                return Err(StoreError::Pruned { version, keep: self.keep_weights });
            }
            return Err(StoreError::Corrupt {
                tree: "weights",
                key: version.to_string(),
                detail: "the model has metadata but no weights".into(),
            });
        };
        let corrupt = |detail: String| StoreError::Corrupt { tree: "weights", key: version.to_string(), detail };
        if Digest::of(&bytes) != meta.weights_digest {
            return Err(corrupt("the bytes do not match the recorded digest".into()));
        }
        let expected = usize::try_from(meta.num_params).map_err(|e| corrupt(e.to_string()))?;
        weights_from_bytes(&bytes, Some(expected)).map_err(|e| corrupt(e.to_string()))
    }

    /// Every stored version's metadata, oldest first.
    pub fn versions(&self) -> Result<Vec<ModelMeta>, StoreError> {
        self.models
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("models", hex::encode(&k), &v)
            })
            .collect()
    }
}
