//! A convolution and its input and weight gradients computed on a packed GEMM (the `matrixmultiply` crate), for
//! fedge's own tract operators (`conv_ops`): 2-D convolutions (1-D ones as 2-D with a height of 1) with any
//! pads, strides, dilations and groups.
//!
//! - Y: per image and group, the tile's input columns (im2col) and `Y = W·cols (+ bias)`;
//! - dX: per image and group, `cols = Wᵀ·dY` for a tile of output rows, then each column added back at the input
//!   position it was read from (col2im);
//! - dW: per image and group, the tile's input columns unfolded transposed (a row per output position) and
//!   `dW += dY·colsᵀ`.
//!
//! Neither ever unfolds more than [`TILE`] values (one tile of output rows of one image; at least one row): tract's
//! own convolutions unfold the whole batch. Pure computation on slices: shapes that do not agree are an error,
//! never a read or write out of bounds.

use thiserror::Error;

pub use super::gemm::Scalar;
use super::gemm::{GemmShapeError, View, gemm};

/// The most values a tile of unfolded columns holds (1 MiB of f32), unless one output row alone needs more.
pub const TILE: usize = 1 << 18;

/// Shapes or attributes a convolution gradient cannot be computed for.
#[derive(Debug, Error)]
#[error("convolution gradient: {0}")]
pub struct ConvShapeError(String);

impl From<GemmShapeError> for ConvShapeError {
    fn from(e: GemmShapeError) -> Self {
        ConvShapeError(e.to_string())
    }
}

fn bad<T>(msg: String) -> Result<T, ConvShapeError> {
    Err(ConvShapeError(msg))
}

/// The geometry of one convolution, in 2-D (a 1-D convolution has `h = kh = oh = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub m: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub group: usize,
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Padding before the first row and column (the end pads only shape `oh` and `ow`).
    pub pad: [usize; 2],
}

impl Geometry {
    /// From X's shape `[N, C, *S]` and W's shape `[M, C/group, *K]` (one or two spatial axes), the per-axis
    /// strides and dilations, the pads (all begins, then all ends, as ONNX writes them) and the group count.
    pub fn new(
        x_shape: &[usize],
        w_shape: &[usize],
        strides: &[usize],
        dilations: &[usize],
        pads: &[usize],
        group: usize,
    ) -> Result<Self, ConvShapeError> {
        let sp = x_shape.len().saturating_sub(2);
        if !(1..=2).contains(&sp) || w_shape.len() != sp + 2 {
            return bad(format!("X {x_shape:?} and W {w_shape:?} are not a 1-D or 2-D convolution"));
        }
        if strides.len() != sp || dilations.len() != sp || pads.len() != 2 * sp {
            return bad(format!("strides {strides:?}, dilations {dilations:?}, pads {pads:?} for {sp} axes"));
        }
        // A 1-D convolution is the 2-D one with a height of 1 and no stride, dilation or pad along it.
        let two = |v: &[usize], fill: usize| if sp == 1 { [fill, v[0]] } else { [v[0], v[1]] };
        let [h, w] = two(&x_shape[2..], 1);
        let [kh, kw] = two(&w_shape[2..], 1);
        let stride = two(strides, 1);
        let dilation = two(dilations, 1);
        let pad = two(&pads[..sp], 0);
        let pad_end = two(&pads[sp..], 0);
        let (n, c, m) = (x_shape[0], x_shape[1], w_shape[0]);
        if group == 0 || c % group != 0 || m % group != 0 || w_shape[1] * group != c {
            return bad(format!("{c} input and {m} output channels, W {w_shape:?}, in {group} groups"));
        }
        if stride.contains(&0) || dilation.contains(&0) || kh == 0 || kw == 0 {
            return bad(format!("strides {strides:?}, dilations {dilations:?}, kernel {:?}", &w_shape[2..]));
        }
        let out = |size: usize, k: usize, i: usize| {
            let span = size + pad[i] + pad_end[i];
            let reach = dilation[i] * (k - 1) + 1;
            (span >= reach).then(|| (span - reach) / stride[i] + 1)
        };
        let (Some(oh), Some(ow)) = (out(h, kh, 0), out(w, kw, 1)) else {
            return bad(format!("kernel {:?} does not fit X {x_shape:?} with pads {pads:?}", &w_shape[2..]));
        };
        Ok(Geometry { n, c, h, w, m, kh, kw, oh, ow, group, stride, dilation, pad })
    }

    fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    fn y_len(&self) -> usize {
        self.n * self.m * self.oh * self.ow
    }

    /// Y's shape: `[N, M, OH, OW]`, or `[N, M, OW]` for a 1-D convolution (`one_d`).
    pub fn y_shape(&self, one_d: bool) -> Vec<usize> {
        if one_d { vec![self.n, self.m, self.ow] } else { vec![self.n, self.m, self.oh, self.ow] }
    }

    fn w_len(&self) -> usize {
        self.m * (self.c / self.group) * self.kh * self.kw
    }

    /// Rows of one group's unfolded columns: input channels × kernel positions.
    fn col_rows(&self) -> usize {
        self.c / self.group * self.kh * self.kw
    }

    /// Output rows per tile.
    fn tile_rows(&self) -> usize {
        (TILE / (self.col_rows() * self.ow).max(1)).clamp(1, self.oh.max(1))
    }

    /// For kernel column `kj`: the output columns `lo..hi` whose input column `o·sw + kj·dw − pw` is inside the
    /// image (empty when none is).
    fn valid_cols(&self, kj: usize) -> (usize, usize) {
        let off = (kj * self.dilation[1]) as isize - self.pad[1] as isize;
        let s = self.stride[1] as isize;
        // o·s + off ≥ 0  ⇔  o ≥ ceil(−off / s);  o·s + off ≤ w − 1  ⇔  o ≤ floor((w − 1 − off) / s).
        let lo = if off >= 0 { 0 } else { ((-off + s - 1) / s) as usize };
        let last = self.w as isize - 1 - off;
        let hi = if last < 0 { 0 } else { ((last / s) as usize + 1).min(self.ow) };
        (lo.min(hi), hi)
    }

    /// The input row read by output row `o` at kernel row `ki`, if inside the image.
    fn input_row(&self, o: usize, ki: usize) -> Option<usize> {
        (o * self.stride[0] + ki * self.dilation[0]).checked_sub(self.pad[0]).filter(|r| *r < self.h)
    }
}

fn check_lens(g: &Geometry, lens: [(&str, usize, usize); 3]) -> Result<(), ConvShapeError> {
    for (name, have, want) in lens {
        if have != want {
            return bad(format!("{name} has {have} values, {want} expected for {g:?}"));
        }
    }
    Ok(())
}

/// dX (`[N, C, H, W]`, overwritten) of the convolution from dY (`[N, M, OH, OW]`) and W (`[M, C/group, KH, KW]`).
pub fn input_grad<T: Scalar>(g: &Geometry, dy: &[T], w: &[T], dx: &mut [T]) -> Result<(), ConvShapeError> {
    check_lens(g, [("dY", dy.len(), g.y_len()), ("W", w.len(), g.w_len()), ("dX", dx.len(), g.x_len())])?;
    dx.fill(T::ZERO);
    let (cg, mg) = (g.c / g.group, g.m / g.group);
    let (rows, o, plane) = (g.col_rows(), g.oh * g.ow, g.h * g.w);
    let tile_rows = g.tile_rows();
    let mut cols = vec![T::ZERO; rows * tile_rows * g.ow];
    let cols_of: Vec<(usize, usize)> = (0..g.kw).map(|kj| g.valid_cols(kj)).collect();
    for img in 0..g.n {
        for grp in 0..g.group {
            let wg = &w[grp * mg * rows..(grp + 1) * mg * rows];
            let dx_img = &mut dx[(img * g.c + grp * cg) * plane..(img * g.c + (grp + 1) * cg) * plane];
            for first in (0..g.oh).step_by(tile_rows) {
                let r = tile_rows.min(g.oh - first);
                let t = r * g.ow;
                let dy_tile = &dy[(img * g.m + grp * mg) * o + first * g.ow..];
                // cols [rows × t] = Wgᵀ [rows × mg] · dY [mg × t]
                gemm(
                    T::ONE,
                    (wg, View { rows, cols: mg, row_stride: 1, col_stride: rows }),
                    (dy_tile, View { rows: mg, cols: t, row_stride: o, col_stride: 1 }),
                    T::ZERO,
                    (&mut cols[..], View { rows, cols: t, row_stride: t, col_stride: 1 }),
                )?;
                col2im(g, &cols[..rows * t], first, r, &cols_of, dx_img);
            }
        }
    }
    Ok(())
}

