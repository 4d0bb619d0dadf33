//! Training on the device with tract.
//!
//! tract is an inference engine; fedge trains with it by running a *training-step graph*: an ONNX graph built
//! from the forward model by reverse-mode differentiation, whose inputs are the trainable weights, a batch and its
//! labels, and whose outputs are the mean loss and every weight's gradient. The optimizer step is plain Rust over
//! the flat weight vector.
//!
//! Nothing here touches the network; files are read only by the loaders the caller invokes.

// Local training loop, optimizers and the example-model builder.
pub mod builder;
pub mod local;
pub mod optimizer;

// The training engine: ONNX reverse-mode differentiation and the tract runner.
mod autodiff;
mod custom_op;
mod emit;
mod error;
mod forward;
mod grad;
mod graph;
mod loss;
mod plan;
mod predictor;
mod proto;
mod shapes;
mod step;
mod trainable;

pub use emit::Precision;
pub use error::TrainError;
pub use loss::{Labels, Loss};
pub use predictor::Predictor;
pub use step::TrainStep;
pub use trainable::{ParamInfo, TrainableModel};
