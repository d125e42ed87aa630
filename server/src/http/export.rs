//! The export route: a device's raw readings as a CSV or NDJSON download,
//! streamed by [`crate::export`].

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::HttpError;
use super::{openapi, AppState};
use crate::export::{Export, ExportQuery};

/// `GET /api/devices/{id}/export?metric=&from=&to=&format=csv|ndjson`.
#[utoipa::path(get, path = "/api/devices/{id}/export", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    params(("id" = String, Path, description = "Device id"), ExportQuery),
    responses((status = 200, description = "Raw readings, streamed: `ts,metric,value` rows or one JSON object per line",
            content((String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "Invalid query", body = openapi::ErrorBody),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn export(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(q) = query.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    let export = Export::parse(id, q)?;
    let (content_type, name) = (export.content_type(), export.file_name());
    let mut rx = export
        .start(&state.store)
        .await?
        .ok_or(HttpError::NotFound)?;
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(Ok::<_, std::io::Error>))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}
