//! The server's time: one monotonic clock for the coordinator, and the one wake-up the coordinator asked for.
//!
//! Coordinator time ([`Clock::now_ms`]) is milliseconds on a monotonic clock (tokio's `Instant`) anchored at the
//! wall time of start-up: it never jumps when the system clock is set, so a deadline holds for exactly as long as
//! the operator configured, and it still reads as Unix milliseconds, which is all a round record's stamps need.
//! The wall clock ([`wall_ms`]) only stamps what is stored (model creation, agents last seen).
//!
//! [`Alarm`] carries out the coordinator's `WakeAt` contract exactly: a later `WakeAt` replaces an earlier one,
//! whether earlier or later (keeping the earlier of the two loses the deadline the coordinator asked for last: it
//! never asks again for a deadline that has not changed), and the alarm is spent once it rings.
//!
//! Nothing here may read the wall clock to decide when a deadline has passed.

use std::time::Duration;
use tokio::time::Instant;

/// Milliseconds since the Unix epoch by the system clock (0 if it is set before 1970): for stamps only.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The coordinator's clock: monotonic milliseconds that start at the wall time of start-up.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    origin_ms: u64,
}

impl Clock {
    /// A clock that reads the wall time now and counts on monotonically from there.
    pub fn start() -> Clock {
        Clock::starting_at(wall_ms())
    }

    /// A clock that reads `origin_ms` now.
    pub fn starting_at(origin_ms: u64) -> Clock {
        Clock { origin: Instant::now(), origin_ms }
    }

    /// Coordinator time now.
    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.origin_ms.saturating_add(elapsed)
    }

    /// The monotonic instant at which this clock reads `at_ms` (now or in the past for a time already passed).
    pub fn instant_at(&self, at_ms: u64) -> Instant {
        self.origin + Duration::from_millis(at_ms.saturating_sub(self.origin_ms))
    }
}

/// The wake-up the coordinator asked for last (`Action::WakeAt`), if it has not rung yet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Alarm {
    at: Option<u64>,
}

impl Alarm {
    /// Carries out `WakeAt(at_ms)`: the alarm rings at `at_ms`, whatever was set before (earlier or later).
    pub fn set(&mut self, at_ms: u64) {
        self.at = Some(at_ms);
    }

    /// When it will ring (coordinator time), if it is set.
    pub fn pending(&self) -> Option<u64> {
        self.at
    }

    /// Whether the alarm rings at `now_ms`; ringing spends it (the shell then feeds `Event::Tick`).
    pub fn ring(&mut self, now_ms: u64) -> bool {
        match self.at {
            Some(at) if now_ms >= at => {
                self.at = None;
                true
            }
            _ => false,
        }
    }

    /// The monotonic instant to sleep until on `clock`, if the alarm is set.
    pub fn deadline(&self, clock: &Clock) -> Option<Instant> {
        self.at.map(|at| clock.instant_at(at))
    }
}

/// Sleeps until `deadline`, or for ever without one (a branch of the core's `select!`).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_wake_up_replaces_an_earlier_one_and_an_earlier_one_a_later_one() {
        let mut alarm = Alarm::default();
        alarm.set(1_000);
        alarm.set(5_000);
        assert!(!alarm.ring(1_000), "the earlier wake-up was replaced: nothing rings at 1 s");
        assert!(!alarm.ring(4_999));
        assert!(alarm.ring(5_000), "it rings at the later deadline");
        assert!(!alarm.ring(6_000), "a rung alarm is spent");
        alarm.set(9_000);
        alarm.set(7_000);
        assert_eq!(alarm.pending(), Some(7_000));
        assert!(alarm.ring(7_000));
    }

    #[test]
    fn clock_time_is_anchored_at_its_origin_and_maps_back_to_instants() {
        let clock = Clock::starting_at(1_700_000_000_000);
        let now = clock.now_ms();
        assert!((1_700_000_000_000..1_700_000_010_000).contains(&now));
        assert!(clock.instant_at(now + 250) >= clock.instant_at(now) + Duration::from_millis(250));
        assert!(clock.instant_at(0) <= Instant::now(), "a time before the origin is already due");
    }

    #[tokio::test]
    async fn sleeping_until_an_alarm_ends_no_earlier_than_it_and_then_it_rings() {
        let clock = Clock::start();
        let mut alarm = Alarm::default();
        let at = clock.now_ms() + 40;
        alarm.set(at);
        sleep_until(alarm.deadline(&clock)).await;
        assert!(clock.now_ms() >= at);
        assert!(alarm.ring(clock.now_ms()));
    }
}
