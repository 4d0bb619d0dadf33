//! [`ExampleStore`]: the device's own labelled examples — posted to the inference endpoint (`/v1/examples`) or
//! corrections of served predictions (`/v1/feedback`) — kept on the device and trained on in the next rounds.
//!
//! On disk it is one append-only file, `labels/examples.log` in the agent's state directory: an 8-byte magic, then
//! records `[u32 length][u32 crc32][payload]` (little-endian; payload: `u8 source, u32 label, u64 model version,
//! u32 n, n × f32`). [`ExampleStore::add`] appends and `fsync`s before it returns, so an example that was
//! acknowledged survives a SIGKILL or a power cut. The store keeps at most `max_examples`: the oldest are evicted
//! first, which on disk needs no tombstone (the newest `max_examples` records of the log are the live ones); the
//! log is rewritten (atomically: temporary file, fsync, rename) when it holds twice that many.
//!
//! Reading back never trusts the file: a torn record at the end (a write cut by a crash, never acknowledged) is
//! cut off, a record whose checksum fails is skipped with a warning naming the file and offset, and a file that is
//! not a labels log is an error naming it. The examples never leave the device: this module only reads and
//! writes its own file and hands examples to the local trainer ([`ExampleStore::dataset`]).

use anyhow::{Context, bail};
use fedge_shared::data::Dataset;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

const MAGIC: &[u8; 8] = b"FEDGELB1";
/// The log's file name inside the store's directory.
pub const LOG_FILE: &str = "examples.log";
/// The largest example a record may hold (values), so a corrupt length never makes the reader allocate wildly.
const MAX_VALUES: usize = 1 << 24;
const FIXED: usize = 1 + 4 + 8 + 4;

/// Where a stored example came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /v1/examples`: an input and its label.
    Example,
    /// `POST /v1/feedback`: the right label of a prediction the endpoint served.
    Feedback,
}

/// One labelled example of the device.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledExample {
    pub source: Source,
    pub label: u32,
    /// The model version served when it was labelled.
    pub version: u64,
    pub input: Vec<f32>,
}

/// How many examples the store holds, by source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub examples: usize,
    pub feedback: usize,
}

impl Held {
    pub fn total(&self) -> usize {
        self.examples + self.feedback
    }
}

struct Inner {
    file: Option<File>,
    live: VecDeque<LabelledExample>,
    /// Records in the log file (live or evicted).
    logged: usize,
}

/// The device's labelled examples, bounded and persistent (or in memory only, for tests and `serve`).
pub struct ExampleStore {
    path: Option<PathBuf>,
    max_examples: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ExampleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExampleStore").field("path", &self.path).field("max_examples", &self.max_examples).finish()
    }
}

fn encode(e: &LabelledExample, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(FIXED + 4 * e.input.len());
    payload.push(match e.source {
        Source::Example => 0,
        Source::Feedback => 1,
    });
    payload.extend_from_slice(&e.label.to_le_bytes());
    payload.extend_from_slice(&e.version.to_le_bytes());
    payload.extend_from_slice(&(e.input.len() as u32).to_le_bytes());
    for v in &e.input {
        payload.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes)
}

fn decode(payload: &[u8]) -> Option<LabelledExample> {
    let source = match payload.first()? {
        0 => Source::Example,
        1 => Source::Feedback,
        _ => return None,
    };
    let label = u32_at(payload, 1)?;
    let version = u64::from_le_bytes(payload.get(5..13)?.try_into().ok()?);
    let n = u32_at(payload, 13)? as usize;
    let values = payload.get(FIXED..)?;
    if values.len() != 4 * n {
        return None;
    }
    let input = values.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Some(LabelledExample { source, label, version, input })
}

/// What reading a log gave: the records in order, and the length of its readable prefix.
struct Replay {
    records: Vec<LabelledExample>,
    good_len: usize,
}

fn replay(path: &Path, bytes: &[u8]) -> anyhow::Result<Replay> {
    if bytes.len() < MAGIC.len() {
        // An empty file or a header cut by a crash while the log was created: nothing was ever acknowledged.
        return Ok(Replay { records: vec![], good_len: 0 });
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        bail!("{} is not a fedge labels log (it does not start with {:?})", path.display(), "FEDGELB1");
    }
    let mut at = MAGIC.len();
    let mut records = Vec::new();
    while at < bytes.len() {
        let (Some(len), Some(crc)) = (u32_at(bytes, at), u32_at(bytes, at + 4)) else { break };
        let len = len as usize;
        if !(FIXED..=FIXED + 4 * MAX_VALUES).contains(&len) {
            tracing::warn!(file = %path.display(), offset = at, len, "a record with an impossible length: the rest of the log is dropped");
            break;
        }
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else { break };
        match decode(payload).filter(|_| crc32fast::hash(payload) == crc) {
            Some(r) => records.push(r),
            None => {
                tracing::warn!(file = %path.display(), offset = at, "skipping a labelled example whose checksum fails")
            }
        }
        at += 8 + len;
    }
    if at < bytes.len() {
        tracing::warn!(file = %path.display(), offset = at, bytes = bytes.len() - at, "cutting off a torn record at the end of the log");
    }
    Ok(Replay { records, good_len: at.min(bytes.len()) })
}

