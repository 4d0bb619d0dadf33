//! The mask PRG: a ChaCha20 keystream (RFC 8439: nonce 0, block counter from 0), read as `u32` words and added to
//! or subtracted from a vector in wrapping (mod 2^32) arithmetic.
//!
//! **Word order.** The vector is taken in groups of 256 coordinates, and group `g` is masked by the 16 keystream
//! blocks `16g .. 16g + 16`: coordinate `256g + 16w + b` gets word `w` of block `16g + b`. This is the standard
//! keystream, permuted within each kilobyte, so it is exactly as uniform and as secret; the order is chosen because
//! a SIMD implementation that runs 16 blocks side by side (one block per lane, [`chacha20_x16`]) then holds, in the
//! register for state word `w`, the 16 consecutive coordinates `256g + 16w ..`: it adds them to the vector with one
//! load and one store, with no transposition. Agents and the server run the same code, so they agree on every
//! coordinate whatever the machine; `tests` check the order against the `chacha20` crate's keystream.
//!
//! Keys come only from [`super::kdf`] (a full 32-byte HKDF-SHA256 output). This module must never be seeded from a
//! short or non-cryptographic source, and never holds the vector it masks.

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

/// ChaCha20's 20 rounds over the state `x` (16 words, or 16 vectors of lanes), with `qr!` the kernel's quarter
/// round: ten times a column round and a diagonal round (RFC 8439, section 2.3).
macro_rules! double_rounds {
    ($qr:ident, $x:ident) => {
        for _ in 0..10 {
            $qr!($x, 0, 4, 8, 12);
            $qr!($x, 1, 5, 9, 13);
            $qr!($x, 2, 6, 10, 14);
            $qr!($x, 3, 7, 11, 15);
            $qr!($x, 0, 5, 10, 15);
            $qr!($x, 1, 6, 11, 12);
            $qr!($x, 2, 7, 8, 13);
            $qr!($x, 3, 4, 9, 14);
        }
    };
}

/// The initial state of a batch of blocks, each word broadcast to every lane by `splat`: the constant, the key,
/// the lanes' block counters, and the zero nonce.
macro_rules! initial_state {
    ($splat:ident, $key:expr, $counter:expr) => {{
        let mut init = [$splat(0); 16];
        for (w, c) in SIGMA.iter().enumerate() {
            init[w] = $splat(*c as _);
        }
        for (w, k) in $key.words.iter().enumerate() {
            init[4 + w] = $splat(*k as _);
        }
        init[12] = $counter;
        init
    }};
}

/// Coordinates per group: 16 ChaCha20 blocks of 16 words.
pub const GROUP_WORDS: usize = 256;

/// Adds (or subtracts) the ChaCha20 mask of `key` to `out`, in the word order of this module's documentation.
///
/// The mask of coordinate `i` is the same whatever the length of `out`, so a prefix of a vector can be masked on
/// its own.
pub fn apply_mask(key: &[u8; 32], sign: MaskSign, out: &mut [u32]) {
    apply_masks(&[(*key, sign)], out);
}

/// Applies many masks in one pass over `out`: group by group, every keystream is generated and added while the
/// group is in cache. The result equals applying each mask with [`apply_mask`].
pub fn apply_masks(masks: &[([u8; 32], MaskSign)], out: &mut [u32]) {
    apply_masks_at(masks, out, 0);
}

/// Like [`apply_masks`] on `threads` threads, each taking one contiguous range of whole groups of `out`. Same
/// result as [`apply_masks`]; for the server's unmasking.
pub fn apply_masks_parallel(masks: &[([u8; 32], MaskSign)], out: &mut [u32], threads: usize) {
    if threads <= 1 || out.len() < 2 * 16 * GROUP_WORDS {
        return apply_masks(masks, out);
    }
    let per = out.len().div_ceil(threads).next_multiple_of(GROUP_WORDS);
    std::thread::scope(|scope| {
        for (i, part) in out.chunks_mut(per).enumerate() {
            scope.spawn(move || apply_masks_at(masks, part, i * per / GROUP_WORDS));
        }
    });
}

/// A mask key as ChaCha20 state words, with its sign.
#[derive(Clone, Copy)]
struct Key {
    words: [u32; 8],
    sign: MaskSign,
}

