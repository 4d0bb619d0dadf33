//! The connection-level receive window: narrow while an agent is not being read from, so that N agents' unread
//! uploads cost the server little memory and cannot flood the UDP buffer together, and wide only while one of the
//! agent's uploads holds a permit and is read ([`UploadWindow`]).
//!
//! This module must never widen a window without a permit behind it, nor by more than the upload needs, nor leave
//! one wide after the upload.

/// The connection-level receive window of an agent that is not being read from: what it may send ahead (control
/// messages, the start of an upload waiting for a permit). The server's memory for N agents' unread uploads is N
/// times this, and so is the burst N agents can send at once into the UDP receive buffer, so it is small: at
/// 64 KiB, 100 agents starting their uploads together overflowed a 4 MiB buffer (a quarter of a 1e5-parameter
/// upload was lost and sent again); the largest control message (a cohort's encrypted shares) is a few KiB.
pub const IDLE_RECEIVE_WINDOW: u32 = 16 * 1024;

/// The connection-level receive window while one of the agent's uploads holds a permit and is being read: wide
/// enough for full speed on loopback and LANs.
pub const UPLOAD_RECEIVE_WINDOW: u32 = 1536 * 1024;

/// Widens a connection's receive window while an upload holding a permit is read, and narrows it back to
/// [`IDLE_RECEIVE_WINDOW`] once the rest of the upload fits in the credit already granted ([`UploadWindow::left`])
/// or when dropped.
///
/// Credit once granted cannot be taken back, so the window is widened by no more than the upload needs
/// ([`upload_window_for`]): widened to the full [`UPLOAD_RECEIVE_WINDOW`] for a 200 KB upload, an agent would keep
/// 1.3 MB of credit after it, and send its whole next upload ahead of any permit (at 1,000 agents that was 150 MB
/// of unread uploads in the server's memory in every secure round after the first). Narrowing early matters for the
/// same reason: a window narrowed only at the end would leave the agent free to send its next upload's first
/// 1.5 MB ahead of any permit.
pub(super) struct UploadWindow<'a> {
    conn: &'a quinn::Connection,
    window: u32,
    wide: bool,
}

/// The receive window while an upload of `len` bytes is read: the upload's length, at least
/// [`IDLE_RECEIVE_WINDOW`] and at most [`UPLOAD_RECEIVE_WINDOW`]. Widening from the idle window to this grants
/// `window - IDLE_RECEIVE_WINDOW` more credit: with the idle window's, exactly the upload.
pub fn upload_window_for(len: u64) -> u32 {
    len.clamp(u64::from(IDLE_RECEIVE_WINDOW), u64::from(UPLOAD_RECEIVE_WINDOW)) as u32
}

impl<'a> UploadWindow<'a> {
    /// Widens `conn`'s window for an upload of `len` bytes.
    pub(super) fn open(conn: &'a quinn::Connection, len: u64) -> Self {
        let window = upload_window_for(len);
        conn.set_receive_window(quinn::VarInt::from_u32(window));
        UploadWindow { conn, window, wide: window > IDLE_RECEIVE_WINDOW }
    }

    /// `remaining` bytes of the upload are still to come.
    pub(super) fn left(&mut self, remaining: usize) {
        if self.wide && remaining <= self.window as usize {
            self.narrow();
        }
    }

    fn narrow(&mut self) {
        self.conn.set_receive_window(quinn::VarInt::from_u32(IDLE_RECEIVE_WINDOW));
        self.wide = false;
    }
}

impl Drop for UploadWindow<'_> {
    fn drop(&mut self) {
        if self.wide {
            self.narrow();
        }
    }
}

#[cfg(test)]
mod tests;
