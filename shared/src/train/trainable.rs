//! A parsed forward ONNX model and the choice of its trainable weights: which tensor is the data input, which
//! the output, and the flat weight vector layout ([`ParamInfo`]) every other part of fedge relies on.
//!
//! It validates the whole model up front (operators, shapes) so later steps fail only on bad buffers. It never
//! runs the model.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use prost::Message;
use tract_onnx::pb::{GraphProto, ModelProto, tensor_proto::DataType};

use super::error::TrainError;
use super::graph::{Const, Graph, Sources};
use super::proto::{Data, decode_tensor, f32_tensor, is_float, value_info_shape};

/// One trainable weight tensor and where it lives in the flat weight vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

#[derive(Clone)]
struct Inner {
    /// The model with the values of its `float` initializers left out (they are in `initializers`, decoded once):
    /// a device keeps one copy of the weights, not three (file bytes, protobuf, decoded).
    proto: ModelProto,
    opset: i64,
    input_name: String,
    input_shape: Vec<usize>,
    output_name: String,
    output_len: usize,
    /// One example's output shape (the batch axis left out).
    output_shape: Vec<usize>,
    initializers: HashMap<String, Const>,
    /// Float initializers in graph order that may be trained (not BatchNormalization running statistics).
    candidates: Vec<String>,
    /// Trainable weights whose values were handed out by [`TrainableModel::take_initial_weights`] (their
    /// initializers keep the shape, not the values).
    taken: HashSet<String>,
}

/// A parsed forward model with its trainable weights; cheap to clone.
#[derive(Clone)]
pub struct TrainableModel {
    inner: Arc<Inner>,
    params: Arc<Vec<ParamInfo>>,
}

impl std::fmt::Debug for TrainableModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainableModel")
            .field("input", &self.inner.input_name)
            .field("input_shape", &self.inner.input_shape)
            .field("output", &self.inner.output_name)
            .field("output_len", &self.inner.output_len)
            .field("num_params", &self.num_params())
            .finish()
    }
}

fn graph_of(proto: &ModelProto) -> Result<&GraphProto, TrainError> {
    proto.graph.as_ref().ok_or_else(|| TrainError::invalid("the model has no graph"))
}

