//! Fuzz target: the CSV reader. Any bytes give a data set whose examples agree with its shape and task, or an
//! error; never a panic. The first byte chooses the task (classes, classes below 4, regression targets).
#![no_main]

use fedge_shared::data::{CsvOptions, Examples, TargetKind, parse_csv};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else { return };
    let target = match mode % 3 {
        0 => TargetKind::Classes { num_classes: None },
        1 => TargetKind::Classes { num_classes: Some(4) },
        _ => TargetKind::Values,
    };
    let opts = CsvOptions { target, ..Default::default() };
    if let Ok(d) = parse_csv(text, Path::new("fuzz.csv"), &opts) {
        d.check().unwrap();
        assert_eq!(d.features.len(), d.len() * d.example_len());
        assert!(d.features.iter().all(|v| v.is_finite()));
        if let TargetKind::Classes { num_classes: Some(n) } = target {
            assert!(d.labels.iter().all(|&l| (l as usize) < n));
        }
    }
});
