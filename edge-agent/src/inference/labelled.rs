//! Bodies of the endpoints that take labels: `POST /v1/examples` (`{"input": [...], "label": 3}`, or a batch
//! `{"inputs": [[...], ...], "labels": [3, 1, ...]}`; the inputs in exactly the form `/v1/predict` takes) and
//! `POST /v1/feedback` (`{"id": "<prediction id>", "label": 3}`).
//!
//! Pure functions over bytes: a wrong shape, a label that is not a class of the model, a count mismatch are each a
//! [`LabelError`] naming what was expected. This module never stores anything and never runs a model.

use super::request::{InputError, InputSpec, Inputs, inputs_from};
use serde::Deserialize;
use serde_json::Value;

/// What is wrong with a labelled body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LabelError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("the body is not valid JSON of the form {form}: {error}")]
    Json { form: &'static str, error: String },
    #[error("give \"label\" with \"input\" (one example) or \"labels\" with \"inputs\" (one label per example)")]
    Form,
    #[error("{at}: expected a class of this model, an integer in 0..={max}, found {found}")]
    Label { at: String, found: String, max: usize },
    #[error("{inputs} examples but {labels} labels: give one label per example")]
    Count { inputs: usize, labels: usize },
}

impl LabelError {
    /// Whether the request was refused for its size (HTTP 413) rather than its content (HTTP 400).
    pub fn is_too_large(&self) -> bool {
        matches!(self, LabelError::Input(e) if e.is_too_large())
    }
}

/// Checked examples and one label each.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledInputs {
    pub inputs: Inputs,
    pub labels: Vec<u32>,
}

/// A correction of a served prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Correction {
    pub id: String,
    /// The label as sent; checked against the classes of the model that served the prediction by [`label`].
    pub label: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExamplesBody {
    inputs: Option<Value>,
    input: Option<Value>,
    labels: Option<Vec<Value>>,
    label: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    id: String,
    label: Value,
}

/// Checks one label against a model with `classes` outputs.
pub fn label(v: &Value, at: &str, classes: usize) -> Result<u32, LabelError> {
    let max = classes.saturating_sub(1);
    match v.as_u64() {
        Some(l) if (l as usize) < classes && l <= u64::from(u32::MAX) => Ok(l as u32),
        _ => Err(LabelError::Label { at: at.into(), found: v.to_string(), max }),
    }
}

/// Parses a `/v1/examples` body for a model taking `spec` with `classes` outputs.
pub fn parse_examples(body: &[u8], spec: InputSpec<'_>, classes: usize) -> Result<LabelledInputs, LabelError> {
    let form = r#"{"input": [...], "label": 3} or {"inputs": [[...], ...], "labels": [3, ...]}"#;
    let b: ExamplesBody = serde_json::from_slice(body).map_err(|e| LabelError::Json { form, error: e.to_string() })?;
    let labels: Vec<(String, &Value)> = match (&b.labels, &b.label) {
        (Some(ls), None) if b.inputs.is_some() => {
            ls.iter().enumerate().map(|(i, v)| (format!("labels[{i}]"), v)).collect()
        }
        (None, Some(l)) if b.input.is_some() || b.inputs.is_some() => vec![("label".into(), l)],
        _ => return Err(LabelError::Form),
    };
    let inputs = inputs_from(b.inputs.as_ref(), b.input.as_ref(), spec)?;
    if labels.len() != inputs.rows {
        return Err(LabelError::Count { inputs: inputs.rows, labels: labels.len() });
    }
    let labels = labels.iter().map(|(at, v)| label(v, at, classes)).collect::<Result<Vec<_>, _>>()?;
    Ok(LabelledInputs { inputs, labels })
}

/// Parses a `/v1/feedback` body.
pub fn parse_feedback(body: &[u8]) -> Result<Correction, LabelError> {
    let b: FeedbackBody = serde_json::from_slice(body)
        .map_err(|e| LabelError::Json { form: r#"{"id": "<prediction id>", "label": 3}"#, error: e.to_string() })?;
    Ok(Correction { id: b.id, label: b.label })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: [usize; 1] = [3];
    fn spec() -> InputSpec<'static> {
        InputSpec { shape: &SHAPE, max_examples: 4 }
    }

    #[test]
    fn one_example_and_a_batch_are_read_with_their_labels() {
        let one = parse_examples(br#"{"input": [1, 2, 3], "label": 2}"#, spec(), 3).unwrap();
        assert_eq!((one.inputs.rows, one.inputs.data.clone(), one.labels), (1, vec![1., 2., 3.], vec![2]));
        let two = parse_examples(br#"{"inputs": [[1,2,3],[4,5,6]], "labels": [0, 1]}"#, spec(), 3).unwrap();
        assert_eq!((two.inputs.rows, two.labels), (2, vec![0, 1]));
        let flat = parse_examples(br#"{"inputs": [1,2,3], "label": 1}"#, spec(), 3).unwrap();
        assert_eq!(flat.inputs.rows, 1);
    }

    #[test]
    fn bad_labels_shapes_and_forms_name_what_was_expected() {
        let e = parse_examples(br#"{"input": [1, 2, 3], "label": 3}"#, spec(), 3).unwrap_err();
        assert_eq!(e.to_string(), "label: expected a class of this model, an integer in 0..=2, found 3");
        let e = parse_examples(br#"{"inputs": [[1,2,3]], "labels": [-1]}"#, spec(), 3).unwrap_err();
        assert!(e.to_string().starts_with("labels[0]: expected a class"), "{e}");
        let e = parse_examples(br#"{"input": [1, 2, 3], "label": "cat"}"#, spec(), 3).unwrap_err();
        assert!(e.to_string().contains("found \"cat\""), "{e}");
        let e = parse_examples(br#"{"input": [1, 2], "label": 1}"#, spec(), 3).unwrap_err();
        assert!(e.to_string().contains("this model takes 3"), "{e}");
        let e = parse_examples(br#"{"inputs": [[1,2,3],[4,5,6]], "labels": [1]}"#, spec(), 3).unwrap_err();
        assert_eq!(e, LabelError::Count { inputs: 2, labels: 1 });
        assert_eq!(parse_examples(br#"{"input": [1, 2, 3]}"#, spec(), 3), Err(LabelError::Form));
        assert_eq!(parse_examples(br#"{"input": [1, 2, 3], "labels": [1]}"#, spec(), 3), Err(LabelError::Form));
        assert!(matches!(parse_examples(b"{", spec(), 3), Err(LabelError::Json { .. })));
        let e = parse_examples(
            br#"{"inputs": [[1,2,3],[1,2,3],[1,2,3],[1,2,3],[1,2,3]], "labels": [0,0,0,0,0]}"#,
            spec(),
            3,
        );
        assert!(e.unwrap_err().is_too_large());
    }

    #[test]
    fn a_feedback_body_carries_an_id_and_a_label() {
        let c = parse_feedback(br#"{"id": "00000001000000ff", "label": 4}"#).unwrap();
        assert_eq!(c.id, "00000001000000ff");
        assert_eq!(label(&c.label, "label", 5), Ok(4));
        assert!(label(&c.label, "label", 4).is_err());
        assert!(matches!(parse_feedback(br#"{"label": 4}"#), Err(LabelError::Json { .. })));
    }
}
