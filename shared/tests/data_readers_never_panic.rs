//! The CSV, NPY and NPZ readers on hostile bytes: random input and committed samples with bytes flipped, cut short
//! or spliced. Whatever comes in, a reader returns an error or a data set that is whole (every example complete,
//! every value finite, every class below the class count). The same properties as the fuzz targets
//! (`fuzz/fuzz_targets/csv_reader.rs`, `npy_reader.rs`), run on every `cargo test`.

use std::path::{Path, PathBuf};

use fedge_shared::data::npz::{Values, parse_npy, parse_npz};
use fedge_shared::data::{CsvOptions, Dataset, TargetKind, parse_csv};
use proptest::prelude::*;

fn fixture(rel: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A version 1.0 `.npy` file of little-endian float32 values of `shape`.
fn npy_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn whole(d: &Dataset, classes: Option<usize>) {
    d.check().expect("a data set a reader returns passes its own check");
    assert_eq!(d.features.len(), d.len() * d.example_len());
    assert!(d.features.iter().all(|v| v.is_finite()), "no NaN or infinity reaches training");
    if let Some(n) = classes {
        assert!(d.labels.iter().all(|&l| (l as usize) < n));
    }
}

fn csv_any(bytes: &[u8], base: &CsvOptions) {
    for target in
        [TargetKind::Classes { num_classes: None }, TargetKind::Classes { num_classes: Some(4) }, TargetKind::Values]
    {
        let opts = CsvOptions { target, ..base.clone() };
        if let Ok(d) = parse_csv(bytes, Path::new("hostile.csv"), &opts) {
            whole(&d, if let TargetKind::Classes { num_classes } = target { num_classes } else { None });
        }
    }
}

fn npy_any(bytes: &[u8]) {
    if let Ok(a) = parse_npy(bytes, Path::new("hostile.npy"), "x") {
        let n: usize = a.shape.iter().product();
        match a.values {
            Values::F32(v) => assert_eq!(v.len(), n),
            Values::I64(v) => assert_eq!(v.len(), n),
        }
    }
    for target in [TargetKind::Classes { num_classes: Some(10) }, TargetKind::Values] {
        if let Ok(d) = parse_npz(bytes, Path::new("hostile.npz"), target) {
            whole(&d, None);
        }
    }
}

/// The `csv` sample's features (it also has a text column, `note`).
fn sample_columns() -> CsvOptions {
    let columns = ["x0", "x1", "x2", "x3"].map(String::from).to_vec();
    CsvOptions { feature_columns: Some(columns), ..CsvOptions::default() }
}

/// `base` with up to a few bytes overwritten, then cut at `cut` (as a fraction of its length).
fn mutated(base: &[u8], edits: &[(usize, u8)], cut: f64) -> Vec<u8> {
    let mut b = base.to_vec();
    for &(at, v) in edits {
        if !b.is_empty() {
            let i = at % b.len();
            b[i] = v;
        }
    }
    let keep = ((b.len() as f64) * cut).round() as usize;
    b.truncate(keep.min(b.len()));
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_a_reader(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        csv_any(&bytes, &CsvOptions::default());
        npy_any(&bytes);
    }

    #[test]
    fn a_csv_sample_with_bytes_changed_or_cut_reads_whole_or_not_at_all(
        edits in proptest::collection::vec((any::<usize>(), prop_oneof![Just(b','), Just(b'\n'), Just(b'"'), Just(b'-'), Just(b'e'), any::<u8>()]), 0..6),
        cut in 0.0f64..=1.0,
    ) {
        csv_any(&mutated(&fixture("csv/train.csv"), &edits, cut), &sample_columns());
        let regression = CsvOptions { label_column: Some("target".into()), ..CsvOptions::default() };
        csv_any(&mutated(&fixture("csv-regression/train.csv"), &edits, cut), &regression);
    }

    #[test]
    fn an_npy_or_npz_with_bytes_changed_or_cut_reads_whole_or_not_at_all(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in 0.0f64..=1.0,
    ) {
        let npy = npy_f32(&[3, 2, 2], &[0.5; 12]);
        npy_any(&mutated(&npy, &edits, cut));
        npy_any(&mutated(&fixture("npz/test.npz"), &edits, cut));
        npy_any(&mutated(&fixture("npz-tokens/test.npz"), &edits, cut));
    }
}

#[test]
fn the_unmutated_samples_read_whole() {
    let opts = CsvOptions { target: TargetKind::Values, label_column: Some("target".into()), ..Default::default() };
    whole(&parse_csv(&fixture("csv-regression/train.csv"), Path::new("train.csv"), &opts).unwrap(), None);
    let opts = CsvOptions { target: TargetKind::Classes { num_classes: Some(3) }, ..sample_columns() };
    whole(&parse_csv(&fixture("csv/train.csv"), Path::new("train.csv"), &opts).unwrap(), Some(3));
    let a = parse_npy(&npy_f32(&[3, 2, 2], &[0.5; 12]), Path::new("x.npy"), "x").unwrap();
    assert_eq!(a.shape, vec![3, 2, 2]);
    let d = parse_npz(&fixture("npz/test.npz"), Path::new("test.npz"), TargetKind::Classes { num_classes: Some(3) });
    whole(&d.unwrap(), Some(3));
}
