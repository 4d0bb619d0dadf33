//! The HTTP face of inference (axum): `POST /v1/predict` (JSON or raw f32 in; JSON, or raw f32 with
//! `Accept: application/octet-stream`, out; the version in the `x-fedge-model-version` header and the JSON),
//! `GET /v1/model`, `GET /healthz`, `GET /readyz` and `GET /metrics` (Prometheus text); the device's own labels
//! (`/v1/examples`, `/v1/feedback`) are in [`super::labels_http`]. Every predicted example gets an id (the JSON's
//! `"ids"`, or the `x-fedge-prediction-ids` header of a raw answer) that a correction can name.
//!
//! Status codes: 400 for a malformed input (with the reason), 413 for a body or batch over the limits, 415 for
//! another content type, 503 before a model is loaded or when the queue is full. Handlers never run the model
//! themselves: they hand inputs to the [`Batcher`].

use super::app_state::AppState;
use super::batcher::BatchError;
use super::metrics::Outcome;
use super::request::{InputSpec, parse_json, parse_raw, response_json};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::time::Instant;

/// The header naming the version that computed a prediction.
pub const VERSION_HEADER: &str = "x-fedge-model-version";
/// The header of a raw answer listing the predictions' ids, comma-separated, in order.
pub const IDS_HEADER: &str = "x-fedge-prediction-ids";

/// The endpoint's routes; bodies over `max_body_bytes` are refused with 413.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/predict", post(predict))
        .route("/v1/model", get(model))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(super::labels_http::routes())
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

fn content_type(headers: &HeaderMap) -> &str {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json")
}

async fn predict(State(s): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let (outcome, examples, response) = answer(&s, &headers, body).await;
    s.metrics.request(outcome, started.elapsed(), examples);
    response
}

async fn answer(s: &AppState, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> (Outcome, usize, Response) {
    let admitted = s.batcher.admit();
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return (Outcome::TooLarge, 0, error(StatusCode::PAYLOAD_TOO_LARGE, e.body_text()));
        }
        Err(e) => return (Outcome::BadRequest, 0, error(e.status(), e.body_text())),
    };
    let Some(model) = s.registry.current() else {
        return (Outcome::Unavailable, 0, error(StatusCode::SERVICE_UNAVAILABLE, "no model is loaded yet"));
    };
    let spec = InputSpec { shape: model.input_shape(), max_examples: s.max_examples };
    let ct = content_type(headers).to_ascii_lowercase();
    let parsed = if ct.starts_with("application/json") {
        parse_json(&body, spec)
    } else if ct.starts_with("application/octet-stream") {
        parse_raw(&body, spec)
    } else {
        let msg = format!("content type {ct:?}: send application/json or application/octet-stream (f32 LE)");
        return (Outcome::Unsupported, 0, error(StatusCode::UNSUPPORTED_MEDIA_TYPE, msg));
    };
    let inputs = match parsed {
        Ok(i) => i,
        Err(e) if e.is_too_large() => return (Outcome::TooLarge, 0, error(StatusCode::PAYLOAD_TOO_LARGE, e)),
        Err(e) => return (Outcome::BadRequest, 0, error(StatusCode::BAD_REQUEST, e)),
    };
    let rows = inputs.rows;
    let output_len = model.output_len();
    let remembered = (s.recent.capacity() > 0).then(|| inputs.data.clone());
    let p = match s.batcher.predict_admitted(admitted, model, inputs.data).await {
        Ok(p) => p,
        Err(e @ (BatchError::QueueFull(_) | BatchError::Stopped)) => {
            return (Outcome::Unavailable, 0, error(StatusCode::SERVICE_UNAVAILABLE, e));
        }
        Err(e) => return (Outcome::Error, 0, error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    };
    let raw_out = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.to_ascii_lowercase().starts_with("application/octet-stream"));
    let ids = s.recent.remember(remembered.as_deref().unwrap_or_default(), rows, p.version, output_len);
    let mut response = if raw_out {
        let bytes: Vec<u8> = p.outputs.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut r = ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response();
        if let Ok(v) = HeaderValue::from_str(&ids.join(",")) {
            r.headers_mut().insert(IDS_HEADER, v);
        }
        r
    } else {
        let mut v = response_json(p.version, &p.outputs, output_len);
        v["ids"] = json!(ids);
        axum::Json(v).into_response()
    };
    response.headers_mut().insert(VERSION_HEADER, HeaderValue::from(p.version));
    (Outcome::Ok, rows, response)
}

async fn model(State(s): State<AppState>) -> Response {
    match s.registry.current() {
        Some(m) => axum::Json(json!({
            "version": m.version,
            "pinned": s.registry.pinned(),
            "input_shape": m.input_shape(),
            "output_len": m.output_len(),
            "max_batch": m.max_batch(),
        }))
        .into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no model is loaded yet"),
    }
}

async fn ready(State(s): State<AppState>) -> Response {
    match s.registry.version() {
        Some(v) => (StatusCode::OK, format!("ready: version {v}\n")).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no model loaded\n").into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode())
        .into_response()
}