/// Adds the tile's columns (output rows `first..first + r`) to the positions of one image's group of channels
/// they were read from.
fn col2im<T: Scalar>(g: &Geometry, cols: &[T], first: usize, r: usize, cols_of: &[(usize, usize)], dx: &mut [T]) {
    let t = r * g.ow;
    let sw = g.stride[1];
    for (row, src) in cols.chunks_exact(t).enumerate() {
        let kj = row % g.kw;
        let ki = row / g.kw % g.kh;
        let ch = row / (g.kw * g.kh);
        let (lo, hi) = cols_of[kj];
        if lo >= hi {
            continue;
        }
        let start = lo * sw + kj * g.dilation[1] - g.pad[1];
        for (i, src) in src.chunks_exact(g.ow).enumerate() {
            let Some(ih) = g.input_row(first + i, ki) else { continue };
            let dst = &mut dx[(ch * g.h + ih) * g.w..(ch * g.h + ih + 1) * g.w];
            if sw == 1 {
                for (d, s) in dst[start..start + hi - lo].iter_mut().zip(&src[lo..hi]) {
                    *d += *s;
                }
            } else {
                for (d, s) in dst[start..].iter_mut().step_by(sw).zip(&src[lo..hi]) {
                    *d += *s;
                }
            }
        }
    }
}

