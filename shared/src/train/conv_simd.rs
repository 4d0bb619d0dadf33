//! The forward convolution in f32 on a register-blocked kernel of fedge's own, for `FedgeConv` (inference plans and
//! the training step's forward pass): AVX2 and FMA on x86-64 (checked at run time), NEON on aarch64 (every 64-bit
//! ARM core has it: Raspberry Pi 3, 4, 5 and Zero 2 W). Per image, group and tile of output rows, the input rows the
//! tile reads are copied once with their pads as zeros, and a 6×16 register-blocked kernel computes 6 output
//! channels at 16 output positions, broadcasting the weights straight from W and reading, for each of the
//! `k = C·KH·KW` weights of a channel, 16 input values at that weight's offset ([`Rows`]). It writes Y with the bias
//! added. Nothing is packed, nothing is zeroed: `conv_gemm::forward` on matrixmultiply unfolded into a freshly zeroed
//! buffer that matrixmultiply then copied again into its panels (at batch 1, unfolding, packing and zeroing were 28%
//! of the example CNN's inference; BENCHMARKS.md, "CNN inference at batch 1").
//!
//! Where the horizontal stride is 1, a window's 16 positions along an output row read 16 consecutive padded values,
//! so the kernel reads the padded rows directly ([`Layout::Direct`]: a panel never crosses an output row, its last
//! lanes are computed and dropped when the row is not a multiple of 16 long). Otherwise, or where those dropped lanes
//! would cost more than unfolding, the tile is first unfolded (im2col) into rows of whole panels
//! ([`Layout::Unfolded`]), each unfolded row a plain copy from the padded rows. Both buffers are kept per thread
//! between calls.
//!
//! On an x86-64 CPU without AVX2 and FMA, or on another architecture (32-bit ARM included), [`forward`] is
//! `conv_gemm::forward`. Shapes are checked as there: a mismatch is an error, never a read or write out of bounds;
//! the kernel's `unsafe` block runs only on slices whose extents were checked for it. [`self_test`] checks the
//! kernel against the portable path on the CPU it runs on (`fedge-agent self-test`, run under emulation by
//! `scripts/pi-check.sh`).

use std::cell::RefCell;

use super::conv_gemm::{self, ConvShapeError, Geometry, TILE};

/// Output positions per panel (two AVX or four NEON registers of f32).
const NR: usize = 16;
/// Output channels per register block.
const MR: usize = 6;

thread_local! {
    /// The padded input rows and the unfolded columns of the current tile, kept between calls (at most a few MiB
    /// per thread: the columns are bounded by [`TILE`] values).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Y (`[N, M, OH, OW]`, every value overwritten) of the convolution of X (`[N, C, H, W]`) by W
/// (`[M, C/group, KH, KW]`), plus `bias` (`[M]`) if given, in f32; with `relu`, `max(Y, 0)`.
pub fn forward(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) -> Result<(), ConvShapeError> {
    if !available() {
        conv_gemm::forward(g, x, w, bias, y)?;
        if relu {
            y.iter_mut().for_each(|v| *v = positive(*v));
        }
        return Ok(());
    }
    in_layout(g, x, w, bias, relu, y, Layout::for_geometry(g))
}

/// [`forward`] on this CPU's kernel (AVX2 and FMA, or NEON), reading the input as `layout` says.
fn in_layout(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
    layout: Layout,
) -> Result<(), ConvShapeError> {
    conv_gemm::check_forward(g, x, w, bias, y)?;
    assert!(layout == Layout::Unfolded || g.stride[1] == 1, "reading the padded rows directly needs stride 1");
    SCRATCH.with(|s| blocked(g, x, w, bias, relu, y, layout, &mut s.borrow_mut()));
    Ok(())
}

/// How the kernel reads a tile's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// From the padded rows in place, in panels of 16 positions of one output row (horizontal stride 1 only).
    Direct,
    /// From the tile unfolded into `k` rows of whole panels of 16 positions.
    Unfolded,
}

