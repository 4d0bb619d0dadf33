//! Normalisation of raw byte-valued features (pixels) into the floats a model is trained on.
//!
//! `x' = (x / scale - mean) / std`. The presets are the conventions of the data sets fedge ships: MNIST is brought
//! to the 0-1 scale and standardised with its published mean 0.1307 and standard deviation 0.3081; the 8x8 digits
//! (values 0-16) are brought to the 0-1 scale. This module must never read files or hold state.

use serde::{Deserialize, Serialize};

/// An affine normalisation of raw values: `(x / scale - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub scale: f32,
    pub mean: f32,
    pub std: f32,
}

impl Normalization {
    /// MNIST: 0-255 to 0-1, then mean 0.1307, std 0.3081.
    pub const MNIST: Normalization = Normalization { scale: 255.0, mean: 0.1307, std: 0.3081 };
    /// The 8x8 digits: 0-16 to 0-1.
    pub const DIGITS: Normalization = Normalization { scale: 16.0, mean: 0.0, std: 1.0 };
    /// Bytes to the 0-1 scale, nothing else.
    pub const UNIT: Normalization = Normalization { scale: 255.0, mean: 0.0, std: 1.0 };
    /// Leaves values as they are.
    pub const IDENTITY: Normalization = Normalization { scale: 1.0, mean: 0.0, std: 1.0 };

    /// Normalises one value.
    pub fn apply(&self, x: f32) -> f32 {
        (x / self.scale - self.mean) / self.std
    }

    /// The normalised value of every byte, for converting byte images quickly.
    pub fn byte_table(&self) -> [f32; 256] {
        let mut t = [0.0f32; 256];
        for (i, v) in t.iter_mut().enumerate() {
            *v = self.apply(i as f32);
        }
        t
    }

    /// Normalises a whole byte buffer.
    pub fn bytes_to_f32(&self, raw: &[u8]) -> Vec<f32> {
        let t = self.byte_table();
        raw.iter().map(|&b| t[b as usize]).collect()
    }

    /// True when every parameter is finite and the divisors are non-zero.
    pub fn is_valid(&self) -> bool {
        self.scale.is_finite() && self.mean.is_finite() && self.std.is_finite() && self.scale != 0.0 && self.std != 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnist_normalisation_maps_black_and_white_to_the_published_standard_scores() {
        let t = Normalization::MNIST.byte_table();
        assert!((t[0] - (-0.1307 / 0.3081)).abs() < 1e-6);
        assert!((t[255] - ((1.0 - 0.1307) / 0.3081)).abs() < 1e-5);
    }

    #[test]
    fn digits_normalisation_maps_sixteen_to_one() {
        assert_eq!(Normalization::DIGITS.apply(16.0), 1.0);
        assert_eq!(Normalization::DIGITS.apply(0.0), 0.0);
    }
}
