//! Operations routes: health, the counters as JSON, and the Prometheus
//! exposition.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use app::model::Counters;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::{openapi, AppState};
use crate::metrics::Metrics;

/// `GET /api/health`: 200 "ok" while readings can be stored; 503
/// "degraded" while the database refuses writes (full, down or locked) and
/// the writer is retrying, so that a load balancer or monitor can tell.
#[utoipa::path(get, path = "/api/health", tag = "operations", security(),
    responses((status = 200, description = "The server is up and storing", body = String, content_type = "text/plain"),
        (status = 503, description = "Degraded: the database refuses writes; QoS 1 publishes wait unacknowledged", body = String, content_type = "text/plain")))]
pub(super) async fn health(State(metrics): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if metrics.store_failing.load(Ordering::Relaxed) == 0 {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded: the database refuses writes; readings wait and QoS 1 publishes are not acknowledged until it recovers",
        )
    }
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

/// This instance's counters since it started. In cluster mode each
/// instance answers for itself, as `/metrics` does, so that monitoring can
/// add them up without counting twice; the dashboard's pages and live
/// socket show the whole cluster's.
#[utoipa::path(get, path = "/api/stats", tag = "operations",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    responses((status = 200, body = Counters), openapi::Refused))]
pub(super) async fn stats(State(metrics): State<Arc<Metrics>>) -> Json<Counters> {
    Json(metrics.snapshot())
}
