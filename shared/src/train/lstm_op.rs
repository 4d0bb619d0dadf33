//! `FedgeLstmCell`, `FedgeLstmHidden` and `FedgeLstmCellGrad`: fedge's own tract operators (domain `ai.fedge`) for
//! one time step of an ONNX LSTM (gates in i, o, f, c order, default activations, no peepholes) and its gradient,
//! in the training step under `Kernels::Fedge`.
//!
//! - `FedgeLstmCell` (attributes `batch`, `hidden`): from the gate pre-activations G `[B, 4H]` and the cell state
//!   c `[B, H]`, the new cell state `c' = f ⊙ c + i ⊙ tanh(g)` and the activated gates A `[B, 4H]` (σ(i), σ(o),
//!   σ(f), tanh(g)) for the backward pass. A is written over G's buffer when nothing else holds it (G is the step's
//!   `h·Rᵀ + x·Wᵀ`, read by this node only).
//! - `FedgeLstmHidden`: from (A, c') the new hidden state `h' = o ⊙ tanh(c')`. A node of its own because tract
//!   frees a node's outputs together, once the last reader of any of them has run: h' is read until the end of the
//!   backward pass (the recurrence weight's gradient), and had it come out of `FedgeLstmCell` it would have kept
//!   every step's A alive with it (21 MB for the char-LSTM at batch 128) and made the backward copy each A.
//! - `FedgeLstmCellGrad`: from (A, c, c', dh', dc') the gradient of the pre-activations dG `[B, 4H]` (written over
//!   A's buffer, which by then nothing else holds) and dc `[B, H]`.
//!
//! They replace the thirteen primitive nodes per step (four gate slices, three Sigmoid, two Tanh, three Mul, an
//! Add) and the twenty or so of their gradients, each its own `[B, H]` tensor and trip through tract's executor;
//! `Kernels::Standard` still writes those primitives (`cell_emit`). Pure computation over the input tensors; inputs
//! whose shapes or types disagree with the attributes are an error, never a read out of bounds.

use tract_onnx::tract_hir::internal::*;

use super::cell_math::{CellFloat, reuse_or_copy};
use super::cell_op::{CellOp, CellPart, cell_facts, cell_op, cell_rules, run_cell};
use super::stateless_op::stateless_op;

/// The forward operator type in emitted graphs.
pub const LSTM_CELL: &str = "FedgeLstmCell";
/// The hidden-state operator type in emitted graphs.
pub const LSTM_HIDDEN: &str = "FedgeLstmHidden";
/// The backward operator type in emitted graphs.
pub const LSTM_CELL_GRAD: &str = "FedgeLstmCellGrad";

/// One step's sizes and the operator.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct LstmCell {
    pub batch: usize,
    pub hidden: usize,
    pub part: CellPart,
}

impl LstmCell {
    fn forward<T: CellFloat>(&self, g: TValue, c: &[T]) -> TractResult<TVec<TValue>> {
        let h = self.hidden;
        let mut acts = reuse_or_copy(g);
        let a = acts.as_slice_mut::<T>()?;
        for row in a.chunks_exact_mut(4 * h) {
            T::sigmoid_all(&mut row[..3 * h])?;
            T::tanh_all(&mut row[3 * h..])?;
        }
        let mut c_new = vec![T::ONE; c.len()];
        for ((cn, cr), row) in c_new.chunks_exact_mut(h).zip(c.chunks_exact(h)).zip(a.chunks_exact(4 * h)) {
            let (i, f, g) = (&row[..h], &row[2 * h..3 * h], &row[3 * h..]);
            for j in 0..h {
                cn[j] = f[j].mul(cr[j]).add(i[j].mul(g[j]));
            }
        }
        Ok(tvec!(Tensor::from_shape(&[self.batch, h], &c_new)?.into_tvalue(), acts.into_tvalue()))
    }

    /// `h' = o ⊙ tanh(c')` from the activated gates and the new cell state.
    fn hidden_state<T: CellFloat>(&self, acts: &[T], c_new: &[T]) -> TractResult<TVec<TValue>> {
        let h = self.hidden;
        let mut h_new = c_new.to_vec();
        T::tanh_all(&mut h_new)?;
        for (hn, row) in h_new.chunks_exact_mut(h).zip(acts.chunks_exact(4 * h)) {
            hn.iter_mut().zip(&row[h..2 * h]).for_each(|(x, o)| *x = x.mul(*o));
        }
        Ok(tvec!(Tensor::from_shape(&[self.batch, h], &h_new)?.into_tvalue()))
    }

