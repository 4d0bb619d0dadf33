//! Content digests and the weights wire/file format.
//!
//! A model version's weights are one flat `f32` vector in the order fixed by the ONNX graph's trainable
//! initializers (see [`crate::train`]). On the wire and on disk they are raw little-endian bytes, identified by
//! their SHA-256 digest; they never travel inside a serde message.
//!
//! This module must never trust a length or a digest it is given: decoding checks both.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A SHA-256 digest identifying a byte string (an ONNX graph, a weights vector).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Digest(out)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Errors decoding weights.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WeightsError {
    #[error("weights are {got} bytes, not a multiple of 4")]
    NotFloats { got: usize },
    #[error("weights hold {got} parameters, the model has {expected}")]
    WrongLength { got: usize, expected: usize },
    #[error("weights digest {got} does not match the announced {expected}")]
    DigestMismatch { got: String, expected: String },
    #[error("weights contain a non-finite value at index {index}")]
    NonFinite { index: usize },
}

/// Raw little-endian bytes of `weights`.
pub fn weights_to_bytes(weights: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(weights.len() * 4);
    for w in weights {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// Decodes little-endian weights, checking the count (when given) and that every value is finite.
pub fn weights_from_bytes(bytes: &[u8], expected: Option<usize>) -> Result<Vec<f32>, WeightsError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(WeightsError::NotFloats { got: bytes.len() });
    }
    let n = bytes.len() / 4;
    if let Some(expected) = expected
        && expected != n
    {
        return Err(WeightsError::WrongLength { got: n, expected });
    }
    let mut out = Vec::with_capacity(n);
    for (index, chunk) in bytes.chunks_exact(4).enumerate() {
        let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        if !v.is_finite() {
            return Err(WeightsError::NonFinite { index });
        }
        out.push(v);
    }
    Ok(out)
}

/// Decodes weights and checks them against their announced digest.
pub fn weights_from_bytes_checked(
    bytes: &[u8],
    expected: Option<usize>,
    digest: &Digest,
) -> Result<Vec<f32>, WeightsError> {
    let got = Digest::of(bytes);
    if &got != digest {
        return Err(WeightsError::DigestMismatch { got: got.to_hex(), expected: digest.to_hex() });
    }
    weights_from_bytes(bytes, expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_trip_through_bytes() {
        let w = vec![0.0f32, -1.5, 3.25, f32::MIN_POSITIVE];
        let b = weights_to_bytes(&w);
        assert_eq!(b.len(), 16);
        assert_eq!(weights_from_bytes_checked(&b, Some(4), &Digest::of(&b)).unwrap(), w);
    }

    #[test]
    fn wrong_length_and_digest_and_nan_are_refused() {
        let b = weights_to_bytes(&[1.0, 2.0]);
        assert_eq!(weights_from_bytes(&b, Some(3)), Err(WeightsError::WrongLength { got: 2, expected: 3 }));
        assert!(matches!(weights_from_bytes(&b[..5], None), Err(WeightsError::NotFloats { got: 5 })));
        assert!(matches!(
            weights_from_bytes_checked(&b, None, &Digest::of(b"other")),
            Err(WeightsError::DigestMismatch { .. })
        ));
        let nan = weights_to_bytes(&[1.0, f32::NAN]);
        assert_eq!(weights_from_bytes(&nan, None), Err(WeightsError::NonFinite { index: 1 }));
    }

    #[test]
    fn digest_is_sha256() {
        assert_eq!(Digest::of(b"abc").to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
