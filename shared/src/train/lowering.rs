//! Operators defined by other operators: `Split`, `LSTM` and `GRU` rewritten into the primitive ONNX nodes their
//! specifications define them by (Slice, MatMul, Add, Mul, Sigmoid, Tanh, Reshape, Concat), so that the graph
//! resolves, differentiates and emits them like any other node.
//!
//! A recurrent cell is unrolled over its (static) sequence length: one group of nodes per time step, the input
//! projection of every step done by one MatMul before the loop. An LSTM step's gates and states are one
//! [`LSTM_CELL`] node after the recurrence product, a PyTorch-form GRU step's one [`GRU_CELL`] node, which the
//! emitter writes fused or as their primitive definition. The backward pass needs nothing else of its own: the
//! slices of one tensor gather their gradients by concatenation (see `grad::slice`).
//!
//! What is supported is what PyTorch's exporter writes: the forward direction, the default activations, no
//! peepholes, no clipping, zero or given initial states, every step (`Y`) and the last (`Y_h`, `Y_c`) as outputs,
//! sequence lengths absent or all equal to the sequence length. Anything else is refused with the operator's name
//! and node. It only writes protobuf nodes and small constants; it never reads or runs tensor data.

use std::collections::HashMap;

use tract_onnx::pb::NodeProto;

use super::error::TrainError;
use super::graph::Const;
use super::proto::{Attrs, Data, attr_i, attr_ints, node};

/// The opset the written nodes follow (Slice with inputs, Concat with an axis attribute).
pub const OPSET: i64 = 13;

/// The one node of its own the lowering writes: an LSTM time step from its gate pre-activations `[B, 4H]` and cell
/// state to the new hidden and cell states (`graph::Op::LstmCell`; emitted as fedge's fused cell or as the
/// primitive nodes of its definition, `cell_emit`). Never read from a model: the graph refuses it there.
pub const LSTM_CELL: &str = "fedge.LstmCell";

/// Likewise a GRU time step in PyTorch's form (`linear_before_reset` = 1) from its input and recurrence projections
/// and hidden state to the new hidden state (`graph::Op::GruCell`). The other form stays on primitive nodes.
pub const GRU_CELL: &str = "fedge.GruCell";

/// The lowered form of one node: constants to add to the graph, then nodes to resolve in order.
pub struct Lowered {
    pub consts: Vec<(String, Const)>,
    pub nodes: Vec<NodeProto>,
}

/// Whether `op_type` is rewritten here rather than differentiated directly.
pub fn is_lowered(op_type: &str) -> bool {
    matches!(op_type, "Split" | "LSTM" | "GRU")
}

type Shapes<'a> = &'a dyn Fn(&str) -> Option<Vec<usize>>;
type Consts<'a> = &'a dyn Fn(&str) -> Option<Const>;

/// Rewrites `n` (one of [`is_lowered`]'s operators). `shape` and `konst` look up the graph's tensors.
pub fn lower(n: &NodeProto, opset: i64, shape: Shapes<'_>, konst: Consts<'_>) -> Result<Lowered, TrainError> {
    let mut w = Writer::new(n);
    match n.op_type.as_str() {
        "Split" => split(&mut w, n, opset, shape, konst)?,
        "LSTM" | "GRU" => recurrent(&mut w, n, shape, konst)?,
        other => return Err(w.unsupported(other)),
    }
    Ok(Lowered { consts: w.consts, nodes: w.nodes })
}

/// Appends nodes and constants with names unique to the lowered node.
struct Writer {
    prefix: String,
    node_name: String,
    counter: usize,
    consts: Vec<(String, Const)>,
    nodes: Vec<NodeProto>,
    ints: HashMap<Vec<i64>, String>,
}

impl Writer {
    fn new(n: &NodeProto) -> Self {
        let first_out = n.output.iter().find(|o| !o.is_empty()).cloned().unwrap_or_default();
        Writer {
            prefix: format!("{}/__lowered", first_out),
            node_name: n.name.clone(),
            counter: 0,
            consts: vec![],
            nodes: vec![],
            ints: HashMap::new(),
        }
    }

    fn unsupported(&self, what: &str) -> TrainError {
        TrainError::UnsupportedOp { op: what.to_string(), node: self.node_name.clone() }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{}/{hint}/{}", self.prefix, self.counter)
    }

