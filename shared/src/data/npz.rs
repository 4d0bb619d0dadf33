//! NumPy data sets: a `.npz` archive with arrays `x` and `y` (or a pair of `.npy` files), read with `npyz`
//! (the array format) and `zip` (the archive).
//!
//! `x` holds `float32` features or `int64` token ids, of any shape `[N, ...]` (one example per row); `y` holds
//! `int64` class indices (`[N]` or `[N, 1]`) or `float32` regression targets (`[N]` or `[N, k]`). Token ids are
//! carried to the model as `f32` values, so each must lie in `0..2^24` (where `f32` is exact). This module must
//! never trust a header: an array is read only if its shape, dtype and C order are what is expected and its size is
//! bounded, and every problem is an error naming the file, the array and what was expected.

use std::io::{Read, Seek};
use std::path::Path;

use npyz::{DType, NpyFile, Order, TypeChar};

use super::dataset::Dataset;
use super::error::DataError;
use super::examples::TargetKind;

/// The largest array accepted (1 GiB of values).
pub const MAX_ARRAY_BYTES: u64 = 1 << 30;
/// Token ids must be below this to be carried exactly by an `f32` input.
pub const MAX_TOKEN_ID: i64 = 1 << 24;

/// The values of an array, in its own element type.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One array: its shape and values (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub values: Values,
}

/// Reads one `.npy` array of `float32` or `int64` values from `reader`; `path` and `name` only name it in errors.
pub fn read_npy<R: Read>(reader: R, path: &Path, name: &str) -> Result<NpyArray, DataError> {
    let bad = |problem: String| DataError::malformed(path, format!("array {name:?}: {problem}"));
    let npy = NpyFile::new(reader).map_err(|e| bad(format!("not a NumPy .npy array: {e}")))?;
    if npy.order() != Order::C {
        return Err(bad(
            "stored in Fortran order: expected C (row-major) order, as numpy.save writes by default".into()
        ));
    }
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("dimension {d} is too large"))))
        .collect::<Result<_, _>>()?;
    let count = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
    let Some(count) = count.filter(|&c| c.saturating_mul(8) <= MAX_ARRAY_BYTES) else {
        return Err(bad(format!("shape {shape:?} is larger than {MAX_ARRAY_BYTES} bytes")));
    };
    let DType::Plain(ts) = npy.dtype() else {
        return Err(bad("a structured dtype: expected float32 or int64 values".into()));
    };
    let kind = (ts.type_char(), ts.size_field());
    let read_err = |e: std::io::Error| bad(format!("truncated or unreadable data for shape {shape:?}: {e}"));
    let values = match kind {
        (TypeChar::Float, 4) => {
            Values::F32(collect(npy.data::<f32>().map_err(|e| bad(e.to_string()))?, count).map_err(read_err)?)
        }
        (TypeChar::Int, 8) => {
            Values::I64(collect(npy.data::<i64>().map_err(|e| bad(e.to_string()))?, count).map_err(read_err)?)
        }
        _ => return Err(bad(format!("dtype {ts} is not supported: expected float32 (<f4) or int64 (<i8)"))),
    };
    Ok(NpyArray { shape, values })
}

/// Collects exactly `count` values, reserving no more than what the data really holds as it goes.
fn collect<T, I: Iterator<Item = std::io::Result<T>>>(it: I, count: u64) -> std::io::Result<Vec<T>> {
    let mut out = Vec::with_capacity(count.min(1 << 16) as usize);
    for v in it {
        out.push(v?);
    }
    if out.len() as u64 != count {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "fewer values than the shape announces"));
    }
    Ok(out)
}

/// Parses the bytes of one `.npy` file (for tests and fuzzing).
pub fn parse_npy(bytes: &[u8], path: &Path, name: &str) -> Result<NpyArray, DataError> {
    read_npy(bytes, path, name)
}

/// Reads the arrays `x` and `y` of a `.npz` archive.
pub fn read_npz<R: Read + Seek>(reader: R, path: &Path) -> Result<(NpyArray, NpyArray), DataError> {
    let mut zip = zip::ZipArchive::new(reader)
        .map_err(|e| DataError::malformed(path, format!("not a .npz (zip) archive: {e}")))?;
    let mut get = |name: &str| -> Result<NpyArray, DataError> {
        let entry = format!("{name}.npy");
        let file = zip.by_name(&entry).map_err(|e| {
            DataError::malformed(
                path,
                format!("no array {name:?} ({entry}) in the archive: {e}; expected arrays x and y"),
            )
        })?;
        read_npy(file.take(MAX_ARRAY_BYTES + 4096), path, name)
    };
    let x = get("x")?;
    let y = get("y")?;
    Ok((x, y))
}

