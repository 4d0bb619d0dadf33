//! `fedgectl history --format csv`: the round history as CSV for spreadsheets, one row per round with a header
//! row. Empty cells where a round has no value (an aborted round's losses and accuracy, a round without a test set).
//!
//! Pure formatting into a byte buffer: no I/O.

use fedge_shared::admin::RoundSummary;
use serde::Serialize;

/// One CSV row; the field names are the header.
#[derive(Debug, Serialize)]
struct Row<'a> {
    round: u64,
    outcome: &'static str,
    strategy: &'a str,
    selected: usize,
    participants: usize,
    dropouts: usize,
    mean_train_loss: Option<f32>,
    test_accuracy: Option<f32>,
    test_loss: Option<f32>,
    duration_ms: u64,
    update_bytes: u64,
    examples: u64,
    new_version: Option<u64>,
    started_utc: String,
    abort_reason: Option<&'a str>,
    epsilon: Option<f64>,
    delta: Option<f64>,
}

/// The history as CSV text.
pub fn history_csv(rounds: &[RoundSummary]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(vec![]);
    if rounds.is_empty() {
        // A header alone, so that a spreadsheet still gets the columns.
        w.write_record([
            "round",
            "outcome",
            "strategy",
            "selected",
            "participants",
            "dropouts",
            "mean_train_loss",
            "test_accuracy",
            "test_loss",
            "duration_ms",
            "update_bytes",
            "examples",
            "new_version",
            "started_utc",
            "abort_reason",
            "epsilon",
            "delta",
        ])?;
    }
    for r in rounds {
        w.serialize(Row {
            round: r.round,
            outcome: if r.completed { "completed" } else { "aborted" },
            strategy: &r.strategy,
            selected: r.selected,
            participants: r.participants,
            dropouts: r.dropouts,
            mean_train_loss: r.mean_train_loss,
            test_accuracy: r.test_accuracy,
            test_loss: r.test_loss,
            duration_ms: r.duration_ms,
            update_bytes: r.bytes,
            examples: r.examples,
            new_version: r.new_version,
            started_utc: super::render::utc(r.started_ms),
            abort_reason: r.abort_reason.as_deref(),
            epsilon: r.epsilon,
            delta: r.delta,
        })?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("writing CSV: {}", e.error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_per_round_under_a_header_with_empty_cells_for_missing_values_and_quoted_text() {
        let mut aborted = crate::tensorboard::tests::summary(2, false);
        aborted.abort_reason = Some("only 1 agents reported, at least 2 are needed".into());
        let text =
            String::from_utf8(history_csv(&[crate::tensorboard::tests::summary(1, true), aborted]).unwrap()).unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header[..3], ["round", "outcome", "strategy"]);
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 2);
        let col = |name: &str| header.iter().position(|h| h == name).unwrap();
        assert_eq!(&rows[0][col("test_accuracy")], "0.625");
        assert_eq!(&rows[0][col("started_utc")], "2023-11-14 22:13:30");
        assert_eq!(&rows[1][col("outcome")], "aborted");
        assert_eq!(&rows[1][col("test_accuracy")], "");
        assert_eq!(&rows[1][col("abort_reason")], "only 1 agents reported, at least 2 are needed");
        assert!(text.contains("\"only 1 agents reported, at least 2 are needed\""), "the comma makes it quoted");
        let empty = String::from_utf8(history_csv(&[]).unwrap()).unwrap();
        assert_eq!(empty.lines().next().unwrap().split(',').collect::<Vec<_>>(), header);
    }
}
