//! Revocation of live connections: a certificate revoked while its holder is connected (its line added to the
//! revocation file, or `fedgectl agent revoke NAME` on the running server) loses its connection within a poll
//! period, whether it is an agent's or an operator's.
//!
//! One task watches the revocation file's contents ([`watch_file`]) and bumps a generation counter when they change;
//! an operator's revocation in the store bumps it too ([`Revocations::bump`]). Every live connection holds a
//! [`guard`] that re-checks its own certificate at each bump and closes the connection when it is revoked, so the
//! file is read once per change, not once per connection.
//!
//! This module never decides what is revoked (the caller's check does) and never blocks the runtime on more than
//! reading the small revocation file.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

/// How often the revocation file is read for changes.
pub const POLL: Duration = Duration::from_secs(1);

/// The QUIC application close code of a connection whose certificate was revoked while it was connected.
pub const CLOSE_REVOKED: u32 = 0x52;

/// The generation of the revocation state: it changes whenever something may have been revoked.
#[derive(Debug)]
pub struct Revocations {
    generation: watch::Sender<u64>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations { generation: watch::channel(0).0 }
    }
}

impl Revocations {
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
pub async fn watch_file(path: PathBuf, revocations: std::sync::Arc<Revocations>, mut shutdown: watch::Receiver<bool>) {
    let read = |p: &PathBuf| match std::fs::read(p) {
        Ok(bytes) => Some(Ok(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(e.kind())),
    };
    let mut last = read(&path);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
        let now = read(&path);
        if now != last {
            tracing::info!(file = %path.display(), "the revocation list changed; live connections check their certificates");
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
