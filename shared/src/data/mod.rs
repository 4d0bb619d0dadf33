//! On-device data sets: what a device trains and evaluates on.
//!
//! - [`dataset`]: [`Dataset`], an in-memory set of examples (features, labels, shape) with subsets, held-out
//!   splits and seeded shuffled batches.
//! - [`compact`]: [`CompactDataset`] (byte codes into a palette: a quarter of the memory for pixel data) and the
//!   [`Examples`] interface trainers read any data set through.
//! - [`idx`]: the IDX file format (MNIST's), gzip-compressed or not.
//! - [`mnist`]: finding and loading MNIST-style folders and the 8x8 digits set.
//! - [`csv`]: numeric CSV files with one label column.
//! - [`normalize`]: turning raw pixel bytes into the floats a model is trained on.
//! - [`partition`]: IID and Dirichlet (non-IID) partitions of a data set over agents, for simulations.
//! - [`error`]: [`DataError`], every one of which names the file and the problem.
//!
//! Nothing here opens the network; files are read only when a loader is called, and nothing here panics on the
//! content of a file.

pub mod compact;
pub mod csv;
pub mod dataset;
pub mod error;
pub mod idx;
pub mod mnist;
pub mod normalize;
pub mod partition;

pub use self::csv::{CsvOptions, LabelColumn, load_csv, parse_csv};
pub use compact::{CompactDataset, ExampleBatches, Examples};
pub use dataset::{Batches, Dataset};
pub use error::DataError;
pub use idx::{IdxArray, parse_idx, parse_idx_owned, read_idx};
pub use mnist::{
    Split, find_idx_file, load_digits_dir, load_idx_pair, load_idx_pair_compact, load_mnist_dir, load_mnist_dir_compact,
};
pub use normalize::Normalization;
pub use partition::{dirichlet_partition, iid_partition};
