//! Every data format on the small committed samples in `tests/fixtures/data/`: the examples read back exactly
//! (values, labels, shapes), the format is detected from the folder, and a model trains on each.

mod fixtures_spec;

use fedge_shared::data::{
    Batch, ChannelNorm, Examples, Format, Part, SharedExamples, SourceSpec, Subset, TargetKind, Task, detect_format,
    open_part,
};
use fedge_shared::train::builder::mlp_for;
use fedge_shared::train::local::{LocalTrainConfig, LocalTrainer, evaluate};
use fedge_shared::train::{Loss, TrainableModel};
use fixtures_spec::*;

fn open(spec: &SourceSpec, part: Part, target: TargetKind) -> SharedExamples {
    open_part(spec, part, target).unwrap().unwrap_or_else(|| panic!("{part:?} part of {}", spec.path.display()))
}

fn all(d: &dyn Examples) -> Batch {
    let mut b = Batch::default();
    assert_eq!(d.range_into(0, d.len(), &mut b).unwrap(), d.len());
    b
}

fn classes3() -> TargetKind {
    TargetKind::Classes { num_classes: Some(CLASSES) }
}

fn csv_spec() -> SourceSpec {
    SourceSpec {
        feature_columns: Some(["x0", "x1", "x2", "x3"].map(String::from).to_vec()),
        ..SourceSpec::at(root().join("csv"))
    }
}

#[test]
fn each_sample_folder_is_detected_as_its_format() {
    assert_eq!(detect_format(&root().join("csv")).unwrap(), Format::Csv);
    assert_eq!(detect_format(&root().join("csv-regression")).unwrap(), Format::Csv);
    assert_eq!(detect_format(&root().join("npz")).unwrap(), Format::Npz);
    assert_eq!(detect_format(&root().join("images")).unwrap(), Format::Images);
    assert_eq!(detect_format(&root().join("csv/train.csv")).unwrap(), Format::Csv);
    let e = detect_format(&root()).unwrap_err().to_string();
    assert!(e.contains("cannot tell the data format"), "{e}");
}

#[test]
fn the_csv_sample_reads_back_exactly_with_the_named_feature_columns() {
    for (part, n, salt) in [(Part::Train, TRAIN, 0), (Part::Test, TEST, 1)] {
        let d = open(&csv_spec(), part, classes3());
        assert_eq!((d.len(), d.example_shape(), d.task()), (n, &[4][..], Task::Classification { classes: 3 }));
        let b = all(d.as_ref());
        let want_x: Vec<f32> = (0..n).flat_map(|i| (0..4).map(move |j| feature(i, j, salt))).collect();
        let want_y: Vec<u32> = (0..n).map(|i| class_of(i, salt)).collect();
        assert_eq!(b.x, want_x);
        assert_eq!(b.classes, want_y);
        assert_eq!(d.labels(), &want_y[..]);
    }
}

#[test]
fn a_csv_text_column_is_refused_by_line_and_column_unless_left_out() {
    let spec = SourceSpec::at(root().join("csv"));
    let e = open_part(&spec, Part::Train, classes3()).unwrap_err().to_string();
    assert!(e.contains("train.csv") && e.contains("line 2") && e.contains("\"note\""), "{e}");
}

#[test]
fn the_csv_regression_sample_reads_its_target_column_and_has_no_test_part() {
    let spec = SourceSpec { label_column: Some("target".into()), ..SourceSpec::at(root().join("csv-regression")) };
    let d = open(&spec, Part::Train, TargetKind::Values);
    assert_eq!((d.len(), d.task(), d.example_shape()), (TRAIN, Task::Regression { outputs: 1 }, &[3][..]));
    let b = all(d.as_ref());
    let rows: Vec<[f32; 4]> = (0..TRAIN).map(|i| regression_row(i, 0)).collect();
    assert_eq!(b.x, rows.iter().flat_map(|r| [r[0], r[1], r[2]]).collect::<Vec<_>>());
    assert_eq!(b.targets, rows.iter().map(|r| r[3]).collect::<Vec<_>>());
    assert!(open_part(&spec, Part::Test, TargetKind::Values).unwrap().is_none());
}

