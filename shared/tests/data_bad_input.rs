//! Bad data gets a clear error naming the file, the line or entry, and what was expected; nothing panics.
//! Files are made in a temporary folder.

use std::io::Write;
use std::path::Path;

use fedge_shared::data::npz::{parse_npy, parse_npz};
use fedge_shared::data::{Batch, Examples, Part, SourceSpec, TargetKind, open_part};
use npyz::WriterBuilder;

fn npy<T: npyz::AutoSerialize + Copy>(shape: &[u64], values: &[T]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(shape).writer(&mut buf).begin_nd().unwrap();
    w.extend(values.iter().copied()).unwrap();
    w.finish().unwrap();
    buf
}

fn npz(arrays: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in arrays {
        zip.start_file(format!("{name}.npy"), zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn classes(n: usize) -> TargetKind {
    TargetKind::Classes { num_classes: Some(n) }
}

fn npz_error(arrays: &[(&str, Vec<u8>)], target: TargetKind) -> String {
    parse_npz(&npz(arrays), Path::new("bad.npz"), target).unwrap_err().to_string()
}

fn assert_names(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "{e:?} should name {p:?}");
    }
}

#[test]
fn an_npz_with_the_wrong_dtype_names_the_array_and_the_dtypes_expected() {
    let e = npz_error(&[("x", npy(&[2, 2], &[0.5f64; 4])), ("y", npy(&[2], &[0i64, 1]))], classes(2));
    assert_names(&e, &["bad.npz", "\"x\"", "<f8", "float32", "int64"]);
    let e = npz_error(&[("x", npy(&[2, 2], &[0.5f32; 4])), ("y", npy(&[2], &[0i32, 1]))], classes(2));
    assert_names(&e, &["bad.npz", "\"y\"", "<i4"]);
    let e = npz_error(&[("x", npy(&[2, 2], &[0.5f32; 4])), ("y", npy(&[2], &[0.5f32, 1.0]))], classes(2));
    assert_names(&e, &["\"y\"", "float32 targets", "classification"]);
    let e = npz_error(&[("x", npy(&[2, 2], &[0.5f32; 4])), ("y", npy(&[2], &[0i64, 1]))], TargetKind::Values);
    assert_names(&e, &["\"y\"", "int64 classes", "float32 targets"]);
}

#[test]
fn an_npz_with_the_wrong_shape_or_a_label_out_of_range_names_the_entry() {
    let e = npz_error(&[("x", npy(&[3, 2], &[0.5f32; 6])), ("y", npy(&[2], &[0i64, 1]))], classes(2));
    assert_names(&e, &["bad.npz", "\"y\"", "[2]", "3 examples"]);
    let e = npz_error(&[("x", npy(&[2, 2], &[0.5f32; 4])), ("y", npy(&[2, 2], &[0i64, 1, 1, 0]))], classes(2));
    assert_names(&e, &["\"y\"", "[2, 2]", "class indices"]);
    let e = npz_error(&[("x", npy(&[2, 2], &[0.5f32; 4])), ("y", npy(&[2], &[0i64, 7]))], classes(3));
    assert_names(&e, &["bad.npz", "\"y\", entry 1", "7 is out of range", "0..3"]);
    let e = npz_error(&[("x", npy(&[2, 2], &[0i64, 1, -4, 3])), ("y", npy(&[2], &[0i64, 1]))], classes(2));
    assert_names(&e, &["\"x\", entry 2", "token id -4"]);
    let e = npz_error(&[("x", npy(&[2], &[f32::NAN, 1.0])), ("y", npy(&[2], &[0i64, 1]))], classes(2));
    assert_names(&e, &["\"x\", entry 0", "not a finite number"]);
    let e = npz_error(&[("x", npy(&[2, 2], &[0.5f32; 4]))], classes(2));
    assert_names(&e, &["bad.npz", "no array \"y\"", "x and y"]);
}

#[test]
fn a_corrupt_npz_or_npy_is_an_error_at_every_truncation() {
    let good = npz(&[("x", npy(&[2, 2], &[0.5f32; 4])), ("y", npy(&[2], &[0i64, 1]))]);
    parse_npz(&good, Path::new("ok.npz"), classes(2)).unwrap();
    for cut in (0..good.len()).step_by(7) {
        assert!(parse_npz(&good[..cut], Path::new("cut.npz"), classes(2)).is_err(), "cut at {cut}");
    }
    let e = parse_npz(b"not a zip at all", Path::new("junk.npz"), classes(2)).unwrap_err().to_string();
    assert_names(&e, &["junk.npz", "not a .npz"]);
    let one = npy(&[3, 2], &[1.0f32; 6]);
    for cut in 0..one.len() {
        assert!(parse_npy(&one[..cut], Path::new("x.npy"), "x").is_err(), "cut at {cut}");
    }
    let e = parse_npy(&one[..one.len() - 4], Path::new("x.npy"), "x").unwrap_err().to_string();
    assert_names(&e, &["x.npy", "truncated", "[3, 2]"]);
}

#[test]
fn a_fortran_ordered_array_is_refused() {
    let mut buf = Vec::new();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .order(npyz::Order::Fortran)
        .shape(&[2, 2])
        .writer(&mut buf)
        .begin_nd()
        .unwrap();
    w.extend([1.0f32, 2.0, 3.0, 4.0]).unwrap();
    w.finish().unwrap();
    let e = parse_npy(&buf, Path::new("f.npy"), "x").unwrap_err().to_string();
    assert_names(&e, &["f.npy", "Fortran order"]);
}

fn image_dir(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        let p = dir.path().join("train").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    dir
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(w, h).write_to(&mut out, image::ImageOutputFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn a_corrupt_image_is_an_error_naming_the_file_when_its_batch_is_read() {
    let good = png(4, 4);
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let dir = image_dir(&[("a/ok.png", &good), ("b/broken.png", &truncated), ("b/text.jpg", b"hello")]);
    let d = open_part(&SourceSpec::at(dir.path()), Part::Train, TargetKind::default()).unwrap().unwrap();
    d.set_input_shape(&[3, 4, 4]).unwrap();
    let mut b = Batch::default();
    d.read_into(0, &mut b).unwrap();
    assert_eq!(b.x.len(), 48);
    for (i, name) in [(1, "broken.png"), (2, "text.jpg")] {
        let before = b.clone();
        let e = d.read_into(i, &mut b).unwrap_err().to_string();
        assert_names(&e, &[name, "not a readable PNG or JPEG image"]);
        assert_eq!(b, before, "a failed read appends nothing");
    }
    assert!(d.read_into(3, &mut b).is_err());
}

#[test]
fn an_image_folder_without_classes_or_with_too_many_classes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("train")).unwrap();
    let e = open_part(&SourceSpec::at(dir.path()), Part::Train, TargetKind::default()).unwrap_err().to_string();
    assert_names(&e, &["train", "no class folders"]);
    let img = png(2, 2);
    let dir = image_dir(&[("a/1.png", &img), ("b/1.png", &img), ("c/1.png", &img)]);
    let e = open_part(&SourceSpec::at(dir.path()), Part::Train, classes(2)).unwrap_err().to_string();
    assert_names(&e, &["3 class folders", "2 classes"]);
    let e = open_part(&SourceSpec::at(dir.path()), Part::Train, TargetKind::Values).unwrap_err().to_string();
    assert_names(&e, &["regression"]);
}

#[test]
fn a_test_folder_with_a_class_the_training_part_lacks_is_refused() {
    let img = png(2, 2);
    let dir = image_dir(&[("a/1.png", &img)]);
    std::fs::create_dir_all(dir.path().join("test/zebra")).unwrap();
    std::fs::write(dir.path().join("test/zebra/1.png"), &img).unwrap();
    let e = open_part(&SourceSpec::at(dir.path()), Part::Test, TargetKind::default()).unwrap_err().to_string();
    assert_names(&e, &["\"zebra\"", "training classes"]);
}

#[test]
fn a_missing_csv_cell_a_wrong_column_count_and_a_bad_label_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("a,b,label\n1,2,0\n3,,1\n", "line 3", "\"b\" is empty"),
        ("a,b,label\n1,2,0\n3,4\n", "line 3", "2 fields"),
        ("a,b,label\n1,2,0\n3,four,1\n", "line 3", "\"four\" is not a number"),
        ("a,b,label\n1,2,0\n3,4,9\n", "line 3", "class 9 is out of range"),
        ("a,b,label\n1,2,x\n", "line 2", "not a class index"),
    ];
    for (text, line, what) in cases {
        std::fs::write(dir.path().join("train.csv"), text).unwrap();
        let e = open_part(&SourceSpec::at(dir.path()), Part::Train, classes(3)).unwrap_err().to_string();
        assert_names(&e, &["train.csv", line, what]);
    }
}
