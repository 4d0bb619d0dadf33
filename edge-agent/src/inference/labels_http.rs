//! The HTTP face of the device's own labels: `POST /v1/examples` (labelled inputs), `POST /v1/feedback` (the right
//! label of a prediction served earlier, by its id) and `GET /v1/examples` (how many are held).
//!
//! Status codes: 200 once the examples are stored durably (fsynced), 400 for a wrong shape or a label that is not
//! a class of the model (the message names what was expected), 404 for an unknown prediction id, 413 for too many
//! examples, 503 before a model is loaded or when this endpoint keeps no labels. The handlers write to the store
//! on a blocking thread, never on the async runtime; nothing here sends anything off the device.

use super::app_state::AppState;
use super::labelled::{LabelError, label, parse_examples, parse_feedback};
use super::recent::LookupError;
use super::request::InputSpec;
use crate::examples_store::{ExampleStore, Held, LabelledExample, Source};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use std::sync::Arc;

/// The routes, to be merged into the endpoint's router.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/examples", post(examples).get(held)).route("/v1/feedback", post(feedback))
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

fn refused(e: LabelError) -> Response {
    let status = if e.is_too_large() { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
    error(status, e)
}

// The error is the handler's finished answer, returned at once; boxing it would buy nothing.
#[allow(clippy::result_large_err)]
fn store_of(s: &AppState) -> Result<Arc<ExampleStore>, Response> {
    s.labels.clone().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this endpoint keeps no labelled examples (run `fedge-agent run` with [labels] enabled)",
        )
    })
}

// The error is the handler's finished answer, returned at once; boxing it would buy nothing.
#[allow(clippy::result_large_err)]
fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Response> {
    body.map_err(|e| error(e.status(), e.body_text()))
}

fn held_json(store: &ExampleStore, h: Held) -> serde_json::Value {
    json!({ "held": h.total(), "examples": h.examples, "feedback": h.feedback, "max_examples": store.max_examples() })
}

// The error is the handler's finished answer, returned at once; boxing it would buy nothing.
#[allow(clippy::result_large_err)]
async fn store(store: Arc<ExampleStore>, examples: Vec<LabelledExample>) -> Result<Held, Response> {
    match tokio::task::spawn_blocking(move || store.add(examples)).await {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => {
            tracing::error!(error = %format!("{e:#}"), "storing labelled examples failed");
            Err(error(StatusCode::INTERNAL_SERVER_ERROR, format!("the examples were not stored: {e:#}")))
        }
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, format!("storing panicked: {e}"))),
    }
}

async fn examples(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let (st, body) = match (store_of(&s), body_of(body)) {
        (Ok(st), Ok(b)) => (st, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let Some(model) = s.registry.current() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no model is loaded yet, so inputs cannot be checked");
    };
    let spec = InputSpec { shape: model.input_shape(), max_examples: s.max_examples };
    let parsed = match parse_examples(&body, spec, model.output_len()) {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    let len = model.input_len();
    let stored = parsed.labels.len();
    let examples = parsed
        .labels
        .iter()
        .enumerate()
        .map(|(i, &label)| LabelledExample {
            source: Source::Example,
            label,
            version: model.version,
            input: parsed.inputs.data.get(i * len..(i + 1) * len).unwrap_or_default().to_vec(),
        })
        .collect();
    match store(st.clone(), examples).await {
        Ok(h) => {
            let mut v = held_json(&st, h);
            v["stored"] = json!(stored);
            axum::Json(v).into_response()
        }
        Err(r) => r,
    }
}

async fn feedback(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let (st, body) = match (store_of(&s), body_of(body)) {
        (Ok(st), Ok(b)) => (st, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let correction = match parse_feedback(&body) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    let served = match s.recent.take(&correction.id) {
        Ok(p) => p,
        Err(e @ LookupError::Malformed(_)) => return error(StatusCode::BAD_REQUEST, e),
        Err(e @ LookupError::Unknown { .. }) => return error(StatusCode::NOT_FOUND, e),
    };
    let label = match label(&correction.label, "label", served.classes) {
        Ok(l) => l,
        Err(e) => {
            s.recent.restore(&correction.id, served);
            return refused(e);
        }
    };
    let example =
        LabelledExample { source: Source::Feedback, label, version: served.version, input: served.input.clone() };
    match store(st.clone(), vec![example]).await {
        Ok(h) => {
            let mut v = held_json(&st, h);
            v["id"] = json!(correction.id);
            v["label"] = json!(label);
            v["version"] = json!(served.version);
            axum::Json(v).into_response()
        }
        Err(r) => {
            s.recent.restore(&correction.id, served);
            r
        }
    }
}

async fn held(State(s): State<AppState>) -> Response {
    match store_of(&s) {
        Ok(st) => axum::Json(held_json(&st, st.held())).into_response(),
        Err(r) => r,
    }
}
