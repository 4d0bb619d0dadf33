//! The fedge edge agent: takes part in federated rounds, trains locally with tract, serves inference.
//!
//! - [`session`]: the round protocol as a sans-IO state machine (plans, secure-aggregation phases, uploads).
//! - [`client`]: its QUIC shell, the connection loop (mutual-TLS QUIC, check-in, uploads, reconnects).
//! - [`peer_check`]: the checks of peers' certificates and keys in a secure round.
//! - [`verified_certs`]: peers' certificates already verified against the CA (not chain-verified every round).
//! - [`agent_event`]: what the agent reports to whoever runs it.
//! - [`learner`]: the seam between the round protocol and local learning.
//! - [`liveness`]: probing a silent server, so that a restarted one is noticed within about a second.
//! - [`state`]: the graph and weights the agent keeps between connections.
//! - [`examples_store`]: the device's own labelled examples (posted to the inference endpoint), kept on disk.
//! - [`training_set`]: the configured data joined with the device's examples for a round.
//! - [`trainer`]: the real learner: local training with tract.
//! - [`inference`]: the local prediction endpoint served with the newest (or a pinned) global model.
//! - [`offline`]: the commands that work without a server: `train`, `eval`, `make-model`.
//! - [`predict`]: `predict` (one-off predictions) and `serve` (the endpoint for a fixed model).

pub mod agent_event;
pub mod client;
pub mod config;
pub mod crash;
pub mod examples_store;
pub mod inference;
pub mod learner;
pub mod liveness;
pub mod offline;
pub mod peer_check;
pub mod predict;
pub mod privacy_budget;
pub mod session;
pub mod state;
pub mod trainer;
pub mod training_set;
pub mod verified_certs;

/// The software name and version sent in the hello.
pub const SOFTWARE: &str = concat!("fedge-agent/", env!("CARGO_PKG_VERSION"));

/// QUIC application close code: the server refused this peer (wrong CA, revoked, wrong role, wrong protocol).
pub const CLOSE_REFUSED: u32 = 2;
