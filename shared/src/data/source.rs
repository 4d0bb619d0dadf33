//! Choosing and opening a data source: the `[data]` settings ([`SourceSpec`]: `format`, `path`, `label_column`,
//! `feature_columns`, `normalize`), the format detected from the folder when it is not named, and the `train` and
//! `test` parts opened as [`SharedExamples`].
//!
//! Layouts, in the order detection tries them:
//! - CSV: `train.csv` (and optionally `test.csv`), with a header row;
//! - NumPy: `train.npz` (and optionally `test.npz`) with arrays `x` and `y`, or `train_x.npy` and `train_y.npy`;
//! - image folders: `train/<class>/*.png|jpg` (and optionally `test/<class>/…`);
//! - IDX (MNIST's): `train-images-idx3-ubyte[.gz]` and `train-labels-idx1-ubyte[.gz]` (`t10k-…` for the test part);
//! - text: `train.txt` (and optionally `test.txt`), cut into next-character windows (`window`, `stride`).
//!
//! `path` may also be a single `.csv` or `.npz` file (a training part with no test part). This module only finds
//! files and dispatches to the loader of each format; it must never hold a format's parsing rules itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::compact::CompactDataset;
use super::csv::{CsvOptions, load_csv};
use super::error::DataError;
use super::examples::{SharedExamples, TargetKind};
use super::images::{ChannelNorm, ImageFolder, class_folders};
use super::mnist::{Split, find_idx_file, load_mnist_dir_compact};
use super::npz::{load_npy_pair, load_npz};
use super::text::{DEFAULT_WINDOW, TextWindows};

/// A data format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Npz,
    Images,
    Idx,
    Text,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Csv => "csv",
            Format::Npz => "npz",
            Format::Images => "images",
            Format::Idx => "idx",
            Format::Text => "text",
        })
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "npz" | "npy" | "numpy" => Ok(Format::Npz),
            "images" | "image" => Ok(Format::Images),
            "idx" | "mnist" => Ok(Format::Idx),
            "text" | "txt" => Ok(Format::Text),
            other => Err(format!("unknown data format {other:?}: expected csv, npz, images, idx or text")),
        }
    }
}

/// Which part of a data folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Test,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Test => "test",
        }
    }
}

/// Where the data is and how to read it (the data part of the agent's `[data]`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The format; detected from `path` when not given.
    #[serde(default)]
    pub format: Option<Format>,
    /// A data folder (or one `.csv` / `.npz` file).
    pub path: PathBuf,
    /// CSV: the label (or target) column (default `label`).
    #[serde(default)]
    pub label_column: Option<String>,
    /// CSV: the feature columns, in order (default: every other column).
    #[serde(default)]
    pub feature_columns: Option<Vec<String>>,
    /// Image folders: per-channel mean and std applied after scaling to [0, 1].
    #[serde(default)]
    pub normalize: Option<ChannelNorm>,
    /// Text: characters per example (default 80).
    #[serde(default)]
    pub window: Option<usize>,
    /// Text: characters between the starts of successive examples (default 1).
    #[serde(default)]
    pub stride: Option<usize>,
}

impl SourceSpec {
    /// A spec for `path` with every other setting at its default (format detected).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        SourceSpec { path: path.into(), ..Default::default() }
    }
}

/// The format of the data at `path`, from its files (see the module documentation for the order).
pub fn detect_format(path: &Path) -> Result<Format, DataError> {
    if path.is_file() {
        return match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => Ok(Format::Csv),
            Some("npz") => Ok(Format::Npz),
            Some("txt") => Ok(Format::Text),
            _ => Err(DataError::malformed(path, "a data file must end in .csv, .npz or .txt (or give a folder)")),
        };
    }
    if !path.is_dir() {
        return Err(DataError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such data folder"),
        });
    }
    if path.join("train.csv").is_file() {
        Ok(Format::Csv)
    } else if path.join("train.npz").is_file() || path.join("train_x.npy").is_file() {
        Ok(Format::Npz)
    } else if path.join("train").is_dir() {
        Ok(Format::Images)
    } else if find_idx_file(path, "train-labels-idx1-ubyte").is_ok() {
        Ok(Format::Idx)
    } else if path.join("train.txt").is_file() {
        Ok(Format::Text)
    } else {
        Err(DataError::malformed(
            path,
            "cannot tell the data format: expected train.csv, train.npz, a train/ folder of class folders, or \
             MNIST-style train-*-idx*-ubyte files, or train.txt (or set [data] format)",
        ))
    }
}

