//! How a plain round's update travels from an agent to the server: 32-bit floats, or (the default) 8-bit integers
//! with one scale per block of [`BLOCK`] coordinates and stochastic rounding, a quarter of the bytes.
//!
//! The 8-bit form is unbiased: a coordinate `x` in a block whose largest magnitude is `a` is sent as
//! `q = ⌊x / s + u⌋` with `s = a / 127` and `u` uniform in `[0, 1)`, so `E[q · s] = x` and the error of one
//! coordinate is below `s`. Averaged over many agents the errors cancel, as in QSGD (Alistarh et al. 2017).
//!
//! Layout of the 8-bit form, block after block: the scale `s` (little-endian `f32`), then the block's `q` as `i8`,
//! zero-padded to a multiple of 4 bytes (so that the whole body is 4-byte words, as every other vector blob).
//!
//! Decoding never panics on what an agent sent: a length that does not match, a negative or non-finite scale, or
//! a `q` of -128 is an error.

use serde::{Deserialize, Serialize};

/// Coordinates per scale in the 8-bit form.
pub const BLOCK: usize = 256;

/// The largest magnitude of an 8-bit coordinate.
const LEVELS: f32 = 127.0;

/// How an update's delta is encoded on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaEncoding {
    /// 8 bits a coordinate with a scale per [`BLOCK`], stochastically rounded: about 1.016 bytes a coordinate.
    #[default]
    Int8,
    /// Little-endian `f32`, exact: 4 bytes a coordinate.
    F32,
}

/// Errors decoding an update.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeltaEncodingError {
    #[error("{values} values in the {encoding:?} encoding take {expected} bytes, the update has {got}")]
    Length { encoding: DeltaEncoding, values: usize, expected: usize, got: usize },
    #[error("block {block} has the scale {scale}, which is not a finite number >= 0")]
    BadScale { block: usize, scale: f32 },
    #[error("value {index} is -128, outside the 8-bit range [-127, 127]")]
    OutOfRange { index: usize },
}

impl std::str::FromStr for DeltaEncoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "int8" => Ok(DeltaEncoding::Int8),
            "f32" => Ok(DeltaEncoding::F32),
            other => Err(format!("unknown update encoding {other:?}: int8 or f32")),
        }
    }
}

impl DeltaEncoding {
    /// The bytes `values` coordinates take in this encoding (a multiple of 4; saturates instead of overflowing).
    pub fn encoded_len(self, values: usize) -> usize {
        match self {
            DeltaEncoding::F32 => values.saturating_mul(4),
            DeltaEncoding::Int8 => {
                let full = values / BLOCK;
                let rest = values % BLOCK;
                full.saturating_mul(4 + BLOCK).saturating_add(if rest > 0 { 4 + rest.next_multiple_of(4) } else { 0 })
            }
        }
    }