/// Applies the masks to `out`, which starts at group `first_group` (coordinate `first_group · 256`) of the full
/// vector.
pub(crate) fn apply_masks_at(masks: &[([u8; 32], MaskSign)], out: &mut [u32], first_group: usize) {
    let keys: Vec<Key> = masks
        .iter()
        .map(|(key, sign)| {
            let mut words = [0u32; 8];
            for (w, c) in words.iter_mut().zip(key.chunks_exact(4)) {
                *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            Key { words, sign: *sign }
        })
        .collect();
    let whole = out.len() / GROUP_WORDS * GROUP_WORDS;
    let (body, tail) = out.split_at_mut(whole);
    apply_groups(&keys, body, first_group);
    if !tail.is_empty() {
        // The last, partial group: masked in a padded copy (the padding's masks are thrown away).
        let mut padded = [0u32; GROUP_WORDS];
        padded[..tail.len()].copy_from_slice(tail);
        apply_groups(&keys, &mut padded, first_group + body.len() / GROUP_WORDS);
        tail.copy_from_slice(&padded[..tail.len()]);
    }
}

/// Which implementation [`apply_masks`] uses on this CPU: `"avx512"`, `"avx2"` or `"portable"` (for benchmarks).
pub fn implementation() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        return "neon";
    }
    #[allow(unreachable_code)]
    "portable"
}

/// Checks, on this machine, that the ChaCha20 block function gives RFC 8439's test vector and that the mask
/// implementation [`apply_masks`] picks agrees with the portable one word for word: a device whose SIMD path
/// disagreed would mask with something its peers and the server cannot remove. For `fedge-agent self-test`.
pub fn self_test() -> Result<&'static str, String> {
    // RFC 8439, appendix A.1, test vector #1: all-zero key and nonce, block 0 (first 16 bytes).
    const RFC8439_A1_1: [u8; 16] =
        [0x76, 0xb8, 0xe0, 0xad, 0xa0, 0xf1, 0x3d, 0x90, 0x40, 0x5d, 0x6a, 0xe5, 0x53, 0x86, 0xbd, 0x28];
    let block = chacha20_block(&[0; 8], 0);
    let bytes: Vec<u8> = block.iter().take(4).flat_map(|w| w.to_le_bytes()).collect();
    if bytes != RFC8439_A1_1 {
        return Err(format!("the ChaCha20 block function gives {bytes:02x?}, not RFC 8439's test vector"));
    }
    let keys: Vec<Key> = (0..3u32)
        .map(|i| Key {
            words: [i.wrapping_mul(0x9e37_79b9), 7, 1 << 31, 99, i, 0, u32::MAX, 12],
            sign: if i == 1 { MaskSign::Sub } else { MaskSign::Add },
        })
        .collect();
    let start: Vec<u32> = (0..4 * GROUP_WORDS as u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
    let mut portable = start.clone();
    apply_groups_portable(&keys, &mut portable, 3);
    let mut dispatched = start;
    apply_groups(&keys, &mut dispatched, 3);
    match portable.iter().zip(&dispatched).position(|(a, b)| a != b) {
        Some(i) => Err(format!("the {} mask kernel differs from the portable one at coordinate {i}", implementation())),
        None => Ok(implementation()),
    }
}

/// Applies the masks to whole groups (`out.len()` a multiple of [`GROUP_WORDS`]), with the widest SIMD the CPU has.
fn apply_groups(keys: &[Key], out: &mut [u32], first_group: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { apply_groups_avx512(keys, out, first_group) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { apply_groups_avx2(keys, out, first_group) };
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        return apply_groups_neon(keys, out, first_group);
    }
    #[allow(unreachable_code)]
    apply_groups_portable(keys, out, first_group);
}