/// Writes the tile's columns (output rows `first..first + r`) of one image's group of channels: row
/// `(channel, ki, kj)`, column `(output row, output column)`, zero where the kernel reads padding.
fn im2col<T: Scalar>(g: &Geometry, x: &[T], first: usize, r: usize, cols_of: &[(usize, usize)], cols: &mut [T]) {
    let t = r * g.ow;
    let sw = g.stride[1];
    for (row, dst) in cols.chunks_exact_mut(t).enumerate() {
        let kj = row % g.kw;
        let ki = row / g.kw % g.kh;
        let ch = row / (g.kw * g.kh);
        let (lo, hi) = cols_of[kj];
        for (i, dst) in dst.chunks_exact_mut(g.ow).enumerate() {
            let Some(ih) = g.input_row(first + i, ki).filter(|_| lo < hi) else {
                dst.fill(T::ZERO);
                continue;
            };
            let src = &x[(ch * g.h + ih) * g.w..(ch * g.h + ih + 1) * g.w];
            let start = lo * sw + kj * g.dilation[1] - g.pad[1];
            dst[..lo].fill(T::ZERO);
            dst[hi..].fill(T::ZERO);
            if sw == 1 {
                dst[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
            } else {
                for (d, s) in dst[lo..hi].iter_mut().zip(src[start..].iter().step_by(sw)) {
                    *d = *s;
                }
            }
        }
    }
}

/// [`im2col`]'s columns transposed: one row per output position of the tile (output row, then column), holding
/// that position's window `(channel, ki, kj)` in order, zero where the kernel reads padding. The weight gradient's
/// GEMM reads them as its right-hand matrix, which matrixmultiply packs a row at a time: read transposed from
/// `im2col`'s layout they were packed value by value (two thirds of its packing time in the CNN step).
fn im2col_transposed<T: Scalar>(g: &Geometry, x: &[T], first: usize, r: usize, cols: &mut [T]) {
    let rows = g.col_rows();
    let (sw, dw, pw) = (g.stride[1], g.dilation[1], g.pad[1]);
    let reach = (g.kw - 1) * dw;
    let plane = g.h * g.w;
    // The input row each kernel row reads, for each output row of the tile.
    let input_rows: Vec<Option<usize>> =
        (first..first + r).flat_map(|oy| (0..g.kh).map(move |ki| g.input_row(oy, ki))).collect();
    for (p, dst) in cols.chunks_exact_mut(rows).take(r * g.ow).enumerate() {
        let (i, ox) = (p / g.ow, p % g.ow);
        let ihs = &input_rows[i * g.kh..(i + 1) * g.kh];
        // The window's first input column, and whether the whole window lies inside the row.
        let start = (ox * sw) as isize - pw as isize;
        let inside = start >= 0 && start as usize + reach < g.w;
        for (ch, channel) in dst.chunks_exact_mut(g.kh * g.kw).enumerate() {
            let x_ch = &x[ch * plane..(ch + 1) * plane];
            for (window, ih) in channel.chunks_exact_mut(g.kw).zip(ihs) {
                let Some(ih) = *ih else {
                    window.fill(T::ZERO);
                    continue;
                };
                let src = &x_ch[ih * g.w..(ih + 1) * g.w];
                if inside && dw == 1 {
                    window.copy_from_slice(&src[start as usize..start as usize + g.kw]);
                } else {
                    for (kj, v) in window.iter_mut().enumerate() {
                        let ix = start + (kj * dw) as isize;
                        *v = usize::try_from(ix).ok().and_then(|i| src.get(i)).copied().unwrap_or(T::ZERO);
                    }
                }
            }
        }
    }
}

/// The checks [`forward`] makes before it reads or writes anything: X, W and Y of the geometry's sizes, and a bias
/// (if any) of one value per output channel.
pub fn check_forward<T>(g: &Geometry, x: &[T], w: &[T], bias: Option<&[T]>, y: &[T]) -> Result<(), ConvShapeError> {
    check_lens(g, [("X", x.len(), g.x_len()), ("W", w.len(), g.w_len()), ("Y", y.len(), g.y_len())])?;
    if let Some(b) = bias.filter(|b| b.len() != g.m) {
        return bad(format!("bias has {} values for {} channels", b.len(), g.m));
    }
    Ok(())
}

/// Y (`[N, M, OH, OW]`, overwritten) of the convolution of X (`[N, C, H, W]`) by W (`[M, C/group, KH, KW]`),
/// plus `bias` (`[M]`) if given.
pub fn forward<T: Scalar>(
    g: &Geometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
) -> Result<(), ConvShapeError> {
    check_forward(g, x, w, bias, y)?;
    let (cg, mg) = (g.c / g.group, g.m / g.group);
    let (rows, o, plane) = (g.col_rows(), g.oh * g.ow, g.h * g.w);
    let tile_rows = g.tile_rows();
    let mut cols = vec![T::ZERO; rows * tile_rows * g.ow];
    let cols_of: Vec<(usize, usize)> = (0..g.kw).map(|kj| g.valid_cols(kj)).collect();
    for img in 0..g.n {
        for grp in 0..g.group {
            let x_img = &x[(img * g.c + grp * cg) * plane..(img * g.c + (grp + 1) * cg) * plane];
            let wg = &w[grp * mg * rows..(grp + 1) * mg * rows];
            for first in (0..g.oh).step_by(tile_rows) {
                let r = tile_rows.min(g.oh - first);
                let t = r * g.ow;
                im2col(g, x_img, first, r, &cols_of, &mut cols[..rows * t]);
                let start = (img * g.m + grp * mg) * o + first * g.ow;
                // Y [mg × t] = Wg [mg × rows] · cols [rows × t]
                gemm(
                    T::ONE,
                    (wg, View { rows: mg, cols: rows, row_stride: rows, col_stride: 1 }),
                    (&cols[..], View { rows, cols: t, row_stride: t, col_stride: 1 }),
                    T::ZERO,
                    (&mut y[start..], View { rows: mg, cols: t, row_stride: o, col_stride: 1 }),
                )?;
                if let Some(b) = bias {
                    for (ch, b) in b[grp * mg..(grp + 1) * mg].iter().enumerate() {
                        y[start + ch * o..start + ch * o + t].iter_mut().for_each(|v| *v += *b);
                    }
                }
            }
        }
    }
    Ok(())
}

/// dW (`[M, C/group, KH, KW]`, overwritten) of the convolution from X (`[N, C, H, W]`) and dY (`[N, M, OH, OW]`).
pub fn weight_grad<T: Scalar>(g: &Geometry, x: &[T], dy: &[T], dw: &mut [T]) -> Result<(), ConvShapeError> {
    check_lens(g, [("X", x.len(), g.x_len()), ("dY", dy.len(), g.y_len()), ("dW", dw.len(), g.w_len())])?;
    dw.fill(T::ZERO);
    let (cg, mg) = (g.c / g.group, g.m / g.group);
    let (rows, o, plane) = (g.col_rows(), g.oh * g.ow, g.h * g.w);
    let tile_rows = g.tile_rows();
    let mut cols = vec![T::ZERO; rows * tile_rows * g.ow];
    for img in 0..g.n {
        for grp in 0..g.group {
            let x_img = &x[(img * g.c + grp * cg) * plane..(img * g.c + (grp + 1) * cg) * plane];
            let dwg = &mut dw[grp * mg * rows..(grp + 1) * mg * rows];
            for first in (0..g.oh).step_by(tile_rows) {
                let r = tile_rows.min(g.oh - first);
                let t = r * g.ow;
                im2col_transposed(g, x_img, first, r, &mut cols[..rows * t]);
                let dy_tile = &dy[(img * g.m + grp * mg) * o + first * g.ow..];
                // dWg [mg × rows] += dY [mg × t] · colsᵀ [t × rows]
                gemm(
                    T::ONE,
                    (dy_tile, View { rows: mg, cols: t, row_stride: o, col_stride: 1 }),
                    (&cols[..], View::dense(t, rows)),
                    T::ONE,
                    (dwg, View { rows: mg, cols: rows, row_stride: rows, col_stride: 1 }),
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The convolution's definition, summed term by term: Y = conv(X, W) and its two gradients for one dY.
    struct Reference {
        y: Vec<f64>,
        dx: Vec<f64>,
        dw: Vec<f64>,
    }

    fn reference(g: &Geometry, x: &[f64], w: &[f64], dy: &[f64]) -> Reference {
        let (cg, mg) = (g.c / g.group, g.m / g.group);
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        let mut y = vec![0.0; dy.len()];
        for n in 0..g.n {
            for m in 0..g.m {
                let grp = m / mg;
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let yi = ((n * g.m + m) * g.oh + oy) * g.ow + ox;
                        let gy = dy[yi];
                        for ci in 0..cg {
                            let c = grp * cg + ci;
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    let iy = (oy * g.stride[0] + ki * g.dilation[0]) as isize - g.pad[0] as isize;
                                    let ix = (ox * g.stride[1] + kj * g.dilation[1]) as isize - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let xi = ((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize;
                                    let wi = ((m * cg + ci) * g.kh + ki) * g.kw + kj;
                                    y[yi] += w[wi] * x[xi];
                                    dx[xi] += w[wi] * gy;
                                    dw[wi] += x[xi] * gy;
                                }
                            }
                        }
                    }
                }
            }
        }
        Reference { y, dx, dw }
    }

    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The convolution and both gradients equal the definition's sums for random 2-D and 1-D geometries.
        #[test]
        fn gradients_match_the_definition(
            one_d in any::<bool>(), n in 1usize..3, cg in 1usize..4, mg in 1usize..4, group in 1usize..4,
            h in 1usize..8, w in 1usize..9, kh in 1usize..4, kw in 1usize..4, sh in 1usize..4, sw in 1usize..4,
            dh in 1usize..3, dw in 1usize..3, pads in proptest::collection::vec(0usize..3, 4), seed in 0u64..1000,
        ) {
            let (c, m) = (cg * group, mg * group);
            let (x_shape, w_shape, strides, dilations, p) = if one_d {
                (vec![n, c, w], vec![m, cg, kw], vec![sw], vec![dw], vec![pads[1], pads[3]])
            } else {
                (vec![n, c, h, w], vec![m, cg, kh, kw], vec![sh, sw], vec![dh, dw], pads.clone())
            };
            let Ok(g) = Geometry::new(&x_shape, &w_shape, &strides, &dilations, &p, group) else {
                // The kernel does not fit: nothing to compute (the forward Conv refuses it too).
                return Ok(());
            };
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let x = random(&mut rng, g.x_len());
            let wt = random(&mut rng, g.w_len());
            let dy = random(&mut rng, g.y_len());
            let want = reference(&g, &x, &wt, &dy);
            let mut dx = vec![f64::NAN; g.x_len()];
            input_grad(&g, &dy, &wt, &mut dx).unwrap();
            prop_assert!(close(&dx, &want.dx), "dX {dx:?} against {:?}", want.dx);
            let mut dwt = vec![f64::NAN; g.w_len()];
            weight_grad(&g, &x, &dy, &mut dwt).unwrap();
            prop_assert!(close(&dwt, &want.dw), "dW {dwt:?} against {:?}", want.dw);
            let bias = random(&mut rng, g.m);
            let mut y = vec![f64::NAN; g.y_len()];
            forward(&g, &x, &wt, Some(&bias), &mut y).unwrap();
            let o = g.oh * g.ow;
            let biased: Vec<f64> = want.y.iter().enumerate().map(|(i, v)| v + bias[i / o % g.m]).collect();
            prop_assert!(close(&y, &biased), "Y {y:?} against {biased:?}");
        }
    }

    #[test]
    fn tiles_of_a_few_rows_give_the_whole_image_s_gradients() {
        // 128 channels × 9 kernel positions × 40 columns: a tile holds 5 of the 40 output rows, so the image is
        // cut into 8 tiles.
        let g = Geometry::new(&[1, 128, 40, 40], &[2, 128, 3, 3], &[1, 1], &[1, 1], &[1, 1, 1, 1], 1).unwrap();
        assert!(g.tile_rows() < g.oh);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (x, wt, dy) = (random(&mut rng, g.x_len()), random(&mut rng, g.w_len()), random(&mut rng, g.y_len()));
        let want = reference(&g, &x, &wt, &dy);
        let mut dx = vec![0.0; g.x_len()];
        input_grad(&g, &dy, &wt, &mut dx).unwrap();
        assert!(close(&dx, &want.dx));
        let mut dwt = vec![0.0; g.w_len()];
        weight_grad(&g, &x, &dy, &mut dwt).unwrap();
        assert!(close(&dwt, &want.dw));
        let mut y = vec![0.0; g.y_len()];
        forward(&g, &x, &wt, None, &mut y).unwrap();
        assert!(close(&y, &want.y));
    }

    #[test]
    fn buffers_of_the_wrong_size_and_impossible_geometries_are_errors() {
        let g = Geometry::new(&[1, 2, 4, 4], &[3, 2, 3, 3], &[1, 1], &[1, 1], &[0, 0, 0, 0], 1).unwrap();
        assert_eq!((g.oh, g.ow), (2, 2));
        let mut dx = vec![0.0f32; g.x_len()];
        assert!(input_grad(&g, &[0.0; 11], &vec![0.0; g.w_len()], &mut dx).is_err());
        let mut short = vec![0.0f32; g.w_len() - 1];
        assert!(weight_grad(&g, &vec![0.0; g.x_len()], &vec![0.0; g.y_len()], &mut short).is_err());
        let mut y = vec![0.0f32; g.y_len()];
        let (x, w) = (vec![0.0f32; g.x_len()], vec![0.0f32; g.w_len()]);
        assert!(forward(&g, &x, &w, Some(&[0.0; 2]), &mut y).is_err());
        assert!(Geometry::new(&[1, 2, 2, 2], &[3, 2, 3, 3], &[1, 1], &[1, 1], &[0, 0, 0, 0], 1).is_err());
        assert!(Geometry::new(&[1, 3, 4, 4], &[3, 1, 3, 3], &[1, 1], &[1, 1], &[0; 4], 2).is_err());
        assert!(Geometry::new(&[1, 2, 4, 4, 4], &[3, 2, 3, 3, 3], &[1; 3], &[1; 3], &[0; 6], 1).is_err());
        assert!(Geometry::new(&[1, 2, 4, 4], &[3, 2, 3, 3], &[0, 1], &[1, 1], &[0; 4], 1).is_err());
    }
}