    /// A one-dimensional int64 constant (shared between nodes asking for the same values).
    fn ints(&mut self, v: &[i64]) -> String {
        if let Some(name) = self.ints.get(v) {
            return name.clone();
        }
        let name = self.fresh("const");
        self.consts.push((name.clone(), (vec![v.len()], Data::I(v.to_vec()))));
        self.ints.insert(v.to_vec(), name.clone());
        name
    }

    fn zeros(&mut self, shape: &[usize]) -> String {
        let name = self.fresh("zeros");
        self.consts.push((name.clone(), (shape.to_vec(), Data::F(vec![0.0; shape.iter().product()]))));
        name
    }

    fn op_into(&mut self, op: &str, inputs: &[&str], out: &str, attrs: Vec<tract_onnx::pb::AttributeProto>) {
        let name = self.fresh(op);
        self.nodes.push(node(op, &name, inputs, &[out], attrs));
    }

    fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        let out = self.fresh(op);
        self.op_into(op, inputs, &out, vec![]);
        out
    }

    /// `x[starts..ends]` on every axis, written to `out`.
    fn slice_into(&mut self, x: &str, starts: &[usize], ends: &[usize], out: &str) {
        let s = self.ints(&starts.iter().map(|v| *v as i64).collect::<Vec<_>>());
        let e = self.ints(&ends.iter().map(|v| *v as i64).collect::<Vec<_>>());
        self.op_into("Slice", &[x, &s, &e], out, vec![]);
    }

    fn slice(&mut self, x: &str, starts: &[usize], ends: &[usize]) -> String {
        let out = self.fresh("Slice");
        self.slice_into(x, starts, ends, &out);
        out
    }

    /// Columns `[from, to)` of a matrix with `rows` rows.
    fn cols(&mut self, x: &str, rows: usize, from: usize, to: usize) -> String {
        self.slice(x, &[0, from], &[rows, to])
    }

    fn reshape_into(&mut self, x: &str, shape: &[usize], out: &str) {
        let s = self.ints(&shape.iter().map(|v| *v as i64).collect::<Vec<_>>());
        self.op_into("Reshape", &[x, &s], out, vec![]);
    }

    fn reshape(&mut self, x: &str, shape: &[usize]) -> String {
        let out = self.fresh("Reshape");
        self.reshape_into(x, shape, &out);
        out
    }

    fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        let out = self.fresh("Transpose");
        self.op_into("Transpose", &[x], &out, vec![attr_ints("perm", perm)]);
        out
    }
}

fn input(n: &NodeProto, i: usize) -> Option<&str> {
    n.input.get(i).map(|s| s.as_str()).filter(|s| !s.is_empty())
}

fn split(w: &mut Writer, n: &NodeProto, opset: i64, shape: Shapes<'_>, konst: Consts<'_>) -> Result<(), TrainError> {
    let a = Attrs(n);
    let x = input(n, 0).ok_or_else(|| TrainError::invalid(format!("node {}: Split without an input", n.name)))?;
    let s = shape(x).ok_or_else(|| TrainError::invalid(format!("node {}: {x} is never computed", n.name)))?;
    let axis = super::shapes::axis(a.i("axis", 0), s.len(), false)?;
    let len = s[axis];
    let parts = n.output.len();
    let sizes: Vec<usize> = match (opset >= 13, input(n, 1)) {
        (true, Some(name)) => konst(name)
            .ok_or_else(|| w.unsupported("Split with computed sizes"))?
            .1
            .as_i64()
            .iter()
            .map(|v| usize::try_from(*v).map_err(|_| TrainError::invalid(format!("node {}: size {v}", n.name))))
            .collect::<Result<_, _>>()?,
        _ => match a.ints("split").filter(|v| !v.is_empty() && opset < 13) {
            Some(v) => v
                .iter()
                .map(|v| usize::try_from(*v).map_err(|_| TrainError::invalid(format!("node {}: size {v}", n.name))))
                .collect::<Result<_, _>>()?,
            None => {
                // Equal parts; opset 18's num_outputs may leave a smaller last part.
                let k = parts.max(1);
                let each = len.div_ceil(k);
                (0..k).map(|i| each.min(len.saturating_sub(i * each))).collect()
            }
        },
    };
    if sizes.len() != parts || sizes.iter().sum::<usize>() != len {
        return Err(TrainError::shape(format!(
            "node {}: Split of {len} along axis {axis} into sizes {sizes:?} for {parts} outputs",
            n.name
        )));
    }
    let mut offset = 0;
    for (out, size) in n.output.iter().zip(&sizes) {
        if !out.is_empty() {
            let mut starts = vec![0; s.len()];
            let mut ends = s.clone();
            starts[axis] = offset;
            ends[axis] = offset + size;
            w.slice_into(x, &starts, &ends, out);
        }
        offset += size;
    }
    Ok(())
}

