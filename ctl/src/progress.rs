//! `fedgectl watch`: live progress of the rounds as indicatif bars, one per phase (collecting: updates in of the
//! cohort; committing: aggregation, evaluation, durable commit) and one for the rounds still to run.
//!
//! Display only: it reads [`Progress`] snapshots and never sends anything to the server.

use fedge_shared::admin::{PhaseInfo, Progress};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars.
pub struct WatchView {
    _multi: MultiProgress,
    rounds: ProgressBar,
    collecting: ProgressBar,
    committing: ProgressBar,
    log: ProgressBar,
    total: Option<u64>,
    done: u64,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl WatchView {
    /// Bars on stderr (hidden when `hidden`, e.g. in tests or when stderr is not a terminal).
    pub fn new(hidden: bool) -> WatchView {
        let target = if hidden { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        let multi = MultiProgress::with_draw_target(target);
        let rounds = multi.add(ProgressBar::new(0));
        rounds.set_style(style("{prefix:>11} [{bar:30.green/white}] {pos}/{len} {msg}"));
        rounds.set_prefix("rounds");
        let collecting = multi.add(ProgressBar::new(0));
        collecting.set_style(style("{prefix:>11} [{bar:30.cyan/blue}] {pos}/{len} updates {msg}"));
        collecting.set_prefix("collecting");
        let committing = multi.add(ProgressBar::new(1));
        committing.set_style(style("{prefix:>11} [{bar:30.magenta/white}] {msg}"));
        committing.set_prefix("committing");
        let log = multi.add(ProgressBar::new(0));
        log.set_style(style("{prefix:>11} {msg}"));
        log.set_prefix("last");
        WatchView { _multi: multi, rounds, collecting, committing, log, total: None, done: 0 }
    }

    /// Rounds that ended while watching.
    pub fn rounds_seen(&self) -> u64 {
        self.done
    }

    /// Shows one snapshot.
    pub fn update(&mut self, p: &Progress) {
        let s = &p.status;
        self.done += p.finished.len() as u64;
        if self.total.is_none() {
            self.total = s.remaining;
        }
        match self.total {
            Some(t) => {
                self.rounds.set_length(t);
                self.rounds.set_position(self.done.min(t));
            }
            None => {
                self.rounds.set_length(self.done.max(1));
                self.rounds.set_position(self.done);
            }
        }
        self.rounds.set_message(format!(
            "model v{}, {} agents connected{}",
            s.model_version,
            s.connected,
            if s.paused { ", paused" } else { "" }
        ));
        match s.phase {
            PhaseInfo::Collecting => {
                self.collecting.set_length(s.selected as u64);
                self.collecting.set_position((s.reported + s.dropped) as u64);
                self.collecting.set_message(format!(
                    "round {} ({} reported, {} dropped{})",
                    s.round.map_or("-".into(), |r| r.to_string()),
                    s.reported,
                    s.dropped,
                    s.deadline_in_ms
                        .map(|d| format!(", deadline in {}", super::render::duration(d)))
                        .unwrap_or_default()
                ));
                self.committing.set_position(0);
                self.committing.set_message("waiting");
            }
            PhaseInfo::Committing => {
                self.collecting.set_position(self.collecting.length().unwrap_or(0));
                self.committing.set_position(0);
                self.committing.set_message("aggregating, evaluating, committing");
            }
            PhaseInfo::Idle => {
                self.collecting.set_message("idle");
                self.committing.set_position(if p.finished.is_empty() { 0 } else { 1 });
            }
        }
        for r in &p.finished {
            self.committing.set_position(1);
            self.committing.set_message(format!(
                "round {} {}",
                r.round,
                if r.completed {
                    format!(
                        "committed: version {}, accuracy {}",
                        r.new_version.map_or("-".into(), |v| v.to_string()),
                        r.test_accuracy.map_or("-".into(), |a| format!("{a:.4}"))
                    )
                } else {
                    format!("aborted: {}", r.abort_reason.as_deref().unwrap_or(""))
                }
            ));
        }
        if let Some(last) = p.events.last() {
            self.log.set_message(last.clone());
        }
    }

    pub fn finish(&self) {
        for b in [&self.rounds, &self.collecting, &self.committing, &self.log] {
            b.abandon();
        }
    }
}
