//! Human-readable output of fedgectl's reads (the `--json` output is the admin types serialised as they are).
//!
//! Pure formatting: no I/O. It must never hide a field the JSON carries that an operator needs to act on.

use fedge_shared::admin::{AgentInfo, ConfigEntry, ModelInfo, RoundSummary, StatusInfo};
use std::fmt::Write;

/// `2026-11-25 20:31:05` (UTC) from unix milliseconds.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `1h02m03s`, `4.2s`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", units[u]) }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn metric(v: Option<f32>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

pub fn status(s: &StatusInfo) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "server        {} (up {})", s.server, duration(s.uptime_ms));
    let _ = writeln!(o, "agents        {} connected, {} available", s.connected, s.available);
    let _ = writeln!(o, "model         version {}", s.model_version);
    let state = match (s.running, s.paused) {
        (_, true) => "paused",
        (true, false) => "running",
        (false, false) => "stopped",
    };
    let remaining = s.remaining.map_or("no limit".into(), |r| format!("{r} to go"));
    let done = s.run_done.map_or(String::new(), |d| format!("{d} done, "));
    let _ = writeln!(o, "rounds        {state}, {done}{remaining}, next round {}", s.next_round);
    if let Some(why) = &s.storage_low {
        let _ = writeln!(o, "disk          LOW, no round will start: {why}");
    }
    match s.round {
        Some(r) => {
            let _ = writeln!(
                o,
                "round         {r}: {} — {} selected, {} reported, {} dropped{}",
                s.phase,
                s.selected,
                s.reported,
                s.dropped,
                s.deadline_in_ms.map(|d| format!(", deadline in {}", duration(d))).unwrap_or_default()
            );
        }
        None => {
            let _ = writeln!(o, "round         none in flight ({})", s.phase);
        }
    }
    if let Some(t) = s.target_accuracy {
        let _ = writeln!(o, "target        pause at test accuracy {t}");
    }
    o
}

pub fn agents(list: &[AgentInfo]) -> String {
    let mut o = format!(
        "{:<24} {:<10} {:<8} {:<20} {:<20} {}\n",
        "NAME", "STATE", "REVOKED", "FIRST SEEN", "LAST SEEN", "FINGERPRINT"
    );
    for a in list {
        let _ = writeln!(
            o,
            "{:<24} {:<10} {:<8} {:<20} {:<20} {}",
            a.name,
            if a.connected { "connected" } else { "offline" },
            if a.revoked { "REVOKED" } else { "" },
            utc(a.first_seen_ms),
            utc(a.last_seen_ms),
            a.fingerprint.as_deref().map(|f| f.get(..16).unwrap_or(f)).unwrap_or("-")
        );
    }
    o
}

pub fn config(entries: &[ConfigEntry]) -> String {
    let mut o = String::new();
    for e in entries {
        let _ = writeln!(o, "{:<28} {:<24}{}", e.key, e.value, if e.overridden { " (set by an operator)" } else { "" });
    }
    o
}

/// The history table. Beside the server's test accuracy of the version a round produced (TEST ACC) stands the
/// federated accuracy of that same version (FED ACC): measured by the agents on their held-out examples at the
/// start of the next round, which started from it. A regression run (no accuracy anywhere, only losses) shows the
/// mean squared errors instead (TEST MSE, FED MSE).
pub fn history(rounds: &[RoundSummary]) -> String {
    let regression = rounds.iter().all(|r| r.test_accuracy.is_none() && r.federated_accuracy.is_none())
        && rounds.iter().any(|r| r.test_loss.is_some() || r.federated_loss.is_some());
    type Pick = fn(&RoundSummary) -> Option<f32>;
    let (test_of, fed_of): (Pick, Pick) = if regression {
        (|r| r.test_loss, |r| r.federated_loss)
    } else {
        (|r| r.test_accuracy, |r| r.federated_accuracy)
    };
    let (test_head, fed_head, fed_name) =
        if regression { ("TEST MSE", "FED MSE", "mse") } else { ("TEST ACC", "FED ACC", "accuracy") };
    let federated: std::collections::BTreeMap<u64, f32> =
        rounds.iter().filter_map(|r| fed_of(r).map(|a| (r.evaluated_version, a))).collect();
    // A private run adds the run's ε after each round (at the δ named in the header).
    let delta = rounds.iter().find_map(|r| r.delta);
    let private = delta.map(|d| format!(" {:>10}", format!("ε@δ={d:.0e}"))).unwrap_or_default();
    let mut o = format!(
        "{:>6} {:<9} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9} {:>10} {:>8}{private}\n",
        "ROUND", "OUTCOME", "AGENTS", "DROPPED", "TRAINLOSS", test_head, fed_head, "DURATION", "BYTES", "VERSION"
    );
    for r in rounds {
        let fed = r.new_version.and_then(|v| federated.get(&v).copied());
        let epsilon = match (delta, r.epsilon) {
            (None, _) => String::new(),
            (Some(_), Some(e)) => format!(" {e:>10.4}"),
            (Some(_), None) => format!(" {:>10}", "-"),
        };
        let _ = writeln!(
            o,
            "{:>6} {:<9} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9} {:>10} {:>8}{epsilon}",
            r.round,
            if r.completed { "completed" } else { "aborted" },
            r.participants,
            r.dropouts,
            metric(r.mean_train_loss),
            metric(test_of(r)),
            metric(fed),
            duration(r.duration_ms),
            bytes(r.bytes),
            opt(r.new_version)
        );
        if let Some(why) = &r.abort_reason {
            let _ = writeln!(o, "{:>6} {why}", "");
        }
    }
    for (v, a) in federated.iter().filter(|(v, _)| !rounds.iter().any(|r| r.new_version == Some(**v))) {
        let _ = writeln!(o, "federated {fed_name} of version {v} (no round above made it): {}", metric(Some(*a)));
    }
    o
}