impl ExampleStore {
    /// A store kept in memory only.
    pub fn in_memory(max_examples: usize) -> Self {
        ExampleStore {
            path: None,
            max_examples: max_examples.max(1),
            inner: Mutex::new(Inner { file: None, live: VecDeque::new(), logged: 0 }),
        }
    }

    /// Opens (creating) the store in `dir`, replaying its log; keeps the newest `max_examples`.
    pub fn open(dir: &Path, max_examples: usize) -> anyhow::Result<Self> {
        let max_examples = max_examples.max(1);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(LOG_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let Replay { records, good_len } = replay(&path, &bytes)?;
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if good_len < MAGIC.len() {
            file.set_len(0).with_context(|| format!("truncating {}", path.display()))?;
            file.write_all(MAGIC).with_context(|| format!("writing {}", path.display()))?;
            file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
        } else if good_len < bytes.len() {
            file.set_len(good_len as u64).with_context(|| format!("truncating {}", path.display()))?;
            file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
        }
        let logged = records.len();
        let skip = records.len().saturating_sub(max_examples);
        let live: VecDeque<LabelledExample> = records.into_iter().skip(skip).collect();
        tracing::info!(file = %path.display(), held = live.len(), max_examples, "device labels loaded");
        let store = ExampleStore {
            path: Some(path),
            max_examples,
            inner: Mutex::new(Inner { file: Some(file), live, logged }),
        };
        {
            let mut inner = store.lock();
            store.compact_if_due(&mut inner)?;
        }
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most examples held.
    pub fn max_examples(&self) -> usize {
        self.max_examples
    }

    /// Examples held now.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Examples held, by source.
    pub fn held(&self) -> Held {
        let inner = self.lock();
        let feedback = inner.live.iter().filter(|e| e.source == Source::Feedback).count();
        Held { examples: inner.live.len() - feedback, feedback }
    }

    /// Appends `examples` durably (written and fsynced before this returns), evicting the oldest beyond
    /// `max_examples`. Blocks on the disk: call it from a blocking thread. On an error nothing is acknowledged.
    pub fn add(&self, examples: Vec<LabelledExample>) -> anyhow::Result<Held> {
        let mut inner = self.lock();
        if let (Some(path), Some(file)) = (&self.path, inner.file.as_mut()) {
            let mut bytes = Vec::new();
            for e in &examples {
                encode(e, &mut bytes);
            }
            file.write_all(&bytes).with_context(|| format!("appending to {}", path.display()))?;
            file.sync_data().with_context(|| format!("syncing {}", path.display()))?;
        }
        inner.logged += examples.len();
        inner.live.extend(examples);
        while inner.live.len() > self.max_examples {
            inner.live.pop_front();
        }
        if let Err(e) = self.compact_if_due(&mut inner) {
            // The appended examples are durable already; a failed rewrite only leaves the log longer.
            tracing::warn!(error = %format!("{e:#}"), "could not compact the labels log");
        }
        drop(inner);
        Ok(self.held())
    }

    /// Rewrites the log with only the live records once it holds twice `max_examples`.
    fn compact_if_due(&self, inner: &mut Inner) -> anyhow::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        if inner.logged < 2 * self.max_examples.max(64) {
            return Ok(());
        }
        let mut bytes = MAGIC.to_vec();
        for e in &inner.live {
            encode(e, &mut bytes);
        }
        fedge_shared::tls::write_atomic(path, &bytes, 0o600)?;
        if let Some(dir) = path.parent() {
            // The rename itself must be durable before the old log's records are forgotten.
            File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
        }
        inner.file =
            Some(OpenOptions::new().append(true).open(path).with_context(|| format!("reopening {}", path.display()))?);
        inner.logged = inner.live.len();
        Ok(())
    }

    /// The held examples that fit a model taking `input_shape` with `classes` outputs, as a data set the trainer
    /// can join to the configured data (`num_classes = classes`); and how many held examples did not fit (another
    /// model's inputs), which are left in the store.
    pub fn dataset(&self, input_shape: &[usize], classes: usize) -> (Dataset, usize) {
        let len: usize = input_shape.iter().product();
        let inner = self.lock();
        let mut features = Vec::new();
        let mut labels = Vec::new();
        let mut misfits = 0;
        for e in &inner.live {
            if e.input.len() == len && (e.label as usize) < classes {
                features.extend_from_slice(&e.input);
                labels.push(e.label);
            } else {
                misfits += 1;
            }
        }
        let d = Dataset { features, labels, example_shape: input_shape.to_vec(), num_classes: classes };
        (d, misfits)
    }

    /// The held examples, oldest first (for tests and inspection).
    pub fn snapshot(&self) -> Vec<LabelledExample> {
        self.lock().live.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(i: u32) -> LabelledExample {
        let source = if i.is_multiple_of(2) { Source::Example } else { Source::Feedback };
        LabelledExample { source, label: i % 3, version: u64::from(i), input: vec![i as f32, -(i as f32), 0.5] }
    }

    #[test]
    fn examples_survive_a_reopen_in_order_with_their_source_label_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let s = ExampleStore::open(dir.path(), 10).unwrap();
        s.add(vec![ex(1), ex(2)]).unwrap();
        s.add(vec![ex(3)]).unwrap();
        drop(s);
        let s = ExampleStore::open(dir.path(), 10).unwrap();
        assert_eq!(s.snapshot(), vec![ex(1), ex(2), ex(3)]);
        assert_eq!(s.held(), Held { examples: 1, feedback: 2 });
    }

    #[test]
    fn the_oldest_are_evicted_first_and_stay_evicted_after_a_reopen_and_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let s = ExampleStore::open(dir.path(), 3).unwrap();
        for i in 0..200 {
            s.add(vec![ex(i)]).unwrap();
        }
        assert_eq!(s.snapshot(), vec![ex(197), ex(198), ex(199)]);
        let size = std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        assert!(size < 200 * 40, "the log was compacted: {size} bytes");
        drop(s);
        let s = ExampleStore::open(dir.path(), 3).unwrap();
        assert_eq!(s.snapshot(), vec![ex(197), ex(198), ex(199)]);
        // A smaller bound on reopening keeps the newest.
        let s = ExampleStore::open(dir.path(), 2).unwrap();
        assert_eq!(s.snapshot(), vec![ex(198), ex(199)]);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_a_corrupt_record_is_skipped_without_losing_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let s = ExampleStore::open(dir.path(), 10).unwrap();
        s.add(vec![ex(1), ex(2), ex(3)]).unwrap();
        drop(s);
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let record = (bytes.len() - MAGIC.len()) / 3;
        // Flip a value inside the second record, and append half of a fourth.
        bytes[MAGIC.len() + record + 20] ^= 0xFF;
        let mut torn = Vec::new();
        encode(&ex(4), &mut torn);
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        std::fs::write(&path, &bytes).unwrap();
        let s = ExampleStore::open(dir.path(), 10).unwrap();
        assert_eq!(s.snapshot(), vec![ex(1), ex(3)]);
        s.add(vec![ex(5)]).unwrap();
        drop(s);
        let s = ExampleStore::open(dir.path(), 10).unwrap();
        assert_eq!(s.snapshot(), vec![ex(1), ex(3), ex(5)], "appends after a cut-off tail read back");
    }

    #[test]
    fn a_file_that_is_not_a_labels_log_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), b"something else entirely").unwrap();
        let e = ExampleStore::open(dir.path(), 10).unwrap_err().to_string();
        assert!(e.contains(LOG_FILE) && e.contains("not a fedge labels log"), "{e}");
    }

    #[test]
    fn the_training_view_keeps_only_examples_that_fit_the_model() {
        let s = ExampleStore::in_memory(10);
        let mut wrong = ex(1);
        wrong.input.push(1.0);
        let mut big_label = ex(2);
        big_label.label = 7;
        s.add(vec![ex(3), wrong, big_label, ex(4)]).unwrap();
        let (d, misfits) = s.dataset(&[3], 5);
        assert_eq!(misfits, 2, "the longer input and the label past the model's classes are left out");
        assert_eq!(d.labels, vec![0, 1]);
        assert_eq!(d.features, [ex(3).input, ex(4).input].concat());
        assert_eq!((d.example_shape.as_slice(), d.num_classes), (&[3usize][..], 5));
        d.check().unwrap();
        assert_eq!(s.len(), 4, "examples that do not fit stay in the store");
    }
}
