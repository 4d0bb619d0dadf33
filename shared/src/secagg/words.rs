//! How a masked vector travels in a `BlobKind::Masked` blob: the header (the weight and the counts) in 32-bit
//! little-endian words, then every delta coordinate in the round's `word_bits` bits ([`SecAggParams::word_bits`]),
//! packed least significant bit first into bytes, the whole padded with zero bits to a multiple of four bytes (the
//! blob's framing reads 32-bit words). 32-bit words are the little-endian `u32` vector of protocol 8; 16-bit words
//! are two bytes a coordinate.
//!
//! Packing keeps the low `word_bits` bits of each `u32` coordinate: exact, since a delta coordinate's arithmetic is
//! modulo `2^word_bits` and reduction modulo `2^w` commutes with the masks' additions modulo 2^32
//! ([`super::params`]). Unpacking refuses a length other than the round's and padding that is not zero.
//!
//! This module only converts between coordinates and bytes; it is handed masked chunks and must never see an
//! unmasked vector.

use super::{SecAggError, SecAggParams};

/// The bytes of a masked vector of `vector_len` coordinates (header included) under `params`.
pub fn wire_len(params: &SecAggParams, vector_len: usize) -> u64 {
    let header = header_len(params).min(vector_len) as u64;
    let delta = (vector_len as u64 - header) * u64::from(params.word_bits);
    (4 * header + delta.div_ceil(8)).next_multiple_of(4)
}

/// Coordinates that always travel as 32-bit words: the weight and the counts.
fn header_len(params: &SecAggParams) -> usize {
    1 + params.counts as usize
}

/// Turns a masked vector, handed over in consecutive chunks, into its wire bytes.
#[derive(Debug, Clone)]
pub struct Packer {
    header: usize,
    bits: u32,
    mask: u64,
    /// Coordinates packed so far.
    at: usize,
    /// Bytes written so far.
    written: u64,
    /// Bits not yet written, in the low `filled` bits.
    acc: u64,
    filled: u32,
}

impl Packer {
    /// A packer for a vector under `params`, from its first coordinate.
    pub fn new(params: &SecAggParams) -> Self {
        Packer {
            header: header_len(params),
            bits: params.word_bits,
            mask: u64::from(params.word_max()),
            at: 0,
            written: 0,
            acc: 0,
            filled: 0,
        }
    }

    /// Appends the bytes of the next coordinates of the vector to `out` (bits that do not fill a byte yet wait for
    /// the next chunk or [`Packer::finish`]).
    pub fn push(&mut self, chunk: &[u32], out: &mut Vec<u8>) {
        let before = out.len();
        let in_header = self.header.saturating_sub(self.at).min(chunk.len());
        let (head, rest) = chunk.split_at(in_header);
        out.extend(head.iter().flat_map(|v| v.to_le_bytes()));
        match self.bits {
            // Whole bytes and nothing pending: no bit shuffling.
            32 if self.filled == 0 => out.extend(rest.iter().flat_map(|v| v.to_le_bytes())),
            16 if self.filled == 0 => out.extend(rest.iter().flat_map(|&v| (v as u16).to_le_bytes())),
            bits => {
                out.reserve((rest.len() * bits as usize).div_ceil(8));
                for &v in rest {
                    self.acc |= (u64::from(v) & self.mask) << self.filled;
                    self.filled += bits;
                    while self.filled >= 8 {
                        out.push(self.acc as u8);
                        self.acc >>= 8;
                        self.filled -= 8;
                    }
                }
            }
        }
        self.at += chunk.len();
        self.written += (out.len() - before) as u64;
    }

    /// Writes the bits still pending and the zero padding to a multiple of four bytes.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.filled > 0 {
            out.push(self.acc as u8);
            self.written += 1;
            self.acc = 0;
            self.filled = 0;
        }
        let pad = self.written.next_multiple_of(4) - self.written;
        out.extend(std::iter::repeat_n(0u8, pad as usize));
        self.written += pad;
    }
}

