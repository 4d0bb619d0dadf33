//! Numeric CSV data sets: one row per example, one column holding the class label, every other column a feature.
//!
//! Fields are separated by commas (surrounding spaces ignored); quoted fields are not supported, as numeric data
//! has no need of them. Blank lines are skipped. This module must never guess: a row with the wrong number of
//! fields, a feature that is not a finite number or a label that is not a class index is an error naming the file
//! and the line.

use super::dataset::Dataset;
use super::error::DataError;
use std::path::Path;

/// How to read a CSV file.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvOptions {
    /// Index of the label column (0 = first; use [`CsvOptions::last_column`] for the last).
    pub label_column: LabelColumn,
    /// True when the first non-blank line is a header to skip.
    pub has_header: bool,
    /// The number of classes; `None` takes the largest label + 1.
    pub num_classes: Option<usize>,
}

/// Where the label is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelColumn {
    Index(usize),
    Last,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions { label_column: LabelColumn::Index(0), has_header: false, num_classes: None }
    }
}

impl CsvOptions {
    /// The label is the last column.
    pub fn last_column() -> Self {
        CsvOptions { label_column: LabelColumn::Last, ..Default::default() }
    }
}

/// Reads a CSV file.
pub fn load_csv(path: &Path, opts: &CsvOptions) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    parse_csv(&text, path, opts)
}

/// Parses CSV text; `path` only names the source in errors.
pub fn parse_csv(text: &str, path: &Path, opts: &CsvOptions) -> Result<Dataset, DataError> {
    let err = |line: usize, problem: String| DataError::Csv { path: path.to_path_buf(), line, problem };
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut width: Option<usize> = None;
    let mut header_pending = opts.has_header;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if header_pending {
            header_pending = false;
            continue;
        }
        let fields: Vec<&str> = raw.split(',').map(str::trim).collect();
        match width {
            None => {
                if fields.len() < 2 {
                    return Err(err(line, "a row needs a label and at least one feature".into()));
                }
                width = Some(fields.len());
            }
            Some(w) if w != fields.len() => {
                return Err(err(line, format!("{} fields, but the first row has {w}", fields.len())));
            }
            Some(_) => {}
        }
        let label_at = match opts.label_column {
            LabelColumn::Index(k) if k < fields.len() => k,
            LabelColumn::Index(k) => return Err(err(line, format!("no label column {k} in {} fields", fields.len()))),
            LabelColumn::Last => fields.len() - 1,
        };
        for (k, f) in fields.iter().enumerate() {
            if k == label_at {
                let l: u32 = f.parse().map_err(|_| err(line, format!("label {f:?} is not a non-negative integer")))?;
                if let Some(n) = opts.num_classes
                    && l as usize >= n
                {
                    return Err(err(line, format!("label {l} is not below the {n} classes")));
                }
                labels.push(l);
            } else {
                let v: f32 = f.parse().map_err(|_| err(line, format!("field {} ({f:?}) is not a number", k + 1)))?;
                if !v.is_finite() {
                    return Err(err(line, format!("field {} is not finite", k + 1)));
                }
                features.push(v);
            }
        }
    }
    let Some(width) = width else {
        return Err(DataError::malformed(path, "no data rows"));
    };
    let num_classes = opts.num_classes.unwrap_or_else(|| labels.iter().max().map_or(0, |&m| m as usize + 1));
    Dataset::new(features, labels, vec![width - 1], num_classes)
}
