//! The server's durable state in sled: global models, ONNX graphs, round history, agents and metadata.
//!
//! Trees:
//! - `models`: version (u64 big-endian) → [`ModelMeta`] (digests, parent, round, metrics, creation time);
//! - `weights`: version → the weights as raw little-endian `f32` bytes (kept apart from `models` so listing
//!   versions never reads megabytes of weights). Only the newest `keep_weights` versions keep their weights
//!   (see [`Store::keeping_weights`]); older versions keep their metadata, so the history stays complete;
//! - `graphs`: SHA-256 digest → ONNX bytes;
//! - `rounds`: round id → [`RoundRecord`];
//! - `agents`: name → [`AgentRecord`];
//! - `meta`: latest version, next round id (reserved when a round starts), strategy state, server configuration,
//!   the run in force ([`crate::run::Run`]).
//!
//! Records are encoded with `fedge_shared::codec` only (round records behind a layout tag: [`crate::round_format`]). A round's commit writes the model, its weights, the round
//! record and the metadata in ONE sled transaction and then flushes, so it is durable before the coordinator hears
//! `Committed`; a crash at any instant leaves the newest committed model readable.
//!
//! This module must never panic on what it reads back: a corrupt record, a digest that does not match, a full disk
//! or any I/O error is a [`StoreError`].

use crate::coordinator::{ResumeState, RoundRecord};
use fedge_shared::codec;
use fedge_shared::model::{Digest, weights_from_bytes, weights_to_bytes};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Largest record (model metadata, round record, agent record) the store decodes.
const RECORD_LIMIT: usize = 64 * 1024 * 1024;

/// sled's page cache.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

const META_LATEST: &[u8] = b"latest_version";
const META_NEXT_ROUND: &[u8] = b"next_round";
const META_STRATEGY: &[u8] = b"strategy_state";
const META_CONFIG: &[u8] = b"server_config";
const META_RUN: &[u8] = b"run";

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error (disk full, I/O or corruption in sled): {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt {tree} record {key}: {detail}")]
    Corrupt { tree: &'static str, key: String, detail: String },
    #[error("the store holds no model yet")]
    NoModel,
    #[error("the store already holds a model; version 0 is created only once")]
    AlreadyInitialised,
    #[error("no graph with digest {0}")]
    UnknownGraph(String),
    #[error("no model version {0}")]
    UnknownVersion(u64),
    #[error("the weights hold {got} parameters, the model has {expected}")]
    WrongLength { expected: u64, got: u64 },
    #[error("the weights contain a non-finite value at index {0}")]
    NonFinite(usize),
    #[error("round {0} is already recorded")]
    RoundExists(u64),
    #[error("cannot encode a record: {0}")]
    Encode(String),
    #[error(
        "the database refuses writes since an earlier write failed ({0}); restart the server with room on its disk"
    )]
    WriteFailed(String),
    #[error(
        "the weights of model version {version} were pruned: the store keeps only the newest {keep} versions' weights (keep_weights in server.toml)"
    )]
    Pruned { version: u64, keep: u64 },
}

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

/// What the server knows about an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub name: String,
    /// Hex SHA-256 of the certificate last seen (`None` if the agent was revoked before it ever connected).
    pub fingerprint: Option<String>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub revoked: bool,
}

/// The server's sled database.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    models: Tree,
    weights: Tree,
    graphs: Tree,
    rounds: Tree,
    agents: Tree,
    meta: Tree,
    /// Keep the weights of this many newest versions (0: all).
    keep_weights: u64,
    /// The first write error (a full disk, an I/O error): after one, sled refuses every later write until the
    /// database is reopened, and what it holds in memory may be ahead of the disk.
    write_error: Arc<Mutex<Option<String>>>,
}

fn key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Weights are stored in pieces of this many bytes, under [`chunk_key`]. With whole models as single values, sled
/// 0.34 kept removed versions' values in memory for many commits (a 4 MB model: the process grew by up to 15
/// models before dropping them); with 64 KiB pieces its memory stays flat (BENCHMARKS.md, server memory).
const WEIGHT_CHUNK: usize = 64 * 1024;

/// The key of piece `i` of `version`'s weights: the version, then the piece index, both big-endian, so that one
/// version's pieces are contiguous and in order. (Stores written before the pieces hold a version's weights as one
/// value under [`key`]; they are still read, and pruned.)
fn chunk_key(version: u64, i: usize) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&version.to_be_bytes());
    k[8..].copy_from_slice(&(i as u32).to_be_bytes());
    k
}