#[test]
fn the_npz_samples_read_back_exactly_float_features_token_ids_and_regression_targets() {
    for (part, n, salt) in [(Part::Train, TRAIN, 0), (Part::Test, TEST, 1)] {
        let d = open(&SourceSpec::at(root().join("npz")), part, classes3());
        assert_eq!((d.len(), d.example_shape()), (n, &NPZ_SHAPE[..]));
        let b = all(d.as_ref());
        assert_eq!(b.x, (0..n * 6).map(|k| feature(k / 6, k % 6, salt)).collect::<Vec<_>>());
        assert_eq!(b.classes, (0..n).map(|i| class_of(i, salt)).collect::<Vec<_>>());

        let d = open(&SourceSpec::at(root().join("npz-tokens")), part, classes3());
        assert_eq!((d.len(), d.example_shape()), (n, &[TOKENS][..]));
        let b = all(d.as_ref());
        assert_eq!(b.x, (0..n * TOKENS).map(|k| token(k / TOKENS, k % TOKENS, salt) as f32).collect::<Vec<_>>());

        let d = open(&SourceSpec::at(root().join("npz-regression")), part, TargetKind::Values);
        assert_eq!((d.len(), d.task(), d.example_shape()), (n, Task::Regression { outputs: 2 }, &[3][..]));
        let b = all(d.as_ref());
        let rows: Vec<[f32; 4]> = (0..n).map(|i| regression_row(i, salt)).collect();
        assert_eq!(b.x, rows.iter().flat_map(|r| [r[0], r[1], r[2]]).collect::<Vec<_>>());
        assert_eq!(b.targets, rows.iter().flat_map(|r| [r[3], -r[3]]).collect::<Vec<_>>());
    }
}

#[test]
fn the_image_sample_decodes_png_pixels_exactly_in_channel_major_order() {
    let d = open(&SourceSpec::at(root().join("images")), Part::Train, classes3());
    assert_eq!(d.len(), 3 * IMAGES_PER_CLASS_TRAIN);
    // The input shape comes from the model; until then reading is refused.
    assert!(d.check().is_err());
    d.set_input_shape(&[3, 8, 8]).unwrap();
    d.check().unwrap();
    let b = all(d.as_ref());
    let mut want = vec![];
    let mut want_y = vec![];
    for c in 0..3 {
        for i in 0..IMAGES_PER_CLASS_TRAIN {
            for ch in 0..3 {
                for row in 0..IMAGE_SIDE {
                    for col in 0..IMAGE_SIDE {
                        want.push(f32::from(pixel(c, i, row, col, ch)) / 255.0);
                    }
                }
            }
            want_y.push(c as u32);
        }
    }
    assert_eq!(b.x, want);
    assert_eq!(b.classes, want_y);
    // Another shape for the same folder is refused (the decoder is fixed for the agent's life).
    assert!(d.set_input_shape(&[1, 4, 4]).is_err());
}

#[test]
fn images_are_resized_converted_to_grayscale_and_normalised_per_channel() {
    let spec = SourceSpec {
        normalize: Some(ChannelNorm { mean: vec![0.5], std: vec![0.25] }),
        ..SourceSpec::at(root().join("images"))
    };
    let d = open(&spec, Part::Test, classes3());
    // Four PNGs and one grayscale JPEG per class; "extra.jpg" sorts first.
    assert_eq!(d.len(), 3 * (IMAGES_PER_CLASS_TEST + 1));
    d.set_input_shape(&[1, 4, 4]).unwrap();
    let b = all(d.as_ref());
    assert_eq!(b.x.len(), d.len() * 16);
    let mean_of = |k: usize| b.x[k * 16..(k + 1) * 16].iter().sum::<f32>() / 16.0;
    let per = IMAGES_PER_CLASS_TEST + 1;
    // (v / 255 - 0.5) / 0.25: bright images near +1.4, dark ones near -1.6, stripes in between.
    for k in 0..per {
        assert!(mean_of(k) > 1.2, "bright {k}: {}", mean_of(k));
        assert!(mean_of(per + k) < -1.4, "dark {k}: {}", mean_of(per + k));
        assert!(mean_of(2 * per + k).abs() < 0.4, "stripes {k}: {}", mean_of(2 * per + k));
    }
    // A model whose input is not an image shape is refused, naming the folder.
    let d = open(&SourceSpec::at(root().join("images")), Part::Test, classes3());
    let e = d.set_input_shape(&[192]).unwrap_err().to_string();
    assert!(e.contains("images") && e.contains("[channels, height, width]"), "{e}");
}

fn train_and_score(train: &dyn Examples, test: &dyn Examples, onnx: &[u8], loss: Loss, epochs: u32) -> (f32, f32) {
    train_and_score_at(train, test, onnx, loss, epochs, 0.02)
}