impl Layout {
    /// Direct where the stride allows it and the lanes it computes and drops (`⌈OW/16⌉·16 − OW` per output row) cost
    /// less than unfolding: each unfolded value is one copy and is then read by `M/6` register blocks of 12 FMAs
    /// per 16 values, so unfolding costs about `16/M` of the product (measured: 11% of the example CNN's inference
    /// against its kernel's 44%, M = 64). Direct when `dropped/OW ≤ 16/M`.
    fn for_geometry(g: &Geometry) -> Layout {
        let dropped = g.ow.div_ceil(NR) * NR - g.ow;
        if g.stride[1] == 1 && dropped * (g.m / g.group) <= NR * g.ow { Layout::Direct } else { Layout::Unfolded }
    }
}

/// The offsets, from a panel's first input value, of the 16 values each of the `k` weights of an output channel
/// multiplies, with the largest of them: the kernel reads `offsets[kk]..offsets[kk] + 16` past the panel's start
/// for every `kk`, so one bound (`max + 16` within the slice) covers every read.
struct Rows {
    offsets: Vec<usize>,
    max: usize,
}

impl Rows {
    fn new(offsets: Vec<usize>) -> Rows {
        let max = offsets.iter().copied().max().unwrap_or(0);
        Rows { offsets, max }
    }

    /// Unfolded rows of `ld` values: row `kk` at `kk·ld`.
    fn unfolded(k: usize, ld: usize) -> Rows {
        Rows::new((0..k).map(|kk| kk * ld).collect())
    }

    /// The tile's padded rows read in place: weight `(channel, ki, kj)` at padded value `[channel][ki·dh][kj·dw]`
    /// (channels `prows·pw` values apart).
    fn direct(g: &Geometry, tile: &Tile) -> Rows {
        let (cg, chan) = (g.c / g.group, tile.prows * tile.pw);
        let mut offsets = Vec::with_capacity(cg * g.kh * g.kw);
        for ch in 0..cg {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    offsets.push(ch * chan + ki * g.dilation[0] * tile.pw + kj * g.dilation[1]);
                }
            }
        }
        Rows::new(offsets)
    }
}

/// `max(v, 0)` as a select the compiler vectorises (0 for NaN).
#[inline(always)]
fn positive(v: f32) -> f32 {
    if v > 0.0 { v } else { 0.0 }
}

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The kernel this CPU runs: `"AVX2"`, `"NEON"` or `"portable"` (matrixmultiply's path).
pub fn implementation() -> &'static str {
    match (available(), cfg!(target_arch = "aarch64")) {
        (false, _) => "portable",
        (true, false) => "AVX2",
        (true, true) => "NEON",
    }
}

/// Checks this CPU's kernel against the portable path (`conv_gemm::forward`) on the example CNN's second layer and
/// on a strided, dilated, grouped one (both layouts where they apply), and returns the kernel's name. Sums of up to
/// 800 products in another order: within `1e-4` of each other relative to the values' scale.
pub fn self_test() -> Result<&'static str, String> {
    let geometries = [
        Geometry::new(&[1, 32, 14, 14], &[64, 32, 5, 5], &[1, 1], &[1, 1], &[2, 2, 2, 2], 1),
        Geometry::new(&[2, 4, 11, 23], &[6, 2, 3, 2], &[2, 1], &[1, 2], &[1, 0, 2, 1], 2),
        Geometry::new(&[1, 3, 9, 9], &[5, 3, 3, 3], &[2, 2], &[1, 1], &[1, 1, 1, 1], 1),
    ];
    for g in geometries {
        let g = g.map_err(|e| e.to_string())?;
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n).map(|i| ((i * 2_654_435_761 + seed) % 2001) as f32 / 1000.0 - 1.0).collect()
        };
        let x = values(g.n * g.c * g.h * g.w, 1);
        let w = values(g.m * (g.c / g.group) * g.kh * g.kw, 7);
        let bias = values(g.m, 3);
        let mut want = vec![0.0f32; g.n * g.m * g.oh * g.ow];
        conv_gemm::forward(&g, &x, &w, Some(&bias), &mut want).map_err(|e| e.to_string())?;
        let layouts: &[Layout] =
            if g.stride[1] == 1 { &[Layout::Direct, Layout::Unfolded] } else { &[Layout::Unfolded] };
        for &layout in layouts.iter().take(if available() { 2 } else { 0 }) {
            let mut got = vec![f32::NAN; want.len()];
            in_layout(&g, &x, &w, Some(&bias), false, &mut got, layout).map_err(|e| e.to_string())?;
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            if let Some(i) =
                got.iter().zip(&want).position(|(a, b)| (a - b).abs().is_nan() || (a - b).abs() > 1e-4 * scale)
            {
                return Err(format!(
                    "the {} convolution kernel ({layout:?}) gives {} at Y[{i}] where the portable one gives {} ({g:?})",
                    implementation(),
                    got[i],
                    want[i]
                ));
            }
        }
    }
    Ok(implementation())
}

