//! MNIST-style folders: an images IDX file and a labels IDX file per split, gzip-compressed or not.
//!
//! `load_mnist_dir` looks for `train-images-idx3-ubyte[.gz]` / `train-labels-idx1-ubyte[.gz]` (or the `t10k-`
//! pair) in a folder; `load_digits_dir` for `digits-images-idx3-ubyte[.gz]` / `digits-labels-idx1-ubyte[.gz]`
//! (the 8x8 UCI digits, values 0-16). This module must never accept an image file and a label file that disagree
//! on the number of examples, nor a label outside the task's classes.

use super::compact::CompactDataset;
use super::dataset::Dataset;
use super::error::DataError;
use super::idx::{IdxArray, read_idx};
use super::normalize::Normalization;
use std::path::{Path, PathBuf};

/// Which half of an MNIST-style folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `train-*` files.
    Train,
    /// `t10k-*` files (the held-out test set).
    Test,
}

impl Split {
    /// The file-name prefix of the split.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Finds `name` or `name.gz` in `dir`.
pub fn find_idx_file(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(DataError::MissingFile { dir: dir.to_path_buf(), name: name.to_string() })
}

/// Loads an images file (`N x ...` bytes) and a labels file (`N` bytes) as one data set with `num_classes`
/// classes, normalising the pixels with `norm`.
pub fn load_idx_pair(
    images: &Path,
    labels: &Path,
    norm: Normalization,
    num_classes: usize,
) -> Result<Dataset, DataError> {
    let (img, lab) = read_idx_pair(images, labels, norm, num_classes)?;
    let features = norm.bytes_to_f32(&img.data);
    let labels_u32 = lab.data.iter().map(|&l| l as u32).collect();
    Dataset::new(features, labels_u32, img.dims[1..].to_vec(), num_classes)
}

/// [`load_idx_pair`] keeping the pixels as bytes: a [`CompactDataset`] whose palette is `norm`'s byte table, so
/// its examples are bit for bit those of [`load_idx_pair`], in a quarter of the memory.
pub fn load_idx_pair_compact(
    images: &Path,
    labels: &Path,
    norm: Normalization,
    num_classes: usize,
) -> Result<CompactDataset, DataError> {
    let (img, lab) = read_idx_pair(images, labels, norm, num_classes)?;
    let labels_u32 = lab.data.iter().map(|&l| l as u32).collect();
    CompactDataset::from_codes(img.data, norm.byte_table().to_vec(), labels_u32, img.dims[1..].to_vec(), num_classes)
}

/// Reads and cross-checks an images file and a labels file.
fn read_idx_pair(
    images: &Path,
    labels: &Path,
    norm: Normalization,
    num_classes: usize,
) -> Result<(IdxArray, IdxArray), DataError> {
    if !norm.is_valid() {
        return Err(DataError::Invalid(format!("normalisation {norm:?} divides by zero or is not finite")));
    }
    let img = read_idx(images)?;
    let lab = read_idx(labels)?;
    if img.dims.len() < 2 {
        return Err(DataError::malformed(
            images,
            format!(
                "an images file needs at least 2 dimensions (count, then the example's shape), found {:?}",
                img.dims
            ),
        ));
    }
    if lab.dims.len() != 1 {
        return Err(DataError::malformed(
            labels,
            format!("a labels file has exactly 1 dimension, found {:?}", lab.dims),
        ));
    }
    if img.dims[0] != lab.dims[0] {
        return Err(DataError::CountMismatch {
            path: images.to_path_buf(),
            images: img.dims[0],
            labels: labels.to_path_buf(),
            label_count: lab.dims[0],
        });
    }
    if img.dims[1..].contains(&0) {
        return Err(DataError::malformed(images, format!("an example of shape {:?} is empty", &img.dims[1..])));
    }
    if let Some((i, &l)) = lab.data.iter().enumerate().find(|&(_, &l)| l as usize >= num_classes) {
        return Err(DataError::malformed(labels, format!("label {l} of example {i} is not below {num_classes}")));
    }
    Ok((img, lab))
}

/// Loads one split of an MNIST-style folder (10 classes, MNIST normalisation).
pub fn load_mnist_dir(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let p = split.prefix();
    let images = find_idx_file(dir, &format!("{p}-images-idx3-ubyte"))?;
    let labels = find_idx_file(dir, &format!("{p}-labels-idx1-ubyte"))?;
    load_idx_pair(&images, &labels, Normalization::MNIST, 10)
}

/// [`load_mnist_dir`] keeping the pixels as bytes (see [`load_idx_pair_compact`]).
pub fn load_mnist_dir_compact(dir: &Path, split: Split) -> Result<CompactDataset, DataError> {
    let p = split.prefix();
    let images = find_idx_file(dir, &format!("{p}-images-idx3-ubyte"))?;
    let labels = find_idx_file(dir, &format!("{p}-labels-idx1-ubyte"))?;
    load_idx_pair_compact(&images, &labels, Normalization::MNIST, 10)
}

/// Loads the 8x8 digits set from its folder (10 classes, 0-16 brought to 0-1).
pub fn load_digits_dir(dir: &Path) -> Result<Dataset, DataError> {
    let images = find_idx_file(dir, "digits-images-idx3-ubyte")?;
    let labels = find_idx_file(dir, "digits-labels-idx1-ubyte")?;
    load_idx_pair(&images, &labels, Normalization::DIGITS, 10)
}
