//! An agent's masked input, produced a range of coordinates at a time, so that the agent sends the first part of
//! its vector while it computes the next and never holds the whole masked vector (nor its encoding) at once.
//!
//! A [`MaskedStream`] comes from [`super::ClientSession::mask_stream`], which has already moved the session past
//! the masked-input phase. Every chunk it yields is quantized and carries all of the agent's masks; it must never
//! yield a coordinate without its masks, and the concatenation of its chunks is exactly what
//! [`super::ClientSession::masked_input`] returns for the same delta and random draws.
//! [`MaskedStream::into_wire_chunks`] yields the same chunks as the bytes of the blob, in the round's word width
//! ([`super::words`]).

use super::SecAggParams;
use super::prg::{GROUP_WORDS, MaskSign, apply_masks_at};
use super::quant::Quantizer;
use super::words::{self, Packer};

/// Coordinates per chunk unless the caller asks otherwise: 128 KiB of `u32`.
pub const DEFAULT_CHUNK_VALUES: usize = 32 * 1024;

/// The masked vector `[w, counts, w·Δ] + masks (mod 2^32)`, one chunk at a time, in order.
pub struct MaskedStream {
    quantizer: Quantizer,
    masks: Vec<([u8; 32], MaskSign)>,
    delta: Vec<f32>,
    next: usize,
    chunk: usize,
    /// Turns the chunks into the round's wire words.
    packer: Packer,
    wire_len: u64,
}

impl MaskedStream {
    /// `chunk` is rounded up to a whole number of PRG groups (256 coordinates).
    pub(crate) fn new(
        params: &SecAggParams,
        quantizer: Quantizer,
        masks: Vec<([u8; 32], MaskSign)>,
        delta: Vec<f32>,
        chunk: usize,
    ) -> Self {
        let wire_len = words::wire_len(params, quantizer.header() + delta.len());
        MaskedStream {
            quantizer,
            masks,
            delta,
            next: 0,
            chunk: chunk.max(1).next_multiple_of(GROUP_WORDS),
            packer: Packer::new(params),
            wire_len,
        }
    }

    /// Coordinates in the whole masked vector: the weight, the counts, the delta.
    pub fn len(&self) -> usize {
        self.quantizer.header() + self.delta.len()
    }

    /// Never true: the vector always carries the weight.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The masked vector's size on the wire ([`words::wire_len`]): four bytes for the weight and each count, then
    /// `word_bits` bits a delta coordinate, padded to a multiple of four bytes.
    pub fn wire_len(&self) -> u64 {
        self.wire_len
    }

    /// The masked vector as the bytes of its blob, one chunk at a time: together exactly
    /// [`MaskedStream::wire_len`] bytes (the last chunk carries the padding).
    pub fn into_wire_chunks(self) -> WireChunks {
        WireChunks { stream: self, done: false }
    }
}

/// The bytes of a [`MaskedStream`], chunk by chunk (see [`MaskedStream::into_wire_chunks`]).
pub struct WireChunks {
    stream: MaskedStream,
    done: bool,
}

impl Iterator for WireChunks {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let chunk = self.stream.next();
        let mut out = Vec::with_capacity(chunk.as_ref().map_or(4, |c| 4 * c.len() + 8));
        match chunk {
            Some(values) => self.stream.packer.push(&values, &mut out),
            None => {
                self.done = true;
                self.stream.packer.finish(&mut out);
                if out.is_empty() {
                    return None;
                }
            }
        }
        Some(out)
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