/// How many pieces hold a model of `num_params` parameters.
fn chunk_count(num_params: u64) -> usize {
    usize::try_from(num_params).unwrap_or(usize::MAX).saturating_mul(4).div_ceil(WEIGHT_CHUNK)
}

fn read_u64(tree: &'static str, k: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(k).into_owned(),
        detail: format!("{} bytes where a u64 belongs", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

fn decode<T: serde::de::DeserializeOwned>(tree: &'static str, k: impl ToString, bytes: &[u8]) -> Result<T, StoreError> {
    codec::decode(bytes, RECORD_LIMIT).map_err(|e| StoreError::Corrupt {
        tree,
        key: k.to_string(),
        detail: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    codec::encode(value).map_err(|e| StoreError::Encode(e.to_string()))
}

/// A round record (tagged layout; see [`crate::round_format`]).
fn encode_round(record: &RoundRecord) -> Result<Vec<u8>, StoreError> {
    crate::round_format::encode(record).map_err(|e| StoreError::Encode(e.to_string()))
}

fn decode_round(k: impl ToString, bytes: &[u8]) -> Result<RoundRecord, StoreError> {
    crate::round_format::decode(bytes, RECORD_LIMIT).map_err(|e| StoreError::Corrupt {
        tree: "rounds",
        key: k.to_string(),
        detail: e.to_string(),
    })
}

fn abort<T>(e: StoreError) -> Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

fn check_finite(weights: &[f32]) -> Result<(), StoreError> {
    match weights.iter().position(|w| !w.is_finite()) {
        Some(i) => Err(StoreError::NonFinite(i)),
        None => Ok(()),
    }
}

/// Reads a u64 from `meta` inside a transaction.
fn tx_meta_u64(meta: &TransactionalTree, k: &[u8]) -> Result<Option<u64>, ConflictableTransactionError<StoreError>> {
    match meta.get(k)? {
        None => Ok(None),
        Some(v) => match read_u64("meta", k, &v) {
            Ok(n) => Ok(Some(n)),
            Err(e) => abort(e),
        },
    }
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        // sled's page cache defaults to 1 GiB; weights are read rarely (at start and per export), so keep it small.
        let db = sled::Config::new().path(path.as_ref()).cache_capacity(CACHE_BYTES).open()?;
        Ok(Store {
            models: db.open_tree("models")?,
            weights: db.open_tree("weights")?,
            graphs: db.open_tree("graphs")?,
            rounds: db.open_tree("rounds")?,
            agents: db.open_tree("agents")?,
            meta: db.open_tree("meta")?,
            keep_weights: 0,
            write_error: Arc::new(Mutex::new(None)),
            db,
        })
    }

    /// Keeps the weights of only the newest `keep` versions (0: keep every version's weights). Each commit then
    /// removes, in its own transaction, the weights that fall out of the window, and [`Store::prune_weights`]
    /// removes older leftovers (e.g. after the window was made smaller).
    ///
    /// Why: sled 0.34 holds every stored value in memory whatever its cache capacity, so a store that kept every
    /// version's weights would make the server grow by one model per round (RELIABILITY.md, Soak).
    pub fn keeping_weights(mut self, keep: u64) -> Store {
        self.keep_weights = keep;
        self
    }

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

    /// Forces everything written so far to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.writable()?;
        self.db.flush().map_err(|e| self.failed_write(e.into()))?;
        Ok(())
    }

    /// Remembers the first write error (see [`Store::write_error`]) and passes it on.
    fn failed_write(&self, e: StoreError) -> StoreError {
        if matches!(e, StoreError::Sled(_))
            && let Ok(mut first) = self.write_error.lock()
            && first.is_none()
        {
            *first = Some(e.to_string());
        }
        e
    }

    /// The first error this store met while writing, if any. Once there is one, nothing more can be committed
    /// until the server restarts (and sled recovers what was durable).
    pub fn write_error(&self) -> Option<String> {
        self.write_error.lock().ok().and_then(|e| e.clone())
    }

    /// Every write starts here: after a failed write sled's later writes and flushes can wait for ever on the log
    /// that could not be written, so they are refused at once instead.
    fn writable(&self) -> Result<(), StoreError> {
        match self.write_error() {
            Some(e) => Err(StoreError::WriteFailed(e)),
            None => Ok(()),
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
        let meta = ModelMeta {
            version: 0,
            graph_digest,
            weights_digest: Digest::of(&bytes),
            num_params: weights.len() as u64,
            parent: None,
            round: None,
            metrics: None,
            created_ms,
        };
        let meta_bytes = encode(&meta)?;
        (&self.models, &self.weights, &self.meta)
            .transaction(|(models, wts, meta_tree)| {
                if meta_tree.get(META_LATEST)?.is_some() {
                    return abort(StoreError::AlreadyInitialised);
                }
                models.insert(&key(0), meta_bytes.as_slice())?;
                for (i, piece) in bytes.chunks(WEIGHT_CHUNK).enumerate() {
                    wts.insert(&chunk_key(0, i), piece)?;
                }
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
                for (i, piece) in bytes.chunks(WEIGHT_CHUNK).enumerate() {
                    wts.insert(&chunk_key(version, i), piece)?;
                }
                // The version that falls out of the retention window loses its weights in the same transaction (a
                // version has as many parameters as its children).
                if keep > 0 && version >= keep {
                    let old = version - keep;
                    wts.remove(&key(old))?;
                    for i in 0..chunk_count(parent.num_params) {
                        wts.remove(&chunk_key(old, i))?;
                    }
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

    /// Stores the server's configuration text (e.g. server.toml) for reference.
    pub fn put_server_config(&self, text: &str) -> Result<(), StoreError> {
        self.writable()?;
        self.meta.insert(META_CONFIG, text.as_bytes())?;
        self.flush()
    }

    /// Keeps the run in force, so that a restart finishes it.
    pub fn put_run(&self, run: &crate::run::Run) -> Result<(), StoreError> {
        self.writable()?;
        let bytes = encode(run)?;
        self.meta.insert(META_RUN, bytes).map_err(|e| self.failed_write(e.into()))?;
        self.flush()
    }

    /// The run in force when the server last stopped, if any.
    pub fn run(&self) -> Result<Option<crate::run::Run>, StoreError> {
        match self.meta.get(META_RUN)? {
            None => Ok(None),
            Some(v) => decode("meta", "run", &v).map(Some),
        }
    }

    /// The stored configuration text.
    pub fn server_config(&self) -> Result<Option<String>, StoreError> {
        match self.meta.get(META_CONFIG)? {
            None => Ok(None),
            Some(v) => String::from_utf8(v.to_vec()).map(Some).map_err(|e| StoreError::Corrupt {
                tree: "meta",
                key: "server_config".into(),
                detail: e.to_string(),
            }),
        }
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

    /// Records that `name` connected with the certificate whose fingerprint is `fingerprint` at `now_ms`.
    /// A revoked agent stays revoked.
    pub fn upsert_agent_seen(&self, name: &str, fingerprint: &str, now_ms: u64) -> Result<AgentRecord, StoreError> {
        self.update_agent(name, now_ms, |rec| {
            rec.fingerprint = Some(fingerprint.to_string());
            rec.last_seen_ms = now_ms;
        })
    }

    /// Revokes `name` (creating its record if it never connected).
    pub fn revoke_agent(&self, name: &str, now_ms: u64) -> Result<AgentRecord, StoreError> {
        self.update_agent(name, now_ms, |rec| rec.revoked = true)
    }

    fn update_agent(
        &self,
        name: &str,
        now_ms: u64,
        change: impl Fn(&mut AgentRecord),
    ) -> Result<AgentRecord, StoreError> {
        self.writable()?;
        let record = self
            .agents
            .transaction(|agents| {
                let mut rec = match agents.get(name.as_bytes())? {
                    Some(v) => match decode::<AgentRecord>("agents", name, &v) {
                        Ok(r) => r,
                        Err(e) => return abort(e),
                    },
                    None => AgentRecord {
                        name: name.to_string(),
                        fingerprint: None,
                        first_seen_ms: now_ms,
                        last_seen_ms: now_ms,
                        revoked: false,
                    },
                };
                change(&mut rec);
                match encode(&rec) {
                    Ok(bytes) => agents.insert(name.as_bytes(), bytes)?,
                    Err(e) => return abort(e),
                };
                Ok(rec)
            })
            .map_err(|e| self.failed_write(tx_error(e)))?;
        self.flush()?;
        Ok(record)
    }

    /// Whether `name` is revoked (unknown agents are not).
    pub fn is_revoked(&self, name: &str) -> Result<bool, StoreError> {
        match self.agents.get(name.as_bytes())? {
            None => Ok(false),
            Some(v) => Ok(decode::<AgentRecord>("agents", name, &v)?.revoked),
        }
    }

    /// Every agent the server has seen or revoked, by name.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.agents
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("agents", String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }
}
