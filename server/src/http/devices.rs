//! Device routes: the fleet list, one device, and the operator's changes
//! (register, label, enable or disable).

use app::api::RECENT_WINDOW_MS;
use app::model::{DeviceCredentials, DeviceDetail, DeviceLabel, DeviceSummary};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::error::{json_body, HttpError};
use super::guard::ClientIp;
use super::pages::PageData;
use super::{openapi, AppState};
use crate::audit::action;
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::store::registry::NewDevice;

/// Every device with its latest values and connection.
#[utoipa::path(get, path = "/api/devices", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    responses((status = 200, body = Vec<DeviceSummary>), openapi::Refused))]
pub(super) async fn devices(
    State(state): State<AppState>,
) -> Result<Json<Vec<DeviceSummary>>, HttpError> {
    let mut list = state.store.devices().await?;
    for d in &mut list {
        d.rejected = state.metrics.rejected_everywhere(&d.id);
    }
    state.presence.annotate(&mut list);
    Ok(Json(list))
}

/// The body of `POST /api/devices`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub(crate) struct AddDevice {
    id: String,
}

pub(super) fn credentials(d: NewDevice) -> DeviceCredentials {
    DeviceCredentials {
        id: d.id,
        secret: d.secret,
    }
}

/// `POST /api/devices`: creates a device and returns its secret, once.
#[utoipa::path(post, path = "/api/devices", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("operator"))),
    request_body = AddDevice,
    responses((status = 201, description = "Created; the secret is shown only here", body = DeviceCredentials),
        (status = 400, description = "Invalid id or body", body = openapi::ErrorBody),
        (status = 409, description = "A device with this id already exists", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn add_device(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    body: Result<Json<AddDevice>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<DeviceCredentials>), HttpError> {
    let body = json_body(body)?;
    let created = state.store.add_device(&body.id, now_ms()).await?;
    state
        .audit
        .record(
            &caller.name,
            action::DEVICE_ADD,
            Some(&created.id),
            None,
            ip,
        )
        .await;
    Ok((StatusCode::CREATED, Json(credentials(created))))
}

/// `PUT /api/devices/{id}/label` with a [`DeviceLabel`]: names a device
/// for people; `null` or blank removes the label.
#[utoipa::path(put, path = "/api/devices/{id}/label", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("operator"))),
    params(("id" = String, Path, description = "Device id")),
    request_body = DeviceLabel,
    responses((status = 204, description = "Label set or removed"),
        (status = 400, description = "Invalid label or body", body = openapi::ErrorBody),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn set_label(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(id): Path<String>,
    body: Result<Json<DeviceLabel>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, HttpError> {
    let body = json_body(body)?;
    let label = app::model::clean_label(body.label.as_deref().unwrap_or(""))
        .map_err(HttpError::BadRequest)?;
    if !state.store.set_label(&id, label.as_deref()).await? {
        return Err(HttpError::NotFound);
    }
    state
        .audit
        .record(&caller.name, action::DEVICE_LABEL, Some(&id), label, ip)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/devices/{id}/enabled` with `true` or `false`.
#[utoipa::path(put, path = "/api/devices/{id}/enabled", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("operator"))),
    params(("id" = String, Path, description = "Device id")),
    request_body(content = bool, description = "`true` to accept the device's logins, `false` to refuse them and end its sessions"),
    responses((status = 204, description = "Changed"),
        (status = 400, description = "Invalid body", body = openapi::ErrorBody),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn set_enabled(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Path(id): Path<String>,
    body: Result<Json<bool>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, HttpError> {
    let enabled = json_body(body)?;
    state.store.set_disabled(&id, !enabled).await?;
    let ended = if enabled {
        0
    } else {
        if let Some(bus) = &state.bus {
            bus.tell(&crate::bus::Remote::Disabled { device: id.clone() });
        }
        state.sessions.disable(&id)
    };
    tracing::info!(device = %id, enabled, sessions_ended = ended, "device enabled state changed");
    let what = if enabled {
        action::DEVICE_ENABLE
    } else {
        action::DEVICE_DISABLE
    };
    state
        .audit
        .record(&caller.name, what, Some(&id), None, ip)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// One device with its last 15 minutes of readings.
#[utoipa::path(get, path = "/api/devices/{id}", tag = "devices",
    security(("session" = []), ("token" = [])),
    extensions(("x-required-role" = json!("viewer"))),
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceDetail),
        (status = 404, description = "No such device", body = openapi::ErrorBody),
        openapi::Refused))]
pub(super) async fn device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, HttpError> {
    PageData::from(&state)
        .detail(&id, RECENT_WINDOW_MS)
        .await?
        .map(Json)
        .ok_or(HttpError::NotFound)
}
