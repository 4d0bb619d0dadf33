//! `FedgeMaxPool`: fedge's own max pooling (1-D and 2-D, domain `ai.fedge`) for forward passes that need no argmax
//! indices: inference plans, and pools whose input needs no gradient. tract 0.22's MaxPool walks every window
//! through its generic patch scanner (10% of the example CNN's inference at batch 32); this is a loop over each
//! plane's output rows.
//!
//! The geometry travels as attributes (`x_shape`, `kernel_shape`, `strides`, `pads`) and the input is checked
//! against it: a mismatch is an error, never a read out of bounds. Padding is never the maximum, as in ONNX's
//! MaxPool; a window that holds no input value (the graph refuses such geometries) would give minus infinity.

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::stateless_op::stateless_op;
use tract_onnx::tract_hir::tract_num_traits::Zero;

/// The operator type in emitted graphs.
pub const MAX_POOL: &str = "FedgeMaxPool";

/// Float types the pool runs on, with the value every window starts from and their maximum (a select the compiler
/// turns into `maxss`/`maxps`; `f32::max`'s NaN handling kept it scalar).
trait Lowest: Datum + Copy + Zero {
    const LOWEST: Self;
    fn max(self, other: Self) -> Self;
}

impl Lowest for f32 {
    const LOWEST: Self = f32::NEG_INFINITY;
    fn max(self, other: Self) -> Self {
        if other > self { other } else { self }
    }
}

impl Lowest for f64 {
    const LOWEST: Self = f64::NEG_INFINITY;
    fn max(self, other: Self) -> Self {
        if other > self { other } else { self }
    }
}

/// A max pool of `[N, C, *S]` over one or two spatial axes, without dilation.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct MaxPoolOp {
    pub x_shape: Vec<usize>,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    /// All begins, then all ends.
    pub pads: Vec<usize>,
}

/// The pool in 2-D (a 1-D pool has a height of 1).
#[derive(Debug, Clone, Copy)]
struct Geometry {
    planes: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
}

