//! What the committed data samples in `tests/fixtures/data/` hold, as formulas: the generator
//! (`cargo run -p fedge-shared --example make_data_fixtures`) writes them from these, and the tests check that
//! every loader reads back exactly these values, labels and shapes.
//!
//! Every value is a multiple of 1/16 in a small range, so its decimal text and its `f32` are exact.
#![allow(dead_code)]

use std::path::PathBuf;

/// `tests/fixtures/data` in the repository.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data")
}

/// Examples per part.
pub const TRAIN: usize = 90;
pub const TEST: usize = 30;
/// Classes of the classification samples.
pub const CLASSES: usize = 3;

/// The class of example `i` of a part (`salt` differs between train and test).
pub fn class_of(i: usize, salt: usize) -> u32 {
    ((i * 7 + salt) % CLASSES) as u32
}

/// Feature `j` of example `i`: near 1 on the features of its class, near 0 elsewhere.
pub fn feature(i: usize, j: usize, salt: usize) -> f32 {
    let c = class_of(i, salt) as usize;
    let base = if j % CLASSES == c { 1.0 } else { 0.0 };
    base + ((i * 5 + j * 3 + salt) % 7) as f32 / 16.0 - 0.1875
}

/// CSV classification sample: columns `x0, x1, label, x2, x3, note` (the `note` column is left out with
/// `feature_columns`).
pub const CSV_FEATURES: usize = 4;
/// CSV regression sample: columns `a, b, c, target`; `target = 0.5 a - 0.25 b + 0.125 c + 0.5`.
pub fn regression_row(i: usize, salt: usize) -> [f32; 4] {
    let a = ((i * 3 + salt) % 9) as f32 / 8.0;
    let b = ((i * 5 + salt) % 11) as f32 / 8.0;
    let c = ((i * 7 + salt) % 13) as f32 / 8.0;
    [a, b, c, 0.5 * a - 0.25 * b + 0.125 * c + 0.5]
}

/// NumPy sample `npz`: `x` float32 `[N, 2, 3]` (feature `j` of the 6), `y` int64 classes.
pub const NPZ_SHAPE: [usize; 2] = [2, 3];
/// NumPy sample `npz-tokens`: `x` int64 `[N, 8]` token ids (class `c` uses ids from `100 c`), `y` int64 classes.
pub const TOKENS: usize = 8;
pub fn token(i: usize, j: usize, salt: usize) -> i64 {
    100 * class_of(i, salt) as i64 + ((i * 3 + j * 11 + salt) % 50) as i64
}
// NumPy sample `npz-regression`: `x` float32 `[N, 3]` (the regression row's a, b, c), `y` float32 `[N, 2]`
// (`target` and `-target`).

/// Image sample: 8x8 PNGs in `train/<class>/` and `test/<class>/`, classes `bright`, `dark`, `stripes`; pixel
/// `(row, col, channel)` of image `i` of class `c`.
pub const IMAGE_SIDE: u32 = 8;
pub const IMAGE_CLASSES: [&str; 3] = ["bright", "dark", "stripes"];
pub const IMAGES_PER_CLASS_TRAIN: usize = 12;
pub const IMAGES_PER_CLASS_TEST: usize = 4;
pub fn pixel(c: usize, i: usize, row: u32, col: u32, channel: usize) -> u8 {
    let noise = ((i as u32 * 13 + row * 7 + col * 3 + channel as u32 * 5) % 16) as u8;
    match c {
        0 => 200 + noise,
        1 => 20 + noise,
        _ => {
            if row.is_multiple_of(2) {
                220 + noise
            } else {
                10 + noise
            }
        }
    }
}
/// The file name of image `i` (PNG; the first image of each test class is also written as a grayscale JPEG).
pub fn image_name(i: usize) -> String {
    format!("img{i:02}.png")
}
