//! Fuzz target: the NumPy readers. Any bytes, read as one `.npy` array or as a `.npz` archive of `x` and `y`, give
//! an array whose values fill its shape, or a data set that checks, or an error; never a panic and never an
//! allocation the bytes do not pay for.
#![no_main]

use fedge_shared::data::npz::{Values, parse_npy, parse_npz};
use fedge_shared::data::{Examples, TargetKind};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = parse_npy(data, Path::new("fuzz.npy"), "x") {
        let n: usize = a.shape.iter().product();
        match a.values {
            Values::F32(v) => assert_eq!(v.len(), n),
            Values::I64(v) => assert_eq!(v.len(), n),
        }
    }
    for target in [TargetKind::Classes { num_classes: Some(10) }, TargetKind::Values] {
        if let Ok(d) = parse_npz(data, Path::new("fuzz.npz"), target) {
            d.check().unwrap();
            assert_eq!(d.features.len(), d.len() * d.example_len());
        }
    }
});