/// NEON (every aarch64 CPU has it): 4 lanes, so a group is four batches of 4 blocks, each adding to one quarter of
/// every 16-coordinate row. Rotations are a shift and a shift-right-and-insert (16: a half-word swap).
#[cfg(target_arch = "aarch64")]
#[allow(unused_unsafe)]
fn apply_groups_neon(keys: &[Key], out: &mut [u32], first_group: usize) {
    use std::arch::aarch64::*;
    // SAFETY (every block below): NEON is part of the aarch64 baseline; the pointers stay inside `group`, which
    // holds 256 words (row w, quarter q: words 16w + 4q .. 16w + 4q + 4).
    macro_rules! rot {
        ($x:expr, 16) => {
            unsafe { vreinterpretq_u32_u16(vrev32q_u16(vreinterpretq_u16_u32($x))) }
        };
        ($x:expr, $n:literal, $m:literal) => {
            unsafe { vsriq_n_u32::<$m>(vshlq_n_u32::<$n>($x), $x) }
        };
    }
    macro_rules! qr {
        ($x:ident, $a:literal, $b:literal, $c:literal, $d:literal) => {
            unsafe {
                $x[$a] = vaddq_u32($x[$a], $x[$b]);
                $x[$d] = rot!(veorq_u32($x[$d], $x[$a]), 16);
                $x[$c] = vaddq_u32($x[$c], $x[$d]);
                let t = veorq_u32($x[$b], $x[$c]);
                $x[$b] = rot!(t, 12, 20);
                $x[$a] = vaddq_u32($x[$a], $x[$b]);
                let t = veorq_u32($x[$d], $x[$a]);
                $x[$d] = rot!(t, 8, 24);
                $x[$c] = vaddq_u32($x[$c], $x[$d]);
                let t = veorq_u32($x[$b], $x[$c]);
                $x[$b] = rot!(t, 7, 25);
            }
        };
    }
    let lanes = unsafe { vld1q_u32([0u32, 1, 2, 3].as_ptr()) };
    for (g, group) in out.chunks_exact_mut(GROUP_WORDS).enumerate() {
        let p = group.as_mut_ptr();
        for quarter in 0..4 {
            // Block counters fit in 32 bits: a delta has at most 2^28 coordinates, i.e. 2^24 blocks.
            let base = ((first_group + g) * 16 + 4 * quarter) as u32;
            let counter = unsafe { vaddq_u32(vdupq_n_u32(base), lanes) };
            for key in keys {
                let init = unsafe { initial_state!(vdupq_n_u32, key, counter) };
                let mut x = init;
                double_rounds!(qr, x);
                for w in 0..16 {
                    unsafe {
                        let ks = vaddq_u32(x[w], init[w]);
                        let at = p.add(16 * w + 4 * quarter);
                        let v = vld1q_u32(at);
                        let v = match key.sign {
                            MaskSign::Add => vaddq_u32(v, ks),
                            MaskSign::Sub => vsubq_u32(v, ks),
                        };
                        vst1q_u32(at, v);
                    }
                }
            }
        }
    }
}

/// AVX-512F: one zmm register per state word, 16 blocks side by side, rotations by `vprold`, and each state word
/// added to its 16 coordinates with one load and one store.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn apply_groups_avx512(keys: &[Key], out: &mut [u32], first_group: usize) {
    use std::arch::x86_64::*;
    macro_rules! qr {
        ($x:ident, $a:literal, $b:literal, $c:literal, $d:literal) => {
            $x[$a] = _mm512_add_epi32($x[$a], $x[$b]);
            $x[$d] = _mm512_rol_epi32::<16>(_mm512_xor_si512($x[$d], $x[$a]));
            $x[$c] = _mm512_add_epi32($x[$c], $x[$d]);
            $x[$b] = _mm512_rol_epi32::<12>(_mm512_xor_si512($x[$b], $x[$c]));
            $x[$a] = _mm512_add_epi32($x[$a], $x[$b]);
            $x[$d] = _mm512_rol_epi32::<8>(_mm512_xor_si512($x[$d], $x[$a]));
            $x[$c] = _mm512_add_epi32($x[$c], $x[$d]);
            $x[$b] = _mm512_rol_epi32::<7>(_mm512_xor_si512($x[$b], $x[$c]));
        };
    }
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (g, group) in out.chunks_exact_mut(GROUP_WORDS).enumerate() {
        // Block counters fit in 32 bits: a delta has at most 2^28 coordinates, i.e. 2^24 blocks.
        let counter = _mm512_add_epi32(_mm512_set1_epi32(((first_group + g) * 16) as i32), lanes);
        let p = group.as_mut_ptr();
        for key in keys {
            let init = initial_state!(_mm512_set1_epi32, key, counter);
            let mut x = init;
            double_rounds!(qr, x);
            for w in 0..16 {
                let ks = _mm512_add_epi32(x[w], init[w]);
                // SAFETY: `group` holds 256 words, so words 16w..16w+16 are in bounds; unaligned access is allowed.
                let at = unsafe { p.add(16 * w) };
                let v = unsafe { _mm512_loadu_si512(at.cast()) };
                let v = match key.sign {
                    MaskSign::Add => _mm512_add_epi32(v, ks),
                    MaskSign::Sub => _mm512_sub_epi32(v, ks),
                };
                unsafe { _mm512_storeu_si512(at.cast(), v) };
            }
        }
    }
}

