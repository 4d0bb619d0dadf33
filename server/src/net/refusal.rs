//! Turning a peer away: the QUIC close codes the server uses, refusing a connection (logged, closed with
//! [`CLOSE_REFUSED`], told to whoever watches the server's events), and the error that marks a protocol violation
//! (which closes the connection with [`CLOSE_PROTOCOL`]).
//!
//! It must never refuse without a reason that is logged and sent to the peer.

use super::shared::Shared;
use crate::core_msg::ServerEvent;

/// QUIC application close code: the peer is refused.
pub const CLOSE_REFUSED: u32 = 2;
/// QUIC application close code: the peer broke the protocol.
pub const CLOSE_PROTOCOL: u32 = 3;

pub(super) fn refuse(conn: &quinn::Connection, shared: &Shared, peer: String, reason: String) {
    tracing::warn!(%peer, %reason, "connection refused");
    conn.close(quinn::VarInt::from_u32(CLOSE_REFUSED), reason.as_bytes());
    let _ = shared.events.send(ServerEvent::Refused { peer, reason });
}

#[derive(Debug, thiserror::Error)]
#[error("protocol violation: {0}")]
pub(super) struct ProtocolViolation(pub(super) String);
