//! The dense layer's product for fedge's own `FedgeGemm` operator (`dense_ops`): `Y = alpha·op(A)·op(B) + beta·C`
//! on 2-D matrices, `op` a transpose or not, C (optional) broadcast to Y's shape as ONNX's Gemm does. The forward
//! pass of a Gemm or 2-D MatMul and both its gradients (`dX = dY·Wᵀ`, `dW = Xᵀ·dY`) are this product with other
//! flags.
//!
//! A transposed operand is read in place through its strides (`gemm`): no transposed or packed copy of a weight
//! matrix outlives the call (tract packs its non-constant matmul operands into a whole-matrix buffer at each
//! step). Pure computation on slices: sizes that disagree are an error, never a read or write out of bounds.

use super::gemm::{GemmShapeError, Scalar, View, gemm};

fn bad<T>(msg: String) -> Result<T, GemmShapeError> {
    Err(GemmShapeError(msg))
}

/// The shapes and flags of one product.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// A's stored shape (`[K, M]` when `trans_a`).
    pub a_shape: [usize; 2],
    /// B's stored shape (`[N, K]` when `trans_b`).
    pub b_shape: [usize; 2],
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl Dense {
    /// From the stored shapes and flags; the inner dimensions must agree.
    pub fn new(
        a_shape: &[usize],
        b_shape: &[usize],
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<Self, GemmShapeError> {
        let (&[a0, a1], &[b0, b1]) = (a_shape, b_shape) else {
            return bad(format!("A {a_shape:?} and B {b_shape:?} are not matrices"));
        };
        let d = Dense { a_shape: [a0, a1], b_shape: [b0, b1], trans_a, trans_b, alpha, beta };
        let k2 = if trans_b { b1 } else { b0 };
        if d.k() != k2 {
            return bad(format!("inner dimensions {} and {k2} differ (A {a_shape:?}, B {b_shape:?})", d.k()));
        }
        // The shapes come from a graph's attributes: sizes whose product overflows are refused here.
        let [m, n] = d.y_shape();
        if a0.checked_mul(a1).is_none() || b0.checked_mul(b1).is_none() || m.checked_mul(n).is_none() {
            return bad(format!("A {a_shape:?} and B {b_shape:?} are too large"));
        }
        Ok(d)
    }

    fn m(&self) -> usize {
        self.a_shape[usize::from(self.trans_a)]
    }

    fn k(&self) -> usize {
        self.a_shape[usize::from(!self.trans_a)]
    }

    fn n(&self) -> usize {
        self.b_shape[usize::from(!self.trans_b)]
    }

    /// Y's shape `[M, N]`.
    pub fn y_shape(&self) -> [usize; 2] {
        [self.m(), self.n()]
    }

    fn view(shape: [usize; 2], trans: bool) -> View {
        if trans { View::transposed(shape[0], shape[1]) } else { View::dense(shape[0], shape[1]) }
    }
}

/// How C of shape `c_shape` (rank 0 to 2) is read at `(i, j)` of an `m × n` result: its row and column strides
/// (0 along a broadcast axis). `None` if it does not broadcast to `[m, n]`.
fn broadcast_strides(c_shape: &[usize], m: usize, n: usize) -> Option<(usize, usize)> {
    let fits = |c: usize, full: usize| c == full || c == 1;
    match *c_shape {
        [] => Some((0, 0)),
        [cn] if fits(cn, n) => Some((0, usize::from(cn == n && n != 1))),
        [cm, cn] if fits(cm, m) && fits(cn, n) => {
            Some((if cm == m && m != 1 { cn } else { 0 }, usize::from(cn == n && n != 1)))
        }
        _ => None,
    }
}

/// Y (`[M, N]`, overwritten) `= alpha·op(A)·op(B) + beta·C`, C given as its values and shape (broadcast to
/// `[M, N]`). Every value of Y is written and none is read first (an empty product included): Y may start as
/// anything, NaN or a buffer never initialised (the property test starts it at NaN).
pub fn dense<T: Scalar>(
    d: &Dense,
    a: &[T],
    b: &[T],
    c: Option<(&[T], &[usize])>,
    y: &mut [T],
) -> Result<(), GemmShapeError> {
    let [m, n] = d.y_shape();
    for (name, have, want) in [
        ("A", a.len(), d.a_shape[0].checked_mul(d.a_shape[1])),
        ("B", b.len(), d.b_shape[0].checked_mul(d.b_shape[1])),
        ("Y", y.len(), m.checked_mul(n)),
    ] {
        if Some(have) != want {
            return bad(format!("{name} has {have} values, {want:?} expected for {d:?}"));
        }
    }
    let beta = match c {
        Some((c, shape)) => {
            let Some((rs, cs)) = broadcast_strides(shape, m, n) else {
                return bad(format!("C {shape:?} does not broadcast to [{m}, {n}]"));
            };
            if c.len() != shape.iter().product::<usize>() {
                return bad(format!("C has {} values for shape {shape:?}", c.len()));
            }
            let beta = T::from_f32(d.beta);
            for (i, row) in y.chunks_exact_mut(n.max(1)).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = beta * c[i * rs + j * cs];
                }
            }
            T::ONE
        }
        None => T::ZERO,
    };
    gemm(
        T::from_f32(d.alpha),
        (a, Dense::view(d.a_shape, d.trans_a)),
        (b, Dense::view(d.b_shape, d.trans_b)),
        beta,
        (y, View::dense(m, n)),
    )
}

