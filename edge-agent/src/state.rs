//! What the agent keeps between connections and restarts: the federation's ONNX graph and the newest global
//! weights it received, on disk in its state directory (written atomically) and in memory.
//!
//! This module never trusts what it reads back: a corrupt file is an error naming it, and the agent then
//! simply downloads the model again.

use anyhow::Context;
use fedge_shared::model::{Digest, weights_from_bytes, weights_to_bytes};
use fedge_shared::tls::write_atomic;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A global model version's weights.
#[derive(Debug, Clone)]
pub struct HeldWeights {
    pub version: u64,
    pub digest: Digest,
    pub weights: Arc<Vec<f32>>,
}

/// The graph and weights the agent holds.
#[derive(Debug, Default)]
pub struct ModelState {
    dir: Option<PathBuf>,
    pub graph: Option<(Digest, Arc<Vec<u8>>)>,
    pub weights: Option<HeldWeights>,
}

const GRAPH_FILE: &str = "graph.onnx";
const WEIGHTS_FILE: &str = "weights.f32";
const VERSION_FILE: &str = "weights.version";

impl ModelState {
    /// State kept in memory only.
    pub fn in_memory() -> Self {
        ModelState::default()
    }

    /// Opens (creating) a state directory and loads what it holds; unreadable files are logged and ignored.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating state directory {}", dir.display()))?;
        let mut state = ModelState { dir: Some(dir.to_path_buf()), ..Default::default() };
        match std::fs::read(dir.join(GRAPH_FILE)) {
            Ok(bytes) => state.graph = Some((Digest::of(&bytes), Arc::new(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %dir.join(GRAPH_FILE).display(), error = %e, "ignoring unreadable graph"),
        }
        match Self::load_weights(dir) {
            Ok(w) => state.weights = w,
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "ignoring unreadable weights"),
        }
        Ok(state)
    }

    fn load_weights(dir: &Path) -> anyhow::Result<Option<HeldWeights>> {
        let vpath = dir.join(VERSION_FILE);
        let version = match std::fs::read_to_string(&vpath) {
            Ok(s) => s.trim().parse::<u64>().with_context(|| format!("{}: not a version number", vpath.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", vpath.display())),
        };
        let wpath = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&wpath).with_context(|| format!("reading {}", wpath.display()))?;
        let weights = weights_from_bytes(&bytes, None).with_context(|| format!("{}", wpath.display()))?;
        Ok(Some(HeldWeights { version, digest: Digest::of(&bytes), weights: Arc::new(weights) }))
    }

    /// Keeps a new graph (and on disk, if the state has a directory).
    pub fn set_graph(&mut self, bytes: Vec<u8>) -> anyhow::Result<Digest> {
        let digest = Digest::of(&bytes);
        if let Some(dir) = &self.dir {
            write_atomic(&dir.join(GRAPH_FILE), &bytes, 0o644)?;
        }
        self.graph = Some((digest, Arc::new(bytes)));
        Ok(digest)
    }

    /// Keeps a new weights version whose raw bytes were already checked against `digest`.
    pub fn set_weights(&mut self, version: u64, digest: Digest, raw: &[u8], weights: Vec<f32>) -> anyhow::Result<()> {
        if let Some(dir) = &self.dir {
            write_atomic(&dir.join(WEIGHTS_FILE), raw, 0o644)?;
            write_atomic(&dir.join(VERSION_FILE), version.to_string().as_bytes(), 0o644)?;
        }
        self.weights = Some(HeldWeights { version, digest, weights: Arc::new(weights) });
        Ok(())
    }

    pub fn graph_digest(&self) -> Option<Digest> {
        self.graph.as_ref().map(|(d, _)| *d)
    }

    pub fn version(&self) -> Option<u64> {
        self.weights.as_ref().map(|w| w.version)
    }

    /// Raw bytes of the held weights (for tests and export).
    pub fn weights_bytes(&self) -> Option<Vec<u8>> {
        self.weights.as_ref().map(|w| weights_to_bytes(&w.weights))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_directory_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ModelState::open(dir.path()).unwrap();
        let g = s.set_graph(b"graph bytes".to_vec()).unwrap();
        let raw = weights_to_bytes(&[1.0, 2.0]);
        s.set_weights(4, Digest::of(&raw), &raw, vec![1.0, 2.0]).unwrap();
        let s2 = ModelState::open(dir.path()).unwrap();
        assert_eq!(s2.graph_digest(), Some(g));
        assert_eq!(s2.version(), Some(4));
        assert_eq!(*s2.weights.unwrap().weights, vec![1.0, 2.0]);
    }

    #[test]
    fn a_corrupt_weights_file_is_ignored_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(VERSION_FILE), "7").unwrap();
        std::fs::write(dir.path().join(WEIGHTS_FILE), [1u8, 2, 3]).unwrap();
        let s = ModelState::open(dir.path()).unwrap();
        assert_eq!(s.version(), None);
    }
}
