//! Revocation of live connections: a certificate revoked while its holder is connected (its line added to the
//! revocation file, or `fedgectl agent revoke NAME` on the running server) loses its connection within a poll
//! period, whether it is an agent's or an operator's.
//!
//! One task watches the revocation file's contents ([`watch_file`]) and bumps a generation counter when they change;
//! an operator's revocation in the store bumps it too ([`Revocations::bump`]). Every live connection holds a
//! [`guard`] that re-checks its own certificate at each bump, against the file's contents as the watcher last read
//! them ([`Revocations::file`]), and closes the connection when it is revoked: the file is read once per poll, not
//! once per connection.
//!
//! This module never decides what is revoked (the caller's check does) and never blocks the runtime on the file
//! (it is read with `tokio::fs`).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

/// How often the revocation file is read for changes.
pub const POLL: Duration = Duration::from_secs(1);

/// The QUIC application close code of a connection whose certificate was revoked while it was connected.
pub const CLOSE_REVOKED: u32 = 0x52;

/// The revocation file as [`watch_file`] last read it: `Ok(None)` when there is none (or none is watched), the
/// kind of error when it could not be read.
pub type FileContents = Result<Option<Arc<str>>, std::io::ErrorKind>;

/// The generation of the revocation state, which changes whenever something may have been revoked, and the
/// revocation file's contents as last read, for the live connections' checks.
#[derive(Debug)]
pub struct Revocations {
    generation: watch::Sender<u64>,
    file: RwLock<FileContents>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations { generation: watch::channel(0).0, file: RwLock::new(Ok(None)) }
    }
}

impl Revocations {
    /// The revocation file as [`watch_file`] last read it.
    pub fn file(&self) -> FileContents {
        self.file.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_file(&self, contents: FileContents) {
        *self.file.write().unwrap_or_else(|e| e.into_inner()) = contents;
    }

    /// Tells every live connection to check its certificate again.
    pub fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A receiver that wakes at each [`Revocations::bump`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// Reads `path` every [`POLL`] and bumps `revocations` when its contents change (appear, disappear or differ),
/// until `shutdown`. A file that cannot be read counts as a change too: the connections' own checks then refuse
/// to vouch for anyone, as the admission check does.
pub async fn watch_file(path: PathBuf, revocations: Arc<Revocations>, mut shutdown: watch::Receiver<bool>) {
    async fn read(p: &PathBuf) -> FileContents {
        match tokio::fs::read_to_string(p).await {
            Ok(text) => Ok(Some(text.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.kind()),
        }
    }
    let mut last = read(&path).await;
    revocations.set_file(last.clone());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
        let now = read(&path).await;
        if now != last {
            tracing::info!(file = %path.display(), "the revocation list changed; live connections check their certificates");
            revocations.set_file(now.clone());
            revocations.bump();
            last = now;
        }
    }
}

/// Watches one live connection: at each bump of `rx`, asks `revoked` whether its certificate is revoked now, and
/// closes the connection with [`CLOSE_REVOKED`] when it is (an error in the check is logged; the connection stays,
/// as the next bump will ask again). Returns when the connection closes.
pub async fn guard(
    conn: quinn::Connection,
    mut rx: watch::Receiver<u64>,
    peer: String,
    revoked: impl Fn() -> anyhow::Result<bool>,
) {
    loop {
        tokio::select! {
            _ = conn.closed() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        match revoked() {
            Ok(false) => {}
            Ok(true) => {
                tracing::warn!(%peer, "certificate revoked while connected: closing the connection");
                conn.close(quinn::VarInt::from_u32(CLOSE_REVOKED), b"certificate revoked");
                return;
            }
            Err(e) => tracing::warn!(%peer, error = %format!("{e:#}"), "cannot check the revocation state"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_watcher_keeps_the_files_contents_and_bumps_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.txt");
        std::fs::write(&path, "mallory\n").unwrap();
        let revocations = Arc::new(Revocations::default());
        let mut rx = revocations.subscribe();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(watch_file(path.clone(), revocations.clone(), stopped));
        tokio::time::timeout(Duration::from_secs(5), async {
            while revocations.file() != Ok(Some("mallory\n".into())) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the first read is kept");
        std::fs::write(&path, "mallory\nagent-007\n").unwrap();
        tokio::time::timeout(POLL * 5, rx.changed()).await.expect("a change bumps the generation").unwrap();
        assert_eq!(revocations.file(), Ok(Some("mallory\nagent-007\n".into())));
        std::fs::remove_file(&path).unwrap();
        tokio::time::timeout(POLL * 5, rx.changed()).await.expect("a removal bumps it too").unwrap();
        assert_eq!(revocations.file(), Ok(None));
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
