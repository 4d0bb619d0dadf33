//! The round history in the store: a completed round's commit (model, weights, record, next round id and strategy
//! state in ONE transaction, then a flush), aborted rounds, round ids reserved when a round starts, and what the
//! coordinator resumes from.
//!
//! A commit is durable before it returns, and on any error it changes nothing. This module must never hand out a
//! round id twice, and never panic on a corrupt record.

use super::db::Store;
use super::encoding::{
    META_LATEST, META_NEXT_ROUND, META_STRATEGY, abort, check_finite, decode, decode_round, encode, encode_round, key,
    read_u64, tx_error, tx_meta_u64, tx_put_weights, tx_remove_weights,
};
use super::error::StoreError;
use super::models::ModelMeta;
use crate::coordinator::{ResumeState, RoundRecord};
use fedge_shared::model::{Digest, weights_to_bytes};
use sled::Transactional;

impl Store {
    /// Commits a completed round: the new model (version latest + 1, parent latest), its weights, the round record
    /// (with `new_version` filled in), the next round id and the strategy state, in ONE transaction, then flushes.
    /// Returns the new version. On any error nothing is changed.
    pub fn commit_round(
        &self,
        record: &RoundRecord,
        new_weights: &[f32],
        strategy_state: &[u8],
        created_ms: u64,
    ) -> Result<u64, StoreError> {
        self.writable()?;
        check_finite(new_weights)?;
        let bytes = weights_to_bytes(new_weights);
        let weights_digest = Digest::of(&bytes);
        let keep = self.keep_weights;
        let version = (&self.models, &self.weights, &self.rounds, &self.meta)
            .transaction(|(models, wts, rounds, meta)| {
                let Some(latest) = tx_meta_u64(meta, META_LATEST)? else { return abort(StoreError::NoModel) };
                let Some(parent_bytes) = models.get(key(latest))? else {
                    return abort(StoreError::UnknownVersion(latest));
                };
                let parent: ModelMeta = match decode("models", latest, &parent_bytes) {
                    Ok(p) => p,
                    Err(e) => return abort(e),
                };
                if parent.num_params != new_weights.len() as u64 {
                    return abort(StoreError::WrongLength {
                        expected: parent.num_params,
                        got: new_weights.len() as u64,
                    });
                }
                let version = latest + 1;
                let model = ModelMeta {
                    version,
                    graph_digest: parent.graph_digest,
                    weights_digest,
                    num_params: parent.num_params,
                    parent: Some(latest),
                    round: Some(record.round),
                    metrics: Some(record.metrics.clone()),
                    created_ms,
                };
                let mut record = record.clone();
                record.new_version = Some(version);
                let (model_bytes, record_bytes) = match (encode(&model), encode_round(&record)) {
                    (Ok(m), Ok(r)) => (m, r),
                    (Err(e), _) | (_, Err(e)) => return abort(e),
                };
                models.insert(&key(version), model_bytes)?;
                tx_put_weights(wts, version, &bytes)?;
                // The version that falls out of the retention window loses its weights in the same transaction (a
                // version has as many parameters as its children).
                if keep > 0 && version >= keep {
                    tx_remove_weights(wts, version - keep, parent.num_params)?;
                }
                // Written after the model on purpose: a reused round id aborts a transaction that already wrote.
                if rounds.insert(&key(record.round), record_bytes)?.is_some() {
                    return abort(StoreError::RoundExists(record.round));
                }
                let next = tx_meta_u64(meta, META_NEXT_ROUND)?.unwrap_or(0).max(record.round.saturating_add(1));
                meta.insert(META_NEXT_ROUND, &key(next))?;
                meta.insert(META_LATEST, &key(version))?;
                meta.insert(META_STRATEGY, strategy_state)?;
                Ok(version)
            })
            .map_err(|e| self.failed_write(tx_error(e)))?;
        self.flush()?;
        Ok(version)
    }

    /// Records a round that ended without a model (and moves the next round id past it).
    pub fn record_aborted(&self, record: &RoundRecord) -> Result<(), StoreError> {
        self.writable()?;
        let bytes = encode_round(record)?;
        (&self.rounds, &self.meta)
            .transaction(|(rounds, meta)| {
                if rounds.insert(&key(record.round), bytes.as_slice())?.is_some() {
                    return abort(StoreError::RoundExists(record.round));
                }
                let next = tx_meta_u64(meta, META_NEXT_ROUND)?.unwrap_or(0).max(record.round.saturating_add(1));
                meta.insert(META_NEXT_ROUND, &key(next))?;
                Ok(())
            })
            .map_err(|e| self.failed_write(tx_error(e)))?;
        self.flush()
    }

    /// Notes that `round` has started, so its id is never handed out again even if the server crashes mid-round.
    pub fn reserve_round(&self, round: u64) -> Result<(), StoreError> {
        self.writable()?;
        self.meta
            .transaction(|meta| {
                let next = tx_meta_u64(meta, META_NEXT_ROUND)?.unwrap_or(0).max(round.saturating_add(1));
                meta.insert(META_NEXT_ROUND, &key(next))?;
                Ok(())
            })
            .map_err(|e| self.failed_write(tx_error(e)))?;
        self.flush()
    }

    /// The next unused round id (1 for a new store).
    pub fn next_round(&self) -> Result<u64, StoreError> {
        match self.meta.get(META_NEXT_ROUND)? {
            None => Ok(1),
            Some(v) => read_u64("meta", META_NEXT_ROUND, &v),
        }
    }

    /// Every round record, oldest first.
    pub fn rounds(&self) -> Result<Vec<RoundRecord>, StoreError> {
        self.rounds
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode_round(hex::encode(&k), &v)
            })
            .collect()
    }

    /// The record of round `id`.
    pub fn round(&self, id: u64) -> Result<Option<RoundRecord>, StoreError> {
        match self.rounds.get(key(id))? {
            None => Ok(None),
            Some(v) => decode_round(id, &v).map(Some),
        }
    }

    /// The persisted strategy state (empty when none).
    pub fn strategy_state(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self.meta.get(META_STRATEGY)?.map(|v| v.to_vec()).unwrap_or_default())
    }

    /// What the coordinator resumes from: newest model and weights, next round id, strategy state. `None` for an
    /// empty store.
    pub fn resume_state(&self) -> Result<Option<ResumeState>, StoreError> {
        let Some(latest) = self.latest()? else { return Ok(None) };
        Ok(Some(ResumeState {
            model_version: latest.version,
            weights: self.weights(latest.version)?,
            next_round: self.next_round()?,
            strategy_state: self.strategy_state()?,
        }))
    }
}
