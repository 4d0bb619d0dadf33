//! The QUIC shell: accepts connections, authenticates peers by their certificate, speaks the hello, and runs one
//! task per agent connection that moves framed control messages and blob streams between the agent and the core.
//!
//! It decides nothing about rounds. It refuses, with a logged reason and a QUIC close code, any peer whose
//! certificate does not chain to the federation CA (rustls does that in the handshake), is revoked, carries the
//! wrong role for the ALPN, or speaks another protocol version; and it closes a live connection, agent or operator,
//! whose certificate is revoked later ([`crate::revocation`]). It never panics on what a peer sends.
//!
//! Secure rounds: the agent's secure-aggregation messages go to the core tagged with the name from its certificate
//! (so an agent can only speak for its own cohort index), and a masked vector (`1 + 3 + P` little-endian `u32`) is read
//! under a permit of the upload budget (`upload_budget`: `max_concurrent_uploads` and `upload_memory_mb`), which
//! travels with it until the core has folded it.
//!
//! The files, one concept each: `accept` (the accept loop and each peer's authentication), `agent_connection`
//! (an agent's hello, its control stream and its liveness), `blobs` (uploads read and downloads sent under
//! permits), `receive_window` (the connection receive window an upload widens), `endpoint` (the certificates,
//! the revocation file and the UDP socket), `probe` (the readiness probe, and how the accept loop
//! recognises one), `shared` (what every connection task shares), `upload_budget` (how many uploads, and
//! how many of their bytes, are held at once), `send_batch` (how many datagrams go in one send call); `test_pki` is the tests' federation over real QUIC and `refusal` (close codes and turning a peer away). This file only names them and re-exports the public items, so that none of them
//! imports it.

mod accept;
mod agent_connection;
mod blobs;
mod endpoint;
mod probe;
mod receive_window;
mod refusal;
mod send_batch;
mod shared;
#[cfg(test)]
mod test_pki;
mod upload_budget;

pub use accept::accept_loop;
pub use agent_connection::SILENT_AFTER;
pub use endpoint::{TlsSetup, UDP_RECEIVE_BUFFER, bind_endpoint, enlarge_receive_buffer};
pub use probe::{ProbeError, local_address, probe};
pub use receive_window::{IDLE_RECEIVE_WINDOW, UPLOAD_RECEIVE_WINDOW};
pub use refusal::{CLOSE_PROTOCOL, CLOSE_REFUSED};
pub use send_batch::MAX_SEND_BATCH;
pub use shared::{OperatorService, Shared};
pub use upload_budget::{UploadBudget, UploadPermit};