/// AVX2: the same as [`apply_groups_avx512`] with 8 lanes, so a group is two batches of 8 blocks, each adding to
/// one half of every 16-coordinate row. Rotations by 16 and 8 are byte shuffles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn apply_groups_avx2(keys: &[Key], out: &mut [u32], first_group: usize) {
    use std::arch::x86_64::*;
    let rot16 = _mm256_setr_epi8(
        2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,
    );
    let rot8 = _mm256_setr_epi8(
        3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14,
    );
    macro_rules! qr {
        ($x:ident, $a:literal, $b:literal, $c:literal, $d:literal) => {
            $x[$a] = _mm256_add_epi32($x[$a], $x[$b]);
            $x[$d] = _mm256_shuffle_epi8(_mm256_xor_si256($x[$d], $x[$a]), rot16);
            $x[$c] = _mm256_add_epi32($x[$c], $x[$d]);
            let t = _mm256_xor_si256($x[$b], $x[$c]);
            $x[$b] = _mm256_or_si256(_mm256_slli_epi32::<12>(t), _mm256_srli_epi32::<20>(t));
            $x[$a] = _mm256_add_epi32($x[$a], $x[$b]);
            $x[$d] = _mm256_shuffle_epi8(_mm256_xor_si256($x[$d], $x[$a]), rot8);
            $x[$c] = _mm256_add_epi32($x[$c], $x[$d]);
            let t = _mm256_xor_si256($x[$b], $x[$c]);
            $x[$b] = _mm256_or_si256(_mm256_slli_epi32::<7>(t), _mm256_srli_epi32::<25>(t));
        };
    }
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (g, group) in out.chunks_exact_mut(GROUP_WORDS).enumerate() {
        let p = group.as_mut_ptr();
        for half in 0..2 {
            // Block counters fit in 32 bits: a delta has at most 2^28 coordinates, i.e. 2^24 blocks.
            let base = ((first_group + g) * 16 + 8 * half) as i32;
            let counter = _mm256_add_epi32(_mm256_set1_epi32(base), lanes);
            for key in keys {
                let init = initial_state!(_mm256_set1_epi32, key, counter);
                let mut x = init;
                double_rounds!(qr, x);
                for w in 0..16 {
                    let ks = _mm256_add_epi32(x[w], init[w]);
                    // SAFETY: `group` holds 256 words, so words 16w+8h..16w+8h+8 are in bounds; unaligned access
                    // is allowed.
                    let at = unsafe { p.add(16 * w + 8 * half) };
                    let v = unsafe { _mm256_loadu_si256(at.cast()) };
                    let v = match key.sign {
                        MaskSign::Add => _mm256_add_epi32(v, ks),
                        MaskSign::Sub => _mm256_sub_epi32(v, ks),
                    };
                    unsafe { _mm256_storeu_si256(at.cast(), v) };
                }
            }
        }
    }
}

/// The ChaCha constant, "expand 32-byte k".
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// Plain Rust, one block at a time (for CPUs without the SIMD above): block `16g + b` adds its word `w` to
/// coordinate `16w + b` of group `g`.
fn apply_groups_portable(keys: &[Key], out: &mut [u32], first_group: usize) {
    for (g, group) in out.chunks_exact_mut(GROUP_WORDS).enumerate() {
        // Block counters fit in 32 bits: a delta has at most 2^28 coordinates, i.e. 2^24 blocks.
        let counter = ((first_group + g) * 16) as u32;
        for key in keys {
            for b in 0..16 {
                let block = chacha20_block(&key.words, counter + b as u32);
                for (w, word) in block.iter().enumerate() {
                    let o = &mut group[16 * w + b];
                    *o = match key.sign {
                        MaskSign::Add => o.wrapping_add(*word),
                        MaskSign::Sub => o.wrapping_sub(*word),
                    };
                }
            }
        }
    }
}

