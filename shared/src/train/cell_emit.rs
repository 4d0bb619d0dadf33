//! How an LSTM or GRU time step ([`Op::LstmCell`], [`Op::GruCell`], written by the lowering) is emitted, forward and
//! backward: under `Kernels::Fedge` as fedge's fused `FedgeLstmCell` (with `FedgeLstmHidden` for h') /
//! `FedgeLstmCellGrad` (`lstm_op`) or `FedgeGruCell` / `FedgeGruCellGrad` (`gru_op`), one node each way whose
//! activated gates travel from the one to the other in a single `[B, 4H]` (`[B, 3H]`) buffer; under `Kernels::Standard` as the primitive ONNX nodes of the
//! cell's definition (Slice, Sigmoid, Tanh, Mul, Add, Sub) and of their gradients, for runtimes that do not know
//! domain `ai.fedge` and for checking the fused cells against.
//!
//! The forward pass leaves what the backward pass reads under names derived from the step's hidden-state output
//! ([`acts_name`], [`part_name`]). It only appends nodes; it never differentiates anything else and never runs.

use super::emit::{Emitter, Kernels, Precision};
use super::error::TrainError;
use super::graph::{DNode, Op};
use super::gru_op::{GRU_CELL, GRU_CELL_GRAD, GRU_HIDDEN};
use super::lstm_op::{LSTM_CELL, LSTM_CELL_GRAD, LSTM_HIDDEN};
use super::proto::attr_i;

/// The fused cell's activated gates `[B, 4H]`, for the step whose hidden state is `output`.
pub fn acts_name(output: &str) -> String {
    format!("__fedge/lstm/{output}/acts")
}

/// One of the primitive form's saved tensors (`i`, `o`, `f`, `g` activated gates, `tc` = tanh(c')), for the step
/// whose hidden state is `output`.
pub fn part_name(output: &str, part: &str) -> String {
    format!("__fedge/lstm/{output}/{part}")
}

/// (B, H) of a step.
fn sizes(n: &DNode) -> Result<(usize, usize), TrainError> {
    match (&n.op, n.out_shape.as_slice()) {
        (Op::LstmCell, [b, h]) => Ok((*b, *h)),
        _ => Err(TrainError::invalid(format!("node {} is not an LSTM step", n.name))),
    }
}

fn second(n: &DNode) -> Result<&str, TrainError> {
    n.second_output.as_deref().ok_or_else(|| TrainError::invalid(format!("node {}: no cell state output", n.name)))
}

fn cols(e: &mut Emitter, x: &str, rows: usize, from: usize, to: usize) -> String {
    let (s, en) = (e.const_i(&[2], &[0, from as i64]), e.const_i(&[2], &[rows as i64, to as i64]));
    e.op("Slice", &[x, &s, &en], vec![])
}

/// The logistic function into `out` (in f64 from elementary ops: tract's Sigmoid is f32 only).
fn sigmoid_into(e: &mut Emitter, x: &str, out: &str) {
    if e.precision == Precision::F64 {
        let one = e.scalar(1.0);
        let neg = e.op("Neg", &[x], vec![]);
        let ex = e.op("Exp", &[&neg], vec![]);
        let den = e.op("Add", &[&one, &ex], vec![]);
        e.op_into("Div", &[&one, &den], &[out], vec![]);
    } else {
        e.op_into("Sigmoid", &[x], &[out], vec![]);
    }
}

/// The step's forward nodes: `n.output` ← h', `n.second_output` ← c', and what the backward pass reads.
pub fn lstm_forward(e: &mut Emitter, n: &DNode) -> Result<(), TrainError> {
    let (b, h) = sizes(n)?;
    let (g, c, out, c_new) = (n.inputs[0].as_str(), n.inputs[1].as_str(), n.output.as_str(), second(n)?);
    if e.kernels == Kernels::Fedge {
        let attrs = vec![attr_i("batch", b as i64), attr_i("hidden", h as i64)];
        // h' from a node of its own: read until the end of the backward pass, it would keep the step's A alive
        // with it (tract frees a node's outputs together), and FedgeLstmCellGrad could not write dG over A.
        let acts = acts_name(out);
        e.fedge_op_into(LSTM_CELL, &[g, c], &[c_new, &acts], attrs.clone());
        e.fedge_op_into(LSTM_HIDDEN, &[&acts, c_new], &[out], attrs);
        return Ok(());
    }
    let part = |p: &str| part_name(out, p);
    let (i, o, f, gc, tc) = (part("i"), part("o"), part("f"), part("g"), part("tc"));
    for (k, name) in [&i, &o, &f].into_iter().enumerate() {
        let pre = cols(e, g, b, k * h, (k + 1) * h);
        sigmoid_into(e, &pre, name);
    }
    let pre = cols(e, g, b, 3 * h, 4 * h);
    e.op_into("Tanh", &[&pre], &[&gc], vec![]);
    let kept = e.op("Mul", &[&f, c], vec![]);
    let added = e.op("Mul", &[&i, &gc], vec![]);
    e.op_into("Add", &[&kept, &added], &[c_new], vec![]);
    e.op_into("Tanh", &[c_new], &[&tc], vec![]);
    e.op_into("Mul", &[&o, &tc], &[out], vec![]);
    Ok(())
}

