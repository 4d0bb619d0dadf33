//! Writes the small committed data samples in `tests/fixtures/data/` (a few KB each), from the formulas in
//! `shared/tests/fixtures_spec`: `cargo run -p fedge-shared --example make_data_fixtures`. Run once; the tests read
//! the committed files and check them against the same formulas.

#[path = "../tests/fixtures_spec/mod.rs"]
mod spec;

use std::io::Write;
use std::path::Path;

use npyz::WriterBuilder;
use spec::*;

fn npy<T: npyz::AutoSerialize + Copy>(shape: &[usize], values: &[T]) -> Vec<u8> {
    let mut buf = Vec::new();
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut buf).begin_nd().unwrap();
    w.extend(values.iter().copied()).unwrap();
    w.finish().unwrap();
    buf
}

/// A `.npz` as numpy writes it: one `<name>.npy` entry per array, stored (`savez`) or deflated
/// (`savez_compressed`).
fn npz(path: &Path, arrays: &[(&str, Vec<u8>)], deflate: bool) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in arrays {
        zip.start_file(format!("{name}.npy"), opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn parts() -> [(&'static str, usize, usize); 2] {
    [("train", TRAIN, 0), ("test", TEST, 1)]
}

fn main() {
    let root = root();
    // CSV, classification: a label column in the middle and a text column to leave out with feature_columns.
    let dir = root.join("csv");
    std::fs::create_dir_all(&dir).unwrap();
    for (part, n, salt) in parts() {
        let mut text = String::from("x0,x1,label,x2,x3,note\n");
        for i in 0..n {
            let f: Vec<f32> = (0..CSV_FEATURES).map(|j| feature(i, j, salt)).collect();
            text += &format!("{},{},{},{},{},row {i}\n", f[0], f[1], class_of(i, salt), f[2], f[3]);
        }
        std::fs::write(dir.join(format!("{part}.csv")), text).unwrap();
    }
    // CSV, regression: the target column is named `target`; no test part (the loader holds out).
    let dir = root.join("csv-regression");
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::from("a,b,c,target\n");
    for i in 0..TRAIN {
        let r = regression_row(i, 0);
        text += &format!("{},{},{},{}\n", r[0], r[1], r[2], r[3]);
    }
    std::fs::write(dir.join("train.csv"), text).unwrap();
    // NumPy: float32 x of shape [N, 2, 3], int64 y.
    let dir = root.join("npz");
    std::fs::create_dir_all(&dir).unwrap();
    for (part, n, salt) in parts() {
        let d = NPZ_SHAPE[0] * NPZ_SHAPE[1];
        let x: Vec<f32> = (0..n * d).map(|k| feature(k / d, k % d, salt)).collect();
        let y: Vec<i64> = (0..n).map(|i| class_of(i, salt) as i64).collect();
        let arrays = [("x", npy(&[n, NPZ_SHAPE[0], NPZ_SHAPE[1]], &x)), ("y", npy(&[n], &y))];
        npz(&dir.join(format!("{part}.npz")), &arrays, part == "train");
    }
    // NumPy: int64 token ids.
    let dir = root.join("npz-tokens");
    std::fs::create_dir_all(&dir).unwrap();
    for (part, n, salt) in parts() {
        let x: Vec<i64> = (0..n * TOKENS).map(|k| token(k / TOKENS, k % TOKENS, salt)).collect();
        let y: Vec<i64> = (0..n).map(|i| class_of(i, salt) as i64).collect();
        npz(&dir.join(format!("{part}.npz")), &[("x", npy(&[n, TOKENS], &x)), ("y", npy(&[n], &y))], true);
    }
    // NumPy: regression with two float32 targets per example.
    let dir = root.join("npz-regression");
    std::fs::create_dir_all(&dir).unwrap();
    for (part, n, salt) in parts() {
        let rows: Vec<[f32; 4]> = (0..n).map(|i| regression_row(i, salt)).collect();
        let x: Vec<f32> = rows.iter().flat_map(|r| [r[0], r[1], r[2]]).collect();
        let y: Vec<f32> = rows.iter().flat_map(|r| [r[3], -r[3]]).collect();
        npz(&dir.join(format!("{part}.npz")), &[("x", npy(&[n, 3], &x)), ("y", npy(&[n, 2], &y))], true);
    }
    // Image folders: 8x8 RGB PNGs, and one grayscale JPEG per test class.
    for (part, per_class) in [("train", IMAGES_PER_CLASS_TRAIN), ("test", IMAGES_PER_CLASS_TEST)] {
        for (c, class) in IMAGE_CLASSES.iter().enumerate() {
            let dir = root.join("images").join(part).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                let img = image::RgbImage::from_fn(IMAGE_SIDE, IMAGE_SIDE, |col, row| {
                    image::Rgb([pixel(c, i, row, col, 0), pixel(c, i, row, col, 1), pixel(c, i, row, col, 2)])
                });
                img.save(dir.join(image_name(i))).unwrap();
            }
            if part == "test" {
                let gray =
                    image::GrayImage::from_fn(16, 16, |col, row| image::Luma([pixel(c, 0, row / 2, col / 2, 0)]));
                gray.save(dir.join("extra.jpg")).unwrap();
            }
        }
    }
    println!("wrote the samples under {}", root.display());
}