/// The tile's geometry: output rows `first..first + r`, unfolded into `k` rows of `ld` values (`t = r·ow` of them
/// used), read from `prows` padded input rows of `pw` values per channel.
#[derive(Debug, Clone, Copy)]
struct Tile {
    first: usize,
    r: usize,
    t: usize,
    ld: usize,
    prows: usize,
    pw: usize,
}

/// The padded width every tile reads: the columns the kernel's windows reach (`(ow−1)·sw + (kw−1)·dw + 1`).
fn padded_width(g: &Geometry) -> usize {
    (g.ow - 1) * g.stride[1] + (g.kw - 1) * g.dilation[1] + 1
}

/// Output rows per tile: the unfolded columns (rows padded to panels) stay within [`TILE`] values, at least one row.
fn tile_rows(g: &Geometry, k: usize) -> usize {
    let per_row = k * g.ow;
    (TILE / per_row.max(1)).clamp(1, g.oh.max(1))
}

#[allow(clippy::too_many_arguments)]
fn blocked(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
    layout: Layout,
    scratch: &mut Vec<f32>,
) {
    let (cg, mg) = (g.c / g.group, g.m / g.group);
    let k = cg * g.kh * g.kw;
    let (o, plane) = (g.oh * g.ow, g.h * g.w);
    let rows_per_tile = tile_rows(g, k);
    let pw = padded_width(g);
    let max_prows = (rows_per_tile - 1) * g.stride[0] + (g.kh - 1) * g.dilation[0] + 1;
    let max_ld = (rows_per_tile * g.ow).div_ceil(NR) * NR;
    // Padded input (plus a panel of slack, which the unfolding's whole-chunk copies may read past a row's end),
    // then the columns.
    let p_len = cg * max_prows * pw + NR;
    let need = p_len + if layout == Layout::Unfolded { k * max_ld } else { 0 };
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (padded, cols) = scratch.split_at_mut(p_len);
    for img in 0..g.n {
        for grp in 0..g.group {
            let x_img = &x[(img * g.c + grp * cg) * plane..(img * g.c + (grp + 1) * cg) * plane];
            let wg = &w[grp * mg * k..(grp + 1) * mg * k];
            for first in (0..g.oh).step_by(rows_per_tile) {
                let r = rows_per_tile.min(g.oh - first);
                let t = r * g.ow;
                let tile = Tile {
                    first,
                    r,
                    t,
                    ld: t.div_ceil(NR) * NR,
                    prows: (r - 1) * g.stride[0] + (g.kh - 1) * g.dilation[0] + 1,
                    pw,
                };
                let padded = &mut padded[..cg * tile.prows * pw + NR];
                pad_rows(g, x_img, &tile, padded);
                let start = (img * g.m + grp * mg) * o + first * g.ow;
                let b = bias.map(|b| &b[grp * mg..(grp + 1) * mg]);
                let out = Out { y: &mut y[start..], o, bias: b, relu };
                match layout {
                    Layout::Unfolded => {
                        let cols = &mut cols[..k * tile.ld];
                        unfold(g, padded, &tile, cols);
                        let panels = (0..tile.t).step_by(NR).map(|j| (j, j, NR.min(tile.t - j)));
                        multiply(wg, &Rows::unfolded(k, tile.ld), cols, panels, out);
                    }
                    Layout::Direct => {
                        // Output row i's positions ox.. read padded row i·sh from column ox (stride 1).
                        let panels = (0..r).flat_map(|i| {
                            (0..g.ow)
                                .step_by(NR)
                                .map(move |ox| (i * g.stride[0] * pw + ox, i * g.ow + ox, NR.min(g.ow - ox)))
                        });
                        multiply(wg, &Rows::direct(g, &tile), padded, panels, out);
                    }
                }
            }
        }
    }
}

