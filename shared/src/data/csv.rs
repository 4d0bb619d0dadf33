//! CSV data sets with a header row: one row per example, a label (or regression target) column, feature columns.
//!
//! The label is the column named `label` unless [`CsvOptions::label_column`] names another; the features are every
//! other column, in file order, unless [`CsvOptions::feature_columns`] lists them (in that order). Parsing is the
//! `csv` crate's (quoted fields, CRLF line ends; surrounding spaces trimmed). This module must never guess: a row
//! with the wrong number of fields, an empty or non-numeric cell, a non-finite value, a label that is not a class
//! index below the class count is an error naming the file, the line, the column and what was expected.

use super::dataset::Dataset;
use super::error::DataError;
use super::examples::TargetKind;
use std::io::Read;
use std::path::Path;

/// The default name of the label column.
pub const LABEL_COLUMN: &str = "label";

/// How to read a CSV file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CsvOptions {
    /// The label (or target) column; `None` means [`LABEL_COLUMN`].
    pub label_column: Option<String>,
    /// The feature columns, in order; `None` means every column but the label's.
    pub feature_columns: Option<Vec<String>>,
    /// Class indices or regression targets.
    pub target: TargetKind,
}

/// Reads a CSV file.
pub fn load_csv(path: &Path, opts: &CsvOptions) -> Result<Dataset, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    read_csv(std::io::BufReader::new(file), path, opts)
}

/// Parses CSV bytes; `path` only names the source in errors.
pub fn parse_csv(bytes: &[u8], path: &Path, opts: &CsvOptions) -> Result<Dataset, DataError> {
    read_csv(bytes, path, opts)
}

