//! Errors of the data loaders and of the data-set operations.
//!
//! Every variant that comes from a file carries that file's path, so a user reading the message knows which file
//! to fix. This module must never hold anything but descriptions of problems.

use std::path::PathBuf;

/// Everything that can go wrong loading, splitting or partitioning a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Malformed { path: PathBuf, problem: String },
    #[error("{path}: holds {images} images but {labels} holds {label_count} labels")]
    CountMismatch { path: PathBuf, images: usize, labels: PathBuf, label_count: usize },
    #[error("{dir}: no {name} (nor {name}.gz) in this folder")]
    MissingFile { dir: PathBuf, name: String },
    #[error("{path}, line {line}: {problem}")]
    Csv { path: PathBuf, line: usize, problem: String },
    #[error("invalid data set: {0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn malformed(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        DataError::Malformed { path: path.into(), problem: problem.into() }
    }
}
