//! A checked, strided matrix product on `matrixmultiply`'s packed GEMM (f32 and f64), shared by fedge's own
//! training operators (`conv_gemm` and `dense_gemm`).
//!
//! A transposed operand is a view with swapped strides: nothing is transposed or copied here (matrixmultiply packs
//! a bounded block of each operand at a time, whatever the matrices' sizes). Views that do not fit their slices or
//! whose sizes disagree are an error, never a read or write out of bounds; the only `unsafe` is the call into
//! matrixmultiply after those checks.

use thiserror::Error;

/// Matrices whose sizes disagree, or a view reaching outside its slice.
#[derive(Debug, Error)]
#[error("GEMM: {0}")]
pub struct GemmShapeError(pub String);

/// The float types the GEMM runs on.
pub trait Scalar:
    Copy + Default + PartialEq + std::ops::AddAssign + std::ops::Mul<Output = Self> + Send + Sync + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// From an attribute's f32 value.
    fn from_f32(v: f32) -> Self;
    /// `C = alpha·A·B + beta·C` through `matrixmultiply`.
    ///
    /// # Safety
    /// The pointers and strides must address valid `m×k`, `k×n` and `m×n` matrices; C must not alias A or B.
    #[allow(clippy::too_many_arguments)]
    unsafe fn raw_gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: (*const Self, isize, isize),
        b: (*const Self, isize, isize),
        beta: Self,
        c: (*mut Self, isize, isize),
    );
}

/// The `Scalar` of a float type whose GEMM is matrixmultiply's `$gemm` (`sgemm` or `dgemm`).
macro_rules! scalar_on {
    ($t:ty, $gemm:path) => {
        impl Scalar for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn from_f32(v: f32) -> Self {
                <$t>::from(v)
            }
            unsafe fn raw_gemm(
                m: usize,
                k: usize,
                n: usize,
                alpha: $t,
                a: (*const $t, isize, isize),
                b: (*const $t, isize, isize),
                beta: $t,
                c: (*mut $t, isize, isize),
            ) {
                // SAFETY: forwarded from the caller's contract.
                unsafe { $gemm(m, k, n, alpha, a.0, a.1, a.2, b.0, b.1, b.2, beta, c.0, c.1, c.2) }
            }
        }
    };
}

scalar_on!(f32, matrixmultiply::sgemm);
scalar_on!(f64, matrixmultiply::dgemm);

