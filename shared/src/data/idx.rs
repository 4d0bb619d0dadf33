//! The IDX file format (MNIST's): a big-endian header `00 00 <type> <ndim>`, `ndim` big-endian `u32` sizes, then
//! the values row-major. Files may be gzip-compressed (detected by content, not by name).
//!
//! Only unsigned-byte data (type `0x08`) is accepted, which is what MNIST-style image and label files hold. This
//! module must never trust a size in a header: the data length must match the product of the sizes exactly, and
//! decompression is bounded.

use super::error::DataError;
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

/// The largest decompressed IDX file accepted (1 GiB).
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// An IDX array of bytes: its sizes and its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file, gzip-compressed or not.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        // The gzip trailer holds the uncompressed size (mod 2^32): reserve it once instead of doubling.
        let announced = raw
            .len()
            .checked_sub(4)
            .and_then(|at| raw.get(at..))
            .map_or(0, |t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as u64);
        // Deflate expands at most ~1032:1, so a forged trailer cannot make us reserve more than that.
        let plausible = (raw.len() as u64).saturating_mul(1032);
        let mut out = Vec::with_capacity(announced.min(MAX_IDX_BYTES).min(plausible) as usize);
        GzDecoder::new(raw.as_slice())
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| DataError::malformed(path, format!("gzip data is corrupt or truncated: {e}")))?;
        if out.len() as u64 > MAX_IDX_BYTES {
            return Err(DataError::malformed(path, format!("decompresses to more than {MAX_IDX_BYTES} bytes")));
        }
        drop(raw);
        out
    } else {
        raw
    };
    parse_idx_owned(bytes, path)
}

/// Parses uncompressed IDX bytes; `path` only names the source in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray, DataError> {
    let (dims, body_start) = parse_header(bytes, path)?;
    Ok(IdxArray { dims, data: bytes[body_start..].to_vec() })
}

/// [`parse_idx`] reusing the buffer for the data (no second copy of a large file).
pub fn parse_idx_owned(mut bytes: Vec<u8>, path: &Path) -> Result<IdxArray, DataError> {
    let (dims, body_start) = parse_header(&bytes, path)?;
    bytes.drain(..body_start);
    bytes.shrink_to_fit();
    Ok(IdxArray { dims, data: bytes })
}

/// Checks the header and the data length; returns the sizes and where the data starts.
fn parse_header(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, usize), DataError> {
    let Some(header) = bytes.get(..4) else {
        return Err(DataError::malformed(path, format!("{} bytes is too short for an IDX header", bytes.len())));
    };
    if header[0] != 0 || header[1] != 0 {
        return Err(DataError::malformed(
            path,
            format!("bad IDX magic {:02x} {:02x} (expected 00 00): not an IDX file", header[0], header[1]),
        ));
    }
    if header[2] != 0x08 {
        return Err(DataError::malformed(
            path,
            format!("IDX data type 0x{:02x} is not supported (only unsigned bytes, 0x08)", header[2]),
        ));
    }
    let ndim = header[3] as usize;
    if ndim == 0 {
        return Err(DataError::malformed(path, "IDX header declares zero dimensions"));
    }
    let body_start = 4 + 4 * ndim;
    let Some(size_bytes) = bytes.get(4..body_start) else {
        return Err(DataError::malformed(path, format!("truncated IDX header: {ndim} sizes announced")));
    };
    let dims: Vec<usize> =
        size_bytes.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| DataError::malformed(path, format!("IDX sizes {dims:?} overflow")))?;
    let data = &bytes[body_start..];
    if data.len() < expected {
        return Err(DataError::malformed(
            path,
            format!("truncated: sizes {dims:?} need {expected} bytes of data, the file has {}", data.len()),
        ));
    }
    if data.len() > expected {
        return Err(DataError::malformed(
            path,
            format!("{} unexpected bytes after the {expected} bytes of data for sizes {dims:?}", data.len() - expected),
        ));
    }
    Ok((dims, body_start))
}

/// Encodes bytes as an IDX file (used to write test fixtures and small data sets).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_array_parses_back() {
        let bytes = encode_idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let a = parse_idx(&bytes, Path::new("x")).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn parsing_in_place_gives_the_same_array_and_the_same_errors() {
        let bytes = encode_idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(parse_idx_owned(bytes.clone(), Path::new("x")).unwrap(), parse_idx(&bytes, Path::new("x")).unwrap());
        for cut in 0..bytes.len() {
            assert!(parse_idx_owned(bytes[..cut].to_vec(), Path::new("x")).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn every_truncation_of_a_file_is_an_error() {
        let bytes = encode_idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        for cut in 0..bytes.len() {
            assert!(parse_idx(&bytes[..cut], Path::new("x")).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_non_byte_data_type_is_refused_by_name() {
        let mut bytes = encode_idx(&[1], &[1]);
        bytes[2] = 0x0D;
        let e = parse_idx(&bytes, Path::new("floats.idx")).unwrap_err().to_string();
        assert!(e.contains("floats.idx") && e.contains("0x0d"), "{e}");
    }
}
