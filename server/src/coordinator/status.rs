//! What the coordinator reports of itself: where the round cycle is, who is connected and available, and what
//! the operator asked for. A read-only snapshot for the admin interface and the metrics; nothing here changes state.

use super::{Coordinator, Phase, Stage};

/// A snapshot for the admin interface and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub phase: Phase,
    /// The round in flight, if any.
    pub round: Option<u64>,
    pub model_version: u64,
    pub next_round: u64,
    pub connected: usize,
    /// Checked-in agents that are not in the round in flight.
    pub available: usize,
    pub selected: usize,
    pub reported: usize,
    pub dropped: usize,
    pub running: bool,
    pub paused: bool,
    /// Why no round may start for lack of disk space, if so.
    pub storage_low: Option<String>,
    /// Completed rounds still to run (`None`: unlimited).
    pub remaining: Option<u64>,
}

impl Coordinator {
    /// The round in flight, if any: what [`Self::status`] says of it, in O(1).
    pub fn round_in_flight(&self) -> Option<u64> {
        match &self.stage {
            Stage::Idle => None,
            Stage::Collecting(r) | Stage::Unmasking(r) => Some(r.plan.round),
            Stage::Committing(p) => Some(p.round),
        }
    }

    /// A snapshot of where things stand.
    pub fn status(&self) -> Status {
        let (phase, round, selected, reported, dropped) = match &self.stage {
            Stage::Idle => (Phase::Idle, None, 0, 0, 0),
            Stage::Collecting(r) => {
                (Phase::Collecting, Some(r.plan.round), r.selected.len(), r.reports.len(), r.dropped.len())
            }
            Stage::Unmasking(r) => {
                (Phase::Committing, Some(r.plan.round), r.selected.len(), r.reports.len(), r.dropped.len())
            }
            Stage::Committing(p) => (
                Phase::Committing,
                Some(p.round),
                p.record.selected.len(),
                p.record.reported.len(),
                p.record.dropped.len(),
            ),
        };
        Status {
            phase,
            round,
            model_version: self.model_version,
            next_round: self.next_round,
            connected: self.agents.len(),
            available: self.available_count(),
            selected,
            reported,
            dropped,
            running: self.running,
            paused: self.paused,
            storage_low: self.storage_low.clone(),
            remaining: self.remaining,
        }
    }
}
