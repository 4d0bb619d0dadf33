//! What the agent keeps between connections and restarts: the federation's ONNX graph and the last few global
//! weight versions it received, on disk in its state directory (written atomically) and in memory (the newest).
//!
//! Layout of the state directory: `graph.onnx`, `weights/<version>.f32` (raw little-endian f32, the newest
//! `keep_versions` versions, so that inference can be pinned to or rolled back to an older one),
//! `weights.version` (the newest version held) and `round.trained` (the id of the last round this agent trained
//! for: a plan for that id again, from a server that lost track of its round ids, is refused). A directory
//! written before versions were kept (`weights.f32`) is still read.
//!
//! This module never trusts what it reads back: a corrupt file is an error naming it, and the agent then
//! simply downloads the model again.

use anyhow::{Context, bail};
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

/// A model version as published to inference: the graph and the weights of one global version.
#[derive(Debug, Clone)]
pub struct PublishedModel {
    pub version: u64,
    pub graph: Arc<Vec<u8>>,
    pub weights: Arc<Vec<f32>>,
}

/// The graph and weights the agent holds.
#[derive(Debug)]
pub struct ModelState {
    dir: Option<PathBuf>,
    keep_versions: usize,
    pub graph: Option<(Digest, Arc<Vec<u8>>)>,
    pub weights: Option<HeldWeights>,
    /// The last round this agent trained for, and its plan's seed (unknown in notes written before seeds were).
    last_trained: Option<Trained>,
}

/// A round this agent trained for: its id and its plan's seed. The seed names the federation's round across
/// servers: the aggregators of one root give their agents the root round's own seed, under round ids of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trained {
    round: u64,
    seed: Option<u64>,
}

impl Default for ModelState {
    fn default() -> Self {
        ModelState { dir: None, keep_versions: DEFAULT_KEEP_VERSIONS, graph: None, weights: None, last_trained: None }
    }
}

/// Why this agent will not train for a round.
#[derive(Debug, thiserror::Error)]
pub enum RoundRefusal {
    #[error("round {0} was already trained by this agent; a round id is never trained twice")]
    AlreadyTrained(u64),
    #[error(
        "round {round}'s plan has the seed of round {trained}, which this agent trained for: the same round of the \
         federation through another aggregator; an agent's update counts once"
    )]
    SameRoundElsewhere { round: u64, trained: u64 },
    #[error("cannot note round {round} as trained in {path}: {error}")]
    NotRecorded { round: u64, path: String, error: String },
    #[error("round {round}'s plan names {what} {planned}, but this agent holds {held}")]
    ModelMismatch { round: u64, what: &'static str, planned: String, held: String },
}

/// How many weight versions are kept on disk unless configured otherwise.
pub const DEFAULT_KEEP_VERSIONS: usize = 3;

const GRAPH_FILE: &str = "graph.onnx";
const LEGACY_WEIGHTS_FILE: &str = "weights.f32";
const VERSIONS_DIR: &str = "weights";
const VERSION_FILE: &str = "weights.version";
const TRAINED_FILE: &str = "round.trained";

fn version_path(dir: &Path, version: u64) -> PathBuf {
    dir.join(VERSIONS_DIR).join(format!("{version}.f32"))
}

impl ModelState {
    /// State kept in memory only.
    pub fn in_memory() -> Self {
        ModelState::default()
    }

    /// Opens (creating) a state directory and loads what it holds; unreadable files are logged and ignored.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join(VERSIONS_DIR))
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        let mut state = ModelState { dir: Some(dir.to_path_buf()), ..Default::default() };
        match std::fs::read(dir.join(GRAPH_FILE)) {
            Ok(bytes) => state.graph = Some((Digest::of(&bytes), Arc::new(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %dir.join(GRAPH_FILE).display(), error = %e, "ignoring unreadable graph"),
        }
        match Self::load_newest(dir) {
            Ok(w) => state.weights = w,
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "ignoring unreadable weights"),
        }
        let trained = dir.join(TRAINED_FILE);
        match std::fs::read_to_string(&trained) {
            // "ROUND SEED", or "ROUND" alone as written before seeds were.
            Ok(text) => {
                let mut parts = text.split_whitespace().map(str::parse::<u64>);
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(Ok(round)), None, None) => state.last_trained = Some(Trained { round, seed: None }),
                    (Some(Ok(round)), Some(Ok(seed)), None) => {
                        state.last_trained = Some(Trained { round, seed: Some(seed) })
                    }
                    _ => tracing::warn!(file = %trained.display(), "ignoring an unreadable trained round"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %trained.display(), error = %e, "ignoring an unreadable trained round id"),
        }
        Ok(state)
    }

