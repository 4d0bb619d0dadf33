//! The fedge aggregation server.
//!
//! - [`coordinator`]: the round state machine, sans-IO (events in, actions out; no sockets, no clocks).
//! - [`strategy`]: aggregation strategies behind one small trait (FedAvg, FedProx, FedAdam, FedYogi).
//! - [`store`]: the sled database: models, rounds, agents, metadata.
//! - the async shell (QUIC endpoint, one task per connection) only moves the coordinator's messages.

pub mod coordinator;
pub mod store;
pub mod strategy;
