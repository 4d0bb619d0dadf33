//! An agent's masked input, produced a range of coordinates at a time, so that the agent sends the first part of
//! its vector while it computes the next and never holds the whole masked vector (nor its encoding) at once.
//!
//! A [`MaskedStream`] comes from [`super::ClientSession::mask_stream`], which has already moved the session past
//! the masked-input phase. Every chunk it yields is quantized and carries all of the agent's masks; it must never
//! yield a coordinate without its masks, and the concatenation of its chunks is exactly what
//! [`super::ClientSession::masked_input`] returns for the same delta and random draws.

use super::prg::{GROUP_WORDS, MaskSign, apply_masks_at};
use super::quant::Quantizer;

/// Coordinates per chunk unless the caller asks otherwise: 128 KiB of `u32`.
pub const DEFAULT_CHUNK_VALUES: usize = 32 * 1024;

/// The masked vector `[w, counts, w·Δ] + masks (mod 2^32)`, one chunk at a time, in order.
pub struct MaskedStream {
    quantizer: Quantizer,
    masks: Vec<([u8; 32], MaskSign)>,
    delta: Vec<f32>,
    next: usize,
    chunk: usize,
}

impl MaskedStream {
    /// `chunk` is rounded up to a whole number of PRG groups (256 coordinates).
    pub(crate) fn new(quantizer: Quantizer, masks: Vec<([u8; 32], MaskSign)>, delta: Vec<f32>, chunk: usize) -> Self {
        MaskedStream { quantizer, masks, delta, next: 0, chunk: chunk.max(1).next_multiple_of(GROUP_WORDS) }
    }

    /// Coordinates in the whole masked vector: the weight, the counts, the delta.
    pub fn len(&self) -> usize {
        self.quantizer.header() + self.delta.len()
    }

    /// Never true: the vector always carries the weight.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The masked vector's size on the wire: four little-endian bytes per coordinate.
    pub fn wire_len(&self) -> u64 {
        4 * self.len() as u64
    }
}

impl Iterator for MaskedStream {
    type Item = Vec<u32>;

    fn next(&mut self) -> Option<Vec<u32>> {
        let total = self.len();
        if self.next >= total {
            return None;
        }
        let end = (self.next + self.chunk).min(total);
        let mut out = vec![0u32; end - self.next];
        // `next` is a multiple of the chunk size, itself a multiple of GROUP_WORDS, and the range ends within the
        // vector: the quantizer's preconditions hold by construction.
        self.quantizer.fill(&self.delta, self.next, &mut out);
        apply_masks_at(&self.masks, &mut out, self.next / GROUP_WORDS);
        self.next = end;
        Some(out)
    }
}
