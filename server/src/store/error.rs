//! The store's errors: every way reading or writing the database can fail.
//!
//! Types only. A corrupt record, a digest that does not match, a full disk or an I/O error all end up here; the
//! store must never panic instead of returning one of these.

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
    #[error("version {version} is not newer than the newest held, {latest}")]
    NotNewer { version: u64, latest: u64 },
}
