//! The aggregation tier: a `fedge-server` with `role = "aggregator"` serves its own agents for a root server.
//!
//! An aggregator is an ordinary server towards its agents (mutual-TLS QUIC, secure rounds, its own sled store) and
//! an agent of its root: the uplink is fedge-agent's client, unchanged, whose learner is the aggregator's own round.
//! When the root's plan arrives, the learner asks the core for a round over the aggregator's agents with the root's
//! training settings and seed; the coordinator (`coordinator::forward`) runs it and hands back the unmasked mean
//! with its weight, which the uplink uploads to the root as its update, weighted by that many examples. The root is
//! an ordinary server running plain rounds over its aggregators, so its committed model is the example-weighted
//! mean over every agent behind every aggregator that answered in time.
//!
//! What each party learns: an aggregator, like any server, only its group's sum; the root each aggregator's group
//! mean (never of fewer than `min_group` agents) and nothing of one agent. Agents list every aggregator's address
//! and move to another when theirs dies (`fedge_agent::client::ClientSettings::servers`); a round at the root
//! completes with the aggregators that answered.
//!
//! The files: `settings` (`[aggregator]` in server.toml), `learner` (the uplink's learner: a round of this
//! server's agents), `uplink` (starting the uplink and installing the root's versions). This module must never
//! commit a model of its own: the root's versions are the only ones an aggregator holds.

mod learner;
mod settings;
mod uplink;

pub use learner::{DECLARED_EXAMPLES, ForwardingLearner};
pub use settings::{AggregatorConfig, DEFAULT_MIN_GROUP};
pub use uplink::{Uplink, install_loop, start_uplink};
