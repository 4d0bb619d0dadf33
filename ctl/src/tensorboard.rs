//! `fedgectl history --tensorboard DIR`: the run's per-round metrics as a TensorBoard event file in DIR, named
//! `events.out.tfevents.<unix seconds>.<host>` like TensorFlow's, one step per round (the round id), at the wall
//! time the round ended.
//!
//! Scalars: `round/completed` (1 or 0), `round/participants`, `round/dropouts`, `round/duration_seconds`,
//! `round/update_bytes` and `round/examples` for every round; `train/loss`, `test/accuracy` and `test/loss` for the
//! completed rounds that have them. The file is written whole or not at all (`ctl::atomic`); DIR is created if
//! missing; nothing else in DIR is touched.

use super::tfevents::{self, Event};
use anyhow::{Context, bail};
use fedge_shared::admin::RoundSummary;
use std::path::{Path, PathBuf};

/// The scalars of one round, as `(tag, value)`.
pub fn round_scalars(r: &RoundSummary) -> Vec<(&'static str, f32)> {
    let mut s = vec![
        ("round/completed", if r.completed { 1.0 } else { 0.0 }),
        ("round/participants", r.participants as f32),
        ("round/dropouts", r.dropouts as f32),
        ("round/duration_seconds", r.duration_ms as f32 / 1000.0),
        ("round/update_bytes", r.bytes as f32),
        ("round/examples", r.examples as f32),
    ];
    if r.completed {
        let metrics =
            [("train/loss", r.mean_train_loss), ("test/accuracy", r.test_accuracy), ("test/loss", r.test_loss)];
        s.extend(metrics.into_iter().filter_map(|(t, v)| v.filter(|v| v.is_finite()).map(|v| (t, v))));
    }
    s
}

/// The events of a history: one per round, stepped by round id, timed at the round's end.
pub fn events(rounds: &[RoundSummary]) -> Vec<Event> {
    rounds
        .iter()
        .map(|r| {
            let ended_s = r.started_ms.saturating_add(r.duration_ms) as f64 / 1000.0;
            let step = i64::try_from(r.round).unwrap_or(i64::MAX);
            tfevents::scalars_event(ended_s, step, &round_scalars(r))
        })
        .collect()
}

/// TensorFlow's file name: `events.out.tfevents.<unix seconds>.<host>`.
pub fn file_name(unix_secs: u64, host: &str) -> String {
    let host: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    format!("events.out.tfevents.{unix_secs}.{}", if host.is_empty() { "localhost" } else { &host })
}

/// This machine's host name (`localhost` when it cannot be read).
pub fn host_name() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().trim().to_string();
    if name.is_empty() { "localhost".into() } else { name }
}

/// Writes the history's event file into `dir` (created if missing) and returns its path. Refuses an empty history
/// (no file is written).
pub fn write_history(rounds: &[RoundSummary], dir: &Path, unix_secs: u64, host: &str) -> anyhow::Result<PathBuf> {
    if rounds.is_empty() {
        bail!("the server has no rounds yet: no TensorBoard events to write");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(file_name(unix_secs, host));
    let bytes = tfevents::event_file(unix_secs as f64, &events(rounds));
    super::atomic::write_file(&path, &bytes)?;
    Ok(path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prost::Message;

    pub(crate) fn summary(round: u64, completed: bool) -> RoundSummary {
        RoundSummary {
            round,
            completed,
            abort_reason: (!completed).then(|| "too few reports".into()),
            strategy: "fedavg".into(),
            selected: 3,
            participants: if completed { 3 } else { 1 },
            dropouts: if completed { 0 } else { 2 },
            mean_train_loss: completed.then_some(1.0 / round as f32),
            test_accuracy: completed.then_some(0.5 + round as f32 / 8.0),
            test_loss: completed.then_some(2.0 / round as f32),
            duration_ms: 1500,
            bytes: 4096,
            examples: 300,
            new_version: completed.then_some(round),
            started_ms: 1_700_000_000_000 + round * 10_000,
            evaluated_version: round - 1,
            federated_accuracy: None,
            federated_loss: None,
            federated_examples: 0,
            epsilon: None,
            delta: None,
        }
    }

    fn scalars(e: &Event) -> Vec<(String, f32)> {
        match &e.what {
            Some(tfevents::event::What::Summary(s)) => {
                s.value.iter().map(|v| (v.tag.clone(), v.simple_value.unwrap_or(f32::NAN))).collect()
            }
            other => panic!("not a summary: {other:?}"),
        }
    }

    #[test]
    fn each_round_is_a_step_with_its_numbers_and_only_completed_rounds_carry_model_metrics() {
        let file = tfevents::event_file(1.0, &events(&[summary(1, true), summary(2, false)]));
        let records = tfevents::read_records(&file).unwrap();
        let events: Vec<Event> = records.iter().map(|r| Event::decode(*r).unwrap()).collect();
        assert_eq!(events.len(), 3, "the version event and one per round");
        assert_eq!((events[1].step, events[1].wall_time), (1, 1_700_000_011.5));
        let first = scalars(&events[1]);
        assert!(first.contains(&("test/accuracy".into(), 0.625)) && first.contains(&("train/loss".into(), 1.0)));
        assert!(
            first.contains(&("round/duration_seconds".into(), 1.5)) && first.contains(&("round/completed".into(), 1.0))
        );
        let second = scalars(&events[2]);
        assert_eq!(events[2].step, 2);
        assert!(second.contains(&("round/dropouts".into(), 2.0)) && second.contains(&("round/completed".into(), 0.0)));
        assert!(second.iter().all(|(t, _)| !t.starts_with("test/") && !t.starts_with("train/")), "{second:?}");
    }

    #[test]
    fn the_file_is_named_like_tensorflows_and_an_empty_history_writes_nothing() {
        assert_eq!(file_name(1_700_000_000, "pi-4.local"), "events.out.tfevents.1700000000.pi-4.local");
        assert_eq!(file_name(5, "a/b c"), "events.out.tfevents.5.a_b_c");
        assert!(!host_name().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        assert!(write_history(&[], &runs, 5, "h").unwrap_err().to_string().contains("no rounds"));
        assert!(!runs.exists());
        let path = write_history(&[summary(1, true)], &runs, 5, "h").unwrap();
        assert_eq!(path, runs.join("events.out.tfevents.5.h"));
        assert_eq!(tfevents::read_records(&std::fs::read(&path).unwrap()).unwrap().len(), 2);
    }
}
