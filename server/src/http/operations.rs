//! Operations routes: health, the counters as JSON, and the Prometheus
//! exposition.

use std::sync::Arc;

use app::model::Counters;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::Json;

use super::{openapi, AppState};
use crate::metrics::Metrics;

#[utoipa::path(get, path = "/api/health", tag = "operations", security(),
    responses((status = 200, description = "The server is up", body = String, content_type = "text/plain")))]
pub(super) async fn health() -> &'static str {
    "ok"
}

/// `GET /metrics`: every counter and histogram in Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"), openapi::Refused))]
pub(super) async fn prometheus(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.prometheus(),
    )
}

/// Global counters.
#[utoipa::path(get, path = "/api/stats", tag = "operations",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    responses((status = 200, body = Counters), openapi::Refused))]
pub(super) async fn stats(State(metrics): State<Arc<Metrics>>) -> Json<Counters> {
    Json(metrics.snapshot())
}
