//! The run the server was given ("N rounds", or "until stopped"), kept in the store so that a restart finishes
//! that run instead of starting it again.
//!
//! A run counts committed rounds, i.e. model versions: `rounds = N` in server.toml means "until N rounds have
//! committed, counted from the model version the database held when the run began", across any number of
//! restarts (a round in flight at a crash commits nothing, so it does not count). A restart resumes the stored
//! run while server.toml's `rounds` is unchanged; a changed `rounds` begins a new run from the configuration, and
//! `fedgectl round start N` begins a new run of N rounds from the current version.
//!
//! Plain data and pure decisions: this module reads no clock, file or socket (the store keeps the [`Run`]).

use serde::{Deserialize, Serialize};

/// A run of rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The newest model version when the run began.
    pub from_version: u64,
    /// The run is done once this version is committed (`None`: it runs until stopped).
    pub until_version: Option<u64>,
    /// server.toml's `rounds` when the run began (a restart with another value begins a new run).
    pub config_rounds: Option<u64>,
    /// Begun by an operator (`fedgectl round start`) rather than by `autostart`: resumed even without autostart.
    pub by_operator: bool,
}

impl Run {
    /// A run of `count` rounds (`None`: until stopped) from version `latest`.
    pub fn new(latest: u64, count: Option<u64>, config_rounds: Option<u64>, by_operator: bool) -> Run {
        Run { from_version: latest, until_version: count.map(|n| latest.saturating_add(n)), config_rounds, by_operator }
    }

    /// Rounds committed so far in this run, when `latest` is the newest version.
    pub fn done(&self, latest: u64) -> u64 {
        latest.saturating_sub(self.from_version)
    }

    /// Rounds still to commit when `latest` is the newest version (`None`: until stopped).
    pub fn remaining(&self, latest: u64) -> Option<u64> {
        self.until_version.map(|until| until.saturating_sub(latest))
    }

    /// The run's length in rounds (`None`: until stopped).
    pub fn total(&self) -> Option<u64> {
        self.until_version.map(|until| until.saturating_sub(self.from_version))
    }
}

/// The run in force at start-up: the stored one while server.toml's `rounds` is unchanged (and `autostart` is on,
/// or an operator began it), else a new one from the configuration when `autostart` is on, else none.
pub fn at_start(stored: Option<Run>, autostart: bool, config_rounds: Option<u64>, latest: u64) -> Option<Run> {
    match stored {
        Some(run) if run.config_rounds == config_rounds && (autostart || run.by_operator) => Some(run),
        _ if autostart => Some(Run::new(latest, config_rounds, config_rounds, false)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_restart_with_the_same_configuration_finishes_the_stored_run() {
        // 10 rounds from version 4; the server crashed after two more commits.
        let run = at_start(None, true, Some(10), 4).unwrap();
        assert_eq!((run.from_version, run.until_version), (4, Some(14)));
        let resumed = at_start(Some(run), true, Some(10), 6).unwrap();
        assert_eq!(resumed, run);
        assert_eq!((resumed.done(6), resumed.remaining(6), resumed.total()), (2, Some(8), Some(10)));
        // Once done, a restart runs nothing more.
        assert_eq!(at_start(Some(run), true, Some(10), 14).unwrap().remaining(14), Some(0));
    }

    #[test]
    fn a_changed_rounds_setting_begins_a_new_run_and_no_autostart_begins_none() {
        let run = Run::new(4, Some(10), Some(10), false);
        let new = at_start(Some(run), true, Some(3), 9).unwrap();
        assert_eq!((new.from_version, new.until_version, new.config_rounds), (9, Some(12), Some(3)));
        let forever = at_start(Some(run), true, None, 9).unwrap();
        assert_eq!(forever.remaining(9), None);
        assert_eq!(at_start(Some(run), false, Some(10), 9), None);
        assert_eq!(at_start(None, false, Some(10), 9), None);
        // An operator's run resumes even without autostart.
        let operator = Run::new(2, Some(5), Some(10), true);
        assert_eq!(at_start(Some(operator), false, Some(10), 3), Some(operator));
    }

    proptest! {
        #[test]
        fn done_and_remaining_always_add_up_to_the_run_length(from in 0u64..1_000, n in 0u64..1_000, k in 0u64..2_000) {
            let run = Run::new(from, Some(n), Some(n), false);
            let latest = from + k.min(n);
            prop_assert_eq!(run.done(latest) + run.remaining(latest).unwrap(), n);
        }
    }
}
