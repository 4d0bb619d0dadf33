//! On-device data: every source a device trains and evaluates on, behind one interface.
//!
//! - [`examples`]: [`Examples`], the interface a trainer reads any source through (inputs shaped by the model,
//!   class or regression targets, read example by example so a source may be lazy), [`Batch`], [`Subset`] and
//!   seeded [`ExampleBatches`]. A new source (the agent's own store of labelled examples, say) implements it.
//! - [`source`]: the `[data]` settings ([`SourceSpec`]), format detection, and opening a folder's train/test parts.
//! - [`dataset`]: [`Dataset`], an in-memory set (classification or regression) with subsets and held-out splits.
//! - [`compact`]: [`CompactDataset`] (byte codes into a palette: a quarter of the memory for pixel data).
//! - one file per format: [`csv`] (CSV with a header), [`npz`] (NumPy `.npz`/`.npy`), [`images`] (image folders,
//!   decoded lazily), [`idx`] and [`mnist`] (IDX files, MNIST-style folders and the 8x8 digits), [`text`] (plain
//!   text as next-character windows).
//! - [`normalize`]: turning raw pixel bytes into the floats a model is trained on.
//! - [`partition`]: IID and Dirichlet (non-IID) partitions of a data set over agents, for simulations.
//! - [`error`]: [`DataError`], every one of which names the file and the problem.
//!
//! Nothing here opens the network; files are read only when a loader is called (or, for image folders, when a
//! batch is read), and nothing here panics on the content of a file.

pub mod compact;
pub mod csv;
pub mod dataset;
pub mod error;
pub mod examples;
pub mod idx;
pub mod images;
pub mod mnist;
pub mod normalize;
pub mod npz;
pub mod partition;
pub mod source;
pub mod text;

pub use self::csv::{CsvOptions, load_csv, parse_csv, read_csv};
pub use compact::CompactDataset;
pub use dataset::{Batches, Dataset};
pub use error::DataError;
pub use examples::{Batch, ExampleBatches, Examples, SharedExamples, Subset, TargetKind, Task};
pub use idx::{IdxArray, parse_idx, parse_idx_owned, read_idx};
pub use images::{ChannelNorm, ImageFolder};
pub use mnist::{
    Split, find_idx_file, load_digits_dir, load_idx_pair, load_idx_pair_compact, load_mnist_dir, load_mnist_dir_compact,
};
pub use normalize::Normalization;
pub use npz::{load_npz, parse_npy, parse_npz};
pub use partition::{dirichlet_partition, iid_partition};
pub use source::{Format, Part, SourceSpec, detect_format, format_of, open_part, target_kind};
pub use text::TextWindows;