    /// The id of the last round this agent trained for (kept across restarts in a state directory).
    pub fn last_trained(&self) -> Option<u64> {
        self.last_trained.map(|t| t.round)
    }

    /// Whether a plan for `round` with the seed `seed` may be taken: refused when this agent already trained for
    /// that round (the same id and seed: a resent plan, or one after a restart), or for the same round of the
    /// federation through another aggregator (the same seed under another id). A round id that another server
    /// used, with another seed, is a round of its own.
    pub fn check_round(&self, round: u64, seed: u64) -> Result<(), RoundRefusal> {
        match self.last_trained {
            Some(t) if t.round == round && t.seed.is_none_or(|s| s == seed) => Err(RoundRefusal::AlreadyTrained(round)),
            Some(t) if t.seed == Some(seed) => Err(RoundRefusal::SameRoundElsewhere { round, trained: t.round }),
            _ => Ok(()),
        }
    }

    /// Notes, durably when there is a state directory, that training for `round` starts from the graph and weights
    /// with the plan's digests. Refused when the held graph or weights are not those the plan names (the digests
    /// are what the agent signed into its secure-aggregation advertisement), when the round was already trained, or
    /// when the note cannot be written (training then would risk a second update for it).
    pub fn begin_round(&mut self, round: u64, seed: u64, graph: &Digest, weights: &Digest) -> Result<(), RoundRefusal> {
        self.check_round(round, seed)?;
        let short = |d: Option<&Digest>| d.map_or_else(|| "nothing".to_string(), |d| d.short());
        let held_graph = self.graph.as_ref().map(|g| &g.0);
        if held_graph != Some(graph) {
            let (planned, held) = (graph.short(), short(held_graph));
            return Err(RoundRefusal::ModelMismatch { round, what: "graph", planned, held });
        }
        let held_weights = self.weights.as_ref().map(|w| &w.digest);
        if held_weights != Some(weights) {
            let (planned, held) = (weights.short(), short(held_weights));
            return Err(RoundRefusal::ModelMismatch { round, what: "weights", planned, held });
        }
        if let Some(dir) = &self.dir {
            let path = dir.join(TRAINED_FILE);
            write_atomic(&path, format!("{round} {seed}").as_bytes(), 0o644).map_err(|e| {
                RoundRefusal::NotRecorded { round, path: path.display().to_string(), error: e.to_string() }
            })?;
        }
        self.last_trained = Some(Trained { round, seed: Some(seed) });
        Ok(())
    }

    /// Keeps at most `n` (at least 1) weight versions on disk; older ones are deleted as new ones arrive.
    pub fn with_keep_versions(mut self, n: usize) -> Self {
        self.keep_versions = n.max(1);
        self
    }