    fn backward<T: CellFloat>(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let h = self.hidden;
        let mut it = inputs.into_iter();
        let (Some(acts), Some(c), Some(c_new), Some(dh), Some(dc_new)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            bail!("{LSTM_CELL_GRAD} takes five inputs");
        };
        let (c, dh, dc_new) = (c.as_slice::<T>()?, dh.as_slice::<T>()?, dc_new.as_slice::<T>()?);
        let mut tc = c_new.as_slice::<T>()?.to_vec();
        T::tanh_all(&mut tc)?;
        let mut dg = reuse_or_copy(acts);
        let mut dc = vec![T::ONE; c.len()];
        let rows = dg.as_slice_mut::<T>()?.chunks_exact_mut(4 * h).zip(dc.chunks_exact_mut(h));
        for (b, (row, dcr)) in rows.enumerate() {
            let at = b * h..(b + 1) * h;
            let (cr, dhr, dcn, tcr) = (&c[at.clone()], &dh[at.clone()], &dc_new[at.clone()], &tc[at]);
            for j in 0..h {
                let (i, o, f, g) = (row[j], row[h + j], row[2 * h + j], row[3 * h + j]);
                let t = tcr[j];
                // dc' in full: the given one and the one through h' = o ⊙ tanh(c').
                let dct = dcn[j].add(dhr[j].mul(o).mul(T::ONE.sub(t.mul(t))));
                row[j] = dct.mul(g).mul(i).mul(T::ONE.sub(i));
                row[h + j] = dhr[j].mul(t).mul(o).mul(T::ONE.sub(o));
                row[2 * h + j] = dct.mul(cr[j]).mul(f).mul(T::ONE.sub(f));
                row[3 * h + j] = dct.mul(i).mul(T::ONE.sub(g.mul(g)));
                dcr[j] = dct.mul(f);
            }
        }
        Ok(tvec!(dg.into_tvalue(), Tensor::from_shape(&[self.batch, h], &dc)?.into_tvalue()))
    }
}

impl CellOp for LstmCell {
    const NAMES: [&'static str; 3] = [LSTM_CELL, LSTM_HIDDEN, LSTM_CELL_GRAD];

    fn new(batch: usize, hidden: usize, part: CellPart) -> Self {
        LstmCell { batch, hidden, part }
    }

    fn part(&self) -> CellPart {
        self.part
    }

    fn input_shapes(&self) -> Vec<[usize; 2]> {
        let (b, h) = (self.batch, self.hidden);
        match self.part {
            CellPart::Cell | CellPart::Hidden => vec![[b, 4 * h], [b, h]],
            CellPart::Grad => vec![[b, 4 * h], [b, h], [b, h], [b, h], [b, h]],
        }
    }

    fn output_shapes(&self) -> Vec<[usize; 2]> {
        let (b, h) = (self.batch, self.hidden);
        match self.part {
            CellPart::Cell => vec![[b, h], [b, 4 * h]],
            CellPart::Hidden => vec![[b, h]],
            CellPart::Grad => vec![[b, 4 * h], [b, h]],
        }
    }

    fn compute<T: CellFloat>(&self, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        match self.part {
            CellPart::Grad => self.backward::<T>(inputs),
            CellPart::Hidden => match inputs.as_slice() {
                [acts, c_new] => self.hidden_state::<T>(acts.as_slice::<T>()?, c_new.as_slice::<T>()?),
                _ => bail!("{LSTM_HIDDEN} takes two inputs"),
            },
            CellPart::Cell => {
                let c = inputs.pop().ok_or_else(|| format_err!("{LSTM_CELL} takes two inputs"))?;
                let g = inputs.pop().ok_or_else(|| format_err!("{LSTM_CELL} takes two inputs"))?;
                self.forward::<T>(g, c.as_slice::<T>()?)
            }
        }
    }
}

cell_op!(LstmCell);

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn t(shape: [usize; 2], v: &[f64]) -> TValue {
        Tensor::from_shape(&shape, v).unwrap().into_tvalue()
    }

    /// (h', c') by the ONNX definition, for one step.
    fn reference(b: usize, h: usize, g: &[f64], c: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (mut hn, mut cn) = (vec![0.0; b * h], vec![0.0; b * h]);
        for r in 0..b {
            for j in 0..h {
                let at = |k: usize| g[r * 4 * h + k * h + j];
                let (i, o, f, gg) = (sig(at(0)), sig(at(1)), sig(at(2)), at(3).tanh());
                cn[r * h + j] = f * c[r * h + j] + i * gg;
                hn[r * h + j] = o * cn[r * h + j].tanh();
            }
        }
        (hn, cn)
    }

