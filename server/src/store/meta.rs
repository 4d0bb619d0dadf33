//! What the store keeps for the server itself in the `meta` tree: the operator's configuration text and the run in
//! force ([`crate::run::Run`]), so that a restart keeps both.
//!
//! This module must never touch the models, the rounds or the agents.

use super::db::Store;
use super::encoding::{META_CONFIG, META_RUN, decode, encode};
use super::error::StoreError;

impl Store {
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
}
