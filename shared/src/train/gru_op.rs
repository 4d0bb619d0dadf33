//! `FedgeGruCell`, `FedgeGruHidden` and `FedgeGruCellGrad`: fedge's own tract operators (domain `ai.fedge`) for one time step of an
//! ONNX GRU in PyTorch's form (`linear_before_reset` = 1; gates in z, r, n order, default activations) and its
//! gradient, in the training step under `Kernels::Fedge`. (The other form, whose candidate's recurrence product
//! reads the reset state, stays on primitive nodes.)
//!
//! - `FedgeGruCell` (attributes `batch`, `hidden`): from the step's input projection X `[B, 3H]` (`x·Wᵀ + Wb`) and
//!   its recurrence projection Q `[B, 3H]` (`h·Rᵀ + Rb`), the activated gates A
//!   `[B, 3H]`: `z = σ(X_z + Q_z)`, `r = σ(X_r + Q_r)`, `n = tanh(X_n + r ⊙ Q_n)`, written over X's buffer when
//!   nothing else holds it.
//! - `FedgeGruHidden`: from (A, h) the new hidden state `h' = n + z ⊙ (h - n)`. A node of its own for the reason
//!   given in `lstm_op`: tract frees a node's outputs together, and h' is read until the end of the backward pass.
//! - `FedgeGruCellGrad`: from (A, Q, h, dh') the gradients dX `[B, 3H]` (over A's buffer, which by then nothing
//!   else holds), dQ `[B, 3H]` and dh `[B, H]`.
//!
//! They replace the fifteen or so primitive nodes per step (six slices, two Sigmoid, a Tanh, Adds, Muls, a Sub)
//! and their gradients; `Kernels::Standard` still writes those (`cell_emit`). Pure computation over the input
//! tensors; inputs whose shapes or types disagree with the attributes are an error, never a read out of bounds.

use tract_onnx::tract_hir::internal::*;

use super::cell_math::{CellFloat, reuse_or_copy};
use super::cell_op::{CellOp, CellPart, cell_facts, cell_op, cell_rules, run_cell};
use super::stateless_op::stateless_op;

/// The forward operator type in emitted graphs.
pub const GRU_CELL: &str = "FedgeGruCell";
/// The hidden-state operator type in emitted graphs.
pub const GRU_HIDDEN: &str = "FedgeGruHidden";
/// The backward operator type in emitted graphs.
pub const GRU_CELL_GRAD: &str = "FedgeGruCellGrad";

/// One step's sizes and the operator.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct GruCell {
    pub batch: usize,
    pub hidden: usize,
    pub part: CellPart,
}

impl GruCell {
    fn forward<T: CellFloat>(&self, x: TValue, q: &[T]) -> TractResult<TVec<TValue>> {
        let hd = self.hidden;
        let mut acts = reuse_or_copy(x);
        let a = acts.as_slice_mut::<T>()?;
        for (row, qr) in a.chunks_exact_mut(3 * hd).zip(q.chunks_exact(3 * hd)) {
            row[..2 * hd].iter_mut().zip(&qr[..2 * hd]).for_each(|(x, q)| *x = x.add(*q));
            T::sigmoid_all(&mut row[..2 * hd])?;
            for j in 0..hd {
                row[2 * hd + j] = row[2 * hd + j].add(row[hd + j].mul(qr[2 * hd + j]));
            }
            T::tanh_all(&mut row[2 * hd..])?;
        }
        Ok(tvec!(acts.into_tvalue()))
    }

    /// `h' = n + z ⊙ (h - n)` from the activated gates and the hidden state.
    fn hidden_state<T: CellFloat>(&self, acts: &[T], h: &[T]) -> TractResult<TVec<TValue>> {
        let hd = self.hidden;
        let mut h_new = vec![T::ONE; h.len()];
        let rows = acts.chunks_exact(3 * hd).zip(h.chunks_exact(hd).zip(h_new.chunks_exact_mut(hd)));
        for (row, (hr, hn)) in rows {
            for j in 0..hd {
                let (z, n) = (row[j], row[2 * hd + j]);
                hn[j] = n.add(z.mul(hr[j].sub(n)));
            }
        }
        Ok(tvec!(Tensor::from_shape(&[self.batch, hd], &h_new)?.into_tvalue()))
    }

