//! The series route: any time range of a device's history, bucketed in
//! the caller's time zone by [`crate::history`].

use app::model::SeriesResponse;
use axum::extract::{Path, Query, State};
use axum::Json;

use super::error::HttpError;
use super::{openapi, AppState};
use crate::clock::now_ms;
use crate::history::{self, SeriesQuery, SeriesRequest};

/// `GET /api/devices/{id}/series?metric=&from=&to=&points=&tz=`.
#[utoipa::path(get, path = "/api/devices/{id}/series", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    params(("id" = String, Path, description = "Device id"), SeriesQuery),
    responses((status = 200, description = "Buckets per metric, at most `points` each", body = SeriesResponse),
        (status = 400, description = "Invalid query", body = openapi::ErrorBody),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn series(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<SeriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SeriesResponse>, HttpError> {
    let Query(q) = query.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    let request = SeriesRequest::parse(q, now_ms(), state.retain_raw_ms)?;
    Ok(Json(
        history::load(&state.store, &id, &request)
            .await?
            .ok_or(HttpError::NotFound)?,
    ))
}