/// Trains with Adam at `lr` in batches of 10 and returns (accuracy or mse before, after).
fn train_and_score_at(
    train: &dyn Examples,
    test: &dyn Examples,
    onnx: &[u8],
    loss: Loss,
    epochs: u32,
    lr: f32,
) -> (f32, f32) {
    let model = TrainableModel::from_onnx_bytes(onnx).unwrap();
    let mut w = model.initial_weights();
    let before = evaluate(&model, &w, test, 32).unwrap();
    let mut trainer = LocalTrainer::new(model.clone(), loss, 10).unwrap();
    let cfg = LocalTrainConfig {
        optimizer: fedge_shared::train::optimizer::OptimizerConfig::adam(lr),
        ..LocalTrainConfig::sgd(epochs, 10, 0.1)
    };
    trainer.train(&mut w, train, &cfg, &mut |_| {}).unwrap();
    let after = evaluate(&model, &w, test, 32).unwrap();
    match after.mse {
        Some(mse) => (before.loss, mse),
        None => (before.accuracy, after.accuracy),
    }
}

#[test]
fn a_model_learns_each_classification_sample() {
    let cases: Vec<(SharedExamples, SharedExamples, Vec<u8>)> = vec![
        (
            open(&csv_spec(), Part::Train, classes3()),
            open(&csv_spec(), Part::Test, classes3()),
            mlp_for(&[4], &[8], 3, 1),
        ),
        (
            open(&SourceSpec::at(root().join("npz")), Part::Train, classes3()),
            open(&SourceSpec::at(root().join("npz")), Part::Test, classes3()),
            mlp_for(&NPZ_SHAPE, &[8], 3, 1),
        ),
    ];
    for (train, test, onnx) in cases {
        let (before, after) = train_and_score(train.as_ref(), test.as_ref(), &onnx, Loss::SoftmaxCrossEntropy, 15);
        assert!(after >= 0.9, "accuracy {before} before training, {after} after");
    }
}

#[test]
fn a_model_learns_the_image_folder_standardised_per_channel() {
    // Centred inputs: 192 raw pixels near 0.8 would push every ReLU of a small layer dead in one Adam step.
    let spec = SourceSpec {
        normalize: Some(ChannelNorm { mean: vec![0.5], std: vec![0.5] }),
        ..SourceSpec::at(root().join("images"))
    };
    let (train, test) = (open(&spec, Part::Train, classes3()), open(&spec, Part::Test, classes3()));
    let onnx = mlp_for(&[3, 8, 8], &[16], 3, 1);
    let (before, after) =
        train_and_score_at(train.as_ref(), test.as_ref(), &onnx, Loss::SoftmaxCrossEntropy, 15, 0.005);
    assert!(after >= 0.9, "accuracy {before} before training, {after} after");
}

#[test]
fn a_model_learns_the_token_id_sample_fed_as_float_ids() {
    let spec = SourceSpec::at(root().join("npz-tokens"));
    let (train, test) = (open(&spec, Part::Train, classes3()), open(&spec, Part::Test, classes3()));
    // Ids of class c lie in 100c..100c+50: their scale alone separates the classes (raw ids are large inputs,
    // hence the small rate).
    let onnx = mlp_for(&[TOKENS], &[16], 3, 2);
    let (before, after) =
        train_and_score_at(train.as_ref(), test.as_ref(), &onnx, Loss::SoftmaxCrossEntropy, 60, 0.002);
    assert!(after >= 0.8, "accuracy {before} before training, {after} after");
}

#[test]
fn regression_samples_train_with_the_mean_squared_error() {
    let spec = SourceSpec { label_column: Some("target".into()), ..SourceSpec::at(root().join("csv-regression")) };
    let all_train = open(&spec, Part::Train, TargetKind::Values);
    let (train, test) = Subset::split_holdout(all_train, 0.2, 1).unwrap();
    let (before, after) = train_and_score(&train, &test, &mlp_for(&[3], &[8], 1, 3), Loss::MeanSquaredError, 40);
    assert!(after < before / 4.0 && after < 0.01, "mse {before} before training, {after} after");

    let spec = SourceSpec::at(root().join("npz-regression"));
    let (train, test) = (open(&spec, Part::Train, TargetKind::Values), open(&spec, Part::Test, TargetKind::Values));
    let (before, after) =
        train_and_score(train.as_ref(), test.as_ref(), &mlp_for(&[3], &[8], 2, 3), Loss::MeanSquaredError, 40);
    assert!(after < before / 4.0 && after < 0.02, "mse {before} before training, {after} after");
}

#[test]
fn cross_entropy_on_regression_targets_is_refused_before_any_step() {
    let spec = SourceSpec::at(root().join("npz-regression"));
    let d = open(&spec, Part::Train, TargetKind::Values);
    let model = TrainableModel::from_onnx_bytes(&mlp_for(&[3], &[4], 2, 1)).unwrap();
    let mut w = model.initial_weights();
    let mut trainer = LocalTrainer::new(model, Loss::SoftmaxCrossEntropy, 10).unwrap();
    let e = trainer.train(&mut w, d.as_ref(), &LocalTrainConfig::sgd(1, 10, 0.1), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("mse"), "{e}");
}
