//! Plain text as next-character examples: a `train.txt` (and optionally `test.txt`) cut into windows of `window`
//! bytes, each labelled with the byte that follows it, windows starting every `stride` bytes.
//!
//! Characters are bytes (ids `0..256`, a model with 256 outputs): every device of a federation then agrees on the
//! vocabulary without sharing one, and UTF-8 text needs no decoder. The file is held once in memory; a window is
//! read as a view of it, never copied ahead. This module must never trust a file's size (it is bounded) and never
//! panic on an index.

use std::path::{Path, PathBuf};

use super::error::DataError;
use super::examples::{Batch, Examples, Task};

/// The characters: every byte value.
pub const BYTE_CLASSES: usize = 256;
/// The window when the settings name none (LEAF's Shakespeare task uses 80).
pub const DEFAULT_WINDOW: usize = 80;
/// The largest text file accepted (1 GiB).
pub const MAX_TEXT_BYTES: u64 = 1 << 30;

/// A text file's next-character windows.
#[derive(Debug)]
pub struct TextWindows {
    path: PathBuf,
    bytes: Vec<u8>,
    window: usize,
    stride: usize,
    shape: Vec<usize>,
    labels: Vec<u32>,
}

impl TextWindows {
    /// Reads `path` and cuts it into windows.
    pub fn open(path: &Path, window: usize, stride: usize) -> Result<Self, DataError> {
        let meta = std::fs::metadata(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        if meta.len() > MAX_TEXT_BYTES {
            return Err(DataError::malformed(path, format!("{} bytes, more than {MAX_TEXT_BYTES}", meta.len())));
        }
        let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        Self::from_bytes(bytes, window, stride, path)
    }

    /// Windows over `bytes`; `path` only names the source in errors.
    pub fn from_bytes(bytes: Vec<u8>, window: usize, stride: usize, path: &Path) -> Result<Self, DataError> {
        if window == 0 || stride == 0 {
            return Err(DataError::malformed(path, format!("window {window} and stride {stride} must be at least 1")));
        }
        if bytes.len() <= window {
            return Err(DataError::malformed(
                path,
                format!("{} bytes of text: a window of {window} and the character after it need more", bytes.len()),
            ));
        }
        let count = (bytes.len() - window - 1) / stride + 1;
        let labels = (0..count).map(|i| u32::from(bytes[i * stride + window])).collect();
        Ok(TextWindows { path: path.to_path_buf(), bytes, window, stride, shape: vec![window], labels })
    }

    /// The file the windows come from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Examples for TextWindows {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn example_shape(&self) -> &[usize] {
        &self.shape
    }

    fn task(&self) -> Task {
        Task::Classification { classes: BYTE_CLASSES }
    }

    fn labels(&self) -> &[u32] {
        &self.labels
    }

    fn check(&self) -> Result<(), DataError> {
        Ok(())
    }

    fn read_into(&self, i: usize, batch: &mut Batch) -> Result<(), DataError> {
        let start = i.checked_mul(self.stride).filter(|_| i < self.labels.len());
        let (Some(start), Some(label)) = (start, self.labels.get(i)) else {
            return Err(DataError::Invalid(format!("window {i} of {} in {}", self.len(), self.path.display())));
        };
        let Some(text) = self.bytes.get(start..start + self.window) else {
            return Err(DataError::Invalid(format!("window {i} runs past the end of {}", self.path.display())));
        };
        batch.x.extend(text.iter().map(|b| f32::from(*b)));
        batch.classes.push(*label);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(text: &str, window: usize, stride: usize) -> TextWindows {
        TextWindows::from_bytes(text.as_bytes().to_vec(), window, stride, Path::new("t.txt")).unwrap()
    }

    #[test]
    fn each_window_is_labelled_with_the_byte_after_it() {
        let t = windows("abcdef", 3, 1);
        assert_eq!(t.len(), 3);
        let mut b = Batch::default();
        assert_eq!(t.range_into(0, 10, &mut b).unwrap(), 3);
        let ids = |s: &str| s.bytes().map(f32::from).collect::<Vec<_>>();
        assert_eq!(b.x, [ids("abc"), ids("bcd"), ids("cde")].concat());
        assert_eq!(b.classes, vec![b'd' as u32, b'e' as u32, b'f' as u32]);
    }

    #[test]
    fn a_stride_skips_windows_and_the_last_window_still_has_its_label() {
        let t = windows("abcdefgh", 3, 2);
        // Windows at 0, 2 and 4 (their labels d, f, h); one at 6 would have no next byte.
        assert_eq!(t.labels(), &[b'd' as u32, b'f' as u32, b'h' as u32]);
        let mut b = Batch::default();
        assert!(t.read_into(3, &mut b).is_err() && b.x.is_empty());
    }

    #[test]
    fn text_too_short_or_a_zero_window_is_an_error_naming_the_file() {
        for (text, w, s) in [("abc", 3, 1), ("abcdef", 0, 1), ("abcdef", 2, 0)] {
            let e = TextWindows::from_bytes(text.as_bytes().to_vec(), w, s, Path::new("t.txt")).unwrap_err();
            assert!(e.to_string().starts_with("t.txt"), "{e}");
        }
    }
}
