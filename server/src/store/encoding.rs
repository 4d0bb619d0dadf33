//! How the store lays out its keys and values in bytes: big-endian version and round keys, the weights' pieces,
//! the `meta` tree's keys, records through `fedge_shared::codec` (round records through [`crate::round_format`]),
//! and the helpers that turn sled's transaction errors into [`StoreError`]s.
//!
//! Pure functions and constants: this module must never open a tree or hold state, and never panic on the bytes it
//! is given.

use super::error::StoreError;
use crate::coordinator::RoundRecord;
use fedge_shared::codec;
use serde::Serialize;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};

/// Largest record (model metadata, round record, agent record) the store decodes.
pub(super) const RECORD_LIMIT: usize = 64 * 1024 * 1024;

pub(super) const META_LATEST: &[u8] = b"latest_version";
pub(super) const META_NEXT_ROUND: &[u8] = b"next_round";
pub(super) const META_STRATEGY: &[u8] = b"strategy_state";
pub(super) const META_CONFIG: &[u8] = b"server_config";
pub(super) const META_RUN: &[u8] = b"run";

pub(super) fn key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Weights are stored in pieces of this many bytes, under [`chunk_key`]. With whole models as single values, sled
/// 0.34 kept removed versions' values in memory for many commits (a 4 MB model: the process grew by up to 15
/// models before dropping them); with 64 KiB pieces its memory stays flat (BENCHMARKS.md, server memory).
pub(super) const WEIGHT_CHUNK: usize = 64 * 1024;

/// The key of piece `i` of `version`'s weights: the version, then the piece index, both big-endian, so that one
/// version's pieces are contiguous and in order. (Stores written before the pieces hold a version's weights as one
/// value under [`key`]; they are still read, and pruned.)
pub(super) fn chunk_key(version: u64, i: usize) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&version.to_be_bytes());
    k[8..].copy_from_slice(&(i as u32).to_be_bytes());
    k
}

/// How many pieces hold a model of `num_params` parameters.
pub(super) fn chunk_count(num_params: u64) -> usize {
    usize::try_from(num_params).unwrap_or(usize::MAX).saturating_mul(4).div_ceil(WEIGHT_CHUNK)
}

pub(super) fn read_u64(tree: &'static str, k: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(k).into_owned(),
        detail: format!("{} bytes where a u64 belongs", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    tree: &'static str,
    k: impl ToString,
    bytes: &[u8],
) -> Result<T, StoreError> {
    codec::decode(bytes, RECORD_LIMIT).map_err(|e| StoreError::Corrupt {
        tree,
        key: k.to_string(),
        detail: e.to_string(),
    })
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    codec::encode(value).map_err(|e| StoreError::Encode(e.to_string()))
}

/// A round record (tagged layout; see [`crate::round_format`]).
pub(super) fn encode_round(record: &RoundRecord) -> Result<Vec<u8>, StoreError> {
    crate::round_format::encode(record).map_err(|e| StoreError::Encode(e.to_string()))
}

pub(super) fn decode_round(k: impl ToString, bytes: &[u8]) -> Result<RoundRecord, StoreError> {
    crate::round_format::decode(bytes, RECORD_LIMIT).map_err(|e| StoreError::Corrupt {
        tree: "rounds",
        key: k.to_string(),
        detail: e.to_string(),
    })
}

pub(super) fn abort<T>(e: StoreError) -> Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(e))
}

pub(super) fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

pub(super) fn check_finite(weights: &[f32]) -> Result<(), StoreError> {
    match weights.iter().position(|w| !w.is_finite()) {
        Some(i) => Err(StoreError::NonFinite(i)),
        None => Ok(()),
    }
}

/// Writes `version`'s weight bytes in pieces of [`WEIGHT_CHUNK`] inside a transaction.
pub(super) fn tx_put_weights(
    wts: &TransactionalTree,
    version: u64,
    bytes: &[u8],
) -> Result<(), UnabortableTransactionError> {
    for (i, piece) in bytes.chunks(WEIGHT_CHUNK).enumerate() {
        wts.insert(&chunk_key(version, i), piece)?;
    }
    Ok(())
}

/// Removes `version`'s weights (a model of `num_params` parameters) inside a transaction: its pieces, and the one
/// value a store written before the pieces holds.
pub(super) fn tx_remove_weights(
    wts: &TransactionalTree,
    version: u64,
    num_params: u64,
) -> Result<(), UnabortableTransactionError> {
    wts.remove(&key(version))?;
    for i in 0..chunk_count(num_params) {
        wts.remove(&chunk_key(version, i))?;
    }
    Ok(())
}

/// Reads a u64 from `meta` inside a transaction.
pub(super) fn tx_meta_u64(
    meta: &TransactionalTree,
    k: &[u8],
) -> Result<Option<u64>, ConflictableTransactionError<StoreError>> {
    match meta.get(k)? {
        None => Ok(None),
        Some(v) => match read_u64("meta", k, &v) {
            Ok(n) => Ok(Some(n)),
            Err(e) => abort(e),
        },
    }
}