    fn load_newest(dir: &Path) -> anyhow::Result<Option<HeldWeights>> {
        let vpath = dir.join(VERSION_FILE);
        let version = match std::fs::read_to_string(&vpath) {
            Ok(s) => s.trim().parse::<u64>().with_context(|| format!("{}: not a version number", vpath.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", vpath.display())),
        };
        let path = version_path(dir, version);
        let path = if path.exists() { path } else { dir.join(LEGACY_WEIGHTS_FILE) };
        Self::read_weights(&path, version).map(Some)
    }

    fn read_weights(path: &Path, version: u64) -> anyhow::Result<HeldWeights> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let weights = weights_from_bytes(&bytes, None).with_context(|| format!("{}", path.display()))?;
        Ok(HeldWeights { version, digest: Digest::of(&bytes), weights: Arc::new(weights) })
    }

    /// The weights of `version` as kept on disk (the newest is also served from memory).
    pub fn load_version(&self, version: u64) -> anyhow::Result<HeldWeights> {
        if let Some(w) = self.weights.as_ref().filter(|w| w.version == version) {
            return Ok(w.clone());
        }
        let Some(dir) = &self.dir else { bail!("version {version} is not held (this state is kept in memory only)") };
        let path = version_path(dir, version);
        if !path.exists() {
            bail!("version {version} is not kept in {} (kept: {:?})", dir.display(), self.kept_versions());
        }
        Self::read_weights(&path, version)
    }

    /// The versions kept on disk (or the one held in memory), oldest first.
    pub fn kept_versions(&self) -> Vec<u64> {
        let Some(dir) = &self.dir else { return self.version().into_iter().collect() };
        let mut v = kept_on_disk(dir);
        if let Some(newest) = self.version()
            && !v.contains(&newest)
        {
            v.push(newest);
            v.sort_unstable();
        }
        v
    }

    /// The graph and the weights of `version` (the newest when `None`), ready for inference.
    pub fn published(&self, version: Option<u64>) -> anyhow::Result<PublishedModel> {
        let Some((_, graph)) = &self.graph else { bail!("no graph held yet") };
        let w = match version {
            Some(v) => self.load_version(v)?,
            None => self.weights.clone().context("no weights held yet")?,
        };
        Ok(PublishedModel { version: w.version, graph: graph.clone(), weights: w.weights })
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

    /// Keeps a new weights version whose raw bytes were already checked against `digest`; on disk, the oldest
    /// versions beyond `keep_versions` are deleted.
    pub fn set_weights(&mut self, version: u64, digest: Digest, raw: &[u8], weights: Vec<f32>) -> anyhow::Result<()> {
        if let Some(dir) = &self.dir {
            write_atomic(&version_path(dir, version), raw, 0o644)?;
            write_atomic(&dir.join(VERSION_FILE), version.to_string().as_bytes(), 0o644)?;
            let kept = kept_on_disk(dir);
            let excess = kept.len().saturating_sub(self.keep_versions);
            for old in kept.iter().take(excess).filter(|&&v| v != version) {
                if let Err(e) = std::fs::remove_file(version_path(dir, *old)) {
                    tracing::warn!(version = old, error = %e, "could not delete an old weights version");
                }
            }
            let _ = std::fs::remove_file(dir.join(LEGACY_WEIGHTS_FILE));
        }
        self.weights = Some(HeldWeights { version, digest, weights: Arc::new(weights) });
        Ok(())
    }

    pub fn graph_digest(&self) -> Option<Digest> {
        self.graph.as_ref().map(|(d, _)| *d)
    }

    /// The state directory, if the state is kept on disk.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn version(&self) -> Option<u64> {
        self.weights.as_ref().map(|w| w.version)
    }

    /// Raw bytes of the held weights (for tests and export).
    pub fn weights_bytes(&self) -> Option<Vec<u8>> {
        self.weights.as_ref().map(|w| weights_to_bytes(&w.weights))
    }
}

/// Versions with a `weights/<version>.f32` file, oldest first.
fn kept_on_disk(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir.join(VERSIONS_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".f32")?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &mut ModelState, version: u64, w: &[f32]) {
        let raw = weights_to_bytes(w);
        s.set_weights(version, Digest::of(&raw), &raw, w.to_vec()).unwrap();
    }