    fn backward<T: CellFloat>(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let hd = self.hidden;
        let mut it = inputs.into_iter();
        let (Some(acts), Some(q), Some(h), Some(dh)) = (it.next(), it.next(), it.next(), it.next()) else {
            bail!("{GRU_CELL_GRAD} takes four inputs");
        };
        let (q, h, dh) = (q.as_slice::<T>()?, h.as_slice::<T>()?, dh.as_slice::<T>()?);
        let mut dx = reuse_or_copy(acts);
        let mut dq = vec![T::ONE; q.len()];
        let mut dh_prev = vec![T::ONE; h.len()];
        let rows = dx.as_slice_mut::<T>()?.chunks_exact_mut(3 * hd).zip(dq.chunks_exact_mut(3 * hd));
        for (b, (row, dqr)) in rows.enumerate() {
            let at = b * hd;
            for j in 0..hd {
                let (z, r, n) = (row[j], row[hd + j], row[2 * hd + j]);
                let (g, hp, qn) = (dh[at + j], h[at + j], q[b * 3 * hd + 2 * hd + j]);
                dh_prev[at + j] = g.mul(z);
                let dsn = g.mul(T::ONE.sub(z)).mul(T::ONE.sub(n.mul(n)));
                let dsz = g.mul(hp.sub(n)).mul(z).mul(T::ONE.sub(z));
                let dsr = dsn.mul(qn).mul(r).mul(T::ONE.sub(r));
                (row[j], row[hd + j], row[2 * hd + j]) = (dsz, dsr, dsn);
                (dqr[j], dqr[hd + j], dqr[2 * hd + j]) = (dsz, dsr, dsn.mul(r));
            }
        }
        let shape = |w: usize| [self.batch, w];
        Ok(tvec!(
            dx.into_tvalue(),
            Tensor::from_shape(&shape(3 * hd), &dq)?.into_tvalue(),
            Tensor::from_shape(&shape(hd), &dh_prev)?.into_tvalue()
        ))
    }
}

impl CellOp for GruCell {
    const NAMES: [&'static str; 3] = [GRU_CELL, GRU_HIDDEN, GRU_CELL_GRAD];

    fn new(batch: usize, hidden: usize, part: CellPart) -> Self {
        GruCell { batch, hidden, part }
    }

    fn part(&self) -> CellPart {
        self.part
    }

    fn input_shapes(&self) -> Vec<[usize; 2]> {
        let (b, h) = (self.batch, self.hidden);
        match self.part {
            CellPart::Cell => vec![[b, 3 * h], [b, 3 * h]],
            CellPart::Hidden => vec![[b, 3 * h], [b, h]],
            CellPart::Grad => vec![[b, 3 * h], [b, 3 * h], [b, h], [b, h]],
        }
    }

    fn output_shapes(&self) -> Vec<[usize; 2]> {
        let (b, h) = (self.batch, self.hidden);
        match self.part {
            CellPart::Cell => vec![[b, 3 * h]],
            CellPart::Hidden => vec![[b, h]],
            CellPart::Grad => vec![[b, 3 * h], [b, 3 * h], [b, h]],
        }
    }

    fn compute<T: CellFloat>(&self, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        match self.part {
            CellPart::Grad => self.backward::<T>(inputs),
            CellPart::Hidden => match inputs.as_slice() {
                [acts, h] => self.hidden_state::<T>(acts.as_slice::<T>()?, h.as_slice::<T>()?),
                _ => bail!("{GRU_HIDDEN} takes two inputs"),
            },
            CellPart::Cell => {
                let missing = || format_err!("{GRU_CELL} takes two inputs");
                let q = inputs.pop().ok_or_else(missing)?;
                let x = inputs.pop().ok_or_else(missing)?;
                self.forward::<T>(x, q.as_slice::<T>()?)
            }
        }
    }
}

cell_op!(GruCell);

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn t(shape: [usize; 2], v: &[f64]) -> TValue {
        Tensor::from_shape(&shape, v).unwrap().into_tvalue()
    }