/// The parts of one recurrent node every cell needs.
struct Cell {
    seq: usize,
    batch: usize,
    hidden: usize,
    /// `[T, B, I]` input, time-major.
    x: String,
    /// Transposed input weights `[I, G·H]` and recurrence weights `[H, G·H]`.
    wt: String,
    rt: String,
    /// The input bias `[1, G·H]` and recurrence bias `[1, G·H]`, when given.
    wb: Option<String>,
    rb: Option<String>,
    batch_first: bool,
}

fn recurrent(w: &mut Writer, n: &NodeProto, shape: Shapes<'_>, konst: Consts<'_>) -> Result<(), TrainError> {
    let a = Attrs(n);
    let lstm = n.op_type == "LSTM";
    let gates: usize = if lstm { 4 } else { 3 };
    let op = n.op_type.as_str();
    if let Some(d) = a.s("direction").filter(|d| d != "forward") {
        return Err(w.unsupported(&format!("{op} in the {d} direction")));
    }
    let defaults: &[&str] = if lstm { &["Sigmoid", "Tanh", "Tanh"] } else { &["Sigmoid", "Tanh"] };
    if let Some(acts) = a.0.attribute.iter().find(|at| at.name == "activations") {
        let names: Vec<String> = acts.strings.iter().map(|s| String::from_utf8_lossy(s).to_string()).collect();
        if !names.is_empty() && !names.iter().zip(defaults).all(|(x, y)| x.eq_ignore_ascii_case(y)) {
            return Err(w.unsupported(&format!("{op} with activations {names:?}")));
        }
    }
    if a.has("clip") {
        return Err(w.unsupported(&format!("{op} with clipping")));
    }
    if a.i("input_forget", 0) != 0 {
        return Err(w.unsupported("LSTM with coupled input and forget gates"));
    }
    if lstm && input(n, 7).is_some() {
        return Err(w.unsupported("LSTM with peepholes"));
    }
    let missing = |what: &str| TrainError::invalid(format!("node {}: {op} without {what}", n.name));
    let shape_of = |name: &str| shape(name).ok_or_else(|| missing(name));
    let (x, wn, rn) = (input(n, 0).ok_or_else(|| missing("X"))?, input(n, 1).ok_or_else(|| missing("W"))?, input(n, 2));
    let rn = rn.ok_or_else(|| missing("R"))?;
    let (xs, ws, rs) = (shape_of(x)?, shape_of(wn)?, shape_of(rn)?);
    let batch_first = a.i("layout", 0) != 0;
    let bad = |msg: String| TrainError::shape(format!("node {} ({op}): {msg}", n.name));
    if xs.len() != 3 {
        return Err(bad(format!("input {xs:?} is not three-dimensional")));
    }
    let (seq, batch, inp) = if batch_first { (xs[1], xs[0], xs[2]) } else { (xs[0], xs[1], xs[2]) };
    let hidden = usize::try_from(a.i("hidden_size", (rs.get(2).copied().unwrap_or(0)) as i64))
        .map_err(|_| bad("negative hidden_size".into()))?;
    let gh = gates.checked_mul(hidden).ok_or_else(|| bad(format!("hidden_size {hidden}")))?;
    if ws != [1, gh, inp] || rs != [1, gh, hidden] || hidden == 0 || seq == 0 {
        return Err(bad(format!("W {ws:?} and R {rs:?} do not fit input {xs:?} and hidden size {hidden}")));
    }
    if let Some(lens) = input(n, 4) {
        let all_full = konst(lens).is_some_and(|(_, d)| d.as_i64().iter().all(|l| *l as usize == seq));
        if !all_full {
            return Err(w.unsupported(&format!("{op} with sequences of different lengths")));
        }
    }
    let xt = if batch_first { w.transpose(x, &[1, 0, 2]) } else { x.to_string() };
    let w2 = w.reshape(wn, &[gh, inp]);
    let wt = w.transpose(&w2, &[1, 0]);
    let r2 = w.reshape(rn, &[gh, hidden]);
    let rt = w.transpose(&r2, &[1, 0]);
    let (wb, rb) = match input(n, 3) {
        Some(b) => {
            if shape_of(b)? != [1, 2 * gh] {
                return Err(bad(format!("B {:?} is not [1, {}]", shape_of(b)?, 2 * gh)));
            }
            (Some(w.slice(b, &[0, 0], &[1, gh])), Some(w.slice(b, &[0, gh], &[1, 2 * gh])))
        }
        None => (None, None),
    };
    let state = |w: &mut Writer, i: usize| -> Result<String, TrainError> {
        match input(n, i) {
            Some(s) => {
                let want = if batch_first { [batch, 1, hidden] } else { [1, batch, hidden] };
                if shape_of(s)? != want {
                    return Err(bad(format!("initial state {:?} is not {want:?}", shape_of(s)?)));
                }
                Ok(w.reshape(s, &[batch, hidden]))
            }
            None => Ok(w.zeros(&[batch, hidden])),
        }
    };
    let h0 = state(w, 5)?;
    let cell = Cell { seq, batch, hidden, x: xt, wt, rt, wb, rb, batch_first };
    let steps = if lstm {
        let c0 = state(w, 6)?;
        lstm_steps(w, &cell, h0, c0)
    } else {
        gru_steps(w, &cell, h0, a.i("linear_before_reset", 0) != 0)
    };
    write_outputs(w, n, &cell, &steps);
    Ok(())
}