impl TrainableModel {
    /// Parses a forward model. The data input is the first graph input that is not an initializer, the output the
    /// first graph output; every float initializer is trainable except BatchNormalization running statistics
    /// (which stay frozen) and dropout ratios. Unsupported operators are refused, naming the operator and the node.
    pub fn from_onnx_bytes(bytes: &[u8]) -> Result<Self, TrainError> {
        let proto = ModelProto::decode(bytes).map_err(|e| TrainError::invalid(format!("not an ONNX model: {e}")))?;
        let graph = graph_of(&proto)?;
        let opset = proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .unwrap_or(13);
        let mut initializers = HashMap::new();
        let mut float_inits = vec![];
        for t in &graph.initializer {
            let c = decode_tensor(t)?;
            if is_float(t) {
                float_inits.push(t.name.clone());
            }
            initializers.insert(t.name.clone(), c);
        }
        let input = graph
            .input
            .iter()
            .find(|i| !initializers.contains_key(&i.name))
            .ok_or_else(|| TrainError::invalid("the model has no data input"))?;
        let (elem, dims) =
            value_info_shape(input).ok_or_else(|| TrainError::invalid(format!("input {} has no shape", input.name)))?;
        // Integer inputs are token ids: fed as floats (exact up to 2^24) and cast back where the graph reads them.
        let accepted = [DataType::Float as i32, DataType::Int64 as i32, DataType::Int32 as i32];
        if !accepted.contains(&elem) {
            return Err(TrainError::invalid(format!("input {} is neither float nor integer ids", input.name)));
        }
        if dims.len() < 2 {
            return Err(TrainError::invalid(format!(
                "input {} needs a batch dimension and data dimensions",
                input.name
            )));
        }
        let input_shape = dims[1..]
            .iter()
            .map(|d| {
                d.ok_or_else(|| TrainError::invalid(format!("input {} has a symbolic data dimension", input.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output_name = graph
            .output
            .first()
            .map(|o| o.name.clone())
            .ok_or_else(|| TrainError::invalid("the model has no output"))?;
        // Inputs that are not weights: running statistics of batch normalisation, dropout ratios, exponents and
        // clipping bounds.
        let frozen: HashSet<&str> = graph
            .node
            .iter()
            .flat_map(|n| {
                let (skip, take) = match n.op_type.as_str() {
                    "BatchNormalization" => (3, 2),
                    "Dropout" => (1, 2),
                    "Pow" => (1, 1),
                    "Clip" => (1, 2),
                    _ => (0, 0),
                };
                n.input.iter().skip(skip).take(take)
            })
            .map(|s| s.as_str())
            .collect();
        let candidates: Vec<String> = float_inits.into_iter().filter(|n| !frozen.contains(n.as_str())).collect();
        let input_name = input.name.clone();
        let mut skeleton = proto;
        if let Some(g) = skeleton.graph.as_mut() {
            for t in g.initializer.iter_mut().filter(|t| t.data_type == DataType::Float as i32) {
                t.raw_data = Vec::new();
                t.float_data = Vec::new();
            }
        }
        let mut inner = Inner {
            proto: skeleton,
            opset,
            input_name,
            input_shape,
            output_name,
            output_len: 0,
            output_shape: vec![],
            initializers,
            candidates: candidates.clone(),
            taken: HashSet::new(),
        };
        let params = layout(&inner, &candidates)?;
        // Resolve at two batch sizes: validates every operator and shape, and that the output scales with the batch.
        let mut lens = vec![];
        let mut shape = vec![];
        for n in [1usize, 2] {
            let g = resolve_with(&inner, &params, n, None)?;
            let out = g.shapes.get(&g.output).cloned().unwrap_or_default();
            let total: usize = out.iter().product();
            if out.first() != Some(&n) || !total.is_multiple_of(n) {
                return Err(TrainError::shape(format!("the output {out:?} does not follow the batch size {n}")));
            }
            lens.push(total / n);
            shape = out[1..].to_vec();
        }
        if lens[0] != lens[1] || lens[0] == 0 {
            return Err(TrainError::shape("the output size depends on the batch size"));
        }
        inner.output_len = lens[0];
        inner.output_shape = shape;
        Ok(TrainableModel { inner: Arc::new(inner), params: Arc::new(params) })
    }

    /// Restricts training to the named weights (kept in graph order); the others become constants.
    pub fn with_trainable(self, names: &[String]) -> Result<Self, TrainError> {
        let wanted: HashSet<&str> = names.iter().map(|s| s.as_str()).collect();
        for n in &wanted {
            if !self.inner.candidates.iter().any(|c| c == n) {
                return Err(TrainError::invalid(format!("{n} is not a trainable float initializer of the model")));
            }
        }
        if let Some(n) = self.inner.taken.iter().find(|n| !wanted.contains(n.as_str())) {
            return Err(TrainError::invalid(format!(
                "{n} cannot become a constant: its values were taken out of the model (take_initial_weights)"
            )));
        }
        let chosen: Vec<String> =
            self.inner.candidates.iter().filter(|c| wanted.contains(c.as_str())).cloned().collect();
        let params = layout(&self.inner, &chosen)?;
        resolve_with(&self.inner, &params, 1, None)?;
        Ok(TrainableModel { inner: self.inner, params: Arc::new(params) })
    }

    /// Fine-tuning part of a model: trains only the float initializers whose names match one of the glob
    /// `patterns` (`head.*`, `*.bias`, `fc?.weight`); every other weight stays fixed at the model's value. Each
    /// pattern must match at least one weight: a pattern that matches nothing is an error listing the names.
    pub fn train_only(self, patterns: &[String]) -> Result<Self, TrainError> {
        let chosen = super::part::matching_names(self.inner.candidates.iter().map(|s| s.as_str()), patterns)
            .map_err(|e| TrainError::invalid(e.to_string()))?;
        if chosen.is_empty() {
            return Err(TrainError::invalid("no trainable pattern was given: nothing to train"));
        }
        self.with_trainable(&chosen.into_iter().collect::<Vec<_>>())
    }

    /// A federation's fine-tuning round: this model (its whole layout trainable) with `weights` (flat,
    /// [`Self::params`] order: the global model) as the values of EVERY weight, restricted to the weights matching
    /// `patterns`. The returned model's frozen weights are the global model's, not the file's; its own
    /// [`Self::initial_weights`] are `part.gather(weights)`; and the part says where its vector lies in `weights`.
    pub fn fine_tune(
        &self,
        weights: &[f32],
        patterns: &[String],
    ) -> Result<(TrainableModel, super::part::TrainablePart), TrainError> {
        self.check_weights(weights)?;
        let part = super::part::TrainablePart::select(&self.params, patterns)
            .map_err(|e| TrainError::invalid(e.to_string()))?;
        let mut inner = (*self.inner).clone();
        for p in self.params.iter() {
            let values = weights
                .get(p.offset..p.offset + p.len)
                .ok_or_else(|| TrainError::shape(format!("weights too short for {}", p.name)))?;
            inner.initializers.insert(p.name.clone(), (p.shape.clone(), Data::F(values.to_vec())));
        }
        inner.taken.clear();
        let full = TrainableModel { inner: Arc::new(inner), params: self.params.clone() };
        let tuned = full.with_trainable(part.names())?;
        if tuned.num_params() != part.len() {
            return Err(TrainError::shape(format!(
                "the trained part has {} parameters, the restricted model {}",
                part.len(),
                tuned.num_params()
            )));
        }
        Ok((tuned, part))
    }

    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.len).sum()
    }

    /// The model's own values of the trainable weights, flat, in [`Self::params`] order (zeros for values handed
    /// out by [`Self::take_initial_weights`]).
    pub fn initial_weights(&self) -> Vec<f32> {
        let mut w = Vec::with_capacity(self.num_params());
        for p in self.params.iter() {
            match self.inner.initializers.get(&p.name) {
                Some((_, d)) if d.len() == p.len => w.extend(d.as_f32()),
                _ => w.extend(std::iter::repeat_n(0.0, p.len)),
            }
        }
        w
    }

    /// Hands the model's own values of the trainable weights out (flat, as [`Self::initial_weights`] gives them)
    /// and keeps only their shapes, so a device that trains holds them once, in its weight vector, instead of also
    /// in the parsed model for the whole run. Training, evaluating and exporting with given weights work as before;
    /// afterwards [`Self::initial_weights`] gives zeros for them, and [`Self::with_trainable`] refuses to freeze
    /// them (a frozen weight needs its values). Other clones of this model keep the values (they share them until
    /// this call, which then copies the rest of the model).
    pub fn take_initial_weights(self) -> (TrainableModel, Vec<f32>) {
        let weights = self.initial_weights();
        let params = self.params;
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| (*shared).clone());
        for p in params.iter() {
            if let Some((_, d)) = inner.initializers.get_mut(&p.name) {
                *d = Data::F(Vec::new());
            }
            inner.taken.insert(p.name.clone());
        }
        (TrainableModel { inner: Arc::new(inner), params }, weights)
    }

    /// The shape of one example, without the batch dimension.
    pub fn input_shape(&self) -> &[usize] {
        &self.inner.input_shape
    }

    pub fn input_len(&self) -> usize {
        self.inner.input_shape.iter().product()
    }

    /// Number of outputs per example (e.g. 10 classes).
    /// One example's output shape, without the batch axis (`[V]` for classes, `[T, V]` for a sequence model).
    pub fn output_shape(&self) -> &[usize] {
        &self.inner.output_shape
    }

    pub fn output_len(&self) -> usize {
        self.inner.output_len
    }

    /// The model as an ONNX file, with its own weights.
    pub fn onnx_bytes(&self) -> Result<Vec<u8>, TrainError> {
        self.export_with_weights(&self.initial_weights())
    }

    /// The original model with `weights` (flat, [`Self::params`] order) as its initializers.
    pub fn export_with_weights(&self, weights: &[f32]) -> Result<Vec<u8>, TrainError> {
        self.check_weights(weights)?;
        let mut proto = self.inner.proto.clone();
        let graph = proto.graph.as_mut().ok_or_else(|| TrainError::invalid("the model has no graph"))?;
        let by_name: HashMap<&str, &ParamInfo> = self.params.iter().map(|p| (p.name.as_str(), p)).collect();
        for t in graph.initializer.iter_mut() {
            if let Some(p) = by_name.get(t.name.as_str()) {
                *t = f32_tensor(&p.name, &p.shape, &weights[p.offset..p.offset + p.len]);
            } else if t.data_type == DataType::Float as i32 {
                // A frozen float initializer: its values were kept decoded.
                let (shape, data) = self
                    .inner
                    .initializers
                    .get(&t.name)
                    .ok_or_else(|| TrainError::invalid(format!("no initializer named {}", t.name)))?;
                *t = f32_tensor(&t.name, shape, &data.as_f32());
            }
        }
        Ok(proto.encode_to_vec())
    }

    pub(crate) fn check_weights(&self, weights: &[f32]) -> Result<(), TrainError> {
        if weights.len() != self.num_params() {
            return Err(TrainError::shape(format!("{} weights for a model of {}", weights.len(), self.num_params())));
        }
        Ok(())
    }

    pub(crate) fn input_name(&self) -> &str {
        &self.inner.input_name
    }

    /// The graph for batch `n` with the trainable weights as dynamic inputs (`weights` = `None`), or with every
    /// weight baked in as a constant.
    pub(crate) fn resolve(&self, n: usize, weights: Option<&[f32]>) -> Result<Graph, TrainError> {
        resolve_with(&self.inner, &self.params, n, weights)
    }

    pub(crate) fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.params.iter().map(|p| (p.name.clone(), p.shape.clone())).collect()
    }
}

fn layout(inner: &Inner, names: &[String]) -> Result<Vec<ParamInfo>, TrainError> {
    let mut offset = 0;
    let mut params = Vec::with_capacity(names.len());
    for n in names {
        let (shape, _) =
            inner.initializers.get(n).ok_or_else(|| TrainError::invalid(format!("no initializer named {n}")))?;
        let len = shape.iter().product();
        params.push(ParamInfo { name: n.clone(), shape: shape.clone(), offset, len });
        offset += len;
    }
    Ok(params)
}

fn resolve_with(inner: &Inner, params: &[ParamInfo], n: usize, weights: Option<&[f32]>) -> Result<Graph, TrainError> {
    let graph = graph_of(&inner.proto)?;
    let mut data_shape = vec![n];
    data_shape.extend(&inner.input_shape);
    match weights {
        None => {
            let dynamic: Vec<(String, Vec<usize>)> = params.iter().map(|p| (p.name.clone(), p.shape.clone())).collect();
            let src = Sources {
                data_name: &inner.input_name,
                data_shape,
                params: &dynamic,
                initializers: &inner.initializers,
                opset: inner.opset,
            };
            Graph::resolve(graph, &src, &inner.output_name)
        }
        Some(w) => {
            let trained: HashSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
            let mut inits: HashMap<String, Const> = inner
                .initializers
                .iter()
                .filter(|(n, _)| !trained.contains(n.as_str()))
                .map(|(n, c)| (n.clone(), c.clone()))
                .collect();
            for p in params {
                let slice = w
                    .get(p.offset..p.offset + p.len)
                    .ok_or_else(|| TrainError::shape(format!("weights too short for {}", p.name)))?;
                inits.insert(p.name.clone(), (p.shape.clone(), Data::F(slice.to_vec())));
            }
            let src = Sources {
                data_name: &inner.input_name,
                data_shape,
                params: &[],
                initializers: &inits,
                opset: inner.opset,
            };
            Graph::resolve(graph, &src, &inner.output_name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fine_tuning_starts_from_the_global_weights_for_the_trained_and_the_frozen_part() {
        let full = TrainableModel::from_onnx_bytes(&super::super::builder::mlp(&[5, 4, 3], 1)).unwrap();
        let file = full.initial_weights();
        let global: Vec<f32> = file.iter().enumerate().map(|(i, w)| w * 0.5 + i as f32 * 1e-3 + 0.25).collect();
        let (tuned, part) = full.fine_tune(&global, &pats(&["fc2.*"])).unwrap();
        assert_eq!(part.names(), ["fc2.weight", "fc2.bias"]);
        assert_eq!((tuned.num_params(), part.len(), part.full_len()), (15, 15, full.num_params()));
        let names: Vec<&str> = tuned.params().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["fc2.weight", "fc2.bias"]);
        // The trained part starts from the global values...
        assert_eq!(tuned.initial_weights(), part.gather(&global).unwrap());
        // ...and so does the frozen part: the whole model is the global one, byte for byte, not the file's.
        let exported = tuned.export_with_weights(&tuned.initial_weights()).unwrap();
        assert_eq!(exported, full.export_with_weights(&global).unwrap());
        assert_ne!(exported, full.export_with_weights(&file).unwrap());
    }

    #[test]
    fn taking_the_initial_weights_leaves_a_model_that_trains_and_exports_with_given_weights() {
        let full = TrainableModel::from_onnx_bytes(&super::super::builder::mlp(&[5, 4, 3], 1)).unwrap();
        let file = full.initial_weights();
        let exported = full.export_with_weights(&file).unwrap();
        let (taken, w) = full.clone().take_initial_weights();
        assert_eq!(w, file);
        assert_eq!(taken.params(), full.params());
        // The values are gone from the model, the shapes and the graph are not.
        assert!(taken.initial_weights().iter().all(|x| *x == 0.0));
        assert_eq!(taken.export_with_weights(&w).unwrap(), exported);
        assert_eq!(taken.resolve(3, None).unwrap().shapes, full.resolve(3, None).unwrap().shapes);
        // A taken weight cannot become a constant; training all of them again, or a fine-tuning round, can.
        let e = taken.clone().train_only(&pats(&["fc2.*"])).unwrap_err().to_string();
        assert!(e.contains("fc1.") && e.contains("take_initial_weights"), "{e}");
        let all: Vec<String> = full.params().iter().map(|p| p.name.clone()).collect();
        assert_eq!(taken.clone().with_trainable(&all).unwrap().num_params(), full.num_params());
        let (tuned, part) = taken.fine_tune(&w, &pats(&["fc2.*"])).unwrap();
        assert_eq!(tuned.initial_weights(), part.gather(&w).unwrap());
    }

    #[test]
    fn fine_tuning_refuses_a_pattern_that_names_no_weight_and_weights_of_another_model() {
        let full = TrainableModel::from_onnx_bytes(&super::super::builder::mlp(&[5, 4, 3], 1)).unwrap();
        let w = full.initial_weights();
        let e = full.fine_tune(&w, &pats(&["fc2.*", "head.*"])).unwrap_err().to_string();
        assert!(e.contains("\"head.*\" matches no weight") && e.contains("fc1.weight"), "{e}");
        let e = full.fine_tune(&w[1..], &pats(&["fc2.*"])).unwrap_err().to_string();
        assert!(e.contains(&format!("{} weights for a model of {}", w.len() - 1, w.len())), "{e}");
    }
}