/// Reads CSV from any reader; `path` only names the source in errors.
pub fn read_csv<R: Read>(reader: R, path: &Path, opts: &CsvOptions) -> Result<Dataset, DataError> {
    let err = |line: u64, problem: String| DataError::Csv { path: path.to_path_buf(), line: line as usize, problem };
    let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(reader);
    let header: Vec<String> = rdr
        .headers()
        .map_err(|e| err(e.position().map_or(1, |p| p.line()), format!("cannot read the header row: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    if header.iter().all(|h| h.is_empty()) {
        return Err(err(1, "the file is empty: expected a header row naming the columns".into()));
    }
    let column = |name: &str| -> Result<usize, DataError> {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| err(1, format!("the header has no column named {name:?} (columns: {})", header.join(", "))))
    };
    let label_name = opts.label_column.as_deref().unwrap_or(LABEL_COLUMN);
    let label_at = column(label_name)?;
    let feature_at: Vec<usize> = match &opts.feature_columns {
        Some(names) => names.iter().map(|n| column(n)).collect::<Result<_, _>>()?,
        None => (0..header.len()).filter(|&k| k != label_at).collect(),
    };
    if feature_at.is_empty() {
        return Err(err(1, format!("no feature columns: the header has only the label column {label_name:?}")));
    }
    if let Some(&k) = feature_at.iter().find(|&&k| k == label_at) {
        return Err(err(1, format!("column {:?} is both the label and a feature", header[k])));
    }
    let width = header.len();
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut targets = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let more = rdr
            .read_record(&mut record)
            .map_err(|e| err(e.position().map_or(0, |p| p.line()), format!("unreadable row: {e}")))?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line());
        if record.len() == 1 && record.get(0) == Some("") {
            continue; // a blank line
        }
        if record.len() != width {
            return Err(err(line, format!("{} fields, but the header names {width} columns", record.len())));
        }
        let cell = |k: usize| record.get(k).unwrap_or("");
        let number = |k: usize| -> Result<f32, DataError> {
            let f = cell(k);
            let name = header.get(k).map_or("", String::as_str);
            if f.is_empty() {
                return Err(err(line, format!("column {name:?} is empty: expected a number")));
            }
            let v: f32 = f.parse().map_err(|_| err(line, format!("column {name:?}: {f:?} is not a number")))?;
            if !v.is_finite() {
                return Err(err(line, format!("column {name:?}: {f:?} is not a finite number")));
            }
            Ok(v)
        };
        for &k in &feature_at {
            features.push(number(k)?);
        }
        match opts.target {
            TargetKind::Values => targets.push(number(label_at)?),
            TargetKind::Classes { num_classes } => {
                let f = cell(label_at);
                if f.is_empty() {
                    return Err(err(line, format!("column {label_name:?} is empty: expected a class index")));
                }
                let l: u32 = f.parse().map_err(|_| {
                    err(line, format!("column {label_name:?}: {f:?} is not a class index (a non-negative integer)"))
                })?;
                if let Some(n) = num_classes
                    && l as usize >= n
                {
                    return Err(err(
                        line,
                        format!("column {label_name:?}: class {l} is out of range: the model has {n} classes (0..{n})"),
                    ));
                }
                labels.push(l);
            }
        }
    }
    let shape = vec![feature_at.len()];
    match opts.target {
        TargetKind::Values => {
            if targets.is_empty() {
                return Err(DataError::malformed(path, "no data rows after the header"));
            }
            Dataset::regression(features, targets, shape, 1)
        }
        TargetKind::Classes { num_classes } => {
            if labels.is_empty() {
                return Err(DataError::malformed(path, "no data rows after the header"));
            }
            let n = num_classes.unwrap_or_else(|| labels.iter().max().map_or(0, |&m| m as usize + 1));
            Dataset::new(features, labels, shape, n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, opts: &CsvOptions) -> Result<Dataset, DataError> {
        parse_csv(text.as_bytes(), Path::new("d.csv"), opts)
    }

    #[test]
    fn named_columns_pick_the_label_and_the_features_in_the_listed_order() {
        let opts = CsvOptions {
            label_column: Some("y".into()),
            feature_columns: Some(vec!["c".into(), "a".into()]),
            ..Default::default()
        };
        let d = parse("a,y,b,c\n1,2,3,4\n5,0,7,8\n", &opts).unwrap();
        assert_eq!(d.features, vec![4.0, 1.0, 8.0, 5.0]);
        assert_eq!(d.labels, vec![2, 0]);
        assert_eq!(d.num_classes, 3);
    }

    #[test]
    fn quoted_fields_crlf_and_blank_lines_are_read() {
        let d = parse("\"x\",label\r\n\"1.5\", 1\r\n\r\n2,0\r\n", &CsvOptions::default()).unwrap();
        assert_eq!(d.features, vec![1.5, 2.0]);
        assert_eq!(d.labels, vec![1, 0]);
    }

    #[test]
    fn every_bad_cell_is_named_by_line_and_column() {
        let opts = CsvOptions { target: TargetKind::Classes { num_classes: Some(3) }, ..Default::default() };
        let cases = [
            ("a,label\n1,0\n,1\n", "line 3", "\"a\" is empty"),
            ("a,label\n1,0\nx,1\n", "line 3", "\"x\" is not a number"),
            ("a,label\n1,0\n1,2,3\n", "line 3", "3 fields"),
            ("a,label\n1,7\n", "line 2", "class 7 is out of range"),
            ("a,label\n1,-1\n", "line 2", "not a class index"),
            ("a,b\n1,2\n", "line 1", "no column named \"label\""),
            ("a,label\n1,inf\n", "line 2", "not a class index"),
            ("a,label\nNaN,1\n", "line 2", "not a finite number"),
        ];
        for (text, line, what) in cases {
            let e = parse(text, &opts).unwrap_err().to_string();
            assert!(e.contains("d.csv") && e.contains(line) && e.contains(what), "{text:?}: {e}");
        }
        assert!(parse("a,label\n", &opts).unwrap_err().to_string().contains("no data rows"));
        assert!(parse("", &opts).is_err());
    }

    #[test]
    fn a_regression_target_column_reads_real_values() {
        let opts = CsvOptions { target: TargetKind::Values, ..Default::default() };
        let d = parse("a,b,label\n1,2,0.25\n3,4,-1.5\n", &opts).unwrap();
        assert_eq!(
            (d.targets.clone(), d.target_len, d.features.clone()),
            (vec![0.25, -1.5], 1, vec![1.0, 2.0, 3.0, 4.0])
        );
        assert!(d.labels.is_empty());
    }
}
