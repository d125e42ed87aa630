//! Desired-state routes: read, set and remove the configuration a device
//! is sent retained on `command/<id>/desired`.

use app::model::DesiredState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::error::HttpError;
use super::guard::ClientIp;
use super::{openapi, AppState};
use crate::audit::action;
use crate::auth::Caller;

/// `GET /api/devices/{id}/desired`: the device's desired state, with the
/// newest version it acknowledged.
#[utoipa::path(get, path = "/api/devices/{id}/desired", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = DesiredState),
        (status = 404, description = "No such device, or no desired state set", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn get_desired(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DesiredState>, HttpError> {
    state
        .desired
        .get(&id)
        .await?
        .map(Json)
        .ok_or(HttpError::NotFound)
}

/// `PUT /api/devices/{id}/desired` with any JSON but `null`: stores it as
/// the device's desired state, one version up, and sends it to the device
/// if it is subscribed. A device that subscribes later gets it retained.
#[utoipa::path(put, path = "/api/devices/{id}/desired", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("operator"))),
    params(("id" = String, Path, description = "Device id")),
    request_body(content = Object, description = "The desired state: any JSON but null, at most --max-payload-bytes"),
    responses((status = 200, description = "Stored (and sent, if the device is subscribed)", body = DesiredState),
        (status = 400, description = "Not JSON, or null", body = openapi::ErrorBody),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        (status = 413, description = "Too large", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn set_desired(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(id): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<DesiredState>, HttpError> {
    let Json(payload) = body.map_err(|e| match e {
        JsonRejection::BytesRejection(_) => HttpError::TooLarge(e.body_text()),
        e => HttpError::BadRequest(format!("invalid desired state: {}", e.body_text())),
    })?;
    let desired = state.desired.set(&id, &payload, &caller.name).await?;
    tracing::info!(device = %id, version = desired.version, "desired state set");
    // The version and size only: a configuration may hold credentials.
    let detail = format!(
        "v{}, {} bytes",
        desired.version,
        desired.payload.to_string().len()
    );
    state
        .audit
        .record(
            &caller.name,
            action::DESIRED_SET,
            Some(&id),
            Some(detail),
            ip,
        )
        .await;
    Ok(Json(desired))
}

/// `DELETE /api/devices/{id}/desired`: removes the device's desired state.
/// A subscribed device is sent an empty message, which clears a retained
/// one in MQTT.
#[utoipa::path(delete, path = "/api/devices/{id}/desired", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("operator"))),
    params(("id" = String, Path, description = "Device id")),
    responses((status = 204, description = "Removed"),
        (status = 404, description = "No such device, or no desired state set", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn clear_desired(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    if !state.desired.clear(&id).await? {
        return Err(HttpError::NotFound);
    }
    state
        .audit
        .record(&caller.name, action::DESIRED_CLEAR, Some(&id), None, ip)
        .await;
    Ok(StatusCode::NO_CONTENT)
}
