//! Training on the device with tract.
//!
//! tract is an inference engine; fedge trains with it by running a *training-step graph*: an ONNX graph built
//! from the forward model by reverse-mode differentiation, whose inputs are the trainable weights, a batch and its
//! labels, and whose outputs are the mean loss and every weight's gradient. The optimizer step is plain Rust over
//! the weights, kept across steps as the tensors the step reads (`WeightTensors`).
//!
//! Nothing here touches the network; files are read only by the loaders the caller invokes.

// Local training loop, optimizers, learning-rate schedules and the example-model builder.
pub mod builder;
pub mod local;
pub mod optimizer;
pub mod part;
pub mod schedule;

// The training engine: ONNX reverse-mode differentiation and the tract runner.
//
// - `TrainableModel` parses a forward ONNX model; the data input is the first graph input that is not an
//   initializer, the output (treated as logits) the first graph output; the weights are the float initializers
//   (BatchNormalization running statistics and dropout ratios excluded), flat in graph order.
// - For each batch size, `graph` resolves the model into static shapes (shape chains folded), `forward` and `grad`
//   emit the forward and reverse-mode nodes (opset 13), `loss` the loss, and `plan` has tract optimise it once.
// - Backward formulations: Gemm/MatMul gradients are Gemm/MatMul, and in the training step a Gemm or 2-D MatMul
//   (forward, dX and dW) is fedge's own `FedgeGemm` (`dense_ops`, on matrixmultiply's GEMM in `dense_gemm`, the
//   transposed operand read in place; the standard form for other runtimes); broadcasting is undone with ReduceSum, over leading axes
//   with a product by a row of ones (tract 0.22's ReduceSum there leaves a stride its f32 Adds misread); a 1-D or
//   2-D Conv runs as fedge's own ops in the training step: `FedgeConv`, and `FedgeConvInputGrad` /
//   `FedgeConvWeightGrad` for its dX and dW (`conv_ops`, on a packed GEMM in `conv_gemm`;
//   inference plans run `FedgeConv` too, and `FedgeMaxPool` (`pool_ops`) for max pools without indices; their
//   dense layers stay tract's); other Convs' dX a ConvTranspose and dW a convolution with the batch as channel
//   axis (also the form `TrainStep::into_standard_ops` emits for other runtimes); pooling uses
//   ConvTranspose/Expand, and MaxPool fedge's own `FedgeMaxPoolGrad` op over tract's argmax indices (see
//   `custom_op`). BatchNormalization trains scale and bias with frozen running statistics. Dropout multiplies by
//   a mask drawn from the caller's seed. The softmax cross-entropy and its gradient are one
//   `FedgeSoftmaxCrossEntropy` node (`loss_op`) in the training step, their standard-op formula for other runtimes.
// - An LSTM is unrolled over time (`lowering`), each step's gates and states one internal node that `cell_emit`
//   writes as fedge's fused `FedgeLstmCell` and `FedgeLstmCellGrad` (`lstm_op`: the activated gates kept in one
//   `[B, 4H]` buffer, the pre-activations' own, from the forward to the backward pass), or as the primitive nodes
//   of its definition for other runtimes; a GRU in PyTorch's form likewise (`FedgeGruCell`, `gru_op`).
// - `Precision::F64` builds the same graph in f64 (for finite-difference verification).
mod autodiff;
mod cell_emit;
mod cell_math;
mod cell_op;
mod conv_gemm;
mod conv_ops;
mod conv_simd;
mod custom_op;
mod dense_gemm;
mod dense_ops;
mod emit;
mod error;
mod forward;
mod gemm;
mod grad;
mod graph;
mod gru_op;
mod loss;
mod loss_op;
mod lowering;
mod lstm_op;
mod plan;
mod pool_ops;
mod predictor;
mod proto;
mod shapes;
mod slice_guard;
mod stateless_op;
mod step;
mod trainable;
mod weight_tensors;

/// The convolution kernel's check against the portable path on this CPU (`fedge-agent self-test`).
pub use conv_simd::self_test as convolution_self_test;
pub use emit::Precision;
pub use error::TrainError;
pub use loss::{Labels, Loss};
pub use part::{PartError, TrainablePart};
pub use predictor::Predictor;
pub use step::{Gradients, TrainStep};
pub use trainable::{ParamInfo, TrainableModel};
pub use weight_tensors::WeightTensors;