/// A whole masked vector's wire form as the little-endian 32-bit words the server's blob reader hands over (for
/// callers that hold the vector in memory, such as simulations; agents stream [`Packer`]'s bytes instead).
pub fn pack_words(params: &SecAggParams, coords: &[u32]) -> Vec<u32> {
    let mut packer = Packer::new(params);
    let mut bytes = Vec::new();
    packer.push(coords, &mut bytes);
    packer.finish(&mut bytes);
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Coordinates decoded at a time by [`unpack_blocks`]: small enough to stay in L1 while they are folded.
const BLOCK: usize = 2048;

/// Decodes a masked vector of `vector_len` under `params` from its wire form (little-endian 32-bit words) and hands
/// it to `each` block by block, `(offset, coordinates)` in order: the header's as they are, each delta coordinate
/// zero-extended from its `word_bits`. The length and the padding are checked first, so `each` sees nothing of a
/// refused vector: another length than the round's, or padding bits that are not zero.
pub fn unpack_blocks(
    params: &SecAggParams,
    vector_len: usize,
    words: &[u32],
    mut each: impl FnMut(usize, &[u32]),
) -> Result<(), SecAggError> {
    let expected = wire_len(params, vector_len);
    if words.len() as u64 * 4 != expected {
        return Err(SecAggError::Malformed(format!(
            "a masked vector of {} bytes; {vector_len} coordinates in {}-bit words take {expected}",
            words.len() as u64 * 4,
            params.word_bits
        )));
    }
    let header = header_len(params).min(vector_len);
    let (head, body) = words.split_at(header);
    let bits = params.word_bits;
    let payload = (vector_len - header) as u64 * u64::from(bits);
    if !padding_is_zero(body, payload) {
        return Err(SecAggError::Malformed("a masked vector whose padding bits are not zero".into()));
    }
    each(0, head);
    if bits == 32 {
        for (i, c) in body.chunks(BLOCK).enumerate() {
            each(header + i * BLOCK, c);
        }
        return Ok(());
    }
    let mask = u64::from(params.word_max());
    let (mut acc, mut filled) = (0u64, 0u32);
    let mut src = body.iter();
    let mut block = [0u32; BLOCK];
    let mut at = header;
    while at < vector_len {
        let n = BLOCK.min(vector_len - at);
        for slot in &mut block[..n] {
            if filled < bits {
                // The length was checked: the words hold every coordinate.
                acc |= u64::from(src.next().copied().unwrap_or(0)) << filled;
                filled += 32;
            }
            *slot = (acc & mask) as u32;
            acc >>= bits;
            filled -= bits;
        }
        each(at, &block[..n]);
        at += n;
    }
    Ok(())
}

/// Whether every bit of `body` past its first `payload` bits is zero.
fn padding_is_zero(body: &[u32], payload: u64) -> bool {
    let full = (payload / 32) as usize;
    let rest = (payload % 32) as u32;
    let partial_ok = rest == 0 || body.get(full).is_none_or(|w| w >> rest == 0);
    let tail = body.get(full + usize::from(rest != 0)..).unwrap_or(&[]);
    partial_ok && tail.iter().all(|&w| w == 0)
}

/// The whole vector [`unpack_blocks`] decodes (for callers that want it in memory: tests, simulations).
pub fn unpack(params: &SecAggParams, vector_len: usize, words: &[u32]) -> Result<Vec<u32>, SecAggError> {
    let mut out = Vec::with_capacity(vector_len);
    unpack_blocks(params, vector_len, words, |_, block| out.extend_from_slice(block))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(word_bits: u32, counts: u32) -> SecAggParams {
        SecAggParams { word_bits, counts, ..SecAggParams::new(2, 2, 1.0, 4, 10) }
    }

    #[test]
    fn sixteen_bit_words_take_two_bytes_a_coordinate_and_thirty_two_four() {
        // 1 weight + 5 counts in 4 bytes each, then 1,000,000 coordinates.
        assert_eq!(wire_len(&params(16, 5), 1_000_006), 24 + 2_000_000);
        assert_eq!(wire_len(&params(32, 5), 1_000_006), 4 * 1_000_006);
        // An odd count of 16-bit coordinates is padded to a whole word; 15-bit ones are packed.
        assert_eq!(wire_len(&params(16, 0), 4), 4 + 8);
        assert_eq!(wire_len(&params(15, 0), 1 + 256), 4 + 480);
    }

    #[test]
    fn a_wrong_length_or_dirty_padding_is_refused() {
        let p = params(16, 0);
        // Weight, then three 16-bit coordinates: 4 + 6 bytes, padded to 12.
        let mut packer = Packer::new(&p);
        let mut bytes = Vec::new();
        packer.push(&[7, 0x1_0001, 2, 3], &mut bytes);
        packer.finish(&mut bytes);
        let words: Vec<u32> = bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(unpack(&p, 4, &words).unwrap(), vec![7, 1, 2, 3], "the low 16 bits travel");
        // (Four coordinates would fit the same padded words: the round, not the blob, says how many there are.)
        assert!(unpack(&p, 6, &words).is_err(), "another length");
        assert!(unpack(&p, 4, &words[..2]).is_err(), "short");
        let mut dirty = words.clone();
        dirty[2] |= 1 << 20;
        assert!(unpack(&p, 4, &dirty).unwrap_err().to_string().contains("padding"));
        let mut seen = 0;
        assert!(unpack_blocks(&p, 4, &dirty, |_, _| seen += 1).is_err());
        assert_eq!(seen, 0, "nothing of a refused vector reaches the caller");
    }

    #[test]
    fn a_vector_longer_than_a_block_comes_back_in_order_at_every_width() {
        let values: Vec<u32> = (0..5 * BLOCK as u32 + 17).map(|i| i.wrapping_mul(2_654_435_761)).collect();
        for bits in [15, 16, 21, 32] {
            let p = params(bits, 5);
            let mut packer = Packer::new(&p);
            let mut bytes = Vec::new();
            packer.push(&values, &mut bytes);
            packer.finish(&mut bytes);
            let words: Vec<u32> = bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let mut next = 0;
            let mut back = Vec::new();
            unpack_blocks(&p, values.len(), &words, |offset, block| {
                assert_eq!(offset, next, "blocks in order, none skipped");
                next += block.len();
                back.extend_from_slice(block);
            })
            .unwrap();
            let want: Vec<u32> =
                values.iter().enumerate().map(|(i, v)| if i < 6 { *v } else { v & p.word_max() }).collect();
            assert_eq!(back, want, "{bits}-bit words");
        }
    }

    proptest! {
        /// Whatever the width and however the vector is cut into chunks, unpacking gives back each coordinate
        /// reduced modulo `2^word_bits` (the header untouched), in exactly [`wire_len`] bytes.
        #[test]
        fn packing_in_any_chunks_round_trips_modulo_the_word(
            bits in MIN_BITS..=32u32,
            counts in 0..6u32,
            values in proptest::collection::vec(any::<u32>(), 1..700),
            cuts in proptest::collection::vec(0..700usize, 0..5),
        ) {
            let p = params(bits, counts);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % values.len()).collect();
            cuts.sort_unstable();
            let mut packer = Packer::new(&p);
            let mut bytes = Vec::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([values.len()]) {
                packer.push(&values[from..c.max(from)], &mut bytes);
                from = c.max(from);
            }
            packer.finish(&mut bytes);
            prop_assert_eq!(bytes.len() as u64, wire_len(&p, values.len()));
            let words: Vec<u32> = bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let back = unpack(&p, values.len(), &words).unwrap();
            let header = (1 + counts as usize).min(values.len());
            for (i, (v, b)) in values.iter().zip(&back).enumerate() {
                let want = if i < header { *v } else { v & p.word_max() };
                prop_assert_eq!(*b, want, "coordinate {}", i);
            }
        }
    }

    const MIN_BITS: u32 = crate::secagg::params::MIN_WORD_BITS;
}