    proptest::proptest! {
        #[test]
        fn the_cell_is_the_onnx_step_and_its_gradient_the_finite_difference(
            b in 1usize..4, h in 1usize..5, seed in proptest::prelude::any::<u64>(),
        ) {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut draw = |n: usize| (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect::<Vec<f64>>();
            let (g, c, wh, wc) = (draw(b * 4 * h), draw(b * h), draw(b * h), draw(b * h));
            let fwd = LstmCell { batch: b, hidden: h, part: CellPart::Cell };
            let out = fwd.eval(tvec![t([b, 4 * h], &g), t([b, h], &c)]).unwrap();
            let hidden = LstmCell { batch: b, hidden: h, part: CellPart::Hidden };
            let h_new = hidden.eval(tvec![out[1].clone(), out[0].clone()]).unwrap();
            let (hn, cn) = reference(b, h, &g, &c);
            let close = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-12);
            proptest::prop_assert!(close(h_new[0].as_slice::<f64>().unwrap(), &hn));
            proptest::prop_assert!(close(out[0].as_slice::<f64>().unwrap(), &cn));
            // The loss Σ wh ⊙ h' + wc ⊙ c': dh' = wh, dc' = wc.
            let bwd = LstmCell { batch: b, hidden: h, part: CellPart::Grad };
            let grads = bwd
                .eval(tvec![out[1].clone(), t([b, h], &c), out[0].clone(), t([b, h], &wh), t([b, h], &wc)])
                .unwrap();
            let loss = |g: &[f64], c: &[f64]| {
                let (hn, cn) = reference(b, h, g, c);
                hn.iter().zip(&wh).chain(cn.iter().zip(&wc)).map(|(x, w)| x * w).sum::<f64>()
            };
            let eps = 1e-6;
            let (dg, dc) = (grads[0].as_slice::<f64>().unwrap(), grads[1].as_slice::<f64>().unwrap());
            for k in 0..g.len() {
                let (mut up, mut down) = (g.clone(), g.clone());
                up[k] += eps;
                down[k] -= eps;
                let fd = (loss(&up, &c) - loss(&down, &c)) / (2.0 * eps);
                proptest::prop_assert!((fd - dg[k]).abs() < 1e-6, "dG[{k}] {} against {fd}", dg[k]);
            }
            for k in 0..c.len() {
                let (mut up, mut down) = (c.clone(), c.clone());
                up[k] += eps;
                down[k] -= eps;
                let fd = (loss(&g, &up) - loss(&g, &down)) / (2.0 * eps);
                proptest::prop_assert!((fd - dc[k]).abs() < 1e-6, "dc[{k}] {} against {fd}", dc[k]);
            }
        }
    }

    #[test]
    fn the_gate_buffer_is_reused_when_nothing_else_holds_it_and_left_alone_otherwise() {
        let (b, h) = (2, 3);
        let g: Vec<f32> = (0..b * 4 * h).map(|k| k as f32 * 0.1 - 1.0).collect();
        let c = Tensor::from_shape(&[b, h], &[0.5f32; 6]).unwrap().into_tvalue();
        let fwd = LstmCell { batch: b, hidden: h, part: CellPart::Cell };
        let gv = Tensor::from_shape(&[b, 4 * h], &g).unwrap().into_tvalue();
        let address = gv.as_slice::<f32>().unwrap().as_ptr();
        let out = fwd.eval(tvec![gv, c.clone()]).unwrap();
        assert_eq!(out[1].as_slice::<f32>().unwrap().as_ptr(), address, "the activations overwrite G");
        let kept = Tensor::from_shape(&[b, 4 * h], &g).unwrap().into_tvalue();
        let again = fwd.eval(tvec![kept.clone(), c]).unwrap();
        assert_eq!(kept.as_slice::<f32>().unwrap(), &g[..], "a G read elsewhere is not written");
        assert_eq!(again[1].as_slice::<f32>().unwrap(), out[1].as_slice::<f32>().unwrap());
    }

    #[test]
    fn inputs_of_the_wrong_shape_or_type_are_errors() {
        let fwd = LstmCell { batch: 2, hidden: 3, part: CellPart::Cell };
        let g = Tensor::from_shape(&[2, 12], &[0.0f32; 24]).unwrap().into_tvalue();
        let short = Tensor::from_shape(&[2, 2], &[0.0f32; 4]).unwrap().into_tvalue();
        let wide = Tensor::from_shape(&[2, 3], &[0.0f64; 6]).unwrap().into_tvalue();
        assert!(fwd.eval(tvec![g.clone(), short]).is_err());
        assert!(fwd.eval(tvec![g.clone(), wide]).is_err());
        assert!(fwd.eval(tvec![g]).is_err());
        let hidden = LstmCell { batch: 2, hidden: 3, part: CellPart::Hidden };
        let a = Tensor::from_shape(&[2, 12], &[0.0f32; 24]).unwrap().into_tvalue();
        let s = Tensor::from_shape(&[2, 3], &[0.0f32; 6]).unwrap().into_tvalue();
        assert!(hidden.eval(tvec![s.clone(), a.clone()]).is_err(), "inputs swapped");
        assert!(hidden.eval(tvec![a]).is_err());
        let bwd = LstmCell { batch: 2, hidden: 3, part: CellPart::Grad };
        let g = Tensor::from_shape(&[2, 12], &[0.0f32; 24]).unwrap().into_tvalue();
        let s = Tensor::from_shape(&[2, 3], &[0.0f32; 6]).unwrap().into_tvalue();
        assert!(bwd.eval(tvec![g, s.clone(), s.clone(), s]).is_err());
    }
}