/// The gradients of the step's inputs (gates, cell state) from those of its hidden and cell states (either may be
/// absent: that output is not used); `None` where `needs` says no.
pub fn lstm_backward(
    e: &mut Emitter,
    n: &DNode,
    dh: Option<&str>,
    dc: Option<&str>,
    needs: &[bool],
) -> Result<Vec<Option<String>>, TrainError> {
    let (b, h) = sizes(n)?;
    let (c, out, c_new) = (n.inputs[1].as_str(), n.output.as_str(), second(n)?);
    let zeros = |e: &mut Emitter| e.const_f(&[b, h], &vec![0.0; b * h]);
    let (dg, dc_prev) = if e.kernels == Kernels::Fedge {
        let dh = dh.map_or_else(|| zeros(e), str::to_string);
        let dc = dc.map_or_else(|| zeros(e), str::to_string);
        let (dg, dc_prev) = (e.fresh(LSTM_CELL_GRAD), e.fresh(LSTM_CELL_GRAD));
        let attrs = vec![attr_i("batch", b as i64), attr_i("hidden", h as i64)];
        e.fedge_op_into(LSTM_CELL_GRAD, &[&acts_name(out), c, c_new, &dh, &dc], &[&dg, &dc_prev], attrs);
        (dg, dc_prev)
    } else {
        let part = |p: &str| part_name(out, p);
        let (i, o, f, gc, tc) = (part("i"), part("o"), part("f"), part("g"), part("tc"));
        let one = e.scalar(1.0);
        // x ⊙ (1 - x): the logistic function's derivative from its value.
        let dsig = |e: &mut Emitter, x: &str| {
            let s = e.op("Sub", &[&one, x], vec![]);
            e.op("Mul", &[x, &s], vec![])
        };
        // 1 - x²: tanh's derivative from its value.
        let dtanh = |e: &mut Emitter, x: &str| {
            let sq = e.op("Mul", &[x, x], vec![]);
            e.op("Sub", &[&one, &sq], vec![])
        };
        // dc' in full: the given one and the one through h' = o ⊙ tanh(c').
        let through_h = dh.map(|dh| {
            let a = e.op("Mul", &[dh, &o], vec![]);
            let d = dtanh(e, &tc);
            e.op("Mul", &[&a, &d], vec![])
        });
        let dct = match (through_h, dc) {
            (Some(a), Some(dc)) => e.op("Add", &[&a, dc], vec![]),
            (Some(a), None) => a,
            (None, Some(dc)) => dc.to_string(),
            (None, None) => zeros(e),
        };
        let times = |e: &mut Emitter, x: &str, y: &str, d: &str| {
            let p = e.op("Mul", &[x, y], vec![]);
            e.op("Mul", &[&p, d], vec![])
        };
        let d = dsig(e, &i);
        let di = times(e, &dct, &gc, &d);
        let d_o = match dh {
            Some(dh) => {
                let d = dsig(e, &o);
                times(e, dh, &tc, &d)
            }
            None => zeros(e),
        };
        let d = dsig(e, &f);
        let df = times(e, &dct, c, &d);
        let d = dtanh(e, &gc);
        let dgc = times(e, &dct, &i, &d);
        let dg = e.op("Concat", &[&di, &d_o, &df, &dgc], vec![attr_i("axis", 1)]);
        let dc_prev = e.op("Mul", &[&dct, &f], vec![]);
        (dg, dc_prev)
    };
    Ok(vec![needs[0].then_some(dg), needs.get(1).copied().unwrap_or(false).then_some(dc_prev)])
}

/// A GRU step's fused activated gates `[B, 3H]` (z, r, n), for the step whose hidden state is `output`.
pub fn gru_acts_name(output: &str) -> String {
    format!("__fedge/gru/{output}/acts")
}

/// One of a GRU step's primitive form's saved tensors (`z`, `r`, `n`, and `qn`, the recurrence projection's
/// candidate part), for the step whose hidden state is `output`.
pub fn gru_part_name(output: &str, part: &str) -> String {
    format!("__fedge/gru/{output}/{part}")
}

/// (B, H) of a GRU step.
fn gru_sizes(n: &DNode) -> Result<(usize, usize), TrainError> {
    match (&n.op, n.out_shape.as_slice()) {
        (Op::GruCell, [b, h]) => Ok((*b, *h)),
        _ => Err(TrainError::invalid(format!("node {} is not a GRU step", n.name))),
    }
}

