//! Prediction request bodies and responses: JSON (`{"inputs": [[...], ...]}` for a batch, `{"inputs": [...]}` or
//! `{"input": [...]}` for one example; nested arrays are flattened in row-major order) and raw little-endian f32
//! (`application/octet-stream`, a whole number of examples back to back).
//!
//! Pure functions over bytes: every shape, type and size problem is an [`InputError`] with a message a client can
//! act on. This module never runs a model and never does I/O.

use serde::Deserialize;
use serde_json::{Value, json};

/// What is wrong with a request body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    #[error("the body is not valid JSON of the form {{\"inputs\": [[...], ...]}}: {0}")]
    Json(String),
    #[error("give either \"inputs\" (a batch, or one example as a flat list) or \"input\" (one example), not {0}")]
    Form(&'static str),
    #[error("{at}: expected a number, found {found}")]
    NotANumber { at: String, found: &'static str },
    #[error("{at}: {value} is not a finite 32-bit float")]
    NotFinite { at: String, value: f64 },
    #[error("example {example} has {got} numbers; this model takes {want} (shape {shape:?})")]
    Shape { example: usize, got: usize, want: usize, shape: Vec<usize> },
    #[error(
        "a raw body must be a whole number of examples of {want} little-endian f32 ({bytes} bytes each); got {got} bytes"
    )]
    RawLength { got: usize, want: usize, bytes: usize },
    #[error("the request holds no example")]
    Empty,
    #[error("the request holds {examples} examples; at most {max} are accepted")]
    TooMany { examples: usize, max: usize },
}

impl InputError {
    /// Whether the request was refused for its size (HTTP 413) rather than its content (HTTP 400).
    pub fn is_too_large(&self) -> bool {
        matches!(self, InputError::TooMany { .. })
    }
}

/// A checked request: `rows` examples of the model's input length, back to back.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    pub data: Vec<f32>,
    pub rows: usize,
}

/// What a model takes, for checking requests.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec<'a> {
    pub shape: &'a [usize],
    pub max_examples: usize,
}

impl InputSpec<'_> {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    inputs: Option<Value>,
    input: Option<Value>,
}

/// Parses a JSON prediction request.
pub fn parse_json(body: &[u8], spec: InputSpec<'_>) -> Result<Inputs, InputError> {
    let body: Body = serde_json::from_slice(body).map_err(|e| InputError::Json(e.to_string()))?;
    inputs_from(body.inputs.as_ref(), body.input.as_ref(), spec)
}

/// The examples of a JSON body's `inputs` (a batch, or one example as a flat list) or `input` (one example), in
/// the form `/v1/predict` takes; shared by every endpoint that takes inputs.
pub fn inputs_from(inputs: Option<&Value>, input: Option<&Value>, spec: InputSpec<'_>) -> Result<Inputs, InputError> {
    let examples: Vec<(String, &Value)> = match (inputs, input) {
        (Some(_), Some(_)) => return Err(InputError::Form("both")),
        (None, None) => return Err(InputError::Form("neither")),
        (None, Some(one)) => vec![("input".into(), one)],
        (Some(v @ Value::Array(items)), None) if !items.is_empty() && items.iter().all(Value::is_number) => {
            vec![("inputs".into(), v)]
        }
        (Some(Value::Array(items)), None) => {
            items.iter().enumerate().map(|(i, v)| (format!("inputs[{i}]"), v)).collect()
        }
        (Some(other), None) => {
            return Err(InputError::NotANumber { at: "inputs".into(), found: kind(other) });
        }
    };
    if examples.is_empty() {
        return Err(InputError::Empty);
    }
    if examples.len() > spec.max_examples {
        return Err(InputError::TooMany { examples: examples.len(), max: spec.max_examples });
    }
    let want = spec.len();
    let mut data = Vec::with_capacity(examples.len() * want);
    for (i, (at, v)) in examples.iter().enumerate() {
        let before = data.len();
        flatten(v, at, &mut data)?;
        let got = data.len() - before;
        if got != want {
            return Err(InputError::Shape { example: i, got, want, shape: spec.shape.to_vec() });
        }
    }
    Ok(Inputs { data, rows: examples.len() })
}

