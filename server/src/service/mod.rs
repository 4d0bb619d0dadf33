//! The server's core task: it owns the [`Coordinator`](crate::coordinator::Coordinator) and the
//! [`Store`](crate::store::Store), feeds the coordinator events from the connection tasks and the clock, and carries
//! out the actions it returns (send a plan, push weights, commit a round on a blocking thread, announce a version).
//!
//! It makes no decision of its own about rounds: that is the coordinator's. It never blocks the runtime: commits
//! and evaluations run on the blocking pool. Weights bytes for a version are encoded and hashed once and shared
//! (`Arc`) by every connection that sends them.
//!
//! Secure rounds: the core relays the coordinator's key broadcast with each owner's certificate (kept from its
//! connection), the shares and the unmask request, and feeds masked vectors to the coordinator, which folds each
//! into its running masked sum on arrival; an upload's memory permit is released only once it is folded.
//!
//! The files, one concept each: `startup` (opening the store, binding the endpoint, building the core and spawning the
//! tasks), `server_handle` (the running server as its owner holds it), `core_actor` (the core's state and its loop:
//! messages in, events to the coordinator), `actions` (carrying out the coordinator's actions; `actions_contract` tests
//! each against the coordinator's documentation), `admin_calls` (answering the operator's calls), `model_diffs` (the
//! newest versions' differences, for agents a few versions behind), `peer_certs` (which peers' certificates a
//! connection holds, so each is relayed once), `forwarding` (an aggregator's requests from its
//! root, the root's versions it installs, and the answers it forwards) and `wire_plan` (a round's plan as an agent
//! receives it). This file only names them and re-exports the public items, so that none of
//! them imports it.

mod actions;
#[cfg(test)]
mod actions_contract;
mod admin_calls;
mod core_actor;
mod forwarding;
mod model_diffs;
mod peer_certs;
mod server_handle;
mod startup;
mod wire_plan;

pub use crate::core_msg::{CommittedModel, CoreMsg, InstalledModel, Operator, Outbound, RelayHook, ServerEvent};
pub use server_handle::ServerHandle;
pub use startup::{start, start_with_hook};
pub use wire_plan::{round_seed, wire_plan};