impl MaxPoolOp {
    fn geometry(&self) -> TractResult<Geometry> {
        let sp = self.x_shape.len().saturating_sub(2);
        if !(1..=2).contains(&sp) || self.kernel.len() != sp || self.strides.len() != sp || self.pads.len() != 2 * sp {
            bail!(
                "{MAX_POOL}: X {:?}, kernel {:?}, strides {:?}, pads {:?}",
                self.x_shape,
                self.kernel,
                self.strides,
                self.pads
            );
        }
        let two = |v: &[usize], fill: usize| if sp == 1 { [fill, v[0]] } else { [v[0], v[1]] };
        let [h, w] = two(&self.x_shape[2..], 1);
        let [kh, kw] = two(&self.kernel, 1);
        let [sh, sw] = two(&self.strides, 1);
        let [ph, pw] = two(&self.pads[..sp], 0);
        let [eh, ew] = two(&self.pads[sp..], 0);
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
            bail!("{MAX_POOL}: kernel {:?}, strides {:?}", self.kernel, self.strides);
        }
        let out = |size: usize, k: usize, s: usize, span: usize| {
            let span = size.checked_add(span)?;
            (span >= k).then(|| (span - k) / s + 1)
        };
        let (Some(oh), Some(ow)) = (out(h, kh, sh, ph + eh), out(w, kw, sw, pw + ew)) else {
            bail!("{MAX_POOL}: kernel {:?} does not fit X {:?} with pads {:?}", self.kernel, self.x_shape, self.pads);
        };
        if self.x_shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d)).is_none() {
            bail!("{MAX_POOL}: X {:?} is too large", self.x_shape);
        }
        let planes = self.x_shape[0] * self.x_shape[1];
        Ok(Geometry { planes, h, w, kh, kw, sh, sw, ph, pw, oh, ow })
    }

    fn out_shape(&self) -> TractResult<Vec<usize>> {
        let g = self.geometry()?;
        let mut shape = self.x_shape[..2].to_vec();
        if self.x_shape.len() == 4 {
            shape.push(g.oh);
        }
        shape.push(g.ow);
        Ok(shape)
    }

    fn pool<T: Lowest>(&self, x: &[T]) -> TractResult<Tensor> {
        let g = self.geometry()?;
        let plane = g.h * g.w;
        if x.len() != g.planes * plane {
            bail!("{MAX_POOL}: {} values for X {:?}", x.len(), self.x_shape);
        }
        // The input columns `lo..hi` each output column's window covers (padding left out).
        let cols: Vec<(usize, usize)> = (0..g.ow)
            .map(|ox| {
                let lo = (ox * g.sw).saturating_sub(g.pw).min(g.w);
                (lo, (ox * g.sw + g.kw).saturating_sub(g.pw).clamp(lo, g.w))
            })
            .collect();
        let mut out = Tensor::zero::<T>(&self.out_shape()?)?;
        let y = out.as_slice_mut::<T>()?;
        if (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw) == (2, 2, 2, 2, 0, 0) && 2 * g.oh <= g.h && 2 * g.ow <= g.w {
            // The common 2×2 pool of stride 2 without pads: each output the maximum of two pairs, no window
            // bounds to work out.
            for (xp, yp) in x.chunks_exact(plane.max(1)).zip(y.chunks_exact_mut((g.oh * g.ow).max(1))) {
                for (oy, row) in yp.chunks_exact_mut(g.ow.max(1)).enumerate() {
                    let top = &xp[2 * oy * g.w..(2 * oy + 1) * g.w];
                    let bottom = &xp[(2 * oy + 1) * g.w..(2 * oy + 2) * g.w];
                    for ((v, t), b) in row.iter_mut().zip(top.chunks_exact(2)).zip(bottom.chunks_exact(2)) {
                        *v = t[0].max(t[1]).max(b[0].max(b[1]));
                    }
                }
            }
            return Ok(out);
        }
        // The maximum down each input column over the window's rows, then along each window's columns; branch-free
        // maxima throughout (a compare-and-branch per value was twice as slow as tract's MaxPool).
        let mut down = vec![T::LOWEST; g.w];
        for (xp, yp) in x.chunks_exact(plane.max(1)).zip(y.chunks_exact_mut((g.oh * g.ow).max(1))) {
            for (oy, row) in yp.chunks_exact_mut(g.ow.max(1)).enumerate() {
                let top = (oy * g.sh).saturating_sub(g.ph).min(g.h);
                let bottom = (oy * g.sh + g.kh).saturating_sub(g.ph).clamp(top, g.h);
                down.fill(T::LOWEST);
                for src in xp[top * g.w..bottom * g.w].chunks_exact(g.w.max(1)) {
                    for (d, s) in down.iter_mut().zip(src) {
                        *d = d.max(*s);
                    }
                }
                for (v, &(lo, hi)) in row.iter_mut().zip(&cols) {
                    *v = down[lo..hi].iter().fold(T::LOWEST, |m, s| m.max(*s));
                }
            }
        }
        Ok(out)
    }
}

stateless_op!(MaxPoolOp, |_: &MaxPoolOp| MAX_POOL);

impl MaxPoolOp {
    /// The evaluation (`EvalOp::eval`).
    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [x] = inputs.as_slice() else {
            bail!("{MAX_POOL} takes one input");
        };
        if x.shape() != self.x_shape.as_slice() {
            bail!("{MAX_POOL}: input {:?} for X {:?}", x.shape(), self.x_shape);
        }
        let out = match x.datum_type() {
            DatumType::F32 => self.pool(x.as_slice::<f32>()?)?,
            DatumType::F64 => self.pool(x.as_slice::<f64>()?)?,
            other => bail!("{MAX_POOL} does not support {other:?}"),
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl InferenceRulesOp for MaxPoolOp {
    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        let shape = self.out_shape()?;
        s.equals(&outputs[0].rank, shape.len() as i64)?;
        for (i, d) in shape.iter().enumerate() {
            s.equals(&outputs[0].shape[i], d.to_dim())?;
        }
        Ok(())
    }

    tract_onnx::tract_core::as_op!();

    tract_onnx::tract_hir::to_typed!();
}

impl TypedOp for MaxPoolOp {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(&*self.out_shape()?)))
    }
}

