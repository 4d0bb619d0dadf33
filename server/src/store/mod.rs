//! The server's durable state in sled: global models, ONNX graphs, round history, agents and metadata.
//!
//! Trees:
//! - `models`: version (u64 big-endian) → [`ModelMeta`] (digests, parent, round, metrics, creation time);
//! - `weights`: version → the weights as raw little-endian `f32` bytes (kept apart from `models` so listing
//!   versions never reads megabytes of weights). Only the newest `keep_weights` versions keep their weights
//!   (see [`Store::keeping_weights`]); older versions keep their metadata, so the history stays complete;
//! - `graphs`: SHA-256 digest → ONNX bytes;
//! - `rounds`: round id → [`RoundRecord`](crate::coordinator::RoundRecord);
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
//!
//! The module's files, one concept each: `error` (what can go wrong), `db` (the handle: opening, flushing,
//! refusing writes after a failed one), `encoding` (keys, pieces and record bytes), `models` (versions, their
//! weights and graphs), `rounds` (commits, aborted rounds, round ids, what the coordinator resumes from),
//! `installed` (an aggregator's copies of its root's versions),
//! `agents` (who connected, who is revoked) and `meta` (the operator's settings and the run in force). This
//! file only names them: it defines nothing, so that none of them imports it.

mod agents;
mod db;
mod encoding;
mod error;
mod installed;
mod meta;
mod models;
mod rounds;

pub use agents::AgentRecord;
pub use db::Store;
pub use error::StoreError;
pub use models::ModelMeta;