pub fn models(list: &[ModelInfo]) -> String {
    let mut o = format!(
        "{:>8} {:>6} {:>10} {:>10} {:<20} {}\n",
        "VERSION", "ROUND", "PARAMS", "TEST ACC", "CREATED", "WEIGHTS"
    );
    for m in list {
        let _ = writeln!(
            o,
            "{:>8} {:>6} {:>10} {:>10} {:<20} {}",
            m.version,
            opt(m.round),
            m.params,
            metric(m.test_accuracy),
            utc(m.created_ms),
            m.weights.short()
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_milliseconds_render_as_utc_calendar_time() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_764_102_665_000), "2025-11-25 20:31:05");
    }

    fn round(round: u64, test: (Option<f32>, Option<f32>), fed: (Option<f32>, Option<f32>)) -> RoundSummary {
        RoundSummary {
            round,
            completed: true,
            abort_reason: None,
            strategy: "fedavg".into(),
            selected: 2,
            participants: 2,
            dropouts: 0,
            mean_train_loss: Some(0.5),
            test_accuracy: test.0,
            test_loss: test.1,
            duration_ms: 1000,
            bytes: 10,
            examples: 10,
            new_version: Some(round),
            started_ms: 0,
            evaluated_version: round - 1,
            federated_accuracy: fed.0,
            federated_loss: fed.1,
            federated_examples: 7,
            epsilon: None,
            delta: None,
        }
    }

    #[test]
    fn the_history_puts_each_versions_federated_accuracy_beside_its_test_accuracy() {
        let rounds = [
            round(1, (Some(0.5), Some(1.0)), (None, None)),
            round(2, (Some(0.75), Some(0.6)), (Some(0.625), Some(0.9))),
        ];
        let table = history(&rounds);
        assert!(table.contains("TEST ACC") && table.contains("FED ACC"), "{table}");
        // Round 2 evaluated version 1, which round 1 made: its FED ACC sits on round 1's row.
        let row1 = table.lines().nth(1).unwrap();
        assert!(row1.contains("0.5000") && row1.contains("0.6250"), "{table}");
        assert_eq!(table.lines().count(), 3, "no version is left over: {table}");
    }

    #[test]
    fn a_private_run_shows_the_runs_epsilon_after_each_round_and_a_plain_one_shows_no_column() {
        let plain = [round(1, (Some(0.5), Some(1.0)), (None, None))];
        assert!(!history(&plain).contains('ε'));
        let mut private =
            [round(1, (Some(0.5), Some(1.0)), (None, None)), round(2, (Some(0.6), Some(0.9)), (None, None))];
        for (r, e) in private.iter_mut().zip([1.25, 1.875]) {
            r.epsilon = Some(e);
            r.delta = Some(1e-5);
        }
        let table = history(&private);
        assert!(table.lines().next().unwrap().contains("ε@δ=1e-5"), "{table}");
        assert!(table.lines().nth(1).unwrap().ends_with("1.2500"), "{table}");
        assert!(table.lines().nth(2).unwrap().ends_with("1.8750"), "{table}");
    }

    #[test]
    fn a_regression_history_shows_mean_squared_errors() {
        let rounds = [round(1, (None, Some(0.25)), (None, None)), round(2, (None, Some(0.125)), (None, Some(0.5)))];
        let table = history(&rounds);
        assert!(table.contains("TEST MSE") && table.contains("FED MSE") && !table.contains("ACC"), "{table}");
        let row1 = table.lines().nth(1).unwrap();
        assert!(row1.contains("0.2500") && row1.contains("0.5000"), "{table}");
    }

    #[test]
    fn sizes_and_durations_pick_a_readable_unit() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(duration(4200), "4.2s");
        assert_eq!(duration(3_723_000), "1h02m03s");
    }
}
