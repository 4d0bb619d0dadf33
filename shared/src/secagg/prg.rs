//! The mask PRG: a ChaCha20 keystream, read as little-endian `u32`s, added to or subtracted from a vector in
//! wrapping (mod 2^32) arithmetic.
//!
//! Keys come only from [`super::kdf`] (a full 32-byte HKDF-SHA256 output). This module must never be seeded from a
//! short or non-cryptographic source, and never holds the vector it masks.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

/// Whether a mask is added to or subtracted from the vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskSign {
    Add,
    Sub,
}

impl MaskSign {
    /// The sign agent `me` uses for its pairwise mask with `peer`: the lower index adds, the higher subtracts.
    pub fn pairwise(me: u32, peer: u32) -> MaskSign {
        if me < peer { MaskSign::Add } else { MaskSign::Sub }
    }

    /// The opposite sign (what removes this mask).
    pub fn inverse(self) -> MaskSign {
        match self {
            MaskSign::Add => MaskSign::Sub,
            MaskSign::Sub => MaskSign::Add,
        }
    }
}

const BLOCK_WORDS: usize = 4096;
static ZEROS: [u8; BLOCK_WORDS * 4] = [0u8; BLOCK_WORDS * 4];

/// Adds (or subtracts) the ChaCha20 keystream of `key` (nonce 0, counter from 0), as `u32`s, to `out`.
///
/// The mask of coordinate `i` is the same whatever the length of `out`, so a prefix of a vector can be masked on
/// its own.
pub fn apply_mask(key: &[u8; 32], sign: MaskSign, out: &mut [u32]) {
    apply_masks(&[(*key, sign)], out);
}

/// Applies many masks in one pass over `out`: block by block, every keystream is generated into a small buffer
/// and added while the block is in cache. The result equals applying each mask with [`apply_mask`].
pub fn apply_masks(masks: &[([u8; 32], MaskSign)], out: &mut [u32]) {
    apply_masks_at(masks, out, 0);
}

/// Like [`apply_masks`] on `threads` threads, each taking one contiguous range of `out` (the keystreams are
/// seeked to the range's start). Same result as [`apply_masks`]; for the server's unmasking on a many-core host.
pub fn apply_masks_parallel(masks: &[([u8; 32], MaskSign)], out: &mut [u32], threads: usize) {
    if threads <= 1 || out.len() < 2 * BLOCK_WORDS {
        return apply_masks(masks, out);
    }
    // Ranges are whole 64-byte ChaCha20 blocks (16 words).
    let per = out.len().div_ceil(threads).next_multiple_of(16);
    std::thread::scope(|scope| {
        for (i, part) in out.chunks_mut(per).enumerate() {
            scope.spawn(move || apply_masks_at(masks, part, i * per));
        }
    });
}

/// Applies the masks to `out`, which holds the words from index `start` of the full vector.
fn apply_masks_at(masks: &[([u8; 32], MaskSign)], out: &mut [u32], start: usize) {
    let mut ciphers: Vec<(ChaCha20, MaskSign)> = masks
        .iter()
        .map(|(key, sign)| {
            let mut c = ChaCha20::new(key.into(), &[0u8; 12].into());
            c.seek(4 * start as u64);
            (c, *sign)
        })
        .collect();
    let mut buf = [0u8; BLOCK_WORDS * 4];
    for chunk in out.chunks_mut(BLOCK_WORDS) {
        let len = chunk.len() * 4;
        for (cipher, sign) in ciphers.iter_mut() {
            let bytes = &mut buf[..len];
            // Keystream XOR zeros: the keystream itself. The lengths are equal, so this cannot fail.
            if cipher.apply_keystream_b2b(&ZEROS[..len], bytes).is_err() {
                continue;
            }
            let words = bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            match sign {
                MaskSign::Add => chunk.iter_mut().zip(words).for_each(|(o, w)| *o = o.wrapping_add(w)),
                MaskSign::Sub => chunk.iter_mut().zip(words).for_each(|(o, w)| *o = o.wrapping_sub(w)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_added_then_subtracted_leaves_the_vector_unchanged() {
        let original: Vec<u32> = (0..10_000u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
        let mut v = original.clone();
        apply_mask(&[7; 32], MaskSign::Add, &mut v);
        assert_ne!(v, original);
        apply_mask(&[7; 32], MaskSign::Sub, &mut v);
        assert_eq!(v, original);
    }

    #[test]
    fn the_mask_of_a_prefix_is_the_prefix_of_the_mask() {
        let mut long = vec![0u32; 9000];
        let mut short = vec![0u32; 5000];
        apply_mask(&[3; 32], MaskSign::Add, &mut long);
        apply_mask(&[3; 32], MaskSign::Add, &mut short);
        assert_eq!(&long[..5000], &short[..]);
    }

    #[test]
    fn different_keys_give_different_masks() {
        let mut a = vec![0u32; 64];
        let mut b = vec![0u32; 64];
        apply_mask(&[1; 32], MaskSign::Add, &mut a);
        apply_mask(&[2; 32], MaskSign::Add, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn applying_masks_together_equals_applying_them_one_by_one() {
        let masks = [([1u8; 32], MaskSign::Add), ([2u8; 32], MaskSign::Sub), ([3u8; 32], MaskSign::Add)];
        let mut together: Vec<u32> = (0..10_001).collect();
        let mut apart = together.clone();
        apply_masks(&masks, &mut together);
        for (k, s) in &masks {
            apply_mask(k, *s, &mut apart);
        }
        assert_eq!(together, apart);
    }

    #[test]
    fn parallel_masking_equals_sequential_masking() {
        let masks = [([4u8; 32], MaskSign::Add), ([5u8; 32], MaskSign::Sub)];
        for len in [10, 8192, 50_001] {
            let mut seq: Vec<u32> = (0..len).collect();
            let mut par = seq.clone();
            apply_masks(&masks, &mut seq);
            apply_masks_parallel(&masks, &mut par, 3);
            assert_eq!(seq, par, "len {len}");
        }
    }

    #[test]
    fn the_pairwise_signs_of_two_agents_are_opposite() {
        assert_eq!(MaskSign::pairwise(3, 9), MaskSign::pairwise(9, 3).inverse());
    }
}