/// A GRU step's forward nodes (`h' = n + z ⊙ (h - n)`), and what the backward pass reads.
pub fn gru_forward(e: &mut Emitter, n: &DNode) -> Result<(), TrainError> {
    let (b, h) = gru_sizes(n)?;
    let (x, q, hp, out) = (n.inputs[0].as_str(), n.inputs[1].as_str(), n.inputs[2].as_str(), n.output.as_str());
    if e.kernels == Kernels::Fedge {
        let attrs = vec![attr_i("batch", b as i64), attr_i("hidden", h as i64)];
        // h' from a node of its own, as the LSTM's (see `lstm_forward`).
        let acts = gru_acts_name(out);
        e.fedge_op_into(GRU_CELL, &[x, q], &[&acts], attrs.clone());
        e.fedge_op_into(GRU_HIDDEN, &[&acts, hp], &[out], attrs);
        return Ok(());
    }
    let part = |p: &str| gru_part_name(out, p);
    let (z, r, nn, qn) = (part("z"), part("r"), part("n"), part("qn"));
    for (k, name) in [&z, &r].into_iter().enumerate() {
        let xs = cols(e, x, b, k * h, (k + 1) * h);
        let qs = cols(e, q, b, k * h, (k + 1) * h);
        let sum = e.op("Add", &[&xs, &qs], vec![]);
        sigmoid_into(e, &sum, name);
    }
    let xn = cols(e, x, b, 2 * h, 3 * h);
    let (s, en) = (e.const_i(&[2], &[0, 2 * h as i64]), e.const_i(&[2], &[b as i64, 3 * h as i64]));
    e.op_into("Slice", &[q, &s, &en], &[&qn], vec![]);
    let recur = e.op("Mul", &[&r, &qn], vec![]);
    let sn = e.op("Add", &[&xn, &recur], vec![]);
    e.op_into("Tanh", &[&sn], &[&nn], vec![]);
    let diff = e.op("Sub", &[hp, &nn], vec![]);
    let kept = e.op("Mul", &[&z, &diff], vec![]);
    e.op_into("Add", &[&nn, &kept], &[out], vec![]);
    Ok(())
}

/// The gradients of a GRU step's inputs (input projection, recurrence projection, hidden state) from its output's;
/// `None` where `needs` says no.
pub fn gru_backward(e: &mut Emitter, n: &DNode, dy: &str, needs: &[bool]) -> Result<Vec<Option<String>>, TrainError> {
    let (b, h) = gru_sizes(n)?;
    let (q, hp, out) = (n.inputs[1].as_str(), n.inputs[2].as_str(), n.output.as_str());
    let (dx, dq, dh) = if e.kernels == Kernels::Fedge {
        let names = [e.fresh(GRU_CELL_GRAD), e.fresh(GRU_CELL_GRAD), e.fresh(GRU_CELL_GRAD)];
        let attrs = vec![attr_i("batch", b as i64), attr_i("hidden", h as i64)];
        let outs: Vec<&str> = names.iter().map(String::as_str).collect();
        e.fedge_op_into(GRU_CELL_GRAD, &[&gru_acts_name(out), q, hp, dy], &outs, attrs);
        let [dx, dq, dh] = names;
        (dx, dq, dh)
    } else {
        let part = |p: &str| gru_part_name(out, p);
        let (z, r, nn, qn) = (part("z"), part("r"), part("n"), part("qn"));
        let one = e.scalar(1.0);
        let dsig = |e: &mut Emitter, x: &str| {
            let s = e.op("Sub", &[&one, x], vec![]);
            e.op("Mul", &[x, &s], vec![])
        };
        // dn = dy ⊙ (1 - z), through tanh; dz = dy ⊙ (h - n), through σ; dh = dy ⊙ z.
        let omz = e.op("Sub", &[&one, &z], vec![]);
        let dn = e.op("Mul", &[dy, &omz], vec![]);
        let sq = e.op("Mul", &[&nn, &nn], vec![]);
        let dt = e.op("Sub", &[&one, &sq], vec![]);
        let dsn = e.op("Mul", &[&dn, &dt], vec![]);
        let diff = e.op("Sub", &[hp, &nn], vec![]);
        let dz = e.op("Mul", &[dy, &diff], vec![]);
        let d = dsig(e, &z);
        let dsz = e.op("Mul", &[&dz, &d], vec![]);
        let dr = e.op("Mul", &[&dsn, &qn], vec![]);
        let d = dsig(e, &r);
        let dsr = e.op("Mul", &[&dr, &d], vec![]);
        let dqn = e.op("Mul", &[&dsn, &r], vec![]);
        let dx = e.op("Concat", &[&dsz, &dsr, &dsn], vec![attr_i("axis", 1)]);
        let dq = e.op("Concat", &[&dsz, &dsr, &dqn], vec![attr_i("axis", 1)]);
        let dh = e.op("Mul", &[dy, &z], vec![]);
        (dx, dq, dh)
    };
    let need = |i: usize| needs.get(i).copied().unwrap_or(false);
    Ok(vec![need(0).then_some(dx), need(1).then_some(dq), need(2).then_some(dh)])
}