/// Every step's hidden state, and the last cell state (LSTM only).
struct Steps {
    hs: Vec<String>,
    last_c: Option<String>,
}

/// The input projection of every step at once: `X · Wᵀ (+ Wb)`, `[T, B, G·H]`.
fn projected(w: &mut Writer, c: &Cell, bias: Option<&str>) -> String {
    let xw = w.op("MatMul", &[&c.x, &c.wt]);
    match bias {
        Some(b) => w.op("Add", &[&xw, b]),
        None => xw,
    }
}

/// Step `t` of a `[T, B, G·H]` projection, as `[B, G·H]`.
fn step_of(w: &mut Writer, c: &Cell, xw: &str, t: usize, width: usize) -> String {
    let s = w.slice(xw, &[t, 0, 0], &[t + 1, c.batch, width]);
    w.reshape(&s, &[c.batch, width])
}

/// ONNX LSTM, gates in i, o, f, c order: `c' = f ⊙ c + i ⊙ tanh(ĉ)`, `h' = o ⊙ tanh(c')`.
fn lstm_steps(w: &mut Writer, c: &Cell, h0: String, c0: String) -> Steps {
    let gh = 4 * c.hidden;
    let bias = match (&c.wb, &c.rb) {
        (Some(wb), Some(rb)) => Some(w.op("Add", &[wb, rb])),
        _ => None,
    };
    let xw = projected(w, c, bias.as_deref());
    let (mut h, mut cs) = (h0, c0);
    let mut hs = Vec::with_capacity(c.seq);
    for t in 0..c.seq {
        let xt = step_of(w, c, &xw, t, gh);
        let hr = w.op("MatMul", &[&h, &c.rt]);
        let g = w.op("Add", &[&xt, &hr]);
        let (hn, cn) = (w.fresh("h"), w.fresh("c"));
        let name = w.fresh(LSTM_CELL);
        w.nodes.push(node(LSTM_CELL, &name, &[&g, &cs], &[&hn, &cn], vec![]));
        (h, cs) = (hn, cn);
        hs.push(h.clone());
    }
    Steps { hs, last_c: Some(cs) }
}