    #[test]
    fn a_state_directory_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ModelState::open(dir.path()).unwrap();
        let g = s.set_graph(b"graph bytes".to_vec()).unwrap();
        put(&mut s, 4, &[1.0, 2.0]);
        let s2 = ModelState::open(dir.path()).unwrap();
        assert_eq!(s2.graph_digest(), Some(g));
        assert_eq!(s2.version(), Some(4));
        assert_eq!(*s2.weights.unwrap().weights, vec![1.0, 2.0]);
    }

    #[test]
    fn a_round_id_once_trained_is_refused_again_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ModelState::open(dir.path()).unwrap();
        let g = s.set_graph(b"graph bytes".to_vec()).unwrap();
        put(&mut s, 1, &[1.0]);
        let w = s.weights.as_ref().unwrap().digest;
        assert_eq!(s.last_trained(), None);
        s.begin_round(3, 33, &g, &w).unwrap();
        assert!(matches!(s.begin_round(3, 33, &g, &w), Err(RoundRefusal::AlreadyTrained(3))));
        let mut restarted = ModelState::open(dir.path()).unwrap();
        assert_eq!(restarted.last_trained(), Some(3));
        let err = restarted.check_round(3, 33).unwrap_err().to_string();
        assert!(err.contains("round 3 was already trained"), "{err}");
        restarted.begin_round(4, 44, &g, &w).unwrap();
        assert_eq!(ModelState::open(dir.path()).unwrap().last_trained(), Some(4));
        // A note written before seeds were (the round id alone) still refuses that id.
        std::fs::write(dir.path().join(TRAINED_FILE), "4").unwrap();
        assert!(matches!(
            ModelState::open(dir.path()).unwrap().check_round(4, 7),
            Err(RoundRefusal::AlreadyTrained(4))
        ));
        // A garbled note is ignored (and logged), never fatal.
        std::fs::write(dir.path().join(TRAINED_FILE), "four").unwrap();
        assert_eq!(ModelState::open(dir.path()).unwrap().last_trained(), None);
    }

    /// A plan names the graph and weights it must be trained from (the digests an agent signs in a secure round);
    /// an agent that holds another graph or other weights under the same version refuses to train, and notes
    /// nothing.
    #[test]
    fn a_round_is_trained_only_from_the_graph_and_weights_its_plan_names() {
        let mut s = ModelState::in_memory();
        let g = Digest::of(b"graph bytes");
        let w = Digest::of(&weights_to_bytes(&[1.0]));
        let err = s.begin_round(2, 22, &g, &w).unwrap_err();
        assert!(matches!(err, RoundRefusal::ModelMismatch { what: "graph", .. }), "{err}");
        s.set_graph(b"graph bytes".to_vec()).unwrap();
        put(&mut s, 1, &[0.0]);
        let err = s.begin_round(2, 22, &g, &w).unwrap_err();
        assert!(matches!(err, RoundRefusal::ModelMismatch { what: "weights", .. }), "{err}");
        assert!(err.to_string().contains(&w.short()), "{err}");
        assert_eq!(s.last_trained(), None);
        put(&mut s, 1, &[1.0]);
        s.begin_round(2, 22, &g, &w).unwrap();
        assert_eq!(s.last_trained(), Some(2));
    }

    /// Aggregators number their rounds each on its own and give their agents the root round's seed: an agent that
    /// moves between them trains once per round of the federation, whatever the ids.
    #[test]
    fn an_agent_trains_once_per_federation_round_whatever_the_aggregators_round_ids() {
        let mut s = ModelState::in_memory();
        let g = s.set_graph(b"graph bytes".to_vec()).unwrap();
        put(&mut s, 1, &[1.0]);
        let w = s.weights.as_ref().unwrap().digest;
        s.begin_round(5, 0xaa, &g, &w).unwrap();
        // The same federation round at another aggregator, under another id: refused.
        let err = s.check_round(2, 0xaa).unwrap_err();
        assert!(matches!(err, RoundRefusal::SameRoundElsewhere { round: 2, trained: 5 }), "{err}");
        // Another aggregator's round that happens to reuse the id, for another federation round: taken.
        s.check_round(5, 0xbb).unwrap();
        s.begin_round(5, 0xbb, &g, &w).unwrap();
        assert_eq!(s.last_trained(), Some(5));
    }

    #[test]
    fn a_corrupt_weights_file_is_ignored_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(VERSIONS_DIR)).unwrap();
        std::fs::write(dir.path().join(VERSION_FILE), "7").unwrap();
        std::fs::write(version_path(dir.path(), 7), [1u8, 2, 3]).unwrap();
        let s = ModelState::open(dir.path()).unwrap();
        assert_eq!(s.version(), None);
    }

    #[test]
    fn a_directory_from_before_versions_were_kept_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(VERSION_FILE), "5").unwrap();
        std::fs::write(dir.path().join(LEGACY_WEIGHTS_FILE), weights_to_bytes(&[3.0])).unwrap();
        let s = ModelState::open(dir.path()).unwrap();
        assert_eq!(s.version(), Some(5));
        assert_eq!(*s.load_version(5).unwrap().weights, vec![3.0]);
    }

    #[test]
    fn only_the_newest_keep_versions_are_kept_and_each_reads_back_its_own_weights() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ModelState::open(dir.path()).unwrap().with_keep_versions(3);
        for v in 1..=6u64 {
            put(&mut s, v, &[v as f32, -(v as f32)]);
        }
        assert_eq!(s.kept_versions(), vec![4, 5, 6]);
        let reopened = ModelState::open(dir.path()).unwrap();
        for v in 4..=6u64 {
            assert_eq!(*reopened.load_version(v).unwrap().weights, vec![v as f32, -(v as f32)]);
        }
        let err = reopened.load_version(2).unwrap_err().to_string();
        assert!(err.contains("version 2 is not kept") && err.contains("[4, 5, 6]"), "{err}");
    }

    #[test]
    fn a_published_model_needs_a_graph_and_names_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ModelState::open(dir.path()).unwrap();
        put(&mut s, 1, &[1.0]);
        assert!(s.published(None).unwrap_err().to_string().contains("no graph"));
        s.set_graph(b"g".to_vec()).unwrap();
        put(&mut s, 2, &[2.0]);
        assert_eq!(s.published(None).unwrap().version, 2);
        assert_eq!(*s.published(Some(1)).unwrap().weights, vec![1.0]);
    }
}
