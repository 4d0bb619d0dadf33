//! The free-space guard of the database's disk: before a round may start, the file system holding `data_dir`
//! must have room to commit the round's model.
//!
//! The guard only reads `statvfs` and says when the verdict changes; the coordinator (through
//! `Event::Storage`) decides what to do with it. It never writes, deletes or blocks for long: one system call,
//! at most once per [`DiskGuard::INTERVAL`] unless the caller asks for a look now (after each commit).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Watches the free space under the database directory.
#[derive(Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    last: Option<Instant>,
    low: Option<String>,
}

impl DiskGuard {
    /// Look at most this often.
    pub const INTERVAL: Duration = Duration::from_millis(500);

    /// A guard that wants `min_free` bytes available (to an unprivileged user) under `dir`.
    pub fn new(dir: impl Into<PathBuf>, min_free: u64) -> DiskGuard {
        DiskGuard { dir: dir.into(), min_free, last: None, low: None }
    }

    /// The space a commit needs by default for a model of `model_bytes`: the new weights, sled's log record of
    /// them and the segment it may have to start, with a margin.
    pub fn default_min_free(model_bytes: u64) -> u64 {
        model_bytes.saturating_mul(4).saturating_add(8 << 20)
    }

    /// Looks (unless it looked less than [`Self::INTERVAL`] ago) and returns the new verdict when it changed:
    /// `Some(Some(why))` when space became short, `Some(None)` when it is enough again.
    pub fn poll(&mut self, now: Instant) -> Option<Option<String>> {
        if self.last.is_some_and(|t| now.duration_since(t) < Self::INTERVAL) {
            return None;
        }
        self.poll_now(now)
    }

    /// [`Self::poll`] without the rate limit: for the moments that matter, such as right after a commit.
    pub fn poll_now(&mut self, now: Instant) -> Option<Option<String>> {
        self.last = Some(now);
        let low = match available_bytes(&self.dir) {
            Ok(free) if free >= self.min_free => None,
            Ok(free) => Some(format!(
                "only {} free on the disk of {} (a commit needs {}; free space or lower min_free_disk_mb)",
                mib(free),
                self.dir.display(),
                mib(self.min_free)
            )),
            Err(e) => {
                // Cannot tell: say so once and let the commit itself report a real failure.
                if self.low.is_none() {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the free disk space");
                }
                None
            }
        };
        // Only a change between "enough" and "short" is news; a new figure while short is not.
        if low.is_some() == self.low.is_some() {
            self.low = low;
            return None;
        }
        self.low = low.clone();
        Some(low)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Bytes available to an unprivileged user on the file system holding `dir`.
pub fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_with_room_is_not_low_and_a_demand_beyond_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let free = available_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let mut roomy = DiskGuard::new(dir.path(), 1);
        assert_eq!(roomy.poll(Instant::now()), None, "enough space from the start is no change");
        let mut greedy = DiskGuard::new(dir.path(), u64::MAX);
        let verdict = greedy.poll(Instant::now()).expect("the verdict changes to low");
        let why = verdict.expect("low");
        assert!(why.contains("a commit needs") && why.contains(&dir.path().display().to_string()), "{why}");
    }

    #[test]
    fn the_guard_looks_at_most_once_per_interval_and_reports_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = DiskGuard::new(dir.path(), u64::MAX);
        let t0 = Instant::now();
        assert!(matches!(g.poll(t0), Some(Some(_))));
        assert_eq!(g.poll(t0 + DiskGuard::INTERVAL), None, "still low: no change to report");
        g.min_free = 1;
        assert_eq!(g.poll(t0 + DiskGuard::INTERVAL / 2), None, "too soon to look again");
        assert_eq!(g.poll(t0 + DiskGuard::INTERVAL * 3), Some(None), "room again");
    }

    #[test]
    fn a_missing_directory_is_not_reported_as_low() {
        let mut g = DiskGuard::new("/nonexistent/fedge/db", u64::MAX);
        assert_eq!(g.poll(Instant::now()), None);
    }
}