/// ONNX GRU, gates in z, r, h order: `n = tanh(xₙ + r ⊙ (h Rₙᵀ + Rbₙ))` with `linear_before_reset` (PyTorch's
/// form), `tanh(xₙ + (r ⊙ h) Rₙᵀ + Rbₙ)` without; `h' = (1 - z) ⊙ n + z ⊙ h`.
fn gru_steps(w: &mut Writer, c: &Cell, h0: String, linear_before_reset: bool) -> Steps {
    let (hd, gh) = (c.hidden, 3 * c.hidden);
    let xw = projected(w, c, c.wb.as_deref());
    // Without linear_before_reset the candidate's recurrence runs after the reset gate: its weights apart.
    let (r_zr, r_n, rb_zr, rb_n) = if linear_before_reset {
        (c.rt.clone(), None, c.rb.clone(), None)
    } else {
        let r_zr = w.cols(&c.rt, hd, 0, 2 * hd);
        let r_n = w.cols(&c.rt, hd, 2 * hd, gh);
        let (rb_zr, rb_n) = match &c.rb {
            Some(rb) => (Some(w.cols(rb, 1, 0, 2 * hd)), Some(w.cols(rb, 1, 2 * hd, gh))),
            None => (None, None),
        };
        (r_zr, Some(r_n), rb_zr, rb_n)
    };
    let mut h = h0;
    let mut hs = Vec::with_capacity(c.seq);
    for t in 0..c.seq {
        let xt = step_of(w, c, &xw, t, gh);
        let hr = w.op("MatMul", &[&h, &r_zr]);
        let hr = match &rb_zr {
            Some(b) => w.op("Add", &[&hr, b]),
            None => hr,
        };
        let Some(r_n) = &r_n else {
            // PyTorch's form: the step's gates and state are one node.
            let hn = w.fresh("h");
            let name = w.fresh(GRU_CELL);
            w.nodes.push(node(GRU_CELL, &name, &[&xt, &hr, &h], &[&hn], vec![]));
            h = hn;
            hs.push(h.clone());
            continue;
        };
        let xz = w.cols(&xt, c.batch, 0, hd);
        let xr = w.cols(&xt, c.batch, hd, 2 * hd);
        let xn = w.cols(&xt, c.batch, 2 * hd, gh);
        let hz = w.cols(&hr, c.batch, 0, hd);
        let hrr = w.cols(&hr, c.batch, hd, 2 * hd);
        let sz = w.op("Add", &[&xz, &hz]);
        let z = w.op("Sigmoid", &[&sz]);
        let sr = w.op("Add", &[&xr, &hrr]);
        let r = w.op("Sigmoid", &[&sr]);
        let rh = w.op("Mul", &[&r, &h]);
        let m = w.op("MatMul", &[&rh, r_n]);
        let recur = match &rb_n {
            Some(b) => w.op("Add", &[&m, b]),
            None => m,
        };
        let sn = w.op("Add", &[&xn, &recur]);
        let cand = w.op("Tanh", &[&sn]);
        let diff = w.op("Sub", &[&h, &cand]);
        let kept = w.op("Mul", &[&z, &diff]);
        h = w.op("Add", &[&cand, &kept]);
        hs.push(h.clone());
    }
    Steps { hs, last_c: None }
}

/// `Y` (`[T, 1, B, H]`, or `[B, T, 1, H]` batch-first), `Y_h` and `Y_c` (`[1, B, H]`, or `[B, 1, H]`).
fn write_outputs(w: &mut Writer, n: &NodeProto, c: &Cell, s: &Steps) {
    let (b, hd) = (c.batch, c.hidden);
    if let Some(y) = output_name(n, 0) {
        let (piece, axis, full) =
            if c.batch_first { ([b, 1, hd], 1, [b, c.seq, 1, hd]) } else { ([1, b, hd], 0, [c.seq, 1, b, hd]) };
        let pieces: Vec<String> = s.hs.iter().map(|h| w.reshape(h, &piece)).collect();
        let refs: Vec<&str> = pieces.iter().map(|p| p.as_str()).collect();
        let all = w.fresh("Concat");
        w.op_into("Concat", &refs, &all, vec![attr_i("axis", axis)]);
        w.reshape_into(&all, &full, &y);
    }
    let last = if c.batch_first { [b, 1, hd] } else { [1, b, hd] };
    if let (Some(yh), Some(h)) = (output_name(n, 1), s.hs.last()) {
        w.reshape_into(h, &last, &yh);
    }
    if let (Some(yc), Some(cs)) = (output_name(n, 2), &s.last_c) {
        w.reshape_into(cs, &last, &yc);
    }
}

fn output_name(n: &NodeProto, i: usize) -> Option<String> {
    n.output.get(i).filter(|s| !s.is_empty()).cloned()
}