    /// h' by the ONNX definition (`linear_before_reset` = 1), for one step.
    fn reference(b: usize, hd: usize, x: &[f64], q: &[f64], h: &[f64]) -> Vec<f64> {
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut out = vec![0.0; b * hd];
        for r in 0..b {
            for j in 0..hd {
                let at = |v: &[f64], k: usize| v[r * 3 * hd + k * hd + j];
                let z = sig(at(x, 0) + at(q, 0));
                let rr = sig(at(x, 1) + at(q, 1));
                let n = (at(x, 2) + rr * at(q, 2)).tanh();
                out[r * hd + j] = (1.0 - z) * n + z * h[r * hd + j];
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn the_cell_is_the_onnx_step_and_its_gradient_the_finite_difference(
            b in 1usize..4, hd in 1usize..5, seed in proptest::prelude::any::<u64>(),
        ) {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut draw = |n: usize| (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect::<Vec<f64>>();
            let (x, q, h, w) = (draw(b * 3 * hd), draw(b * 3 * hd), draw(b * hd), draw(b * hd));
            let fwd = GruCell { batch: b, hidden: hd, part: CellPart::Cell };
            let out = fwd.eval(tvec![t([b, 3 * hd], &x), t([b, 3 * hd], &q)]).unwrap();
            let hidden = GruCell { batch: b, hidden: hd, part: CellPart::Hidden };
            let h_new = hidden.eval(tvec![out[0].clone(), t([b, hd], &h)]).unwrap();
            let want = reference(b, hd, &x, &q, &h);
            let got = h_new[0].as_slice::<f64>().unwrap();
            proptest::prop_assert!(got.iter().zip(&want).all(|(p, q)| (p - q).abs() < 1e-12));
            // The loss Σ w ⊙ h': dh' = w.
            let bwd = GruCell { batch: b, hidden: hd, part: CellPart::Grad };
            let grads =
                bwd.eval(tvec![out[0].clone(), t([b, 3 * hd], &q), t([b, hd], &h), t([b, hd], &w)]).unwrap();
            let loss = |x: &[f64], q: &[f64], h: &[f64]| {
                reference(b, hd, x, q, h).iter().zip(&w).map(|(v, w)| v * w).sum::<f64>()
            };
            let eps = 1e-6;
            let inputs = [&x, &q, &h];
            for (which, grad) in grads.iter().enumerate() {
                let grad = grad.as_slice::<f64>().unwrap();
                for k in 0..grad.len() {
                    let (mut up, mut down) = (inputs.map(|v| v.clone()), inputs.map(|v| v.clone()));
                    up[which][k] += eps;
                    down[which][k] -= eps;
                    let fd = (loss(&up[0], &up[1], &up[2]) - loss(&down[0], &down[1], &down[2])) / (2.0 * eps);
                    proptest::prop_assert!((fd - grad[k]).abs() < 1e-6, "input {which}[{k}]: {} against {fd}", grad[k]);
                }
            }
        }
    }

    #[test]
    fn the_input_projection_s_buffer_is_reused_when_nothing_else_holds_it() {
        let (b, hd) = (2, 2);
        let x: Vec<f32> = (0..b * 3 * hd).map(|k| k as f32 * 0.1 - 0.5).collect();
        let q = Tensor::from_shape(&[b, 3 * hd], &[0.25f32; 12]).unwrap().into_tvalue();
        let fwd = GruCell { batch: b, hidden: hd, part: CellPart::Cell };
        let xv = Tensor::from_shape(&[b, 3 * hd], &x).unwrap().into_tvalue();
        let address = xv.as_slice::<f32>().unwrap().as_ptr();
        let out = fwd.eval(tvec![xv, q.clone()]).unwrap();
        assert_eq!(out[0].as_slice::<f32>().unwrap().as_ptr(), address, "the activations overwrite X");
        let kept = Tensor::from_shape(&[b, 3 * hd], &x).unwrap().into_tvalue();
        let again = fwd.eval(tvec![kept.clone(), q]).unwrap();
        assert_eq!(kept.as_slice::<f32>().unwrap(), &x[..], "an X read elsewhere is not written");
        assert_eq!(again[0].as_slice::<f32>().unwrap(), out[0].as_slice::<f32>().unwrap());
    }

    #[test]
    fn inputs_of_the_wrong_shape_or_type_are_errors() {
        let fwd = GruCell { batch: 2, hidden: 3, part: CellPart::Cell };
        let x = Tensor::from_shape(&[2, 9], &[0.0f32; 18]).unwrap().into_tvalue();
        let h = Tensor::from_shape(&[2, 3], &[0.0f32; 6]).unwrap().into_tvalue();
        let narrow = Tensor::from_shape(&[2, 6], &[0.0f32; 12]).unwrap().into_tvalue();
        let wide = Tensor::from_shape(&[2, 9], &[0.0f64; 18]).unwrap().into_tvalue();
        assert!(fwd.eval(tvec![x.clone(), narrow]).is_err());
        assert!(fwd.eval(tvec![x.clone(), wide]).is_err());
        assert!(fwd.eval(tvec![x.clone(), h.clone()]).is_err());
        let hidden = GruCell { batch: 2, hidden: 3, part: CellPart::Hidden };
        assert!(hidden.eval(tvec![h.clone(), x.clone()]).is_err(), "inputs swapped");
        assert!(hidden.eval(tvec![x.clone()]).is_err());
        let bwd = GruCell { batch: 2, hidden: 3, part: CellPart::Grad };
        assert!(bwd.eval(tvec![x.clone(), x, h]).is_err());
    }
}