    /// Encodes `delta`; `uniform` gives the stochastic rounding's draws in `[0, 1)` (unused by `F32`).
    pub fn encode(self, delta: &[f32], uniform: &mut impl FnMut() -> f32) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len(delta.len()));
        match self {
            DeltaEncoding::F32 => delta.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            DeltaEncoding::Int8 => {
                for block in delta.chunks(BLOCK) {
                    let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                    // A non-finite value makes the scale non-finite: the server refuses the update, as it would
                    // refuse the value itself in the f32 form.
                    let scale = if max.is_finite() { max / LEVELS } else { f32::NAN };
                    out.extend_from_slice(&scale.to_le_bytes());
                    for &v in block {
                        let q = if scale > 0.0 { (v / scale + uniform()).floor().clamp(-LEVELS, LEVELS) } else { 0.0 };
                        out.push(q as i8 as u8);
                    }
                    out.resize(out.len().next_multiple_of(4), 0);
                }
            }
        }
        out
    }

    /// Decodes `values` coordinates from `bytes`.
    pub fn decode(self, bytes: &[u8], values: usize) -> Result<Vec<f32>, DeltaEncodingError> {
        let expected = self.encoded_len(values);
        if bytes.len() != expected {
            return Err(DeltaEncodingError::Length { encoding: self, values, expected, got: bytes.len() });
        }
        let mut out = Vec::with_capacity(values);
        match self {
            DeltaEncoding::F32 => {
                out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            }
            DeltaEncoding::Int8 => {
                let mut rest = bytes;
                let mut block = 0;
                while out.len() < values {
                    let n = (values - out.len()).min(BLOCK);
                    let padded = 4 + n.next_multiple_of(4);
                    let (this, next) = rest.split_at(padded.min(rest.len()));
                    rest = next;
                    let scale = f32::from_le_bytes([this[0], this[1], this[2], this[3]]);
                    if !(scale.is_finite() && scale >= 0.0) {
                        return Err(DeltaEncodingError::BadScale { block, scale });
                    }
                    for &b in &this[4..4 + n] {
                        let q = b as i8;
                        if q == i8::MIN {
                            return Err(DeltaEncodingError::OutOfRange { index: out.len() });
                        }
                        out.push(f32::from(q) * scale);
                    }
                    block += 1;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn uniform(seed: u64) -> impl FnMut() -> f32 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        move || rng.r#gen::<f32>()
    }

    #[test]
    fn the_8_bit_form_takes_a_byte_a_coordinate_and_a_scale_per_block_in_whole_words() {
        assert_eq!(DeltaEncoding::Int8.encoded_len(0), 0);
        assert_eq!(DeltaEncoding::Int8.encoded_len(1), 8);
        assert_eq!(DeltaEncoding::Int8.encoded_len(256), 260);
        assert_eq!(DeltaEncoding::Int8.encoded_len(257), 268);
        assert_eq!(DeltaEncoding::F32.encoded_len(257), 1028);
        // A count from the network never overflows the length computed from it.
        assert_eq!(DeltaEncoding::F32.encoded_len(usize::MAX), usize::MAX);
        assert_eq!(DeltaEncoding::Int8.encoded_len(usize::MAX), usize::MAX);
        let p = 1_000_000;
        assert!(DeltaEncoding::Int8.encoded_len(p) as f64 <= 1.1 * p as f64);
        let delta: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        assert_eq!(DeltaEncoding::Int8.encode(&delta, &mut uniform(1)).len(), DeltaEncoding::Int8.encoded_len(1000));
    }

    #[test]
    fn the_block_maximum_and_zero_are_exact_and_a_zero_block_stays_zero() {
        let delta = [0.5f32, -0.5, 0.0, 0.25];
        let back = DeltaEncoding::Int8.decode(&DeltaEncoding::Int8.encode(&delta, &mut uniform(2)), 4).unwrap();
        assert_eq!(back[0], 0.5);
        assert_eq!(back[1], -0.5);
        assert_eq!(back[2], 0.0);
        assert!((back[3] - 0.25).abs() <= 0.5 / 127.0);
        let zeros = [0.0f32; 300];
        assert_eq!(
            DeltaEncoding::Int8.decode(&DeltaEncoding::Int8.encode(&zeros, &mut uniform(3)), 300).unwrap(),
            zeros
        );
    }

    #[test]
    fn hostile_bytes_are_refused_with_the_reason() {
        let good = DeltaEncoding::Int8.encode(&[1.0, -1.0, 0.5], &mut uniform(4));
        assert!(matches!(DeltaEncoding::Int8.decode(&good, 5), Err(DeltaEncodingError::Length { .. })));
        assert!(matches!(DeltaEncoding::Int8.decode(&good[..4], 3), Err(DeltaEncodingError::Length { .. })));
        let mut nan = good.clone();
        nan[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(matches!(DeltaEncoding::Int8.decode(&nan, 3), Err(DeltaEncodingError::BadScale { block: 0, .. })));
        let mut negative = good.clone();
        negative[..4].copy_from_slice(&(-1.0f32).to_le_bytes());
        assert!(matches!(DeltaEncoding::Int8.decode(&negative, 3), Err(DeltaEncodingError::BadScale { .. })));
        let mut min = good;
        min[5] = 0x80;
        assert_eq!(DeltaEncoding::Int8.decode(&min, 3), Err(DeltaEncodingError::OutOfRange { index: 1 }));
        // A non-finite value cannot travel: its block's scale is refused.
        let inf = DeltaEncoding::Int8.encode(&[1.0, f32::INFINITY], &mut uniform(5));
        assert!(DeltaEncoding::Int8.decode(&inf, 2).is_err());
    }

    proptest! {
        #[test]
        fn each_coordinate_comes_back_within_one_step_of_its_block_scale(
            delta in prop::collection::vec(-10.0f32..10.0, 0..700), seed in any::<u64>(),
        ) {
            let bytes = DeltaEncoding::Int8.encode(&delta, &mut uniform(seed));
            prop_assert_eq!(bytes.len(), DeltaEncoding::Int8.encoded_len(delta.len()));
            let back = DeltaEncoding::Int8.decode(&bytes, delta.len()).unwrap();
            for (block, (d, b)) in delta.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
                let step = d.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                for (x, y) in d.iter().zip(b) {
                    prop_assert!((x - y).abs() <= step * 1.0001 + 1e-12, "block {block}: {x} came back as {y}");
                }
            }
            let exact = DeltaEncoding::F32.decode(&DeltaEncoding::F32.encode(&delta, &mut uniform(seed)), delta.len());
            prop_assert_eq!(exact.unwrap(), delta);
        }

        #[test]
        fn stochastic_rounding_is_unbiased_over_many_agents(x in -1.0f32..1.0, seed in any::<u64>()) {
            // One coordinate beside the block's maximum 1.0, sent by 4000 agents: the mean of what arrives is x.
            let mut draw = uniform(seed);
            let n = 4000;
            let sum: f64 = (0..n)
                .map(|_| {
                    let bytes = DeltaEncoding::Int8.encode(&[1.0, x], &mut draw);
                    f64::from(DeltaEncoding::Int8.decode(&bytes, 2).unwrap()[1])
                })
                .sum();
            // The rounding error of one agent is below 1/127 with variance at most 1/(4·127²): 6σ of the mean.
            let sigma = (0.25f64 / n as f64).sqrt() / 127.0;
            prop_assert!((sum / n as f64 - f64::from(x)).abs() <= 6.0 * sigma, "mean {} for {x}", sum / n as f64);
        }
    }
}
