//! Probing a silent server, so that an agent notices a restarted server within about a second.
//!
//! A server killed and restarted has lost its connections; it answers the next packet of an old connection with a
//! stateless reset (its reset key persists across restarts), which ends that connection at once. But QUIC sends
//! nothing on a connection that is waiting: after the last packet from the server, one keep-alive goes out, and
//! then only retransmissions, each twice as late as the one before, so the first packet to reach a restarted server
//! could leave seconds after it came back. [`probe_while_silent`] sends a one-byte QUIC datagram whenever nothing
//! has arrived from the server for [`PROBE_AFTER`], at that steady pace; the server discards it (and acknowledges
//! it, which keeps the connection from looking silent while the server is up).
//!
//! It costs one small datagram and its acknowledgement per [`PROBE_AFTER`] while the link is idle. It never reads
//! or changes anything of the round protocol, and stops by itself when the connection ends.

use std::time::Duration;

/// How long a connection may go without receiving anything before the agent probes the server.
pub const PROBE_AFTER: Duration = Duration::from_secs(1);

/// Sends a datagram on `conn` each time nothing has been received on it for `after` (checked every `after / 4`),
/// until the connection ends. Does nothing when the server accepts no datagrams.
pub async fn probe_while_silent(conn: quinn::Connection, after: Duration) {
    if conn.max_datagram_size().is_none() {
        tracing::debug!("the server takes no datagrams: relying on QUIC keep-alives alone");
        return;
    }
    let step = (after / 4).max(Duration::from_millis(10));
    let mut seen = conn.stats().udp_rx.datagrams;
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            _ = conn.closed() => return,
        }
        let now = conn.stats().udp_rx.datagrams;
        if now != seen {
            seen = now;
            quiet = Duration::ZERO;
            continue;
        }
        quiet += step;
        if quiet >= after {
            quiet = Duration::ZERO;
            if let Err(e) = conn.send_datagram(bytes::Bytes::from_static(&[0])) {
                tracing::debug!(error = %e, "could not probe the server");
                return;
            }
        }
    }
}