/// ChaCha20 block `counter` of `key` with nonce 0 (RFC 8439, section 2.3), as 16 words.
#[inline(always)]
fn chacha20_block(key: &[u32; 8], counter: u32) -> [u32; 16] {
    let mut init = [0u32; 16];
    init[..4].copy_from_slice(&SIGMA);
    init[4..12].copy_from_slice(key);
    init[12] = counter;
    // Words 13-15 (the nonce) stay zero.
    let mut x = init;
    macro_rules! qr {
        ($x:ident, $a:literal, $b:literal, $c:literal, $d:literal) => {
            quarter_round(&mut $x, $a, $b, $c, $d)
        };
    }
    double_rounds!(qr, x);
    for (a, b) in x.iter_mut().zip(init) {
        *a = a.wrapping_add(b);
    }
    x
}

#[inline(always)]
fn quarter_round(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(16);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(12);
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(8);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(7);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::ChaCha20;
    use chacha20::cipher::{KeyIvInit, StreamCipher};

    /// The mask of this module's documentation, computed from the `chacha20` crate's standard keystream.
    fn reference_mask(key: &[u8; 32], len: usize) -> Vec<u32> {
        let groups = len.div_ceil(GROUP_WORDS);
        let mut stream = vec![0u8; groups * GROUP_WORDS * 4];
        ChaCha20::new(key.into(), &[0u8; 12].into()).apply_keystream(&mut stream);
        (0..len)
            .map(|i| {
                let (g, r) = (i / GROUP_WORDS, i % GROUP_WORDS);
                let (w, b) = (r / 16, r % 16);
                let at = (g * 16 + b) * 64 + 4 * w;
                u32::from_le_bytes([stream[at], stream[at + 1], stream[at + 2], stream[at + 3]])
            })
            .collect()
    }

    #[test]
    fn the_mask_is_the_chacha20_keystream_in_the_documented_order() {
        for (key, len) in [([9u8; 32], 1), ([1u8; 32], 255), ([0xa5; 32], 256), ([3u8; 32], 4097)] {
            let mut v = vec![0u32; len];
            apply_mask(&key, MaskSign::Add, &mut v);
            assert_eq!(v, reference_mask(&key, len), "len {len}");
        }
    }

    #[test]
    fn every_implementation_gives_the_same_mask() {
        let keys: Vec<Key> = (0..3u32)
            .map(|i| Key {
                words: [i, 7, 1 << 31, 99, i * 5, 0, u32::MAX, 12],
                sign: if i == 1 { MaskSign::Sub } else { MaskSign::Add },
            })
            .collect();
        let start: Vec<u32> = (0..8 * GROUP_WORDS as u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
        let mut portable = start.clone();
        apply_groups_portable(&keys, &mut portable, 5);
        let mut dispatched = start.clone();
        apply_groups(&keys, &mut dispatched, 5);
        assert_eq!(portable, dispatched);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                let mut v = start.clone();
                // SAFETY: AVX2 is present, checked just above.
                unsafe { apply_groups_avx2(&keys, &mut v, 5) };
                assert_eq!(v, portable, "AVX2");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                let mut v = start.clone();
                // SAFETY: AVX-512F is present, checked just above.
                unsafe { apply_groups_avx512(&keys, &mut v, 5) };
                assert_eq!(v, portable, "AVX-512");
            }
        }
    }

    #[test]
    fn the_self_test_passes_here_and_names_the_kernel() {
        assert_eq!(self_test(), Ok(implementation()));
    }

    #[test]
    fn the_rfc8439_vector_of_the_self_test_is_the_chacha20_crates_keystream() {
        let mut stream = [0u8; 16];
        ChaCha20::new(&[0u8; 32].into(), &[0u8; 12].into()).apply_keystream(&mut stream);
        let ours: Vec<u8> = chacha20_block(&[0; 8], 0).iter().take(4).flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(ours, stream);
    }

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