/// The input rows the tile reads, per channel, with the pads as zeros: padded row `pr` of a channel is input row
/// `first·sh + pr − ph`, padded column `pc` input column `pc − pw`. The slack after the last row is zeroed too.
fn pad_rows(g: &Geometry, x: &[f32], tile: &Tile, padded: &mut [f32]) {
    let plane = g.h * g.w;
    let (rows, slack) = padded.split_at_mut(padded.len() - NR);
    slack.fill(0.0);
    for (ch, dst) in rows.chunks_exact_mut(tile.prows * tile.pw).enumerate() {
        let src = &x[ch * plane..(ch + 1) * plane];
        for (pr, row) in dst.chunks_exact_mut(tile.pw).enumerate() {
            let Some(ih) = (tile.first * g.stride[0] + pr).checked_sub(g.pad[0]).filter(|ih| *ih < g.h) else {
                row.fill(0.0);
                continue;
            };
            // Padded columns pad[1] .. pad[1] + w hold the input row (as far as the padded width reaches).
            let lo = g.pad[1].min(tile.pw);
            let hi = (g.pad[1] + g.w).min(tile.pw);
            row[..lo].fill(0.0);
            row[lo..hi].copy_from_slice(&src[ih * g.w..ih * g.w + hi - lo]);
            row[hi..].fill(0.0);
        }
    }
}

/// The tile's unfolded columns: row `(channel, ki, kj)` (of `ld` values), column `i·ow + ox` for output row
/// `first + i` holds padded value `[channel][i·sh + ki·dh][ox·sw + kj·dw]`. Columns `t..ld` are left as they were.
fn unfold(g: &Geometry, padded: &[f32], tile: &Tile, cols: &mut [f32]) {
    let (sh, sw, dh, dw) = (g.stride[0], g.stride[1], g.dilation[0], g.dilation[1]);
    let ow = g.ow;
    let chan = tile.prows * tile.pw;
    for (row, dst) in cols.chunks_exact_mut(tile.ld).enumerate() {
        let kj = row % g.kw;
        let ki = row / g.kw % g.kh;
        let ch = row / (g.kw * g.kh);
        let p = &padded[ch * chan..];
        for i in 0..tile.r {
            let src = &p[(i * sh + ki * dh) * tile.pw + kj * dw..];
            let out = &mut dst[i * ow..];
            if sw == 1 {
                copy_row(out, src, ow, i + 1 < tile.r);
            } else {
                for (d, s) in out[..ow].iter_mut().zip(src.iter().step_by(sw)) {
                    *d = *s;
                }
            }
        }
    }
}

/// `dst[..n] = src[..n]` in whole chunks of 8; with `spill`, the last chunk may write past `n` (the next output
/// row, written after it) and always reads whole chunks (the padded rows' slack covers the last one).
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32], n: usize, spill: bool) {
    let mut i = 0;
    while i + 8 <= n {
        let d: &mut [f32; 8] = (&mut dst[i..i + 8]).try_into().expect("8 values");
        *d = src[i..i + 8].try_into().expect("8 values");
        i += 8;
    }
    if i < n {
        if spill && src.len() >= i + 8 && dst.len() >= i + 8 {
            let d: &mut [f32; 8] = (&mut dst[i..i + 8]).try_into().expect("8 values");
            *d = src[i..i + 8].try_into().expect("8 values");
        } else {
            dst[i..n].copy_from_slice(&src[i..n]);
        }
    }
}

/// Where a tile's outputs go: `y` from the tile's first position of channel 0, channels `o` apart, with the bias
/// added and, with `relu`, the positive part taken.
struct Out<'a> {
    y: &'a mut [f32],
    o: usize,
    bias: Option<&'a [f32]>,
    relu: bool,
}