/// A strided `rows × cols` view starting at the beginning of a slice.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl View {
    /// A row-major `rows × cols` matrix.
    pub fn dense(rows: usize, cols: usize) -> Self {
        View { rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose of a row-major `rows × cols` matrix, read in place: a `cols × rows` view.
    pub fn transposed(rows: usize, cols: usize) -> Self {
        View { rows: cols, cols: rows, row_stride: 1, col_stride: cols }
    }

    /// How many values of the slice the view reaches.
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// `C = alpha·A·B + beta·C` on views of slices, checked: the views must fit their slices and their sizes agree.
/// With `beta` zero, C's previous values are never read (NaN included).
pub fn gemm<T: Scalar>(
    alpha: T,
    a: (&[T], View),
    b: (&[T], View),
    beta: T,
    c: (&mut [T], View),
) -> Result<(), GemmShapeError> {
    let ((a, av), (b, bv), (c, cv)) = (a, b, c);
    if av.cols != bv.rows || cv.rows != av.rows || cv.cols != bv.cols {
        return Err(GemmShapeError(format!(
            "{}×{} by {}×{} into {}×{}",
            av.rows, av.cols, bv.rows, bv.cols, cv.rows, cv.cols
        )));
    }
    if av.extent() > a.len() || bv.extent() > b.len() || cv.extent() > c.len() {
        return Err(GemmShapeError("a view outside its buffer".into()));
    }
    if cv.rows == 0 || cv.cols == 0 {
        return Ok(());
    }
    let s = |v: usize| v as isize;
    let (m, k, n) = (av.rows, av.cols, bv.cols);
    // SAFETY: every view fits its slice (checked above); `c` is a unique borrow, so it aliases neither input. The
    // swapped form is the same product read through transposed views of the same slices: Cᵀ = Bᵀ·Aᵀ.
    unsafe {
        if packing_buffer(n, k, m) < packing_buffer(m, k, n) {
            T::raw_gemm(
                n,
                k,
                m,
                alpha,
                (b.as_ptr(), s(bv.col_stride), s(bv.row_stride)),
                (a.as_ptr(), s(av.col_stride), s(av.row_stride)),
                beta,
                (c.as_mut_ptr(), s(cv.col_stride), s(cv.row_stride)),
            );
        } else {
            T::raw_gemm(
                m,
                k,
                n,
                alpha,
                (a.as_ptr(), s(av.row_stride), s(av.col_stride)),
                (b.as_ptr(), s(bv.row_stride), s(bv.col_stride)),
                beta,
                (c.as_mut_ptr(), s(cv.row_stride), s(cv.col_stride)),
            );
        }
    }
    Ok(())
}

/// The values matrixmultiply 0.3's packing buffer holds for an `m×k` by `k×n` product (its x86 blocking: panels
/// of 16, blocks of at most 64 rows of A, 256 of the depth and 1,024 columns of B), which it allocates and frees
/// at every call. [`gemm`] computes whichever of `C = A·B` and `Cᵀ = Bᵀ·Aᵀ` needs the smaller one: the same
/// packing work either way, but a dense layer's `[batch × 784]·[784 × 200]` product then packs 96 KiB instead of
/// 264 KiB, which glibc serves from the top of its heap without giving it back to the kernel and faulting it in
/// again at the next call (measured: the 2NN step at batch 32 ran at twice its time in a fresh process).
fn packing_buffer(m: usize, k: usize, n: usize) -> usize {
    let up = |v: usize| v.div_ceil(16) * 16;
    k.min(256) * (up(m.min(64)) + up(n.min(1024)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_views_read_in_place_and_beta_zero_ignores_c() {
        // A = [[1, 2, 3], [4, 5, 6]] (2×3); Aᵀ·A through a transposed view of the same slice.
        let a = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut c = [f64::NAN; 9];
        gemm(1.0, (&a, View::transposed(2, 3)), (&a, View::dense(2, 3)), 0.0, (&mut c, View::dense(3, 3))).unwrap();
        assert_eq!(c, [17.0, 22.0, 27.0, 22.0, 29.0, 36.0, 27.0, 36.0, 45.0]);
        // alpha and beta: C = 2·A·Aᵀ + 1·C
        let mut c = [1.0f64; 4];
        gemm(2.0, (&a, View::dense(2, 3)), (&a, View::transposed(2, 3)), 1.0, (&mut c, View::dense(2, 2))).unwrap();
        assert_eq!(c, [29.0, 65.0, 65.0, 155.0]);
    }

    #[test]
    fn either_orientation_computes_the_same_product() {
        // 3×40 by 40×100: C = A·B needs the larger buffer, so the product runs as Cᵀ = Bᵀ·Aᵀ; 100×40 by 40×3 runs
        // as is. Both against the sums.
        assert!(packing_buffer(100, 40, 3) < packing_buffer(3, 40, 100));
        let a: Vec<f64> = (0..120).map(|i| (i % 7) as f64 - 3.0).collect();
        let b: Vec<f64> = (0..4000).map(|i| (i % 11) as f64 - 5.0).collect();
        let mut c = vec![0.0; 300];
        gemm(1.0, (&a, View::dense(3, 40)), (&b, View::dense(40, 100)), 0.0, (&mut c, View::dense(3, 100))).unwrap();
        let mut ct = vec![0.0; 300];
        gemm(1.0, (&b, View::transposed(40, 100)), (&a, View::transposed(3, 40)), 0.0, (&mut ct, View::dense(100, 3)))
            .unwrap();
        for i in 0..3 {
            for j in 0..100 {
                let want: f64 = (0..40).map(|p| a[i * 40 + p] * b[p * 100 + j]).sum();
                assert_eq!(c[i * 100 + j], want);
                assert_eq!(ct[j * 3 + i], want);
            }
        }
    }

    #[test]
    fn views_that_disagree_or_overrun_are_errors() {
        let a = [0.0f32; 6];
        let mut c = [0.0f32; 4];
        assert!(gemm(1.0, (&a, View::dense(2, 3)), (&a, View::dense(2, 3)), 0.0, (&mut c, View::dense(2, 3))).is_err());
        assert!(gemm(1.0, (&a, View::dense(2, 4)), (&a, View::dense(4, 2)), 0.0, (&mut c, View::dense(2, 2))).is_err());
    }
}