/// Opens one part of the data `spec` describes, reading targets as `target`; `Ok(None)` when the folder has no
/// such part (a missing test part: hold out training examples instead).
pub fn open_part(spec: &SourceSpec, part: Part, target: TargetKind) -> Result<Option<SharedExamples>, DataError> {
    let format = format_of(spec)?;
    let dir = &spec.path;
    let single_file = dir.is_file();
    if single_file && part == Part::Test {
        return Ok(None);
    }
    let file = |ext: &str| if single_file { dir.clone() } else { dir.join(format!("{}.{ext}", part.name())) };
    match format {
        Format::Csv => {
            let path = file("csv");
            if !path.is_file() && part == Part::Test {
                return Ok(None);
            }
            let opts = CsvOptions {
                label_column: spec.label_column.clone(),
                feature_columns: spec.feature_columns.clone(),
                target,
            };
            Ok(Some(Arc::new(CompactDataset::from(load_csv(&path, &opts)?))))
        }
        Format::Npz => {
            let path = file("npz");
            let (xs, ys) = (dir.join(format!("{}_x.npy", part.name())), dir.join(format!("{}_y.npy", part.name())));
            if !single_file && !path.is_file() && xs.is_file() && ys.is_file() {
                return Ok(Some(Arc::new(CompactDataset::from(load_npy_pair(&xs, &ys, target)?))));
            }
            if !path.is_file() && part == Part::Test {
                return Ok(None);
            }
            Ok(Some(Arc::new(CompactDataset::from(load_npz(&path, target)?))))
        }
        Format::Images => {
            let split = dir.join(part.name());
            if !split.is_dir() && part == Part::Test {
                return Ok(None);
            }
            if target == TargetKind::Values {
                return Err(DataError::Invalid(format!(
                    "{}: an image folder holds classes; regression needs CSV or NumPy targets",
                    dir.display()
                )));
            }
            let train = dir.join(Part::Train.name());
            let classes = class_folders(if train.is_dir() { &train } else { &split })?;
            if let TargetKind::Classes { num_classes: Some(n) } = target
                && classes.len() > n
            {
                return Err(DataError::malformed(
                    &split,
                    format!("{} class folders, but the model has {n} classes", classes.len()),
                ));
            }
            Ok(Some(Arc::new(ImageFolder::open(&split, &classes, spec.normalize.clone())?)))
        }
        Format::Text => {
            let path = file("txt");
            if !path.is_file() && part == Part::Test {
                return Ok(None);
            }
            if target == TargetKind::Values {
                return Err(DataError::Invalid(format!(
                    "{}: text holds next characters, not regression targets",
                    path.display()
                )));
            }
            let window = spec.window.unwrap_or(DEFAULT_WINDOW);
            Ok(Some(Arc::new(TextWindows::open(&path, window, spec.stride.unwrap_or(1))?)))
        }
        Format::Idx => {
            if target == TargetKind::Values {
                return Err(DataError::Invalid(format!(
                    "{}: IDX files hold classes, not regression targets",
                    dir.display()
                )));
            }
            let split = match part {
                Part::Train => Split::Train,
                Part::Test => Split::Test,
            };
            match load_mnist_dir_compact(dir, split) {
                Ok(d) => Ok(Some(Arc::new(d))),
                Err(DataError::MissingFile { .. }) if part == Part::Test => Ok(None),
                Err(e) => Err(e),
            }
        }
    }
}

/// How to read the targets of data in `format`: real values for a regression task on CSV or NumPy data (their
/// target column or `y` array), classes (below `num_classes` when known) otherwise. (Image folders and IDX files
/// hold classes only; a regression loss on them trains against one-hot class vectors.)
pub fn target_kind(format: Format, regression: bool, num_classes: Option<usize>) -> TargetKind {
    match format {
        Format::Csv | Format::Npz if regression => TargetKind::Values,
        _ => TargetKind::Classes { num_classes },
    }
}

/// The format of `spec`: the one it names, or the one detected from its path.
pub fn format_of(spec: &SourceSpec) -> Result<Format, DataError> {
    match spec.format {
        Some(f) => Ok(f),
        None => detect_format(&spec.path),
    }
}
