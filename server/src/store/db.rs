//! The store's handle: opens the sled database and its trees, flushes it, and remembers the first failed write so
//! that every later write is refused at once (after one, sled's writes and flushes can wait for ever).
//!
//! What each tree holds is the business of the sibling modules ([`super::models`], [`super::rounds`],
//! [`super::agents`], [`super::meta`]); this one must never read or write a record itself, and never panic.

use super::error::StoreError;
use sled::Tree;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// sled's page cache.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The server's sled database.
#[derive(Debug, Clone)]
pub struct Store {
    pub(super) db: sled::Db,
    pub(super) models: Tree,
    pub(super) weights: Tree,
    pub(super) graphs: Tree,
    pub(super) rounds: Tree,
    pub(super) agents: Tree,
    pub(super) meta: Tree,
    /// Keep the weights of this many newest versions (0: all).
    pub(super) keep_weights: u64,
    /// The first write error (a full disk, an I/O error): after one, sled refuses every later write until the
    /// database is reopened, and what it holds in memory may be ahead of the disk.
    pub(super) write_error: Arc<Mutex<Option<String>>>,
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

    /// Forces everything written so far to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.writable()?;
        self.db.flush().map_err(|e| self.failed_write(e.into()))?;
        Ok(())
    }

    /// Remembers the first write error (see [`Store::write_error`]) and passes it on.
    pub(super) fn failed_write(&self, e: StoreError) -> StoreError {
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

    /// Makes this store behave as after a failed disk write: every later write is refused (the shell's tests).
    #[cfg(test)]
    pub(crate) fn fail_writes(&self, why: &str) {
        if let Ok(mut first) = self.write_error.lock() {
            *first = Some(why.to_string());
        }
    }

    /// Every write starts here: after a failed write sled's later writes and flushes can wait for ever on the log
    /// that could not be written, so they are refused at once instead.
    pub(super) fn writable(&self) -> Result<(), StoreError> {
        match self.write_error() {
            Some(e) => Err(StoreError::WriteFailed(e)),
            None => Ok(()),
        }
    }
}
