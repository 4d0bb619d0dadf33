//! The data loaders on the real files shipped in the repository's data/ and on broken files made in a temporary folder.

use fedge_shared::data::idx::encode_idx;
use fedge_shared::data::{
    CsvOptions, DataError, Dataset, LabelColumn, Normalization, Split, load_csv, load_digits_dir, load_idx_pair,
    load_mnist_dir, read_idx,
};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The data sets shipped in the repository (`data/` at its top).
fn shared_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A tiny MNIST-style folder: `n` images of 2x2 pixels, labels i % 10.
fn tiny_mnist(dir: &Path, prefix: &str, n: usize, compress: bool) {
    let pixels: Vec<u8> = (0..n * 4).map(|i| (i * 37 % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let img = encode_idx(&[n, 2, 2], &pixels);
    let lab = encode_idx(&[n], &labels);
    if compress {
        write(dir, &format!("{prefix}-images-idx3-ubyte.gz"), &gz(&img));
        write(dir, &format!("{prefix}-labels-idx1-ubyte.gz"), &gz(&lab));
    } else {
        write(dir, &format!("{prefix}-images-idx3-ubyte"), &img);
        write(dir, &format!("{prefix}-labels-idx1-ubyte"), &lab);
    }
}

#[test]
fn the_real_mnist_test_split_loads_with_its_published_label_counts_and_normalisation() {
    let test = load_mnist_dir(&shared_data().join("mnist"), Split::Test).unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.example_shape, vec![28, 28]);
    assert_eq!(test.label_counts(), vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    let n = test.features.len() as f64;
    let mean = test.features.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = test.features.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    // Normalised with the training set's statistics, the test set is close to mean 0, std 1.
    assert!(mean.abs() < 0.05, "mean {mean}");
    assert!((var.sqrt() - 1.0).abs() < 0.05, "std {}", var.sqrt());
}

#[test]
fn the_real_digits_set_loads_on_the_zero_to_one_scale() {
    let d = load_digits_dir(&shared_data().join("digits")).unwrap();
    assert_eq!(d.len(), 1797);
    assert_eq!(d.example_shape, vec![8, 8]);
    assert_eq!(d.num_classes, 10);
    assert!(d.features.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert!(d.features.contains(&1.0));
}

#[test]
fn a_folder_loads_whether_its_files_are_compressed_or_not() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path(), "train", 12, true);
    tiny_mnist(dir.path(), "t10k", 5, false);
    let train = load_mnist_dir(dir.path(), Split::Train).unwrap();
    let test = load_mnist_dir(dir.path(), Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (12, 5));
    assert_eq!(train.labels[11], 1);
    let (x, _) = train.example(0).unwrap();
    assert_eq!(x[1], Normalization::MNIST.apply(37.0));
}

#[test]
fn a_missing_file_names_the_folder_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path(), "train", 3, false);
    let e = load_mnist_dir(dir.path(), Split::Test).unwrap_err();
    assert!(matches!(e, DataError::MissingFile { .. }));
    assert!(e.to_string().contains("t10k-images-idx3-ubyte"), "{e}");
}

#[test]
fn image_and_label_counts_that_differ_are_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let img = write(dir.path(), "i", &encode_idx(&[3, 2, 2], &[0; 12]));
    let lab = write(dir.path(), "l", &encode_idx(&[4], &[0; 4]));
    let e = load_idx_pair(&img, &lab, Normalization::UNIT, 10).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DataError::CountMismatch { images: 3, label_count: 4, .. }), "{msg}");
    assert!(msg.contains(&img.display().to_string()) && msg.contains(&lab.display().to_string()), "{msg}");
}

#[test]
fn a_file_with_a_bad_magic_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "notidx.bin", b"\x89PNG\r\n\x1a\n....");
    let msg = read_idx(&p).unwrap_err().to_string();
    assert!(msg.contains("notidx.bin") && msg.contains("magic"), "{msg}");
}

#[test]
fn a_truncated_file_is_refused_saying_how_much_data_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let full = encode_idx(&[2, 28, 28], &[7; 2 * 784]);
    let p = write(dir.path(), "short-images", &full[..full.len() - 100]);
    let msg = read_idx(&p).unwrap_err().to_string();
    assert!(msg.contains("short-images") && msg.contains("truncated"), "{msg}");
}

#[test]
fn a_truncated_gzip_stream_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let z = gz(&encode_idx(&[50, 28, 28], &(0..50 * 784).map(|i| (i % 251) as u8).collect::<Vec<_>>()));
    let p = write(dir.path(), "cut.gz", &z[..z.len() / 2]);
    let msg = read_idx(&p).unwrap_err().to_string();
    assert!(msg.contains("cut.gz"), "{msg}");
}

#[test]
fn a_labels_file_with_a_label_outside_the_classes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = write(dir.path(), "i", &encode_idx(&[2, 1, 1], &[0, 0]));
    let lab = write(dir.path(), "l", &encode_idx(&[2], &[3, 12]));
    let msg = load_idx_pair(&img, &lab, Normalization::UNIT, 10).unwrap_err().to_string();
    assert!(msg.contains("label 12"), "{msg}");
}

#[test]
fn a_labels_file_with_two_dimensions_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = write(dir.path(), "i", &encode_idx(&[2, 1, 1], &[0, 0]));
    let lab = write(dir.path(), "l", &encode_idx(&[2, 1], &[0, 1]));
    assert!(load_idx_pair(&img, &lab, Normalization::UNIT, 10).is_err());
}

#[test]
fn a_csv_file_loads_with_the_label_in_any_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "d.csv", b"label,a,b\n1, 0.5, 2\n\n0,1e-1,-3\n");
    let opts = CsvOptions { has_header: true, ..Default::default() };
    let d = load_csv(&p, &opts).unwrap();
    assert_eq!(d, Dataset::new(vec![0.5, 2.0, 0.1, -3.0], vec![1, 0], vec![2], 2).unwrap());
    let p = write(dir.path(), "e.csv", b"0.5,2,1\n0.1,-3,0\n");
    let d = load_csv(&p, &CsvOptions { label_column: LabelColumn::Last, ..Default::default() }).unwrap();
    assert_eq!(d.labels, vec![1, 0]);
    assert_eq!(d.features, vec![0.5, 2.0, 0.1, -3.0]);
}

#[test]
fn a_csv_row_with_a_missing_field_or_a_word_is_refused_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "ragged.csv", b"1,2,3\n0,4\n");
    let msg = load_csv(&p, &CsvOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("ragged.csv") && msg.contains("line 2"), "{msg}");
    let p = write(dir.path(), "word.csv", b"1,2,3\n0,4,five\n");
    let msg = load_csv(&p, &CsvOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("word.csv") && msg.contains("line 2") && msg.contains("five"), "{msg}");
    let p = write(dir.path(), "neg.csv", b"-1,2,3\n");
    let msg = load_csv(&p, &CsvOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("neg.csv") && msg.contains("line 1"), "{msg}");
}

#[test]
fn an_empty_csv_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "empty.csv", b"\n\n");
    assert!(load_csv(&p, &CsvOptions::default()).unwrap_err().to_string().contains("empty.csv"));
}
