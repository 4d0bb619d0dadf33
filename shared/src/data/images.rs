//! Image folders: `train/<class>/*.png|jpg|jpeg` (and `test/<class>/…`), one folder per class, decoded lazily.
//!
//! Opening a folder lists its files only (class indices are the class folders' names in sorted order, the same for
//! `train/` and `test/`); every image is decoded when a batch asks for it, converted to grayscale or RGB as the
//! model's input has 1 or 3 channels, resized to the model's height and width, scaled to [0, 1], then optionally
//! standardised per channel. So a folder larger than memory trains: what stays in memory is the file names (one
//! string arena) and a label per image. Files with other extensions are not examples and are skipped. This module
//! must never panic on an image's content: a corrupt, empty or over-large image is an error naming the file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::imageops::FilterType;

use super::error::DataError;
use super::examples::{Batch, Examples, Task};

/// The largest width or height an image may declare (larger: refused before decoding).
pub const MAX_SIDE: u32 = 16_384;

/// Per-channel standardisation after scaling to [0, 1]: `(x - mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelNorm {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl ChannelNorm {
    /// Checks the lists against `channels` (one value each, or one value for all) and that every std is positive.
    pub fn check(&self, channels: usize) -> Result<(), DataError> {
        for (what, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != channels && v.len() != 1 {
                return Err(DataError::Invalid(format!(
                    "normalize.{what} has {} values, the model's input has {channels} channels",
                    v.len()
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(DataError::Invalid(format!("normalize.{what} holds a non-finite value")));
            }
        }
        if self.std.iter().any(|&s| s <= 0.0) {
            return Err(DataError::Invalid("normalize.std must be positive".into()));
        }
        Ok(())
    }

    fn of(&self, c: usize) -> (f32, f32) {
        let pick = |v: &[f32]| v.get(c).or(v.first()).copied().unwrap_or(0.0);
        (pick(&self.mean), pick(&self.std).max(f32::MIN_POSITIVE))
    }
}

/// The shape images are decoded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ImageShape {
    channels: usize,
    height: u32,
    width: u32,
}

/// A folder of images, one sub-folder per class, read lazily.
#[derive(Debug)]
pub struct ImageFolder {
    root: PathBuf,
    /// Every image's path relative to `root`, concatenated; image `i` is `names[ends[i-1]..ends[i]]`.
    names: String,
    ends: Vec<usize>,
    labels: Vec<u32>,
    classes: Vec<String>,
    normalize: Option<ChannelNorm>,
    shape: OnceLock<ImageShape>,
    example_shape: OnceLock<Vec<usize>>,
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        let e = e.to_ascii_lowercase();
        e == "png" || e == "jpg" || e == "jpeg"
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

/// The class names of an image folder split: its sub-folders, sorted by name.
pub fn class_folders(split: &Path) -> Result<Vec<String>, DataError> {
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(split).map_err(io(split))? {
        let entry = entry.map_err(io(split))?;
        if entry.file_type().map_err(io(&entry.path()))?.is_dir() {
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| DataError::malformed(split, format!("class folder {n:?} is not a UTF-8 name")))?;
            if !name.starts_with('.') {
                classes.push(name);
            }
        }
    }
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::malformed(split, "no class folders: expected one sub-folder of images per class"));
    }
    Ok(classes)
}