/// For each panel `(from, at, n)`: `Y[m, at + j] = Σ_kk W[m, kk] · b[from + rows.offsets[kk] + j]` for `j < n`,
/// every output channel `m`.
fn multiply(w: &[f32], rows: &Rows, b: &[f32], panels: impl Iterator<Item = (usize, usize, usize)>, out: Out) {
    let k = rows.offsets.len();
    let m = w.len() / k.max(1);
    let mut block = [[0.0f32; NR]; MR];
    for (from, at, n) in panels {
        for m0 in (0..m).step_by(MR) {
            let mr = MR.min(m - m0);
            kernel(mr, &w[m0 * k..(m0 + mr) * k], rows, &b[from..], &mut block);
            for (r, acc) in block[..mr].iter().enumerate() {
                let add = out.bias.map_or(0.0, |b| b[m0 + r]);
                let dst = &mut out.y[(m0 + r) * out.o + at..(m0 + r) * out.o + at + n];
                if out.relu {
                    for (d, v) in dst.iter_mut().zip(acc) {
                        *d = positive(*v + add);
                    }
                } else {
                    for (d, v) in dst.iter_mut().zip(acc) {
                        *d = *v + add;
                    }
                }
            }
        }
    }
}

/// `block[r][..16] = Σ_kk a[r·k + kk] · b[rows.offsets[kk]..][..16]` for `r < mr` (`a` holds `mr` rows of `k`
/// weights).
fn kernel(mr: usize, a: &[f32], rows: &Rows, b: &[f32], block: &mut [[f32; NR]; MR]) {
    let k = rows.offsets.len();
    assert!(
        (1..=MR).contains(&mr) && a.len() >= mr * k && (k == 0 || b.len() >= rows.max + NR),
        "kernel: {mr} rows of {k} weights in {}, rows up to {} in {}",
        a.len(),
        rows.max,
        b.len()
    );
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        #[cfg(target_arch = "aarch64")]
        use arm as simd;
        #[cfg(target_arch = "x86_64")]
        use x86 as simd;
        let (a, offsets, b) = (a.as_ptr(), rows.offsets.as_ptr(), b.as_ptr());
        // SAFETY: the CPU runs the kernel (x86-64: `available()` was true before any call here, as only `forward`
        // reaches this, after checking; aarch64: NEON is part of every such CPU), and the assertion above guarantees
        // every read: rows `r < mr` of `k` values at `a + r·k`, and 16 values at `b + offsets[kk]` for each of the
        // `k` offsets (none above `rows.max`).
        unsafe {
            match mr {
                1 => simd::block::<1>(k, a, offsets, b, block),
                2 => simd::block::<2>(k, a, offsets, b, block),
                3 => simd::block::<3>(k, a, offsets, b, block),
                4 => simd::block::<4>(k, a, offsets, b, block),
                5 => simd::block::<5>(k, a, offsets, b, block),
                _ => simd::block::<6>(k, a, offsets, b, block),
            }
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        // Unreachable without a kernel (`forward` falls back first); kept as plain sums so the module stays portable.
        for (r, out) in block[..mr].iter_mut().enumerate() {
            *out = [0.0; NR];
            for (kk, &off) in rows.offsets.iter().enumerate() {
                let av = a[r * k + kk];
                for (o, bv) in out.iter_mut().zip(&b[off..off + NR]) {
                    *o += av * bv;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// The register block: `R` rows of 16 sums in 2·R AVX registers, a broadcast weight times two loads of B per
    /// step.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `a` must address `R` rows of `k` f32 values `k` apart, `offsets` `k` values,
    /// and `b + offsets[kk]` 16 f32 values for each.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block<const R: usize>(
        k: usize,
        a: *const f32,
        offsets: *const usize,
        b: *const f32,
        out: &mut [[f32; NR]; MR],
    ) {
        // SAFETY (the whole body): the reads stay within the extents the caller guarantees; the stores go to `out`.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for kk in 0..k {
                let bp = b.add(*offsets.add(kk));
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(r * k + kk));
                    acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(out[r].as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(out[r].as_mut_ptr().add(8), acc[1]);
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::{MR, NR};

    /// The register block: `R` rows of 16 sums in 4·R NEON registers (24 of the 32 at `R = 6`), a weight times
    /// four loads of B per step.
    ///
    /// # Safety
    /// `a` must address `R` rows of `k` f32 values `k` apart, `offsets` `k` values, and `b + offsets[kk]` 16 f32
    /// values for each.
    pub(super) unsafe fn block<const R: usize>(
        k: usize,
        a: *const f32,
        offsets: *const usize,
        b: *const f32,
        out: &mut [[f32; NR]; MR],
    ) {
        // SAFETY (the whole body): the reads stay within the extents the caller guarantees; the stores go to `out`.
        unsafe {
            let mut acc = [[vdupq_n_f32(0.0); 4]; R];
            for kk in 0..k {
                let bp = b.add(*offsets.add(kk));
                let bv = [vld1q_f32(bp), vld1q_f32(bp.add(4)), vld1q_f32(bp.add(8)), vld1q_f32(bp.add(12))];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = *a.add(r * k + kk);
                    for (acc, bv) in acc.iter_mut().zip(&bv) {
                        *acc = vfmaq_n_f32(*acc, *bv, av);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (i, acc) in acc.iter().enumerate() {
                    vst1q_f32(out[r].as_mut_ptr().add(4 * i), *acc);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    /// The definition in f64, for an f32 result within its rounding.
    fn reference(g: &Geometry, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f64> {
        let (cg, mg) = (g.c / g.group, g.m / g.group);
        let mut y = vec![];
        for n in 0..g.n {
            for m in 0..g.m {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut s = bias[m] as f64;
                        for ci in 0..cg {
                            let c = m / mg * cg + ci;
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    let iy = (oy * g.stride[0] + ki * g.dilation[0]) as isize - g.pad[0] as isize;
                                    let ix = (ox * g.stride[1] + kj * g.dilation[1]) as isize - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let xv = x[((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                                    let wv = w[((m * cg + ci) * g.kh + ki) * g.kw + kj];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y.push(s);
                    }
                }
            }
        }
        y
    }

    fn check(g: &Geometry, seed: u64, relu: bool) -> Result<(), String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = random(&mut rng, g.n * g.c * g.h * g.w);
        let w = random(&mut rng, g.m * (g.c / g.group) * g.kh * g.kw);
        let bias = random(&mut rng, g.m);
        let mut want = reference(g, &x, &w, &bias);
        if relu {
            want.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        // Both layouts where the CPU has the kernel (direct only at stride 1), else the fallback.
        let layouts: &[Option<Layout>] = match (available(), g.stride[1]) {
            (false, _) => &[None],
            (true, 1) => &[Some(Layout::Direct), Some(Layout::Unfolded)],
            (true, _) => &[Some(Layout::Unfolded)],
        };
        let mut first: Option<Vec<f32>> = None;
        for layout in layouts {
            // Stale values in the output and in the reused scratch must not show through.
            let mut y = vec![f32::NAN; want.len()];
            match layout {
                Some(l) => in_layout(g, &x, &w, Some(&bias), relu, &mut y, *l),
                None => forward(g, &x, &w, Some(&bias), relu, &mut y),
            }
            .map_err(|e| e.to_string())?;
            let k = (g.c / g.group * g.kh * g.kw) as f64;
            for (i, (got, want)) in y.iter().zip(&want).enumerate() {
                if (*got as f64 - want).abs() > 1e-5 * k.sqrt() * (1.0 + want.abs()) {
                    return Err(format!("Y[{i}] = {got}, want {want} for {g:?} read {layout:?}"));
                }
            }
            // The layouts run the same FMAs in the same order on the same values: the same bits.
            match &first {
                Some(f) if f.iter().zip(&y).any(|(a, b)| a.to_bits() != b.to_bits()) => {
                    return Err(format!("{layout:?} differs from the first layout's Y for {g:?}"));
                }
                Some(_) => {}
                None => first = Some(y),
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Random 1-D and 2-D geometries (strides, dilations, uneven pads, groups, channel counts that leave a
        /// partial register block, widths that leave a partial panel) equal the definition.
        #[test]
        fn the_blocked_convolution_matches_the_definition(
            one_d in any::<bool>(), n in 1usize..3, cg in 1usize..5, mg in 1usize..9, group in 1usize..3,
            h in 1usize..9, w in 1usize..21, kh in 1usize..4, kw in 1usize..6, sh in 1usize..3, sw in 1usize..3,
            dh in 1usize..3, dw in 1usize..3, pads in proptest::collection::vec(0usize..3, 4), seed in 0u64..1000,
            relu in any::<bool>(),
        ) {
            let (c, m) = (cg * group, mg * group);
            let (x_shape, w_shape, strides, dilations, p) = if one_d {
                (vec![n, c, w], vec![m, cg, kw], vec![sw], vec![dw], vec![pads[1], pads[3]])
            } else {
                (vec![n, c, h, w], vec![m, cg, kh, kw], vec![sh, sw], vec![dh, dw], pads.clone())
            };
            let Ok(g) = Geometry::new(&x_shape, &w_shape, &strides, &dilations, &p, group) else {
                return Ok(());
            };
            prop_assert!(check(&g, seed, relu).is_ok(), "{:?}", check(&g, seed, relu));
        }
    }

    #[test]
    fn the_example_cnn_s_convolutions_and_a_tiled_one_match_the_definition() {
        // The example CNN's two layers at batch 2, and one whose unfolded image exceeds a tile (several tiles,
        // the last one partial).
        for (xs, ws) in [([2, 1, 28, 28], [32, 1, 5, 5]), ([2, 32, 14, 14], [64, 32, 5, 5])] {
            let g = Geometry::new(&xs, &ws, &[1, 1], &[1, 1], &[2, 2, 2, 2], 1).unwrap();
            check(&g, 1, false).unwrap();
            check(&g, 2, true).unwrap();
        }
        let g = Geometry::new(&[1, 128, 41, 40], &[7, 128, 3, 3], &[1, 1], &[1, 1], &[1, 1, 1, 1], 1).unwrap();
        assert!(tile_rows(&g, 128 * 9) < g.oh && !g.oh.is_multiple_of(tile_rows(&g, 128 * 9)));
        check(&g, 3, false).unwrap();
    }

    #[test]
    fn the_padded_rows_are_read_directly_where_few_lanes_are_dropped() {
        let geometry = |xs: &[usize], ws: &[usize], stride: usize| {
            Geometry::new(xs, ws, &[stride, stride], &[1, 1], &[2, 2, 2, 2], 1).unwrap()
        };
        // The example CNN: rows of 28 and 14 positions (4 and 2 of 32 and 16 lanes dropped).
        assert_eq!(Layout::for_geometry(&geometry(&[1, 1, 28, 28], &[32, 1, 5, 5], 1)), Layout::Direct);
        assert_eq!(Layout::for_geometry(&geometry(&[1, 32, 14, 14], &[64, 32, 5, 5], 1)), Layout::Direct);
        // Rows of 7 positions drop 9 of 16 lanes: unfolded. So is any horizontal stride but 1.
        assert_eq!(Layout::for_geometry(&geometry(&[1, 64, 7, 7], &[64, 64, 5, 5], 1)), Layout::Unfolded);
        assert_eq!(Layout::for_geometry(&geometry(&[1, 1, 28, 28], &[32, 1, 5, 5], 2)), Layout::Unfolded);
    }

    #[test]
    fn the_self_test_passes_and_names_the_kernel() {
        let name = self_test().unwrap();
        assert_eq!(name, implementation());
        assert_eq!(name == "portable", !available());
    }

    #[test]
    fn buffers_of_the_wrong_size_are_errors() {
        let g = Geometry::new(&[1, 2, 4, 4], &[3, 2, 3, 3], &[1, 1], &[1, 1], &[0, 0, 0, 0], 1).unwrap();
        let (x, w) = (vec![0.0f32; 32], vec![0.0f32; 54]);
        let mut y = vec![0.0f32; 12];
        assert!(forward(&g, &x, &w, Some(&[0.0; 2]), false, &mut y).is_err());
        assert!(forward(&g, &x[..31], &w, None, false, &mut y).is_err());
        assert!(forward(&g, &x, &w, None, false, &mut y[..11]).is_err());
        assert!(forward(&g, &x, &w, None, false, &mut y).is_ok());
    }
}