/// Y `= alpha·op(A)·op(B) + beta·Y`: [`dense`] with C of Y's full shape already in Y's buffer (a gradient that
/// accumulates into the tensor it is given), so that no other `[M, N]` buffer is allocated or copied.
pub fn dense_into<T: Scalar>(d: &Dense, a: &[T], b: &[T], y: &mut [T]) -> Result<(), GemmShapeError> {
    let [m, n] = d.y_shape();
    if Some(y.len()) != m.checked_mul(n) {
        return bad(format!("Y has {} values, [{m}, {n}] expected for {d:?}", y.len()));
    }
    gemm(
        T::from_f32(d.alpha),
        (a, Dense::view(d.a_shape, d.trans_a)),
        (b, Dense::view(d.b_shape, d.trans_b)),
        T::from_f32(d.beta),
        (y, View::dense(m, n)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// ONNX Gemm's definition, summed term by term.
    fn reference(d: &Dense, a: &[f64], b: &[f64], c: Option<(&[f64], &[usize])>) -> Vec<f64> {
        let [m, n] = d.y_shape();
        let k = d.k();
        let at = |i: usize, p: usize| if d.trans_a { a[p * m + i] } else { a[i * k + p] };
        let bt = |p: usize, j: usize| if d.trans_b { b[j * k + p] } else { b[p * n + j] };
        let ct = |i: usize, j: usize| match c {
            None => 0.0,
            Some((c, [])) => c[0],
            Some((c, [cn])) => c[if *cn == 1 { 0 } else { j }],
            Some((c, [cm, cn])) => c[(if *cm == 1 { 0 } else { i }) * cn + if *cn == 1 { 0 } else { j }],
            Some(_) => unreachable!("the test draws C of rank 0 to 2"),
        };
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
                y[i * n + j] = d.alpha as f64 * dot + d.beta as f64 * ct(i, j);
            }
        }
        y
    }

    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Every flag combination, C of every broadcastable shape, sizes from 0 (an empty product) to past
        /// matrixmultiply's smallest blocks, equal the definition's sums.
        #[test]
        fn the_product_matches_the_definition(
            m in 0usize..20, k in 0usize..20, n in 0usize..20, ta in any::<bool>(), tb in any::<bool>(),
            alpha in -2.0f32..2.0, beta in -2.0f32..2.0, c_kind in 0usize..6, seed in 0u64..1000,
        ) {
            let a_shape = if ta { [k, m] } else { [m, k] };
            let b_shape = if tb { [n, k] } else { [k, n] };
            let d = Dense::new(&a_shape, &b_shape, ta, tb, alpha, beta).unwrap();
            prop_assert_eq!(d.y_shape(), [m, n]);
            let c_shape: Option<Vec<usize>> = match c_kind {
                0 => None,
                1 => Some(vec![]),
                2 => Some(vec![n]),
                3 => Some(vec![1, n]),
                4 => Some(vec![m, 1]),
                _ => Some(vec![m, n]),
            };
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let a = random(&mut rng, m * k);
            let b = random(&mut rng, k * n);
            let c = c_shape.as_ref().map(|s| random(&mut rng, s.iter().product()));
            let cs = c.as_deref().zip(c_shape.as_deref());
            let want = reference(&d, &a, &b, cs);
            let mut y = vec![f64::NAN; m * n];
            dense(&d, &a, &b, cs, &mut y).unwrap();
            prop_assert!(
                y.iter().zip(&want).all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs())),
                "{y:?} against {want:?}"
            );
            // C of Y's full shape, given in Y's own buffer: the same values.
            if c_kind == 5 {
                let mut y = c.clone().unwrap();
                dense_into(&d, &a, &b, &mut y).unwrap();
                prop_assert!(
                    y.iter().zip(&want).all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs())),
                    "in place: {y:?} against {want:?}"
                );
            }
        }
    }

    #[test]
    fn sizes_that_disagree_are_errors() {
        assert!(Dense::new(&[2, 3], &[2, 4], false, false, 1.0, 1.0).is_err());
        assert!(Dense::new(&[2, 3, 1], &[3, 4], false, false, 1.0, 1.0).is_err());
        assert!(Dense::new(&[usize::MAX, 2], &[2, 4], false, false, 1.0, 1.0).is_err(), "A's size overflows");
        assert!(Dense::new(&[1 << 40, 1], &[1, 1 << 40], false, false, 1.0, 1.0).is_err(), "Y's size overflows");
        let d = Dense::new(&[2, 3], &[4, 3], false, true, 1.0, 1.0).unwrap();
        assert_eq!(d.y_shape(), [2, 4]);
        let (a, b) = (vec![0.0f32; 6], vec![0.0f32; 12]);
        let mut y = vec![0.0f32; 8];
        assert!(dense(&d, &a[..5], &b, None, &mut y).is_err());
        assert!(dense(&d, &a, &b, None, &mut y[..7]).is_err());
        assert!(dense(&d, &a, &b, Some((&[0.0; 3], &[3])), &mut y).is_err());
        assert!(dense(&d, &a, &b, Some((&[0.0; 3], &[4])), &mut y).is_err());
        assert!(dense(&d, &a, &b, Some((&[0.0; 4], &[4])), &mut y).is_ok());
        assert!(dense_into(&d, &a, &b, &mut y[..7]).is_err());
        assert!(dense_into(&d, &a[..5], &b, &mut y).is_err());
    }
}