impl ImageFolder {
    /// Lists `split` (e.g. `DIR/train`), whose sub-folders are named by `classes` (class `k` is `classes[k]`; a
    /// sub-folder not in the list is an error). The input shape is set later, from the model.
    pub fn open(split: &Path, classes: &[String], normalize: Option<ChannelNorm>) -> Result<Self, DataError> {
        let found = class_folders(split)?;
        if let Some(extra) = found.iter().find(|f| !classes.contains(f)) {
            return Err(DataError::malformed(
                split,
                format!("class folder {extra:?} is not one of the training classes {classes:?}"),
            ));
        }
        let (mut names, mut ends, mut labels) = (String::new(), Vec::new(), Vec::new());
        for (k, class) in classes.iter().enumerate() {
            let dir = split.join(class);
            if !dir.is_dir() {
                continue;
            }
            let mut files: Vec<String> = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
                let entry = entry.map_err(io(&dir))?;
                let p = entry.path();
                if is_image(&p) && entry.file_type().map_err(io(&p))?.is_file() {
                    let name = entry
                        .file_name()
                        .into_string()
                        .map_err(|n| DataError::malformed(&dir, format!("file {n:?} is not a UTF-8 name")))?;
                    files.push(name);
                }
            }
            files.sort();
            for f in files {
                names.push_str(class);
                names.push('/');
                names.push_str(&f);
                ends.push(names.len());
                labels.push(k as u32);
            }
        }
        if labels.is_empty() {
            return Err(DataError::malformed(split, "no .png or .jpg images in the class folders"));
        }
        names.shrink_to_fit();
        Ok(ImageFolder {
            root: split.to_path_buf(),
            names,
            ends,
            labels,
            classes: classes.to_vec(),
            normalize,
            shape: OnceLock::new(),
            example_shape: OnceLock::new(),
        })
    }

    /// The class names, in class-index order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The path of image `i`.
    pub fn path(&self, i: usize) -> Option<PathBuf> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { *self.ends.get(i - 1)? };
        Some(self.root.join(self.names.get(start..end)?))
    }

    /// The shape images are decoded to, once the model has given it.
    fn decoded_shape(&self) -> Result<ImageShape, DataError> {
        self.shape.get().copied().ok_or_else(|| {
            DataError::Invalid(format!(
                "{}: the size images are decoded to comes from the model, which has not been given yet",
                self.root.display()
            ))
        })
    }

    /// Decodes image `path` to `shape`, appending channel-major values to `out`.
    fn decode(&self, path: &Path, shape: ImageShape, out: &mut Vec<f32>) -> Result<(), DataError> {
        let bad = |problem: String| DataError::malformed(path, problem);
        let mut reader = image::io::Reader::open(path).map_err(io(path))?.with_guessed_format().map_err(io(path))?;
        let mut limits = image::io::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        reader.limits(limits);
        let img = reader.decode().map_err(|e| bad(format!("not a readable PNG or JPEG image: {e}")))?;
        if img.width() == 0 || img.height() == 0 {
            return Err(bad(format!("the image is {}x{}: expected at least one pixel", img.width(), img.height())));
        }
        let (w, h) = (shape.width, shape.height);
        let start = out.len();
        match shape.channels {
            1 => {
                let g = img.into_luma8();
                let g =
                    if g.dimensions() == (w, h) { g } else { image::imageops::resize(&g, w, h, FilterType::Triangle) };
                out.extend(g.as_raw().iter().map(|&v| f32::from(v) / 255.0));
            }
            _ => {
                let rgb = img.into_rgb8();
                let rgb = if rgb.dimensions() == (w, h) {
                    rgb
                } else {
                    image::imageops::resize(&rgb, w, h, FilterType::Triangle)
                };
                let raw = rgb.as_raw();
                for c in 0..3 {
                    out.extend(raw.iter().skip(c).step_by(3).map(|&v| f32::from(v) / 255.0));
                }
            }
        }
        let plane = (w as usize) * (h as usize);
        if out.len() - start != plane * shape.channels {
            out.truncate(start);
            return Err(bad("the decoded image has the wrong number of values".into()));
        }
        if let Some(n) = &self.normalize {
            for (k, v) in out[start..].iter_mut().enumerate() {
                let (mean, std) = n.of(k / plane);
                *v = (*v - mean) / std;
            }
        }
        Ok(())
    }
}

impl Examples for ImageFolder {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn example_shape(&self) -> &[usize] {
        self.example_shape.get().map_or(&[], Vec::as_slice)
    }
    fn task(&self) -> Task {
        Task::Classification { classes: self.classes.len() }
    }
    fn labels(&self) -> &[u32] {
        &self.labels
    }
    fn check(&self) -> Result<(), DataError> {
        self.decoded_shape().map(|_| ())
    }
    fn read_into(&self, i: usize, batch: &mut Batch) -> Result<(), DataError> {
        let shape = self.decoded_shape()?;
        let (Some(path), Some(&label)) = (self.path(i), self.labels.get(i)) else {
            return Err(DataError::Invalid(format!("image {i} is past the end of {} images", self.len())));
        };
        self.decode(&path, shape, &mut batch.x)?;
        batch.classes.push(label);
        Ok(())
    }
    fn set_input_shape(&self, shape: &[usize]) -> Result<(), DataError> {
        let (channels, height, width) = match *shape {
            [c, h, w] if c == 1 || c == 3 => (c, h, w),
            [h, w] => (1, h, w),
            _ => {
                return Err(DataError::Invalid(format!(
                    "{}: an image model takes [channels, height, width] with 1 or 3 channels (or [height, width]); \
                     this model takes {shape:?}",
                    self.root.display()
                )));
            }
        };
        let side = |v: usize| u32::try_from(v).ok().filter(|&s| s > 0 && s <= MAX_SIDE);
        let (Some(height), Some(width)) = (side(height), side(width)) else {
            return Err(DataError::Invalid(format!("the model's image size {shape:?} is out of range")));
        };
        if let Some(n) = &self.normalize {
            n.check(channels)?;
        }
        let want = ImageShape { channels, height, width };
        let got = *self.shape.get_or_init(|| want);
        if got != want {
            return Err(DataError::Invalid(format!(
                "{}: images are already decoded for input {:?}; a model taking {shape:?} needs the agent restarted",
                self.root.display(),
                self.example_shape()
            )));
        }
        let _ = self.example_shape.set(shape.to_vec());
        Ok(())
    }
}