/// Loads a `.npz` data set with targets read as `target`.
pub fn load_npz(path: &Path, target: TargetKind) -> Result<Dataset, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let (x, y) = read_npz(std::io::BufReader::new(file), path)?;
    dataset_from_arrays(x, y, path, target)
}

/// Parses `.npz` bytes (for tests and fuzzing).
pub fn parse_npz(bytes: &[u8], path: &Path, target: TargetKind) -> Result<Dataset, DataError> {
    let (x, y) = read_npz(std::io::Cursor::new(bytes), path)?;
    dataset_from_arrays(x, y, path, target)
}

/// Loads a pair of `.npy` files (`x` and `y`).
pub fn load_npy_pair(x_path: &Path, y_path: &Path, target: TargetKind) -> Result<Dataset, DataError> {
    let open = |p: &Path| {
        std::fs::File::open(p)
            .map(std::io::BufReader::new)
            .map_err(|source| DataError::Io { path: p.to_path_buf(), source })
    };
    let x = read_npy(open(x_path)?, x_path, "x")?;
    let y = read_npy(open(y_path)?, y_path, "y")?;
    dataset_from_arrays(x, y, y_path, target)
}

/// Checks `x` and `y` against each other and the task, and makes the data set.
pub fn dataset_from_arrays(x: NpyArray, y: NpyArray, path: &Path, target: TargetKind) -> Result<Dataset, DataError> {
    let bad = |problem: String| DataError::malformed(path, problem);
    let Some((&n, rest)) = x.shape.split_first() else {
        return Err(bad("array \"x\" is a scalar: expected shape [examples, ...]".into()));
    };
    if n == 0 {
        return Err(bad("array \"x\" holds no examples".into()));
    }
    let example_shape = if rest.is_empty() { vec![1] } else { rest.to_vec() };
    if example_shape.contains(&0) {
        return Err(bad(format!("array \"x\" has shape {:?}: an example holds no values", x.shape)));
    }
    if y.shape.first() != Some(&n) {
        return Err(bad(format!(
            "array \"y\" has shape {:?}, but \"x\" holds {n} examples: expected [{n}] or [{n}, k]",
            y.shape
        )));
    }
    let features = match x.values {
        Values::F32(v) => {
            if let Some(i) = v.iter().position(|f| !f.is_finite()) {
                return Err(bad(format!("array \"x\", entry {i}: {} is not a finite number", v[i])));
            }
            v
        }
        Values::I64(v) => {
            if let Some(i) = v.iter().position(|&t| !(0..MAX_TOKEN_ID).contains(&t)) {
                return Err(bad(format!(
                    "array \"x\", entry {i}: token id {} is out of range: expected 0..{MAX_TOKEN_ID} (ids beyond are \
                     not exact as the model's float input)",
                    v[i]
                )));
            }
            v.into_iter().map(|t| t as f32).collect()
        }
    };
    let per_example: usize = y.shape[1..].iter().product();
    match (target, y.values) {
        (TargetKind::Classes { num_classes }, Values::I64(v)) => {
            if per_example != 1 {
                return Err(bad(format!("array \"y\" has shape {:?}: class indices need [{n}] or [{n}, 1]", y.shape)));
            }
            let mut labels = Vec::with_capacity(v.len());
            for (i, &l) in v.iter().enumerate() {
                let ok = u32::try_from(l).ok().filter(|&l| num_classes.is_none_or(|c| (l as usize) < c));
                let Some(l) = ok else {
                    let range =
                        num_classes.map_or("a non-negative class index".to_string(), |c| format!("a class in 0..{c}"));
                    return Err(bad(format!("array \"y\", entry {i}: {l} is out of range: expected {range}")));
                };
                labels.push(l);
            }
            let classes = num_classes.unwrap_or_else(|| labels.iter().max().map_or(0, |&m| m as usize + 1));
            Dataset::new(features, labels, example_shape, classes)
        }
        (TargetKind::Values, Values::F32(v)) => {
            if let Some(i) = v.iter().position(|f| !f.is_finite()) {
                return Err(bad(format!("array \"y\", entry {i}: {} is not a finite number", v[i])));
            }
            Dataset::regression(features, v, example_shape, per_example.max(1))
        }
        (TargetKind::Classes { .. }, Values::F32(_)) => Err(bad(
            "array \"y\" holds float32 targets, but the task is classification: store int64 class indices, or train \
             with the mse loss for regression"
                .into(),
        )),
        (TargetKind::Values, Values::I64(_)) => {
            Err(bad("array \"y\" holds int64 classes, but the loss is mse (regression): store float32 targets".into()))
        }
    }
}