/// The loader tract calls for a `FedgeMaxPool` node; a geometry the op cannot run is refused here.
pub fn load(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let ints = |name: &str| -> TractResult<Vec<usize>> {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| format_err!("{MAX_POOL} without {name}"))?
            .ints
            .iter()
            .map(|d| usize::try_from(*d).map_err(|_| format_err!("{MAX_POOL}: negative {name}")))
            .collect()
    };
    let op = MaxPoolOp {
        x_shape: ints("x_shape")?,
        kernel: ints("kernel_shape")?,
        strides: ints("strides")?,
        pads: ints("pads")?,
    };
    op.geometry()?;
    Ok((Box::new(op), vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition: each output is the largest input value its window covers.
    fn reference(op: &MaxPoolOp, x: &[f64]) -> Vec<f64> {
        let g = op.geometry().unwrap();
        let mut y = vec![];
        for p in 0..g.planes {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut m = f64::NEG_INFINITY;
                    for ki in 0..g.kh {
                        for kj in 0..g.kw {
                            let iy = (oy * g.sh + ki) as isize - g.ph as isize;
                            let ix = (ox * g.sw + kj) as isize - g.pw as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                                m = m.max(x[p * g.h * g.w + iy as usize * g.w + ix as usize]);
                            }
                        }
                    }
                    y.push(m);
                }
            }
        }
        y
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Random 1-D and 2-D geometries (pads below the kernel, as the graph requires) equal the definition.
        #[test]
        fn pools_match_the_definition(
            one_d in any::<bool>(), n in 1usize..3, c in 1usize..3, h in 1usize..7, w in 1usize..8,
            kh in 1usize..4, kw in 1usize..4, sh in 1usize..4, sw in 1usize..4,
            pads in proptest::collection::vec(0usize..3, 4), seed in 0u64..1000,
        ) {
            let op = if one_d {
                let p = vec![pads[1] % kw, pads[3] % kw];
                MaxPoolOp { x_shape: vec![n, c, w], kernel: vec![kw], strides: vec![sw], pads: p }
            } else {
                let p = vec![pads[0] % kh, pads[1] % kw, pads[2] % kh, pads[3] % kw];
                MaxPoolOp { x_shape: vec![n, c, h, w], kernel: vec![kh, kw], strides: vec![sh, sw], pads: p }
            };
            if op.geometry().is_err() {
                // The kernel does not fit even with the pads: the loader refuses it.
                return Ok(());
            }
            let len: usize = op.x_shape.iter().product();
            let x: Vec<f64> =
                (0..len).map(|i| ((i as u64 * 2_654_435_761 + seed) % 1000) as f64 / 100.0 - 5.0).collect();
            let t = Tensor::from_shape(&op.x_shape, &x).unwrap();
            let y = op.eval(tvec![t.into_tvalue()]).unwrap();
            let (shape, want) = (op.out_shape().unwrap(), reference(&op, &x));
            prop_assert_eq!(y[0].shape(), shape.as_slice());
            prop_assert_eq!(y[0].as_slice::<f64>().unwrap(), want.as_slice());
        }
    }

    #[test]
    fn two_by_two_pools_of_stride_two_match_the_definition_on_odd_and_even_sizes() {
        // The fast path (no pads, whole windows only): odd sizes leave the last row or column out; an end pad
        // takes the general path.
        for (h, w, pads) in [(4, 6, [0, 0, 0, 0]), (5, 7, [0, 0, 0, 0]), (1, 9, [0, 0, 0, 0]), (5, 5, [0, 0, 1, 1])] {
            let op =
                MaxPoolOp { x_shape: vec![2, 3, h, w], kernel: vec![2, 2], strides: vec![2, 2], pads: pads.into() };
            if op.geometry().is_err() {
                continue;
            }
            let len: usize = op.x_shape.iter().product();
            let x: Vec<f64> = (0..len).map(|i| ((i as u64 * 2_654_435_761) % 1000) as f64 / 100.0 - 5.0).collect();
            let y = op.eval(tvec![Tensor::from_shape(&op.x_shape, &x).unwrap().into_tvalue()]).unwrap();
            assert_eq!(y[0].shape(), op.out_shape().unwrap().as_slice());
            assert_eq!(y[0].as_slice::<f64>().unwrap(), reference(&op, &x).as_slice(), "{h}×{w}, pads {pads:?}");
        }
    }

    #[test]
    fn inputs_that_disagree_with_the_attributes_are_errors() {
        let op = MaxPoolOp { x_shape: vec![1, 1, 4, 4], kernel: vec![2, 2], strides: vec![2, 2], pads: vec![0; 4] };
        let wrong = Tensor::from_shape(&[1, 1, 4, 3], &[0.0f32; 12]).unwrap();
        assert!(op.eval(tvec![wrong.into_tvalue()]).is_err());
        let ints = Tensor::from_shape(&[1, 1, 4, 4], &[0i64; 16]).unwrap();
        assert!(op.eval(tvec![ints.into_tvalue()]).is_err());
        let too_big =
            MaxPoolOp { x_shape: vec![1, 1, 2, 2], kernel: vec![3, 3], strides: vec![1, 1], pads: vec![0; 4] };
        assert!(too_big.geometry().is_err());
    }
}