fn flatten(v: &Value, at: &str, out: &mut Vec<f32>) -> Result<(), InputError> {
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            let f = x as f32;
            if !f.is_finite() {
                return Err(InputError::NotFinite { at: at.to_string(), value: x });
            }
            out.push(f);
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if item.is_number() {
                    flatten(item, at, out)?;
                } else {
                    flatten(item, &format!("{at}[{i}]"), out)?;
                }
            }
            Ok(())
        }
        other => Err(InputError::NotANumber { at: at.to_string(), found: kind(other) }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Parses a raw little-endian f32 body.
pub fn parse_raw(body: &[u8], spec: InputSpec<'_>) -> Result<Inputs, InputError> {
    let want = spec.len();
    let bytes = want * 4;
    if body.is_empty() {
        return Err(InputError::Empty);
    }
    if bytes == 0 || !body.len().is_multiple_of(bytes) {
        return Err(InputError::RawLength { got: body.len(), want, bytes });
    }
    let rows = body.len() / bytes;
    if rows > spec.max_examples {
        return Err(InputError::TooMany { examples: rows, max: spec.max_examples });
    }
    let mut data = Vec::with_capacity(rows * want);
    for (i, c) in body.chunks_exact(4).enumerate() {
        let f = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        if !f.is_finite() {
            return Err(InputError::NotFinite {
                at: format!("example {} number {}", i / want, i % want),
                value: f as f64,
            });
        }
        data.push(f);
    }
    Ok(Inputs { data, rows })
}

/// The JSON answer: `{"version": v, "outputs": [[logits...], ...], "classes": [argmax, ...]}`.
pub fn response_json(version: u64, outputs: &[f32], output_len: usize) -> Value {
    let rows: Vec<&[f32]> = outputs.chunks(output_len.max(1)).collect();
    let classes: Vec<Option<usize>> = rows.iter().map(|r| super::engine::argmax(r)).collect();
    json!({ "version": version, "outputs": rows, "classes": classes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHAPE: [usize; 2] = [2, 3];
    fn spec() -> InputSpec<'static> {
        InputSpec { shape: &SHAPE, max_examples: 4 }
    }

    #[test]
    fn a_batch_one_flat_example_and_one_nested_example_are_all_accepted() {
        let b = parse_json(br#"{"inputs": [[1,2,3,4,5,6], [[6,5,4],[3,2,1]]]}"#, spec()).unwrap();
        assert_eq!(b.rows, 2);
        assert_eq!(b.data, vec![1., 2., 3., 4., 5., 6., 6., 5., 4., 3., 2., 1.]);
        let one = parse_json(br#"{"inputs": [1,2,3,4,5,6]}"#, spec()).unwrap();
        assert_eq!(one.rows, 1);
        let one = parse_json(br#"{"input": [[1,2,3],[4,5,6.5]]}"#, spec()).unwrap();
        assert_eq!((one.rows, one.data[5]), (1, 6.5));
    }

    #[test]
    fn wrong_shapes_types_and_forms_name_what_is_wrong() {
        let e = parse_json(br#"{"inputs": [[1,2,3], [1,2,3,4,5,6]]}"#, spec()).unwrap_err();
        assert_eq!(e, InputError::Shape { example: 0, got: 3, want: 6, shape: vec![2, 3] });
        assert!(e.to_string().contains("this model takes 6"));
        let e = parse_json(br#"{"inputs": [[1,2,3,4,5,"6"]]}"#, spec()).unwrap_err();
        assert_eq!(e, InputError::NotANumber { at: "inputs[0][5]".into(), found: "a string" });
        assert!(matches!(parse_json(br#"{"inputs": [[1,2,3,4,5,1e39]]}"#, spec()), Err(InputError::NotFinite { .. })));
        assert!(matches!(parse_json(br#"{"inputs": [1,2]"#, spec()), Err(InputError::Json(_))));
        assert!(matches!(parse_json(br#"{"input": [1], "inputs": [1]}"#, spec()), Err(InputError::Form("both"))));
        assert!(matches!(parse_json(br#"{"examples": [1]}"#, spec()), Err(InputError::Json(_))));
        assert_eq!(parse_json(br#"{"inputs": []}"#, spec()), Err(InputError::Empty));
        let e = parse_json(br#"{"inputs": [[0,0,0,0,0,0],[0,0,0,0,0,0],[0,0,0,0,0,0],[0,0,0,0,0,0],[1]]}"#, spec())
            .unwrap_err();
        assert!(e.is_too_large() && !InputError::Empty.is_too_large());
    }

    #[test]
    fn a_raw_body_must_be_whole_finite_examples() {
        let ok: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
        assert_eq!(parse_raw(&ok, spec()).unwrap().rows, 2);
        assert!(matches!(parse_raw(&ok[..20], spec()), Err(InputError::RawLength { got: 20, want: 6, bytes: 24 })));
        let mut nan = ok.clone();
        nan[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(matches!(parse_raw(&nan, spec()), Err(InputError::NotFinite { .. })));
        let big: Vec<u8> = vec![0; 24 * 5];
        assert!(parse_raw(&big, spec()).unwrap_err().is_too_large());
    }

    #[test]
    fn the_response_carries_the_version_logits_and_argmax_classes() {
        let v = response_json(7, &[0.1, 0.9, 2.0, -1.0], 2);
        assert_eq!(v["version"], 7);
        assert_eq!(v["classes"], json!([1, 0]));
        assert_eq!(v["outputs"][1][0].as_f64().unwrap() as f32, 2.0);
    }

    proptest! {
        #[test]
        fn json_and_raw_encodings_of_the_same_examples_parse_to_the_same_inputs(
            xs in prop::collection::vec(-1e6f32..1e6, 1..=4usize * 6)
        ) {
            let rows = xs.len() / 6;
            prop_assume!(rows > 0);
            let xs = &xs[..rows * 6];
            let raw: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
            let batch: Vec<&[f32]> = xs.chunks(6).collect();
            let body = serde_json::to_vec(&json!({ "inputs": batch })).unwrap();
            let a = parse_raw(&raw, spec()).unwrap();
            let b = parse_json(&body, spec()).unwrap();
            prop_assert_eq!(a, b);
        }
    }
}
